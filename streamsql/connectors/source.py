"""The source contract: plan an input range, then read exactly that range, again if asked.

A source knows its connector and its format, nothing of SQL queries. Offsets are small
JSON values that only the source interprets; the runtime logs them before reading.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import pyarrow as pa
import pyarrow.compute as pc

from streamsql.catalog.definitions import SourceDef
from streamsql.errors import ProgrammingError
from streamsql.format import parse_seconds
from streamsql.options import Configured

Offset = Any

log = logging.getLogger(__name__)

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


ORIGIN_SCHEMA = pa.schema([f for f in DEAD_LETTER_SCHEMA if f.name != "error"])


@dataclass(frozen=True)
class Origins:
    """Where each row of a batch came from, kept cheap until asked: the source's records
    (partition, offset, raw as written or NULL) and each row's position among them."""

    records: pa.Table  # in ORIGIN_SCHEMA
    positions: pa.Array  # int64, one per row

    @staticmethod
    def of_records(records: pa.Table, positions: pa.Array) -> Origins:
        """From a source's raw records (with or without a `raw` column)."""
        raw = records["raw"] if "raw" in records.column_names else pa.nulls(records.num_rows)
        table = pa.table([records["partition"], records["offset"], raw], names=ORIGIN_SCHEMA.names)
        return Origins(table.cast(ORIGIN_SCHEMA), positions)

    @staticmethod
    def positional(count: int, partition: str, first: int) -> Origins:
        """`count` rows with no bytes as written, numbered from `first` in `partition`."""
        records = pa.table(
            {"partition": pa.repeat(partition, count), "offset": numbers(count, first)}
        )
        return Origins.of_records(records, numbers(count, 0))

    def take(self, mask: pa.Array) -> pa.Table:
        """The origins of the rows selected by the boolean `mask`."""
        return self.records.take(self.positions.filter(mask))

    def filter(self, mask: pa.Array) -> Origins:
        return Origins(self.records, self.positions.filter(mask))

    @staticmethod
    def concat(parts: list[Origins]) -> Origins:
        """Origins of the concatenated rows of `parts`."""
        before = 0
        positions = []
        for part in parts:
            positions.append(pc.add(part.positions, before))
            before += part.records.num_rows
        records = pa.concat_tables([part.records for part in parts])
        return Origins(records, pa.concat_arrays(positions))


@dataclass(frozen=True)
class SourceBatch:
    """Decoded rows in the declared columns, and the records that could not be decoded.

    `origins` says where each row came from: a row the runtime rejects after decoding (an
    event time out of range) becomes a dead letter from it.
    """

    rows: pa.Table
    dead_letters: pa.Table
    origins: Origins | None = None


def numbers(count: int, first: int = 1) -> pa.Array:
    """first, first + 1, ... (count of them), as int64: line, row and record numbers."""
    return pc.add(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), count)), first - 1)


class Source(Configured, ABC):
    """One instance per source per engine, shared by the queries that read it."""

    # WITH (...) keys it reads
    OPTIONS: ClassVar[tuple[str, ...]] = ("connector", "on_error", "dead_letter_retention")
    OPTION_PREFIXES: ClassVar[tuple[str, ...]] = ()  # and keys passed on to a client library
    METADATA: ClassVar[tuple[str, ...]] = ()  # what METADATA columns can be filled from

    def __init__(self, definition: SourceDef, schema: pa.Schema) -> None:
        self.definition = definition
        self.schema = schema  # the declared physical columns, as Arrow types
        self.options = definition.options
        self.on_error = self.option_choice("on_error", ON_ERROR, "dead_letter")
        # How long dead letters are kept, in seconds (inf: for ever)
        self.dead_letter_retention: float = self._parsed(
            "dead_letter_retention",
            DEAD_LETTER_RETENTION,
            _retention,
            "a duration like '30 days', or 'forever'",
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
        self._warnings: list[str] = []

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def owner(self) -> str:
        return f"Source {self.name}"

    @abstractmethod
    def initial_offset(self) -> Offset:
        """Where a new query starts (starting_offsets)."""

    @abstractmethod
    def plan_batch(
        self, start: Offset, bound: Offset | None, limited: bool = True
    ) -> Offset | None:
        """End of the next batch after `start`, within `bound`; None if there is nothing new.
        `limited`: the source's per-trigger limit applies (not under trigger once, which
        reads everything available in one batch, as Spark's Trigger.Once does)."""

    @abstractmethod
    def read(self, start: Offset, end: Offset) -> SourceBatch:
        """Exactly the records in (start, end]; the same records every time it is asked."""

    def for_query(self) -> Source:
        """The instance a new query reads through: this one, unless the source keeps
        per-query progress of its own (the files a query has read)."""
        return self

    def _reader(self) -> Self:
        """A copy of this source for one query (for_query): options and decoders shared,
        listeners and warnings its own."""
        reader = copy.copy(self)
        reader._listeners, reader._listeners_lock = [], threading.Lock()
        reader._warnings = []
        return reader

    def snapshot(self) -> Offset:
        """A bound covering everything available now (trigger available_now)."""
        return None

    def public_offset(self, offset: Offset) -> Offset:
        """An offset as progress records and status show it: without what only the source
        itself needs (Kafka: the topic ids)."""
        return offset

    def backlog(self, end: Offset) -> int | None:
        """How much is available beyond `end` (records, files), as far as the source knows
        without asking anyone: the lag a progress record reports. None if unknown."""
        return None

    def merge_ends(self, ends: list[Offset]) -> Offset:
        """One end offset standing for `ends` when the offset log drops them: the last, for
        offsets that grow (row counts, Kafka offsets)."""
        return next((end for end in reversed(ends) if end is not None), None)

    def metrics(self) -> dict[str, int]:
        """Counters of the source's own, reported in each batch's progress."""
        return {}

    def lag_by_partition(self, end: Offset) -> dict[str, int] | None:
        """The backlog per partition, for sources that have partitions."""
        return None

    def recover(self, planned_ends: list[Offset]) -> None:
        """Called when a query resumes, with every end offset it ever planned."""

    def committed(self, end: Offset) -> None:
        """Called after a batch reading up to `end` committed."""

    def close(self) -> None:
        """Release connections when the query reading through this instance ends."""

    def interrupt(self) -> None:
        """From another thread, when a query must stop while a read is stuck: make the
        read fail now (the batch stays logged, to be read again when the query resumes)."""

    def warn(self, message: str) -> None:
        """Something the user must hear of that does not stop the query (data loss accepted
        with fail_on_data_loss = false): logged now, and in the next batch's progress."""
        log.warning("Source %s: %s", self.name, message)
        self._warnings.append(message)

    def take_warnings(self) -> list[str]:
        """The warnings since the last call, for the progress record of the batch."""
        warnings, self._warnings = self._warnings, []
        return warnings

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
        return SourceBatch(
            self.schema.empty_table(),
            DEAD_LETTER_SCHEMA.empty_table(),
            Origins(ORIGIN_SCHEMA.empty_table(), pa.array([], pa.int64())),
        )


def _retention(text: str) -> float | None:
    if text.strip().lower() == "forever":
        return math.inf
    seconds = parse_seconds(text)
    return seconds if seconds is not None and seconds > 0 else None
