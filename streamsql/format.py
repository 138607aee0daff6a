"""Results as aligned text tables, the way duckdb's CLI and Spark's console sink show them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

MAX_WIDTH = 40


def render_value(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return value.hex()
    text = str(value)
    return text if len(text) <= MAX_WIDTH else text[: MAX_WIDTH - 1] + "…"


def format_table(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A boxed table; numbers right-aligned, everything else left-aligned."""
    cells = [[render_value(v) for v in row] for row in rows]
    widths = [max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(names)]
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(names))
    ]

    def line(left: str, mid: str, right: str) -> str:
        return left + mid.join("─" * (w + 2) for w in widths) + right

    def cell(text: str, i: int) -> str:
        return text.rjust(widths[i]) if numeric[i] else text.ljust(widths[i])

    out = [line("┌", "┬", "┐")]
    out.append("│" + "│".join(f" {n.ljust(widths[i])} " for i, n in enumerate(names)) + "│")
    out.append(line("├", "┼", "┤"))
    out += ["│" + "│".join(f" {cell(v, i)} " for i, v in enumerate(row)) + "│" for row in cells]
    out.append(line("└", "┴", "┘"))
    out.append(f"{len(rows)} row{'s' if len(rows) != 1 else ''}")
    return "\n".join(out)


DURATION_UNITS = (
    (86_400_000_000, "day"),
    (3_600_000_000, "hour"),
    (60_000_000, "minute"),
    (1_000_000, "second"),
    (1_000, "millisecond"),
    (1, "microsecond"),
)


def format_duration(micros: int) -> str:
    """A duration in the largest unit that states it exactly: 600000000 -> '10 minutes'."""
    size, unit = next((s, u) for s, u in DURATION_UNITS if micros % s == 0)
    count = micros // size
    return f"{count} {unit}{'' if count == 1 else 's'}"
