"""Aggregates that merge exactly, decomposed into state columns.

Each aggregate is a table entry, the way sqlglot keeps its per-dialect transforms: a list
of state columns ("parts"), each with four expression templates (constant SQL parsed once
into sqlglot trees), and a final expression. A template's slots are columns, filled with
trees by `decompose`:

- partial:  aggregate over the rows of one batch   (arg0, arg1: arguments;
            FILTER (WHERE __filter): the call's FILTER and the part's own, or none)
- merge:    two states into one (MERGE ... UPDATE SET)   (a.<part>: state, b.<part>: batch)
- combine:  many states into one (session merging)       (p.<part>: a state row, g.<name>:
            the group's window expression)
- final:    the user's value from one state              (s.<part>)

Every template may use n, the constant of the N-argument forms (max(x, n), ...).
A part whose empty value is NULL merges NULL-safely: a batch in which a group has no
non-NULL input leaves the state as it was (count_if over NULL conditions is NULL, as in
DuckDB, and must not turn a count into NULL).

Variance keeps Welford states merged with Chan's parallel form, never a sum of squares;
distinct counts keep the distinct values; approx_count_distinct keeps HyperLogLog
registers (see MACROS), so its result does not depend on batch boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sqlglot import exp

from streamsql.errors import PlanningError
from streamsql.incremental.sqltree import column, fill, template


@dataclass(frozen=True)
class Part:
    name: str
    partial: exp.Expr
    merge: exp.Expr
    combine: exp.Expr
    partial_filter: exp.Expr | None = None  # rows this part ignores, e.g. NULLs for distinct sets


@dataclass(frozen=True)
class Aggregate:
    parts: tuple[Part, ...]
    final: exp.Expr
    arity: int = 1
    # Window expressions over a group of state rows, available to `combine` as g.<name>.
    group: dict[str, exp.Expr] = field(default_factory=dict)


def _slot(side: str, name: str) -> exp.Column:
    return exp.column(name, side)


def _additive(name: str, partial: str) -> Part:
    return Part(
        name,
        template(partial),
        merge=exp.Add(this=_slot("a", name), expression=_slot("b", name)),
        combine=exp.cast(exp.func("sum", _slot("p", name)), "BIGINT"),
    )


def _nullable(name: str, partial: str, merge_op: str, combine: str) -> Part:
    """A part whose empty value is NULL (sum, min, max, bool_and, ...): `merge_op` over the
    bare slots `a` and `b`."""
    sides = {"a": _slot("a", name), "b": _slot("b", name)}
    op = fill(template(merge_op), sides)
    return Part(
        name,
        template(partial),
        merge=exp.func("coalesce", op, sides["a"], sides["b"]),
        combine=exp.func(combine, _slot("p", name)),
    )


COUNT_STAR = Aggregate(
    (_additive("count", "count(*) FILTER (WHERE __filter)"),), template("s.count"), arity=0
)
COUNT = Aggregate((_additive("count", "count(arg0) FILTER (WHERE __filter)"),), template("s.count"))
# DuckDB's count_if is a HUGEINT that is NULL over no non-NULL condition: a sum.
COUNT_IF = Aggregate(
    (_nullable("count", "count_if(arg0) FILTER (WHERE __filter)", "a + b", "sum"),),
    template("s.count"),
)
SUM = Aggregate(
    (_nullable("sum", "sum(arg0) FILTER (WHERE __filter)", "a + b", "sum"),), template("s.sum")
)
MIN = Aggregate(
    (_nullable("min", "min(arg0) FILTER (WHERE __filter)", "least(a, b)", "min"),),
    template("s.min"),
)
MAX = Aggregate(
    (_nullable("max", "max(arg0) FILTER (WHERE __filter)", "greatest(a, b)", "max"),),
    template("s.max"),
)
AVG = Aggregate(
    (
        _nullable("sum", "sum(arg0) FILTER (WHERE __filter)", "a + b", "sum"),
        _additive("count", "count(arg0) FILTER (WHERE __filter)"),
    ),
    template("s.sum / s.count"),
)
# DuckDB's any_value skips NULLs: the state keeps the first non-NULL value the query saw.
ANY_VALUE = Aggregate(
    (_nullable("any", "any_value(arg0) FILTER (WHERE __filter)", "a", "any_value"),),
    template("s.any"),
)
BOOL_AND = Aggregate(
    (_nullable("all", "bool_and(arg0) FILTER (WHERE __filter)", "a AND b", "bool_and"),),
    template("s.all"),
)
BOOL_OR = Aggregate(
    (_nullable("any", "bool_or(arg0) FILTER (WHERE __filter)", "a OR b", "bool_or"),),
    template("s.any"),
)


def _arg_extreme(
    arg: str, key: str, better: str, pick: str, extreme: str, combine: str
) -> Aggregate:
    """arg_max/arg_min: the argument travels with the extreme key it was found at (`arg`,
    `key`: the partials; `better`: the batch's key wins; `pick`: the better of keys a, b;
    `extreme`: the aggregate of many keys).

    DuckDB skips rows whose argument or key is NULL, so the key is taken over the same rows.
    """
    merge = fill(
        template("CASE WHEN a.key IS NULL OR better THEN b.arg ELSE a.arg END"),
        {"better": template(better)},
    )
    return Aggregate(
        (
            Part("arg", template(arg), merge=merge, combine=template(combine)),
            replace(
                _nullable("key", key, pick, extreme),
                partial_filter=template("arg0 IS NOT NULL"),
            ),
        ),
        template("s.arg"),
        arity=2,
    )


ARG_MAX = _arg_extreme(
    "arg_max(arg0, arg1) FILTER (WHERE __filter)",
    "max(arg1) FILTER (WHERE __filter)",
    "b.key > a.key",
    "greatest(a, b)",
    "max",
    "arg_max(p.arg, p.key)",
)
ARG_MIN = _arg_extreme(
    "arg_min(arg0, arg1) FILTER (WHERE __filter)",
    "min(arg1) FILTER (WHERE __filter)",
    "b.key < a.key",
    "least(a, b)",
    "min",
    "arg_min(p.arg, p.key)",
)


_NON_NULL_LISTS = template("flatten(list(p.top) FILTER (WHERE p.top IS NOT NULL))")


def _top_n(partial: str, order: str, final: exp.Expr, arity: int) -> Aggregate:
    """max(x, n), arg_max(x, v, n), ...: a list of the n first values in DuckDB's order.

    The top n of two top-n lists is the top n of all their rows. arg_max/arg_min keep
    {'k': key, 'a': argument} structs, sorted on the key (then on the argument: DuckDB
    leaves the choice among equal keys open).
    """
    top = fill(
        template("list_slice(list_sort(values, direction), 1, n)"),
        {"direction": exp.Literal.string(order)},
    )
    merged = fill(top, {"values": template("list_concat(a.top, b.top)")})
    return Aggregate(
        (
            Part(
                "top",
                template(partial),
                merge=fill(
                    template(
                        "CASE WHEN a.top IS NULL THEN b.top WHEN b.top IS NULL THEN a.top "
                        "ELSE merged END"
                    ),
                    {"merged": merged},
                ),
                combine=fill(
                    top,
                    {"values": template("flatten(list(p.top) FILTER (WHERE p.top IS NOT NULL))")},
                ),
                partial_filter=template("arg0 IS NOT NULL") if arity == 2 else None,
            ),
        ),
        final,
        arity=arity,
    )


TOP_MAX = _top_n("max(arg0, n) FILTER (WHERE __filter)", "DESC", template("s.top"), 1)
TOP_MIN = _top_n("min(arg0, n) FILTER (WHERE __filter)", "ASC", template("s.top"), 1)
_ARGUMENTS = template("list_transform(s.top, lambda e: e.a)")
TOP_ARG_MAX = _top_n(
    "arg_max({'k': arg1, 'a': arg0}, arg1, n) FILTER (WHERE __filter)", "DESC", _ARGUMENTS, 2
)
TOP_ARG_MIN = _top_n(
    "arg_min({'k': arg1, 'a': arg0}, arg1, n) FILTER (WHERE __filter)", "ASC", _ARGUMENTS, 2
)

# Welford state (n, mean, m2), merged with Chan's parallel update, so that infinities, NaN
# and squares beyond the DOUBLE range come out as in DuckDB, which runs Welford's update
# row by row. Its m2 of one row x is (x - x) * x: 0, or NaN for an infinite x, which then
# spreads. A mean of equal values is that value exactly (DuckDB's is): a mean off by one
# rounding step from another equal one would square a difference of 1e284 into inf.
# The mean of many states (p rows); states without rows are left out, and equal means pool
# to themselves.
_POOLED_MEAN = template(
    "coalesce(CASE WHEN min(p.mean) FILTER (WHERE p.n > 0) = max(p.mean) FILTER (WHERE p.n > 0) "
    "THEN min(p.mean) FILTER (WHERE p.n > 0) "
    "ELSE sum(p.n * p.mean) / nullif(sum(p.n), 0) END, 0)"
)


def _over_group(expression: exp.Expr) -> exp.Expr:
    """`expression` with each of its aggregates over the window of a group, `__group`."""

    def over(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Filter) or (
            isinstance(node, exp.AggFunc) and not isinstance(node.parent, exp.Filter)
        ):
            return exp.Window(this=node.copy(), alias=exp.to_identifier("__group"), over="OVER")
        return node

    return expression.transform(over)


WELFORD_PARTS = (
    _additive("n", "count(arg0) FILTER (WHERE __filter)"),
    Part(
        "mean",
        template(
            "coalesce(CASE WHEN min(arg0::DOUBLE) FILTER (WHERE __filter) = "
            "max(arg0::DOUBLE) FILTER (WHERE __filter) "
            "THEN min(arg0::DOUBLE) FILTER (WHERE __filter) "
            "ELSE avg(arg0::DOUBLE) FILTER (WHERE __filter) END, 0)"
        ),
        merge=template(
            "CASE WHEN a.n = 0 THEN b.mean WHEN b.n = 0 THEN a.mean "
            "ELSE a.mean + (b.mean - a.mean) * b.n / (a.n + b.n) END"
        ),
        combine=_POOLED_MEAN,
    ),
    Part(
        "m2",
        template(
            "coalesce(CASE WHEN count(arg0) FILTER (WHERE __filter) > 1 "
            "THEN var_pop(arg0::DOUBLE) FILTER (WHERE __filter) * count(arg0) FILTER "
            "(WHERE __filter) ELSE 0 * abs(avg(arg0::DOUBLE) FILTER (WHERE __filter)) END, 0)"
        ),
        merge=template(
            "CASE WHEN a.n = 0 THEN b.m2 WHEN b.n = 0 THEN a.m2 "
            "ELSE b.m2 + a.m2 + (b.mean - a.mean) * (b.mean - a.mean) "
            "* b.n::DOUBLE * a.n / (a.n + b.n) END"
        ),
        # States without rows are left out: 0 * inf would be NaN.
        combine=template(
            "coalesce(sum(p.m2 + p.n * power(p.mean - g.mean, 2)) FILTER (WHERE p.n > 0), 0)"
        ),
    ),
)
WELFORD_GROUP = {"mean": _over_group(_POOLED_MEAN)}
# DuckDB: var_pop of one row is 0 (even of an infinite one), var_samp needs two.
_VAR_POP = template("CASE WHEN s.n > 1 THEN s.m2 / s.n WHEN s.n = 1 THEN 0.0 END")
_VAR_SAMP = template("CASE WHEN s.n > 1 THEN s.m2 / (s.n - 1) END")
VAR_POP = Aggregate(WELFORD_PARTS, _VAR_POP, group=WELFORD_GROUP)
VAR_SAMP = Aggregate(WELFORD_PARTS, _VAR_SAMP, group=WELFORD_GROUP)
STDDEV_POP = Aggregate(WELFORD_PARTS, exp.func("sqrt", _VAR_POP.copy()), group=WELFORD_GROUP)
STDDEV_SAMP = Aggregate(WELFORD_PARTS, exp.func("sqrt", _VAR_SAMP.copy()), group=WELFORD_GROUP)

COUNT_DISTINCT = Aggregate(
    (
        Part(
            "set",
            template("list(DISTINCT arg0) FILTER (WHERE __filter)"),
            merge=template("list_distinct(list_concat(a.set, b.set))"),
            combine=template("list_distinct(flatten(list(p.set)))"),
            partial_filter=template("arg0 IS NOT NULL"),
        ),
    ),
    template("coalesce(len(s.set), 0)"),
)

APPROX_COUNT_DISTINCT = Aggregate(
    (
        Part(
            "hll",
            template(
                "_streamsql.hll_compact(list(DISTINCT _streamsql.hll_entry(arg0)) "
                "FILTER (WHERE __filter))"
            ),
            merge=template("_streamsql.hll_compact(list_concat(a.hll, b.hll))"),
            combine=template("_streamsql.hll_compact(flatten(list(p.hll)))"),
            partial_filter=template("arg0 IS NOT NULL"),
        ),
    ),
    template("_streamsql.hll_estimate(s.hll)"),
)

# HyperLogLog with 2^12 registers (standard error ~1.6%), kept sparse as a sorted list of
# (register << 8 | rank) entries, one per non-empty register holding its highest rank.
MACROS = (
    "CREATE SCHEMA IF NOT EXISTS _streamsql",
    """CREATE OR REPLACE MACRO _streamsql.hll_rank_bits(h) AS
        (h & 4503599627370495::UBIGINT) | 4503599627370496::UBIGINT""",
    """CREATE OR REPLACE MACRO _streamsql.hll_entry(x) AS CAST(
        ((hash(x) >> 52) << 8)
        | bit_count(xor(_streamsql.hll_rank_bits(hash(x)),
                        _streamsql.hll_rank_bits(hash(x)) - 1)) AS UBIGINT)""",
    """CREATE OR REPLACE MACRO _streamsql.hll_compact(l) AS
        (SELECT list(m ORDER BY m)
         FROM (SELECT max(e) AS m FROM unnest(l) AS t(e) GROUP BY e >> 8))""",
    """CREATE OR REPLACE MACRO _streamsql.hll_estimate(l) AS (
        SELECT CASE WHEN est <= 2.5 * 4096 AND used < 4096
                    THEN round(4096 * ln(4096.0 / (4096 - used))) ELSE round(est) END::BIGINT
        FROM (
            SELECT 0.7213 / (1 + 1.079 / 4096) * 4096 * 4096 / (z + 4096 - used) AS est, used
            FROM (
                SELECT coalesce(len(l), 0) AS used,
                       coalesce(list_sum(list_transform(
                           l, lambda e: pow(2.0, -((e & 255)::INTEGER)))), 0) AS z)))""",
)

AGGREGATES: dict[type[exp.Expr], Aggregate] = {
    exp.Sum: SUM,
    exp.Avg: AVG,
    exp.Min: MIN,
    exp.Max: MAX,
    exp.CountIf: COUNT_IF,
    exp.Variance: VAR_SAMP,
    exp.VariancePop: VAR_POP,
    exp.Stddev: STDDEV_SAMP,
    exp.StddevSamp: STDDEV_SAMP,
    exp.StddevPop: STDDEV_POP,
    exp.ApproxDistinct: APPROX_COUNT_DISTINCT,
    exp.LogicalAnd: BOOL_AND,
    exp.AnyValue: ANY_VALUE,
    exp.LogicalOr: BOOL_OR,
    exp.ArgMax: ARG_MAX,
    exp.ArgMin: ARG_MIN,
}
# The N-argument forms: max(x, n), min(x, n), arg_max(x, v, n) (max_by), arg_min (min_by).
TOP_N: dict[type[exp.Expr], Aggregate] = {
    exp.Max: TOP_MAX,
    exp.Min: TOP_MIN,
    exp.ArgMax: TOP_ARG_MAX,
    exp.ArgMin: TOP_ARG_MIN,
}

MERGEABLE = (
    "count, count_if, sum, avg, min, max, var_samp/variance, var_pop, stddev/stddev_samp, "
    "stddev_pop, count(DISTINCT x), approx_count_distinct, bool_and, bool_or, any_value, "
    "arg_max/max_by, arg_min/min_by, and the N-argument forms max(x, n), min(x, n), "
    "arg_max(x, v, n), arg_min(x, v, n)"
)


@dataclass(frozen=True)
class StateColumn:
    """A state column and its expressions: `partial` over a batch's rows, `merge` of the
    state's row `__state` with the batch's `__batch`, `combine` over many state rows."""

    name: str
    partial: exp.Expr
    merge: exp.Expr
    combine: exp.Expr


@dataclass(frozen=True)
class AggregateCall:
    """One aggregate call of the query, with its state columns named after its position."""

    node: exp.Expr  # the call as written, FILTER included
    columns: tuple[StateColumn, ...]
    final: exp.Expr  # over the state columns
    group: dict[str, exp.Expr]  # window expressions named <column prefix>_g_<name>


def _filtered(partial: exp.Expr, condition: exp.Expr | None) -> exp.Expr:
    """A partial's `FILTER (WHERE __filter)` clauses with `condition`, or gone without."""

    def put(node: exp.Expr) -> exp.Expr:
        slot = node.expression.this if isinstance(node, exp.Filter) else None
        if isinstance(slot, exp.Column) and slot.name == "__filter" and not slot.table:
            if condition is None:
                return node.this.copy()
            return exp.Filter(this=node.this.copy(), expression=exp.Where(this=condition.copy()))
        return node

    return partial.transform(put)


def decompose(node: exp.Expr, index: int) -> AggregateCall:
    """Split an aggregate call into state columns."""
    call, condition = (
        (node.this, node.expression.this) if isinstance(node, exp.Filter) else (node, None)
    )
    aggregate, arguments, n = _lookup(call)
    prefix = f"agg{index}"
    names = {part.name: f"{prefix}_{part.name}" for part in aggregate.parts}
    group_names = {name: f"{prefix}_g_{name}" for name in aggregate.group}
    slots: dict[str, exp.Expr] = {f"arg{i}": argument for i, argument in enumerate(arguments)}
    if n is not None:
        slots["n"] = exp.Literal.number(n)

    def state(side: str, table: str | None, columns: dict[str, str]) -> dict[str, exp.Expr]:
        return {f"{side}.{part}": column(name, table) for part, name in columns.items()}

    merge_slots = {**slots, **state("a", "__state", names), **state("b", "__batch", names)}
    combine_slots = {**slots, **state("p", None, names), **state("g", None, group_names)}
    columns = []
    for part in aggregate.parts:
        own = fill(part.partial_filter, slots) if part.partial_filter is not None else None
        conditions = [c for c in (own, condition) if c is not None]
        where = exp.and_(*conditions) if conditions else None
        columns.append(
            StateColumn(
                names[part.name],
                _filtered(fill(part.partial, slots), where),
                fill(part.merge, merge_slots),
                fill(part.combine, combine_slots),
            )
        )
    final = fill(aggregate.final, state("s", None, names))
    group = {
        group_names[name]: fill(expression, state("p", None, names))
        for name, expression in aggregate.group.items()
    }
    return AggregateCall(node, tuple(columns), final, group)


def _lookup(call: exp.Expr) -> tuple[Aggregate, list[exp.Expr], int | None]:
    """The aggregate of a call, its arguments and the n of an N-argument form."""
    if isinstance(call, exp.IgnoreNulls) and isinstance(call.this, exp.AnyValue):
        call = call.this  # DuckDB's any_value ignores NULLs: sqlglot spells that out
    if isinstance(call, exp.Count):
        argument = call.this
        if isinstance(argument, exp.Distinct):
            if len(argument.expressions) != 1:
                raise PlanningError(
                    "count(DISTINCT ...) over several columns cannot be merged; "
                    "count a struct instead: count(DISTINCT {'a': a, 'b': b})",
                    rule="unmergeable-aggregate",
                )
            return COUNT_DISTINCT, [argument.expressions[0]], None
        if argument is None or isinstance(argument, exp.Star):
            return COUNT_STAR, [], None
        return COUNT, [argument], None
    count = call.args.get("count")
    aggregate = (TOP_N if count is not None else AGGREGATES).get(type(call))
    if aggregate is None:
        raise PlanningError(
            f"{call.sql('duckdb')} cannot be computed incrementally: its partial results do "
            f"not merge exactly. Mergeable aggregates: {MERGEABLE}",
            rule="unmergeable-aggregate",
        )
    arguments = [call.this] + ([call.expression] if call.args.get("expression") else [])
    if any(isinstance(argument, exp.Distinct) for argument in arguments):
        raise PlanningError(
            f"{call.sql('duckdb')}: DISTINCT is only supported in count(DISTINCT x)",
            rule="unmergeable-aggregate",
        )
    if len(arguments) != aggregate.arity:
        raise PlanningError(f"{call.sql('duckdb')} takes {aggregate.arity} argument(s)")
    return aggregate, arguments, None if count is None else _top_count(call, count)


def _top_count(call: exp.Expr, count: exp.Expr) -> int:
    """The n of max(x, n) and the like: a constant, since the state keeps n values."""
    if not (isinstance(count, exp.Literal) and count.is_int and int(count.name) > 0):
        raise PlanningError(
            f"{call.sql('duckdb')}: the number of values to keep must be a positive integer "
            f"literal, not {count.sql('duckdb')}",
            rule="unmergeable-aggregate",
        )
    return int(count.name)
