"""Rows appended by INSERT INTO <source>; offsets are row counts, as in Spark's MemoryStream.

The rows live in this process only: a memory source is for tests, demos and notebooks.
Queries over it resume from their checkpoint only while the process that holds the rows
is alive.
"""

from __future__ import annotations

import bisect
import threading

import pyarrow as pa

from streamsql.errors import ProgrammingError
from streamsql.sources.base import Offset, Origins, Source, SourceBatch


class MemorySource(Source):
    OPTIONS = (*Source.OPTIONS, "max_rows_per_trigger", "starting_offsets")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._chunks: list[pa.Table] = []
        self._ends: list[int] = []  # cumulative row count after each chunk
        self._lock = threading.Lock()
        self.max_rows = self.option_int("max_rows_per_trigger")
        self.starting = self.options.get("starting_offsets", "earliest")
        if self.starting not in ("earliest", "latest"):
            raise ProgrammingError(
                f"Source {self.name}: starting_offsets must be 'earliest' or 'latest'"
            )

    @property
    def total(self) -> int:
        return self._ends[-1] if self._ends else 0

    def append(self, rows: pa.Table) -> int:
        """Add rows (already in the declared columns); returns how many."""
        if rows.num_rows == 0:
            return 0
        rows = rows.select(self.schema.names).cast(self.schema)
        with self._lock:
            self._chunks.append(rows)
            self._ends.append(self.total + rows.num_rows)
        self.notify()
        return rows.num_rows

    def initial_offset(self) -> Offset:
        return {"rows": self.total if self.starting == "latest" else 0}

    def snapshot(self) -> Offset:
        return {"rows": self.total}

    def plan_batch(self, start: Offset, bound: Offset | None) -> Offset | None:
        first = start["rows"]
        end = self.total if bound is None else min(self.total, bound["rows"])
        if self.max_rows:
            end = min(end, first + self.max_rows)
        return {"rows": end} if end > first else None

    def backlog(self, end: Offset) -> int | None:
        """Rows not read yet (unknown when the rows were lost with another process)."""
        return self.total - end["rows"] if self.total >= end["rows"] else None

    def read(self, start: Offset, end: Offset) -> SourceBatch:
        first, last = start["rows"], end["rows"]
        if last > self.total:
            raise ProgrammingError(
                f"Memory source {self.name} holds {self.total} rows, but the checkpoint asks "
                f"for rows up to {last}: its rows were lost with the process that inserted them"
            )
        with self._lock:
            index = bisect.bisect_right(self._ends, first)
            pieces = []
            position = first
            while position < last:
                chunk_start = self._ends[index - 1] if index else 0
                chunk = self._chunks[index]
                take = min(last, self._ends[index]) - position
                pieces.append(chunk.slice(position - chunk_start, take))
                position += take
                index += 1
        rows = pa.concat_tables(pieces) if pieces else self.schema.empty_table()
        # A row's offset is its position, as a Kafka record's; it has no bytes as written.
        origins = Origins.positional(rows.num_rows, self.name, first)
        return SourceBatch(rows, self.empty().dead_letters, origins)
