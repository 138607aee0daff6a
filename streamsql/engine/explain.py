"""EXPLAIN of a streaming query or sink: the plan's header, then each per-batch statement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from streamsql.catalog.binding import sink_def
from streamsql.engine.result import DuckCursor, Result
from streamsql.format import format_duration
from streamsql.plan.plan import StreamingPlan
from streamsql.sql import Statement

if TYPE_CHECKING:
    from streamsql.engine.engine import Engine


def explain(
    engine: Engine, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
) -> Result:
    target = statement.expression.this
    # a sink's query, checked as CREATE SINK checks it (one without AS SELECT, say)
    select = sink_def(target, statement.text).query if isinstance(target, exp.Create) else target
    name = target.this.name if isinstance(target, exp.Create) else "query"
    plan = engine.plan(select, params)
    chain = plan.chain
    programs = engine.programs(name, plan)
    text = "\n".join(
        "\n".join(_header(operator, index, len(chain))) + "\n" + program.explain()
        for index, (operator, program) in enumerate(zip(chain, programs, strict=True))
    )
    return Result(["explain"], [(line,) for line in text.splitlines()])


def _header(plan: StreamingPlan, index: int, operators: int) -> list[str]:
    """What one operator of the chain is, what it reads, and the watermark it runs under."""
    shift = plan.watermark_shift
    if index:
        reads = f"the rows of operator {index} ({plan.scans[0].name})"
    else:
        names = ", ".join(scan.name for scan in plan.scans)
        reads = f"source{'s' if len(plan.scans) > 1 else ''} {names}"
    place = ""
    if operators > 1:
        feeds = " (feeds the sink)" if index + 1 == operators else ""
        place = f"operator {index + 1} of {operators}{feeds}: "
    header = [f"-- {place}{plan.kind.value} over {reads}, EMIT {plan.emit.value}"]
    if index:
        if plan.has_watermark:
            header.append(
                f"-- watermark: the query's{_shifted(shift)}, on {plan.event_time} (what "
                f"operator {index} passes on: late rows at or below it in the batch before, "
                "windows closed by it in this batch)"
            )
    else:
        for scan in plan.scans:
            if scan.has_watermark:
                delay = format_duration(scan.watermark_delay_us)
                whose = f" of {scan.name}" if len(plan.scans) > 1 else ""
                header.append(f"-- watermark{whose}: max({scan.event_time}) - {delay}")
        if sum(scan.has_watermark for scan in plan.scans) > 1:
            judged = "each side's event time" if plan.join else plan.event_time
            header.append(
                f"-- global watermark: the {plan.watermark_policy.value} of the sources' "
                f"(late rows and closing windows judged on {judged})"
            )
    if plan.window:
        window = plan.window
        sizes = (
            f"gap {format_duration(window.gap_us)}"
            if window.kind == "SESSION"
            else f"size {format_duration(window.size_us)}, slide {format_duration(window.slide_us)}"
        )
        header.append(f"-- window: {window.kind} on {window.time_column}, {sizes}")
    if plan.join:
        header.append(f"-- join: {plan.join.describe()}")
        if plan.join.unbounded:
            header.append("-- warning: the join's state is unbounded (it grows with every row)")
    if index + 1 < operators:
        passed = plan.output_watermark_shift
        header.append(
            f"-- passes on its rows and the watermark{_shifted(shift + (passed or 0))} on "
            f"{', '.join(plan.watermarked_outputs)}"
        )
    return header


def _shifted(shift: int) -> str:
    if not shift:
        return ""
    return f" {'-' if shift < 0 else '+'} {format_duration(abs(shift))}"
