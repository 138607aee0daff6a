"""Aggregates that merge exactly, decomposed into state columns.

Each aggregate is a table entry, the way sqlglot keeps its per-dialect transforms: a list
of state columns ("parts"), each with four SQL templates, and a final expression.

- partial:  aggregate over the rows of one batch         ({0}, {1}: arguments; {filter})
- merge:    two states into one (MERGE ... UPDATE SET)   ({a[part]}: state, {b[part]}: batch)
- combine:  many states into one (session merging)       ({p[part]}: a state row, {g[...]}: group)
- final:    the user's value from one state              ({s[part]})

Every template may use {n}, the constant of the N-argument forms (max(x, n), ...).
A part whose empty value is NULL merges NULL-safely: a batch in which a group has no
non-NULL input leaves the state as it was (count_if over NULL conditions is NULL, as in
DuckDB, and must not turn a count into NULL).

Variance keeps Welford states merged with Chan's parallel form, never a sum of squares;
distinct counts keep the distinct values; approx_count_distinct keeps HyperLogLog
registers (see MACROS), so its result does not depend on batch boundaries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from sqlglot import exp

from streamsql.errors import PlanningError


@dataclass(frozen=True)
class Part:
    name: str
    partial: str
    merge: str
    combine: str
    partial_filter: str | None = None  # rows this part ignores, e.g. NULLs for distinct sets


@dataclass(frozen=True)
class Aggregate:
    parts: tuple[Part, ...]
    final: str
    arity: int = 1
    # Window expressions over a group of state rows, available to `combine` as {g[name]}.
    group: dict[str, str] = field(default_factory=dict)


def _additive(name: str, partial: str, combine: str = "sum({{p[{name}]}})") -> Part:
    return Part(
        name,
        partial,
        merge=f"{{a[{name}]}} + {{b[{name}]}}",
        combine=combine.format(name=name) + "::BIGINT",
    )


def _nullable(name: str, partial: str, merge_op: str, combine: str) -> Part:
    """A part whose empty value is NULL (sum, min, max, bool_and, ...)."""
    return Part(
        name,
        partial,
        merge=f"coalesce({merge_op.format(a=f'{{a[{name}]}}', b=f'{{b[{name}]}}')}, "
        f"{{a[{name}]}}, {{b[{name}]}})",
        combine=f"{combine}({{p[{name}]}})",
    )


COUNT_STAR = Aggregate((_additive("count", "count(*){filter}"),), "{s[count]}", arity=0)
COUNT = Aggregate((_additive("count", "count({0}){filter}"),), "{s[count]}")
# DuckDB's count_if is a HUGEINT that is NULL over no non-NULL condition: a sum.
COUNT_IF = Aggregate(
    (_nullable("count", "count_if({0}){filter}", "{a} + {b}", "sum"),), "{s[count]}"
)
SUM = Aggregate((_nullable("sum", "sum({0}){filter}", "{a} + {b}", "sum"),), "{s[sum]}")
MIN = Aggregate((_nullable("min", "min({0}){filter}", "least({a}, {b})", "min"),), "{s[min]}")
MAX = Aggregate((_nullable("max", "max({0}){filter}", "greatest({a}, {b})", "max"),), "{s[max]}")
AVG = Aggregate(
    (
        _nullable("sum", "sum({0}){filter}", "{a} + {b}", "sum"),
        _additive("count", "count({0}){filter}"),
    ),
    "{s[sum]} / {s[count]}",
)
# DuckDB's any_value skips NULLs: the state keeps the first non-NULL value the query saw.
ANY_VALUE = Aggregate((_nullable("any", "any_value({0}){filter}", "{a}", "any_value"),), "{s[any]}")
BOOL_AND = Aggregate(
    (_nullable("all", "bool_and({0}){filter}", "{a} AND {b}", "bool_and"),), "{s[all]}"
)
BOOL_OR = Aggregate(
    (_nullable("any", "bool_or({0}){filter}", "{a} OR {b}", "bool_or"),), "{s[any]}"
)


def _arg_extreme(fn: str, extreme: str, better: str, pick: str) -> Aggregate:
    """arg_max/arg_min: the argument travels with the extreme key it was found at.

    DuckDB skips rows whose argument or key is NULL, so the key is taken over the same rows.
    """
    return Aggregate(
        (
            Part(
                "arg",
                f"{fn}({{0}}, {{1}}){{filter}}",
                merge=f"CASE WHEN {{a[key]}} IS NULL OR {{b[key]}} {better} {{a[key]}} "
                "THEN {b[arg]} ELSE {a[arg]} END",
                combine=f"{fn}({{p[arg]}}, {{p[key]}})",
            ),
            replace(
                _nullable("key", f"{extreme}({{1}}){{filter}}", f"{pick}({{a}}, {{b}})", extreme),
                partial_filter="{0} IS NOT NULL",
            ),
        ),
        "{s[arg]}",
        arity=2,
    )


ARG_MAX = _arg_extreme("arg_max", "max", ">", "greatest")
ARG_MIN = _arg_extreme("arg_min", "min", "<", "least")


def _top_n(partial: str, order: str, final: str, arity: int) -> Aggregate:
    """max(x, n), arg_max(x, v, n), ...: a list of the n first values in DuckDB's order.

    The top n of two top-n lists is the top n of all their rows. arg_max/arg_min keep
    {'k': key, 'a': argument} structs, sorted on the key (then on the argument: DuckDB
    leaves the choice among equal keys open).
    """
    top = "list_slice(list_sort({values}, '" + order + "'), 1, {{n}})"
    return Aggregate(
        (
            Part(
                "top",
                partial,
                merge="CASE WHEN {a[top]} IS NULL THEN {b[top]} WHEN {b[top]} IS NULL "
                f"THEN {{a[top]}} ELSE {top.format(values='list_concat({a[top]}, {b[top]})')} END",
                combine=top.format(
                    values="flatten(list({p[top]}) FILTER (WHERE {p[top]} IS NOT NULL))"
                ),
                partial_filter="{0} IS NOT NULL" if arity == 2 else None,
            ),
        ),
        final,
        arity=arity,
    )


TOP_MAX = _top_n("max({0}, {n}){filter}", "DESC", "{s[top]}", 1)
TOP_MIN = _top_n("min({0}, {n}){filter}", "ASC", "{s[top]}", 1)
_ARGUMENTS = "list_transform({s[top]}, lambda e: e.a)"
TOP_ARG_MAX = _top_n("arg_max({{'k': {1}, 'a': {0}}}, {1}, {n}){filter}", "DESC", _ARGUMENTS, 2)
TOP_ARG_MIN = _top_n("arg_min({{'k': {1}, 'a': {0}}}, {1}, {n}){filter}", "ASC", _ARGUMENTS, 2)

# Welford state (n, mean, m2), merged with Chan's parallel update, so that infinities, NaN
# and squares beyond the DOUBLE range come out as in DuckDB, which runs Welford's update
# row by row. Its m2 of one row x is (x - x) * x: 0, or NaN for an infinite x, which then
# spreads. A mean of equal values is that value exactly (DuckDB's is): a mean off by one
# rounding step from another equal one would square a difference of 1e284 into inf.
_EMPTY = "CASE WHEN {a[n]} = 0 THEN {b[NAME]} WHEN {b[n]} = 0 THEN {a[NAME]} ELSE "


def _pooled_mean(over: str) -> str:
    """The mean of many states ({p[...]} rows), `over` a window or not; states without
    rows are left out, and equal means pool to themselves."""
    only = f" FILTER (WHERE {{p[n]}} > 0){over}"
    low, high = f"min({{p[mean]}}){only}", f"max({{p[mean]}}){only}"
    return (
        f"coalesce(CASE WHEN {low} = {high} THEN {low} "
        f"ELSE sum({{p[n]}} * {{p[mean]}}){over} / nullif(sum({{p[n]}}){over}, 0) END, 0)"
    )


WELFORD_PARTS = (
    _additive("n", "count({0}){filter}"),
    Part(
        "mean",
        "coalesce(CASE WHEN min({0}::DOUBLE){filter} = max({0}::DOUBLE){filter} "
        "THEN min({0}::DOUBLE){filter} ELSE avg({0}::DOUBLE){filter} END, 0)",
        merge=_EMPTY.replace("NAME", "mean")
        + "{a[mean]} + ({b[mean]} - {a[mean]}) * {b[n]} / ({a[n]} + {b[n]}) END",
        combine=_pooled_mean(""),
    ),
    Part(
        "m2",
        "coalesce(CASE WHEN count({0}){filter} > 1 "
        "THEN var_pop({0}::DOUBLE){filter} * count({0}){filter} "
        "ELSE 0 * abs(avg({0}::DOUBLE){filter}) END, 0)",
        merge=_EMPTY.replace("NAME", "m2")
        + "{b[m2]} + {a[m2]} + ({b[mean]} - {a[mean]}) * ({b[mean]} - {a[mean]}) "
        "* {b[n]}::DOUBLE * {a[n]} / ({a[n]} + {b[n]}) END",
        # States without rows are left out: 0 * inf would be NaN.
        combine="coalesce(sum({p[m2]} + {p[n]} * power({p[mean]} - {g[mean]}, 2)) "
        "FILTER (WHERE {p[n]} > 0), 0)",
    ),
)
WELFORD_GROUP = {"mean": _pooled_mean(" OVER __group")}
# DuckDB: var_pop of one row is 0 (even of an infinite one), var_samp needs two.
_VAR_POP = "CASE WHEN {s[n]} > 1 THEN {s[m2]} / {s[n]} WHEN {s[n]} = 1 THEN 0.0 END"
_VAR_SAMP = "CASE WHEN {s[n]} > 1 THEN {s[m2]} / ({s[n]} - 1) END"
VAR_POP = Aggregate(WELFORD_PARTS, _VAR_POP, group=WELFORD_GROUP)
VAR_SAMP = Aggregate(WELFORD_PARTS, _VAR_SAMP, group=WELFORD_GROUP)
STDDEV_POP = Aggregate(WELFORD_PARTS, f"sqrt({_VAR_POP})", group=WELFORD_GROUP)
STDDEV_SAMP = Aggregate(WELFORD_PARTS, f"sqrt({_VAR_SAMP})", group=WELFORD_GROUP)

COUNT_DISTINCT = Aggregate(
    (
        Part(
            "set",
            "list(DISTINCT {0}){filter}",
            merge="list_distinct(list_concat({a[set]}, {b[set]}))",
            combine="list_distinct(flatten(list({p[set]})))",
            partial_filter="{0} IS NOT NULL",
        ),
    ),
    "coalesce(len({s[set]}), 0)",
)

APPROX_COUNT_DISTINCT = Aggregate(
    (
        Part(
            "hll",
            "_streamsql.hll_compact(list(DISTINCT _streamsql.hll_entry({0})){filter})",
            merge="_streamsql.hll_compact(list_concat({a[hll]}, {b[hll]}))",
            combine="_streamsql.hll_compact(flatten(list({p[hll]})))",
            partial_filter="{0} IS NOT NULL",
        ),
    ),
    "_streamsql.hll_estimate({s[hll]})",
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
    name: str
    partial: str
    merge: str
    combine: str


@dataclass(frozen=True)
class AggregateCall:
    """One aggregate call of the query, with its state columns named after its position."""

    node: exp.Expr  # the call as written, FILTER included
    columns: tuple[StateColumn, ...]
    final: str  # SQL over the state columns
    group: dict[str, str]  # window expressions named <column prefix>_<name>


def decompose(node: exp.Expr, index: int, render: Callable[[exp.Expr], str]) -> AggregateCall:
    """Split an aggregate call into state columns; `render` turns an argument into SQL."""
    call, condition = (
        (node.this, node.expression.this)
        if isinstance(node, exp.Filter)
        else (
            node,
            None,
        )
    )
    aggregate, arguments, n = _lookup(call)
    args = [render(argument) for argument in arguments]
    prefix = f"agg{index}"
    names = {part.name: f"{prefix}_{part.name}" for part in aggregate.parts}

    def refer(side: str) -> dict[str, str]:
        return {part: f"{side}.{column}" for part, column in names.items()}

    group_names = {name: f"{prefix}_g_{name}" for name in aggregate.group}
    columns = []
    for part in aggregate.parts:
        conditions = [c for c in (part.partial_filter, condition and "{cond}") if c]
        where = " AND ".join(f"({c})" for c in conditions)
        filter_sql = f" FILTER (WHERE {where})" if where else ""
        cond = render(condition) if condition is not None else ""
        partial = part.partial.format(*args, filter=filter_sql.format(*args, cond=cond), n=n)
        columns.append(
            StateColumn(
                names[part.name],
                partial,
                part.merge.format(a=refer("__state"), b=refer("__batch"), n=n),
                part.combine.format(p=names, g=group_names, n=n),
            )
        )
    final = aggregate.final.format(s=names)
    group = {
        group_names[name]: template.format(p=names) for name, template in aggregate.group.items()
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
