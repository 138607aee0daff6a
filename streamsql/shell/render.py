"""How the shell prints a result: the output modes of `.mode`, and the settings of `.types`,
`.maxrows` and `.maxwidth` (named as in DuckDB's CLI)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from streamsql.format import MAX_WIDTH, format_table, render_value

MAX_ROWS = 40  # rows a table shows before it is cut, as DuckDB's CLI


@dataclass
class Settings:
    """What the dot-commands set; the defaults are DuckDB's CLI's (bar the value width)."""

    mode: str = "table"
    types: bool = False  # a line of column types under the names (table and line modes)
    timer: bool = False
    max_rows: int = MAX_ROWS  # table mode: the first and last halves of longer results; 0 all
    max_width: int = MAX_WIDTH  # table and markdown modes: longer values end in '…'; 0 whole


Rows = Sequence[Sequence[Any]]


def table(names: Sequence[str], types: Sequence[str], rows: Rows, settings: Settings) -> str:
    """The boxed table of DuckDB's CLI, cut beyond `.maxrows` rows."""
    return format_table(
        names,
        rows,
        types=types if settings.types else None,
        max_rows=settings.max_rows,
        max_width=settings.max_width,
    )


def line(names: Sequence[str], types: Sequence[str], rows: Rows, settings: Settings) -> str:
    """One `name = value` line per column, a blank line between rows: wide values whole."""
    labels = [f"{n} ({t})" if settings.types else n for n, t in zip(names, types, strict=True)]
    width = max(map(len, labels), default=0)
    return "\n\n".join(
        "\n".join(f"{label.rjust(width)} = {render_value(value, 0)}" for label, value in pairs)
        for pairs in (zip(labels, row, strict=True) for row in rows)
    )


def csv_text(names: Sequence[str], types: Sequence[str], rows: Rows, settings: Settings) -> str:
    """RFC 4180 with a header; NULL is an empty field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    writer.writerows([["" if v is None else render_value(v, 0) for v in row] for row in rows])
    return buffer.getvalue().rstrip("\n")


def json_text(names: Sequence[str], types: Sequence[str], rows: Rows, settings: Settings) -> str:
    """An array of objects, one per line, as DuckDB's `.mode json`."""
    objects = [
        json.dumps(dict(zip(names, row, strict=True)), default=_json_value, ensure_ascii=False)
        for row in rows
    ]
    return "[" + ",\n".join(objects) + "]"


def _json_value(value: Any) -> Any:
    """Numbers stay numbers; dates, times, intervals, UUIDs, blobs as the tables show them."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return render_value(value, 0)


def markdown(names: Sequence[str], types: Sequence[str], rows: Rows, settings: Settings) -> str:
    """A GitHub table; numeric columns right-aligned, '|' in values escaped."""

    def cells(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    numeric = [
        bool(rows) and all(isinstance(row[i], int | float | Decimal | None) for row in rows)
        for i in range(len(names))
    ]
    rule = "|" + "|".join("---:" if right else "---" for right in numeric) + "|"
    body = [cells([render_value(v, settings.max_width) for v in row]) for row in rows]
    return "\n".join([cells(names), rule, *body])


Renderer = Callable[[Sequence[str], Sequence[str], Rows, Settings], str]
MODES: dict[str, Renderer] = {
    "table": table,
    "line": line,
    "csv": csv_text,
    "json": json_text,
    "markdown": markdown,
}


def render(names: Sequence[str], types: Sequence[str], rows: Rows, settings: Settings) -> str:
    """A result in the mode of `settings`; `types` names each column's DuckDB type."""
    return MODES[settings.mode](names, types, rows, settings)
