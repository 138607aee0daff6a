"""Where each sink of an engine database stands, for `streamsql status app.db`.

Read from the database's checkpoint when no process has it open. A process running queries
holds DuckDB's lock on the file; it publishes the same figures, from its live queries, to
`<database>.status.json` (after a batch, at most once a second), and those are read instead.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import duckdb
from sqlglot import exp

from streamsql.checkpoint import dead_letters
from streamsql.checkpoint.log import SCHEMA, Checkpoint, state_table
from streamsql.engine import source_instance, status_file
from streamsql.errors import OperationalError
from streamsql.plan.catalog import source_def
from streamsql.runtime.progress import timestamp_of
from streamsql.sql import parse_one

COLUMNS = (
    "sink",
    "running",
    "last_batch",
    "committed_offsets",
    "lag",
    "watermark",
    "state_rows",
    "dead_letters",
)


def database_status(database: str) -> tuple[str, list[dict[str, Any]]]:
    """Where the figures come from, and a dict of COLUMNS per sink."""
    if not Path(database).exists():
        raise OperationalError(f"No engine database at {database}")
    try:
        con = duckdb.connect(database, read_only=True)
    except (duckdb.IOException, duckdb.ConnectionException) as error:
        # Another process holds the database (a lock), or this one does (a connection).
        published = status_file(database)
        if not published.exists() or not (
            "lock" in str(error).lower() or isinstance(error, duckdb.ConnectionException)
        ):
            raise OperationalError(f"Cannot read {database}: {error}") from None
        snapshot = json.loads(published.read_text())
        age = time.time() - snapshot["written_at"]
        source = f"live, published by process {snapshot['pid']} {age:.0f} s ago"
        return source, snapshot["sinks"]
    try:
        con.execute("SET TimeZone = 'UTC'").fetchall()
        if not con.execute(
            "SELECT 1 FROM duckdb_tables() WHERE schema_name = ? AND table_name = 'catalog'",
            [SCHEMA],
        ).fetchall():
            raise OperationalError(
                f"{database} is not a streamsql database: it has no {SCHEMA}.catalog (a plain "
                "DuckDB file, or one whose engine was stopped before it was set up; "
                "streamsql.connect sets it up)"
            )
        sinks = con.execute(
            f"SELECT name, sql, running FROM {SCHEMA}.catalog WHERE kind = 'SINK' ORDER BY name"
        ).fetchall()
        return "from the checkpoint", [_from_checkpoint(con, *sink) for sink in sinks]
    except duckdb.Error as error:  # tables of a version that did not finish setting them up
        raise OperationalError(f"Cannot read the checkpoint of {database}: {error}") from None
    finally:
        con.close()


def _from_checkpoint(
    con: duckdb.DuckDBPyConnection, name: str, sql: str, running: bool
) -> dict[str, Any]:
    checkpoint = Checkpoint(con, name)
    last = checkpoint.last_commit()
    end = checkpoint.planned(last.batch_id).end if last else checkpoint.first_start()
    state_rows = None
    if con.execute(
        "SELECT 1 FROM duckdb_tables() WHERE schema_name = ? AND lower(table_name) = ?",
        [SCHEMA, f"state_{name.lower()}"],
    ).fetchall():
        state_rows = con.execute(f"SELECT count(*) FROM {state_table(name)}").fetchall()[0][0]
    shown, lag = _lag(con, checkpoint, sql, end)
    return {
        "sink": name,
        "running": running,
        "last_batch": last.batch_id if last else None,
        "committed_offsets": shown,
        "lag": lag,
        "watermark": timestamp_of(last.next_watermark_us) if last else None,
        "state_rows": state_rows,
        "dead_letters": dead_letters.count(con, name),
    }


def _lag(
    con: duckdb.DuckDBPyConnection, checkpoint: Checkpoint, sink_sql: str, end: Any
) -> tuple[Any, Any]:
    """The committed offsets as the source shows them, and what the source holds beyond
    them, as it tells (per partition for sources that have them, asking the broker)."""
    query = parse_one(sink_sql).expression.expression
    names = sorted({table.name.lower() for table in query.find_all(exp.Table)})
    rows = con.execute(
        f"SELECT sql FROM {SCHEMA}.catalog WHERE kind = 'SOURCE' AND list_contains(?, lower(name))",
        [names],
    ).fetchall()
    if not rows:
        return end, None
    source = source_instance(con, source_def(parse_one(rows[0][0]).expression, rows[0][0]))
    try:
        shown = source.public_offset(end)
        source.recover(checkpoint.planned_ends())
        end = end if end is not None else source.initial_offset()
        source.snapshot()  # what is there now (for Kafka: the broker's end offsets)
        return shown, source.lag_by_partition(end) or source.backlog(end)
    except OperationalError:
        return shown, None  # the broker cannot be asked now
    finally:
        source.close()
