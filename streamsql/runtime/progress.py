"""Per-batch progress records, shaped after Spark's StreamingQueryProgress."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass, field
from typing import Any


def timestamp_of(micros: int | None) -> str | None:
    """Epoch microseconds as an ISO-8601 UTC string, as Spark prints event-time watermarks."""
    if micros is None:
        return None
    # The Gregorian calendar repeats every 400 years (146097 days): a time beyond Python's
    # years 1..9999 is printed from its place in the cycle, with the year moved back.
    days, rest = divmod(micros, 86_400_000_000)
    cycles, days = divmod(days, 146_097)
    moment = dt.datetime(1970, 1, 1) + dt.timedelta(days=days, microseconds=rest)
    year = moment.year + 400 * cycles
    year_text = f"{year:04d}" if 0 < year <= 9999 else f"{year:+d}"
    return year_text + moment.isoformat(timespec="microseconds")[4:] + "Z"


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


@dataclass
class RunTotals:
    """Sums over the batches a query ran since it started (the progress records keep only
    the last ones), for the summary `streamsql run` prints at the end."""

    batches: int = 0
    input_rows: int = 0
    output_rows: int = 0
    late_rows: int = 0
    dead_letters: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None  # when the query terminated

    def add(self, progress: QueryProgress) -> None:
        self.batches += 1
        self.input_rows += progress.num_input_rows
        self.output_rows += progress.num_output_rows
        self.late_rows += progress.num_late_rows
        self.dead_letters += progress.num_dead_letters

    @property
    def elapsed(self) -> float:
        """Seconds the query has run (until it terminated)."""
        return (self.ended or time.monotonic()) - self.started
