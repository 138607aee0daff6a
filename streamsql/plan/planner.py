"""Bind a streaming SELECT to its source, classify it, and decide how it can run incrementally.

Every refusal names its rule, the way Spark's UnsupportedOperationChecker names output
modes: a user who reads the message knows what to change.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from itertools import pairwise
from typing import Any

import duckdb
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.tokens import TokenType

from streamsql.catalog.binding import check_column_name
from streamsql.catalog.definitions import Column, Emit, SourceDef, WatermarkSpec
from streamsql.errors import PlanningError, UnboundedStateWarning
from streamsql.incremental.aggregates import decompose
from streamsql.plan import deduplication
from streamsql.plan.plan import (
    WINDOW_TIME,
    JoinType,
    QueryKind,
    Scan,
    StreamingPlan,
    StreamJoin,
    WatermarkPolicy,
    WindowSpec,
    window_time,
)
from streamsql.plan.relation import (
    SCAN_VIEW,
    BoundRelation,
    bind_relation,
    event_time_of,
    inline_ctes,
    inline_views,
    keeps_state,
    operator_input,
    renamed_join,
)
from streamsql.plan.stream_join import plan_stream_join
from streamsql.quoting import quote
from streamsql.sql import nodes, position_of

DUCKDB = Dialect.get_or_raise("duckdb")
WINDOW_COLUMNS = ("window_start", "window_end")
TIME_TYPES = (
    "TIMESTAMP",
    "TIMESTAMP WITH TIME ZONE",
    "TIMESTAMP_MS",
    "TIMESTAMP_NS",
    "TIMESTAMP_S",
    "DATE",
)


def sql_of(node: exp.Expr) -> str:
    """An expression's text, the key by which the planner matches a SELECT expression to a
    GROUP BY key or an aggregate call: without comments, so `GROUP BY k -- note` is `k`."""
    return node.sql("duckdb", comments=False)


class Planner:
    """Turns a SELECT over a source into a StreamingPlan, using DuckDB to type and validate it.

    A query over the output of a stateful operator becomes a chain of plans, each planned by
    a Planner of its own whose scans are named apart (`scan_view`)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        sources: Mapping[str, SourceDef],
        views: Mapping[str, exp.Query] | None = None,
        scan_view: str = SCAN_VIEW,
        operators: Iterator[int] | None = None,
    ) -> None:
        self.con = con
        self.sources = {name.lower(): source for name, source in sources.items()}
        self.views = {name.lower(): query for name, query in (views or {}).items()}
        self.scan_view = scan_view
        self._operators = operators or itertools.count(1)  # numbers the chain's planners
        self._function_names: dict[str, set[str]] = {}

    # -- entry point -------------------------------------------------------------------------

    def plan(
        self,
        query: exp.Select,
        parameters: Sequence[Any] | None = None,
        watermark_policy: WatermarkPolicy = WatermarkPolicy.MIN,
    ) -> StreamingPlan:
        """`parameters` bind the query's `?` placeholders, in the order they appear."""
        select = query.copy()
        bound = self._bind_parameters(select, parameters)
        select = inline_views(inline_ctes(select), self.views)
        return self._plan(query, select, bound, watermark_policy)

    def _plan(
        self,
        query: exp.Select,
        select: exp.Select,
        bound: dict[str, Any],
        watermark_policy: WatermarkPolicy,
    ) -> StreamingPlan:
        """The plan of `select` (`query` as written, its views and CTEs inlined)."""
        below = operator_input(select, self.sources)
        if below is not None:
            inner = below.this
            if not isinstance(inner, exp.Select):  # a UNION ALL: the rows of its branches
                inner = exp.select("*").from_(below.copy())
            upstream = self._upstream_planner()._plan(inner, inner, bound, watermark_policy)
            name = below.alias_or_name or "__upstream"
            select.set("from_", exp.From(this=exp.Table(this=exp.to_identifier(name, quoted=True))))
            return self._plan_over(query, upstream, name, select, bound, watermark_policy)
        select, requested = deduplication.take_out(select)
        over_join: exp.Select | None = None  # the query, when it aggregates a stream join
        reading = bind_relation(select, self.sources)
        scans = self._scans(reading.sources)
        if reading.relation is None and not select.args.get("joins"):
            scan, relation, alias = scans[0], None, reading.alias
            self._unqualify(select, {alias.lower(), scan.name.lower()})
            for key in (requested.keys or []) if requested else []:
                self._unqualify(key, {alias.lower(), scan.name.lower()})
            event_time, types, ctes = scan.event_time, scan.types, [(scan.view, scan)]
            event_times = [event_time] if event_time else []
            join = None
            where = select.args["where"].this if select.args.get("where") else None
            scan.prefilter, where = self._push_below_watermark(where, scan)
        else:
            if requested:
                raise deduplication.over_one_source(requested)
            relation, alias, event_times = self._relation(select, reading, scans, bound)
            event_time = event_times[0] if event_times else None
            ctes = [(s.view, s) for s in scans] + [(alias, relation)]
            types = self._types(ctes)
            join = self._stream_join(relation, scans)
            if join is not None and keeps_state(select):
                # The join is one operator, the rest of the query the next one over its rows.
                over_join, select = select, exp.select("*").from_(alias)
            where = select.args["where"].this if select.args.get("where") else None
        window = self._window(select, types)
        if window and WINDOW_TIME not in types:
            self._bind_window_time(select)
        self._refuse_unsupported(select)

        aggregates = self._aggregate_calls(select)
        group_items = self._group_items(select)
        if requested:
            emit = deduplication.check_query(requested, select, bool(aggregates or group_items))
            kind = QueryKind.DEDUPLICATE
        elif join is not None:
            kind = QueryKind.JOIN
        elif not aggregates and not group_items:
            if window:
                raise PlanningError(
                    f"WINDOW {window.kind} needs an aggregation: GROUP BY window_start, "
                    "window_end, ... with aggregate functions",
                    rule="window-needs-aggregation",
                    position=position_of(select.args.get("stream_window")),
                )
            kind = QueryKind.STATELESS
        else:
            kind = {None: QueryKind.GLOBAL, "SESSION": QueryKind.SESSION}.get(
                window and window.kind, QueryKind.WINDOWED
            )
        watermarked = any(s.has_watermark for s in scans) and event_time is not None
        if join is not None:
            emit = self._join_emit(select)
        elif not requested:
            emit = self._emit(select, kind, window, event_time if watermarked else None)
        plan = StreamingPlan(
            select=query,
            scans=scans,
            alias=alias,
            relation=relation,
            event_time=event_time if watermarked else None,
            kind=kind,
            emit=emit,
            where=where,
            watermark_policy=watermark_policy,
            window=window,
            having=select.args["having"].this if select.args.get("having") else None,
            order=select.args.get("order"),
            limit=select.args["limit"].expression if select.args.get("limit") else None,
            join=join,
            parameters=bound,
            time_types={
                name.lower(): types[name.lower()]
                for name in (*event_times, window and window.time_column)
                if name and name.lower() in types
            },
            event_times=tuple(event_times) if watermarked else (),
        )
        self._check_modifiers(plan)
        names, plan.output_types = self._validate(select, ctes, window, bound)
        if requested:
            plan.keys, plan.deduplication = deduplication.deduplication_of(
                requested, select, names, plan.event_time, plan.has_watermark
            )
            self._validate_keys(plan)
        if kind in (QueryKind.STATELESS, QueryKind.DEDUPLICATE, QueryKind.JOIN):
            # Named as DuckDB names them (a join's columns are renamed in its relation).
            plan.projection = (
                [e.copy() for e in select.expressions]
                if select.find(exp.Star)
                else [
                    exp.alias_(e.unalias().copy(), exp.to_identifier(name, quoted=True))
                    for e, name in zip(select.expressions, names, strict=True)
                ]
            )
            plan.output_names = names
        else:
            self._plan_aggregation(plan, select, group_items, aggregates, names)
        if over_join is not None:
            return self._plan_over(query, plan, alias, over_join, bound, watermark_policy)
        return plan

    # -- chained operators -------------------------------------------------------------------

    def _upstream_planner(self) -> Planner:
        """A planner for an operator below this one: its scans are named apart."""
        scan_view = f"__op{next(self._operators)}_input_{{}}"
        return Planner(self.con, self.sources, {}, scan_view, self._operators)

    def _plan_over(
        self,
        query: exp.Select,
        upstream: StreamingPlan,
        name: str,
        select: exp.Select,
        bound: dict[str, Any],
        watermark_policy: WatermarkPolicy,
    ) -> StreamingPlan:
        """`select` over the rows `upstream` emits in each batch, read as a stream `name`
        (Spark 3.5's chained stateful operators, in append mode): its event time is the
        output column the query windows by, among those that carry upstream's watermark."""
        below = upstream.select
        at = position_of(below.args.get("emit") or below.args.get("group") or below)
        if upstream.emit is not Emit.FINAL:
            raise PlanningError(
                f"A {upstream.kind.value} below another operator must emit each row once, "
                f"when it is final (append mode; it would emit {upstream.emit.value}): Spark "
                "runs several stateful operators in append mode only. Window the aggregation "
                "below, with a watermark, so that its windows close",
                rule="chained-operators-append-only",
                position=at,
            )
        carriers = {c.lower(): c for c in upstream.watermarked_outputs}
        window = select.args.get("stream_window")
        wanted = window.this.name if isinstance(window and window.this, exp.Column) else None
        if upstream.output_watermark_shift is None:
            column = None
        elif wanted is not None:
            column = carriers.get(wanted.lower())
        else:
            column = next(iter(carriers.values()), None)
        if window is not None and column is None:
            if not upstream.has_watermark:
                passed = "it has none: declare a watermark on the sources it reads"
            elif upstream.output_watermark_shift is None and carriers:
                passed = "it passes on none, as no time range in ON bounds the join's state"
            elif not carriers:
                carrying = "window_time (its end - 1 microsecond)"
                if not upstream.window:
                    carrying = f"its event time ({', '.join(upstream.event_times)})"
                passed = f"none of its columns carries it: select {carrying} and window by it"
            else:
                passed = f"window by {' or '.join(carriers.values())}"
            raise PlanningError(
                f"WINDOW over the rows of a {upstream.kind.value} needs a time column that "
                f"carries that operator's watermark: {passed}",
                rule="chained-window-time",
                position=position_of(window.this),
            )
        no_delay = exp.Interval(this=exp.Literal.string("0"), unit=exp.var("SECOND"))
        columns = zip(upstream.output_names, upstream.output_types, strict=True)
        source = SourceDef(
            name,
            tuple(Column(n, t) for n, t in columns),
            (),
            WatermarkSpec(column, no_delay) if column else None,
            {"connector": "operator"},
            sql="",
        )
        for table in select.find_all(exp.Table):
            if not table.db and table.name.lower() in self.sources.keys() - {name.lower()}:
                raise PlanningError(
                    f"{table.name} is read next to the rows of a {upstream.kind.value}: a query "
                    "over a stateful operator reads only that operator's rows (join the "
                    "streams below it)",
                    rule="chained-operators",
                    position=position_of(table),
                )
        planner = Planner(self.con, {name: source}, {}, self.scan_view, self._operators)
        plan = planner._plan(query, select, bound, watermark_policy)
        if plan.emit is not Emit.FINAL:
            what = (
                f"A {plan.kind.value} (its groups never close, so it emits {plan.emit.value})"
                if plan.kind is QueryKind.GLOBAL and not query.args.get("emit")
                else f"EMIT {plan.emit.value}"
            )
            raise PlanningError(
                f"{what} over the rows of a {upstream.kind.value}: Spark runs several "
                "stateful operators in append mode only (EMIT FINAL), each emitting a row "
                "once, when the watermark makes it final; window the query by a column that "
                "carries the watermark",
                rule="chained-operators-append-only",
                position=position_of(  # in the query as written: `select` is rewritten
                    query.args.get("emit") or query.find(exp.AggFunc) or query.args.get("group")
                ),
            )
        plan.upstream = upstream
        return plan

    def _bind_window_time(self, select: exp.Select) -> None:
        """`window_time` in a windowed query's SELECT, HAVING and ORDER BY is its window's end
        - 1 microsecond (Spark's window_time), named window_time when not aliased."""
        for item in select.expressions:
            if isinstance(item, exp.Column) and item.name.lower() == WINDOW_TIME:
                item.replace(exp.alias_(item.copy(), WINDOW_TIME))
        for value in filter(
            None, [*select.expressions, *(select.args.get(k) for k in ("having", "order"))]
        ):
            for column in list(value.find_all(exp.Column)):
                if column.name.lower() == WINDOW_TIME and not column.table:
                    column.replace(exp.paren(window_time()))

    # -- sources and the relation over them --------------------------------------------------

    def _scans(self, references: list[tuple[exp.Table, SourceDef]]) -> list[Scan]:
        """One scan per source, however often the query names it; every reference becomes
        the scan's view under the name the query gives it."""
        scans: dict[str, Scan] = {}
        for table, source in references:
            scan = scans.get(source.name.lower())
            derived = [(c.name, c.expression) for c in source.computed]
            event_time, delay = self._watermark(table, source, derived)
            if scan is None:
                scan = Scan(source, self.scan_view.format(len(scans)), derived, event_time, delay)
                scan.types = self._types([(scan.view, scan)])
                scans[source.name.lower()] = scan
            elif (scan.event_time, scan.watermark_delay_us) != (event_time, delay):
                raise PlanningError(
                    f"Source {source.name} is read twice with different watermarks: a source "
                    "has one watermark in a query",
                    rule="one-watermark-per-source",
                    position=position_of(table),
                )
            table.set("alias", exp.TableAlias(this=exp.to_identifier(table.alias_or_name)))
            table.set("this", exp.to_identifier(scan.view))
            table.set("watermark", None)
        return list(scans.values())

    def _relation(
        self,
        select: exp.Select,
        reading: BoundRelation,
        scans: list[Scan],
        parameters: dict[str, Any],
    ) -> tuple[exp.Query, str, list[str]]:
        """The relation the operator reads, its name, and its event-time columns; `select`
        is left reading it by that name."""
        by_view = {scan.view: scan for scan in scans}
        references = Counter(t.name for t in select.find_all(exp.Table))
        once = {view for view in by_view if references[view] == 1}

        def scan_time(table: exp.Table) -> str | None:
            scan = by_view.get(table.name)
            return scan.event_time if scan and scan.has_watermark else None

        for inner in list(select.find_all(exp.Select)):
            table = inner.args["from_"].this if inner.args.get("from_") else None
            if (
                inner is not select
                and isinstance(table, exp.Table)
                and table.name in once
                and not inner.args.get("joins")
                and inner.args.get("where")
            ):
                scan = by_view[table.name]
                pushed, kept = self._push_below_watermark(inner.args["where"].this, scan)
                scan.prefilter = pushed
                inner.set("where", exp.Where(this=kept) if kept is not None else None)
        if reading.relation is not None:
            alias = reading.alias or "__relation"
            relation = reading.relation
            times = event_time_of(relation, scan_time)
        else:
            relations = self._joined_relations(select, by_view)
            self._infer_not_null(select, by_view, once)
            self._push_into_stream(select, relations, by_view, once)
            output = self._join_output_names(select, scans, parameters)
            relation, names = renamed_join(select, relations, output)
            alias = "__joined"
            inputs = [select.args["from_"].this, *(j.this for j in select.args["joins"])]
            times = [
                names[(node.alias_or_name.lower(), time.lower())]
                for node in inputs
                for time in event_time_of(node, scan_time)
                if (node.alias_or_name.lower(), time.lower()) in names
            ]
            select.set("joins", None)
        select.set("from_", exp.From(this=exp.to_table(exp.to_identifier(alias).sql("duckdb"))))
        self._unqualify(select, {alias.lower()})
        return relation, alias, times

    def _stream_join(self, relation: exp.Expr | None, scans: list[Scan]) -> StreamJoin | None:
        """The stream-stream join the query's relation is, if it is one (checked already by
        bind_relation): the query's stateful operator, a stateless SELECT over it."""
        if not isinstance(relation, exp.Select) or not relation.args.get("joins"):
            return None
        by_view = {scan.view: scan for scan in scans}
        tables = [relation.args["from_"].this, relation.args["joins"][0].this]
        if not all(isinstance(t, exp.Table) and t.name in by_view for t in tables):
            return None
        join = plan_stream_join(
            relation, by_view, lambda node: self.interval_us(node, "Join time range")
        )
        if join.type is JoinType.INNER and join.unbounded:
            warnings.warn(
                f"Stream-stream join {join.left.alias} x {join.right.alias} keeps "
                f"{', '.join(s.alias for s in (join.left, join.right) if s.bound is None)}"
                " rows in state forever: no watermark with a time range in ON bounds it (add "
                "watermarks to both sources and a condition such as b.ts BETWEEN a.ts AND "
                "a.ts + INTERVAL '1 hour')",
                UnboundedStateWarning,
                stacklevel=2,
            )
        return join

    @staticmethod
    def _join_emit(select: exp.Select) -> Emit:
        """A stream-stream join emits each row once (append mode, as Spark allows)."""
        node = select.args.get("emit")
        if node is not None and Emit(node.mode) is not Emit.FINAL:
            raise PlanningError(
                f"EMIT {node.mode} over a stream-stream join: a join emits each joined row "
                "once and never takes it back (append mode only, as in Spark); use EMIT "
                "FINAL or no EMIT clause",
                rule="stream-stream-join-append-only",
                position=position_of(node),
            )
        return Emit.FINAL

    def _join_output_names(
        self, select: exp.Select, scans: list[Scan], parameters: dict[str, Any]
    ) -> list[str]:
        """The names DuckDB gives the query's columns over its join as written (its columns
        are renamed in the relation the operator reads); the window bounds and the
        window's `window_time`, which no relation of the join has yet, stand in as NULL
        timestamps."""
        parts = [f"{quote(s.view)} AS ({self.empty_relation(s.source, s.derived)})" for s in scans]
        batch = select.copy()
        windowed = bool(select.args.get("stream_window"))

        def stand_in(node: exp.Expr) -> bool:
            if not isinstance(node, exp.Column):
                return False
            name = node.name.lower()
            return name in WINDOW_COLUMNS or (windowed and name == WINDOW_TIME and not node.table)

        for key in ("stream_window", "emit"):
            batch.set(key, None)
        for item in batch.expressions:
            if stand_in(item):
                item.replace(exp.alias_(item.copy(), item.name, quoted=True))

        def bound(node: exp.Expr) -> exp.Expr:
            return exp.cast(exp.null(), "TIMESTAMP") if stand_in(node) else node

        sql = f"WITH {', '.join(parts)} SELECT * FROM ({sql_of(batch.transform(bound))}) LIMIT 0"
        try:
            return [c[0] for c in self.con.execute(sql, _used(parameters, batch)).description]
        except duckdb.Error as error:
            raise PlanningError(
                f"Invalid query: {_first_line(error)}", position=_culprit(select, error)
            ) from None

    def _joined_relations(
        self, select: exp.Select, by_view: dict[str, Scan]
    ) -> list[tuple[str, list[str]]]:
        """Each relation of FROM ... JOIN ...: its name in the query and its columns."""
        scans = [(s.view, s) for s in by_view.values()]
        relations = []
        for node in [select.args["from_"].this, *(j.this for j in select.args["joins"])]:
            if isinstance(node, exp.Table) and node.name in by_view:
                columns = by_view[node.name].column_names
            else:
                query = (
                    node.this
                    if isinstance(node, exp.Subquery)
                    else exp.select("*").from_(
                        exp.table_(node.name, db=node.db or None, catalog=node.catalog or None)
                    )
                )
                columns = list(self._types([*scans, ("__relation", query)], cased=True))
            relations.append((node.alias_or_name, columns))
        return relations

    def _push_into_stream(
        self,
        select: exp.Select,
        relations: list[tuple[str, list[str]]],
        by_view: dict[str, Scan],
        once: set[str],
    ) -> None:
        """The WHERE conjuncts over a join that read the stream's columns alone go below its
        watermark, as Spark's optimizer pushes them through the join (the stream is never
        the NULL-extended side of a stream-static join) and below EventTimeWatermark."""
        where = select.args.get("where")
        if where is None:
            return
        first = select.args["from_"].this.alias_or_name.lower()
        nulled = set()  # sides whose columns a join fills with NULLs: WHERE stays above
        for join in select.args.get("joins") or []:
            side = (join.side or "").upper()
            if side in ("LEFT", "FULL"):
                nulled.add(join.this.alias_or_name.lower())
            if side in ("RIGHT", "FULL"):
                nulled.add(first)
        streams = {
            alias: scan
            for alias, scan in _streams(select, by_view, once).items()
            if alias not in nulled
        }
        owners: dict[str, list[str]] = {}
        for alias, columns in relations:
            for column in columns:
                owners.setdefault(column.lower(), []).append(alias.lower())
        kept = []
        conjuncts = where.this.flatten() if isinstance(where.this, exp.And) else [where.this]
        for conjunct in conjuncts:
            readers = {
                c.table.lower() if c.table else next(iter(owners.get(c.name.lower(), [""])))
                for c in conjunct.find_all(exp.Column)
            }
            scan = streams.get(next(iter(readers))) if len(readers) == 1 else None
            if scan is None:
                kept.append(conjunct)
                continue
            unqualified = conjunct.copy()
            for column in unqualified.find_all(exp.Column):
                column.set("table", None)
            pushed, stays = self._push_below_watermark(unqualified, scan)
            if stays is not None:
                kept.append(conjunct)
                continue
            scan.prefilter = _conjunction([c for c in (scan.prefilter, pushed) if c is not None])
        select.set("where", exp.Where(this=_conjunction(kept)) if kept else None)

    def _infer_not_null(self, select: exp.Select, by_view: dict[str, Scan], once: set[str]) -> None:
        """Spark infers `key IS NOT NULL` for the join keys of a side whose rows are never
        NULL-extended (InferFiltersFromConstraints) and pushes it below the watermark: such
        rows of a stream never reach the watermark: on its equality keys, the streams of an
        inner or semi join, the right of a left outer join, the left of a right outer one."""
        streams = _streams(select, by_view, once)
        first = select.args["from_"].this.alias_or_name.lower()
        for join in select.args.get("joins") or []:
            kind = " ".join(filter(None, (join.side, join.kind))).upper()
            on = join.args.get("on")
            kept = {
                "": {first, join.this.alias_or_name.lower()},
                "INNER": {first, join.this.alias_or_name.lower()},
                "SEMI": {first, join.this.alias_or_name.lower()},
                "LEFT SEMI": {first, join.this.alias_or_name.lower()},
                "LEFT": {join.this.alias_or_name.lower()},
                "LEFT OUTER": {join.this.alias_or_name.lower()},
                "RIGHT": {first},
                "RIGHT OUTER": {first},
            }.get(kind, set())
            if on is None:
                continue
            for eq in on.find_all(exp.EQ):
                for side in (eq.this, eq.expression):
                    if (
                        isinstance(side, exp.Column)
                        and side.table.lower() in streams
                        and side.table.lower() in kept
                    ):
                        scan = streams[side.table.lower()]
                        check = exp.column(side.name, quoted=True).is_(exp.null()).not_()
                        scan.prefilter = _conjunction(
                            [c for c in (scan.prefilter, check) if c is not None]
                        )

    # -- binding -----------------------------------------------------------------------------

    @staticmethod
    def _bind_parameters(select: exp.Select, parameters: Sequence[Any] | None) -> dict[str, Any]:
        """Name the `?` placeholders $p1, $p2, ... in text order; DuckDB binds them per batch."""
        placeholders = sorted(
            (p for p in select.find_all(exp.Placeholder) if p.this is None),
            key=lambda p: p.meta.get("start", 0),
        )
        values = list(parameters or [])
        if len(values) != len(placeholders):
            raise PlanningError(
                f"The query has {len(placeholders)} parameter(s) and {len(values)} value(s) "
                "were given"
            )
        bound = {}
        for index, (placeholder, value) in enumerate(zip(placeholders, values, strict=True), 1):
            placeholder.set("this", f"p{index}")
            bound[f"p{index}"] = value
        return bound

    @staticmethod
    def _unqualify(select: exp.Select, names: set[str]) -> None:
        """One relation, so `e.col` and `events.col` are just `col`."""
        for column in select.find_all(exp.Column):
            if column.table and column.table.lower() in names:
                column.set("table", None)

    def _watermark(
        self, table: exp.Table, source: SourceDef, derived: list[tuple[str, exp.Expr]]
    ) -> tuple[str | None, int | None]:
        clause = table.args.get("watermark")
        if clause is None:
            if source.watermark is None:
                return None, None
            spec = source.watermark
            return spec.column, self.delay_us(spec.delay)
        expression, name = clause.this, clause.args.get("alias")
        if name is not None:
            check_column_name(name.name, "WATERMARK ... AS")
            derived.append((name.name, expression))
            column = name.name
        elif isinstance(expression, exp.Column):
            column = expression.name
        else:
            raise PlanningError(
                f"WATERMARK {sql_of(expression)} needs a name: WATERMARK <expr> AS <name> "
                "DELAY OF ...",
                rule="watermark-needs-name",
                position=position_of(expression),
            )
        return column, self.delay_us(clause.args["delay"])

    def delay_us(self, node: exp.Expr) -> int:
        """A watermark delay, truncated to whole milliseconds as Spark keeps it
        (EventTimeWatermark.getDelayMs): 500 microseconds is no delay at all."""
        return self.interval_us(node, "WATERMARK delay") // 1000 * 1000

    def interval_us(
        self, node: exp.Expr, what: str, positive: bool = False, at: exp.Expr | None = None
    ) -> int:
        """A fixed-length interval in microseconds, evaluated by DuckDB."""
        try:
            return self._interval_us(node, what, positive)
        except PlanningError as error:
            raise error.at(position_of(node) or position_of(at)) from None

    def _interval_us(self, node: exp.Expr, what: str, positive: bool) -> int:
        text = sql_of(node)
        try:
            micros, months = self.con.execute(
                f"SELECT epoch_us(TIMESTAMP '1970-01-01' + CAST({text} AS INTERVAL)), "
                f"datepart('year', CAST({text} AS INTERVAL)) * 12 "
                f"+ datepart('month', CAST({text} AS INTERVAL))"
            ).fetchall()[0]
        except duckdb.Error as error:
            raise PlanningError(
                f"{what} {text} is not an interval: {_first_line(error)}", rule="bad-interval"
            ) from None
        if micros is None:
            raise PlanningError(f"{what} {text} is NULL, not an interval", rule="bad-interval")
        if months:
            raise PlanningError(
                f"{what} {text} has months or years, which have no fixed length; "
                "use days, hours, minutes, seconds",
                rule="bad-interval",
            )
        if micros < 0 or (positive and micros == 0):
            raise PlanningError(
                f"{what} {text} must be {'positive' if positive else 'zero or more'}",
                rule="bad-interval",
            )
        return micros

    def _types(
        self, ctes: list[tuple[str, Scan | exp.Query]], cased: bool = False
    ) -> dict[str, str]:
        """The columns of the last of `ctes` and their DuckDB types, over no rows: by
        lower-case name, or (`cased`) as the relation spells them."""
        sql = f"DESCRIBE {self.empty_query(ctes)}"
        try:
            rows = self.con.execute(sql).fetchall()
        except duckdb.Error as error:
            last = ctes[-1][1]
            what = (
                f"Computed columns of source {last.name}"
                if isinstance(last, Scan)
                else "The relation the query reads"
            )
            raise PlanningError(
                f"{what} do not evaluate: {_first_line(error)}", position=_culprit(last, error)
            ) from None
        return {(name if cased else name.lower()): type_ for name, type_, *_ in rows}

    @staticmethod
    def empty_query(
        ctes: list[tuple[str, Scan | exp.Query]], window_type: str | None = None
    ) -> str:
        """The last of `ctes` as a relation DuckDB can type, over no rows: a Scan's source
        with its computed columns, or a query over the ones before it (by their names)."""
        parts = []
        for name, item in ctes:
            sql = (
                Planner.empty_relation(item.source, item.derived)
                if isinstance(item, Scan)
                else sql_of(item)
            )
            parts.append(f"{quote(name)} AS ({sql})")
        last = quote(ctes[-1][0])
        columns = (
            f", CAST(NULL AS {window_type}) AS window_start, "
            f"CAST(NULL AS {window_type}) AS window_end"
            if window_type
            else ""
        )
        return f"WITH {', '.join(parts)} SELECT *{columns} FROM {last}"

    @staticmethod
    def empty_relation(source: SourceDef, derived: list[tuple[str, exp.Expr]]) -> str:
        """The columns a query over `source` sees, as an empty relation DuckDB can type."""
        physical = ", ".join(f"CAST(NULL AS {c.type}) AS {quote(c.name)}" for c in source.columns)
        relation = f"SELECT {physical} LIMIT 0"
        for name, expression in derived:
            ident = quote(name)
            relation = f"SELECT *, {sql_of(expression)} AS {ident} FROM ({relation})"
        return relation

    # -- filters -----------------------------------------------------------------------------

    def _push_below_watermark(
        self, where: exp.Expr | None, scan: Scan
    ) -> tuple[exp.Expr | None, exp.Expr | None]:
        """Split WHERE into the conjuncts that filter rows before the watermark measures
        them and those that stay above it (Spark's PushPredicateThroughNonJoin, case
        `Filter(condition, watermark: EventTimeWatermark)`: a conjunct goes below iff it is
        deterministic and does not reference the event-time column). Window bounds exist
        only above the window, so conjuncts over them stay up as well."""
        if where is None:
            return None, None
        above = {name.lower() for name in (scan.event_time, *WINDOW_COLUMNS) if name}
        pushed: list[exp.Expr] = []
        kept: list[exp.Expr] = []
        for conjunct in where.flatten() if isinstance(where, exp.And) else [where]:
            stays = any(c.name.lower() in above for c in conjunct.find_all(exp.Column))
            (kept if stays or self._volatile(conjunct) else pushed).append(conjunct)
        return _conjunction(pushed), _conjunction(kept)

    def _functions(self, condition: str) -> set[str]:
        """Names of the DuckDB functions that meet `condition` (a fixed filter over
        duckdb_functions()), looked up once per planner."""
        if condition not in self._function_names:
            self._function_names[condition] = {
                name
                for (name,) in self.con.execute(
                    f"SELECT DISTINCT function_name FROM duckdb_functions() WHERE {condition}"
                ).fetchall()
            }
        return self._function_names[condition]

    def _volatile(self, node: exp.Expr) -> bool:
        """Whether the expression calls a function DuckDB marks VOLATILE (random(), uuid()):
        a name, unquoted, right before a parenthesis in the expression's text. The text is
        rendered once: rendering each call apart renders nested calls again and again
        (quadratic in their depth: seconds for a few hundred). DuckDB lists its functions
        slowly (tens of ms): only an expression with calls asks."""
        tokens = DUCKDB.tokenize(sql_of(node))
        called = {
            token.text.lower()
            for token, following in pairwise(tokens)
            if following.token_type is TokenType.L_PAREN
            and token.token_type not in (TokenType.IDENTIFIER, TokenType.STRING)
        }
        return bool(called) and not called.isdisjoint(self._functions("stability = 'VOLATILE'"))

    # -- windows -----------------------------------------------------------------------------

    def _window(self, select: exp.Select, types: dict[str, str]) -> WindowSpec | None:
        node = select.args.get("stream_window")
        if node is None:
            return None
        column = node.this
        if not isinstance(column, exp.Column) or column.name.lower() not in types:
            raise PlanningError(
                f"WINDOW {node.kind} needs a time column of the source as its first argument, "
                f"got {sql_of(column)}",
                rule="window-time-column",
                position=position_of(column),
            )
        taken = [c for c in WINDOW_COLUMNS if c in types]
        if taken:
            raise PlanningError(
                f"WINDOW {node.kind} adds the columns window_start and window_end, and the "
                f"source has a column {taken[0]}, which they would shadow: a windowed query "
                "cannot read a source with a column of either name",
                rule="window-column-names",
                position=position_of(node),
            )
        name = column.name
        time_type = types[name.lower()]
        bound_type = "TIMESTAMP WITH TIME ZONE" if time_type.endswith("TIME ZONE") else "TIMESTAMP"
        if time_type not in TIME_TYPES:
            raise PlanningError(
                f"WINDOW {node.kind} ({name}, ...): {name} is {types[name.lower()]}, "
                "not a TIMESTAMP",
                rule="window-time-column",
                position=position_of(column),
            )
        if isinstance(node, nodes.SessionWindow):
            gap = self.interval_us(node.args["gap"], "Session gap", positive=True, at=node)
            return WindowSpec("SESSION", name, gap_us=gap, bound_type=bound_type)
        size = self.interval_us(node.args["size"], "Window size", positive=True, at=node)
        slide = size
        if isinstance(node, nodes.HoppingWindow):
            slide = self.interval_us(node.args["slide"], "Window slide", positive=True, at=node)
            if slide > size:
                raise PlanningError(
                    "HOPPING window slide is larger than its size: rows between windows "
                    "would belong to none",
                    rule="bad-interval",
                    position=position_of(node.args["slide"]) or position_of(node),
                )
        return WindowSpec(node.kind, name, size_us=size, slide_us=slide, bound_type=bound_type)

    # -- classification ----------------------------------------------------------------------

    @staticmethod
    def _refuse_unsupported(select: exp.Select) -> None:
        if select.args.get("distinct"):
            raise PlanningError(
                "SELECT DISTINCT over a stream (deduplication) is not supported yet; use GROUP BY",
                rule="deduplication",
                position=position_of(select.expressions[0]),
            )
        if window := select.find(exp.Window):
            raise PlanningError(
                "Window functions (OVER) are not supported in streaming queries; use WINDOW "
                "TUMBLING/HOPPING/SESSION for event-time windows",
                rule="window-function",
                position=position_of(window),
            )
        relations = {id(n) for n in select.find_all(exp.From, exp.Join)}
        for node in select.find_all(exp.Subquery, exp.Exists, exp.Select):
            if node is select or id(node.parent) in relations:
                continue
            if isinstance(node, exp.Select) and isinstance(
                node.parent, (exp.Subquery, exp.SetOperation)
            ):
                continue
            raise PlanningError(
                "Subqueries in expressions (IN, EXISTS, scalar) are not supported in streaming "
                "queries yet; join the table instead",
                rule="subquery-expression",
                position=position_of(node),
            )

    def _is_aggregate(self, node: exp.Expr) -> bool:
        if isinstance(node, exp.AggFunc):
            return True
        if isinstance(node, (exp.Anonymous, exp.IgnoreNulls)):
            name = node.this.name if isinstance(node, exp.IgnoreNulls) else node.name
            aggregates = self._functions("function_type = 'aggregate'")
            return name.lower() in aggregates or isinstance(node, exp.IgnoreNulls)
        return False

    def _aggregate_calls(self, select: exp.Select) -> list[exp.Expr]:
        """Distinct aggregate calls (FILTER included) in the select list, HAVING and ORDER BY."""
        calls: dict[str, exp.Expr] = {}
        scopes = [*select.expressions, select.args.get("having"), select.args.get("order")]
        for scope in filter(None, scopes):
            for node in scope.walk(prune=lambda n: self._is_call(n)):
                if self._is_call(node):
                    inner = node.this if isinstance(node, exp.Filter) else node
                    if isinstance(inner, exp.IgnoreNulls):  # any_value(x): its own argument
                        inner = inner.this
                    for child in inner.iter_expressions():
                        if any(self._is_aggregate(n) for n in child.walk()):
                            raise PlanningError(
                                f"Aggregate calls cannot be nested: {sql_of(node)}",
                                position=position_of(node),
                            )
                    calls.setdefault(sql_of(node), node)
        return list(calls.values())

    def _is_call(self, node: exp.Expr) -> bool:
        return self._is_aggregate(node) or (
            isinstance(node, exp.Filter) and self._is_aggregate(node.this)
        )

    @staticmethod
    def _group_items(select: exp.Select) -> list[exp.Expr]:
        group = select.args.get("group")
        if group is None:
            return []
        if group.find(exp.GroupingSets, exp.Cube, exp.Rollup):
            raise PlanningError(
                "GROUPING SETS, CUBE and ROLLUP are not supported in streaming queries",
                rule="grouping-sets",
                position=position_of(group),
            )
        aliases = {e.alias.lower(): e.unalias() for e in select.expressions if e.alias}
        if group.args.get("all"):
            return [
                e.unalias()
                for e in select.expressions
                if not any(isinstance(n, exp.AggFunc) for n in e.walk())
            ]
        items = []
        for item in group.expressions:
            if isinstance(item, exp.Literal) and item.is_int:
                position = int(item.name)
                if not 1 <= position <= len(select.expressions):
                    raise PlanningError(
                        f"GROUP BY {position}: no such column in the SELECT list",
                        position=position_of(item),
                    )
                items.append(select.expressions[position - 1].unalias())
            elif isinstance(item, exp.Column) and not item.table and item.name.lower() in aliases:
                items.append(aliases[item.name.lower()])
            else:
                items.append(item)
        return items

    @staticmethod
    def _emit(
        select: exp.Select, kind: QueryKind, window: WindowSpec | None, event_time: str | None
    ) -> Emit:
        node = select.args.get("emit")
        at = position_of(node or select.args.get("stream_window") or select)
        watermarked = bool(window and event_time and window.time_column == event_time)
        # What runs without a watermark: sessions take no EMIT CHANGES (rule session-changes).
        unbounded = (
            "EMIT SNAPSHOT" if kind is QueryKind.SESSION else "EMIT CHANGES or EMIT SNAPSHOT"
        )
        if node is None:
            if kind is QueryKind.GLOBAL:
                return Emit.CHANGES
            if kind is not QueryKind.STATELESS and not watermarked:
                raise PlanningError(
                    f"A {kind.value} without a watermark on its window's time column can never "
                    "close a window, and its state would grow without bound: declare a "
                    f"WATERMARK, or ask for {unbounded} explicitly",
                    rule="windowed-final-needs-watermark",
                    position=at,
                )
            return Emit.FINAL
        emit = Emit(node.mode)
        if emit is Emit.FINAL and kind is QueryKind.GLOBAL:
            raise PlanningError(
                "EMIT FINAL needs windows that close: a global aggregation's groups never "
                "close. Use EMIT CHANGES (update) or EMIT SNAPSHOT (complete)",
                rule="final-needs-window",
                position=at,
            )
        if emit is Emit.FINAL and kind is not QueryKind.STATELESS and not watermarked:
            raise PlanningError(
                f"EMIT FINAL on a {kind.value} needs a watermark on the window's time column "
                f"({window.time_column}): without one no window ever closes and state grows "
                "without bound. Add WATERMARK FOR ... to the source or WATERMARK ... DELAY OF "
                f"... in FROM, or use {unbounded}",
                rule="windowed-final-needs-watermark",
                position=at,
            )
        if emit is Emit.CHANGES and kind is QueryKind.SESSION:
            raise PlanningError(
                "EMIT CHANGES on a session window: a session that merges with a later one "
                "would leave its earlier row behind, which an update cannot take back (Spark "
                "refuses update mode for session windows too). Use EMIT FINAL (each session "
                "once, when the watermark passes its end) or EMIT SNAPSHOT",
                rule="session-changes",
                position=at,
            )
        if emit is Emit.SNAPSHOT and kind is QueryKind.STATELESS:
            raise PlanningError(
                "EMIT SNAPSHOT (complete mode) needs an aggregation: the whole result of a "
                "stateless query is the whole stream",
                rule="snapshot-needs-aggregation",
                position=at,
            )
        return emit

    @staticmethod
    def _check_modifiers(plan: StreamingPlan) -> None:
        if (plan.order or plan.limit is not None) and plan.emit is not Emit.SNAPSHOT:
            raise PlanningError(
                "ORDER BY and LIMIT apply to a whole result, and an unbounded stream has none: "
                "use them with EMIT SNAPSHOT, or sort when you read the sink",
                rule="order-limit-needs-snapshot",
                position=position_of(plan.order or plan.limit),
            )
        if (
            plan.window
            and plan.window.kind == "SESSION"
            and plan.where is not None
            and any(c.name.lower() in WINDOW_COLUMNS for c in plan.where.find_all(exp.Column))
        ):
            raise PlanningError(
                "Session bounds are known only after sessions merge: filter them in HAVING",
                rule="session-bounds-in-where",
                position=position_of(plan.where),
            )

    # -- validation against DuckDB -----------------------------------------------------------

    def _validate(
        self,
        select: exp.Select,
        ctes: list[tuple[str, Scan | exp.Query]],
        window: WindowSpec | None,
        parameters: dict[str, Any],
    ) -> tuple[list[str], list[str]]:
        """Run the query as a plain batch query over no rows: DuckDB names, types and checks
        it."""
        batch = select.copy()
        for key in ("stream_window", "emit"):
            batch.set(key, None)
        relation = self.empty_query(ctes, window.bound_type if window else None)
        alias = quote(ctes[-1][0])
        sql = f"WITH {alias} AS ({relation}) {sql_of(batch)}"
        try:
            queries = [item for _, item in ctes if isinstance(item, exp.Expr)]
            description = self.con.execute(
                f"SELECT * FROM ({sql}) LIMIT 0", _used(parameters, batch, *queries)
            ).description
        except duckdb.Error as error:
            raise PlanningError(
                f"Invalid query: {_first_line(error)}", position=_culprit(select, error)
            ) from None
        names = [column[0] for column in description]
        if len({n.lower() for n in names}) != len(names):
            raise PlanningError(
                f"The query has two output columns of the same name ({', '.join(names)}); "
                "give them distinct aliases"
            )
        return names, [str(column[1]) for column in description]

    def _validate_keys(self, plan: StreamingPlan) -> None:
        """Deduplication keys are expressions over the source row: DuckDB types them."""
        if plan.deduplication.over_output:
            return  # the output columns, validated with the query
        if any(
            self._is_aggregate(n) or isinstance(n, exp.Window) for k in plan.keys for n in k.walk()
        ):
            raise PlanningError(
                "A deduplication key is an expression over one row: no aggregates or window "
                "functions",
                rule="deduplication-key",
                position=position_of(plan.keys[0]),
            )
        relation = self.empty_relation(plan.scans[0].source, plan.scans[0].derived)
        keys = ", ".join(sql_of(key) for key in plan.keys)
        names = {p.name for key in plan.keys for p in key.find_all(exp.Placeholder)}
        values = {name: plan.parameters[name] for name in names}
        try:
            self.con.execute(
                f"SELECT {keys} FROM ({relation}) AS {quote(plan.alias)}",
                values or None,
            ).fetchall()
        except duckdb.Error as error:
            raise PlanningError(
                f"Invalid deduplication key: {_first_line(error)}",
                position=position_of(plan.keys[0]),
            ) from None

    # -- aggregation -------------------------------------------------------------------------

    def _plan_aggregation(
        self,
        plan: StreamingPlan,
        select: exp.Select,
        group_items: list[exp.Expr],
        calls: list[exp.Expr],
        names: list[str],
    ) -> None:
        window_keys = [
            g for g in group_items if isinstance(g, exp.Column) and g.name.lower() in WINDOW_COLUMNS
        ]
        plan.keys = [g for g in group_items if g not in window_keys]
        if plan.window and plan.window.kind == "SESSION":
            plan.keys = self._session_keys(plan.keys)
        if plan.window and not window_keys:
            raise PlanningError(
                f"A WINDOW {plan.window.kind} query must GROUP BY window_start and/or "
                "window_end; otherwise rows of different windows would be added together",
                rule="window-group-by",
                position=position_of(select.args.get("group") or select.args.get("stream_window")),
            )
        if not plan.window and any(
            c.name.lower() in WINDOW_COLUMNS for g in group_items for c in g.find_all(exp.Column)
        ):
            raise PlanningError(
                "window_start and window_end exist only with a WINDOW TUMBLING, HOPPING or "
                "SESSION clause",
                rule="window-group-by",
            )
        plan.aggregates = []
        for index, call in enumerate(calls):
            try:
                plan.aggregates.append(decompose(call, index))
            except PlanningError as error:
                raise error.at(position_of(call)) from None
        replacements: dict[str, exp.Expr] = {
            sql_of(call.node): exp.paren(call.final.copy()) for call in plan.aggregates
        }
        key_columns = {sql_of(key): exp.column(f"key{i}") for i, key in enumerate(plan.keys)}
        key_state = {*(f"key{i}" for i in range(len(plan.keys))), *WINDOW_COLUMNS}
        state_columns = key_state | {c.name for call in plan.aggregates for c in call.columns}

        def to_state(node: exp.Expr) -> exp.Expr:
            text = sql_of(node)
            if text in replacements:
                return replacements[text].copy()
            if text in key_columns:
                return key_columns[text].copy()
            return node

        plan.projection = []
        plan.key_names = []
        emitted_keys = set()
        for name, expression in zip(names, select.expressions, strict=True):
            value = expression.unalias().transform(to_state)
            self._check_grouped(value, state_columns, name)
            if isinstance(value, exp.Column) and value.name in key_state:
                plan.key_names.append(name)
                emitted_keys.add(value.name)
            plan.projection.append(exp.alias_(value, exp.to_identifier(name, quoted=True)))
        plan.output_names = names
        plan.keys_complete = {f"key{i}" for i in range(len(plan.keys))} <= emitted_keys and (
            not plan.window or bool(emitted_keys & set(WINDOW_COLUMNS))
        )
        if plan.having is not None:
            plan.having = plan.having.transform(to_state)
            self._check_grouped(plan.having, state_columns, "HAVING")
        if plan.order is not None:
            plan.order = plan.order.transform(to_state)

    @staticmethod
    def _session_keys(keys: list[exp.Expr]) -> list[exp.Expr]:
        """A session's bounds are known only once its rows have merged, so a GROUP BY
        expression over them (`window_end - window_start`) cannot group rows. One over the
        bounds alone is a function of the session: it is left out of the keys and computed
        from the merged bounds when the session is emitted. One that mixes the bounds with
        row columns is refused."""
        kept = []
        for key in keys:
            names = {c.name.lower() for c in key.find_all(exp.Column)}
            if not names & set(WINDOW_COLUMNS):
                kept.append(key)
            elif not names <= set(WINDOW_COLUMNS):
                raise PlanningError(
                    f"GROUP BY {sql_of(key)} mixes session bounds with row columns: a "
                    "session's bounds are known only after its rows merge. Group by the "
                    "columns and window_start/window_end apart, and combine them in the "
                    "SELECT list",
                    rule="session-bounds-in-group-by",
                    position=position_of(key),
                )
        return kept

    @staticmethod
    def _check_grouped(value: exp.Expr, state_columns: set[str], where: str) -> None:
        for column in value.find_all(exp.Column):
            if column.name not in state_columns:
                raise PlanningError(
                    f"Column {column.sql('duckdb')} in {where} must appear in the GROUP BY clause "
                    "or be used in an aggregate function"
                )


def _streams(select: exp.Select, by_view: dict[str, Scan], once: set[str]) -> dict[str, Scan]:
    """The scans the query reads once, by the name it gives them: only there may a filter
    of one reference go below the source's watermark."""
    return {
        t.alias_or_name.lower(): by_view[t.name]
        for t in select.find_all(exp.Table)
        if t.name in by_view and t.name in once
    }


def _used(parameters: dict[str, Any], *nodes: exp.Expr) -> dict[str, Any] | None:
    """The values of the `$p<n>` placeholders in `nodes` (a query over part of a chain has
    some of the query's)."""
    names = {p.name for node in nodes for p in node.find_all(exp.Placeholder)}
    return {name: value for name, value in parameters.items() if name in names} or None


def _conjunction(conjuncts: list[exp.Expr]) -> exp.Expr | None:
    return exp.and_(*(c.copy() for c in conjuncts)) if conjuncts else None


def _culprit(node: exp.Expr | Scan, error: Exception) -> tuple[int, int] | None:
    """Where a DuckDB binder error points: the first column it names in quotes."""
    names = {name.lower() for name in re.findall(r'"([^"]+)"', str(error))}
    nodes = [e for _, e in node.derived] if isinstance(node, Scan) else [node]
    for column in (c for n in nodes for c in n.find_all(exp.Column)):
        if column.name.lower() in names:
            return position_of(column)
    return None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
