"""What our own statements return, and the cursor they run on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb

from streamsql.runtime.push import PushStream

DuckCursor = duckdb.DuckDBPyConnection


@dataclass
class Result:
    """Rows our own statements return (DuckDB statements return DuckDB's result)."""

    columns: list[str] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    rowcount: int = -1
    stream: PushStream | None = None  # a push query's rows, fetched as they are emitted
