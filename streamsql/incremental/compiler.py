"""Plan -> per-batch DuckDB SQL.

A query becomes a BatchProgram: set-up statements run once, and a list of steps run in
order inside each micro-batch's transaction. Each step is one DuckDB statement; what the
runtime does with its result is said by `fetch`. Parameters: `$late` is the late-row
threshold L_N and `$watermark` the watermark W_N in force, both in epoch microseconds.

The input of a batch is the Arrow table registered as `__input`, in the source's declared
columns. State lives in one table per query: window bounds, group keys `key<i>`, the
decomposed aggregate columns `agg<i>_<part>` and a row counter `__rows`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sqlglot import exp

from streamsql.incremental.aggregates import StateColumn
from streamsql.plan.plan import Emit, QueryKind, StreamingPlan

INPUT_VIEW = "__input"


class Fetch(str, Enum):
    NONE = "none"  # run for its effect
    STATS = "stats"  # one row: input_rows, null_event_times, late_rows, max_event_us
    VIEW = "view"  # rows kept as a view for later steps (DML ... RETURNING cannot nest)
    EMIT = "emit"  # the rows this batch emits


@dataclass(frozen=True)
class Step:
    name: str
    sql: str
    fetch: Fetch = Fetch.NONE
    view: str | None = None
    # Closing and evicting windows can only find work when the watermark moved (or on the
    # first batch of a run); skipping them otherwise saves a statement per batch.
    when_watermark_advances: bool = False

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(name for name in ("late", "watermark") if f"${name}" in self.sql)


@dataclass(frozen=True)
class BatchProgram:
    setup: tuple[str, ...]
    steps: tuple[Step, ...]
    state_table: str | None

    def explain(self) -> str:
        lines = []
        for statement in self.setup:
            lines += ["-- once, when the query starts", f"{statement};", ""]
        for step in self.steps:
            note = " (when the watermark advances)" if step.when_watermark_advances else ""
            kept = f" -> {step.view}" if step.view else ""
            lines += [f"-- per batch: {step.name}{kept}{note}", f"{step.sql};", ""]
        return "\n".join(lines).rstrip() + "\n"


def ident(name: str) -> str:
    return exp.to_identifier(name).sql("duckdb")


def sql_of(node: exp.Expr) -> str:
    return node.sql("duckdb")


def floor_to(value: str, step: int) -> str:
    """Floor `value` to a multiple of `step` (Unix-epoch aligned), also below zero."""
    return f"({value} - ((({value}) % {step}) + {step}) % {step})"


class Compiler:
    """Generates the BatchProgram of one plan; `state_table` is a qualified table name."""

    def __init__(self, plan: StreamingPlan, state_table: str) -> None:
        self.plan = plan
        self.state = state_table
        self.aggregate_columns: list[StateColumn] = [
            StateColumn("__rows", "count(*)", "__state.__rows + __batch.__rows", "sum(__rows)::BIGINT")
        ] + [column for call in plan.aggregates for column in call.columns]
        self.key_columns = [f"key{i}" for i in range(len(plan.keys))]
        self.window_columns = ["window_start", "window_end"] if plan.window else []

    def compile(self) -> BatchProgram:
        plan = self.plan
        steps = [self.stats()]
        if plan.kind is QueryKind.STATELESS:
            steps.append(Step("emit rows", self.stateless_output(), Fetch.EMIT))
            return BatchProgram((), tuple(steps), None)
        if plan.kind is QueryKind.SESSION:
            steps += self.session_steps()
        else:
            steps += self.merge_steps()
        steps += self.output_steps()
        setup = (
            f"CREATE TABLE IF NOT EXISTS {self.state} AS "
            f"SELECT * FROM ({self.state_shape()}) LIMIT 0",
        )
        return BatchProgram(setup, tuple(steps), self.state)

    # -- input ---------------------------------------------------------------------------------

    def rows(self) -> str:
        """The source relation: declared columns plus computed ones."""
        relation = f"SELECT * FROM {INPUT_VIEW}"
        for name, expression in self.plan.derived:
            relation = f"SELECT *, {sql_of(expression)} AS {ident(name)} FROM ({relation})"
        return relation

    @property
    def drops_late_rows(self) -> bool:
        plan = self.plan
        return plan.watermark_bounds_state and plan.emit is not Emit.SNAPSHOT

    def _time(self) -> str:
        return f"epoch_us({ident(self.plan.window.time_column)})"

    def _to_timestamp(self, micros: str) -> str:
        ts = f"make_timestamp({micros})"
        return f"CAST({ts} AS TIMESTAMPTZ)" if self._window_is_tz else ts

    @property
    def _window_is_tz(self) -> bool:
        return bool(self.plan.window and self.plan.window.bound_type.endswith("TIME ZONE"))

    def latest_window_end(self, micros: str) -> str:
        """End of the last window a row at `micros` falls in: the row is late iff <= L."""
        window = self.plan.window
        if window.kind == "SESSION":
            return f"{micros} + {window.gap_us}"
        return f"{floor_to(micros, window.slide_us)} + {window.size_us}"

    def stats(self) -> Step:
        plan = self.plan
        columns = ["count(*) AS input_rows"]
        if plan.window:
            time = ident(plan.window.time_column)
            columns.append(f"count(*) FILTER (WHERE {time} IS NULL) AS null_event_times")
        else:
            columns.append("0 AS null_event_times")
        if self.drops_late_rows:
            columns.append(
                f"count(*) FILTER (WHERE {self.latest_window_end(self._time())} <= $late) "
                "AS late_rows"
            )
        else:
            columns.append("0 AS late_rows")
        if plan.has_watermark:
            columns.append(f"max(epoch_us({ident(plan.event_time)})) AS max_event_us")
        else:
            columns.append("NULL AS max_event_us")
        return Step("batch statistics", f"SELECT {', '.join(columns)} FROM ({self.rows()})", Fetch.STATS)

    def windowed_rows(self) -> str:
        """Rows with their window bounds; a hopping row appears once per window it is in."""
        window = self.plan.window
        timed = f"SELECT *, {self._time()} AS __t FROM ({self.rows()}) WHERE {ident(window.time_column)} IS NOT NULL"
        if window.kind == "TUMBLING":
            assigned = f"SELECT *, {floor_to('__t', window.size_us)} AS __ws FROM ({timed})"
        else:
            assigned = (
                f"SELECT * EXCLUDE (__last, __i), __last - __i * {window.slide_us} AS __ws "
                f"FROM (SELECT *, {floor_to('__t', window.slide_us)} AS __last FROM ({timed})), "
                f"range({window.windows_per_row}) AS __hop(__i) "
                f"WHERE __last - __i * {window.slide_us} + {window.size_us} > __t"
            )
        late = f" WHERE __ws + {window.size_us} > $late" if self.drops_late_rows else ""
        return (
            f"SELECT * EXCLUDE (__t, __ws), {self._to_timestamp('__ws')} AS window_start, "
            f"{self._to_timestamp(f'__ws + {window.size_us}')} AS window_end "
            f"FROM ({assigned}){late}"
        )

    # -- aggregation state -------------------------------------------------------------------

    def _where(self) -> str:
        return f" WHERE {sql_of(self.plan.where)}" if self.plan.where is not None else ""

    def _key_selects(self) -> list[str]:
        return [f"{sql_of(key)} AS {name}" for key, name in zip(self.plan.keys, self.key_columns, strict=True)]

    def partial(self) -> str:
        """The batch's partial aggregates, one row per (window, group)."""
        plan = self.plan
        relation = self.windowed_rows() if plan.window else self.rows()
        groups = self.window_columns + [sql_of(key) for key in plan.keys]
        selects = self.window_columns + self._key_selects() + [
            f"{c.partial} AS {c.name}" for c in self.aggregate_columns
        ]
        sql = f"SELECT {', '.join(selects)} FROM ({relation}) AS {ident(plan.alias)}{self._where()}"
        if groups:
            return f"{sql} GROUP BY {', '.join(groups)}"
        return f"{sql} HAVING count(*) > 0"

    def state_shape(self) -> str:
        return self.session_parts() if self.plan.kind is QueryKind.SESSION else self.partial()

    def _match(self, left: str, right: str, columns: list[str]) -> str:
        conditions = [
            f"{left}.{c} = {right}.{c}" for c in columns if c in self.window_columns
        ] + [f"{left}.{c} IS NOT DISTINCT FROM {right}.{c}" for c in columns if c not in self.window_columns]
        return " AND ".join(conditions) or "TRUE"

    def merge_steps(self) -> list[Step]:
        keys = self.window_columns + self.key_columns
        columns = keys + [c.name for c in self.aggregate_columns]
        updates = ", ".join(f"{c.name} = {c.merge}" for c in self.aggregate_columns)
        returning = " RETURNING *" if self.plan.emit is Emit.CHANGES else ""
        sql = (
            f"MERGE INTO {self.state} AS __state USING ({self.partial()}) AS __batch "
            f"ON {self._match('__state', '__batch', keys)} "
            f"WHEN MATCHED THEN UPDATE SET {updates} "
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(columns)}) "
            f"VALUES ({', '.join(f'__batch.{c}' for c in columns)}){returning}"
        )
        if returning:
            return [Step("merge batch into state", sql, Fetch.VIEW, view="__touched")]
        return [Step("merge batch into state", sql)]

    # -- sessions ----------------------------------------------------------------------------

    def session_parts(self) -> str:
        """Each accepted row as a one-event session [ts, ts + gap), pre-merged per timestamp."""
        plan = self.plan
        gap = plan.window.gap_us
        time = self._time()
        late = f" AND {time} + {gap} > $late" if self.drops_late_rows else ""
        where = f" AND ({sql_of(plan.where)})" if plan.where is not None else ""
        groups = [sql_of(key) for key in plan.keys] + [time]
        selects = self._key_selects() + [
            f"{self._to_timestamp(time)} AS window_start",
            f"{self._to_timestamp(f'{time} + {gap}')} AS window_end",
        ] + [f"{c.partial} AS {c.name}" for c in self.aggregate_columns]
        return (
            f"SELECT {', '.join(selects)} FROM ({self.rows()}) AS {ident(plan.alias)} "
            f"WHERE {ident(plan.window.time_column)} IS NOT NULL{late}{where} "
            f"GROUP BY {', '.join(groups)}"
        )

    def session_steps(self) -> list[Step]:
        """Merge the batch's sessions with the open sessions of the keys it touches.

        Sessions that overlap or touch (next start <= current end) are one session: an
        island in the order of start times, found with a running max of session ends.
        """
        keys = self.key_columns
        partition = f"PARTITION BY {', '.join(keys)} " if keys else ""
        order = f"{partition}ORDER BY __start, __end"
        touched_keys = f"SELECT DISTINCT {', '.join(keys)} FROM __new" if keys else "SELECT 1 FROM __new LIMIT 1"
        group_exprs = {name: sql for call in self.plan.aggregates for name, sql in call.group.items()}
        combine = [f"{c.combine} AS {c.name}" for c in self.aggregate_columns]
        bounds = [
            f"{self._to_timestamp('min(__start)')} AS window_start",
            f"{self._to_timestamp('max(__end)')} AS window_end",
        ]
        state_cols = ", ".join(self.window_columns + keys + [c.name for c in self.aggregate_columns])
        group_by = ", ".join([*keys, "__island"])
        window_group = f"WINDOW __group AS (PARTITION BY {group_by})"
        grouped_extra = "".join(f", {sql} AS {name}" for name, sql in group_exprs.items())
        sessions = (
            f"CREATE OR REPLACE TEMP TABLE __sessions AS "
            f"WITH __new AS ({self.session_parts()}), "
            f"__parts AS ("
            f"SELECT {state_cols}, FALSE AS __changed FROM {self.state} AS __state "
            f"SEMI JOIN ({touched_keys}) AS __touched ON {self._match('__state', '__touched', keys)} "
            f"UNION ALL BY NAME SELECT *, TRUE AS __changed FROM __new), "
            f"__spans AS (SELECT *, epoch_us(window_start) AS __start, epoch_us(window_end) AS __end "
            f"FROM __parts), "
            f"__reach AS (SELECT *, max(__end) OVER ({order} ROWS BETWEEN UNBOUNDED PRECEDING AND "
            f"1 PRECEDING) AS __reach FROM __spans), "
            f"__islands AS (SELECT *, sum(CASE WHEN __reach IS NULL OR __start > __reach THEN 1 "
            f"ELSE 0 END) OVER ({order} ROWS UNBOUNDED PRECEDING) AS __island FROM __reach), "
            f"__grouped AS (SELECT *{grouped_extra} FROM __islands {window_group if group_exprs else ''}) "
            f"SELECT {', '.join([*keys, *bounds, *combine])}, "
            f"bool_or(__changed) AS __changed FROM __grouped GROUP BY {group_by}"
        )
        replace = (
            f"DELETE FROM {self.state} AS __state USING "
            f"(SELECT DISTINCT {', '.join(keys)} FROM __sessions) AS __touched "
            f"WHERE {self._match('__state', '__touched', keys)}"
            if keys
            else f"DELETE FROM {self.state} WHERE EXISTS (SELECT 1 FROM __sessions)"
        )
        steps = [
            Step("merge batch sessions with open sessions", sessions),
            Step("drop the sessions that were merged", replace),
            Step("store merged sessions", f"INSERT INTO {self.state} BY NAME SELECT {state_cols} FROM __sessions"),
        ]
        if self.plan.emit is Emit.CHANGES:
            steps.append(
                Step("sessions changed by this batch",
                     "SELECT * EXCLUDE (__changed) FROM __sessions WHERE __changed",
                     Fetch.VIEW, view="__touched")
            )
        return steps

    # -- output --------------------------------------------------------------------------------

    def finalize(self, relation: str) -> str:
        """The user's SELECT list over state rows: aggregates finished, HAVING applied."""
        plan = self.plan
        sql = f"SELECT {', '.join(sql_of(e) for e in plan.projection)} FROM {relation}"
        if plan.having is not None:
            sql += f" WHERE {sql_of(plan.having)}"
        return sql

    def output_steps(self) -> list[Step]:
        plan = self.plan
        if plan.emit is Emit.SNAPSHOT:
            sql = self.finalize(self.state)
            if plan.order is not None:
                sql += f" {sql_of(plan.order)}"
            if plan.limit is not None:
                sql += f" LIMIT {sql_of(plan.limit)}"
            return [Step("emit the whole result", sql, Fetch.EMIT)]
        closed = f"window_end <= {self._to_timestamp('$watermark::BIGINT')}"
        evict = Step(
            "evict windows the watermark passed",
            f"DELETE FROM {self.state} WHERE {closed}",
            when_watermark_advances=True,
        )
        if plan.emit is Emit.CHANGES:
            steps = [
                Step("emit groups updated by this batch", self.finalize("__touched"), Fetch.EMIT)
            ]
            return [*steps, evict] if plan.watermark_bounds_state else steps
        # Emitted and evicted with the same predicate in the same transaction: each window
        # leaves the state exactly when it is emitted.
        return [
            Step(
                "emit windows the watermark passed",
                self.finalize(f"(SELECT * FROM {self.state} WHERE {closed}) AS __closed"),
                Fetch.EMIT,
                when_watermark_advances=True,
            ),
            evict,
        ]

    def stateless_output(self) -> str:
        plan = self.plan
        projection = ", ".join(sql_of(e) for e in plan.projection)
        return f"SELECT {projection} FROM ({self.rows()}) AS {ident(plan.alias)}{self._where()}"


def compile_plan(plan: StreamingPlan, state_table: str) -> BatchProgram:
    return Compiler(plan, state_table).compile()
