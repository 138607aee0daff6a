"""Decode raw records (JSON values, CSV fields, Parquet columns) into the declared columns.

Decoding is set-based, in a private in-memory DuckDB: JSON is parsed by json_transform,
fields are cast with try_cast, and every record that does not fit gets an error message
naming the column, so it can be routed to the dead-letter table instead of being lost.
"""

from __future__ import annotations

import json
import threading

import duckdb
import pyarrow as pa

from streamsql.plan.catalog import Column
from streamsql.sources.base import DEAD_LETTER_SCHEMA, SourceBatch

FORMATS = ("json", "csv", "parquet")


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Decoder:
    """Turns a table of raw records into a SourceBatch of typed rows and dead letters.

    The raw table carries `partition` (string) and `offset` (int64) columns that say where
    each record came from, and either a `value` column (JSON) or one string column per
    declared column (CSV and Parquet).
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
        checks = [
            f"CASE WHEN __v.{ident(c.name)} IS NULL "
            f"AND coalesce(json_type(value, {literal(_json_path(c.name))}), 'NULL') <> 'NULL' "
            f"THEN {literal(f'column {c.name}: cannot read ')} || "
            f"json_extract(value, {literal(_json_path(c.name))})::VARCHAR || "
            f"{literal(f' as {c.type}')} END"
            for c in self.columns
        ]
        error = (
            f"CASE WHEN value IS NULL THEN 'empty message' "
            f"WHEN NOT {valid} THEN 'malformed JSON' "
            f"WHEN NOT {is_object} THEN 'JSON value is not an object' "
            f"ELSE coalesce({', '.join(checks)}) END"
            if checks
            else "NULL"
        )
        parsed = (
            f'SELECT partition, "offset", value, CASE WHEN {valid} AND {is_object} '
            f"THEN json_transform(value, {literal(structure)}) END AS __v FROM __raw"
        )
        sql = (
            f"SELECT * EXCLUDE (__v), __v.* FROM ("
            f'SELECT partition, "offset", value, {error} AS __error, __v FROM ({parsed}))'
        )
        return self._split(raw, sql, "value")

    def decode_fields(self, raw: pa.Table) -> SourceBatch:
        """Cast per-column fields (strings from CSV, typed columns from Parquet)."""
        casts = [f"try_cast({ident(c.name)} AS {c.type}) AS {ident(c.name)}" for c in self.columns]
        checks = [
            f"CASE WHEN {ident(c.name)} IS NOT NULL "
            f"AND try_cast({ident(c.name)} AS {c.type}) IS NULL "
            f"THEN {literal(f'column {c.name}: cannot read ')} || {ident(c.name)}::VARCHAR || "
            f"{literal(f' as {c.type}')} END"
            for c in self.columns
        ]
        row = ", ".join(f"{literal(c.name)}: {ident(c.name)}::VARCHAR" for c in self.columns)
        sql = (
            f'SELECT partition, "offset", to_json({{{row}}})::VARCHAR AS value, '
            f"coalesce({', '.join(checks)}) AS __error, {', '.join(casts)} FROM __raw"
        )
        return self._split(raw, sql, "value")

    def _split(self, raw: pa.Table, sql: str, raw_column: str) -> SourceBatch:
        cursor = self._cursor
        cursor.register("__raw", raw)
        try:
            # DuckDB keeps insertion order, so rows stay in the order they arrived.
            cursor.execute(f"CREATE OR REPLACE TEMP TABLE __decoded AS {sql}").fetchall()
            names = ", ".join(ident(c.name) for c in self.columns)
            rows = cursor.sql(
                f"SELECT {names} FROM __decoded WHERE __error IS NULL"
            ).to_arrow_table()
            dead = cursor.sql(
                f'SELECT partition, "offset", CAST({raw_column} AS BLOB) AS raw, __error AS error '
                f"FROM __decoded WHERE __error IS NOT NULL"
            ).to_arrow_table()
        finally:
            cursor.unregister("__raw")
        return SourceBatch(rows.cast(self.schema), dead.cast(DEAD_LETTER_SCHEMA))


def _json_path(name: str) -> str:
    return '$."' + name.replace('"', '\\"') + '"'
