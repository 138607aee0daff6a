"""Where each sink of an engine database stands, for `streamsql status app.db`.

Read from the database's checkpoint when no process has it open: then no query runs. A
process running queries holds DuckDB's lock on the file; it publishes the same figures, from
its live queries, to `<database>.status.json` (see Engine._publish_status), and those are
read instead, as long as that process lives and keeps the file fresh; before it has
published, the checkpoint tables are read through its PostgreSQL endpoint if it serves one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import duckdb
from sqlglot import exp

from streamsql.catalog.binding import source_def
from streamsql.catalog.definitions import SourceDef
from streamsql.checkpoint import dead_letters
from streamsql.checkpoint.commit_log import CommitLog
from streamsql.checkpoint.offset_log import OffsetLog
from streamsql.checkpoint.schema import SCHEMA, state_tables
from streamsql.engine.engine import STATUS_HEARTBEAT_SECONDS, source_instance, status_file
from streamsql.errors import OperationalError
from streamsql.format import elapsed_text
from streamsql.plan.relation import inline_views
from streamsql.runtime.progress import timestamp_of
from streamsql.server import read_endpoint
from streamsql.sql import parse_one

STALE_SECONDS = 3 * STATUS_HEARTBEAT_SECONDS  # a status file older than this is left behind

COLUMNS = (
    "sink",
    "running",
    "status",
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
        held = "lock" in str(error).lower() or isinstance(error, duckdb.ConnectionException)
        endpoint = read_endpoint(database) if held else None
        if held and not published.exists() and endpoint is not None:
            return _from_endpoint(endpoint)
        if not held or not published.exists():
            raise OperationalError(f"Cannot read {database}: {error}") from None
        return _published(json.loads(published.read_text()))
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
        return "from the checkpoint: no process has it open", [
            _from_checkpoint(con, *sink) for sink in sinks
        ]
    except duckdb.Error as error:  # tables of a version that did not finish setting them up
        raise OperationalError(f"Cannot read the checkpoint of {database}: {error}") from None
    finally:
        con.close()


def _from_endpoint(endpoint: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Before the process holding the database has published a status (no batch yet), the
    checkpoint tables as its PostgreSQL endpoint serves them (no lag or state rows: those
    need the sources and state of the running process)."""
    import psycopg  # only when another process serves the database

    address = f"{endpoint['host']}:{endpoint['port']}"
    try:
        with psycopg.connect(host=endpoint["host"], port=endpoint["port"]) as conn:
            rows = conn.execute(
                f"""SELECT c.name, c.running, m.batch_id, o.end_offset, m.next_watermark_us,
                       (SELECT count(*) FROM {SCHEMA}.dead_letters d
                        WHERE lower(d.query) = lower(c.name))
                FROM {SCHEMA}.catalog c
                LEFT JOIN (SELECT query, max(batch_id) AS batch_id,
                                  arg_max(next_watermark_us, batch_id) AS next_watermark_us
                           FROM {SCHEMA}.commits GROUP BY query) m
                       ON lower(m.query) = lower(c.name)
                LEFT JOIN {SCHEMA}.offsets o ON o.query = m.query AND o.batch_id = m.batch_id
                WHERE c.kind = 'SINK' ORDER BY c.name"""
            ).fetchall()
    except psycopg.Error as error:
        raise OperationalError(f"Cannot read the endpoint at {address}: {error}") from None
    sinks = [
        dict(
            zip(
                COLUMNS,
                (
                    name,
                    running,
                    "starting: no batch published yet" if running else "stopped",
                    batch,
                    end,
                    None,
                    timestamp_of(wm),
                    None,
                    dead,
                ),
                strict=True,
            )
        )
        for name, running, batch, end, wm, dead in rows
    ]
    return f"live, served by process {endpoint['pid']} at {address}", sinks


def _published(snapshot: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The figures a process published; its queries run only while that process lives and
    keeps the file fresh (it rewrites it every STATUS_HEARTBEAT_SECONDS while they run)."""
    now = time.time()
    seconds = now - snapshot["written_at"]
    age = elapsed_text(seconds)
    pid = snapshot["pid"]
    origin = f"live, published by process {pid} {age} ago"
    fresh = _alive(pid)
    if not fresh:
        origin = f"published by process {pid} {age} ago, which has exited: nothing runs"
    elif seconds > STALE_SECONDS and any(sink["running"] for sink in snapshot["sinks"]):
        fresh = False
        origin = (
            f"published by process {pid} {age} ago and not refreshed since (it is every "
            f"{STATUS_HEARTBEAT_SECONDS:g} s while a query runs): nothing is known to run"
        )
    sinks = []
    for sink in snapshot["sinks"]:
        status = sink["status"]
        running = sink["running"] and fresh
        sinks.append({**sink, "running": running, "status": state_text(status, running, now)})
    return origin, sinks


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        return True
    return True


def state_text(status: dict[str, Any], running: bool, now: float) -> str:
    """'processing batch 7 for 3m12s', 'waiting for next trigger for 4s', 'failed: ...'."""
    if not running and status["is_active"]:
        return "not running: its process exited or stopped publishing"
    state = status["message"]
    if status["batch"] is not None:
        state += f" batch {status['batch']}"
    if status["error"]:
        return f"{state}: {status['error']}"
    if not running:
        return state
    since = dt.datetime.fromisoformat(status["since"]).timestamp()
    return f"{state} for {elapsed_text(now - since)}"


def _from_checkpoint(
    con: duckdb.DuckDBPyConnection, name: str, sql: str, running: bool
) -> dict[str, Any]:
    sources = _sources_of(con, sql)
    names = [s.name for s in sources]
    offset_log = OffsetLog(con, name, names)
    last = CommitLog(con, name, names).latest()
    ends = offset_log.get(last.batch_id).end if last else offset_log.first_start()
    tables = state_tables(con, name)
    state_rows = (
        sum(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0] for table in tables)
        if tables
        else None
    )
    planned = offset_log.planned_ends()
    figures = {
        s.name: _lag(con, s, (ends or {}).get(s.name), [end[s.name] for end in planned])
        for s in sources
    }
    if len(figures) <= 1:
        shown, lag = next(iter(figures.values()), (None, None))
    else:
        shown = {n: f[0] for n, f in figures.items()}
        lag = {n: f[1] for n, f in figures.items()}
    return {
        "sink": name,
        "running": False,  # no process has the database open
        "status": "stopped, resumes when the database is opened" if running else "stopped",
        "last_batch": last.batch_id if last else None,
        "committed_offsets": shown,
        "lag": lag,
        "watermark": timestamp_of(last.next_watermark_us) if last else None,
        "state_rows": state_rows,
        "dead_letters": dead_letters.count(con, name),
    }


def _sources_of(con: duckdb.DuckDBPyConnection, sink_sql: str) -> list[SourceDef]:
    """The definitions of the sources a sink's query reads, through views too."""
    views = {
        name.lower(): parse_one(sql, stored=True).expression.expression
        for name, sql in con.execute(
            f"SELECT name, sql FROM {SCHEMA}.catalog WHERE kind = 'VIEW'"
        ).fetchall()
    }
    query = inline_views(parse_one(sink_sql, stored=True).expression.expression, views)
    names = sorted({table.name.lower() for table in query.find_all(exp.Table)})
    rows = con.execute(
        f"SELECT sql FROM {SCHEMA}.catalog WHERE kind = 'SOURCE' AND list_contains(?, lower(name))",
        [names],
    ).fetchall()
    return [source_def(parse_one(sql, stored=True).expression, sql) for (sql,) in rows]


def _lag(
    con: duckdb.DuckDBPyConnection, definition: SourceDef, end: Any, planned: list[Any]
) -> tuple[Any, Any]:
    """A source's committed offset as the source shows it, and what the source holds beyond
    it, as it tells (per partition for sources that have them, asking the broker)."""
    source = source_instance(con, definition)
    shown = end
    try:
        shown = source.public_offset(end)
        source.recover(planned)
        end = end if end is not None else source.initial_offset()
        source.snapshot()  # what is there now (for Kafka: the broker's end offsets)
        return shown, source.lag_by_partition(end) or source.backlog(end)
    except OperationalError:
        return shown, None  # the broker cannot be asked now
    finally:
        source.close()
