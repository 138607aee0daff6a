"""SHOW SOURCES, SHOW SINKS, SHOW QUERIES and DESCRIBE QUERY: what the engine holds and where
its queries stand."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from streamsql.catalog.definitions import SinkDef, SourceDef
from streamsql.engine.result import DuckCursor, Result
from streamsql.runtime.progress import timestamp_of
from streamsql.runtime.query import StreamingQuery
from streamsql.secrets import shown
from streamsql.sql import DIALECT, Statement

if TYPE_CHECKING:
    from streamsql.engine.engine import Engine


def show(
    engine: Engine, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
) -> Result:
    what = statement.expression.name.upper()
    if what == "SOURCES":
        return Result(
            ["name", "connector", "columns", "watermark", "options"],
            [
                (
                    s.name,
                    s.connector,
                    ", ".join(s.column_names),
                    f"{s.watermark.column} - {s.watermark.delay.sql('duckdb')}"
                    if s.watermark
                    else None,
                    _shown_options(s),
                )
                for s in engine.sources.values()
            ],
        )
    if what == "SINKS":
        return Result(
            ["name", "connector", "query", "options"],
            [
                (s.name, s.connector, s.query.sql(DIALECT), _shown_options(s))
                for s in engine.sinks.values()
            ],
        )
    return Result(
        ["name", "status", "trigger", "last_batch", "watermark", "state_rows"],
        [_query_row(q) for q in engine.queries.values()],
    )


def _query_row(query: StreamingQuery) -> tuple[Any, ...]:
    """Where the query stands: from its checkpoint, so also right after a restart."""
    execution = query.execution
    return (
        query.name,
        query.status["message"],
        str(query.trigger),
        execution.last_committed,
        timestamp_of(execution.watermark),
        execution.state_rows,
    )


def describe_query(
    engine: Engine, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
) -> Result:
    """One row per property, each once: the query, its state, where it stands, the
    totals of this run, then its last batch under Spark's progress names. Structured
    values are JSON."""
    query = engine.query(statement.expression.this.name)
    status = query.status
    totals = query.totals
    properties: dict[str, Any] = {
        "name": query.name,
        "id": query.id,
        "run_id": query.run_id,
        "status": status["message"],
        "since": status["since"],
        "batch_in_flight": status["batch"],
        "trigger": status["trigger"],
        "error": status["error"],
        **{k: v for k, v in query.execution.position().items() if k != "sink"},
        "run_batches": totals.batches,
        "run_input_rows": totals.input_rows,
        "run_output_rows": totals.output_rows,
        "run_late_rows": totals.late_rows,
        "run_dead_letters": totals.dead_letters,
    }
    progress = query.last_progress
    if progress is not None:
        shown = {"id", "run_id", "name", "batch_id", "state_rows", "next_watermark"}
        last = {k: v for k, v in progress.to_dict().items() if k not in shown}
        last["batch_watermark"] = last.pop("watermark")
        properties |= last
    return Result(
        ["property", "value"],
        [
            (
                key,
                None
                if value is None
                else json.dumps(value)
                if isinstance(value, dict | list)
                else str(value),
            )
            for key, value in properties.items()
        ],
    )


def _shown_options(definition: SourceDef | SinkDef) -> str:
    """A definition's options as SHOW lists them, secret values hidden."""
    return ", ".join(f"{key} = {shown(key, value)}" for key, value in definition.options.items())
