"""The logical plan of a streaming query: what the planner decided, before any SQL is generated."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlglot import exp

from streamsql.catalog.definitions import Emit, SourceDef
from streamsql.incremental.aggregates import AggregateCall

# Spark's window_time(window): the time of a window's rows for an operator downstream.
WINDOW_TIME = "window_time"


def window_time() -> exp.Expr:
    """`window_time` over a window's bounds: its end - 1 microsecond, the latest time in it."""
    one = exp.Interval(this=exp.Literal.string("1"), unit=exp.var("MICROSECOND"))
    return exp.Sub(this=exp.column("window_end"), expression=one)


class QueryKind(StrEnum):
    STATELESS = "stateless projection/filter"
    WINDOWED = "windowed aggregation"
    SESSION = "session window aggregation"
    GLOBAL = "global aggregation"
    DEDUPLICATE = "deduplication"
    JOIN = "stream-stream join"


@dataclass(frozen=True)
class WindowSpec:
    kind: str  # TUMBLING | HOPPING | SESSION
    time_column: str
    size_us: int = 0  # tumbling and hopping
    slide_us: int = 0  # hopping (tumbling: = size)
    gap_us: int = 0  # session
    bound_type: str = "TIMESTAMP"  # type of window_start/window_end: follows the time column

    @property
    def windows_per_row(self) -> int:
        return -(-self.size_us // self.slide_us) if self.slide_us else 1

    def first_end(self, time_us: int) -> int:
        """End of the earliest window (or of the session) that a row at `time_us` is in."""
        if self.kind == "SESSION":
            return time_us + self.gap_us
        return (
            (time_us - self.size_us) // self.slide_us * self.slide_us + self.slide_us + self.size_us
        )

    def late_cutoff(self, late_us: int) -> int:
        """Rows with an event time below this are late: every window they fall in (the
        session they would start) ends at or before the late threshold L."""
        if self.kind == "SESSION":
            return late_us - self.gap_us + 1
        return (late_us - self.size_us) // self.slide_us * self.slide_us + self.slide_us


@dataclass(frozen=True)
class Deduplication:
    """Spark's dropDuplicates(keys), or dropDuplicatesWithinWatermark(keys); the keys are
    the plan's `keys`."""

    within_watermark: bool
    # The event-time column reaches the operator (it is in the deduplicated row): rows at
    # or below the late threshold are dropped, and the watermark can forget keys.
    timed: bool
    # dropDuplicates: the key that is the event-time column, by which a key is forgotten
    # (None: keys stay in state for good, as in Spark).
    time_key: int | None = None
    over_output: bool = False  # SELECT DISTINCT: the keys are the output columns


class WatermarkPolicy(StrEnum):
    """How the global watermark follows the sources' own (Spark's multipleWatermarkPolicy)."""

    MIN = "min"  # the slowest source holds it back: no row of any source is late early
    MAX = "max"  # the fastest source drives it: the slower ones' rows may be late


@dataclass
class Scan:
    """One source a query reads (Spark's StreamingRelation under its EventTimeWatermark):
    the batch's rows of the source, registered as `view`, with its computed columns, its
    watermark, and the filters that apply before the watermark measures the rows."""

    source: SourceDef
    view: str
    derived: list[tuple[str, exp.Expr]]  # computed columns, in order, over the physical ones
    event_time: str | None = None  # the watermarked column
    watermark_delay_us: int | None = None
    # The WHERE conjuncts that filter rows before the watermark measures them (Spark pushes
    # them below EventTimeWatermark): those that reference neither the event-time column nor
    # the window bounds, and call no volatile function; for a join, the inferred
    # `key IS NOT NULL` of a side that is never NULL-extended.
    prefilter: exp.Expr | None = None
    types: dict[str, str] = field(default_factory=dict)  # DuckDB types by lower-case name

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def has_watermark(self) -> bool:
        return self.watermark_delay_us is not None

    @property
    def column_names(self) -> list[str]:
        """The columns a query sees of the source: declared, then computed."""
        return [c.name for c in self.source.columns] + [name for name, _ in self.derived]


class JoinType(StrEnum):
    INNER = "INNER"
    LEFT = "LEFT OUTER"
    RIGHT = "RIGHT OUTER"
    FULL = "FULL OUTER"
    SEMI = "LEFT SEMI"

    @property
    def null_extends(self) -> tuple[str, ...]:
        """The sides whose rows are emitted with NULLs when they leave state unmatched."""
        return {
            "LEFT OUTER": ("left",),
            "RIGHT OUTER": ("right",),
            "FULL OUTER": ("left", "right"),
        }.get(self.value, ())


@dataclass(frozen=True)
class JoinSide:
    """One input of a stream-stream join: a source under the name the query gives it."""

    alias: str
    view: str  # the scan's view
    columns: tuple[tuple[str, str], ...]  # (the source's column, its name in the join's rows)
    event_time: str | None  # the watermarked column (None: this side has no watermark)
    # State rows of this side go once `column <= W + offset_us` (W: the batch's watermark),
    # from the time-range condition of ON and the other side's watermark; None: never.
    bound: tuple[str, int] | None = None


@dataclass(frozen=True)
class StreamJoin:
    """A join of two streams (Spark's StreamingSymmetricHashJoinExec): each side's rows are
    kept in state until the watermark and the ON clause's time range prove that no row of
    the other side can match them any more."""

    type: JoinType
    left: JoinSide
    right: JoinSide
    condition: exp.Expr  # ON, over the sides' aliases and their sources' column names

    @property
    def unbounded(self) -> bool:
        """Whether some side's state is never evicted (an inner join may run so)."""
        return self.left.bound is None or self.right.bound is None

    def describe(self) -> str:
        """What the state depends on (the fingerprint) and how it is evicted (EXPLAIN)."""
        bounds = [
            f"{side.alias} rows go when {side.bound[0]} <= watermark "
            f"{'-' if side.bound[1] < 0 else '+'} {dt.timedelta(microseconds=abs(side.bound[1]))}"
            if side.bound
            else f"{side.alias} rows are kept forever (unbounded state)"
            for side in (self.left, self.right)
        ]
        on = self.condition.sql("duckdb", comments=False)
        return (
            f"{self.type.value} {self.left.alias} x {self.right.alias} ON {on}; {'; '.join(bounds)}"
        )


@dataclass
class StreamingPlan:
    select: exp.Select  # the query as written
    scans: list[Scan]  # the sources read, each once, in the order the query names them
    alias: str  # the name the query gives the relation it reads
    # What the operator reads when it is not one source as it is: the FROM clause (joins
    # with tables, subqueries, UNION ALL), with every source a Table named by its scan's view.
    relation: exp.Expr | None
    event_time: str | None  # the event-time column of the relation the operator reads
    kind: QueryKind
    emit: Emit
    where: exp.Expr | None  # the WHERE conjuncts applied above the watermark
    watermark_policy: WatermarkPolicy = WatermarkPolicy.MIN
    window: WindowSpec | None = None
    keys: list[exp.Expr] = field(default_factory=list)  # group keys besides the window bounds
    aggregates: list[AggregateCall] = field(default_factory=list)
    # Output expressions: over the state row for aggregations, over the input row otherwise.
    projection: list[exp.Expr] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    key_names: list[str] = field(default_factory=list)  # upsert key of EMIT CHANGES sinks
    keys_complete: bool = False  # every group key and the window are among the outputs
    parameters: dict[str, Any] = field(default_factory=dict)  # $p1, $p2, ... of `?` values
    # DuckDB types of the event-time and window time columns, by lower-case name.
    time_types: dict[str, str] = field(default_factory=dict)
    having: exp.Expr | None = None
    order: exp.Order | None = None
    limit: exp.Expr | None = None
    deduplication: Deduplication | None = None
    join: StreamJoin | None = None  # the operator, when it is a stream-stream join
    # Every column of the relation that carries the watermark (`event_time` is the first).
    event_times: tuple[str, ...] = ()
    output_types: list[str] = field(default_factory=list)  # DuckDB types of output_names
    # The stateful operator whose output this one reads (Spark 3.5's chained stateful
    # operators): its rows of each batch are this plan's one scan, in the same batch.
    upstream: StreamingPlan | None = None

    @property
    def chain(self) -> list[StreamingPlan]:
        """The operators a batch runs, in order: the one reading the sources first."""
        return [*(self.upstream.chain if self.upstream else []), self]

    @property
    def sources_plan(self) -> StreamingPlan:
        """The operator that reads the query's sources."""
        return self.upstream.sources_plan if self.upstream else self

    @property
    def watermark_shift(self) -> int:
        """How far the watermark this operator runs under is from the query's: what the
        operators below it pass on."""
        if self.upstream is None:
            return 0
        return self.upstream.watermark_shift + (self.upstream.output_watermark_shift or 0)

    @property
    def output_watermark_shift(self) -> int | None:
        """How the watermark this operator passes on to the next one follows the one it
        runs under: W + shift (Spark's produceOutputWatermark). An aggregation and a
        deduplication pass it on unchanged (their output rows are never behind it); a
        stream-stream join passes on the lowest of its sides' state watermarks and W, below
        which no row can be emitted any more; None: it passes on none."""
        if not self.has_watermark or not self.watermarked_outputs:
            return None
        if self.join is None:
            return 0
        bounds = [side.bound[1] for side in (self.join.left, self.join.right) if side.bound]
        # Never above W (Spark's min includes it): with `r.ts BETWEEN l.ts + 10 minutes AND
        # ...` r's state goes at W + 10 minutes, yet a left row just above W still joins.
        return min(0, *bounds) if bounds else None

    @property
    def watermarked_outputs(self) -> list[str]:
        """The output columns that carry the watermark on to the next operator: a window's
        end and `window_time` (its end - 1 microsecond, Spark's window_time), or the event
        time columns a row passes through unchanged."""
        if self.window:
            carriers = {"window_end", window_time().sql("duckdb").lower()}
        else:
            carriers = {name.lower() for name in self.event_times}
        if any(e.find(exp.Star) for e in self.projection):
            return [name for name in self.output_names if name.lower() in carriers]
        values = [e.unalias().unnest() for e in self.projection]
        return [
            name
            for name, value in zip(self.output_names, values, strict=True)
            if (value.name if isinstance(value, exp.Column) else value.sql("duckdb")).lower()
            in carriers
        ]

    @property
    def has_watermark(self) -> bool:
        return any(scan.has_watermark for scan in self.scans)

    @property
    def watermark_bounds_state(self) -> bool:
        """True when the watermark closes windows: the window runs on the watermarked column."""
        return bool(
            self.has_watermark and self.window and self.window.time_column == self.event_time
        )

    @property
    def runs_no_data_batches(self) -> bool:
        """A batch without data runs when the watermark moved, to close and evict windows.
        Not in complete mode (SNAPSHOT), which evicts nothing and emits only with data, as
        Spark's stateful operators in Complete mode never ask for another batch. A
        deduplication with a watermark asks whatever its keys (Spark's
        BaseStreamingDeduplicateExec.shouldRunAnotherBatch: the eviction watermark is set)."""
        if self.deduplication is not None:
            return self.has_watermark
        if self.join is not None:  # outer rows leave state (and are emitted) with the watermark
            return not (self.join.left.bound is None and self.join.right.bound is None)
        return self.watermark_bounds_state and self.emit is not Emit.SNAPSHOT

    @property
    def row_time(self) -> str | None:
        """The time column each row is judged by: a NULL drops the row, and a value below
        the late cutoff makes it late. The window's column, or the event time that a
        deduplication sees."""
        if self.window:
            return self.window.time_column
        if self.deduplication and self.deduplication.timed:
            return self.event_time
        return None

    def late_cutoff(self, late_us: int | None) -> int | None:
        """Rows with a row time below this are late under the late threshold L: for a
        deduplication those at or below L (Spark's watermarkPredicateForDataForLateEvents,
        `event_time <= L`)."""
        if late_us is None:
            return None
        if self.window:
            return self.window.late_cutoff(late_us)
        return late_us + 1 if self.row_time else None

    @property
    def stateful(self) -> bool:
        return self.kind is not QueryKind.STATELESS
