"""DuckDB expressions (our dialect) to Spark SQL: sqlglot's Spark dialect, plus our rewrites.

sqlglot translates most of DuckDB's SQL to Spark's; where its translation is wrong or
missing, a rewrite below (a small function from tree to tree) says what Spark must run
instead. What neither can translate is refused with the expression and its position, so an
exported job never fails later, on the cluster, on a function Spark does not have.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import duckdb
from sqlglot import exp

from streamsql.errors import PlanningError
from streamsql.plan.planner import Planner
from streamsql.sql import position_of

# Spark 4.3's built-in functions (`SHOW FUNCTIONS`); tests check the list against Spark.
SPARK_FUNCTIONS = frozenset(
    resources.files(__package__).joinpath("spark_functions.txt").read_text().split()
)
# DuckDB types Spark spells differently or lacks, and what holds their values in Spark.
TYPES = {
    # DuckDB's TIMESTAMP is UTC here; Spark's, in a job whose session time zone is UTC
    exp.DataType.Type.TIMESTAMP: "TIMESTAMP_LTZ",
    exp.DataType.Type.TIMESTAMPNTZ: "TIMESTAMP_LTZ",
    exp.DataType.Type.TIMESTAMP_S: "TIMESTAMP_LTZ",
    exp.DataType.Type.TIMESTAMP_MS: "TIMESTAMP_LTZ",
    exp.DataType.Type.TIMESTAMPTZ: "TIMESTAMP_LTZ",
    exp.DataType.Type.INT128: "DECIMAL(38, 0)",
    exp.DataType.Type.UBIGINT: "DECIMAL(20, 0)",
    exp.DataType.Type.UINT: "BIGINT",
    exp.DataType.Type.USMALLINT: "INT",
    exp.DataType.Type.UTINYINT: "SMALLINT",
}
# Types with no Spark type that keeps their values.
UNTRANSLATABLE_TYPES = {
    exp.DataType.Type.UINT128: "UHUGEINT",
    exp.DataType.Type.TIMESTAMP_NS: "TIMESTAMP_NS (Spark keeps microseconds)",
    exp.DataType.Type.TIME: "TIME",
    exp.DataType.Type.TIMETZ: "TIMETZ",
    exp.DataType.Type.JSON: "JSON",
    exp.DataType.Type.UUID: "UUID",
    exp.DataType.Type.BIT: "BIT",
    exp.DataType.Type.UNION: "UNION",
}
# DuckDB's time_bucket counts buckets from 2000-01-03 00:00 (a Monday), in microseconds.
TIME_BUCKET_ORIGIN_US = 946_857_600_000_000
_CALL = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(")


class Typer:
    """DuckDB's type of an expression over a query's input relation, for the rewrites whose
    Spark function depends on it (`len` of a list or of a string)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, relation: str) -> None:
        self.con = con
        self.relation = relation

    def type_of(self, node: exp.Expr) -> str | None:
        try:
            rows = self.con.execute(
                f"DESCRIBE SELECT {node.sql('duckdb')} FROM ({self.relation})"
            ).fetchall()
        except duckdb.Error:
            return None
        return rows[0][1]

    def interval_us(self, node: exp.Expr, what: str, at: exp.Expr) -> int:
        """A positive fixed-length interval in microseconds, judged as the planner judges
        window sizes (no months or years); an error points at `at` when `node` has no
        position of its own."""
        return Planner(self.con, {}).interval_us(node, what, positive=True, at=at)


@dataclass(frozen=True)
class Untranslatable:
    """Why an expression has no Spark translation, and where it is."""

    expression: str
    reason: str
    position: tuple[int, int] | None

    def __str__(self) -> str:
        return f"{self.expression}: {self.reason}"


class TranslationError(PlanningError):
    """An expression that export cannot translate; the message says which, why and where."""

    def __init__(self, problem: Untranslatable) -> None:
        super().__init__(
            f"Cannot translate {problem.expression} to Spark SQL: {problem.reason}",
            rule="untranslatable-expression",
            position=problem.position,
        )
        self.problem = problem


def _call(name: str, *args: exp.Expr) -> exp.Expr:
    return exp.Anonymous(this=name, expressions=list(args))


def _refuse(node: exp.Expr, reason: str) -> TranslationError:
    """The refusal of `node`, shown with its position: a type or a literal has none of its
    own, so the nearest enclosing expression that has one stands for it."""
    while isinstance(node, exp.DataType) or (position_of(node) is None and node.parent):
        node = node.parent
    return TranslationError(Untranslatable(node.sql("duckdb"), reason, position_of(node)))


# -- rewrites: each takes a node and returns its replacement, or None to keep it --------------


def epoch_to_timestamp(node: exp.Expr, typer: Typer) -> exp.Expr | None:
    """to_timestamp(seconds) keeps its fraction (sqlglot's FROM_UNIXTIME drops it and formats
    in the session's zone); epoch_ms(timestamp) is the opposite conversion in DuckDB, which
    sqlglot takes for epoch_ms(milliseconds)."""
    if not isinstance(node, exp.UnixToTime):
        return None
    scale = node.args.get("scale")
    if scale is None or scale == exp.UnixToTime.SECONDS:
        return _call("timestamp_seconds", node.this)
    argument = typer.type_of(node.this) or ""
    if scale == exp.UnixToTime.MILLIS and argument.startswith("TIMESTAMP"):
        # DuckDB rounds to the nearest millisecond, halves away from zero (Spark's
        # unix_millis truncates): Spark's round does so too, exactly on a DECIMAL
        micros = exp.Cast(
            this=_call("unix_micros", node.this), to=exp.DataType.build("DECIMAL(20, 0)")
        )
        millis = _call("round", exp.Div(this=micros, expression=exp.Literal.number(1000)))
        return exp.Cast(this=millis, to=exp.DataType.build("BIGINT"))
    return None


def time_bucket(node: exp.Expr, typer: Typer) -> exp.Expr | None:
    """time_bucket(interval, ts) as DuckDB aligns it (sqlglot's DATE_BIN is not Spark's)."""
    if not isinstance(node, exp.DateBin):
        return None
    if node.args.get("zone") or node.args.get("origin"):
        raise _refuse(node, "time_bucket with an origin or offset has no Spark translation")
    width = typer.interval_us(node.this, "time_bucket width", node)
    micros = _call("unix_micros", node.expression)
    shifted = exp.Sub(this=micros, expression=exp.Literal.number(TIME_BUCKET_ORIGIN_US))
    remainder = _call("pmod", shifted, exp.Literal.number(width))
    return _call("timestamp_micros", exp.Sub(this=micros.copy(), expression=remainder))


def list_length(node: exp.Expr, typer: Typer) -> exp.Expr | None:
    """len(list) and length(list) count elements: Spark's size, not its string length."""
    if isinstance(node, exp.Length) and (typer.type_of(node.this) or "").endswith("]"):
        return _call("size", node.this)
    return None


def count_distinct(node: exp.Expr, typer: Typer) -> exp.Expr | None:
    """Spark refuses DISTINCT aggregates on a stream; count(DISTINCT x) is the size of the
    set of x, which Spark keeps in its state (NULLs left out, as count leaves them out)."""
    if not (isinstance(node, exp.Count) and isinstance(node.this, exp.Distinct)):
        return None
    values = node.this.expressions
    if len(values) != 1:
        raise _refuse(node, "count(DISTINCT ...) of several columns has no Spark translation")
    size = _call("size", _call("collect_set", values[0]))
    return exp.Cast(this=size, to=exp.DataType.build("BIGINT"))


def count_if(node: exp.Expr, typer: Typer) -> exp.Expr | None:
    """DuckDB's count_if is NULL over a group whose conditions are all NULL; Spark's is 0."""
    if isinstance(node, exp.CountIf):
        flag = exp.Case(
            ifs=[
                exp.If(this=node.this, true=exp.Literal.number(1)),
                exp.If(this=exp.Not(this=exp.paren(node.this.copy())), true=exp.Literal.number(0)),
            ]
        )
        return exp.Sum(this=flag)
    return None


def ordered_array_agg(node: exp.Expr, typer: Typer) -> exp.Expr | None:
    """array_agg(x ORDER BY y): sqlglot drops the ordering; sort (y, x) pairs, NULL y last
    as DuckDB puts them, and keep x (NULL x too, which collect_list alone would drop)."""
    if not isinstance(node, exp.ArrayAgg):
        return None
    value = node.this
    order = value if isinstance(value, exp.Order) else None
    value = order.this if order else value
    keys = order.expressions if order else []
    if any(key.args.get("desc") or key.args.get("nulls_first") for key in keys):
        raise _refuse(node, "array_agg ordered DESC or NULLS FIRST has no Spark translation")
    fields: list[exp.Expr] = []
    for index, key in enumerate(keys):
        fields += [exp.Literal.string(f"n{index}"), exp.Is(this=key.this, expression=exp.Null())]
        fields += [exp.Literal.string(f"k{index}"), key.this]
    fields += [exp.Literal.string("v"), value]
    collected = _call("collect_list", _call("named_struct", *fields))
    if keys:
        collected = _call("array_sort", collected)
    element = exp.to_identifier("e")
    pick = exp.Lambda(
        this=exp.Dot(this=exp.column("e"), expression=exp.to_identifier("v")), expressions=[element]
    )
    return _call("transform", collected, pick)


def spark_types(node: exp.Expr, typer: Typer) -> exp.Expr | None:
    """DuckDB types as the Spark types that hold their values."""
    if not isinstance(node, exp.DataType):
        return None
    if node.this in UNTRANSLATABLE_TYPES:
        raise _refuse(node, f"Spark has no {UNTRANSLATABLE_TYPES[node.this]} type")
    if node.this in TYPES:
        return exp.DataType.build(TYPES[node.this], dialect="spark")
    return None


REWRITES: tuple[Callable[[exp.Expr, Typer], exp.Expr | None], ...] = (
    epoch_to_timestamp,
    time_bucket,
    list_length,
    count_distinct,
    count_if,
    ordered_array_agg,
    spark_types,
)


def _rewritten(node: exp.Expr, typer: Typer) -> exp.Expr:
    for rewrite in REWRITES:
        replacement = rewrite(node, typer)
        if replacement is not None:
            return replacement
    return node


def _check(tree: exp.Expr, original: exp.Expr) -> None:
    """Every function the Spark SQL calls must be one of Spark's own."""
    for node in tree.walk():
        if not isinstance(node, exp.Func) or isinstance(node, exp.Cast):
            continue
        match = _CALL.match(node.sql("spark"))
        if match and match.group(1).lower() not in SPARK_FUNCTIONS:
            where = _original_node(node, original)
            raise _refuse(where, f"Spark has no function {match.group(1).lower()}")


def _original_node(node: exp.Expr, original: exp.Expr) -> exp.Expr:
    """The node of the user's expression a generated node stands for, for its position."""
    text = node.sql("duckdb")
    return next((n for n in original.walk() if n.sql("duckdb") == text), original)


def to_spark(node: exp.Expr, typer: Typer) -> str:
    """Spark SQL for a DuckDB expression (or query), rewritten where sqlglot is wrong or
    silent; a TranslationError names what Spark cannot run and where it is."""
    tree = node.copy().transform(lambda n: _rewritten(n, typer))
    _check(tree, node)
    return tree.sql("spark", comments=False)
