"""The sink contract: receive each batch's emitted rows inside the batch's transaction."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from streamsql.plan.plan import Emit


@dataclass(frozen=True)
class OutputSchema:
    """What a query emits: column names and DuckDB types, and how to apply its rows."""

    names: tuple[str, ...]
    types: tuple[str, ...]
    emit: Emit
    stateful: bool
    keys: tuple[str, ...]  # output columns that are group keys or window bounds
    keys_complete: bool  # every group key (and the window) is among the outputs


class Sink(ABC):
    def __init__(self, name: str, options: dict[str, str]) -> None:
        self.name = name
        self.options = options

    @abstractmethod
    def open(self, cursor: duckdb.DuckDBPyConnection, schema: OutputSchema) -> None:
        """Prepare for writing (create tables, files); called before the first batch runs."""

    @abstractmethod
    def write(self, cursor: duckdb.DuckDBPyConnection, batch_id: int, rows: pa.Table) -> None:
        """Apply one batch's rows. `cursor` is inside the batch's open transaction."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources when the query stops."""
