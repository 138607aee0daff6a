"""A push query: a streaming SELECT whose rows come back to the caller as batches emit them."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from streamsql.format import python_rows
from streamsql.runtime.query import StreamingQuery
from streamsql.sinks.collect import CollectSink

POLL_SECONDS = 0.05


class PushStream:
    def __init__(
        self, query: StreamingQuery, sink: CollectSink, on_close: Callable[[], None]
    ) -> None:
        self.query = query
        self.sink = sink
        self._pending: list[tuple[int, tuple[Any, ...]]] = []  # (batch id, row)
        self._on_close = on_close
        self._closed = False

    @property
    def finished(self) -> bool:
        """The query stopped and every row it emitted has been fetched."""
        return not self.query.is_active and self.sink.batches.empty() and not self._pending

    def _drain(self) -> None:
        while True:
            try:
                self._take(*self.sink.batches.get_nowait())
            except queue.Empty:
                return

    def _take(self, batch_id: int, batch: pa.Table) -> None:
        """Rows as DuckDB's own fetchall gives them: Arrow carries a HUGEINT as a DECIMAL."""
        types = self.sink.schema.types if self.sink.schema else ()
        integral = [i for i, type_ in enumerate(types) if type_ in ("HUGEINT", "UHUGEINT")]
        for row in python_rows(batch):
            values = list(row)
            for i in integral:
                if values[i] is not None:
                    values[i] = int(values[i])
            self._pending.append((batch_id, tuple(values)))

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
                self._take(*self.sink.batches.get(timeout=POLL_SECONDS))
            except queue.Empty:
                continue

    def fetch(self, size: int | None, timeout: float | None) -> list[tuple[Any, ...]]:
        """Up to `size` rows (all with None); waits for the first one at most `timeout` s.

        Returns [] once the query has stopped and everything was fetched, or on timeout.
        With size None it waits for the query to stop (trigger available_now or once).
        """
        self._wait(size is None, timeout)
        count = len(self._pending) if size is None else size
        taken, self._pending = self._pending[:count], self._pending[count:]
        return [row for _, row in taken]

    def fetch_batch(self, timeout: float | None) -> tuple[int, list[tuple[Any, ...]]] | None:
        """The next emitted batch's id and its rows (those not fetched yet); waits for it at
        most `timeout` s. None on timeout, or once the query stopped and all was fetched."""
        self._wait(False, timeout)
        if not self._pending:
            return None
        batch_id = self._pending[0][0]
        count = next(
            (i for i, (batch, _) in enumerate(self._pending) if batch != batch_id),
            len(self._pending),
        )
        taken, self._pending = self._pending[:count], self._pending[count:]
        return batch_id, [row for _, row in taken]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.query.stop()
            self._on_close()
