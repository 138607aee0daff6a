"""The query's metadata (Spark's StreamMetadata): its id, the same on every restart, and the
plan fingerprint that says which query the checkpoint's state belongs to: another query is
refused rather than resumed on it."""

from __future__ import annotations

import json
import uuid

from streamsql.checkpoint.fingerprint import Fingerprint, changes
from streamsql.checkpoint.schema import METADATA, OFFSETS, QueryRows, from_json
from streamsql.errors import PlanningError


class QueryMetadata(QueryRows):
    """One query's metadata row."""

    def is_new(self) -> bool:
        """Nothing of this query is recorded yet: no metadata, and no offsets (a checkpoint
        written before queries had metadata has offsets only)."""
        return not self.cursor.execute(
            f"SELECT 1 FROM {METADATA} WHERE query = ? UNION ALL "
            f"SELECT 1 FROM {OFFSETS} WHERE query = ? LIMIT 1",
            [self.query, self.query],
        ).fetchall()

    def _read(self) -> tuple[str, Fingerprint] | None:
        row = self.cursor.execute(
            f"SELECT id, fingerprint FROM {METADATA} WHERE query = ?", [self.query]
        ).fetchall()
        return (row[0][0], from_json(row[0][1])) if row else None

    def mismatch(self, current: Fingerprint) -> list[str]:
        """How `current` differs from the query whose state this checkpoint holds."""
        return _mismatch(self._read(), current)

    def claim(self, current: Fingerprint) -> str:
        """Bind the checkpoint to the query about to resume it, refusing a different one;
        returns the query's id, the same on every restart."""
        stored = self._read()
        changed = _mismatch(stored, current)
        if changed:
            raise PlanningError(
                f"Query {self.query} cannot resume its checkpoint: the checkpoint holds state "
                f"of a different query ({'; '.join(changed)}). Restore the old query, or "
                f"DROP SINK {self.query} (or CREATE OR REPLACE SINK) to start over without "
                "its state",
                rule="checkpoint-mismatch",
            )
        query_id = stored[0] if stored else str(uuid.uuid4())
        self.cursor.execute(
            f"INSERT OR REPLACE INTO {METADATA} (query, id, fingerprint) VALUES (?, ?, ?)",
            [self.query, query_id, json.dumps(current)],
        ).fetchall()
        return query_id


def _mismatch(stored: tuple[str, Fingerprint] | None, current: Fingerprint) -> list[str]:
    return [] if stored is None else changes(stored[1], current)
