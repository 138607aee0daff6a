"""Rows appended by INSERT INTO <source>; offsets are row counts, as in Spark's MemoryStream.

The rows live in this process only: a memory source is for tests, demos and notebooks.
An offset names the source instance (`run`) whose rows it counts, so a query resumed from
a checkpoint another process committed reads every row inserted in this process, once:
the other process's count says nothing about this one's rows.
"""

from __future__ import annotations

import bisect
import threading
import uuid

import pyarrow as pa

from streamsql.connectors.source import Offset, Origins, Source, SourceBatch


class MemorySource(Source):
    OPTIONS = (*Source.OPTIONS, "max_rows_per_trigger", "starting_offsets")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._chunks: list[pa.Table] = []
        self._ends: list[int] = []  # cumulative row count after each chunk
        self._lock = threading.Lock()
        self.run = uuid.uuid4().hex  # names this instance's rows in the offsets
        self.max_rows = self.option_int("max_rows_per_trigger")
        self.starting = self.option_choice("starting_offsets", ("earliest", "latest"), "earliest")

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

    def _offset(self, rows: int) -> Offset:
        return {"rows": rows, "run": self.run}

    def _read_up_to(self, offset: Offset) -> int:
        """The rows of this instance an offset covers: none when another process (or an
        instance since replaced) committed it."""
        return offset["rows"] if offset.get("run") == self.run else 0

    def initial_offset(self) -> Offset:
        return self._offset(self.total if self.starting == "latest" else 0)

    def snapshot(self) -> Offset:
        return self._offset(self.total)

    def plan_batch(
        self, start: Offset, bound: Offset | None, limited: bool = True
    ) -> Offset | None:
        first = self._read_up_to(start)
        end = self.total if bound is None else min(self.total, self._read_up_to(bound))
        if self.max_rows and limited:
            end = min(end, first + self.max_rows)
        return self._offset(end) if end > first else None

    def backlog(self, end: Offset) -> int | None:
        """Rows of this process not read yet."""
        return self.total - self._read_up_to(end)

    def read(self, start: Offset, end: Offset) -> SourceBatch:
        """A batch another process planned and did not commit reads empty: its rows were
        lost with that process (a memory source is not durable, as Spark's MemoryStream)."""
        first, last = self._read_up_to(start), self._read_up_to(end)
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
