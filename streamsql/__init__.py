"""streamsql: an embedded SQL streaming engine with Spark Structured Streaming semantics."""

from streamsql.dbapi import (
    Connection,
    Cursor,
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
    apilevel,
    connect,
    paramstyle,
    threadsafety,
)
from streamsql.errors import PlanningError, SQLSyntaxError, StreamingQueryError

__version__ = "0.1.0"

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
    "PlanningError",
    "ProgrammingError",
    "SQLSyntaxError",
    "StreamingQueryError",
    "Warning",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]
