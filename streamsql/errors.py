"""The PEP 249 exception hierarchy, with the streaming errors placed where a DB-API user looks."""

from __future__ import annotations

import duckdb

from streamsql.secrets import redact


class Warning(Exception):
    """Important warnings, e.g. data truncation."""


class Error(Exception):
    """Base of every error streamsql raises."""


class InterfaceError(Error):
    """Misuse of the Python interface (closed cursor, wrong arguments)."""


class DatabaseError(Error):
    """Errors from the database or the streaming engine."""


class DataError(DatabaseError):
    """Bad data: a value that cannot be decoded or cast."""


class OperationalError(DatabaseError):
    """Trouble outside the programmer's control: broker down, disk full, query stopped."""


class IntegrityError(DatabaseError):
    """Relational integrity: a checkpoint that belongs to a different query."""


class InternalError(DatabaseError):
    """The engine reached a state it should never be in."""


class ProgrammingError(DatabaseError):
    """Bad SQL: syntax, unknown names, a query the engine cannot run incrementally."""


class NotSupportedError(DatabaseError):
    """A feature the engine does not offer."""


class SQLSyntaxError(ProgrammingError):
    """A statement that does not parse; carries the line and column of the offending token."""

    def __init__(self, message: str, line: int | None = None, col: int | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.col = col


class PlanningError(ProgrammingError):
    """A query that parses but that the engine refuses to run, naming the rule it breaks.

    `position` is the (line, column) of the part of the query at fault, when known.
    """

    def __init__(
        self, message: str, rule: str | None = None, position: tuple[int, int] | None = None
    ) -> None:
        where = f" (line {position[0]}, column {position[1]})" if position else ""
        super().__init__(f"{message}{where} [{rule}]" if rule else f"{message}{where}")
        self.message = message
        self.rule = rule
        self.line, self.col = position or (None, None)

    def at(self, position: tuple[int, int] | None) -> PlanningError:
        """This error, pointing at `position` unless it already points somewhere."""
        if self.line is not None or position is None:
            return self
        return PlanningError(self.message, self.rule, position)


class StreamingQueryError(OperationalError):
    """A streaming query that stopped with an error; raised by await_termination()."""


# DuckDB's exceptions, mapped onto the PEP 249 classes users catch.
_DUCKDB_ERRORS: tuple[tuple[type[Exception], type[Error]], ...] = (
    (duckdb.ParserException, ProgrammingError),
    (duckdb.BinderException, ProgrammingError),
    (duckdb.CatalogException, ProgrammingError),
    (duckdb.ConstraintException, IntegrityError),
    (duckdb.ConversionException, DataError),
    (duckdb.OutOfRangeException, DataError),
    (duckdb.InvalidInputException, DataError),
    (duckdb.NotImplementedException, NotSupportedError),
    (duckdb.IOException, OperationalError),
    (duckdb.TransactionException, OperationalError),
    (duckdb.InternalException, InternalError),
)


def from_duckdb(error: duckdb.Error, context: str = "") -> Error:
    """The PEP 249 error for a DuckDB error, its message prefixed by `context`."""
    message = redact(f"{context}: {error}" if context else str(error))
    if isinstance(error, duckdb.InvalidInputException) and "parameter" in str(error).lower():
        return ProgrammingError(message)  # PEP 249: a wrong number of parameters
    for duck, ours in _DUCKDB_ERRORS:
        if isinstance(error, duck):
            return ours(message)
    return DatabaseError(message)


class SourceUnavailable(OperationalError):
    """A source that cannot be reached right now (broker down, leader moving): a running
    query waits and retries the same batch, with backoff, instead of failing."""

    source: str | None = None  # the source's name, told by the runtime that asked it


class UnboundedStateWarning(UserWarning):
    """A streaming query whose state nothing evicts: it grows with every row (a
    stream-stream inner join without watermarks and a time range in ON)."""
