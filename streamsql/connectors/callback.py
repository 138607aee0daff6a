"""A Python function called with each batch: `(batch_id, pyarrow.Table)`, as Spark's foreachBatch.

The function runs inside the batch, before its transaction commits; if it raises, the batch
rolls back and the query stops with the error. After a crash the last batch may be passed
again with the same id and the same rows, so the sink is exactly-once only when the function
is idempotent by batch id (write to a place named after it, or skip ids already seen).

`callback = 'name'` names a function registered on the connection
(`Connection.register_callback`); `callback = 'package.module:function'` imports one, which
also works from `streamsql run` and when the database is opened again, except in restricted
mode, which calls only registered functions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import duckdb
import pyarrow as pa

from streamsql.connectors.sink import OutputSchema, Sink
from streamsql.errors import ProgrammingError

BatchCallback = Callable[[int, pa.Table], Any]


class CallbackSink(Sink):
    OPTIONS = (*Sink.OPTIONS, "callback")
    TARGET = "a Python callback"

    def __init__(
        self,
        name: str,
        options: dict[str, str],
        callbacks: Mapping[str, BatchCallback],
        importable: bool = True,
    ) -> None:
        """`importable`: whether a 'package.module:function' reference may be imported
        (not in restricted mode, where only functions registered from Python are called)."""
        super().__init__(name, options)
        reference = options.get("callback")
        if not reference:
            raise ProgrammingError(
                f"Sink {name}: the callback connector needs callback = 'name' (registered with "
                "Connection.register_callback) or 'package.module:function'"
            )
        if reference not in callbacks and not importable:
            raise ProgrammingError(
                f"Sink {name}: restricted mode calls only callbacks registered with "
                f"Connection.register_callback, and {reference!r} is not one (modules are "
                "not imported)"
            )
        self.function = callbacks.get(reference) or _import(name, reference)

    def open(self, cursor: duckdb.DuckDBPyConnection, schema: OutputSchema, query_id: str) -> None:
        pass

    def write(self, cursor: duckdb.DuckDBPyConnection, batch_id: int, rows: pa.Table) -> None:
        self.function(batch_id, rows)


def _import(sink: str, reference: str) -> BatchCallback:
    module, _, attribute = reference.partition(":")
    if not attribute:
        raise ProgrammingError(
            f"Sink {sink}: no callback registered as {reference!r} on this connection (and it "
            "is not a 'package.module:function' reference)"
        )
    try:
        function = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise ProgrammingError(
            f"Sink {sink}: cannot import callback {reference!r}: {error}"
        ) from None
    if not callable(function):
        raise ProgrammingError(f"Sink {sink}: callback {reference!r} is not callable")
    return function
