"""Building the per-batch SQL as sqlglot trees: constant templates parsed once, their slots
filled with trees, and a statement rendered once in the DuckDB dialect. Identifiers go
through quoting.identifier; runtime values are placeholders ($late, $watermark, ...)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel

from streamsql.quoting import identifier


def template(sql: str) -> exp.Expr:
    """A constant SQL template as a tree of its own, parsed once. Its slots are columns,
    named by the caller: `name`, or `side.name`."""
    return _parsed(sql).copy()


@cache
def _parsed(sql: str) -> exp.Expr:
    return sqlglot.parse_one(sql, read="duckdb")


def fill(expression: exp.Expr, slots: Mapping[str, exp.Expr | int | str]) -> exp.Expr:
    """A copy of `expression` with each slot column replaced: by a tree, a number or a
    string literal. An operator's slot filled with an operation is parenthesized."""

    def put(node: exp.Expr) -> exp.Expr:
        if not isinstance(node, exp.Column):
            return node
        slot = slots.get(f"{node.table}.{node.name}" if node.table else node.name)
        if slot is None:
            return node
        value = slot.copy() if isinstance(slot, exp.Expr) else exp.convert(slot)
        operand = isinstance(node.parent, (exp.Binary, exp.Unary)) and not isinstance(
            node.parent, exp.Paren
        )
        return exp.paren(value, copy=False) if operand and isinstance(value, exp.Binary) else value

    return expression.transform(put)


def column(name: str, table: str | None = None) -> exp.Column:
    """A column, of `table` when given (both names quoted: any name is safe)."""
    return exp.Column(this=identifier(name), table=identifier(table) if table else None)


def table(name: str) -> exp.Table:
    """A table or view of the batch's connection, by its bare name."""
    return exp.Table(this=identifier(name))


def aliased(relation: exp.Expr, alias: str) -> exp.Expr:
    """A table or a query, named `alias` (a query becomes a subquery)."""
    if isinstance(relation, exp.Query):
        relation = relation.subquery()
    relation = relation.copy()
    relation.set("alias", exp.TableAlias(this=identifier(alias)))
    return relation


def star(*excluded: str, table: str | None = None) -> exp.Expr:
    """`*` or `table.*`, without the columns `excluded` (DuckDB's EXCLUDE)."""
    node = exp.Star(except_=[column(name) for name in excluded] or None)
    return exp.Column(this=node, table=identifier(table)) if table else node


def param(name: str) -> exp.Placeholder:
    """A named parameter, `$name`, bound when the statement runs."""
    return exp.Placeholder(this=name)


def fn(name: str, *args: exp.Expr) -> exp.Expr:
    """A call of a DuckDB function, as DuckDB's parser would build it."""
    return exp.func(name, *args, dialect="duckdb")


def render(tree: exp.Expr) -> str:
    """A tree's DuckDB SQL; a construct DuckDB has no spelling for is an error."""
    return tree.sql(dialect="duckdb", unsupported_level=ErrorLevel.RAISE)


def placeholders(tree: exp.Expr) -> list[str]:
    """The names of a tree's parameters, in text order, each once."""
    return list(dict.fromkeys(p.name for p in tree.find_all(exp.Placeholder, bfs=False)))


def create_table(
    target: exp.Table, query: exp.Query, temporary: bool, replace: bool = False
) -> exp.Create:
    """CREATE [OR REPLACE] [TEMP] TABLE [IF NOT EXISTS] target AS query."""
    properties = exp.Properties(expressions=[exp.TemporaryProperty()]) if temporary else None
    return exp.Create(
        this=target.copy(),
        kind="TABLE",
        replace=replace,
        exists=not replace,
        expression=query,
        properties=properties,
    )


def insert_by_name(target: exp.Table, query: exp.Query) -> exp.Insert:
    """INSERT INTO target BY NAME query: columns matched by name, not position."""
    return exp.Insert(this=target.copy(), expression=query, by_name=True)


def delete(target: exp.Table, where: exp.Expr | None = None, **args: object) -> exp.Delete:
    """DELETE FROM target [USING ...] [WHERE where] [RETURNING ...] (`args`: Delete's)."""
    statement = exp.Delete(this=target.copy(), **args)
    return statement.where(where, copy=False) if where is not None else statement


def union_by_name(*queries: exp.Query) -> exp.Query:
    """UNION ALL BY NAME: columns matched by name, not position."""
    union = queries[0]
    for query in queries[1:]:
        union = exp.Union(this=union, expression=query, distinct=False, by_name=True)
    return union


def drop_table(target: exp.Table) -> exp.Drop:
    """DROP TABLE target: a batch's scratch table."""
    return exp.Drop(this=None, kind="TABLE", tables=[target.copy()])
