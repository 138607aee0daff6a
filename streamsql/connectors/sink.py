"""The sink contract: receive each batch's emitted rows inside the batch's transaction."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import duckdb
import pyarrow as pa

from streamsql.catalog.definitions import Emit
from streamsql.errors import PlanningError, ProgrammingError
from streamsql.options import Configured
from streamsql.runtime.triggers import Trigger


@dataclass(frozen=True)
class OutputSchema:
    """What a query emits: column names and DuckDB types, and how to apply its rows."""

    names: tuple[str, ...]
    types: tuple[str, ...]
    emit: Emit
    stateful: bool
    keys: tuple[str, ...]  # output columns that are group keys or window bounds
    keys_complete: bool  # every group key (and the window) is among the outputs


class Sink(Configured, ABC):
    # WITH (...) keys it reads (and the engine: how several sources' watermarks combine)
    OPTIONS: ClassVar[tuple[str, ...]] = ("connector", "trigger", "multiple_watermark_policy")
    # The TABLE or VIEW the sink keeps in the engine database, and the option that names it
    # (by default the sink's name): the sink's own, so DROP SINK drops it.
    OUTPUT: ClassVar[tuple[str, str] | None] = None
    # Where a sink without OUTPUT writes, as its errors say it (by default its connector's name).
    TARGET: ClassVar[str | None] = None

    def __init__(self, name: str, options: dict[str, str]) -> None:
        """Read and check every option (the trigger too, which `--trigger` may override in
        this run but not in the next)."""
        self.name = name
        self.options = options
        if "trigger" in options:
            try:
                Trigger.parse(options["trigger"])
            except ProgrammingError as error:
                raise ProgrammingError(f"{self.owner}: {error}") from None

    @property
    def owner(self) -> str:
        return f"Sink {self.name}"

    @abstractmethod
    def open(self, cursor: duckdb.DuckDBPyConnection, schema: OutputSchema, query_id: str) -> None:
        """Prepare for writing (create tables, recover files) before the first batch runs.
        `query_id` stays the same across restarts from the query's checkpoint."""

    @abstractmethod
    def write(self, cursor: duckdb.DuckDBPyConnection, batch_id: int, rows: pa.Table) -> None:
        """Apply one batch's rows. `cursor` is inside the batch's open transaction."""

    @classmethod
    def output(cls, name: str, options: dict[str, str]) -> tuple[str, ...]:
        """The identifier parts of the sink's table or view in the engine database (none for
        sinks that write elsewhere)."""
        return (options.get(cls.OUTPUT[1], name),) if cls.OUTPUT else ()

    def require_keys(self, schema: OutputSchema, how: str, otherwise: str) -> None:
        """EMIT CHANGES applied per group (`how`) needs every group key among the outputs."""
        if not schema.keys_complete:
            raise PlanningError(
                f"Sink {self.name}: EMIT CHANGES {how}, so the SELECT list must include every "
                f"GROUP BY key (and window_start or window_end); or set changelog = true to "
                f"{otherwise}",
                rule="changes-sink-needs-keys",
            )

    def committed(self, cursor: duckdb.DuckDBPyConnection, batch_id: int) -> None:
        """Called after the batch's transaction commits (optional hook)."""

    def compact(self, cursor: duckdb.DuckDBPyConnection) -> tuple[int, int]:
        """Rewrite small output files into fewer; returns (files replaced, files written)."""
        raise ProgrammingError(f"Sink {self.name}: only file sinks can be compacted")

    def close(self) -> None:
        """Release resources when the query stops."""
