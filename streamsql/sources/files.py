"""A directory of JSON-lines, CSV or Parquet files; new files are picked up in name order.

As in Spark's file source, files are expected to appear whole (write elsewhere, then
rename into the directory), names starting with '.' or '_' are ignored, and a file is
read once: the offset of a batch is the list of files it read.
"""

from __future__ import annotations

import copy
import fnmatch
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from streamsql.errors import DataError, ProgrammingError
from streamsql.sources.base import DEAD_LETTER_SCHEMA, Offset, Source, SourceBatch
from streamsql.sources.formats import FORMATS, Decoder


class FileSource(Source):
    OPTIONS = (
        *Source.OPTIONS,
        "path",
        "format",
        "pattern",
        "max_files_per_trigger",
        "header",
        "delimiter",
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
        self._seen: set[str] = set()
        self._unread: int | None = None  # files left for later batches at the last planning

    def _listing(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.directory.iterdir()
            if entry.is_file()
            and not entry.name.startswith((".", "_"))
            and fnmatch.fnmatch(entry.name, self.pattern)
        )

    def for_query(self) -> FileSource:
        """Each query keeps its own record of the files it has read; options and the
        decoder (thread-safe: a cursor per thread) are shared."""
        reader = copy.copy(self)
        reader._seen = set()
        reader._listeners, reader._listeners_lock = [], threading.Lock()
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

    def plan_batch(self, start: Offset, bound: Offset | None) -> Offset | None:
        allowed = set(bound["files"]) if bound is not None else None
        new = [
            name
            for name in self._listing()
            if name not in self._seen and (allowed is None or name in allowed)
        ]
        if not new:
            self._unread = 0
            return None
        chosen = new[: self.max_files] if self.max_files else new
        self._seen.update(chosen)
        self._unread = len(new) - len(chosen)
        return {"files": chosen}

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
        )

    def _read_file(self, name: str) -> SourceBatch:
        path = self.directory / name
        if not path.exists():
            raise ProgrammingError(
                f"Source {self.name}: file {path} was planned for this batch but is gone; "
                "files must stay in place until every query has read them"
            )
        reader = {"json": self._read_json, "csv": self._read_csv, "parquet": self._read_parquet}
        return reader[self.format](path)

    @staticmethod
    def _lines(text: str) -> tuple[pa.Array, pa.Array]:
        """The file's lines (without line ends) and their 1-based numbers, vectorized."""
        lines = pc.list_flatten(pc.split_pattern(pa.array([text], pa.large_string()), "\n"))
        if len(lines) and lines[-1].as_py() == "":
            lines = lines.slice(0, len(lines) - 1)  # the final newline ends a line
        numbers = pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), len(lines)))
        return pc.utf8_rtrim(lines, "\r").cast(pa.string()), numbers

    @staticmethod
    def _blank(lines: pa.Array) -> pa.Array:
        return pc.equal(pc.utf8_trim_whitespace(lines), "")

    def _read_json(self, path: Path) -> SourceBatch:
        lines, numbers = self._lines(path.read_bytes().decode("utf-8", errors="replace"))
        keep = pc.invert(self._blank(lines))
        lines, numbers = pc.filter(lines, keep), pc.filter(numbers, keep)
        raw = pa.table(
            {
                "partition": pa.repeat(path.name, len(lines)),
                "offset": numbers,
                "raw": lines,
                "value": lines,
            }
        )
        return self.decoder.decode_json(raw)

    def _record_starts(self, lines: pa.Array, numbers: pa.Array) -> pa.Array:
        """Indices of the lines where CSV records start: non-blank lines outside quotes.

        A quoted field may span lines; a line with an odd number of quote characters
        enters or leaves one (a doubled "" is an escaped quote and changes nothing).
        """
        odd = pc.bit_wise_and(pc.count_substring(lines, '"'), 1).cast(pa.int64())
        inside_after = pc.bit_wise_and(pc.cumulative_sum(odd), 1)
        inside_before = pc.bit_wise_xor(inside_after, odd)
        starts = pc.and_(pc.equal(inside_before, 0), pc.invert(self._blank(lines)))
        return pc.subtract(pc.filter(numbers, starts), 1)

    def _read_csv(self, path: Path) -> SourceBatch:
        """A record's offset is the number of the line it starts on."""
        data = path.read_bytes()
        lines, numbers = self._lines(data.decode("utf-8", errors="replace"))
        starts = self._record_starts(lines, numbers)
        invalid: list[tuple[int, str]] = []  # (record index, header included; error)

        def invalid_row(row: pacsv.InvalidRow) -> str:
            error = f"expected {row.expected_columns} fields, got {row.actual_columns}"
            invalid.append((row.number - 1, error))
            return "skip"

        names = [c.name for c in self.definition.columns]
        table = pacsv.read_csv(
            pa.py_buffer(data),
            # one thread: the parser then numbers the rows it rejects
            read_options=pacsv.ReadOptions(
                column_names=None if self.header else names, use_threads=False
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=self.delimiter, newlines_in_values=True, invalid_row_handler=invalid_row
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names},
                include_columns=names,
                include_missing_columns=True,
                strings_can_be_null=True,
            ),
        )
        first = 1 if self.header else 0
        if len(starts) != table.num_rows + len(invalid) + first:
            raise DataError(
                f"Source {self.name}: cannot delimit the records of {path.name} "
                f"({len(starts) - first} found, {table.num_rows + len(invalid)} parsed)"
            )
        records = pc.add(
            pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), table.num_rows + len(invalid))),
            first - 1,
        )
        rejected = pa.array([index for index, _ in invalid], pa.int64())
        accepted = pc.take(starts, pc.filter(records, pc.invert(pc.is_in(records, rejected))))
        raw = (
            table.append_column("partition", pa.repeat(path.name, table.num_rows))
            .append_column("offset", pc.add(accepted, 1))
            .append_column("raw", pc.take(lines, accepted))
        )
        batch = self.decoder.decode_fields(raw)
        if not invalid:
            return batch
        rejected_lines = pc.take(starts, rejected)
        malformed = pa.table(
            {
                "partition": pa.repeat(path.name, len(invalid)),
                "offset": pc.add(rejected_lines, 1),
                "raw": pc.take(lines, rejected_lines).cast(pa.binary()),
                "error": [error for _, error in invalid],
            },
            schema=DEAD_LETTER_SCHEMA,
        )
        return SourceBatch(batch.rows, pa.concat_tables([batch.dead_letters, malformed]))

    def _read_parquet(self, path: Path) -> SourceBatch:
        """A Parquet record's offset is its row number (1-based) in the file."""
        table = pq.read_table(path)
        columns = {
            c.name: table[c.name] if c.name in table.column_names else pa.nulls(table.num_rows)
            for c in self.definition.columns
        }
        numbers = pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), table.num_rows))
        raw = pa.table(
            {**columns, "partition": pa.repeat(path.name, table.num_rows), "offset": numbers}
        )
        return self.decoder.decode_fields(raw)
