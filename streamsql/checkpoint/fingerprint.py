"""The parts of a query its state depends on: a checkpoint resumes only under the same parts.

Restarting a different query on an existing checkpoint (Spark's classic shared-checkpoint
mistake) would merge new partial aggregates into state shaped for the old ones. Projections,
filters, sink options and triggers do not shape state and may change between runs.
"""

from __future__ import annotations

from collections.abc import Callable

from streamsql.format import format_duration
from streamsql.plan.plan import StreamingPlan
from streamsql.sql import DIALECT

Fingerprint = dict[str, str]


def _source(plan: StreamingPlan) -> str:
    return ", ".join(f"{s.name} ({s.source.connector})" for s in plan.scans)


def _keys(plan: StreamingPlan) -> str:
    return "(" + ", ".join(key.sql(DIALECT) for key in plan.keys) + ")"


def _aggregates(plan: StreamingPlan) -> str:
    return "(" + ", ".join(call.node.sql(DIALECT) for call in plan.aggregates) + ")"


def _window(plan: StreamingPlan) -> str:
    window = plan.window
    if window is None:
        return "none"
    if window.kind == "SESSION":
        return f"SESSION ({window.time_column}, {format_duration(window.gap_us)})"
    sizes = [format_duration(window.size_us)]
    if window.kind == "HOPPING":
        sizes.append(format_duration(window.slide_us))
    return f"{window.kind} ({window.time_column}, {', '.join(sizes)})"


def _watermark(plan: StreamingPlan) -> str:
    """Each source's (by its event time alone, for one source), and how they combine."""
    marks = [
        f"{'' if len(plan.scans) == 1 else s.name + ': '}{s.event_time} - "
        f"{format_duration(s.watermark_delay_us)}"
        for s in plan.scans
        if s.has_watermark
    ]
    if len(marks) > 1:
        marks.append(f"the {plan.watermark_policy.value}")
    return ", ".join(marks) or "none"


def _deduplication(plan: StreamingPlan) -> str:
    dedup = plan.deduplication
    if dedup is None:
        return "none"
    return "dropDuplicatesWithinWatermark" if dedup.within_watermark else "dropDuplicates"


def _upstream(plan: StreamingPlan) -> str:
    """The operators below this one in a chain, each by its own parts."""
    if plan.upstream is None:
        return "none"
    parts = fingerprint(plan.upstream)
    return "(" + "; ".join(f"{part}: {value}" for part, value in parts.items()) + ")"


# What a checkpoint's state is shaped by, in the order a change is reported.
PARTS: dict[str, Callable[[StreamingPlan], str]] = {
    "source": _source,
    "grouping keys": _keys,
    "aggregates": _aggregates,
    "window": _window,
    "deduplication": _deduplication,
    "watermark": _watermark,
    "emit mode": lambda plan: plan.emit.value,
    "join": lambda plan: plan.join.describe() if plan.join else "none",
    "operators below": _upstream,
}


def fingerprint(plan: StreamingPlan) -> Fingerprint:
    """The parts of `plan`; "operators below" only in a chain, so that the fingerprint of
    one operator is what it was before chains existed."""
    if not plan.stateful and plan.upstream is None:
        # no state: only where the rows come from and how they are emitted
        return {"source": _source(plan), "emit mode": plan.emit.value}
    parts = {part: describe(plan) for part, describe in PARTS.items()}
    if plan.upstream is None:
        del parts["operators below"]
    return parts


def changes(stored: Fingerprint, current: Fingerprint) -> list[str]:
    """What differs, one phrase per part: 'grouping keys: (a) -> (a, b)'."""
    return [
        f"{part}: {stored.get(part, 'none')} -> {current.get(part, 'none')}"
        for part in PARTS
        if stored.get(part, "none") != current.get(part, "none")
    ]
