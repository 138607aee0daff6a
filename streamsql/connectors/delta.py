"""A Delta Lake table (local directory or object-store URI), one Delta commit per batch.

Exactly once as Spark's Delta sink does it: batch N's commit carries a SetTransaction
action (`txn`, app id = the query id, version = N). The commit happens in the batch, before
the engine database commits it; a crash in between replays batch N, and the sink, finding
the table's transaction version for the query at N or later, skips the commit. EMIT FINAL
and stateless queries append, EMIT CHANGES merges on the group keys (the table is the live
result), EMIT SNAPSHOT overwrites; `changelog = true` appends every emitted row with its
`_batch_id` instead. A batch that changes nothing commits nothing.

The sink's view in the engine database reads the Parquet files of the table's current
version (listed from the Delta log; DuckDB's own delta extension is not needed), and is
replaced in the batch's transaction. OPTIMIZE (`compact_every`) rewrites small files in a
commit of its own; the files it replaces stay on disk until a VACUUM, as in Spark.
"""

from __future__ import annotations

from typing import Any, ClassVar

import duckdb
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Schema, Transaction, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError
from deltalake.schema import PrimitiveType

from streamsql.catalog.definitions import Emit
from streamsql.checkpoint.schema import SCHEMA
from streamsql.checkpoint.transactions import kill_point, registered
from streamsql.connectors.files.sink import typed_relation
from streamsql.connectors.sink import OutputSchema, Sink
from streamsql.errors import OperationalError, ProgrammingError
from streamsql.quoting import one_statement, quote

ROWS_VIEW = "__delta_rows"

# DuckDB types Delta has no type for, and the type they are written as. TIMESTAMP is
# written as Delta's `timestamp` (UTC, what Spark's TimestampType reads): `timestamp_ntz`
# would raise the table's protocol to reader 3 / writer 7. The view casts back.
WRITE_TYPES = {
    "HUGEINT": "DECIMAL(38, 0)",
    "UHUGEINT": "DECIMAL(38, 0)",
    "UBIGINT": "DECIMAL(20, 0)",
    "UINTEGER": "BIGINT",
    "USMALLINT": "INTEGER",
    "UTINYINT": "SMALLINT",
    "TIMESTAMP": "TIMESTAMPTZ",
    "TIMESTAMP_S": "TIMESTAMPTZ",
    "TIMESTAMP_MS": "TIMESTAMPTZ",
    "TIMESTAMP_NS": "TIMESTAMPTZ",
}

# Reader features the view (Parquet files as listed, cast to the query's types) reads right:
# not deletion vectors or column mapping, which change what a file's rows or columns are.
# A TIMESTAMP inside a LIST or STRUCT is written as timestamp_ntz (reader 3 / writer 7).
READABLE_FEATURES = {"timestampNtz", "typeWidening", "v2Checkpoint", "vacuumProtocolCheck"}


class DeltaSink(Sink):
    OPTIONS = (
        *Sink.OPTIONS,
        "path",
        "compact_every",
        "target_file_size",
        "changelog",
        "view",
    )
    OPTION_PREFIXES: ClassVar[tuple[str, ...]] = ("storage.",)  # deltalake storage_options
    OUTPUT = ("VIEW", "view")

    def __init__(self, name: str, options: dict[str, str]) -> None:
        super().__init__(name, options)
        self.path = self.option_required("path", "delta")
        self.view = self.option_text("view", name)
        self.compact_every = self.option_int("compact_every", 10, minimum=0)
        self.target_size = self.option_size("target_file_size", 128 << 20)
        self.changelog = self.option_bool("changelog", False)
        self.storage = {
            key.removeprefix("storage."): value
            for key, value in options.items()
            if key.startswith("storage.")
        }
        self.schema: OutputSchema | None = None
        self.query_id = ""
        self.mode = "append"  # append | merge | overwrite
        self.columns: list[tuple[str, str]] = []
        self.table: DeltaTable | None = None
        self.applied = -1  # the last batch the table holds a commit of, for this query

    # -- open ----------------------------------------------------------------------------------

    def open(self, cursor: duckdb.DuckDBPyConnection, schema: OutputSchema, query_id: str) -> None:
        """Open (or create) the table, check its columns and protocol, and learn which batch
        of this query it committed last."""
        self.schema, self.query_id = schema, query_id
        if self.changelog:
            self.mode = "append"
        elif schema.emit is Emit.SNAPSHOT:
            self.mode = "overwrite"
        elif schema.emit is Emit.CHANGES and schema.stateful:
            self.require_keys(
                schema, "into a Delta table merges each group on its key", "append every change"
            )
            self.mode = "merge"
        self.columns = list(zip(schema.names, schema.types, strict=True))
        nulls = ", ".join(f"CAST(NULL AS {t}) AS {quote(n)}" for n, t in self.columns)
        empty = cursor.sql(f"SELECT {nulls} WHERE false").to_arrow_table()
        with registered(cursor, ROWS_VIEW, empty):
            expected = self._rows(cursor, 0).schema
        existing = self._existing()
        version = existing.transaction_version(query_id) if existing else None
        self.applied = -1 if version is None else version
        self._check_committed(cursor)  # before a missing table is created anew
        self.table = existing or self._create(expected)
        self._check_table(expected)
        if self.changelog:
            self.columns.append(("_batch_id", "BIGINT"))
        self._publish_view(cursor)

    def _existing(self) -> DeltaTable | None:
        try:
            return DeltaTable(self.path, storage_options=self.storage or None)
        except TableNotFoundError:
            return None
        except (DeltaError, OSError) as error:
            raise self._error("cannot open the table at", error) from None

    def _create(self, expected: pa.Schema) -> DeltaTable:
        try:
            delta_schema = Schema.from_arrow(expected)
        except Exception as error:  # deltalake raises a bare Exception for unmapped types
            raise ProgrammingError(
                f"Sink {self.name}: the query's columns ({self._listed()}) cannot be a Delta "
                f"table's: {_first_line(error)}; CAST the column to a type Delta has"
            ) from None
        try:
            # 'ignore': another writer creating it meanwhile wins; its schema is checked next
            return DeltaTable.create(
                self.path, delta_schema, mode="ignore", storage_options=self.storage or None
            )
        except (DeltaError, OSError) as error:
            raise self._error("cannot create a table at", error) from None

    def _check_table(self, expected: pa.Schema) -> None:
        """The table must have the query's columns, and a protocol the view can read."""
        protocol = self.table.protocol()
        features = set(protocol.reader_features or [])
        if protocol.min_reader_version == 2 or features - READABLE_FEATURES:
            needs = ", ".join(sorted(features - READABLE_FEATURES)) or "column mapping"
            raise ProgrammingError(
                f"Sink {self.name}: the Delta table at {self.path} needs a reader that "
                f"applies {needs}; the sink's view reads the table's Parquet files as they "
                "are. Write to another path"
            )
        found = {f.name: _type_name(f.type) for f in self.table.schema().fields}
        wanted = {f.name: _type_name(f.type) for f in Schema.from_arrow(expected).fields}
        changes = [
            f"{name}: {found[name]} in the table, {wanted[name]} from the query"
            for name in wanted
            if name in found and found[name] != wanted[name]
        ]
        changes += [f"{name}: not in the table" for name in wanted if name not in found]
        changes += [f"{name}: not emitted by the query" for name in found if name not in wanted]
        if changes:
            raise ProgrammingError(
                f"Sink {self.name}: the Delta table at {self.path} has other columns than the "
                f"query emits ({'; '.join(changes)}); write to another path, or "
                "CREATE OR REPLACE SINK with the table's columns"
            )

    def _check_committed(self, cursor: duckdb.DuckDBPyConnection) -> None:
        """Every batch the checkpoint says emitted rows must be in the table: one that is
        not was lost with a table deleted or replaced outside streamsql."""
        (emitted,) = cursor.execute(
            f"SELECT max(batch_id) FROM {SCHEMA}.commits WHERE lower(query) = ? "
            "AND output_rows > 0",
            [self.name.lower()],
        ).fetchone()
        if emitted is not None and emitted > self.applied:
            held = f"up to batch {self.applied}" if self.applied >= 0 else "no batch"
            raise OperationalError(
                f"Sink {self.name}: the Delta table at {self.path} holds {held} of this query, "
                f"but batch {emitted} committed rows to it; the table was deleted or replaced "
                f"outside streamsql. DROP SINK {self.name} to start over"
            )

    # -- one batch -----------------------------------------------------------------------------

    def write(self, cursor: duckdb.DuckDBPyConnection, batch_id: int, rows: pa.Table) -> None:
        """Commit the batch to the table with txn(query id, batch id), unless the table has it
        already (a replay after a crash: the view `open` made shows it), and point the view
        at the table's new version."""
        if batch_id > self.applied and (rows.num_rows or self._empties_table()):
            with registered(cursor, ROWS_VIEW, rows):
                data = self._rows(cursor, batch_id)
            commit = CommitProperties(app_transactions=[Transaction(self.query_id, batch_id)])
            try:
                if self.mode == "merge":
                    self._merge(data, commit)
                else:
                    write_deltalake(self.table, data, mode=self.mode, commit_properties=commit)
            except (DeltaError, OSError) as error:
                raise self._error(f"batch {batch_id} was not committed to", error) from None
            self.applied = batch_id
            kill_point()  # tests: a crash after the Delta commit, before the batch's commit
            self._publish_view(cursor)

    def _empties_table(self) -> bool:
        """SNAPSHOT with no rows: the overwrite empties a table that has rows."""
        return self.mode == "overwrite" and bool(self.table.file_uris())

    def _rows(self, cursor: duckdb.DuckDBPyConnection, batch_id: int) -> pa.Table:
        """The rows of ROWS_VIEW as they are written: in types Delta keeps exactly."""
        columns = [
            f"CAST({quote(n)} AS {WRITE_TYPES.get(t.upper(), t)}) AS {quote(n)}"
            for n, t in zip(self.schema.names, self.schema.types, strict=True)
        ]
        if self.changelog:
            columns.append("$batch_id::BIGINT AS _batch_id")
        select = one_statement(f"SELECT {', '.join(columns)} FROM {ROWS_VIEW}")
        params = {"batch_id": batch_id} if self.changelog else None
        return cursor.sql(select, params=params).to_arrow_table()

    def _merge(self, data: pa.Table, commit: CommitProperties) -> None:
        """Upsert the batch's rows on the group keys (NULL keys match NULL keys)."""
        on = " AND ".join(
            f"target.{quote(k)} IS NOT DISTINCT FROM source.{quote(k)}" for k in self.schema.keys
        )
        merger = self.table.merge(
            data,
            on or "true",
            source_alias="source",
            target_alias="target",
            commit_properties=commit,
        )
        merger.when_matched_update_all().when_not_matched_insert_all().execute()

    def committed(self, cursor: duckdb.DuckDBPyConnection, batch_id: int) -> None:
        if self.compact_every and (batch_id + 1) % self.compact_every == 0:
            self.compact(cursor)

    def compact(self, cursor: duckdb.DuckDBPyConnection) -> tuple[int, int]:
        """OPTIMIZE: bin-pack small files into files of about `target_file_size`, in a commit
        of its own (no data change); the view moves to the new files."""
        try:
            metrics = self.table.optimize.compact(target_size=self.target_size)
        except (DeltaError, OSError) as error:
            raise self._error("could not OPTIMIZE", error) from None
        if metrics["numFilesAdded"]:
            self._publish_view(cursor)
        return metrics["numFilesRemoved"], metrics["numFilesAdded"]

    # -- what readers see ----------------------------------------------------------------------

    def _publish_view(self, cursor: duckdb.DuckDBPyConnection) -> None:
        """The sink's view: the Parquet files of the table's current version, in the query's
        column types."""
        select = typed_relation(self.columns, "read_parquet", self.table.file_uris())
        view = f"CREATE OR REPLACE VIEW {quote(self.view)} AS {select}"
        cursor.execute(one_statement(view)).fetchall()

    def _listed(self) -> str:
        return ", ".join(f"{n} {t}" for n, t in self.columns)

    def _error(self, what: str, error: BaseException) -> OperationalError:
        return OperationalError(f"Sink {self.name}: {what} {self.path}: {_first_line(error)}")


def _type_name(type_: PrimitiveType | Any) -> str:
    """A Delta type as the Delta log spells it: `long`, or the JSON of a nested type."""
    return type_.type if isinstance(type_, PrimitiveType) else type_.to_json()


def _first_line(error: BaseException) -> str:
    """deltalake's messages carry a Rust backtrace after the first line."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
