"""Results as aligned text tables, the way duckdb's CLI and Spark's console sink show them."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa

MAX_WIDTH = 40

_ROWS = duckdb.connect()  # converts Arrow batches to Python rows (a cursor per call)


def relation(table: pa.Table) -> duckdb.DuckDBPyRelation:
    """An Arrow table as a DuckDB relation, to convert it as DuckDB's Python API does."""
    return _ROWS.cursor().from_arrow(table)


def python_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    """An Arrow table's rows as DuckDB's fetchall gives them: pyarrow's to_pylist fails on
    timestamps beyond Python's year 9999, which DuckDB gives as text."""
    return relation(table).fetchall()


def render_value(value: Any, max_width: int = MAX_WIDTH) -> str:
    """A value as the tables show it, cut to `max_width` characters with '…' (0: whole)."""
    if value is None:
        return "NULL"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return value.hex()
    text = str(value)
    return text if not max_width or len(text) <= max_width else text[: max_width - 1] + "…"


ELIDED = "·"  # the cells of the rows a cut table leaves out, as in DuckDB's CLI


def format_table(
    names: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    types: Sequence[str] | None = None,
    max_rows: int = 0,
    max_width: int = MAX_WIDTH,
) -> str:
    """A boxed table; numbers right-aligned, everything else left-aligned. With `types`, a
    second header line names each column's type; beyond `max_rows` rows (0: no limit) the
    first and last halves are shown around a row of dots, as DuckDB's CLI does."""
    cut = bool(max_rows) and len(rows) > max_rows
    shown = [*rows[: (max_rows + 1) // 2], *rows[len(rows) - max_rows // 2 :]] if cut else rows
    cells = [[render_value(v, max_width) for v in row] for row in shown]
    if cut:
        cells[(max_rows + 1) // 2 : (max_rows + 1) // 2] = [[ELIDED] * len(names)] * 3
    header = [list(names)] + ([[str(t) for t in types]] if types is not None else [])
    widths = [max(len(row[i]) for row in header + cells) for i in range(len(names))]
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(names))
    ]

    def line(left: str, mid: str, right: str) -> str:
        return left + mid.join("─" * (w + 2) for w in widths) + right

    def cell(text: str, i: int) -> str:
        return text.rjust(widths[i]) if numeric[i] else text.ljust(widths[i])

    out = [line("┌", "┬", "┐")]
    out += [
        "│" + "│".join(f" {n.ljust(widths[i])} " for i, n in enumerate(h)) + "│" for h in header
    ]
    out.append(line("├", "┼", "┤"))
    out += ["│" + "│".join(f" {cell(v, i)} " for i, v in enumerate(row)) + "│" for row in cells]
    out.append(line("└", "┴", "┘"))
    out.append(rows_text(len(rows)) + (f" ({max_rows} shown)" if cut else ""))
    return "\n".join(out)


def rows_text(count: int) -> str:
    """'1 row', '3 rows'."""
    return f"{count} row{'' if count == 1 else 's'}"


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


def elapsed_text(seconds: float) -> str:
    """A duration as people read it: '0.4s', '12s', '3m12s', '2h05m'."""
    if seconds < 10:
        return f"{max(seconds, 0):.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, rest = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


SECONDS = {
    **dict.fromkeys(("ms", "millisecond", "milliseconds"), 0.001),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
}
BYTES = {
    "b": 1,
    **dict.fromkeys(("kb", "kib"), 1 << 10),
    **dict.fromkeys(("mb", "mib"), 1 << 20),
    **dict.fromkeys(("gb", "gib"), 1 << 30),
}


def _quantity(text: str, units: dict[str, float]) -> float | None:
    match = re.fullmatch(
        r"(?:interval\s+)?(\d+(?:\.\d+)?)\s*([a-z]+)", text.strip().lower().strip("'")
    )
    if not match or match.group(2) not in units:
        return None
    return float(match.group(1)) * units[match.group(2)]


def parse_seconds(text: str) -> float | None:
    """'30 seconds', '500 ms', 'interval 1 minute' -> seconds; None if it is not a duration."""
    return _quantity(text, SECONDS)


def parse_bytes(text: str) -> int | None:
    """'128MB', '64 KiB', '1000 b' -> bytes; None if it is not a size."""
    size = _quantity(text, BYTES)
    return None if size is None else int(size)
