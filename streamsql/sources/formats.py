"""Decode raw records (JSON values, CSV fields, Parquet columns) into the declared columns.

Decoding is set-based, in a private in-memory DuckDB: JSON is parsed by json_transform,
fields are cast with try_cast, and every record that does not fit gets an error message
naming the column, so it goes to the dead-letter table instead of being lost. As in
Spark, a fractional number is not an integer: it is a bad record, not a rounded value.
"""

from __future__ import annotations

import json
import threading

import duckdb
import pyarrow as pa

from streamsql.plan.catalog import Column
from streamsql.sources.base import DEAD_LETTER_SCHEMA, SourceBatch
from streamsql.sql import literal, quote

FORMATS = ("json", "csv", "parquet")
INTEGER_TYPES = {
    "TINYINT", "SMALLINT", "INTEGER", "INT", "BIGINT", "HUGEINT",
    "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT",
}  # fmt: skip


class Decoder:
    """Turns a table of raw records into a SourceBatch of typed rows and dead letters.

    The raw table carries `partition` (string), `offset` (int64) and `raw` (the record as
    written, kept for dead letters), and either a `value` column (JSON) or one column per
    declared column (CSV strings, Parquet values).
    """

    def __init__(self, columns: tuple[Column, ...], schema: pa.Schema) -> None:
        self.columns = columns
        self.schema = schema
        self._db = duckdb.connect()
        self._local = threading.local()

    @property
    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._local.cursor = self._db.cursor()
            cursor.execute("SET TimeZone = 'UTC'").fetchall()
        return cursor

    def decode_json(self, raw: pa.Table) -> SourceBatch:
        structure = json.dumps({c.name: c.type for c in self.columns})
        valid = "json_valid(value)"
        is_object = f"CASE WHEN {valid} THEN json_type(value) = 'OBJECT' END"
        checks = []
        for c in self.columns:
            path = literal(_json_path(c.name))
            given = f"json_extract(value, {path})::VARCHAR"
            fractional = f"json_type(value, {path}) = 'DOUBLE'" if _is_integer(c.type) else "FALSE"
            checks.append(
                f"CASE WHEN (__v.{quote(c.name)} IS NULL "
                f"AND coalesce(json_type(value, {path}), 'NULL') <> 'NULL') OR {fractional} "
                f"THEN {_cannot_read(c, given)} END"
            )
        error = (
            f"CASE WHEN value IS NULL THEN 'empty message' "
            f"WHEN NOT {valid} THEN 'malformed JSON' "
            f"WHEN NOT {is_object} THEN 'JSON value is not an object' "
            f"ELSE coalesce({', '.join(checks)}) END"
            if checks
            else "NULL"
        )
        parsed = (
            f'SELECT partition, "offset", raw, value, CASE WHEN {valid} AND {is_object} '
            f"THEN json_transform(value, {literal(structure)}) END AS __v FROM __raw"
        )
        sql = (
            f"SELECT * EXCLUDE (__v, value), __v.* FROM ("
            f'SELECT partition, "offset", raw, value, {error} AS __error, __v FROM ({parsed}))'
        )
        return self._split(raw, sql)

    def decode_fields(self, raw: pa.Table) -> SourceBatch:
        """Cast per-column fields (strings from CSV, typed values from Parquet)."""
        casts = [f"try_cast({quote(c.name)} AS {c.type}) AS {quote(c.name)}" for c in self.columns]
        checks = []
        for c in self.columns:
            field, cast = quote(c.name), f"try_cast({quote(c.name)} AS {c.type})"
            fractional = (
                f"try_cast({field} AS DOUBLE) <> {cast}" if _is_integer(c.type) else "FALSE"
            )
            checks.append(
                f"CASE WHEN {field} IS NOT NULL AND ({cast} IS NULL OR {fractional}) "
                f"THEN {_cannot_read(c, f'{field}::VARCHAR')} END"
            )
        record = ", ".join(f"{literal(c.name)}: {quote(c.name)}" for c in self.columns)
        written = "raw" if "raw" in raw.column_names else f"to_json({{{record}}})::VARCHAR"
        sql = (
            f'SELECT partition, "offset", {written} AS raw, '
            f"coalesce({', '.join(checks)}) AS __error, {', '.join(casts)} FROM __raw"
        )
        return self._split(raw, sql)

    def _split(self, raw: pa.Table, sql: str) -> SourceBatch:
        cursor = self._cursor
        cursor.register("__raw", raw)
        try:
            # DuckDB keeps insertion order, so rows stay in the order they arrived.
            cursor.execute(f"CREATE OR REPLACE TEMP TABLE __decoded AS {sql}").fetchall()
            names = ", ".join(quote(c.name) for c in self.columns)
            rows = cursor.sql(
                f"SELECT {names} FROM __decoded WHERE __error IS NULL"
            ).to_arrow_table()
            dead = cursor.sql(
                'SELECT partition, "offset", CAST(raw AS BLOB) AS raw, __error AS error '
                "FROM __decoded WHERE __error IS NOT NULL"
            ).to_arrow_table()
        finally:
            cursor.unregister("__raw")
        return SourceBatch(rows.cast(self.schema), dead.cast(DEAD_LETTER_SCHEMA))


def _is_integer(type_: str) -> bool:
    return type_.upper() in INTEGER_TYPES


def _cannot_read(column: Column, given: str) -> str:
    """SQL for the message `column c: cannot read <value> as <type>`."""
    return (
        f"{literal(f'column {column.name}: cannot read ')} || {given} || "
        f"{literal(f' as {column.type}')}"
    )


def _json_path(name: str) -> str:
    return '$."' + name.replace('"', '\\"') + '"'
