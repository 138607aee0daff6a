"""The PEP 249 exception hierarchy, with the streaming errors placed where a DB-API user looks."""

from __future__ import annotations


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
    """A query that parses but that the engine refuses to run, naming the rule it breaks."""

    def __init__(self, message: str, rule: str | None = None) -> None:
        super().__init__(f"{message} [{rule}]" if rule else message)
        self.rule = rule


class StreamingQueryError(OperationalError):
    """A streaming query that stopped with an error; raised by await_termination()."""
