"""Plan -> per-batch DuckDB SQL.

A query becomes a BatchProgram: set-up statements run once, and steps run in order inside
each micro-batch's transaction. Each step is one DuckDB statement; `fetch` says what the
runtime does with its result and `effect` how it changes the number of state rows.
Parameters, all epoch microseconds: `$late` is the late-row threshold L_N, `$late_cutoff`
the event time below which a row is late, `$watermark` the watermark W_N in force.

The input of a batch is one Arrow table per source, registered as its scan's view
(`__input_<i>`), in the source's declared columns; the operator reads them as they are or
through the query's relation over them (Compiler.rows). State lives in one table per
query: window bounds, group keys `key<i>`, the decomposed aggregate columns
`agg<i>_<part>` and a row counter `__rows`.

Three ways to keep state, chosen by what the query emits:
- EMIT FINAL over tumbling/hopping windows appends each batch's partial aggregates and
  combines a window's partials once, when the watermark closes it. An append costs the
  same whatever the size of the state (a MERGE joins the whole state table), and the state
  is compacted when the appended partials outgrow it.
- EMIT CHANGES and SNAPSHOT, and global aggregations, MERGE each batch's partials into
  one row per group; MERGE ... RETURNING gives the updated groups to emit.
- Session windows rewrite the open sessions of the keys a batch touches.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import sqlglot
from sqlglot import exp

from streamsql.catalog.definitions import INTERNAL_PREFIX, Emit
from streamsql.checkpoint.schema import EMITTED_WINDOWS
from streamsql.incremental.aggregates import StateColumn
from streamsql.plan.plan import QueryKind, Scan, StreamingPlan
from streamsql.quoting import literal

# Columns added next to the source's own: named so that no source column can be one.
WINDOW_START = f"{INTERNAL_PREFIX}ws"
HOP, HOP_INDEX = f"{INTERNAL_PREFIX}hop", f"{INTERNAL_PREFIX}i"

# Event and window times the engine computes with: years 1 to 9999, Spark's TimestampType
# range. Far enough inside DuckDB's (and int64 microseconds') limits that a watermark delay,
# a window's end or a session's gap added to them cannot overflow; a time outside it
# (`infinity`, year 294247) is a bad record.
MIN_EVENT_US = -62_135_596_800_000_000  # 0001-01-01 00:00:00
MAX_EVENT_US = 253_402_300_799_999_999  # 9999-12-31 23:59:59.999999
OUTSIDE = " is outside 0001-01-01 .. 9999-12-31, the range event times are computed in"

# Types Arrow has no counterpart for, in nested types too (sqlglot spells HUGEINT INT128).
ARROW_LOSES = re.compile(r"\b(U?HUGEINT|U?INT128)\b", re.IGNORECASE)
PARAMETERS = ("late", "late_cutoff", "watermark", "query", "batch_id")


class Fetch(StrEnum):
    NONE = "none"  # run for its effect; the result is a row count
    STATS = "stats"  # one row: input_rows, null_event_times, late_rows, max_event_us, min_time_us
    # State rows kept as a view for later steps (DML ... RETURNING cannot nest): the rows go
    # through Arrow as `<view>_rows`, and the view casts them back to the state's types.
    VIEW = "view"
    EMIT = "emit"  # the rows this batch emits


class Effect(StrEnum):
    """How a step changes the number of rows in the state table."""

    NONE = "none"
    ADDS = "adds"  # by the count it returns (or the rows it returns)
    REMOVES = "removes"
    MERGES = "merges"  # by the rows whose __action is INSERT


@dataclass(frozen=True)
class Step:
    name: str
    sql: str
    fetch: Fetch = Fetch.NONE
    view: str | None = None
    effect: Effect = Effect.NONE
    # Only when some window in state may end at or before the watermark: skipping the
    # closing steps otherwise saves statements on most batches.
    closes: bool = False
    unless_empty: str | None = None  # skip when this view holds no rows

    @property
    def parameters(self) -> tuple[str, ...]:
        """Named parameters the statement takes: the runtime's, and the query's $p<n>."""
        named = re.findall(r"\$(p\d+)\b", self.sql)
        return tuple(n for n in PARAMETERS if re.search(rf"\${n}\b", self.sql)) + tuple(
            dict.fromkeys(named)
        )


@dataclass(frozen=True)
class Statistics:
    """What the runtime measures on every batch's input of one source.

    Rows whose `window_time` is NULL are dropped, and late when it is below the late
    cutoff; the max of `event_time` drives the watermark; the min accepted `window_time`
    bounds the windows the batch opens (all of these over the rows that pass the WHERE
    conjuncts pushed below the watermark, StreamingPlan.prefilter). When both columns are
    plain microsecond timestamps and no WHERE is pushed down, the runtime measures them on
    the Arrow batch; otherwise the `sql` step computes the same figures in DuckDB, and
    counts the rows whose times are outside MIN_EVENT_US .. MAX_EVENT_US. `bad_times`
    gives those rows' errors, one per input row (NULL for a good row), for the runtime to
    turn them into dead letters.
    """

    window_time: str | None  # measured here when the operator reads the source as it is
    event_time: str | None
    late: bool  # whether this query drops late rows (and so counts them)
    sql: Step | None
    bad_times: str | None = None


@dataclass(frozen=True)
class BatchProgram:
    setup: tuple[str, ...]
    statistics: tuple[Statistics, ...]  # one per scan, in the plan's order
    steps: tuple[Step, ...]
    state_table: str | None
    compaction: tuple[Step, ...] = ()  # combine appended partials into one row per group
    # Over the relation of several sources (or one transformed): the rows whose window time
    # is NULL, the late rows, the earliest accepted window time.
    window_statistics: Step | None = None

    @property
    def state_rows_sql(self) -> str:
        return f"SELECT count(*) FROM {self.state_table}"

    @property
    def earliest_end_sql(self) -> str:
        return f"SELECT min(epoch_us(window_end)) FROM {self.state_table}"

    def explain(self) -> str:
        lines: list[str] = []
        for statement in self.setup:
            lines += ["-- once, when the query starts", f"{pretty(statement)};", ""]
        steps = [s.sql for s in self.statistics if s.sql]
        steps += [self.window_statistics] if self.window_statistics else []
        for title, group in (("per batch", [*steps, *self.steps]), ("compaction", self.compaction)):
            for step in group:
                notes = []
                if step.closes:
                    notes.append("when a window may end at or before the watermark")
                if step.unless_empty:
                    notes.append(f"when {step.unless_empty} has rows")
                note = f" ({'; '.join(notes)})" if notes else ""
                kept = f" -> {step.view}" if step.view else ""
                lines += [f"-- {title}: {step.name}{kept}{note}", f"{pretty(step.sql)};", ""]
        return "\n".join(lines).rstrip() + "\n"


def pretty(sql: str) -> str:
    """Indented SQL for people to read; what runs is the generated text itself."""
    try:
        return sqlglot.transpile(sql, read="duckdb", write="duckdb", pretty=True)[0]
    except sqlglot.errors.SqlglotError:
        return sql


def ident(name: str) -> str:
    return exp.to_identifier(name).sql("duckdb")


def sql_of(node: exp.Expr) -> str:
    return node.sql("duckdb")


def floor_to(value: str, step: int) -> str:
    """Floor `value` to a multiple of `step` (Unix-epoch aligned), also below zero."""
    return f"({value} - ((({value}) % {step}) + {step}) % {step})"


class Compiler:
    """Generates the BatchProgram of one plan.

    `state_table` is a qualified table name, or a bare name for a temporary table (the
    state of a push query lives and dies with the query's cursor). `scope` prefixes the
    views a step keeps for later ones, which outlive a batch (typed at start over the state
    table): each operator of a chain has its own. Only the operator that feeds the sink
    (`feeds_sink`) logs the windows it emits.
    """

    def __init__(
        self,
        plan: StreamingPlan,
        state_table: str,
        temporary: bool = False,
        scope: str = "",
        feeds_sink: bool = True,
    ) -> None:
        self.plan = plan
        self.state = state_table
        self.temporary = temporary
        self.feeds_sink = feeds_sink
        self.closed, self.touched = f"{scope}__closed", f"{scope}__touched"
        row_counter = StateColumn(
            "__rows", "count(*)", "__state.__rows + __batch.__rows", "sum(__rows)::BIGINT"
        )
        self.aggregate_columns = [row_counter] + [
            column for call in plan.aggregates for column in call.columns
        ]
        self.key_columns = [f"key{i}" for i in range(len(plan.keys))]
        self.window_columns = ["window_start", "window_end"] if plan.window else []

    def compile(self) -> BatchProgram:
        plan = self.plan
        statistics = tuple(self.statistics(scan) for scan in plan.scans)
        window_statistics = self.window_statistics()
        if plan.kind is QueryKind.STATELESS:
            emit = Step("emit rows", self.stateless_output(), Fetch.EMIT)
            return BatchProgram((), statistics, (emit,), None)
        if plan.kind is QueryKind.JOIN:
            from streamsql.incremental.stream_join import StreamJoinSteps

            join = StreamJoinSteps(self)
            return BatchProgram(
                (join.setup(),), statistics, tuple(join.steps()), self.state, (), join.statistics()
            )
        compaction: tuple[Step, ...] = ()
        if plan.kind is QueryKind.SESSION:
            steps = self.session_steps() + self.output_steps()
        elif plan.emit is Emit.FINAL:
            steps = self.append_steps()
            compaction = self.compaction_steps()
        else:
            steps = self.merge_steps() + self.output_steps()
        setup = (
            f"CREATE {'TEMP ' if self.temporary else ''}TABLE IF NOT EXISTS {self.state} AS "
            f"SELECT * FROM ({self.state_shape()}) LIMIT 0",
        )
        return BatchProgram(
            setup, statistics, tuple(steps), self.state, compaction, window_statistics
        )

    # -- input ---------------------------------------------------------------------------------

    def scan_rows(self, scan: Scan, filtered: bool = True) -> exp.Query:
        """A source's relation: declared columns plus computed ones, and (`filtered`) only
        the rows that pass the filters Spark would apply below the watermark.

        Arrow has no HUGEINT: the batch carries such columns as DECIMAL(38, 0), and they are
        cast back so that the query computes (and its sink stores) the declared type.
        """
        relation: exp.Query = exp.select("*").from_(scan.view)
        casts = [
            exp.alias_(exp.cast(exp.column(c.name, quoted=True), c.type), c.name, quoted=True)
            for c in scan.source.columns
            if ARROW_LOSES.search(c.type)
        ]
        if casts:
            relation = exp.select(exp.Star(replace=casts)).from_(scan.view)
        for name, expression in scan.derived:
            computed = exp.alias_(expression.copy(), name, quoted=True)
            relation = exp.select("*", computed).from_(relation.subquery())
        if filtered and scan.prefilter is not None:
            relation = exp.select("*").from_(relation.subquery()).where(scan.prefilter.copy())
        return relation

    def rows(self, filtered: bool = True) -> str:
        """The relation the operator reads: its one source's rows, or the query's relation
        over the sources' rows."""
        plan = self.plan
        if plan.relation is None:
            return f"({sql_of(self.scan_rows(plan.scans[0], filtered))})"
        scans = {scan.view: scan for scan in plan.scans}

        def substitute(node: exp.Expr) -> exp.Expr:
            if isinstance(node, exp.Table) and node.name in scans and not node.db:
                rows = self.scan_rows(scans[node.name], filtered)
                return rows.subquery(exp.to_identifier(node.alias_or_name, quoted=True))
            return node

        return f"({sql_of(plan.relation.transform(substitute))})"

    @property
    def drops_late_rows(self) -> bool:
        if self.plan.deduplication:
            return self.plan.deduplication.timed
        return self.plan.watermark_bounds_state and self.plan.emit is not Emit.SNAPSHOT

    def _time(self) -> str:
        return self._epoch_us(self.plan.row_time)

    def _epoch_us(self, column: str, types: dict[str, str] | None = None) -> str:
        """Microseconds since the epoch of a time column (of `types`, by default the
        relation's). DuckDB's epoch_us goes through nanoseconds for TIMESTAMP_MS and
        TIMESTAMP_S, which overflow after 2262-04-11: those are cast to (microsecond)
        TIMESTAMP first, as batch SQL would compare them."""
        types = self.plan.time_types if types is None else types
        if types.get(column.lower()) in ("TIMESTAMP_MS", "TIMESTAMP_S"):
            return f"epoch_us(CAST({ident(column)} AS TIMESTAMP))"
        return f"epoch_us({ident(column)})"

    def _to_timestamp(self, micros: str) -> str:
        timestamp = f"make_timestamp({micros})"
        if self.plan.window and self.plan.window.bound_type.endswith("TIME ZONE"):
            return f"CAST({timestamp} AS TIMESTAMPTZ)"
        return timestamp

    @property
    def _passed(self) -> str:
        """A state row's window ended at or before the watermark."""
        return f"window_end <= {self._to_timestamp('$watermark::BIGINT')}"

    def statistics(self, scan: Scan) -> Statistics:
        """What is measured on a source's rows: its event times for its watermark, and when
        the operator reads the source as it is, the window times too."""
        plan = self.plan
        own = plan.relation is None
        window_time = plan.row_time if own else None
        event_time = scan.event_time if scan.has_watermark else None
        late = self.drops_late_rows and own
        outside = {
            name: f"{ident(name)} IS NOT NULL AND coalesce("
            f"{self._epoch_us(name, scan.types)} NOT BETWEEN {MIN_EVENT_US} AND {MAX_EVENT_US}, "
            "TRUE)"
            for name in (window_time, event_time)
            if name is not None
        }
        errors = " ".join(
            f"WHEN {condition} THEN {literal(f'event time {name} = ')} || "
            f"{ident(name)}::VARCHAR || {literal(OUTSIDE)}"
            for name, condition in outside.items()
        )
        everything = f"({sql_of(self.scan_rows(scan, filtered=False))})"
        # One error (or NULL) per input row, in input order: a filter must not apply here.
        bad_times = f"SELECT CASE {errors} END AS __error FROM {everything}" if outside else None
        columns = {c.name.lower(): c.type for c in scan.source.columns}
        if (scan.prefilter is None or not outside) and all(
            name is None or columns.get(name.lower()) in ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE")
            for name in (window_time, event_time)
        ):
            return Statistics(window_time, event_time, late, None, bad_times)
        time = self._time() if window_time else None
        accepted = f" FILTER (WHERE {time} >= $late_cutoff)" if late else ""
        # Every input row counts, and any may have a bad time; the other figures are over
        # the rows the pushed-down WHERE keeps (in one pass when there is no such WHERE).
        bad = " OR ".join(outside.values()) or "FALSE"
        counts = ["count(*)", f"count(*) FILTER (WHERE {bad})"]
        if scan.prefilter is not None:
            counts = [
                f"(SELECT count(*) FROM {scan.view})",
                f"(SELECT count(*) FROM {everything} WHERE {bad})",
            ]
        figures = [
            counts[0],
            f"count(*) FILTER (WHERE {ident(window_time)} IS NULL)" if time else "0",
            f"count(*) FILTER (WHERE {time} < $late_cutoff)" if late else "0",
            f"max({self._epoch_us(event_time, scan.types)})" if event_time else "NULL",
            f"min({time}){accepted}" if time else "NULL",
            counts[1],
        ]
        sql = f"SELECT {', '.join(figures)} FROM ({sql_of(self.scan_rows(scan))})"
        step = Step(f"statistics of {scan.name}", sql, Fetch.STATS)
        return Statistics(window_time, event_time, late, step, bad_times)

    def window_statistics(self) -> Step | None:
        """Over a relation of the sources: the rows whose window time is NULL, the late
        rows and the earliest accepted window time (the sources' own statistics give the
        input rows and event times)."""
        plan = self.plan
        if plan.relation is None or plan.window is None:
            return None
        time = self._time()
        late = self.drops_late_rows
        figures = [
            f"count(*) FILTER (WHERE {ident(plan.window.time_column)} IS NULL)",
            f"count(*) FILTER (WHERE {time} < $late_cutoff)" if late else "0",
            f"min({time})" + (f" FILTER (WHERE {time} >= $late_cutoff)" if late else ""),
        ]
        sql = f"SELECT {', '.join(figures)} FROM {self.rows()}"
        return Step("window statistics", sql, Fetch.STATS)

    def windowed_rows(self) -> str:
        """Rows with their window bounds; a hopping row appears once per window it is in."""
        window = self.plan.window
        time = self._time()
        present = f"{ident(window.time_column)} IS NOT NULL"
        start = WINDOW_START
        if window.kind == "TUMBLING":
            starts = (
                f"SELECT *, {floor_to(time, window.size_us)} AS {start} "
                f"FROM {self.rows()} WHERE {present}"
            )
        else:
            last = floor_to(time, window.slide_us)
            hop = f"{last} - {HOP_INDEX} * {window.slide_us}"
            starts = (
                f"SELECT * EXCLUDE ({HOP_INDEX}), {hop} AS {start} "
                f"FROM {self.rows()}, range({window.windows_per_row}) AS {HOP}({HOP_INDEX}) "
                f"WHERE {present} AND {hop} + {window.size_us} > {time}"
            )
        late = f" WHERE {start} + {window.size_us} > $late" if self.drops_late_rows else ""
        return (
            f"SELECT * EXCLUDE ({start}), {self._to_timestamp(start)} AS window_start, "
            f"{self._to_timestamp(f'{start} + {window.size_us}')} AS window_end "
            f"FROM ({starts}){late}"
        )

    # -- aggregation state -------------------------------------------------------------------

    def _where(self) -> str:
        return f" WHERE {sql_of(self.plan.where)}" if self.plan.where is not None else ""

    def _key_selects(self) -> list[str]:
        return [
            f"{sql_of(key)} AS {name}"
            for key, name in zip(self.plan.keys, self.key_columns, strict=True)
        ]

    def _partials(self) -> list[str]:
        return [f"{c.partial} AS {c.name}" for c in self.aggregate_columns]

    def partial(self) -> str:
        """The batch's partial aggregates, one row per (window, group)."""
        plan = self.plan
        relation = f"({self.windowed_rows()})" if plan.window else self.rows()
        groups = self.window_columns + [sql_of(key) for key in plan.keys]
        selects = self.window_columns + self._key_selects() + self._partials()
        sql = f"SELECT {', '.join(selects)} FROM {relation} AS {ident(plan.alias)}{self._where()}"
        if groups:
            return f"{sql} GROUP BY {', '.join(groups)}"
        return f"{sql} HAVING count(*) > 0"  # a batch without rows leaves no group

    def state_shape(self) -> str:
        return self.session_parts() if self.plan.kind is QueryKind.SESSION else self.partial()

    def _match(self, left: str, right: str, columns: list[str]) -> str:
        """Key equality where NULL equals NULL, as GROUP BY has it."""
        conditions = [
            f"{left}.{c} = {right}.{c}"
            if c in self.window_columns
            else f"{left}.{c} IS NOT DISTINCT FROM {right}.{c}"
            for c in columns
        ]
        return " AND ".join(conditions) or "TRUE"

    def combine(self, relation: str, groups: list[str], extra: tuple[str, ...] = ()) -> str:
        """Many state rows per group into one: the aggregates' combine expressions."""
        group_exprs = {n: sql for call in self.plan.aggregates for n, sql in call.group.items()}
        if group_exprs:
            window = f"PARTITION BY {', '.join(groups)}" if groups else ""
            relation = (
                f"(SELECT *, {', '.join(f'{sql} AS {n}' for n, sql in group_exprs.items())} "
                f"FROM {relation} WINDOW __group AS ({window}))"
            )
        selects = [*groups, *extra, *(f"{c.combine} AS {c.name}" for c in self.aggregate_columns)]
        group_by = f" GROUP BY {', '.join(groups)}" if groups else ""
        return f"SELECT {', '.join(selects)} FROM {relation}{group_by}"

    def append_steps(self) -> list[Step]:
        """EMIT FINAL: append partials; combine a window's partials when it closes."""
        groups = self.window_columns + self.key_columns
        append = Step(
            "append batch partials to state",
            f"INSERT INTO {self.state} BY NAME {self.partial()}",
            effect=Effect.ADDS,
        )
        closing = self.closing_steps(f"({self.combine(self.closed, groups)}) AS __windows")
        if not self.feeds_sink:
            return [append, *closing]
        log = Step(
            "log the emitted windows",
            f"INSERT INTO {EMITTED_WINDOWS} SELECT $query, window_start::VARCHAR, "
            f"window_end::VARCHAR, $batch_id, count(DISTINCT ({', '.join(groups)})) "
            f"FROM {self.closed} GROUP BY window_start, window_end",
            closes=True,
            unless_empty=self.closed,
        )
        return [append, *closing, log]

    def closing_steps(self, closed: str) -> list[Step]:
        """Take the windows the watermark passed out of state and emit `closed` (over them):
        each window leaves the state in the batch that emits it, and only then."""
        return [
            Step(
                "close windows the watermark passed",
                f"DELETE FROM {self.state} WHERE {self._passed} RETURNING *",
                Fetch.VIEW,
                view=self.closed,
                effect=Effect.REMOVES,
                closes=True,
            ),
            Step(
                "emit closed windows",
                self.finalize(closed),
                Fetch.EMIT,
                closes=True,
                unless_empty=self.closed,
            ),
        ]

    def compaction_steps(self) -> tuple[Step, ...]:
        groups = self.window_columns + self.key_columns
        return (
            Step(
                "combine partials per group",
                f"CREATE OR REPLACE TEMP TABLE __compacted AS {self.combine(self.state, groups)}",
            ),
            Step("drop the partials", f"DELETE FROM {self.state}", effect=Effect.REMOVES),
            Step(
                "store one row per group",
                f"INSERT INTO {self.state} BY NAME SELECT * FROM __compacted",
                effect=Effect.ADDS,
            ),
            Step("drop the scratch table", "DROP TABLE __compacted"),
        )

    def merge_steps(self) -> list[Step]:
        keys = self.window_columns + self.key_columns
        columns = keys + [c.name for c in self.aggregate_columns]
        updates = ", ".join(f"{c.name} = {c.merge}" for c in self.aggregate_columns)
        sql = (
            f"MERGE INTO {self.state} AS __state USING ({self.partial()}) AS __batch "
            f"ON {self._match('__state', '__batch', keys)} "
            f"WHEN MATCHED THEN UPDATE SET {updates} "
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(columns)}) "
            f"VALUES ({', '.join(f'__batch.{c}' for c in columns)}) "
            f"RETURNING merge_action AS __action, *"
        )
        return [
            Step("merge batch into state", sql, Fetch.VIEW, view=self.touched, effect=Effect.MERGES)
        ]

    # -- sessions ----------------------------------------------------------------------------

    def session_parts(self) -> str:
        """Each accepted row as a one-event session [ts, ts + gap), pre-merged per timestamp."""
        plan = self.plan
        gap = plan.window.gap_us
        time = self._time()
        late = f" AND {time} + {gap} > $late" if self.drops_late_rows else ""
        where = f" AND ({sql_of(plan.where)})" if plan.where is not None else ""
        groups = [sql_of(key) for key in plan.keys] + [time]
        bounds = [
            f"{self._to_timestamp(time)} AS window_start",
            f"{self._to_timestamp(f'{time} + {gap}')} AS window_end",
        ]
        return (
            f"SELECT {', '.join(self._key_selects() + bounds + self._partials())} "
            f"FROM {self.rows()} AS {ident(plan.alias)} "
            f"WHERE {ident(plan.window.time_column)} IS NOT NULL{late}{where} "
            f"GROUP BY {', '.join(groups)}"
        )

    def session_steps(self) -> list[Step]:
        """Merge the batch's sessions with the open sessions of the keys it touches.

        Sessions that overlap or touch (next start <= current end) are one session: an
        island in start order, found with a running max of the session ends before it.
        """
        keys = self.key_columns
        order = (f"PARTITION BY {', '.join(keys)} " if keys else "") + "ORDER BY __start, __end"
        touched = (
            f"SELECT DISTINCT {', '.join(keys)} FROM __new"
            if keys
            else "SELECT 1 FROM __new LIMIT 1"
        )
        state_columns = ", ".join(
            self.window_columns + keys + [c.name for c in self.aggregate_columns]
        )
        islands = (
            f"(SELECT *, sum(CASE WHEN __reach IS NULL OR __start > __reach THEN 1 ELSE 0 END) "
            f"OVER ({order} ROWS UNBOUNDED PRECEDING) AS __island FROM ("
            f"SELECT *, max(__end) OVER ({order} ROWS BETWEEN UNBOUNDED PRECEDING AND "
            f"1 PRECEDING) AS __reach FROM ("
            f"SELECT *, epoch_us(window_start) AS __start, epoch_us(window_end) AS __end "
            f"FROM __parts)))"
        )
        bounds = (
            f"{self._to_timestamp('min(__start)')} AS window_start",
            f"{self._to_timestamp('max(__end)')} AS window_end",
        )
        sessions = (
            f"CREATE OR REPLACE TEMP TABLE __sessions AS "
            f"WITH __new AS ({self.session_parts()}), "
            f"__parts AS (SELECT {state_columns} FROM {self.state} AS __state "
            f"SEMI JOIN ({touched}) AS __touched ON {self._match('__state', '__touched', keys)} "
            f"UNION ALL BY NAME SELECT * FROM __new) "
            f"SELECT * EXCLUDE (__island) "
            f"FROM ({self.combine(islands, [*keys, '__island'], bounds)})"
        )
        replace = (
            f"DELETE FROM {self.state} AS __state USING "
            f"(SELECT DISTINCT {', '.join(keys)} FROM __sessions) AS __touched "
            f"WHERE {self._match('__state', '__touched', keys)}"
            if keys
            else f"DELETE FROM {self.state} WHERE EXISTS (SELECT 1 FROM __sessions)"
        )
        return [
            Step("merge batch sessions with the open sessions they touch", sessions),
            Step("drop the sessions that were merged", replace, effect=Effect.REMOVES),
            Step(
                "store merged sessions",
                f"INSERT INTO {self.state} BY NAME SELECT {state_columns} FROM __sessions",
                effect=Effect.ADDS,
            ),
        ]

    # -- output --------------------------------------------------------------------------------

    def finalize(self, relation: str) -> str:
        """The user's SELECT list over state rows: aggregates finished, HAVING applied."""
        plan = self.plan
        sql = f"SELECT {', '.join(sql_of(e) for e in plan.projection)} FROM {relation}"
        if plan.having is not None:
            sql += f" WHERE {sql_of(plan.having)}"
        return sql

    def output_steps(self) -> list[Step]:
        """Emission after a MERGE (or a session rewrite): by output mode."""
        plan = self.plan
        if plan.emit is Emit.SNAPSHOT:
            sql = self.finalize(self.snapshot_state())
            if plan.order is not None:
                sql += f" {sql_of(plan.order)}"
            if plan.limit is not None:
                sql += f" LIMIT {sql_of(plan.limit)}"
            return [Step("emit the whole result", sql, Fetch.EMIT)]
        if plan.emit is Emit.CHANGES:  # sessions are refused (rule session-changes)
            emit = Step(
                "emit groups updated by this batch", self.finalize(self.touched), Fetch.EMIT
            )
            if not plan.watermark_bounds_state:
                return [emit]
            evict = Step(
                "evict windows the watermark passed",
                f"DELETE FROM {self.state} WHERE {self._passed}",
                effect=Effect.REMOVES,
                closes=True,
            )
            return [emit, evict]
        return self.closing_steps(self.closed)  # sessions: one state row each already

    def snapshot_state(self) -> str:
        """The state rows a snapshot is made of. Without GROUP BY there is always one group,
        as in a batch query: before any row it is the aggregates over no rows."""
        plan = self.plan
        if plan.window or plan.keys:
            return self.state
        empty = (
            f"SELECT {', '.join(self._partials())} FROM {self.rows()} AS {ident(plan.alias)} "
            f"WHERE FALSE HAVING NOT EXISTS (SELECT 1 FROM {self.state})"
        )
        return f"(SELECT * FROM {self.state} UNION ALL BY NAME {empty}) AS __state"

    def stateless_output(self) -> str:
        plan = self.plan
        projection = ", ".join(sql_of(e) for e in plan.projection)
        return f"SELECT {projection} FROM {self.rows()} AS {ident(plan.alias)}{self._where()}"


def compile_chain(
    plan: StreamingPlan, state_table: Callable[[int | None], str], temporary: bool = False
) -> list[BatchProgram]:
    """One program per operator of `plan`'s chain. The one feeding the sink keeps its state
    in `state_table(None)`, an operator below it in `state_table(<its place>)`."""
    return [
        compile_plan(
            operator,
            state_table(None if operator is plan else index),
            temporary,
            scope="" if operator is plan else f"op{index}",
            feeds_sink=operator is plan,
        )
        for index, operator in enumerate(plan.chain)
    ]


def compile_plan(
    plan: StreamingPlan,
    state_table: str,
    temporary: bool = False,
    scope: str = "",
    feeds_sink: bool = True,
) -> BatchProgram:
    """The program of one operator (`scope` and `feeds_sink`: as Compiler takes them)."""
    compiler = Compiler
    if plan.deduplication is not None:
        # Imported here: the deduplication's compiler builds on this module's.
        from streamsql.incremental.deduplicate import DeduplicationCompiler

        compiler = DeduplicationCompiler
    return compiler(plan, state_table, temporary, scope, feeds_sink).compile()
