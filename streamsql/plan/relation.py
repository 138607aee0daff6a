"""The relation a streaming query's operator reads: sources, and what stateless SQL makes of
them before the operator sees a row.

A query reads FROM one source as it is, or FROM a relation built of sources without state:
subqueries and CTEs (projections, filters), UNION ALL of streams, and joins of one stream
with tables (stream-static joins, Spark's rules). Each source becomes one Scan, read once
per batch whatever the number of references to it; the relation keeps its shape, with every
source reference a Table named by its scan's view.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlglot import exp

from streamsql.catalog.binding import check_union_all
from streamsql.catalog.definitions import INTERNAL_PREFIX, SourceDef
from streamsql.errors import PlanningError
from streamsql.plan.deduplication import row_number_form
from streamsql.plan.plan import JoinType
from streamsql.sql import position_of

SCAN_VIEW = "__input_{}"
MAX_VIEW_DEPTH = 32

# Joins of a stream (on the side named) with a table that Spark runs without state
# (UnsupportedOperationChecker): the stream's rows meet the table as it is in each batch.
# Other outer joins would need to know that a table row will never match a future stream
# row, which only the end of the stream can tell.
STREAM_STATIC_JOINS = {
    ("", "left"),
    ("", "right"),
    ("CROSS", "left"),
    ("CROSS", "right"),
    ("INNER", "left"),
    ("INNER", "right"),
    ("LEFT", "left"),  # left outer, stream on the left
    ("LEFT SEMI", "left"),
    ("LEFT ANTI", "left"),
    ("RIGHT", "right"),  # right outer, stream on the right
}


@dataclass
class BoundRelation:
    """What a query reads: the sources (in the order named) and, unless it is one source as
    it is, the relation over them with the name the query gives it."""

    sources: list[tuple[exp.Table, SourceDef]]  # each reference to a source
    relation: exp.Query | None
    alias: str


def inline_ctes(select: exp.Select) -> exp.Select:
    """WITH x AS (q) ... FROM x as FROM (q) AS x: a CTE over a stream is a subquery of it,
    planned into the same tree (non-recursive CTEs only, as Spark's streaming has them)."""
    with_ = select.args.get("with_")
    if with_ is None:
        return select
    if with_.args.get("recursive"):
        raise PlanningError(
            "WITH RECURSIVE over a stream is not supported: a recursive query has no "
            "incremental form",
            rule="recursive-cte",
            position=position_of(with_),
        )
    select.set("with_", None)
    ctes = list(with_.expressions)
    for index, cte in enumerate(ctes):
        # A CTE sees the ones before it; the query sees them all.
        for later in ctes[index + 1 :]:
            later.set("this", inline(later.this, {cte.alias.lower(): cte.this}))
        select = inline(select, {cte.alias.lower(): cte.this})
    return select


def inline(query: exp.Expr, named: Mapping[str, exp.Query]) -> exp.Expr:
    """Every relation read by one of `named`'s names (a CTE's, a view's) as that query, a
    subquery under the name it is read by."""

    def replace(node: exp.Expr) -> exp.Expr:
        if (
            isinstance(node, exp.Table)
            and not node.db
            and node.name.lower() in named
            and isinstance(node.parent, (exp.From, exp.Join))
        ):
            body = named[node.name.lower()].copy()
            return body.subquery(exp.to_identifier(node.alias_or_name))
        return node

    return query.transform(replace, copy=False)


def inline_views(select: exp.Select, views: Mapping[str, exp.Query]) -> exp.Select:
    """Views over streams as the subqueries they stand for, views over views too."""
    for _ in range(MAX_VIEW_DEPTH):
        if not any(t.name.lower() in views and not t.db for t in _tables(select)):
            return select
        select = inline(select, views)
    raise PlanningError(
        f"Views over streams nest more than {MAX_VIEW_DEPTH} deep (or read themselves)",
        rule="view-depth",
    )


def bind_relation(select: exp.Select, sources: Mapping[str, SourceDef]) -> BoundRelation:
    """Find the sources the query reads and check that nothing between them and the query's
    own SELECT keeps state."""
    from_ = select.args.get("from_")
    relation = from_.this if from_ else None
    if relation is None:
        raise PlanningError(
            "A streaming query reads FROM a source",
            rule="needs-source",
            position=position_of(select),
        )
    references = [
        (table, sources[table.name.lower()])
        for table in _tables(select)
        if not table.db and table.name.lower() in sources
    ]
    if not references:
        raise PlanningError(
            f"Unknown source {relation.sql('duckdb')!r}: a streaming query reads FROM a source "
            "created with CREATE SOURCE",
            position=position_of(relation),
        )
    joins = select.args.get("joins") or []
    if isinstance(relation, exp.Table) and not joins and references[0][0] is relation:
        return BoundRelation(references, None, relation.alias_or_name)
    for inner in select.find_all(exp.Select):
        if inner is not select:
            _check_stateless(inner)
    for join in joins:
        _check_join(relation, join, sources)
    for union in select.find_all(exp.SetOperation):
        check_union_all(union)
    if len(joins) > 1 and any(
        _streaming(relation, sources) and _streaming(j.this, sources) for j in joins
    ):
        raise PlanningError(
            "A stream-stream join with a further join: one join of two streams per query, "
            "for now (join the tables in a view over one of the streams instead)",
            rule="stream-stream-join-chain",
            position=position_of(joins[1]),
        )
    if joins:
        return BoundRelation(references, None, "")
    alias = relation.alias_or_name if isinstance(relation, exp.Subquery) else relation.name
    return BoundRelation(
        references, relation.this if isinstance(relation, exp.Subquery) else relation, alias
    )


def _tables(node: exp.Expr) -> list[exp.Table]:
    """Tables read in FROM and JOIN anywhere in the query, in text order."""
    return [t for t in node.find_all(exp.Table) if isinstance(t.parent, (exp.From, exp.Join))]


def _streaming(node: exp.Expr, sources: Mapping[str, SourceDef]) -> bool:
    tables = [node] if isinstance(node, exp.Table) else _tables(node)
    return any(not t.db and t.name.lower() in sources for t in tables)


# The clauses of a SELECT that make it keep state (or order the whole stream).
STATEFUL_CLAUSES = (
    ("group", "GROUP BY"),
    ("having", "HAVING"),
    ("distinct", "DISTINCT"),
    ("deduplicate", "DEDUPLICATE ON"),
    ("stream_window", "WINDOW"),
    ("order", "ORDER BY"),
    ("limit", "LIMIT"),
    ("emit", "EMIT"),
)


def keeps_state(select: exp.Select) -> bool:
    """Whether the SELECT itself aggregates, windows or deduplicates (a ROW_NUMBER() = 1
    deduplication has been taken out into DEDUPLICATE ON by then)."""
    keys = ("group", "having", "distinct", "deduplicate", "stream_window")
    return any(select.args.get(key) for key in keys) or bool(select.find(exp.AggFunc))


def operator_input(select: exp.Select, sources: Mapping[str, SourceDef]) -> exp.Subquery | None:
    """The subquery `select` reads FROM when it runs as an operator of its own, the query
    being the next one over its rows: when an operator that keeps state is in it or below
    it (Spark 3.5's chained stateful operators), or when the query deduplicates (a
    deduplication numbers the rows of one input in their order)."""
    from_ = select.args.get("from_")
    node = from_.this if from_ else None
    if not isinstance(node, exp.Subquery) or row_number_form(select):
        return None  # (a ROW_NUMBER() deduplication's subquery numbers the rows)
    if select.args.get("distinct") or select.args.get("deduplicate"):
        return None if select.args.get("joins") else node
    return node if isinstance(node.this, exp.Select) and _below_state(node.this, sources) else None


def _below_state(select: exp.Select, sources: Mapping[str, SourceDef]) -> bool:
    """`select` keeps state, joins two streams, or reads FROM a subquery that does."""
    from_ = select.args.get("from_")
    node = from_.this if from_ else None
    joins = select.args.get("joins") or []
    if (
        keeps_state(select)
        or row_number_form(select)
        or (joins and _streaming(node, sources) and any(_streaming(j.this, sources) for j in joins))
    ):
        return True
    return (
        isinstance(node, exp.Subquery)
        and isinstance(node.this, exp.Select)
        and _below_state(node.this, sources)
    )


def _check_stateless(select: exp.Select) -> None:
    """A SELECT below the query's own (not in its FROM, where it is an operator of its own):
    projections and filters only."""
    for key, what in STATEFUL_CLAUSES:
        if select.args.get(key):
            raise PlanningError(
                f"{what} in a subquery, CTE or view over a stream here: an operator that "
                "keeps state runs below another only as the subquery the query reads FROM "
                "(not in a join or UNION, nor with EMIT of its own)",
                rule="stateful-subquery",
                position=position_of(select.args[key]),
            )
    if select.find(exp.AggFunc):
        raise PlanningError(
            "Aggregates in a subquery, CTE or view over a stream here: an aggregation runs "
            "below another operator only as the subquery the query reads FROM (not in a join "
            "or UNION)",
            rule="stateful-subquery",
            position=position_of(select.find(exp.AggFunc)),
        )


def _check_join(left: exp.Expr, join: exp.Join, sources: Mapping[str, SourceDef]) -> None:
    right = join.this
    left_streams, right_streams = _streaming(left, sources), _streaming(right, sources)
    at = position_of(join)
    if left_streams and right_streams:
        _check_stream_join(left, join, sources)
        return
    side = "left" if left_streams else "right"
    kind = " ".join(filter(None, (join.side, join.kind))).upper()
    if join.args.get("using") is None and join.args.get("on") is None and kind not in ("", "CROSS"):
        return
    if (kind, side) not in STREAM_STATIC_JOINS:
        spelled = f"{kind or 'INNER'} JOIN"
        raise PlanningError(
            f"{spelled} with the stream on the {side}: Spark refuses it too, since a row of "
            "the table would be emitted with NULLs only once no stream row can ever match "
            "it, and a stream never ends. Stream-static joins are INNER, LEFT (OUTER, SEMI, "
            "ANTI) with the stream on the left, and RIGHT OUTER with the stream on the right",
            rule="stream-static-outer-join",
            position=at,
        )


# Joins of two streams and how the operator runs them (Spark's StreamingSymmetricHashJoinExec
# takes inner, the three outer joins and left semi; UnsupportedOperationChecker refuses the
# rest of stream-stream joins).
STREAM_STREAM_JOINS = {
    "": JoinType.INNER,
    "INNER": JoinType.INNER,
    "LEFT": JoinType.LEFT,
    "LEFT OUTER": JoinType.LEFT,
    "RIGHT": JoinType.RIGHT,
    "RIGHT OUTER": JoinType.RIGHT,
    "FULL": JoinType.FULL,
    "FULL OUTER": JoinType.FULL,
    "SEMI": JoinType.SEMI,
    "LEFT SEMI": JoinType.SEMI,
}


def join_type(join: exp.Join) -> JoinType | None:
    """The stream-stream join a JOIN clause asks for, None if there is none."""
    if join.args.get("method") or join.args.get("using") or join.args.get("on") is None:
        return None
    return STREAM_STREAM_JOINS.get(" ".join(filter(None, (join.side, join.kind))).upper())


def _check_stream_join(left: exp.Expr, join: exp.Join, sources: Mapping[str, SourceDef]) -> None:
    """A join of two streams: each side one source as it is, joined ON a condition."""
    at = position_of(join)
    spelled = " ".join(filter(None, (join.args.get("method"), join.side, join.kind))).upper()
    if join_type(join) is None:
        raise PlanningError(
            f"{spelled or 'INNER'} JOIN of two streams is not supported: stream-stream joins "
            "are INNER, LEFT/RIGHT/FULL OUTER and LEFT SEMI, with an ON condition (Spark "
            "refuses anti joins of streams, and a cross join keeps every row forever)",
            rule="stream-stream-join-type",
            position=at,
        )
    for side in (left, join.this):
        if not (isinstance(side, exp.Table) and not side.db and side.name.lower() in sources):
            raise PlanningError(
                "A stream-stream join reads two sources as they are: a subquery, view or "
                "UNION on either side is not supported yet (filter and project above the "
                "join, in the query's own SELECT)",
                rule="stream-stream-join-input",
                position=position_of(side) or at,
            )


def renamed_join(
    select: exp.Select, relations: list[tuple[str, list[str]]], output: list[str]
) -> tuple[exp.Select, dict[tuple[str, str], str]]:
    """The FROM ... JOIN ... of `select` as one relation of uniquely named columns, and how
    each (relation alias, column) is called in it: a column name shared by two relations is
    prefixed with its relation's, in the internal namespace. `select`'s own column
    references are rewritten to the new names, and its columns keep the names `output` (as
    DuckDB names them over the join as written)."""
    counts: dict[str, int] = {}
    for _, columns in relations:
        for column in columns:
            counts[column.lower()] = counts.get(column.lower(), 0) + 1
    names: dict[tuple[str, str], str] = {}
    projection = []
    # The right of a semi (or anti) join brings no columns.
    hidden = {
        j.this.alias_or_name.lower()
        for j in select.args.get("joins") or []
        if (j.kind or "").upper() in ("SEMI", "ANTI")
    }
    for alias, columns in relations:
        if alias.lower() in hidden:
            continue
        for column in columns:
            unique = counts[column.lower()] == 1
            name = column if unique else f"{INTERNAL_PREFIX}{alias}_{column}"
            names[(alias.lower(), column.lower())] = name
            projection.append(
                exp.alias_(exp.column(column, table=alias, quoted=True), name, quoted=True)
            )
    owners: dict[str, list[str]] = {}
    for alias, column in names:
        owners.setdefault(column, []).append(alias)

    def rename(node: exp.Expr) -> exp.Expr:
        if not isinstance(node, exp.Column) or not isinstance(node.this, exp.Identifier):
            return node
        column = node.name.lower()
        alias = node.table.lower() if node.table else None
        if alias is None:
            if len(owners.get(column, ())) > 1:
                raise PlanningError(
                    f"Column {node.name} is ambiguous: {' and '.join(owners[column])} both "
                    f"have it; qualify it ({owners[column][0]}.{node.name})",
                    position=position_of(node),
                )
            alias = owners[column][0] if column in owners else None
        if alias is not None and (alias, column) in names:
            return exp.column(names[(alias, column)], quoted=True)
        return node

    expressions = []
    for item in select.expressions:
        value = item.unalias()
        star = isinstance(value, exp.Star) or (
            isinstance(value, exp.Column) and isinstance(value.this, exp.Star)
        )
        if not star:
            expressions.append(item.unalias().transform(rename))
            continue
        wanted = value.table.lower() if isinstance(value, exp.Column) else None
        expressions += [
            exp.column(names[(a.lower(), c.lower())], quoted=True)
            for a, columns in relations
            if wanted in (None, a.lower())
            for c in columns
        ]
    select.set(
        "expressions",
        [exp.alias_(e, name, quoted=True) for e, name in zip(expressions, output, strict=True)],
    )
    joined = exp.select(*projection).from_(select.args["from_"].this.copy())
    joined.set("joins", [j.copy() for j in select.args.get("joins") or []])
    for key in ("where", "group", "having", "order", "stream_window", "qualify"):
        value = select.args.get(key)
        if isinstance(value, list):
            select.set(key, [v.transform(rename) for v in value])
        elif value is not None:
            select.set(key, value.transform(rename))
    return joined, names


def event_time_of(relation: exp.Expr, scan_time: Callable[[exp.Table], str | None]) -> list[str]:
    """The columns of `relation` that carry a scan's event time unchanged (Spark keeps the
    watermark on a column through projections that only rename it; a UNION ALL's columns
    are its first branch's)."""
    if isinstance(relation, exp.Subquery):
        return event_time_of(relation.this, scan_time)
    if isinstance(relation, exp.SetOperation):
        return event_time_of(relation.this, scan_time)
    if isinstance(relation, exp.Table):
        name = scan_time(relation)
        return [name] if name else []
    if not isinstance(relation, exp.Select):
        return []
    inputs = [relation.args["from_"].this, *(j.this for j in relation.args.get("joins") or [])]
    times = {t.lower() for source in inputs for t in event_time_of(source, scan_time)}
    found = []
    for projection in relation.expressions:
        value = projection.unalias()
        if isinstance(value, exp.Star) or (
            isinstance(value, exp.Column) and isinstance(value.this, exp.Star)
        ):
            found += [t for source in inputs for t in event_time_of(source, scan_time)]
        elif isinstance(value, exp.Column) and value.name.lower() in times:
            found.append(projection.alias_or_name)
    return found
