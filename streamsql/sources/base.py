"""The source contract: plan an input range, then read exactly that range, again if asked.

A source knows its connector and its format, nothing of SQL queries. Offsets are small
JSON values that only the source interprets; the runtime logs them before reading.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from streamsql.errors import ProgrammingError
from streamsql.format import parse_seconds
from streamsql.plan.catalog import SourceDef

Offset = Any

ON_ERROR = ("dead_letter", "skip", "fail")
DEAD_LETTER_RETENTION = 7 * 86400.0  # seconds: a week, as Kafka keeps a topic's messages

DEAD_LETTER_SCHEMA = pa.schema(
    [
        ("partition", pa.string()),
        ("offset", pa.int64()),
        ("raw", pa.binary()),
        ("error", pa.string()),
    ]
)


@dataclass(frozen=True)
class SourceBatch:
    """Decoded rows in the declared columns, and the records that could not be decoded."""

    rows: pa.Table
    dead_letters: pa.Table


class Source(ABC):
    """One instance per source per engine, shared by the queries that read it."""

    # WITH (...) keys it reads
    OPTIONS: ClassVar[tuple[str, ...]] = ("connector", "on_error", "dead_letter_retention")
    OPTION_PREFIXES: ClassVar[tuple[str, ...]] = ()  # and keys passed on to a client library
    METADATA: ClassVar[tuple[str, ...]] = ()  # what METADATA columns can be filled from

    def __init__(self, definition: SourceDef, schema: pa.Schema) -> None:
        self.definition = definition
        self.schema = schema  # the declared physical columns, as Arrow types
        self.options = definition.options
        self.on_error = self.options.get("on_error", "dead_letter")
        if self.on_error not in ON_ERROR:
            raise ProgrammingError(
                f"Source {definition.name}: on_error must be one of {', '.join(ON_ERROR)}"
            )
        # How long dead letters are kept, in seconds (None: for ever)
        self.dead_letter_retention: float | None = (
            None
            if self.options.get("dead_letter_retention", "").lower() == "forever"
            else self.option_seconds("dead_letter_retention", DEAD_LETTER_RETENTION)
        )
        for column in definition.columns:
            if column.metadata is not None and column.metadata not in self.METADATA:
                offered = f"; it offers {', '.join(self.METADATA)}" if self.METADATA else ""
                raise ProgrammingError(
                    f"Source {definition.name}: column {column.name}: connector "
                    f"{definition.connector!r} has no metadata {column.metadata!r}{offered}"
                )
        self._listeners: list[Callable[[], None]] = []
        self._listeners_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.definition.name

    @abstractmethod
    def initial_offset(self) -> Offset:
        """Where a new query starts (starting_offsets)."""

    @abstractmethod
    def plan_batch(self, start: Offset, bound: Offset | None) -> Offset | None:
        """End of the next batch after `start`, within `bound`; None if there is nothing new."""

    @abstractmethod
    def read(self, start: Offset, end: Offset) -> SourceBatch:
        """Exactly the records in (start, end]; the same records every time it is asked."""

    def for_query(self) -> Source:
        """The instance a new query reads through: this one, unless the source keeps
        per-query progress of its own (the files a query has read)."""
        return self

    def snapshot(self) -> Offset:
        """A bound covering everything available now (trigger available_now)."""
        return None

    def backlog(self, end: Offset) -> int | None:
        """How much is available beyond `end` (records, files), as far as the source knows
        without asking anyone: the lag a progress record reports. None if unknown."""
        return None

    def merge_ends(self, ends: list[Offset]) -> Offset:
        """One end offset standing for `ends` when the offset log drops them: the last, for
        offsets that grow (row counts, Kafka offsets)."""
        return next((end for end in reversed(ends) if end is not None), None)

    def lag_by_partition(self, end: Offset) -> dict[str, int] | None:
        """The backlog per partition, for sources that have partitions."""
        return None

    def recover(self, planned_ends: list[Offset]) -> None:  # noqa: B027 - optional hook
        """Called when a query resumes, with every end offset it ever planned."""

    def committed(self, end: Offset) -> None:  # noqa: B027 - optional hook
        """Called after a batch reading up to `end` committed."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections when the query reading through this instance ends."""

    def interrupt(self) -> None:  # noqa: B027 - optional hook
        """From another thread, when a query must stop while a read is stuck: make the
        read fail now (the batch stays logged, to be read again when the query resumes)."""

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` when new data arrives (sources that can tell; others are polled)."""
        with self._listeners_lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        with self._listeners_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def notify(self) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def empty(self) -> SourceBatch:
        return SourceBatch(self.schema.empty_table(), DEAD_LETTER_SCHEMA.empty_table())

    def option_bool(self, key: str, default: bool) -> bool:
        value = self.options.get(key)
        if value is None:
            return default
        if value.lower() not in ("true", "false"):
            raise ProgrammingError(f"Source {self.name}: {key} must be true or false")
        return value.lower() == "true"

    def option_seconds(self, key: str, default: float) -> float:
        value = self.options.get(key)
        if value is None:
            return default
        seconds = parse_seconds(value)
        if seconds is None or seconds <= 0:
            raise ProgrammingError(
                f"Source {self.name}: {key} must be a duration like '10 seconds', got {value!r}"
            )
        return seconds

    def option_int(self, key: str, default: int | None = None) -> int | None:
        value = self.options.get(key)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ProgrammingError(f"Source {self.name}: {key} must be an integer") from None
        if number <= 0:
            raise ProgrammingError(f"Source {self.name}: {key} must be positive")
        return number
