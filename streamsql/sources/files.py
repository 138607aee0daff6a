"""A directory of JSON-lines, CSV or Parquet files; new files are picked up in name order.

As in Spark's file source, files are expected to appear whole (write elsewhere, then
rename into the directory), names starting with '.' or '_' are ignored, and a file is
read once: the offset of a batch is the list of files it read.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from streamsql.errors import ProgrammingError
from streamsql.sources.base import DEAD_LETTER_SCHEMA, Offset, Source, SourceBatch
from streamsql.sources.formats import FORMATS, Decoder


class FileSource(Source):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if "path" not in self.options:
            raise ProgrammingError(f"Source {self.name}: the files connector needs path = '...'")
        self.directory = Path(self.options["path"])
        self.format = self.options.get("format", "json").lower()
        if self.format not in FORMATS:
            raise ProgrammingError(
                f"Source {self.name}: format must be one of {', '.join(FORMATS)}"
            )
        self.pattern = self.options.get("pattern", "*")
        self.max_files = self.option_int("max_files_per_trigger")
        self.header = self.options.get("header", "true").lower() == "true"
        self.delimiter = self.options.get("delimiter", ",")
        self.decoder = Decoder(self.definition.columns, self.schema)
        self._seen: set[str] = set()

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
            return None
        chosen = new[: self.max_files] if self.max_files else new
        self._seen.update(chosen)
        return {"files": chosen}

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

    def _positions(self, name: str, offsets: pa.Array) -> dict[str, pa.Array]:
        return {"partition": pa.repeat(name, len(offsets)), "offset": offsets}

    def _read_json(self, path: Path) -> SourceBatch:
        text = path.read_bytes().decode("utf-8", errors="replace")
        if not text:
            return self.empty()
        lines = pc.list_flatten(pc.split_pattern(pa.array([text], pa.large_string()), "\n"))
        numbers = pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), len(lines)))
        keep = pc.not_equal(pc.utf8_trim_whitespace(lines), "")
        lines = pc.utf8_rtrim(pc.filter(lines, keep), "\r")
        raw = pa.table(
            {
                **self._positions(path.name, pc.filter(numbers, keep)),
                "value": lines.cast(pa.string()),
            }
        )
        return self.decoder.decode_json(raw)

    def _read_csv(self, path: Path) -> SourceBatch:
        bad: list[tuple[int, str, str]] = []

        def invalid_row(row: pacsv.InvalidRow) -> str:
            bad.append(
                (
                    row.number,
                    row.text,
                    f"expected {row.expected_columns} fields, got {row.actual_columns}",
                )
            )
            return "skip"

        names = [c.name for c in self.definition.columns]
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=None if self.header else names),
            parse_options=pacsv.ParseOptions(
                delimiter=self.delimiter, invalid_row_handler=invalid_row
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names},
                include_columns=names,
                include_missing_columns=True,
                strings_can_be_null=True,
            ),
        )
        first_line = 2 if self.header else 1
        numbers = pc.add(
            pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), table.num_rows)), first_line - 1
        )
        raw = table.append_column("partition", pa.repeat(path.name, table.num_rows)).append_column(
            "offset", numbers
        )
        batch = self.decoder.decode_fields(raw)
        if not bad:
            return batch
        malformed = pa.table(
            {
                "partition": [path.name] * len(bad),
                "offset": [number for number, _, _ in bad],
                "raw": [text.encode() for _, text, _ in bad],
                "error": [error for _, _, error in bad],
            },
            schema=DEAD_LETTER_SCHEMA,
        )
        return SourceBatch(batch.rows, pa.concat_tables([batch.dead_letters, malformed]))

    def _read_parquet(self, path: Path) -> SourceBatch:
        table = pq.read_table(path)
        columns = {}
        for column in self.definition.columns:
            if column.name in table.column_names:
                columns[column.name] = table[column.name]
            else:
                columns[column.name] = pa.nulls(table.num_rows)
        raw = pa.table(columns)
        numbers = pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), table.num_rows))
        raw = raw.append_column("partition", pa.repeat(path.name, table.num_rows)).append_column(
            "offset", numbers
        )
        return self.decoder.decode_fields(raw)
