"""Plain definitions of what a statement declares (sources, sinks, their columns, the output
mode): a leaf module, so that the connectors read them without importing the SQL dialect or
the planner."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlglot import exp

# Columns the engine adds next to a source's own (window starts, decoded fields) are named
# with this prefix, which no user column may take: they can never shadow each other.
INTERNAL_PREFIX = "__streamsql_"


class Emit(StrEnum):
    """Output modes, named as in the SQL; Spark's names in the comments."""

    CHANGES = "CHANGES"  # update
    FINAL = "FINAL"  # append
    SNAPSHOT = "SNAPSHOT"  # complete


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # a DuckDB type, as DuckDB spells it
    metadata: str | None = None  # the connector's metadata key it is filled from (METADATA)


@dataclass(frozen=True)
class ComputedColumn:
    name: str
    expression: exp.Expr  # over the physical columns; evaluated per batch, never stored


@dataclass(frozen=True)
class WatermarkSpec:
    """Event time = `column`; watermark = max event time seen - `delay`."""

    column: str
    delay: exp.Expr  # an interval; converted to microseconds when the query is planned


@dataclass(frozen=True)
class SourceDef:
    name: str
    columns: tuple[Column, ...]
    computed: tuple[ComputedColumn, ...]
    watermark: WatermarkSpec | None
    options: dict[str, str]
    sql: str = field(compare=False)

    @property
    def connector(self) -> str:
        return self.options["connector"]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns] + [c.name for c in self.computed]


@dataclass(frozen=True)
class SinkDef:
    name: str
    options: dict[str, str]
    query: exp.Select
    sql: str = field(compare=False)
    # Values of the query's `?` placeholders, in order: bound per batch, never SQL text.
    parameters: tuple[Any, ...] = ()

    @property
    def connector(self) -> str:
        return self.options.get("connector", "duckdb")


@dataclass(frozen=True)
class ViewDef:
    """A view over streams: a name for a query that later queries read as a stream."""

    name: str
    query: exp.Query
    sql: str = field(compare=False)
