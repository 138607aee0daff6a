"""Plan -> per-batch DuckDB SQL.

A query becomes a BatchProgram: set-up statements run once, and steps run in order inside
each micro-batch's transaction. Each step is one DuckDB statement; `fetch` says what the
runtime does with its result and `effect` how it changes the number of state rows.
Parameters, all epoch microseconds: `$late` is the late-row threshold L_N, `$late_cutoff`
the event time below which a row is late, `$watermark` the watermark W_N in force.
Each statement is built as a sqlglot tree (sqltree's builders and templates) and rendered
once, in the DuckDB dialect, when its Step is made; the Step's parameters are the names of
the tree's placeholders.

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
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from sqlglot import exp

from streamsql.catalog.definitions import INTERNAL_PREFIX, Emit
from streamsql.checkpoint.schema import EMITTED_WINDOWS
from streamsql.incremental.aggregates import StateColumn
from streamsql.incremental.sqltree import (
    aliased,
    column,
    create_table,
    delete,
    drop_table,
    fill,
    fn,
    insert_by_name,
    param,
    placeholders,
    render,
    star,
    table,
    template,
    union_by_name,
)
from streamsql.plan.plan import QueryKind, Scan, StreamingPlan
from streamsql.quoting import identifier

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
    """One statement, built as a sqlglot tree (`statement`) and rendered once (`sql`);
    `parameters` are its placeholders' names: the runtime's, then the query's $p<n>."""

    name: str
    statement: exp.Expr = field(repr=False, compare=False)
    fetch: Fetch = Fetch.NONE
    view: str | None = None
    effect: Effect = Effect.NONE
    # Only when some window in state may end at or before the watermark: skipping the
    # closing steps otherwise saves statements on most batches.
    closes: bool = False
    unless_empty: str | None = None  # skip when this view holds no rows
    sql: str = field(init=False)
    parameters: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.statement, exp.Expr):  # SQL text would hide its parameters
            raise TypeError(f"Step {self.name!r} takes a sqlglot tree, not {self.statement!r}")
        named = placeholders(self.statement)
        runtime = tuple(n for n in PARAMETERS if n in named)
        object.__setattr__(self, "sql", render(self.statement))
        object.__setattr__(
            self, "parameters", runtime + tuple(n for n in named if n not in PARAMETERS)
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
    setup: tuple[Step, ...]
    statistics: tuple[Statistics, ...]  # one per scan, in the plan's order
    steps: tuple[Step, ...]
    state_table: str | None
    compaction: tuple[Step, ...] = ()  # combine appended partials into one row per group
    # Over the relation of several sources (or one transformed): the rows whose window time
    # is NULL, the late rows, the earliest accepted window time.
    window_statistics: Step | None = None

    @cached_property
    def state_rows_sql(self) -> str:
        return render(exp.select("count(*)").from_(self._state()))

    @cached_property
    def earliest_end_sql(self) -> str:
        """Rendered once: the runtime runs it after batches that close windows."""
        return render(exp.select("min(epoch_us(window_end))").from_(self._state()))

    def _state(self) -> exp.Table:
        return exp.to_table(self.state_table, dialect="duckdb")

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
                lines += [f"-- {title}: {step.name}{kept}{note}", f"{pretty(step)};", ""]
        return "\n".join(lines).rstrip() + "\n"


def pretty(step: Step) -> str:
    """Indented SQL for people to read; what runs is the step's `sql`, the same tree."""
    return step.statement.sql(dialect="duckdb", pretty=True)


def floor_to(value: exp.Expr, step: int) -> exp.Expr:
    """Floor `value` to a multiple of `step` (Unix-epoch aligned), also below zero."""
    return fill(
        template("(value - ((value % step) + step) % step)"), {"value": value, "step": step}
    )


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
        self.table = exp.to_table(state_table, dialect="duckdb")
        self.temporary = temporary
        self.feeds_sink = feeds_sink
        self.closed, self.touched = f"{scope}__closed", f"{scope}__touched"
        row_counter = StateColumn(
            "__rows",
            template("count(*)"),
            template("__state.__rows + __batch.__rows"),
            template("CAST(sum(__rows) AS BIGINT)"),
        )
        self.aggregate_columns = [row_counter] + [
            state for call in plan.aggregates for state in call.columns
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
        shape = exp.select("*").from_(self.state_shape().subquery()).limit(0)
        setup = (Step("create the state table", create_table(self.table, shape, self.temporary)),)
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
        relation: exp.Query = exp.select("*").from_(table(scan.view))
        casts = [
            exp.alias_(exp.cast(column(c.name), c.type), identifier(c.name))
            for c in scan.source.columns
            if ARROW_LOSES.search(c.type)
        ]
        if casts:
            relation = exp.select(exp.Star(replace=casts)).from_(table(scan.view))
        for name, expression in scan.derived:
            computed = exp.alias_(expression.copy(), identifier(name))
            relation = exp.select("*", computed).from_(relation.subquery())
        if filtered and scan.prefilter is not None:
            relation = exp.select("*").from_(relation.subquery()).where(scan.prefilter.copy())
        return relation

    def rows(self, filtered: bool = True) -> exp.Query:
        """The relation the operator reads: its one source's rows, or the query's relation
        over the sources' rows."""
        plan = self.plan
        if plan.relation is None:
            return self.scan_rows(plan.scans[0], filtered)
        scans = {scan.view: scan for scan in plan.scans}

        def substitute(node: exp.Expr) -> exp.Expr:
            if isinstance(node, exp.Table) and node.name in scans and not node.db:
                return aliased(self.scan_rows(scans[node.name], filtered), node.alias_or_name)
            return node

        return plan.relation.transform(substitute)

    def _rows_as_alias(self) -> exp.Expr:
        """The operator's rows under the query's alias, as its expressions name them."""
        return aliased(self.rows(), self.plan.alias)

    @property
    def drops_late_rows(self) -> bool:
        if self.plan.deduplication:
            return self.plan.deduplication.timed
        return self.plan.watermark_bounds_state and self.plan.emit is not Emit.SNAPSHOT

    def _time(self) -> exp.Expr:
        return self._epoch_us(self.plan.row_time)

    def _epoch_us(self, name: str, types: dict[str, str] | None = None) -> exp.Expr:
        """Microseconds since the epoch of a time column (of `types`, by default the
        relation's). DuckDB's epoch_us goes through nanoseconds for TIMESTAMP_MS and
        TIMESTAMP_S, which overflow after 2262-04-11: those are cast to (microsecond)
        TIMESTAMP first, as batch SQL would compare them."""
        types = self.plan.time_types if types is None else types
        value: exp.Expr = column(name)
        if types.get(name.lower()) in ("TIMESTAMP_MS", "TIMESTAMP_S"):
            value = exp.cast(value, "TIMESTAMP")
        return fn("epoch_us", value)

    def _to_timestamp(self, micros: exp.Expr) -> exp.Expr:
        timestamp = fn("make_timestamp", micros)
        if self.plan.window and self.plan.window.bound_type.endswith("TIME ZONE"):
            return exp.cast(timestamp, "TIMESTAMPTZ")
        return timestamp

    @property
    def _passed(self) -> exp.Expr:
        """A state row's window ended at or before the watermark."""
        watermark = exp.cast(param("watermark"), "BIGINT")
        return exp.LTE(this=column("window_end"), expression=self._to_timestamp(watermark))

    def statistics(self, scan: Scan) -> Statistics:
        """What is measured on a source's rows: its event times for its watermark, and when
        the operator reads the source as it is, the window times too."""
        plan = self.plan
        own = plan.relation is None
        window_time = plan.row_time if own else None
        event_time = scan.event_time if scan.has_watermark else None
        late = self.drops_late_rows and own
        outside = {
            name: fill(
                template("x IS NOT NULL AND coalesce(t NOT BETWEEN low AND high, TRUE)"),
                {
                    "x": column(name),
                    "t": self._epoch_us(name, scan.types),
                    "low": MIN_EVENT_US,
                    "high": MAX_EVENT_US,
                },
            )
            for name in (window_time, event_time)
            if name is not None
        }
        errors = exp.Case(
            ifs=[
                exp.If(
                    this=condition,
                    true=fill(
                        template("lead || CAST(x AS VARCHAR) || tail"),
                        {"lead": f"event time {name} = ", "x": column(name), "tail": OUTSIDE},
                    ),
                )
                for name, condition in outside.items()
            ]
        )
        everything = self.scan_rows(scan, filtered=False).subquery()
        # One error (or NULL) per input row, in input order: a filter must not apply here.
        bad_times = (
            render(exp.select(exp.alias_(errors, "__error")).from_(everything)) if outside else None
        )
        columns = {c.name.lower(): c.type for c in scan.source.columns}
        if (scan.prefilter is None or not outside) and all(
            name is None or columns.get(name.lower()) in ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE")
            for name in (window_time, event_time)
        ):
            return Statistics(window_time, event_time, late, None, bad_times)
        time = self._time() if window_time else None
        cutoff = param("late_cutoff")
        # Every input row counts, and any may have a bad time; the other figures are over
        # the rows the pushed-down WHERE keeps (in one pass when there is no such WHERE).
        bad = exp.or_(*outside.values()) if outside else exp.false()
        counts: list[exp.Expr] = [fn("count", exp.Star()), _count_where(bad)]
        if scan.prefilter is not None:
            counts = [
                exp.select("count(*)").from_(table(scan.view)).subquery(),
                exp.select("count(*)").from_(everything.copy()).where(bad).subquery(),
            ]
        figures = [
            counts[0],
            _count_where(column(window_time).is_(exp.null())) if time else exp.Literal.number(0),
            _count_where(exp.LT(this=time, expression=cutoff)) if late else exp.Literal.number(0),
            fn("max", self._epoch_us(event_time, scan.types)) if event_time else exp.null(),
            _accepted_min(time, cutoff if late else None) if time else exp.null(),
            counts[1],
        ]
        sql = exp.select(*figures).from_(self.scan_rows(scan).subquery())
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
        cutoff = param("late_cutoff") if self.drops_late_rows else None
        figures = [
            _count_where(column(plan.window.time_column).is_(exp.null())),
            _count_where(exp.LT(this=time, expression=cutoff)) if cutoff else exp.Literal.number(0),
            _accepted_min(time, cutoff),
        ]
        sql = exp.select(*figures).from_(self.rows().subquery())
        return Step("window statistics", sql, Fetch.STATS)

    def windowed_rows(self) -> exp.Query:
        """Rows with their window bounds; a hopping row appears once per window it is in."""
        window = self.plan.window
        time = self._time()
        present = column(window.time_column).is_(exp.null()).not_()
        start = column(WINDOW_START)
        if window.kind == "TUMBLING":
            starts = (
                exp.select(
                    "*", exp.alias_(floor_to(time, window.size_us), identifier(WINDOW_START))
                )
                .from_(self.rows().subquery())
                .where(present)
            )
        else:
            hop = fill(
                template("last - i * slide"),
                {
                    "last": floor_to(time, window.slide_us),
                    "i": column(HOP_INDEX),
                    "slide": window.slide_us,
                },
            )
            hops = exp.Table(
                this=fn("range", exp.Literal.number(window.windows_per_row)),
                alias=exp.TableAlias(this=identifier(HOP), columns=[identifier(HOP_INDEX)]),
            )
            starts = (
                exp.select(star(HOP_INDEX), exp.alias_(hop, identifier(WINDOW_START)))
                .from_(self.rows().subquery())
                .join(hops)
                .where(
                    present,
                    fill(
                        template("hop + size > t"), {"hop": hop, "size": window.size_us, "t": time}
                    ),
                )
            )
        end = fill(template("start + size"), {"start": start, "size": window.size_us})
        rows = exp.select(
            star(WINDOW_START),
            exp.alias_(self._to_timestamp(start), "window_start"),
            exp.alias_(self._to_timestamp(end), "window_end"),
        ).from_(starts.subquery())
        if self.drops_late_rows:
            rows = rows.where(exp.GT(this=end.copy(), expression=param("late")))
        return rows

    # -- aggregation state -------------------------------------------------------------------

    def _where(self, query: exp.Select) -> exp.Select:
        return query.where(self.plan.where.copy()) if self.plan.where is not None else query

    def _key_selects(self) -> list[exp.Expr]:
        return [
            exp.alias_(key.copy(), identifier(name))
            for key, name in zip(self.plan.keys, self.key_columns, strict=True)
        ]

    def _partials(self) -> list[exp.Expr]:
        return [exp.alias_(c.partial.copy(), identifier(c.name)) for c in self.aggregate_columns]

    def partial(self) -> exp.Select:
        """The batch's partial aggregates, one row per (window, group)."""
        plan = self.plan
        relation = self.windowed_rows() if plan.window else self.rows()
        windows = [column(c) for c in self.window_columns]
        groups = windows + [key.copy() for key in plan.keys]
        selects = windows + self._key_selects() + self._partials()
        query = self._where(exp.select(*selects).from_(aliased(relation, plan.alias)))
        if groups:
            return query.group_by(*groups)
        return query.having("count(*) > 0")  # a batch without rows leaves no group

    def state_shape(self) -> exp.Select:
        return self.session_parts() if self.plan.kind is QueryKind.SESSION else self.partial()

    def _match(self, left: str, right: str, columns: list[str]) -> exp.Expr:
        """Key equality where NULL equals NULL, as GROUP BY has it."""
        conditions = [
            exp.EQ(this=column(c, left), expression=column(c, right))
            if c in self.window_columns
            else exp.NullSafeEQ(this=column(c, left), expression=column(c, right))
            for c in columns
        ]
        return exp.and_(*conditions) if conditions else exp.true()

    def combine(
        self, relation: exp.Expr, groups: list[str], extra: tuple[exp.Expr, ...] = ()
    ) -> exp.Select:
        """Many state rows per group into one: the aggregates' combine expressions."""
        group_exprs = {n: e for call in self.plan.aggregates for n, e in call.group.items()}
        if group_exprs:
            window = exp.Window(
                this=identifier("__group"), partition_by=[column(g) for g in groups] or None
            )
            computed = [exp.alias_(e.copy(), identifier(n)) for n, e in group_exprs.items()]
            relation = exp.select("*", *computed).from_(relation).subquery()
            relation.this.set("windows", [window])
        selects = [
            *(column(g) for g in groups),
            *extra,
            *(exp.alias_(c.combine.copy(), identifier(c.name)) for c in self.aggregate_columns),
        ]
        query = exp.select(*selects).from_(relation)
        return query.group_by(*(column(g) for g in groups)) if groups else query

    def append_steps(self) -> list[Step]:
        """EMIT FINAL: append partials; combine a window's partials when it closes."""
        groups = self.window_columns + self.key_columns
        append = Step(
            "append batch partials to state",
            insert_by_name(self.table, self.partial()),
            effect=Effect.ADDS,
        )
        closing = self.closing_steps(aliased(self.combine(table(self.closed), groups), "__windows"))
        if not self.feeds_sink:
            return [append, *closing]
        windows = (
            exp.select(
                param("query"),
                exp.cast(column("window_start"), "VARCHAR"),
                exp.cast(column("window_end"), "VARCHAR"),
                param("batch_id"),
                exp.Count(
                    this=exp.Distinct(
                        expressions=[exp.Tuple(expressions=[column(g) for g in groups])]
                    )
                ),
            )
            .from_(table(self.closed))
            .group_by(column("window_start"), column("window_end"))
        )
        log = Step(
            "log the emitted windows",
            exp.insert(windows, exp.to_table(EMITTED_WINDOWS, dialect="duckdb")),
            closes=True,
            unless_empty=self.closed,
        )
        return [append, *closing, log]

    def closing_steps(self, closed: exp.Expr) -> list[Step]:
        """Take the windows the watermark passed out of state and emit `closed` (over them):
        each window leaves the state in the batch that emits it, and only then."""
        return [
            Step(
                "close windows the watermark passed",
                delete(self.table, self._passed, returning=exp.Returning(expressions=[exp.Star()])),
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
        compacted = table("__compacted")
        return (
            Step(
                "combine partials per group",
                create_table(
                    compacted, self.combine(self.table.copy(), groups), temporary=True, replace=True
                ),
            ),
            Step("drop the partials", delete(self.table), effect=Effect.REMOVES),
            Step(
                "store one row per group",
                insert_by_name(self.table, exp.select("*").from_(compacted)),
                effect=Effect.ADDS,
            ),
            Step("drop the scratch table", drop_table(compacted)),
        )

    def merge_steps(self) -> list[Step]:
        keys = self.window_columns + self.key_columns
        columns = keys + [c.name for c in self.aggregate_columns]
        merge = exp.Merge(
            this=aliased(self.table, "__state"),
            using=aliased(self.partial(), "__batch"),
            on=self._match("__state", "__batch", keys),
            whens=exp.Whens(
                expressions=[
                    exp.When(
                        matched=True,
                        then=exp.Update(
                            expressions=[
                                exp.EQ(this=column(c.name), expression=c.merge.copy())
                                for c in self.aggregate_columns
                            ]
                        ),
                    ),
                    exp.When(
                        matched=False,
                        then=exp.Insert(
                            this=exp.Tuple(expressions=[column(c) for c in columns]),
                            expression=exp.Tuple(
                                expressions=[column(c, "__batch") for c in columns]
                            ),
                        ),
                    ),
                ]
            ),
            returning=exp.Returning(
                expressions=[exp.alias_(column("merge_action"), "__action"), exp.Star()]
            ),
        )
        return [
            Step(
                "merge batch into state", merge, Fetch.VIEW, view=self.touched, effect=Effect.MERGES
            )
        ]

    # -- sessions ----------------------------------------------------------------------------

    def session_parts(self) -> exp.Select:
        """Each accepted row as a one-event session [ts, ts + gap), pre-merged per timestamp."""
        plan = self.plan
        gap = plan.window.gap_us
        time = self._time()
        end = fill(template("t + gap"), {"t": time, "gap": gap})
        conditions = [column(plan.window.time_column).is_(exp.null()).not_()]
        if self.drops_late_rows:
            conditions.append(exp.GT(this=end.copy(), expression=param("late")))
        if plan.where is not None:
            conditions.append(exp.paren(plan.where.copy()))
        bounds = [
            exp.alias_(self._to_timestamp(time), "window_start"),
            exp.alias_(self._to_timestamp(end), "window_end"),
        ]
        return (
            exp.select(*self._key_selects(), *bounds, *self._partials())
            .from_(self._rows_as_alias())
            .where(exp.and_(*conditions))
            .group_by(*(key.copy() for key in plan.keys), time.copy())
        )

    def session_steps(self) -> list[Step]:
        """Merge the batch's sessions with the open sessions of the keys it touches.

        Sessions that overlap or touch (next start <= current end) are one session: an
        island in start order, found with a running max of the session ends before it.
        """
        keys = self.key_columns
        new, parts, sessions = table("__new"), table("__parts"), table("__sessions")
        partition = [column(k) for k in keys] or None

        def running(window: str) -> exp.Expr:
            """A window over each key's parts in start order."""
            over = template(window)
            over.set("partition_by", partition and [c.copy() for c in partition])
            return over

        touched = (
            exp.select(*(column(k) for k in keys)).distinct().from_(new)
            if keys
            else exp.select("1").from_(new).limit(1)
        )
        state_columns = [
            column(c) for c in self.window_columns + keys + [c.name for c in self.aggregate_columns]
        ]
        bounded = exp.select(
            "*",
            exp.alias_(fn("epoch_us", column("window_start")), "__start"),
            exp.alias_(fn("epoch_us", column("window_end")), "__end"),
        ).from_(parts)
        reach = running(
            "max(__end) OVER (ORDER BY __start, __end "
            "ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)"
        )
        island = running(
            "sum(CASE WHEN __reach IS NULL OR __start > __reach THEN 1 ELSE 0 END) "
            "OVER (ORDER BY __start, __end ROWS UNBOUNDED PRECEDING)"
        )
        reaches = exp.select("*", exp.alias_(reach, "__reach")).from_(bounded.subquery())
        islands = exp.select("*", exp.alias_(island, "__island")).from_(reaches.subquery())
        bounds = (
            exp.alias_(self._to_timestamp(template("min(__start)")), "window_start"),
            exp.alias_(self._to_timestamp(template("max(__end)")), "window_end"),
        )
        stored = (
            exp.select(*state_columns)
            .from_(aliased(self.table, "__state"))
            .join(
                aliased(touched, "__touched"),
                on=self._match("__state", "__touched", keys),
                join_type="SEMI",
            )
        )
        merged = (
            exp.select(star("__island"))
            .from_(self.combine(islands.subquery(), [*keys, "__island"], bounds).subquery())
            .with_(new.name, self.session_parts())
            .with_(parts.name, union_by_name(stored, exp.select("*").from_(new)))
        )
        if keys:
            replace = delete(
                aliased(self.table, "__state"),
                self._match("__state", "__touched", keys),
                using=[
                    aliased(
                        exp.select(*(column(k) for k in keys)).distinct().from_(sessions),
                        "__touched",
                    )
                ],
            )
        else:
            replace = delete(self.table, exp.Exists(this=exp.select("1").from_(sessions)))
        return [
            Step(
                "merge batch sessions with the open sessions they touch",
                create_table(sessions, merged, temporary=True, replace=True),
            ),
            Step("drop the sessions that were merged", replace, effect=Effect.REMOVES),
            Step(
                "store merged sessions",
                insert_by_name(
                    self.table, exp.select(*(c.copy() for c in state_columns)).from_(sessions)
                ),
                effect=Effect.ADDS,
            ),
        ]

    # -- output --------------------------------------------------------------------------------

    def finalize(self, relation: exp.Expr) -> exp.Select:
        """The user's SELECT list over state rows: aggregates finished, HAVING applied."""
        plan = self.plan
        query = exp.select(*(e.copy() for e in plan.projection)).from_(relation)
        return query.where(plan.having.copy()) if plan.having is not None else query

    def output_steps(self) -> list[Step]:
        """Emission after a MERGE (or a session rewrite): by output mode."""
        plan = self.plan
        if plan.emit is Emit.SNAPSHOT:
            query = self.finalize(self.snapshot_state())
            if plan.order is not None:
                query.set("order", plan.order.copy())
            if plan.limit is not None:
                query = query.limit(plan.limit.copy())
            return [Step("emit the whole result", query, Fetch.EMIT)]
        if plan.emit is Emit.CHANGES:  # sessions are refused (rule session-changes)
            emit = Step(
                "emit groups updated by this batch", self.finalize(table(self.touched)), Fetch.EMIT
            )
            if not plan.watermark_bounds_state:
                return [emit]
            evict = Step(
                "evict windows the watermark passed",
                delete(self.table, self._passed),
                effect=Effect.REMOVES,
                closes=True,
            )
            return [emit, evict]
        return self.closing_steps(table(self.closed))  # sessions: one state row each already

    def snapshot_state(self) -> exp.Expr:
        """The state rows a snapshot is made of. Without GROUP BY there is always one group,
        as in a batch query: before any row it is the aggregates over no rows."""
        plan = self.plan
        if plan.window or plan.keys:
            return self.table.copy()
        empty = (
            exp.select(*self._partials())
            .from_(self._rows_as_alias())
            .where(exp.false())
            .having(exp.not_(exp.Exists(this=exp.select("1").from_(self.table.copy()))))
        )
        return aliased(union_by_name(exp.select("*").from_(self.table.copy()), empty), "__state")

    def stateless_output(self) -> exp.Select:
        plan = self.plan
        projection = (e.copy() for e in plan.projection)
        return self._where(exp.select(*projection).from_(self._rows_as_alias()))


def _count_where(condition: exp.Expr) -> exp.Expr:
    """count(*) FILTER (WHERE condition)."""
    return exp.Filter(this=fn("count", exp.Star()), expression=exp.Where(this=condition))


def _accepted_min(time: exp.Expr, cutoff: exp.Expr | None) -> exp.Expr:
    """The earliest window time, of the rows that are not late (with a `cutoff`)."""
    earliest = fn("min", time.copy())
    if cutoff is None:
        return earliest
    accepted = exp.GTE(this=time.copy(), expression=cutoff.copy())
    return exp.Filter(this=earliest, expression=exp.Where(this=accepted))


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
