"""A push query: a streaming SELECT whose rows come back to the caller as batches emit them."""

from __future__ import annotations

import collections
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from streamsql.connectors.collect import CollectSink
from streamsql.format import python_rows
from streamsql.runtime.query import StreamingQuery

POLL_SECONDS = 0.05


class PushStream:
    """The rows a push query emitted and the caller has not fetched yet, kept as the Arrow
    tables DuckDB produced (converted to Python rows only when fetched as rows)."""

    def __init__(
        self, query: StreamingQuery, sink: CollectSink, on_close: Callable[[], None]
    ) -> None:
        self.query = query
        self.sink = sink
        self._pending: collections.deque[tuple[int, pa.Table]] = collections.deque()
        self._on_close = on_close
        self._closed = False

    @property
    def finished(self) -> bool:
        """The query stopped and every row it emitted has been fetched."""
        return not self.query.is_active and self.sink.batches.empty() and not self._pending

    def _drain(self) -> None:
        while True:
            try:
                self._pending.append(self.sink.batches.get_nowait())
            except queue.Empty:
                return

    def _rows(self, tables: list[pa.Table]) -> list[tuple[Any, ...]]:
        """Rows as DuckDB's own fetchall gives them: Arrow carries a HUGEINT as a DECIMAL."""
        if not tables:
            return []
        types = self.sink.schema.types if self.sink.schema else ()
        integral = [i for i, type_ in enumerate(types) if type_ in ("HUGEINT", "UHUGEINT")]
        rows = python_rows(pa.concat_tables(tables))
        if not integral:
            return rows
        converted = []
        for row in rows:
            values = list(row)
            for i in integral:
                if values[i] is not None:
                    values[i] = int(values[i])
            converted.append(tuple(values))
        return converted

    def _wait(self, until_stopped: bool, timeout: float | None) -> None:
        """Until rows are pending (with `until_stopped`: until the query stopped), or
        `timeout` seconds passed; raises the query's error once it stopped with one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._drain()
            stopped = not self.query.is_active
            if stopped:
                self._drain()
                self.query.await_termination(0)  # raises the query's error, if any
            if self._pending and not until_stopped:
                return
            if stopped or (deadline is not None and time.monotonic() >= deadline):
                return
            try:
                self._pending.append(self.sink.batches.get(timeout=POLL_SECONDS))
            except queue.Empty:
                continue

    def _take(self, count: int | None) -> list[pa.Table]:
        """The first `count` pending rows (all with None), as Arrow tables."""
        taken: list[pa.Table] = []
        while self._pending and (count is None or count > 0):
            batch_id, table = self._pending.popleft()
            if count is not None and table.num_rows > count:
                self._pending.appendleft((batch_id, table.slice(count)))
                table = table.slice(0, count)
            taken.append(table)
            if count is not None:
                count -= table.num_rows
        return taken

    def fetch(self, size: int | None, timeout: float | None) -> list[tuple[Any, ...]]:
        """Up to `size` rows (all with None); waits for the first one at most `timeout` s.

        Returns [] once the query has stopped and everything was fetched, or on timeout.
        With size None it waits for the query to stop (trigger available_now or once).
        """
        self._wait(size is None, timeout)
        return self._rows(self._take(size))

    def fetch_arrow(self) -> pa.Table:
        """What fetch(None, None) returns, as one Arrow table with DuckDB's types: every row
        not fetched yet, once the query has stopped."""
        self._wait(True, None)
        return pa.Table.from_batches(
            [batch for table in self._take(None) for batch in table.to_batches()],
            self.sink.arrow_schema,
        )

    def record_batches(self) -> Iterator[pa.RecordBatch]:
        """The rows not fetched yet, a batch's worth at a time as the query emits them, until
        it stops."""
        while True:
            self._wait(False, None)
            if not self._pending:
                return
            yield from self._pending.popleft()[1].to_batches()

    def fetch_batch(self, timeout: float | None) -> tuple[int, list[tuple[Any, ...]]] | None:
        """The next emitted batch's id and its rows (those not fetched yet); waits for it at
        most `timeout` s. None on timeout, or once the query stopped and all was fetched."""
        self._wait(False, timeout)
        if not self._pending:
            return None
        batch_id = self._pending[0][0]
        return batch_id, self._rows([self._pending.popleft()[1]])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.query.stop()
            self._on_close()
