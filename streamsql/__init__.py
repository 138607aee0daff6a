"""streamsql: an embedded SQL streaming engine with Spark Structured Streaming semantics."""

from streamsql import dbapi
from streamsql.dbapi import *  # noqa: F403 - the PEP 249 module surface
from streamsql.errors import PlanningError, SQLSyntaxError, StreamingQueryError

__version__ = "0.1.0"

__all__ = [*dbapi.__all__, "PlanningError", "SQLSyntaxError", "StreamingQueryError"]
