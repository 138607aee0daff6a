"""The checkpoint's tables in the engine's DuckDB database (Spark's checkpoint directory:
offsets/, commits/, metadata), every query's rows keyed by its name in lower case, and where
a sink's query keeps its state.

The tables, their columns and their contents are the on-disk format: a database written by
an earlier version resumes as it is (columns are only ever added).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import duckdb

from streamsql.checkpoint.transactions import Statements
from streamsql.quoting import quote

SCHEMA = "_streamsql"
OFFSETS = f"{SCHEMA}.offsets"  # the offset log
COMMITS = f"{SCHEMA}.commits"  # the commit log
METADATA = f"{SCHEMA}.metadata"  # each query's id and fingerprint
EMITTED_WINDOWS = f"{SCHEMA}.emitted_windows"
SINK_FILES = f"{SCHEMA}.sink_files"  # what file sinks published, recorded in each commit

TABLES = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"""CREATE TABLE IF NOT EXISTS {OFFSETS} (
        query VARCHAR NOT NULL,
        batch_id BIGINT NOT NULL,
        start_offset JSON,
        end_offset JSON,
        watermark_us BIGINT,        -- W_N: emission and eviction threshold of this batch
        late_threshold_us BIGINT,   -- L_N = W_(N-1): rows at or below it are late
        planned_at TIMESTAMPTZ DEFAULT current_timestamp,
        PRIMARY KEY (query, batch_id))""",
    f"""CREATE TABLE IF NOT EXISTS {COMMITS} (
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
    f"ALTER TABLE {COMMITS} ADD COLUMN IF NOT EXISTS max_event_by_source JSON",
    f"""CREATE TABLE IF NOT EXISTS {METADATA} (
        query VARCHAR PRIMARY KEY,
        id VARCHAR NOT NULL,        -- the query's id, kept across restarts (Spark's metadata)
        fingerprint JSON NOT NULL,  -- what the query's state is shaped by (fingerprint.PARTS)
        created_at TIMESTAMPTZ DEFAULT current_timestamp)""",
    f"""CREATE TABLE IF NOT EXISTS {EMITTED_WINDOWS} (
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

CHECKPOINT_TABLES = (OFFSETS, COMMITS, METADATA, EMITTED_WINDOWS, SINK_FILES)


class QueryRows:
    """One query's rows in a checkpoint table. `sources` names the sources the query reads,
    in its order."""

    def __init__(
        self, cursor: duckdb.DuckDBPyConnection, query: str, sources: Sequence[str] = ()
    ) -> None:
        self.cursor = cursor
        self.query = query.lower()  # names are case-insensitive, as in DuckDB
        self.sources = list(sources)


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    for statement in TABLES:
        con.execute(statement).fetchall()


def state_table(query: str, operator: int | None = None) -> str:
    """Where a sink's query keeps its state: the state of the operator that feeds the sink,
    or of the one at `operator` in the chain below it."""
    return f"{SCHEMA}.{quote(state_table_name(query, operator))}"


def state_table_name(query: str, operator: int | None = None) -> str:
    return f"state_{query}" + ("" if operator is None else f"/op{operator}")


# The suffix of an operator's state table below the sink's (Python's and DuckDB's syntax).
OPERATOR_STATE = re.compile(r"/op[0-9]+$")


def state_tables(con: duckdb.DuckDBPyConnection, query: str) -> list[str]:
    """The state tables a sink's query has in the database: its operators' in a chain
    (each named as the sink's state table, with OPERATOR_STATE's suffix)."""
    names = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = ? "
        "AND lower(regexp_replace(table_name, ?, '')) = lower(?)",
        [SCHEMA, OPERATOR_STATE.pattern, state_table_name(query)],
    ).fetchall()
    return [f"{SCHEMA}.{quote(name)}" for (name,) in names]


def forget_statements(query: str) -> Statements:
    """What deletes a query's checkpoint: DROP SINK runs them in its transaction. Its dead
    letters stay: bad input of a query that leaves no result is never lost."""
    return [
        (f"DELETE FROM {table} WHERE lower(query) = ?", [query.lower()])
        for table in CHECKPOINT_TABLES
    ]


def from_json(value: str | None) -> Any:
    """A JSON column's value (None for NULL)."""
    return json.loads(value) if value is not None else None
