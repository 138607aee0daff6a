"""Names and values into SQL: the one quoting path for identifiers and literals, and the
check that generated SQL is exactly one statement. A leaf module (sqlglot and DuckDB only),
so that the connectors, the planner, the compiler and the runtime quote alike without
importing one another."""

from __future__ import annotations

import duckdb
from sqlglot import exp

from streamsql.errors import InternalError


def identifier(name: str) -> exp.Identifier:
    """A DuckDB identifier node, always quoted: safe for any name a user or a file gives."""
    return exp.Identifier(this=name, quoted=True)


def quote(name: str) -> str:
    """An identifier's text, for SQL that is not built as a sqlglot tree."""
    return identifier(name).sql("duckdb")


def literal(text: str) -> str:
    """A DuckDB string literal, for the few places (file paths in COPY and readers) where a
    statement cannot take a parameter."""
    return exp.Literal.string(text).sql("duckdb")


def one_statement(sql: str) -> str:
    """`sql`, checked by DuckDB's parser to be exactly one statement: for generated SQL that
    holds option values (paths, names, codecs, the Kafka key), which DuckDB's execute would
    otherwise run as several statements if a value ever broke out of its quoting."""
    try:
        count = len(duckdb.extract_statements(sql))
    except duckdb.Error:
        count = 1  # one statement that does not parse: executing it reports the error
    if count != 1:
        raise InternalError(f"Generated SQL is {count} statements, not one: {sql[:200]!r}")
    return sql
