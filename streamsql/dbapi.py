"""PEP 249 (DB-API 2.0) interface: connect(), Connection, Cursor.

Parameters use the qmark style and are bound by DuckDB, never formatted into SQL text.
"""

from __future__ import annotations

import importlib
import re
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
from sqlglot import exp

from streamsql.engine import Engine
from streamsql.engine.result import Result
from streamsql.errors import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    PlanningError,
    ProgrammingError,
    Warning,
    from_duckdb,
)
from streamsql.format import relation
from streamsql.runtime.push import PushStream
from streamsql.runtime.query import StreamingQuery
from streamsql.secrets import redact
from streamsql.sql import Statement, nesting_room, nodes, parse

apilevel = "2.0"
threadsafety = 1  # threads may share the module; each thread should use its own connection
paramstyle = "qmark"

# The one column DuckDB answers statements without a result set with (DML and DDL; SET,
# PRAGMA, BEGIN and the like).
ACKNOWLEDGEMENTS = ("Count", "Success")

T = TypeVar("T")


def connect(
    database: str = ":memory:",
    *,
    trigger: str | None = None,
    config: dict[str, Any] | None = None,
    restricted: bool = False,
    allowed_directories: Sequence[str] = (),
    read_only: bool = False,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> Connection:
    """Open (or create) an engine database; sinks recorded in it resume running.

    `trigger` overrides the trigger of every query (e.g. 'available_now'); `config` is
    passed to duckdb.connect (e.g. {'threads': 1, 'memory_limit': '2GB'}).
    `restricted` runs SQL that is not trusted: DuckDB reaches only the directories the
    stored sources and sinks name and `allowed_directories`, and ATTACH, INSTALL, LOAD,
    PRAGMA, EXPORT, SET and callbacks not registered from Python are refused.
    `read_only` inspects a database no process holds (a stopped engine): DuckDB opens it
    read-only and no sink resumes.
    `metrics_port` serves Prometheus metrics on `metrics_host` (see serve_metrics).
    """
    engine = Engine(
        database,
        trigger=trigger,
        config=config,
        restricted=restricted,
        allowed_directories=allowed_directories,
        read_only=read_only,
    )
    connection = Connection(engine)
    if metrics_port is not None:
        try:
            connection.serve_metrics(metrics_port, metrics_host)
        except Error:
            connection.close()
            raise
    return connection


class Connection:
    # PEP 249's optional extension: the exception classes on the connection.
    Warning, Error, InterfaceError, DatabaseError = Warning, Error, InterfaceError, DatabaseError
    DataError, OperationalError, IntegrityError = DataError, OperationalError, IntegrityError
    InternalError, ProgrammingError, NotSupportedError = (
        InternalError,
        ProgrammingError,
        NotSupportedError,
    )

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._closed = False
        self._default: Cursor | None = None
        self._cursors: weakref.WeakSet[Cursor] = weakref.WeakSet()
        self._lock = threading.Lock()

    def _check(self) -> None:
        if self._closed:
            raise InterfaceError("Connection is closed")

    def cursor(self) -> Cursor:
        self._check()
        return Cursor(self)

    def _default_cursor(self) -> Cursor:
        with self._lock:
            if self._default is None:
                self._default = self.cursor()
            return self._default

    def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> Cursor:
        """Shortcut, as in sqlite3 and duckdb: run on the connection's own cursor."""
        return self._default_cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Sequence[Sequence[Any]]) -> Cursor:
        return self._default_cursor().executemany(sql, seq_of_parameters)

    def register(self, name: str, data: Any) -> Cursor:
        """Make a pyarrow table queryable as `name` on the connection's own cursor."""
        return self._default_cursor().register(name, data)

    def register_callback(self, name: str, function: Callable[[int, pa.Table], Any]) -> None:
        """Name a function that callback sinks call with each batch's `(batch_id, rows)`:
        `CREATE SINK s WITH (connector = 'callback', callback = 'name') AS ...`."""
        self._check()
        self.engine.register_callback(name, function)

    def serve_metrics(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Serve the sinks' Prometheus metrics at http://host:port/metrics until the
        connection closes (port 0: a free one); returns the port."""
        self._check()
        return self.engine.metrics.serve(port, host)

    def query(self, name: str) -> StreamingQuery:
        """The running query of sink `name`."""
        self._check()
        return self.engine.query(name)

    @property
    def autocommit(self) -> bool:
        """Statements commit as they run, as DuckDB's do, unless a BEGIN opened a transaction
        (sinks commit batch by batch whatever the connection does)."""
        return True

    def commit(self) -> None:
        """Commit the transactions opened with BEGIN on this connection's cursors."""
        self._end_transactions("COMMIT")

    def rollback(self) -> None:
        """Roll back the transactions opened with BEGIN on this connection's cursors."""
        self._end_transactions("ROLLBACK")

    def _end_transactions(self, how: str) -> None:
        self._check()
        for cursor in list(self._cursors):
            if not cursor._closed:
                cursor._end_transaction(how)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.engine.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Cursor:
    arraysize = 1

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._duck = connection.engine.cursor()
        self._result: Result | None = None  # our statements' rows
        self._position = 0
        self._from_duckdb = False
        self.description: list[tuple[Any, ...]] | None = None
        self.rowcount = -1
        self._closed = False
        self._stream: PushStream | None = None
        connection._cursors.add(self)
        # How long fetchone/fetchmany wait for a push query's next row (None: until it comes).
        self.stream_timeout: float | None = None

    def _check(self) -> None:
        if self._closed:
            raise InterfaceError("Cursor is closed")
        self.connection._check()

    def _end_transaction(self, how: str) -> None:
        self._release()
        try:
            self._duck.execute(how).fetchall()
        except duckdb.TransactionException:
            pass  # no transaction open on this cursor: nothing to end
        except duckdb.Error as error:
            raise from_duckdb(error) from None

    def _release(self) -> None:
        """Drop the unread rest of a DuckDB result, so the cursor can run something else."""
        if self._from_duckdb:
            self._duck.abort()
            self._from_duckdb = False

    def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> Cursor:
        self._check()
        statements = parse(sql)
        if parameters is not None and len(statements) > 1:
            raise ProgrammingError("Parameters can only be bound to a single statement")
        for statement in statements:
            self.execute_statement(statement, parameters)
        return self

    def execute_statement(
        self, statement: Statement, parameters: Sequence[Any] | None = None
    ) -> Cursor:
        """Run one statement parsed from a larger script (`streamsql run`), so its errors
        point at the script's lines, not the statement's."""
        self._check()
        try:
            self._run(statement, parameters)
        except Error as error:
            message = redact(str(error), statement.text)
            if self.connection.engine.handler(statement) is None:  # DuckDB read its text
                message = _in_script(message, statement.line)
            node = statement.expression
            node = node.this if isinstance(node, nodes.Explain) else node
            sink = node.this.name if isinstance(node, exp.Create) and node.kind == "SINK" else ""
            if isinstance(error, PlanningError) and sink and sink not in message:
                message = f"CREATE SINK {sink}: {message}"  # which one, as syntax errors say
            error.args = (message,)
            raise
        return self

    def executemany(self, sql: str, seq_of_parameters: Sequence[Sequence[Any]]) -> Cursor:
        self._check()
        statement = _single(parse(sql))
        if self.connection.engine.handler(statement) is None:
            self.connection.engine.admit(statement)
            self._end_stream()
            try:  # DuckDB's own executemany: one prepared statement, many parameter sets
                self._duck.executemany(statement.text, seq_of_parameters)
            except duckdb.Error as error:
                raise from_duckdb(error) from None
            self._from_duckdb, self._result, self.rowcount = True, None, -1
            self.description = self._duck.description
            return self
        total = 0
        for parameters in seq_of_parameters:
            self._run(statement, parameters)
            total += max(self.rowcount, 0)
        self.rowcount = total
        return self

    def _run(self, statement: Statement, parameters: Sequence[Any] | None) -> None:
        self._end_stream()
        self._release()
        handler = self.connection.engine.handler(statement)
        self._position = 0
        self._result = None
        if handler is None:
            self.connection.engine.admit(statement)
            try:
                self._duck.execute(statement.text, parameters)
            except duckdb.Error as error:
                raise from_duckdb(error) from None
            self._from_duckdb = True
            self.description = self._duck.description
            self.rowcount = -1
            if not isinstance(statement.expression, exp.Query) and _acknowledges(self.description):
                # DML, DDL, SET, ...: DuckDB answers with a count of rows written or a
                # success flag, not with a result set.
                answer = self._duck.fetchall()
                counted = self.description[0][0] == "Count" and answer
                self._from_duckdb, self.description = False, None
                self.rowcount = answer[0][0] if counted else -1
            return
        self._from_duckdb = False
        with nesting_room(statement.line):
            result = handler(self.connection.engine, statement, parameters, self._duck)
        self._result = result
        self._stream = result.stream
        if result.rowcount >= 0:
            self.rowcount = result.rowcount
        else:  # a push query's rows are still to come: unknown
            self.rowcount = len(result.rows) if result.columns and not result.stream else -1
        self.description = (
            [(name, None, None, None, None, None, None) for name in result.columns]
            if result.columns
            else None
        )

    def fetchone(self) -> tuple[Any, ...] | None:
        rows = self.fetchmany(1)
        return rows[0] if rows else None

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        self._check()
        size = self.arraysize if size is None else size
        if self._from_duckdb:
            try:
                return self._duck.fetchmany(size)
            except duckdb.Error as error:
                raise from_duckdb(error) from None
        if self._stream is not None:
            return self._stream.fetch(size, self.stream_timeout)
        rows = self._rows()[self._position : self._position + size]
        self._position += len(rows)
        return rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        self._check()
        if self._from_duckdb:
            try:
                return self._duck.fetchall()
            except duckdb.Error as error:
                raise from_duckdb(error) from None
        if self._stream is not None:
            return self._stream.fetch(None, None)
        rows = self._rows()[self._position :]
        self._position += len(rows)
        return rows

    def _rows(self) -> list[tuple[Any, ...]]:
        """Our statement's rows; an error when it produced no result set (PEP 249)."""
        if self.description is None or self._result is None:
            raise ProgrammingError("The last statement produced no rows to fetch")
        return self._result.rows

    # -- DuckDB's result methods ------------------------------------------------------------------

    def fetch_arrow_table(self) -> pa.Table:
        """The rows fetchall() would return, as one Arrow table with DuckDB's types (a push
        query: waits until it stops, as fetchall does)."""
        self._check()
        if self._from_duckdb:
            return self._from_duck(lambda duck: duck.to_arrow_table())
        if self._stream is not None:
            return self._stream.fetch_arrow()
        rows = self._rows()[self._position :]
        self._position += len(rows)
        names = [column[0] for column in self.description]
        return pa.Table.from_arrays(
            [pa.array(column) for column in zip(*rows, strict=True)] or [pa.nulls(0)] * len(names),
            names=names,
        )

    arrow = fetch_arrow_table

    def fetch_record_batch(self, rows_per_batch: int = 1_000_000) -> pa.RecordBatchReader:
        """The rows fetchall() would return, as a stream of Arrow record batches; a push
        query's batches come as it emits them, until it stops."""
        self._check()
        if self._from_duckdb:
            return self._from_duck(lambda duck: duck.to_arrow_reader(rows_per_batch))
        if self._stream is not None:
            schema = self._stream.sink.arrow_schema
            return pa.RecordBatchReader.from_batches(schema, self._stream.record_batches())
        table = self.fetch_arrow_table()
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(rows_per_batch))

    def df(self) -> Any:
        """fetch_arrow_table() as a pandas DataFrame, converted as DuckDB's df() converts
        (a DECIMAL becomes float64); needs pandas."""
        _require("pandas", "df()")
        return relation(self.fetch_arrow_table()).df()

    fetchdf = fetch_df = df

    def pl(self) -> Any:
        """fetch_arrow_table() as a polars DataFrame, as DuckDB's pl() gives it; needs polars."""
        _require("polars", "pl()")
        return relation(self.fetch_arrow_table()).pl()

    def _from_duck(self, fetch: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Arrow from DuckDB's own result. DuckDB warns that Arrow from a DB-API result
        copies the rows, which a cursor cannot avoid: its statement already ran."""
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Arrow output on a DB-API result", UserWarning)
                return fetch(self._duck)
        except duckdb.Error as error:
            raise from_duckdb(error) from None

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while (row := self.fetchone()) is not None:
            yield row

    @property
    def streaming(self) -> bool:
        """True while the last statement is a push query with rows still to come."""
        return self._stream is not None and not self._stream.finished

    def register(self, name: str, data: Any) -> Cursor:
        """Make a pyarrow table (or pandas/polars frame) queryable under `name`, as in duckdb."""
        self._check()
        self._duck.register(name, data)
        return self

    def interrupt(self) -> None:
        """Interrupt the statement running on this cursor, from another thread (it fails
        with DuckDB's InterruptException): what a PostgreSQL client's cancel request does."""
        self._duck.interrupt()

    def setinputsizes(self, sizes: Any) -> None:
        """Accepted and ignored, as PEP 249 allows."""

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        """Accepted and ignored, as PEP 249 allows."""

    def _end_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def close(self) -> None:
        """Close the cursor; a push query running on it stops."""
        if not self._closed:
            self._closed = True
            self._end_stream()
            self._duck.close()

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _acknowledges(description: list[tuple[Any, ...]] | None) -> bool:
    """DuckDB's answer to statements without a result: one column, Count or Success."""
    return bool(description) and len(description) == 1 and description[0][0] in ACKNOWLEDGEMENTS


def _in_script(message: str, line: int) -> str:
    """DuckDB's `LINE n:` counts from the statement's first line: count from the script's."""
    return re.sub(
        r"^LINE (\d+):", lambda m: f"LINE {int(m.group(1)) + line - 1}:", message, flags=re.M
    )


def _require(package: str, method: str) -> None:
    """Check that an optional package a result method needs is installed, naming it if not."""
    try:
        importlib.import_module(package)
    except ImportError:
        raise NotSupportedError(
            f"Cursor.{method} needs {package}, which is not installed: pip install {package}"
        ) from None


def _single(statements: list[Statement]) -> Statement:
    if len(statements) != 1:
        raise ProgrammingError("executemany() takes exactly one statement")
    return statements[0]


__all__ = [
    "Connection",
    "Cursor",
    "DataError",
    "DatabaseError",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "Warning",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]
