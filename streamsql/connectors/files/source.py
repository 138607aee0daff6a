"""A directory of JSON-lines, CSV or Parquet files; new files are picked up in name order.

As in Spark's file source, files are expected to appear whole (write elsewhere, then
rename into the directory), names starting with '.' or '_' are ignored, and a file is
read once: the offset of a batch is the list of files it read.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import fnmatch
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from streamsql.catalog.definitions import Column
from streamsql.connectors.formats import FORMATS, CsvFields, Decoder
from streamsql.connectors.source import (
    DEAD_LETTER_SCHEMA,
    Offset,
    Origins,
    Source,
    SourceBatch,
    numbers,
)
from streamsql.errors import OperationalError, ProgrammingError


class FileSource(Source):
    OPTIONS = (
        *Source.OPTIONS,
        "path",
        "format",
        "pattern",
        "max_files_per_trigger",
        "header",
        "delimiter",
        "null_value",
        "nan_value",
    )

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.directory = Path(self.option_required("path", "files"))
        self.format = self.option_choice("format", FORMATS, "json")
        self.pattern = self.option_text("pattern", "*")
        self.max_files = self.option_int("max_files_per_trigger")
        self.header = self.option_bool("header", True)
        self.delimiter = self.option_char("delimiter", ",")
        self.decoder = Decoder(self.definition.columns, self.schema)
        self.csv_fields = CsvFields(
            tuple(range(1, len(self.decoder.columns) + 1)),
            null_value=self.option_text("null_value"),
            nan_value=self.option_text("nan_value", "NaN"),
        )
        self._read_stats: dict[str, tuple[int, int]] = {}  # (size, mtime) of files read
        self.files_changed_after_read = 0
        self._seen: set[str] = set()
        self._unread: int | None = None  # files left for later batches at the last planning

    def _listing(self) -> list[str]:
        """The files to read, in name order; files read before that changed since are
        reported (files_changed_after_read, and a warning naming each)."""
        if not self.directory.is_dir():
            return []
        with os.scandir(self.directory) as entries:
            found = {
                entry.name: entry
                for entry in entries
                if entry.is_file()
                and not entry.name.startswith((".", "_"))
                and fnmatch.fnmatch(entry.name, self.pattern)
            }
        for name, read in list(self._read_stats.items()):
            status = found[name].stat() if name in found else None
            now = (status.st_size, status.st_mtime_ns) if status else read
            if now != read:
                self._read_stats[name] = now
                self.files_changed_after_read += 1
                self.warn(
                    f"file {name} changed after it was read (size or modification time); "
                    "what was added is not read, since a file is read once: write files "
                    "elsewhere and rename them into the directory"
                )
        return sorted(found)

    def for_query(self) -> FileSource:
        """Each query keeps its own record of the files it has read; options and the
        decoder (thread-safe: a cursor per thread) are shared. As in Spark, whose stream
        resolves its path when the query is defined, a path that does not exist fails the
        query now rather than letting it wait forever for files (CREATE SOURCE does not
        check: a source may be declared before its directory is made)."""
        if not self.directory.is_dir():
            problem = "is not a directory" if self.directory.exists() else "does not exist"
            raise OperationalError(
                f"Source {self.name}: path {problem}: {self.directory.absolute()} (a files "
                "source reads the files of a directory)"
            )
        reader = self._reader()
        reader._seen, reader._read_stats, reader.files_changed_after_read = set(), {}, 0
        return reader

    def merge_ends(self, ends: list[Offset]) -> Offset:
        """Every file the batches read: a file is read once."""
        return {"files": sorted({name for end in ends if end for name in end["files"]})}

    def recover(self, planned_ends: list[Offset]) -> None:
        self._seen = {name for end in planned_ends if end for name in end["files"]}

    def initial_offset(self) -> Offset:
        return {"files": []}

    def snapshot(self) -> Offset:
        return {"files": [name for name in self._listing() if name not in self._seen]}

    def plan_batch(
        self, start: Offset, bound: Offset | None, limited: bool = True
    ) -> Offset | None:
        allowed = set(bound["files"]) if bound is not None else None
        new = [
            name
            for name in self._listing()
            if name not in self._seen and (allowed is None or name in allowed)
        ]
        if not new:
            self._unread = 0
            return None
        chosen = new[: self.max_files] if self.max_files and limited else new
        self._seen.update(chosen)
        self._unread = len(new) - len(chosen)
        return {"files": chosen}

    def metrics(self) -> dict[str, int]:
        return {"files_changed_after_read": self.files_changed_after_read}

    def backlog(self, end: Offset) -> int | None:
        """Files not read yet: as of the last planning, or listed now if none was made."""
        return self._unread if self._unread is not None else len(self.snapshot()["files"])

    def read(self, start: Offset, end: Offset) -> SourceBatch:
        batches = [self._read_file(name) for name in end["files"]]
        if not batches:
            return self.empty()
        return SourceBatch(
            pa.concat_tables([b.rows for b in batches]),
            pa.concat_tables([b.dead_letters for b in batches]),
            Origins.concat([b.origins for b in batches]),
        )

    def _read_file(self, name: str) -> SourceBatch:
        """The file's rows and bad records; a file that cannot be decoded at all is one
        dead letter naming it and why (offset 0), and the stream goes on."""
        path = self.directory / name
        try:
            status = path.stat()
        except FileNotFoundError:
            raise ProgrammingError(
                f"Source {self.name}: file {path} was planned for this batch but is gone; "
                "files must stay in place until every query has read them"
            ) from None
        self._read_stats[name] = (status.st_size, status.st_mtime_ns)
        reader = {"json": self._read_json, "csv": self._read_csv, "parquet": self._read_parquet}
        try:
            return reader[self.format](name, path)
        except (BadFile, OSError, pa.ArrowException) as error:
            return dataclasses.replace(
                self.empty(),
                dead_letters=pa.table(
                    {
                        "partition": [name],
                        "offset": [0],
                        "raw": [b""],
                        "error": [f"cannot read {name} as {self.format}: {error}"],
                    },
                    schema=DEAD_LETTER_SCHEMA,
                ),
            )

    @staticmethod
    def _lines(data: bytes) -> pa.Table:
        """The file's non-blank lines as bytes (without line ends; a UTF-8 byte-order mark
        at the start skipped), with their 1-based numbers, vectorized. Each line's UTF-8 is
        checked by the decoder: a line that is not UTF-8 is a dead letter."""
        if data.startswith(BOM_UTF8):
            data = data[len(BOM_UTF8) :]
        elif data.startswith(OTHER_BOMS) or b"\0" in data[:4]:
            # As JSON's RFC 4627 tells encodings apart: text never starts with a NUL byte.
            raise BadFile(
                "the file is UTF-16 or UTF-32 (a byte-order mark or NUL bytes at the start); "
                "only UTF-8 is read"
            )
        lines = pc.list_flatten(pc.split_pattern(pa.array([data], pa.large_binary()), b"\n"))
        if len(lines) and lines[-1].as_py() == b"":
            lines = lines.slice(0, len(lines) - 1)  # the final newline ends a line
        cr = pc.equal(pc.binary_slice(lines, -1), b"\r")
        if pc.any(cr).as_py():  # CRLF line ends (the test saves a slow if_else otherwise)
            lines = pc.if_else(cr, pc.binary_slice(lines, 0, -1), lines)
        lines = lines.cast(pa.binary())
        keep = pc.invert(pc.match_substring_regex(lines, r"^[ \t]*$"))
        return pa.table(
            {"offset": pc.filter(numbers(len(lines)), keep), "raw": pc.filter(lines, keep)}
        )

    @staticmethod
    def _records(name: str, lines: pa.Table) -> pa.Table:
        """Lines as the raw records the decoder reads: each line is a record's value."""
        return lines.append_column("partition", pa.repeat(name, lines.num_rows)).append_column(
            "value", lines["raw"]
        )

    def _read_json(self, name: str, path: Path) -> SourceBatch:
        return self.decoder.decode_json(self._records(name, self._lines(path.read_bytes())))

    def _read_csv(self, name: str, path: Path) -> SourceBatch:
        """One record per line, as in Spark (multiLine = false): a quoted field cannot span
        lines, so a stray quote spoils its own line only. A record's offset is its line
        number; the first non-blank line is the header when `header` is true."""
        lines = self._lines(path.read_bytes())
        fields = self.csv_fields
        if self.header and lines.num_rows:
            fields = self._header_fields(lines["raw"][0].as_py())
            lines = lines.slice(1)
        return self.decoder.decode_csv(self._records(name, lines), self.delimiter, fields)

    def _header_fields(self, header: bytes) -> CsvFields:
        """Where the header puts each declared column, matched case-insensitively (Spark's
        default, spark.sql.caseSensitive = false); a header naming none is a bad file."""
        try:
            names = next(csv.reader([header.decode("utf-8")], delimiter=self.delimiter))
        except (UnicodeDecodeError, csv.Error) as error:
            raise BadFile(f"the header line cannot be read: {error}") from None
        positions = _positions(self.decoder.columns, names)
        if not any(positions):
            raise BadFile(f"the header ({', '.join(names)}) names none of the declared columns")
        return dataclasses.replace(self.csv_fields, positions=positions, width=len(names))

    def _read_parquet(self, name: str, path: Path) -> SourceBatch:
        """A Parquet record's offset is its row number (1-based) in the file. Columns are
        matched to the declared ones case-insensitively; a file with none of them is bad."""
        with pq.ParquetFile(path) as file:
            names = file.schema_arrow.names
            positions = _positions(self.decoder.columns, names)
            if not any(positions):
                raise BadFile(f"its columns ({', '.join(names)}) include none of the declared ones")
            table = file.read(columns=[names[p - 1] for p in positions if p])
        columns = {
            self.decoder.field(c): table[names[p - 1]] if p else pa.nulls(table.num_rows)
            for c, p in zip(self.decoder.columns, positions, strict=True)
        }
        raw = pa.table(
            {
                **columns,
                "partition": pa.repeat(name, table.num_rows),
                "offset": numbers(table.num_rows),
            }
        )
        return self.decoder.decode_fields(raw)


class BadFile(Exception):
    """A file the source cannot decode at all (its reason, without the file's name)."""


BOM_UTF8 = codecs.BOM_UTF8
OTHER_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _positions(columns: tuple[Column, ...], names: list[str]) -> tuple[int | None, ...]:
    """The 1-based position of each column among `names`, compared case-insensitively
    (the first match wins); None where it is absent."""
    found: dict[str, int] = {}
    for index, name in enumerate(names, start=1):
        found.setdefault(name.lower(), index)
    return tuple(found.get(c.name.lower()) for c in columns)
