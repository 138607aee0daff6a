"""Every connector, under the name `WITH (connector = '...')` gives it: the one place where a
source or a sink is registered."""

from __future__ import annotations

from typing import TypeVar

from streamsql.catalog.definitions import SinkDef, SourceDef
from streamsql.connectors.callback import CallbackSink
from streamsql.connectors.console import ConsoleSink
from streamsql.connectors.delta import DeltaSink
from streamsql.connectors.duckdb import DuckDBSink
from streamsql.connectors.files.sink import CSVSink, JSONSink, ParquetSink
from streamsql.connectors.files.source import FileSource
from streamsql.connectors.kafka.sink import KafkaSink
from streamsql.connectors.kafka.source import KafkaSource
from streamsql.connectors.memory import MemorySource
from streamsql.connectors.sink import Sink
from streamsql.connectors.source import Source
from streamsql.errors import ProgrammingError

Connector = TypeVar("Connector", Source, Sink)

SOURCE_CONNECTORS: dict[str, type[Source]] = {
    "memory": MemorySource,
    "files": FileSource,
    "kafka": KafkaSource,
}

SINK_CONNECTORS: dict[str, type[Sink]] = {
    "duckdb": DuckDBSink,
    "parquet": ParquetSink,
    "csv": CSVSink,
    "json": JSONSink,
    "delta": DeltaSink,
    "kafka": KafkaSink,
    "callback": CallbackSink,
    "console": ConsoleSink,
}


def connector_class(
    kind: str, definition: SourceDef | SinkDef, registry: dict[str, type[Connector]]
) -> type[Connector]:
    """The class of a definition's connector, which must know every option it is given (a
    misspelt option is an error, not a setting silently ignored)."""
    connector = registry.get(definition.connector.lower())
    if connector is None:
        raise ProgrammingError(
            f"Unknown {kind.lower()} connector {definition.connector!r}; available: "
            f"{', '.join(registry)}"
        )
    unknown = sorted(
        key
        for key in set(definition.options) - set(connector.OPTIONS)
        if not key.startswith(getattr(connector, "OPTION_PREFIXES", ()))
    )
    if unknown:
        raise ProgrammingError(
            f"{kind} {definition.name}: unknown option {unknown[0]!r} for connector "
            f"{definition.connector!r}; its options are {', '.join(connector.OPTIONS)}"
        )
    return connector
