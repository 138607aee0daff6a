"""The offset log (Spark's OffsetSeqLog): batch N's input range, an offset for every source
the query reads (Spark's OffsetSeq), and the thresholds it runs with.

A batch's entry is written in its own transaction before the batch reads anything. On
restart a batch that is in the offset log but not in the commit log is run again over
exactly its logged ranges, with its logged thresholds. Batch -1 holds where the query
started (Spark's initial offset), or, once older batches are purged, their offsets merged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamsql.checkpoint.schema import OFFSETS, QueryRows, from_json

Offsets = dict[str, Any]  # by source name, in the query's order: Spark's OffsetSeq


@dataclass(frozen=True)
class PlannedBatch:
    batch_id: int
    start: Offsets
    end: Offsets
    watermark_us: int | None
    late_threshold_us: int | None

    @property
    def no_data(self) -> bool:
        return self.start == self.end


class OffsetLog(QueryRows):
    """One query's offset log, with an offset for each of its `sources`.

    The offsets of a query of one source are logged as that source's offset alone, as they
    were before queries read several: such checkpoints resume as they are.
    """

    def _encode(self, offsets: Offsets) -> str:
        if len(self.sources) == 1:
            return json.dumps(offsets[self.sources[0]])
        return json.dumps({name: offsets[name] for name in self.sources})

    def _decode(self, value: str | None) -> Offsets:
        loaded = from_json(value)
        if len(self.sources) == 1:
            return {self.sources[0]: loaded}
        return {name: (loaded or {}).get(name) for name in self.sources}

    def add(self, batch: PlannedBatch) -> None:
        """Write-ahead: durable before the batch reads its input."""
        self.cursor.execute(
            f"INSERT INTO {OFFSETS} (query, batch_id, start_offset, end_offset, "
            f"watermark_us, late_threshold_us) VALUES (?, ?, ?, ?, ?, ?)",
            [
                self.query,
                batch.batch_id,
                self._encode(batch.start),
                self._encode(batch.end),
                batch.watermark_us,
                batch.late_threshold_us,
            ],
        ).fetchall()

    def add_initial(self, offsets: Offsets) -> None:
        """Record where a new query starts, before any batch: a query stopped before its first
        batch resumes from here, not from wherever `latest` points by then."""
        self.cursor.execute(
            f"INSERT INTO {OFFSETS} (query, batch_id, end_offset) VALUES (?, -1, ?)",
            [self.query, self._encode(offsets)],
        ).fetchall()

    def get(self, batch_id: int) -> PlannedBatch | None:
        row = self.cursor.execute(
            f"SELECT batch_id, start_offset, end_offset, watermark_us, late_threshold_us "
            f"FROM {OFFSETS} WHERE query = ? AND batch_id = ?",
            [self.query, batch_id],
        ).fetchall()
        if not row:
            return None
        batch, start, end, watermark, late = row[0]
        return PlannedBatch(batch, self._decode(start), self._decode(end), watermark, late)

    def first_start(self) -> Offsets | None:
        """Where the first batch in the log starts: the initial offset recorded when the query
        was created (Spark's initial offset log), or the offsets purging merged; None for a
        query that has none recorded yet."""
        row = self.cursor.execute(
            f"SELECT end_offset FROM {OFFSETS} WHERE query = ? AND batch_id = -1",
            [self.query],
        ).fetchall()
        return self._decode(row[0][0]) if row else None

    def planned_ends(self) -> list[Offsets]:
        """Every end offset planned, in batch order (the batches purged merged into one,
        first): what a file source has seen."""
        rows = self.cursor.execute(
            f"SELECT end_offset FROM {OFFSETS} WHERE query = ? ORDER BY batch_id",
            [self.query],
        ).fetchall()
        return [self._decode(end) for (end,) in rows]

    def purge(self, through: int, merge: Callable[[str, list[Any]], Any]) -> None:
        """Drop the entries of batches up to `through` (Spark's minBatchesToRetain), keeping
        what each source needs of their offsets (`merge(source, offsets)`) merged into one
        entry, batch -1. Runs in the caller's transaction, with the commit log's purge."""
        rows = self.cursor.execute(
            f"SELECT end_offset FROM {OFFSETS} WHERE query = ? AND batch_id <= ? ORDER BY batch_id",
            [self.query, through],
        ).fetchall()
        ends = [self._decode(end) for (end,) in rows]
        merged = {name: merge(name, [end[name] for end in ends]) for name in self.sources}
        self.cursor.execute(
            f"DELETE FROM {OFFSETS} WHERE query = ? AND batch_id <= ?", [self.query, through]
        ).fetchall()
        self.cursor.execute(
            f"INSERT INTO {OFFSETS} (query, batch_id, end_offset) VALUES (?, -1, ?)",
            [self.query, self._encode(merged)],
        ).fetchall()
