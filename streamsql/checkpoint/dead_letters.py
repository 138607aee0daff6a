"""Dead letters: bad input records, stored once per source however many queries read them.

`dead_letter_records` holds each distinct bad record of a source once (its raw bytes, keyed
by their SHA-256); `dead_letter_log` holds, per query and batch, where each one was read and
why it was refused. The view `dead_letters` joins them into the rows users query (one per
query, batch, partition and offset, with the raw bytes). Both tables are written in the
transaction of the batch that read the records, so a replayed batch stores nothing twice.
A source's `dead_letter_retention` bounds how long they are kept.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import threading
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from streamsql.checkpoint.schema import SCHEMA
from streamsql.checkpoint.transactions import Statements, registered

RECORDS = f"{SCHEMA}.dead_letter_records"
LOG = f"{SCHEMA}.dead_letter_log"
VIEW = f"{SCHEMA}.dead_letters"

# Queries of one process write the shared records table from their own transactions: two
# storing the same record, or one storing a reference to a record another prunes, would
# conflict at commit. A batch that writes or prunes dead letters holds this lock from its
# BEGIN to its COMMIT (batches without dead letters never take it).
WRITE_LOCK = threading.Lock()

DIGEST = "coalesce(sha256(raw), '')"  # '' for a record without bytes

TABLES = (
    f"""CREATE TABLE IF NOT EXISTS {RECORDS} (
        source VARCHAR NOT NULL,
        digest VARCHAR NOT NULL,    -- SHA-256 of raw
        raw BLOB,
        PRIMARY KEY (source, digest))""",
    f"""CREATE TABLE IF NOT EXISTS {LOG} (
        query VARCHAR,
        batch_id BIGINT,
        source VARCHAR NOT NULL,
        "partition" VARCHAR,
        "offset" BIGINT,
        digest VARCHAR NOT NULL,    -- the record in dead_letter_records
        error VARCHAR,
        recorded_at TIMESTAMPTZ DEFAULT current_timestamp)""",
)
VIEW_SQL = f"""CREATE VIEW IF NOT EXISTS {VIEW} AS
    SELECT log.query, log.batch_id, log.source, log."partition", log."offset", records.raw,
           log.error, log.recorded_at
    FROM {LOG} AS log
    LEFT JOIN {RECORDS} AS records ON records.source = log.source AND records.digest = log.digest"""

# Earlier versions kept dead letters in one table (named as the view is now), each query's
# rows with their own bytes.
MIGRATION = (
    f"""INSERT INTO {RECORDS} (source, digest, raw)
        SELECT coalesce(source, ''), {DIGEST}, any_value(raw) FROM {VIEW} GROUP BY ALL""",
    f"""INSERT INTO {LOG} (query, batch_id, source, "partition", "offset", digest, error,
        recorded_at)
        SELECT query, batch_id, coalesce(source, ''), "partition", "offset", {DIGEST}, error,
               recorded_at
        FROM {VIEW}""",
    f"DROP TABLE {VIEW}",
)


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the tables and the view, moving the rows of a database written before dead
    letters were shared (one table, a copy per query) into them; in the caller's
    transaction, which the engine opens for all it creates."""
    old = con.execute(
        "SELECT 1 FROM duckdb_tables() WHERE schema_name = ? AND table_name = 'dead_letters'",
        [SCHEMA],
    ).fetchall()
    for statement in (*TABLES, *(MIGRATION if old else ()), VIEW_SQL):
        con.execute(statement).fetchall()


def count(cursor: duckdb.DuckDBPyConnection, query: str) -> int:
    """The dead letters kept for a query (its name in any case)."""
    return cursor.execute(
        f"SELECT count(*) FROM {VIEW} WHERE lower(query) = ?", [query.lower()]
    ).fetchall()[0][0]


def forget_statements(query: str) -> Statements:
    """What deletes a query's dead letters, and the bytes no other query's refer to: DROP
    SINK runs them in its transaction, holding WRITE_LOCK (a sink created again under the
    name reads the input again and records its bad records anew)."""
    return [
        (f"DELETE FROM {LOG} WHERE lower(query) = ?", [query.lower()]),
        (
            f"DELETE FROM {RECORDS} AS records WHERE NOT EXISTS (SELECT 1 FROM {LOG} AS log "
            "WHERE log.source = records.source AND log.digest = records.digest)",
            [],
        ),
    ]


class DeadLetters:
    """What one query stores of one source's bad records, and their pruning."""

    def __init__(
        self, cursor: duckdb.DuckDBPyConnection, query: str, source: str, retention: float
    ) -> None:
        self.cursor = cursor
        self.query = query
        self.source = source
        self.retention = None if math.isinf(retention) else dt.timedelta(seconds=retention)
        self.expires: dt.datetime | None = None  # when the source's oldest one is due to go
        self._pruning = False  # the batch in flight prunes

    def resume(self) -> int:
        """Read when the oldest dead letter of the source expires; returns the query's
        count."""
        self._read_expiry()
        return count(self.cursor, self.query)

    def _read_expiry(self) -> None:
        oldest = self.cursor.execute(
            f"SELECT min(recorded_at) FROM {LOG} WHERE source = ?", [self.source]
        ).fetchall()[0][0]
        self.expires = None if oldest is None or self.retention is None else oldest + self.retention

    def _prune_due(self) -> bool:
        return self.expires is not None and self.expires <= dt.datetime.now(dt.UTC)

    def lock_for(self, records: pa.Table) -> contextlib.AbstractContextManager[Any]:
        """What a batch holds around its transaction: the write lock if it stores `records`
        or prunes (decided here, once, for `store`)."""
        self._pruning = self._prune_due()
        return WRITE_LOCK if records.num_rows or self._pruning else contextlib.nullcontext()

    def store(self, batch_id: int, records: pa.Table) -> int:
        """In the batch's transaction, inside `lock_for`: log `records` (DEAD_LETTER_SCHEMA)
        for the query, keep the bytes of those the source has not kept yet, and drop what
        the retention expired. Returns how many of the query's dead letters went."""
        if records.num_rows:
            with registered(self.cursor, "__dead", records):
                self.cursor.execute(
                    f"INSERT INTO {RECORDS} (source, digest, raw) "
                    f"SELECT ?, {DIGEST} AS digest, any_value(raw) FROM __dead "
                    f"WHERE digest NOT IN (SELECT digest FROM {RECORDS} WHERE source = ?) "
                    "GROUP BY digest",
                    [self.source, self.source],
                ).fetchall()
                self.cursor.execute(
                    f'INSERT INTO {LOG} (query, batch_id, source, "partition", "offset", digest, '
                    f'error) SELECT ?, ?, ?, "partition", "offset", {DIGEST}, error FROM __dead',
                    [self.query, batch_id, self.source],
                ).fetchall()
            if self.retention is not None and self.expires is None:
                self.expires = dt.datetime.now(dt.UTC) + self.retention
        return self._prune() if self._pruning else 0

    def _prune(self) -> int:
        """Drop the source's log rows older than the retention (of every query, dropped
        sinks' too), then the records no row refers to any more."""
        gone = self.cursor.sql(
            f"DELETE FROM {LOG} WHERE source = $source AND recorded_at < $cutoff "
            "RETURNING query, digest",
            params={"source": self.source, "cutoff": dt.datetime.now(dt.UTC) - self.retention},
        ).to_arrow_table()
        with registered(self.cursor, "__gone", gone):
            self.cursor.execute(
                f"DELETE FROM {RECORDS} AS records WHERE source = $source "
                "AND digest IN (SELECT digest FROM __gone) "
                f"AND NOT EXISTS (SELECT 1 FROM {LOG} AS log "
                "WHERE log.source = $source AND log.digest = records.digest)",
                {"source": self.source},
            ).fetchall()
        self._read_expiry()
        return gone.filter(pc.equal(gone["query"], self.query)).num_rows
