"""Hand each batch's rows to the caller of a push query (a streaming SELECT on a cursor)."""

from __future__ import annotations

import queue

import duckdb
import pyarrow as pa

from streamsql.connectors.sink import OutputSchema, Sink
from streamsql.quoting import quote


class CollectSink(Sink):
    """Batches go into a queue the cursor reads, with their ids; rows reach the caller at
    least once."""

    def __init__(self, name: str, options: dict[str, str]) -> None:
        super().__init__(name, options)
        self.batches: queue.Queue[tuple[int, pa.Table]] = queue.Queue()
        self.schema: OutputSchema | None = None
        self.arrow_schema: pa.Schema | None = None

    def open(self, cursor: duckdb.DuckDBPyConnection, schema: OutputSchema, query_id: str) -> None:
        """Keep the output's Arrow schema as DuckDB gives it, for results without rows."""
        self.schema = schema
        columns = ", ".join(
            f"CAST(NULL AS {type_}) AS {quote(name)}"
            for name, type_ in zip(schema.names, schema.types, strict=True)
        )
        self.arrow_schema = cursor.sql(f"SELECT {columns} LIMIT 0").to_arrow_table().schema

    def write(self, cursor: duckdb.DuckDBPyConnection, batch_id: int, rows: pa.Table) -> None:
        if rows.num_rows:
            self.batches.put((batch_id, rows))
