"""Per-batch progress records, shaped after Spark's StreamingQueryProgress."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any


def timestamp_of(micros: int | None) -> str | None:
    """Epoch microseconds as an ISO-8601 UTC string, as Spark prints event-time watermarks."""
    if micros is None:
        return None
    try:
        moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
    except OverflowError:  # a watermark committed from an event time out of range
        return f"out of range ({micros} microseconds from 1970-01-01)"
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class QueryProgress:
    id: str  # the query's, kept across restarts
    run_id: str  # this run's
    name: str
    batch_id: int
    timestamp: str
    num_input_rows: int
    num_late_rows: int
    num_null_event_times: int
    num_dead_letters: int
    num_output_rows: int
    watermark: str | None  # W_N, in force for emission and eviction in this batch
    late_threshold: str | None  # L_N, rows at or below it were late
    next_watermark: str | None  # W_(N+1)
    state_rows: int
    duration_ms: dict[str, float]
    input_rows_per_second: float  # rows of this batch / time since the previous one started
    processed_rows_per_second: float  # rows of this batch / its duration
    no_data_batch: bool
    state_operators: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    sink: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
