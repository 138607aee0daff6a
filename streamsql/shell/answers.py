"""What the shell says about statements without rows (`Source events created`, `Sink clicks
started`), and how it marks a push query's updates (Flink's +I/+U row kinds)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from streamsql.catalog.definitions import Emit, SinkDef, SourceDef
from streamsql.connectors.sink import OutputSchema
from streamsql.engine import Engine
from streamsql.runtime.query import StreamingQuery
from streamsql.sql import nodes

OP_COLUMN = "op"
INSERT, UPDATE = "+I", "+U"


@dataclass(frozen=True)
class Catalog:
    """The engine's sources, sinks and queries just before a statement ran: what it changed
    is told from them and the engine's afterwards."""

    sources: dict[str, SourceDef]
    sinks: dict[str, SinkDef]
    queries: dict[str, StreamingQuery]

    @classmethod
    def of(cls, engine: Engine) -> Catalog:
        """The engine's catalog now (copies: the engine's dicts change as statements run)."""
        return cls(dict(engine.sources), dict(engine.sinks), dict(engine.queries))

    def answer(self, node: exp.Expr, engine: Engine) -> str | None:
        """What `node` did, in a few words; None for statements DuckDB answers itself."""
        if isinstance(node, nodes.StopQuery):
            return f"Query {node.this.name} stopped"
        if isinstance(node, exp.Create) and node.kind == "SOURCE":
            name = node.this.this.name if isinstance(node.this, exp.Schema) else node.this.name
            old = self.sources.get(name.lower())
            if old is None:
                return f"Source {name} created"
            return f"Source {name} " + (
                "exists: unchanged" if engine.sources.get(name.lower()) is old else "replaced"
            )
        if isinstance(node, exp.Create) and node.kind == "SINK":
            return self._sink(node.this.name, bool(node.args.get("replace")), engine)
        if isinstance(node, exp.Drop) and node.kind in ("SOURCE", "SINK"):
            kind = node.kind.title()
            name = (node.args.get("tables") or [node.this])[0].name
            existed = name.lower() in (self.sources if kind == "Source" else self.sinks)
            return f"{kind} {name} {'dropped' if existed else 'does not exist: nothing dropped'}"
        return None

    def _sink(self, name: str, replace: bool, engine: Engine) -> str:
        key = name.lower()
        old = self.sinks.get(key)
        if old is None:
            return f"Sink {name} started"
        if engine.sinks.get(key) is not old:
            changed = "replaced" if replace else "restarted with its new definition"
            return f"Sink {name} {changed}"
        if engine.queries.get(key) is not self.queries.get(key):  # a stopped sink resubmitted
            return f"Sink {name} started"
        return f"Sink {name} exists: unchanged"


@dataclass
class Changelog:
    """An EMIT CHANGES aggregation's rows marked as a group's first (+I) or as an update of
    a group it emitted before (+U), told by the group's key columns (the sink's upsert key)."""

    keys: list[int]  # positions of the key columns in a row
    seen: set[tuple[Any, ...]] = field(default_factory=set)

    @staticmethod
    def of(schema: OutputSchema) -> Changelog | None:
        """None where every row is new (no EMIT CHANGES, no state) or the key is not shown."""
        if schema.emit != Emit.CHANGES or not schema.stateful or not schema.keys_complete:
            return None
        return Changelog([schema.names.index(key) for key in schema.keys])

    @staticmethod
    def unmarked(schema: OutputSchema) -> bool:
        """An EMIT CHANGES aggregation whose rows cannot be marked: a group key is not shown."""
        return schema.emit == Emit.CHANGES and schema.stateful and not schema.keys_complete

    def mark(self, rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Each row with its op first."""
        marked = []
        for row in rows:
            key = tuple(row[i] for i in self.keys)
            marked.append((UPDATE if key in self.seen else INSERT, *row))
            self.seen.add(key)
        return marked
