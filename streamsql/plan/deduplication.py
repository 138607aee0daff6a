"""Recognise deduplication in a streaming SELECT and take it out of the query.

Four spellings, all Spark's dropDuplicates(keys) but the last with WITHIN WATERMARK:

- `SELECT DISTINCT <list> ...`: the keys are the whole output row;
- `SELECT DISTINCT ON (<keys>) <list> ...` (DuckDB's, PostgreSQL's);
- Flink's `SELECT <list> FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY <keys> ORDER BY
  <event time>) AS rn FROM <source> ...) WHERE rn = 1` (keep the first row);
- `SELECT <list> FROM <source> ... DEDUPLICATE ON (<keys>) [WITHIN WATERMARK]`, the last
  being Spark's dropDuplicatesWithinWatermark(keys).

What remains is a plain SELECT over the source, which the planner binds and validates as it
does any other; the keys and the spelling come back beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from streamsql.catalog.definitions import Emit
from streamsql.errors import PlanningError
from streamsql.plan.plan import Deduplication
from streamsql.sql import position_of

DISTINCT = "DISTINCT"
DISTINCT_ON = "DISTINCT ON"
ROW_NUMBER = "ROW_NUMBER"
DEDUPLICATE_ON = "DEDUPLICATE ON"


@dataclass
class Requested:
    """What the query asked for: `keys` None means the whole output row (SELECT DISTINCT).
    `order` is the ROW_NUMBER form's ORDER BY column, which must be the event time."""

    form: str
    keys: list[exp.Expr] | None
    within_watermark: bool = False
    order: exp.Column | None = None
    at: exp.Expr | None = None  # where to point an error about the deduplication


def take_out(select: exp.Select) -> tuple[exp.Select, Requested | None]:
    """The query without its deduplication, and the deduplication it asked for (or None).
    `select` is the planner's copy; it may be changed in place."""
    requested = None
    if row_number_form(select):
        select, requested = _flatten_row_number(select)
    distinct = select.args.get("distinct")
    clause = select.args.get("deduplicate")
    found = [r for r in (requested, distinct, clause) if r is not None]
    if len(found) > 1:
        raise PlanningError(
            "A query deduplicates once: DISTINCT, DISTINCT ON, ROW_NUMBER() ... = 1 and "
            "DEDUPLICATE ON cannot be combined",
            rule="one-deduplication",
            position=position_of(clause or distinct),
        )
    if distinct is not None:
        select.set("distinct", None)
        on = distinct.args.get("on")
        if on is None:
            return select, Requested(DISTINCT, None, at=select.expressions[0])
        keys = list(on.expressions) if isinstance(on, exp.Tuple) else [on]
        return select, Requested(DISTINCT_ON, keys, at=on)
    if clause is not None:
        select.set("deduplicate", None)
        within = bool(clause.args.get("within_watermark"))
        return select, Requested(DEDUPLICATE_ON, list(clause.expressions), within, at=clause)
    return select, requested


def row_number_form(select: exp.Select) -> bool:
    """FROM a subquery whose select list numbers rows with ROW_NUMBER() OVER (...)."""
    from_ = select.args.get("from_")
    inner = from_.this if from_ else None
    return (
        isinstance(inner, exp.Subquery)
        and isinstance(inner.this, exp.Select)
        and any(
            isinstance(e.unalias(), exp.Window) and isinstance(e.unalias().this, exp.RowNumber)
            for e in inner.this.expressions
        )
    )


def _refuse(message: str, at: exp.Expr | None) -> PlanningError:
    return PlanningError(
        f"{message}. Deduplication with ROW_NUMBER is written as SELECT ... FROM (SELECT *, "
        "ROW_NUMBER() OVER (PARTITION BY <keys> ORDER BY <event time>) AS rn FROM <source>) "
        "WHERE rn = 1, and keeps each key's first row (Spark's dropDuplicates)",
        rule="row-number-deduplication",
        position=position_of(at),
    )


def _flatten_row_number(outer: exp.Select) -> tuple[exp.Select, Requested]:
    """Flink's deduplication as one SELECT over the source: the inner query's FROM and
    WHERE, the outer select list (the row number is 1 on every row kept), the outer EMIT."""
    subquery: exp.Subquery = outer.args["from_"].this
    inner: exp.Select = subquery.this
    numbered = [e for e in inner.expressions if isinstance(e.unalias(), exp.Window)]
    others = [e for e in inner.expressions if not isinstance(e.unalias(), exp.Window)]
    window = numbered[0].unalias()
    if len(numbered) > 1 or not isinstance(numbered[0], exp.Alias):
        raise _refuse("The row number needs a name (AS rn), and only one is allowed", window)
    if others != [] and not (len(others) == 1 and isinstance(others[0], exp.Star)):
        raise _refuse("The inner query selects * and the row number only", others[0])
    if not window.args.get("partition_by"):
        raise _refuse("ROW_NUMBER() needs PARTITION BY <keys>", window)
    order = window.args.get("order")
    columns = order.expressions if order else []
    if len(columns) != 1 or not isinstance(columns[0].this, exp.Column):
        raise _refuse("ROW_NUMBER() needs ORDER BY <event-time column> (ascending)", window)
    if columns[0].args.get("desc"):
        raise _refuse(
            "ORDER BY ... DESC keeps each key's last row, which an append-only stream cannot "
            "know until the stream ends; only the first row (ascending) is supported",
            columns[0],
        )
    if window.args.get("spec") or window.args.get("alias"):
        raise _refuse("ROW_NUMBER() takes no frame or named window", window)
    name = numbered[0].alias
    for clause in ("joins", "group", "having", "qualify", "order", "limit", "distinct", "with_"):
        if outer.args.get(clause) or inner.args.get(clause):
            raise _refuse(
                f"A ROW_NUMBER deduplication takes no {clause.rstrip('_').upper()} clause",
                outer.args.get(clause) or inner.args.get(clause),
            )
    where = outer.args.get("where")
    if where is None or not _is_first(where.this, name):
        at = where.this.find(exp.Column) if where else None
        raise _refuse(f"The outer query needs WHERE {name} = 1 and nothing else", at or outer)
    number = exp.cast(exp.Literal.number(1), exp.DataType.build("BIGINT"))
    alias = subquery.alias.lower()

    def over_source(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and node.table.lower() in ("", alias):
            if node.name.lower() == name.lower():
                return number.copy()
            node.set("table", None)
        return node

    expressions = []
    for expression in outer.expressions:
        if isinstance(expression, exp.Star):
            expressions += [exp.Star(), exp.alias_(number.copy(), name)]
        elif isinstance(expression, exp.Column) and expression.name.lower() == name.lower():
            expressions.append(exp.alias_(number.copy(), expression.name))
        else:
            expressions.append(expression.transform(over_source))
    flat = inner.copy()
    flat.set("expressions", expressions)
    flat.set("emit", outer.args.get("emit"))
    keys = list(window.args["partition_by"])
    return flat, Requested(ROW_NUMBER, keys, order=columns[0].this, at=window)


def _is_first(condition: exp.Expr, name: str) -> bool:
    """`rn = 1`, `1 = rn` or `rn <= 1`."""

    def named(node: exp.Expr) -> bool:
        return isinstance(node, exp.Column) and node.name.lower() == name.lower()

    def one(node: exp.Expr) -> bool:
        return isinstance(node, exp.Literal) and node.is_int and int(node.name) == 1

    left, right = condition.this, condition.expression
    if isinstance(condition, exp.EQ):
        return (named(left) and one(right)) or (one(left) and named(right))
    return isinstance(condition, exp.LTE) and named(left) and one(right)


def deduplication_of(
    requested: Requested,
    select: exp.Select,
    names: list[str],
    event_time: str | None,
    has_watermark: bool,
) -> tuple[list[exp.Expr], Deduplication]:
    """The keys (over the source row, or over the output row for SELECT DISTINCT) and the
    operator, with Spark's rules for when rows are late and keys are forgotten."""
    time = (event_time or "").lower()
    if requested.within_watermark and not has_watermark:
        raise PlanningError(
            "DEDUPLICATE ON ... WITHIN WATERMARK forgets a key once its first row's event "
            "time plus the watermark delay is at or below the watermark, so it needs a "
            "watermark: declare WATERMARK FOR ... in the source or WATERMARK ... DELAY OF ... "
            "in FROM (Spark refuses dropDuplicatesWithinWatermark without one too)",
            rule="deduplicate-within-watermark-needs-watermark",
            position=position_of(requested.at),
        )
    if requested.form == ROW_NUMBER and (not has_watermark or requested.order.name.lower() != time):
        raise _refuse(
            f"ORDER BY {requested.order.sql('duckdb')} must be the event-time column of the "
            "query's watermark" + ("" if has_watermark else " (the query has no watermark)"),
            requested.order,
        )
    if requested.keys is None:  # SELECT DISTINCT: the output row is the key
        keys: list[exp.Expr] = [exp.column(name, quoted=True) for name in names]
        outputs = [
            (name, expression.unalias())
            for name, expression in zip(names, _expanded(select.expressions, names), strict=True)
        ]
        time_key = next(
            (
                index
                for index, (name, value) in enumerate(outputs)
                if (isinstance(value, exp.Column) and value.name.lower() == time)
                or (isinstance(value, exp.Star) and name.lower() == time)
            ),
            None,
        )
        timed = has_watermark and time_key is not None
    else:
        keys = requested.keys
        time_key = next(
            (
                index
                for index, key in enumerate(keys)
                if isinstance(key, exp.Column) and key.name.lower() == time
            ),
            None,
        )
        timed = has_watermark
    if not has_watermark or requested.within_watermark:
        time_key = None
    return keys, Deduplication(requested.within_watermark, timed, time_key, requested.keys is None)


def _expanded(expressions: list[exp.Expr], names: list[str]) -> list[exp.Expr]:
    """The select list with a lone `*` standing for each output column it gives."""
    if len(expressions) == len(names):
        return expressions
    return [exp.Star() for _ in names]


def over_one_source(requested: Requested) -> PlanningError:
    """Deduplication reads one source as it is: its rows' input order is the batch's."""
    return PlanningError(
        f"{requested.form} over a join or a UNION is not supported directly: deduplicate "
        "one input, a source or a subquery (FROM (SELECT ... UNION ALL ...) AS u)",
        rule="deduplication-one-source",
        position=position_of(requested.at),
    )


def check_query(requested: Requested, select: exp.Select, aggregated: bool) -> Emit:
    """Deduplication is append-only and stands alone in its SELECT."""
    if aggregated or select.args.get("stream_window"):
        raise PlanningError(
            f"{requested.form} with GROUP BY, aggregates or a WINDOW clause in the same "
            "SELECT is not supported: deduplicate the source in one query, or aggregate "
            "without deduplication",
            rule="deduplication-with-aggregation",
            position=position_of(requested.at),
        )
    node = select.args.get("emit")
    emit = Emit(node.mode) if node else Emit.FINAL
    if emit is not Emit.FINAL:
        raise PlanningError(
            f"A deduplication emits each accepted row once, in its batch (append mode): "
            f"EMIT {emit.value} does not apply; leave EMIT out or write EMIT FINAL",
            rule="deduplication-append",
            position=position_of(node),
        )
    return emit
