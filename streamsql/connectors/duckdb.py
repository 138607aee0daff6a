"""A table in the engine's database, kept the way a user expects the result to look.

EMIT FINAL and stateless queries append; EMIT CHANGES upserts on the group key, so the
table is the live result; EMIT SNAPSHOT replaces the contents. With `changelog = true`
every emitted row is appended with its `_batch_id` instead, for auditing emissions.
The rows commit in the same transaction as the query's state and checkpoint.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from streamsql.catalog.definitions import Emit
from streamsql.checkpoint.transactions import registered
from streamsql.connectors.sink import OutputSchema, Sink
from streamsql.errors import ProgrammingError
from streamsql.quoting import one_statement, quote

EMITTED_VIEW = "__emitted"


class DuckDBSink(Sink):
    OPTIONS = (*Sink.OPTIONS, "table", "changelog")
    OUTPUT = ("TABLE", "table")

    def __init__(self, name: str, options: dict[str, str]) -> None:
        super().__init__(name, options)
        self.table = self.option_text("table", name)
        if not all(part.strip() for part in self.table.split(".")) or self.table.count(".") > 2:
            raise self._invalid("table", "a name: table, schema.table or catalog.schema.table")
        self.changelog = self.option_bool("changelog", False)
        self._write_sql: list[str] = []
        self._replaces = False  # SNAPSHOT: an empty result empties the table

    @classmethod
    def output(cls, name: str, options: dict[str, str]) -> tuple[str, ...]:
        """`table` may name a schema: 'schema.table'."""
        return tuple(options.get("table", name).split("."))

    @property
    def qualified(self) -> str:
        return ".".join(quote(part) for part in self.output(self.name, self.options))

    def open(self, cursor: duckdb.DuckDBPyConnection, schema: OutputSchema, query_id: str) -> None:
        # refuses before creating anything
        self._write_sql = [one_statement(sql) for sql in self._statements(schema)]
        columns = [f"{quote(n)} {t}" for n, t in zip(schema.names, schema.types, strict=True)]
        if self.changelog:
            columns.append("_batch_id BIGINT")
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {self.qualified} ({', '.join(columns)})"
        ).fetchall()
        existing = [row[0] for row in cursor.execute(f"DESCRIBE {self.qualified}").fetchall()]
        expected = list(schema.names) + (["_batch_id"] if self.changelog else [])
        if [c.lower() for c in existing] != [c.lower() for c in expected]:
            raise ProgrammingError(
                f"Sink table {self.table} exists with columns ({', '.join(existing)}) but the "
                f"query emits ({', '.join(expected)}); drop the table or name another one "
                "with table = '...'"
            )
        self._replaces = schema.emit is Emit.SNAPSHOT and not self.changelog

    def _statements(self, schema: OutputSchema) -> list[str]:
        insert = f"INSERT INTO {self.qualified} BY NAME SELECT * FROM {EMITTED_VIEW}"
        if self.changelog:
            return [
                f"INSERT INTO {self.qualified} BY NAME "
                f"SELECT *, $batch_id::BIGINT AS _batch_id FROM {EMITTED_VIEW}"
            ]
        if schema.emit is Emit.SNAPSHOT:
            return [f"DELETE FROM {self.qualified}", insert]
        if schema.emit is Emit.CHANGES and schema.stateful:
            self.require_keys(
                schema, "into a table upserts each group on its key", "append every change"
            )
            on = (
                " AND ".join(
                    f"__sink.{quote(k)} IS NOT DISTINCT FROM __new.{quote(k)}" for k in schema.keys
                )
                or "TRUE"
            )
            updates = ", ".join(f"{quote(n)} = __new.{quote(n)}" for n in schema.names)
            return [
                f"MERGE INTO {self.qualified} AS __sink USING {EMITTED_VIEW} AS __new ON {on} "
                f"WHEN MATCHED THEN UPDATE SET {updates} "
                f"WHEN NOT MATCHED THEN INSERT BY NAME"
            ]
        return [insert]

    def write(self, cursor: duckdb.DuckDBPyConnection, batch_id: int, rows: pa.Table) -> None:
        if rows.num_rows == 0 and not self._replaces:
            return
        with registered(cursor, EMITTED_VIEW, rows):
            for sql in self._write_sql:
                params = {"batch_id": batch_id} if "$batch_id" in sql else None
                cursor.execute(sql, params).fetchall()
