"""When micro-batches run: Spark's processing-time, available-now and once triggers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from streamsql.errors import ProgrammingError

UNITS = {
    "ms": 0.001,
    "millisecond": 0.001,
    "milliseconds": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}


class TriggerKind(StrEnum):
    PROCESSING_TIME = "processing_time"  # a batch every interval ('0 seconds': back to back)
    AVAILABLE_NOW = "available_now"  # what is there at start, in batches, then stop
    ONCE = "once"  # one batch, then stop


@dataclass(frozen=True)
class Trigger:
    kind: TriggerKind
    interval: float = 0.0

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
        match = re.fullmatch(r"(?:interval\s+)?(\d+(?:\.\d+)?)\s*([a-z]+)", normalized)
        if not match or match.group(2) not in UNITS:
            raise ProgrammingError(
                f"Invalid trigger {text!r}: use '<n> seconds' (or ms, minutes, hours), "
                "'available_now' or 'once'"
            )
        return cls(TriggerKind.PROCESSING_TIME, float(match.group(1)) * UNITS[match.group(2)])

    def __str__(self) -> str:
        if self.kind is TriggerKind.PROCESSING_TIME:
            return f"{self.interval:g} seconds"
        return self.kind.value
