"""The engine behind a connection: the database and its catalog, the lifecycle of the
streaming queries, and the statements of the streaming dialect (`engine`)."""

from streamsql.engine.engine import Engine

__all__ = ["Engine"]
