"""Print each batch, as Spark's console sink does; for trying queries out."""

from __future__ import annotations

import sys
from typing import TextIO

import duckdb
import pyarrow as pa

from streamsql.connectors.sink import OutputSchema, Sink
from streamsql.format import format_table, python_rows


class ConsoleSink(Sink):
    OPTIONS = (*Sink.OPTIONS, "print_empty")
    TARGET = "the console"

    def __init__(self, name: str, options: dict[str, str], stream: TextIO | None = None) -> None:
        super().__init__(name, options)
        self.stream = stream  # None: whatever sys.stdout is when a batch is printed
        self.names: tuple[str, ...] = ()
        self.print_empty = self.option_bool("print_empty", False)

    def open(self, cursor: duckdb.DuckDBPyConnection, schema: OutputSchema, query_id: str) -> None:
        self.names = schema.names

    def write(self, cursor: duckdb.DuckDBPyConnection, batch_id: int, rows: pa.Table) -> None:
        if rows.num_rows == 0 and not self.print_empty:
            return
        records = python_rows(rows)
        banner = "-" * 43
        stream = self.stream or sys.stdout
        stream.write(f"{banner}\n{self.name} batch: {batch_id}\n{banner}\n")
        stream.write(format_table(self.names, records) + "\n")
        stream.flush()
