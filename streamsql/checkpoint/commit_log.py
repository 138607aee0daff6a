"""The commit log (Spark's CommitLog): batch N's commit record, written in the same
transaction as batch N's state, its sink's rows (or file records) and the windows it
emitted. A batch is done once its record is here; the next batch starts from it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from streamsql.checkpoint.schema import COMMITS, EMITTED_WINDOWS, QueryRows, from_json


@dataclass(frozen=True)
class CommitRecord:
    """Spark's CommitMetadata: the watermark the next batch uses, and what advances it."""

    batch_id: int
    next_watermark_us: int | None
    max_event_by_source: dict[str, int | None]
    input_rows: int = 0
    output_rows: int = 0

    @property
    def max_event_us(self) -> int | None:
        return max((m for m in self.max_event_by_source.values() if m is not None), default=None)


class CommitLog(QueryRows):
    """One query's commit log."""

    def add(self, commit: CommitRecord) -> None:
        """Called inside the batch's transaction."""
        self.cursor.execute(
            f"INSERT INTO {COMMITS} (query, batch_id, next_watermark_us, max_event_us, "
            f"max_event_by_source, input_rows, output_rows) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                self.query,
                commit.batch_id,
                commit.next_watermark_us,
                commit.max_event_us,
                json.dumps(commit.max_event_by_source),
                commit.input_rows,
                commit.output_rows,
            ],
        ).fetchall()

    def latest(self) -> CommitRecord | None:
        row = self.cursor.execute(
            f"SELECT batch_id, next_watermark_us, max_event_us, max_event_by_source, input_rows, "
            f"output_rows FROM {COMMITS} WHERE query = ? ORDER BY batch_id DESC LIMIT 1",
            [self.query],
        ).fetchall()
        if not row:
            return None
        batch_id, watermark, max_event, by_source, inputs, outputs = row[0]
        # A commit written before sources had their own: the one source's max.
        by_source = from_json(by_source) or dict.fromkeys(self.sources, max_event)
        return CommitRecord(batch_id, watermark, by_source, inputs, outputs)

    def forget_emitted_windows(self, through: int) -> None:
        """Drop the windows emitted by batches up to `through`, in the transaction of the batch
        that retires them from the logs: only an uncommitted batch is ever replayed, and it
        emits only windows closing at its own watermark, which no retired batch emitted."""
        self.cursor.execute(
            f"DELETE FROM {EMITTED_WINDOWS} WHERE query = ? AND batch_id <= ?",
            [self.query, through],
        ).fetchall()

    def purge(self, through: int) -> None:
        """Drop the records of batches up to `through`, in the transaction of the offset
        log's purge (the last commit is never among them)."""
        self.cursor.execute(
            f"DELETE FROM {COMMITS} WHERE query = ? AND batch_id <= ?", [self.query, through]
        ).fetchall()
