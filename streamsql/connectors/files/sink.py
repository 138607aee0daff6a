"""Parquet, CSV or JSON-lines files in a directory, each batch published atomically.

Batch N's rows are written by DuckDB to a staging file, synced, and renamed into the
directory as `part-<N>-<N>-<query id>.<ext>` before the batch commits; the commit records
the file in `_streamsql.sink_files`. A crash between the rename and the commit leaves a
file that the replayed batch (same input range, same state) overwrites with the same rows,
or that recovery removes; no reader ever sees a partial file or a batch twice.

The live files are the ones recorded and not retired. Readers get exactly them through the
sink's view in the engine database (and `_manifest.json` in the directory). Compaction
rewrites runs of small files into one file of about `target_file_size` and switches the live
set in one transaction; replaced files are deleted after `retention`, so a reader that
listed them before the switch can finish reading them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

import duckdb
import pyarrow as pa

from streamsql.catalog.definitions import Emit
from streamsql.checkpoint.schema import SINK_FILES
from streamsql.checkpoint.transactions import registered, transaction
from streamsql.connectors.sink import OutputSchema, Sink
from streamsql.errors import OperationalError, ProgrammingError
from streamsql.options import Configured
from streamsql.quoting import literal, one_statement, quote

ROWS_VIEW = "__file_rows"
STAGING = ".staging"
MANIFEST = "_manifest.json"


class FileFormat:
    """How DuckDB writes and reads back one file format."""

    extension: str
    reader: str

    def __init__(self, sink: Configured) -> None:
        """Read (and check) the sink's options of this format."""

    def copy_options(self) -> str:
        raise NotImplementedError

    def read_options(self, columns: list[tuple[str, str]]) -> str:
        """Reader options; with `columns`, the names and types to read (else detected)."""
        if not columns:
            return ""
        typed = ", ".join(f"{literal(n)}: {literal(t)}" for n, t in columns)
        return f", columns = {{{typed}}}"

    def write_type(self, type_: str) -> str:
        return type_


class Parquet(FileFormat):
    extension, reader = "parquet", "read_parquet"

    def __init__(self, sink: Configured) -> None:
        self.compression = sink.option_choice("compression", PARQUET_CODECS, "zstd")

    def copy_options(self) -> str:
        return f"FORMAT parquet, COMPRESSION {self.compression}"  # a word of PARQUET_CODECS

    def read_options(self, columns: list[tuple[str, str]]) -> str:
        return ""  # Parquet files carry their types

    def write_type(self, type_: str) -> str:
        # DuckDB writes HUGEINT (sum of BIGINT) to Parquet as DOUBLE; DECIMAL(38, 0) is exact.
        return "DECIMAL(38, 0)" if type_.upper() in ("HUGEINT", "UHUGEINT") else type_


class CSV(FileFormat):
    extension, reader = "csv", "read_csv"

    def __init__(self, sink: Configured) -> None:
        self.delimiter = sink.option_char("delimiter", ",")

    def copy_options(self) -> str:
        delimiter = literal(self.delimiter)
        return f"FORMAT csv, HEADER true, DELIMITER {delimiter}, QUOTE '\"', ESCAPE '\"'"

    def read_options(self, columns: list[tuple[str, str]]) -> str:
        """The dialect the sink wrote, every part of it pinned: read_csv would otherwise
        sniff each file on its own, and a file with a quoted field after one without (or
        a file whose first lines look like another dialect) would be read wrong."""
        delimiter = literal(self.delimiter)
        # A NULL is written as an empty field, '' as "": read them back apart.
        options = (
            f", header = true, delim = {delimiter}, quote = '\"', escape = '\"', "
            "new_line = '\\n', allow_quoted_nulls = false"
        )
        return options + super().read_options(columns)


class JSONLines(FileFormat):
    extension, reader = "json", "read_json"

    def copy_options(self) -> str:
        return "FORMAT json"

    def read_options(self, columns: list[tuple[str, str]]) -> str:
        return ", format = 'newline_delimited'" + super().read_options(columns)


PARQUET_CODECS = ("zstd", "snappy", "gzip", "brotli", "lz4", "lz4_raw", "uncompressed")
FILE_FORMATS: dict[str, type[FileFormat]] = {"parquet": Parquet, "csv": CSV, "json": JSONLines}


class FileSink(Sink):
    format_name = "parquet"
    OPTIONS = (
        *Sink.OPTIONS,
        "path",
        "compact_every",
        "target_file_size",
        "retention",
        "fsync",
        "changelog",
        "view",
    )
    OUTPUT = ("VIEW", "view")

    def __init__(self, name: str, options: dict[str, str]) -> None:
        super().__init__(name, options)
        self.directory = Path(self.option_required("path", self.format_name))
        self.format = FILE_FORMATS[self.format_name](self)
        self.key = name.lower()  # the query's key in the checkpoint tables
        self.view = self.option_text("view", name)
        self.compact_every = self.option_int("compact_every", 10, minimum=0)
        self.target_size = self.option_size("target_file_size", 128 << 20)
        self.retention = self.option_seconds("retention", 60.0, allow_zero=True)
        self.fsync = self.option_bool("fsync", True)
        self.changelog = self.option_bool("changelog", False)
        self.schema: OutputSchema | None = None
        self.query_id = ""
        self._changed = False  # the batch in flight changed the live files

    # -- naming ----------------------------------------------------------------------------

    def _file_name(self, first: int, last: int) -> str:
        return f"part-{first:010d}-{last:010d}-{self.query_id[:8]}.{self.format.extension}"

    def _ours(self, name: str) -> bool:
        """A data file this query wrote (other queries' files in the directory are left be)."""
        pattern = rf"part-\d{{10}}-\d{{10}}-{re.escape(self.query_id[:8])}\.{self.format.extension}"
        return re.fullmatch(pattern, name) is not None

    # -- open and recover ------------------------------------------------------------------

    def open(self, cursor: duckdb.DuckDBPyConnection, schema: OutputSchema, query_id: str) -> None:
        self.schema, self.query_id = schema, query_id
        if self.upserts:
            self.require_keys(
                schema,
                "into files appends every change with its _batch_id, and the sink's view shows "
                "the latest row per group",
                "only append the changes",
            )
        try:
            (self.directory / STAGING).mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a parent that is a file, no permission, a full disk
            raise OperationalError(
                f"Sink {self.name}: cannot create its directory {self.directory}: "
                f"{error.strerror or error}"
            ) from None
        self._recover(cursor)
        self._check_columns(cursor)
        self._publish_view(cursor)
        self._write_manifest(cursor)

    @property
    def upserts(self) -> bool:
        """EMIT CHANGES: the files append every change, the view shows each group's latest."""
        return self.schema.emit is Emit.CHANGES and self.schema.stateful and not self.changelog

    @property
    def appends_batch_id(self) -> bool:
        return self.changelog or self.upserts

    def _recover(self, cursor: duckdb.DuckDBPyConnection) -> None:
        """Remove what interrupted attempts left: staging files, and published files that no
        commit recorded (their batch runs again and writes them anew)."""
        for leftover in (self.directory / STAGING).iterdir():
            leftover.unlink()
        recorded = {file for file, _ in self._files(cursor, retired_too=True)}
        for entry in self.directory.iterdir():
            if self._ours(entry.name) and entry.name not in recorded:
                entry.unlink()
        missing = [file for file, _ in self._files(cursor) if not (self.directory / file).exists()]
        if missing:
            raise OperationalError(
                f"Sink {self.name}: {len(missing)} committed file(s) are missing from "
                f"{self.directory} (first: {missing[0]}); they were deleted outside streamsql. "
                f"DROP SINK {self.name} to start over"
            )
        self._delete_retired(cursor)

    def _check_columns(self, cursor: duckdb.DuckDBPyConnection) -> None:
        """The files written so far must have the columns the query emits now."""
        files = self._files(cursor)
        if not files:
            return
        last = literal(str(self.directory / files[-1][0]))
        describe = (
            f"DESCRIBE SELECT * FROM {self.format.reader}({last}{self.format.read_options([])})"
        )
        found = [row[0] for row in cursor.execute(one_statement(describe)).fetchall()]
        expected = [name for name, _ in self.columns]
        if [n.lower() for n in found] != [n.lower() for n in expected]:
            raise ProgrammingError(
                f"Sink {self.name}: its files in {self.directory} have columns "
                f"({', '.join(found)}) but the query emits ({', '.join(expected)}); "
                f"CREATE OR REPLACE SINK {self.name} to start over (the files written so far "
                "stay where they are and leave the view), or write to another path"
            )

    def _files(
        self, cursor: duckdb.DuckDBPyConnection, retired_too: bool = False
    ) -> list[tuple[str, int]]:
        """(file, bytes) of the live files, in batch order (and of those awaiting deletion)."""
        live = "" if retired_too else " AND retired_at IS NULL"
        return cursor.execute(
            f"SELECT file, bytes FROM {SINK_FILES} WHERE query = ?{live} ORDER BY first_batch",
            [self.key],
        ).fetchall()

    # -- one batch ---------------------------------------------------------------------------

    def write(self, cursor: duckdb.DuckDBPyConnection, batch_id: int, rows: pa.Table) -> None:
        replaces = self.schema.emit is Emit.SNAPSHOT and not self.changelog
        if replaces:
            cursor.execute(
                f"UPDATE {SINK_FILES} SET retired_at = current_timestamp "
                "WHERE query = ? AND retired_at IS NULL",
                [self.key],
            ).fetchall()
        if rows.num_rows:
            with registered(cursor, ROWS_VIEW, rows):
                select = self._write_select(ROWS_VIEW, "$batch_id::BIGINT")
                params = {"batch_id": batch_id} if self.appends_batch_id else None
                self._publish(cursor, select, batch_id, batch_id, params)
        self._changed = bool(rows.num_rows or replaces)
        if self._changed:
            self._publish_view(cursor)

    def _write_select(self, relation: str, batch_id: str) -> str:
        """The rows of `relation` as they are written: in types the format keeps exactly."""
        columns = [
            f"CAST({quote(n)} AS {self.format.write_type(t)}) AS {quote(n)}"
            if self.format.write_type(t) != t
            else quote(n)
            for n, t in zip(self.schema.names, self.schema.types, strict=True)
        ]
        if self.appends_batch_id:
            columns.append(f"{batch_id} AS _batch_id")
        return f"SELECT {', '.join(columns)} FROM {relation}"

    def _publish(
        self,
        cursor: duckdb.DuckDBPyConnection,
        select: str,
        first: int,
        last: int,
        params: dict[str, int] | None = None,
    ) -> None:
        """Write `select` to a staging file, sync it, rename it into place, and record it
        (in the caller's transaction)."""
        name = self._file_name(first, last)
        staged = self.directory / STAGING / name
        copy = f"COPY ({select}) TO {literal(str(staged))} ({self.format.copy_options()})"
        rows = cursor.execute(one_statement(copy), params).fetchall()[0][0]
        if self.fsync:
            _sync(staged)
        os.replace(staged, self.directory / name)
        if self.fsync:
            _sync(self.directory)
        cursor.execute(
            f"INSERT OR REPLACE INTO {SINK_FILES} (query, file, first_batch, last_batch, rows, "
            "bytes) VALUES (?, ?, ?, ?, ?, ?)",
            [self.key, name, first, last, rows, (self.directory / name).stat().st_size],
        ).fetchall()

    def committed(self, cursor: duckdb.DuckDBPyConnection, batch_id: int) -> None:
        if self._changed:
            self._write_manifest(cursor)
        if self.compact_every and (batch_id + 1) % self.compact_every == 0:
            self.compact(cursor)
        else:
            self._delete_retired(cursor)

    # -- what readers see -------------------------------------------------------------------

    @property
    def columns(self) -> list[tuple[str, str]]:
        """(name, type) of the columns in the files."""
        columns = list(zip(self.schema.names, self.schema.types, strict=True))
        return [*columns, ("_batch_id", "BIGINT")] if self.appends_batch_id else columns

    def relation(self, files: list[str]) -> str:
        """The rows of `files`, in the query's column types."""
        paths = [str(self.directory.resolve() / f) for f in files]
        options = self.format.read_options(self.columns)
        return typed_relation(self.columns, self.format.reader, paths, options)

    def _publish_view(self, cursor: duckdb.DuckDBPyConnection) -> None:
        """The sink's view: its live files; for EMIT CHANGES, the latest row of each group
        (the live result, as a duckdb sink's table holds it)."""
        select = self.relation([file for file, _ in self._files(cursor)])
        if self.upserts:
            keys = ", ".join(quote(k) for k in self.schema.keys)
            select = (
                f"SELECT * EXCLUDE (_batch_id) FROM ({select}) QUALIFY row_number() OVER "
                f"({f'PARTITION BY {keys} ' if keys else ''}ORDER BY _batch_id DESC) = 1"
            )
        view = f"CREATE OR REPLACE VIEW {quote(self.view)} AS {select}"
        cursor.execute(one_statement(view)).fetchall()

    def _write_manifest(self, cursor: duckdb.DuckDBPyConnection) -> None:
        """The live files, for readers outside the engine (written after each commit)."""
        files = [file for file, _ in self._files(cursor)]
        manifest = {
            "sink": self.name,
            "format": self.format.extension,
            "last_batch": max((_batches(file)[1] for file in files), default=None),
            "files": files,
        }
        staged = self.directory / STAGING / MANIFEST
        staged.write_text(json.dumps(manifest, indent=1))
        os.replace(staged, self.directory / MANIFEST)

    # -- compaction -------------------------------------------------------------------------

    def compact(self, cursor: duckdb.DuckDBPyConnection) -> tuple[int, int]:
        """Rewrite each run of consecutive small live files into one file, and switch the live
        set to the rewritten files in one transaction."""
        runs = self._runs(cursor)
        if runs:
            with transaction(cursor):
                for run in runs:
                    first, last = _batches(run[0])[0], _batches(run[-1])[1]
                    select = self._write_select(f"({self.relation(run)})", "_batch_id")
                    self._publish(cursor, select, first, last)
                    cursor.execute(
                        f"UPDATE {SINK_FILES} SET retired_at = current_timestamp "
                        f"WHERE query = ? AND list_contains(?, file)",
                        [self.key, run],
                    ).fetchall()
                self._publish_view(cursor)
            self._write_manifest(cursor)
        self._delete_retired(cursor)
        return sum(len(run) for run in runs), len(runs)

    def _runs(self, cursor: duckdb.DuckDBPyConnection) -> list[list[str]]:
        """Consecutive small files, grouped up to the target size; groups of one stay."""
        runs: list[list[str]] = []
        run: list[str] = []
        size = 0
        for file, bytes_ in self._files(cursor):
            if bytes_ >= self.target_size or size + bytes_ > self.target_size:
                runs.append(run)
                run, size = [], 0
            if bytes_ < self.target_size:
                run.append(file)
                size += bytes_
        runs.append(run)
        return [r for r in runs if len(r) > 1]

    def _delete_retired(self, cursor: duckdb.DuckDBPyConnection) -> None:
        expired = cursor.execute(
            f"SELECT file FROM {SINK_FILES} WHERE query = ? AND retired_at IS NOT NULL AND "
            "retired_at <= current_timestamp - to_microseconds(?::BIGINT)",
            [self.key, int(self.retention * 1_000_000)],
        ).fetchall()
        for (file,) in expired:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / file).unlink()
        if expired:
            cursor.execute(
                f"DELETE FROM {SINK_FILES} WHERE query = ? AND list_contains(?, file)",
                [self.key, [file for (file,) in expired]],
            ).fetchall()


class ParquetSink(FileSink):
    format_name = "parquet"
    OPTIONS = (*FileSink.OPTIONS, "compression")


class CSVSink(FileSink):
    format_name = "csv"
    OPTIONS = (*FileSink.OPTIONS, "delimiter")


class JSONSink(FileSink):
    format_name = "json"


def typed_relation(
    columns: list[tuple[str, str]], reader: str, paths: list[str], options: str = ""
) -> str:
    """The rows of the files at `paths` read by DuckDB's `reader`, in the (name, type)
    `columns` (no rows, typed so, for no files)."""
    if not paths:
        nulls = ", ".join(f"CAST(NULL AS {t}) AS {quote(n)}" for n, t in columns)
        return f"SELECT {nulls} WHERE false"
    casts = ", ".join(f"CAST({quote(n)} AS {t}) AS {quote(n)}" for n, t in columns)
    listed = ", ".join(literal(path) for path in paths)
    return f"SELECT {casts} FROM {reader}([{listed}]{options})"


def _batches(file: str) -> tuple[int, int]:
    first, last = file.split("-")[1:3]
    return int(first), int(last)


def _sync(path: Path) -> None:
    """Make a file's contents (or a directory's entries) durable before going on."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
