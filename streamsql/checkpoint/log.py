"""A query's checkpoint in the engine's DuckDB database (Spark's offsets/, commits/, metadata).

Batch N's input range, an offset for every source the query reads (Spark's OffsetSeq), is
written to the offset log, in its own transaction, before the batch reads anything. The
commit record of batch N is written in the same transaction as batch N's state, its sink's
rows (or file records) and the windows it emitted. On restart a batch that is in the offset
log but not in the commit log is run again over exactly its logged ranges, with its logged
thresholds. The plan fingerprint says which query the state belongs to: another query is
refused rather than resumed on it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from streamsql.checkpoint.fingerprint import Fingerprint, changes
from streamsql.errors import PlanningError
from streamsql.quoting import quote

SCHEMA = "_streamsql"
EMITTED_WINDOWS = f"{SCHEMA}.emitted_windows"
SINK_FILES = f"{SCHEMA}.sink_files"  # what file sinks published, recorded in each commit

TABLES = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.offsets (
        query VARCHAR NOT NULL,
        batch_id BIGINT NOT NULL,
        start_offset JSON,
        end_offset JSON,
        watermark_us BIGINT,        -- W_N: emission and eviction threshold of this batch
        late_threshold_us BIGINT,   -- L_N = W_(N-1): rows at or below it are late
        planned_at TIMESTAMPTZ DEFAULT current_timestamp,
        PRIMARY KEY (query, batch_id))""",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.commits (
        query VARCHAR NOT NULL,
        batch_id BIGINT NOT NULL,
        next_watermark_us BIGINT,   -- W_(N+1), first used by the next batch
        max_event_us BIGINT,        -- max event time seen in batches 0..N, in ms precision
        input_rows BIGINT,
        output_rows BIGINT,
        committed_at TIMESTAMPTZ DEFAULT current_timestamp,
        PRIMARY KEY (query, batch_id))""",
    # Each source's max event time (ms precision) in batches 0..N, by source name: what
    # each source's own watermark is, of which the global one is the min (or max).
    f"ALTER TABLE {SCHEMA}.commits ADD COLUMN IF NOT EXISTS max_event_by_source JSON",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.metadata (
        query VARCHAR PRIMARY KEY,
        id VARCHAR NOT NULL,        -- the query's id, kept across restarts (Spark's metadata)
        fingerprint JSON NOT NULL,  -- what the query's state is shaped by (fingerprint.PARTS)
        created_at TIMESTAMPTZ DEFAULT current_timestamp)""",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.emitted_windows (
        query VARCHAR NOT NULL,
        window_start VARCHAR NOT NULL,
        window_end VARCHAR NOT NULL,
        batch_id BIGINT NOT NULL,   -- the batch that closed and emitted the window
        groups BIGINT NOT NULL,     -- state groups of the window at close
        PRIMARY KEY (query, window_start, window_end))""",
    f"""CREATE TABLE IF NOT EXISTS {SINK_FILES} (
        query VARCHAR NOT NULL,
        file VARCHAR NOT NULL,      -- name in the sink's directory
        first_batch BIGINT NOT NULL,
        last_batch BIGINT NOT NULL, -- the file holds the rows of batches first..last
        rows BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        retired_at TIMESTAMPTZ,     -- replaced (compaction, a newer snapshot); deleted later
        PRIMARY KEY (query, file))""",
)


# Tests set this to n to SIGKILL the process at the n-th kill point of `atomically` (before
# each statement, before the COMMIT, after it): tests/test_crash.py kills DDL at every one.
KILL_AT = "STREAMSQL_TEST_KILL_AT"
_kill_points = itertools.count(1)

Statements = Sequence[tuple[str, Sequence[Any]]]  # SQL with its bound parameters

CHECKPOINT_TABLES = ("offsets", "commits", "metadata", "emitted_windows", "sink_files")


def state_table(query: str, operator: int | None = None) -> str:
    """Where a sink's query keeps its state: the state of the operator that feeds the sink,
    or of the one at `operator` in the chain below it."""
    return f"{SCHEMA}.{quote(state_table_name(query, operator))}"


def state_table_name(query: str, operator: int | None = None) -> str:
    return f"state_{query}" + ("" if operator is None else f"/op{operator}")


def state_tables(con: duckdb.DuckDBPyConnection, query: str) -> list[str]:
    """The state tables a sink's query has in the database: its operators' in a chain."""
    names = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = ? AND (lower(table_name) "
        "= lower(?) OR starts_with(lower(table_name), lower(?)))",
        [SCHEMA, state_table_name(query), state_table_name(query, 0)[:-1]],
    ).fetchall()
    return [f"{SCHEMA}.{quote(name)}" for (name,) in names]


@contextlib.contextmanager
def transaction(cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN ... COMMIT, rolled back on any error. A COMMIT that fails (a full disk) has
    rolled back already; its error is the one raised."""
    cursor.execute("BEGIN TRANSACTION").fetchall()
    try:
        yield
        cursor.execute("COMMIT").fetchall()
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            cursor.execute("ROLLBACK").fetchall()
        raise


def atomically(cursor: duckdb.DuckDBPyConnection, statements: Statements) -> None:
    """Run `statements` in one transaction: after a crash all of them took effect or none
    (the catalog's DDL: DROP SINK, CREATE OR REPLACE SINK)."""
    with transaction(cursor):
        for sql, params in statements:
            kill_point()
            cursor.execute(sql, params).fetchall()
        kill_point()
    kill_point()


def kill_point() -> None:
    """Tests only: SIGKILL this process at the STREAMSQL_TEST_KILL_AT-th point reached."""
    at = os.environ.get(KILL_AT)
    if at and next(_kill_points) == int(at):
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def registered(cursor: duckdb.DuckDBPyConnection, name: str, rows: Any) -> Iterator[None]:
    """`rows` (Arrow) as the view `name` for the statements of the block. A statement that
    fails inside a transaction makes DuckDB refuse every later one, the unregister too, until
    the rollback: the statement's error is the one raised (registering the name again
    replaces the view left behind)."""
    cursor.register(name, rows)
    try:
        yield
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            cursor.unregister(name)
        raise
    cursor.unregister(name)


Offsets = dict[str, Any]  # by source name, in the query's order: Spark's OffsetSeq


@dataclass(frozen=True)
class PlannedBatch:
    batch_id: int
    start: Offsets
    end: Offsets
    watermark_us: int | None
    late_threshold_us: int | None

    @property
    def no_data(self) -> bool:
        return self.start == self.end


@dataclass(frozen=True)
class CommitRecord:
    batch_id: int
    next_watermark_us: int | None
    max_event_by_source: dict[str, int | None]
    input_rows: int = 0
    output_rows: int = 0

    @property
    def max_event_us(self) -> int | None:
        return max((m for m in self.max_event_by_source.values() if m is not None), default=None)


class Checkpoint:
    """One query's view of the offset and commit logs.

    `sources` names the sources whose offsets the log holds, in the query's order. The
    offsets of a query of one source are logged as that source's offset alone, as they were
    before queries read several: such checkpoints resume as they are.
    """

    def __init__(
        self, cursor: duckdb.DuckDBPyConnection, query: str, sources: Sequence[str] = ()
    ) -> None:
        self.cursor = cursor
        self.query = query.lower()  # names are case-insensitive, as in DuckDB
        self.sources = list(sources)

    def _encode(self, offsets: Offsets) -> str:
        if len(self.sources) == 1:
            return json.dumps(offsets[self.sources[0]])
        return json.dumps({name: offsets[name] for name in self.sources})

    def _decode(self, value: str | None) -> Offsets:
        loaded = _load(value)
        if len(self.sources) == 1:
            return {self.sources[0]: loaded}
        return {name: (loaded or {}).get(name) for name in self.sources}

    def is_new(self) -> bool:
        """Nothing of this query is recorded yet."""
        return not self.cursor.execute(
            f"SELECT 1 FROM {SCHEMA}.metadata WHERE query = ? UNION ALL "
            f"SELECT 1 FROM {SCHEMA}.offsets WHERE query = ? LIMIT 1",
            [self.query, self.query],
        ).fetchall()

    @staticmethod
    def create_tables(con: duckdb.DuckDBPyConnection) -> None:
        for statement in TABLES:
            con.execute(statement).fetchall()

    def last_commit(self) -> CommitRecord | None:
        row = self.cursor.execute(
            f"SELECT batch_id, next_watermark_us, max_event_us, max_event_by_source, input_rows, "
            f"output_rows FROM {SCHEMA}.commits WHERE query = ? ORDER BY batch_id DESC LIMIT 1",
            [self.query],
        ).fetchall()
        if not row:
            return None
        batch_id, watermark, max_event, by_source, inputs, outputs = row[0]
        # A commit written before sources had their own: the one source's max.
        by_source = _load(by_source) or dict.fromkeys(self.sources, max_event)
        return CommitRecord(batch_id, watermark, by_source, inputs, outputs)

    def planned(self, batch_id: int) -> PlannedBatch | None:
        row = self.cursor.execute(
            f"SELECT batch_id, start_offset, end_offset, watermark_us, late_threshold_us "
            f"FROM {SCHEMA}.offsets WHERE query = ? AND batch_id = ?",
            [self.query, batch_id],
        ).fetchall()
        if not row:
            return None
        batch, start, end, watermark, late = row[0]
        return PlannedBatch(batch, self._decode(start), self._decode(end), watermark, late)

    def first_start(self) -> Offsets | None:
        """Where the first batch in the log starts: the initial offset recorded when the query
        was created (Spark's initial offset log), or the offsets truncation merged; None for a
        query that has none recorded yet."""
        row = self.cursor.execute(
            f"SELECT end_offset FROM {SCHEMA}.offsets WHERE query = ? AND batch_id = -1",
            [self.query],
        ).fetchall()
        return self._decode(row[0][0]) if row else None

    def log_initial(self, offsets: Offsets) -> None:
        """Record where a new query starts, before any batch: a query stopped before its first
        batch resumes from here, not from wherever `latest` points by then."""
        self.cursor.execute(
            f"INSERT INTO {SCHEMA}.offsets (query, batch_id, end_offset) VALUES (?, -1, ?)",
            [self.query, self._encode(offsets)],
        ).fetchall()

    def planned_ends(self) -> list[Offsets]:
        """Every end offset planned, in batch order (the batches truncated away merged into
        one, first): what a file source has seen."""
        rows = self.cursor.execute(
            f"SELECT end_offset FROM {SCHEMA}.offsets WHERE query = ? ORDER BY batch_id",
            [self.query],
        ).fetchall()
        return [self._decode(end) for (end,) in rows]

    def log_offsets(self, batch: PlannedBatch) -> None:
        """Write-ahead: durable before the batch reads its input."""
        self.cursor.execute(
            f"INSERT INTO {SCHEMA}.offsets (query, batch_id, start_offset, end_offset, "
            f"watermark_us, late_threshold_us) VALUES (?, ?, ?, ?, ?, ?)",
            [
                self.query,
                batch.batch_id,
                self._encode(batch.start),
                self._encode(batch.end),
                batch.watermark_us,
                batch.late_threshold_us,
            ],
        ).fetchall()

    def record_commit(self, commit: CommitRecord) -> None:
        """Called inside the batch's transaction."""
        self.cursor.execute(
            f"INSERT INTO {SCHEMA}.commits (query, batch_id, next_watermark_us, max_event_us, "
            f"max_event_by_source, input_rows, output_rows) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                self.query,
                commit.batch_id,
                commit.next_watermark_us,
                commit.max_event_us,
                json.dumps(commit.max_event_by_source),
                commit.input_rows,
                commit.output_rows,
            ],
        ).fetchall()

    def forget_emitted_windows(self, through: int) -> None:
        """Drop the windows emitted by batches up to `through`, in the transaction of the batch
        that retires them from the logs: only an uncommitted batch is ever replayed, and it
        emits only windows closing at its own watermark, which no retired batch emitted."""
        self.cursor.execute(
            f"DELETE FROM {EMITTED_WINDOWS} WHERE query = ? AND batch_id <= ?",
            [self.query, through],
        ).fetchall()

    def _metadata(self) -> tuple[str, Fingerprint] | None:
        row = self.cursor.execute(
            f"SELECT id, fingerprint FROM {SCHEMA}.metadata WHERE query = ?", [self.query]
        ).fetchall()
        return (row[0][0], _load(row[0][1])) if row else None

    def mismatch(self, current: Fingerprint) -> list[str]:
        """How `current` differs from the query whose state this checkpoint holds."""
        return _mismatch(self._metadata(), current)

    def claim(self, current: Fingerprint) -> str:
        """Bind the checkpoint to the query about to resume it, refusing a different one;
        returns the query's id, the same on every restart."""
        stored = self._metadata()
        changed = _mismatch(stored, current)
        if changed:
            raise PlanningError(
                f"Query {self.query} cannot resume its checkpoint: the checkpoint holds state "
                f"of a different query ({'; '.join(changed)}). Restore the old query, or "
                f"DROP SINK {self.query} (or CREATE OR REPLACE SINK) to start over without "
                "its state",
                rule="checkpoint-mismatch",
            )
        query_id = stored[0] if stored else str(uuid.uuid4())
        self.cursor.execute(
            f"INSERT OR REPLACE INTO {SCHEMA}.metadata (query, id, fingerprint) VALUES (?, ?, ?)",
            [self.query, query_id, json.dumps(current)],
        ).fetchall()
        return query_id

    def truncate(self, through: int, merge: Callable[[str, list[Any]], Any]) -> None:
        """Drop the log entries of batches up to `through` (Spark's minBatchesToRetain),
        keeping what each source needs of their offsets (`merge(source, offsets)`) merged
        into one entry, batch -1."""
        with transaction(self.cursor):
            rows = self.cursor.execute(
                f"SELECT end_offset FROM {SCHEMA}.offsets WHERE query = ? AND batch_id <= ? "
                "ORDER BY batch_id",
                [self.query, through],
            ).fetchall()
            ends = [self._decode(end) for (end,) in rows]
            merged = {name: merge(name, [end[name] for end in ends]) for name in self.sources}
            for table in ("offsets", "commits"):
                self.cursor.execute(
                    f"DELETE FROM {SCHEMA}.{table} WHERE query = ? AND batch_id <= ?",
                    [self.query, through],
                ).fetchall()
            self.cursor.execute(
                f"INSERT INTO {SCHEMA}.offsets (query, batch_id, end_offset) VALUES (?, -1, ?)",
                [self.query, self._encode(merged)],
            ).fetchall()

    def forget_statements(self) -> Statements:
        """What deletes the query's checkpoint: DROP SINK runs them in its transaction."""
        return [
            (f"DELETE FROM {SCHEMA}.{table} WHERE lower(query) = ?", [self.query])
            for table in CHECKPOINT_TABLES
        ]

    def forget(self) -> None:
        """Drop the query's checkpoint (a push query's, a sink's that failed to start). Its
        dead letters stay: bad input of a query that leaves no result is never lost."""
        atomically(self.cursor, self.forget_statements())


def _mismatch(stored: tuple[str, Fingerprint] | None, current: Fingerprint) -> list[str]:
    return [] if stored is None else changes(stored[1], current)


def _load(value: str | None) -> Any:
    return json.loads(value) if value is not None else None
