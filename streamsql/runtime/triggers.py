"""When micro-batches run: Spark's processing-time, available-now and once triggers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from streamsql.errors import ProgrammingError
from streamsql.format import parse_seconds


class TriggerKind(StrEnum):
    PROCESSING_TIME = "processing_time"  # a batch every interval ('0 seconds': back to back)
    AVAILABLE_NOW = "available_now"  # what is there at start, in batches, then stop
    ONCE = "once"  # one batch, then stop


@dataclass(frozen=True)
class Trigger:
    kind: TriggerKind
    interval: float = 0.0

    @property
    def limited(self) -> bool:
        """Whether max_files/offsets/rows_per_trigger apply: not to trigger once, which
        reads everything available in one batch (Spark's Trigger.Once ignores them)."""
        return self.kind is not TriggerKind.ONCE

    @property
    def stops(self) -> bool:
        return self.kind is not TriggerKind.PROCESSING_TIME

    @classmethod
    def parse(cls, text: str | None) -> Trigger:
        if text is None:
            return cls(TriggerKind.PROCESSING_TIME)
        normalized = text.strip().lower().replace("-", "_")
        if normalized in ("available_now", "availablenow"):
            return cls(TriggerKind.AVAILABLE_NOW)
        if normalized == "once":
            return cls(TriggerKind.ONCE)
        seconds = parse_seconds(normalized)
        if seconds is None:
            raise ProgrammingError(
                f"Invalid trigger {text!r}: use '<n> seconds' (or ms, minutes, hours), "
                "'available_now' or 'once'"
            )
        return cls(TriggerKind.PROCESSING_TIME, seconds)

    def __str__(self) -> str:
        if self.kind is TriggerKind.PROCESSING_TIME:
            return f"{self.interval:g} seconds"
        return self.kind.value
