"""The `streamsql` command: run a .sql file, explain its per-batch SQL, show where a
database's sinks stand, or open the interactive shell."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import streamsql
from streamsql.engine import Engine, declared_paths
from streamsql.errors import Error
from streamsql.format import format_table
from streamsql.runtime.query import StreamingQuery
from streamsql.sql import Statement, nodes, parse
from streamsql.status import COLUMNS, database_status

PROGRESS_SECONDS = 2.0  # between progress lines when not on a terminal
LIVE_SECONDS = 0.5  # between redraws of the live lines on a terminal
INTERRUPTED_EXIT = 130  # a second Ctrl-C: the shell's code for a process ended by SIGINT


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamsql", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a .sql file: create its sources, start its sinks")
    run.add_argument("file", type=Path)
    run.add_argument("--db", default=":memory:", help="engine database file (default: in memory)")
    run.add_argument(
        "--trigger",
        help="trigger of every query: '<n> seconds', 'available_now' (to completion), 'once'",
    )
    run.add_argument(
        "--restricted",
        action="store_true",
        help="run a file that is not trusted: DuckDB reaches only the directories its sources "
        "and sinks name; ATTACH, INSTALL, LOAD, PRAGMA, SET and imported callbacks are refused",
    )
    explain = commands.add_parser("explain", help="print each query's plan and per-batch SQL")
    explain.add_argument("file", type=Path)
    status = commands.add_parser("status", help="where each sink of a database stands")
    status.add_argument("db")
    shell = commands.add_parser("shell", help="the interactive SQL shell")
    shell.add_argument("db", nargs="?", help="engine database file (default: in memory)")
    shell.add_argument(
        "--restricted",
        action="store_true",
        help="DuckDB reaches only the directories the database's sources and sinks name",
    )
    args = parser.parse_args(argv)
    if args.command == "shell":
        from streamsql.shell import main as shell_main  # prompt-toolkit, only when asked

        return shell_main(args.db, restricted=args.restricted)
    if args.command == "status":
        try:
            return print_status(args.db, sys.stdout)
        except Error as error:
            print(f"Error: {error}", file=sys.stderr)
            return 1
    try:
        sql = args.file.read_text()
    except OSError as error:
        print(f"Error: cannot read {args.file}: {error.strerror}", file=sys.stderr)
        return 2
    try:
        if args.command == "explain":
            return explain_file(sql, sys.stdout)
        return run_file(sql, args.db, args.trigger, sys.stdout, sys.stderr, args.restricted)
    except Error as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


def run_file(
    sql: str, db: str, trigger: str | None, out: TextIO, err: TextIO, restricted: bool = False
) -> int:
    """Run every statement; then wait for the file's queries (until done, or Ctrl-C).
    `restricted`: DuckDB may reach only the directories the file's sources and sinks name."""
    allowed = declared_paths(parse(sql)) if restricted else []
    interrupted = threading.Event()

    def on_interrupt(*_: object) -> None:
        """The first Ctrl-C asks for a clean stop; a second one exits at once (what the
        batches in flight did not commit is replayed when their sinks resume)."""
        if interrupted.is_set():
            print("Interrupted again: exiting now", file=err, flush=True)
            os._exit(INTERRUPTED_EXIT)
        interrupted.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    con = streamsql.connect(db, trigger=trigger, restricted=restricted, allowed_directories=allowed)
    try:
        with contextlib.redirect_stdout(out):  # console sinks print where the caller reads
            return _run_statements(con, sql, interrupted, out, err)
    finally:
        con.close()
        signal.signal(signal.SIGINT, previous)


def _run_statements(
    con: streamsql.Connection, sql: str, interrupted: threading.Event, out: TextIO, err: TextIO
) -> int:
    cursor = con.cursor()
    for statement in parse(sql):
        cursor.execute_statement(statement)
        if cursor.description:
            _print_rows(cursor, interrupted, out)
    _wait(con.engine, interrupted, err)
    failed = [q for q in con.engine.queries.values() if q.exception is not None]
    for query in failed:
        print(f"Error: {query.error}", file=err)
    return 1 if failed else 0


def _print_rows(cursor: streamsql.Cursor, interrupted: threading.Event, out: TextIO) -> None:
    names = [column[0] for column in cursor.description]
    if not cursor.streaming:
        out.write(format_table(names, cursor.fetchall()) + "\n")
        return
    cursor.stream_timeout = 0.2  # a push query: print rows as batches emit them
    while not interrupted.is_set() and cursor.streaming:
        rows = cursor.fetchmany(1000)
        if rows:
            out.write(format_table(names, rows) + "\n")
            out.flush()


def _wait(engine: Engine, interrupted: threading.Event, err: TextIO) -> None:
    """Until the queries end or Ctrl-C: a live line per query on a terminal, redrawn in
    place; elsewhere (a log, a pipe) plain lines every few seconds."""
    queries = [q for q in engine.queries.values() if q.is_active]
    live = err.isatty()
    every = LIVE_SECONDS if live else PROGRESS_SECONDS
    shown = 0
    last_report = time.monotonic()
    while any(q.is_active for q in queries) and not interrupted.is_set():
        time.sleep(0.05)
        if time.monotonic() - last_report >= every:
            last_report = time.monotonic()
            printed = _report(queries, err, shown)
            shown = printed if live else 0  # only a terminal redraws lines in place
    if interrupted.is_set():
        print(
            "Interrupted: stopping after the batches in flight commit (Ctrl-C again to exit now)",
            file=err,
            flush=True,
        )
        shown = 0
    for query in queries:
        query.stop()  # after the batch in flight commits
    _report(queries, err, shown)


def _report(queries: list[StreamingQuery], err: TextIO, shown: int) -> int:
    """Print a line per query, over the `shown` lines printed last time."""
    if shown:
        err.write(f"\x1b[{shown}F")  # back to the first of them
    for query in queries:
        err.write(("\x1b[2K" if shown else "") + _progress_line(query) + "\n")
    err.flush()
    return len(queries)


def _progress_line(query: StreamingQuery) -> str:
    progress = query.last_progress
    if progress is None:
        return f"{query.name}: {query.status['message']}, no batch yet"
    lag = progress.sources[0]["lag"] if progress.sources else None
    return (
        f"{query.name}: {query.status['message']}, batch {progress.batch_id}, "
        f"{progress.num_input_rows} rows in, {progress.num_output_rows} out, "
        f"{progress.processed_rows_per_second:,.0f} rows/s, "
        f"{progress.duration_ms['total']:.1f} ms, watermark {progress.next_watermark or '-'}, "
        f"lag {'-' if lag is None else lag}, state rows {progress.state_rows}"
    )


def print_status(database: str, out: TextIO) -> int:
    """Per sink: last batch, committed offsets, lag, watermark, state rows, dead letters."""
    origin, sinks = database_status(database)
    out.write(f"{database} ({origin})\n")
    rows = [
        tuple(
            json.dumps(sink[column]) if isinstance(sink[column], dict | list) else sink[column]
            for column in COLUMNS
        )
        for sink in sinks
    ]
    out.write(format_table(list(COLUMNS), rows) + "\n")
    return 0


def explain_file(sql: str, out: TextIO) -> int:
    """Create the file's sources in a scratch engine and explain every streaming query."""
    engine = Engine(":memory:")
    con = streamsql.Connection(engine)
    try:
        cursor = con.cursor()
        for statement in parse(sql):
            node = statement.expression
            kind = getattr(node, "kind", None)
            if kind == "SOURCE":
                cursor.execute_statement(statement)
            elif kind == "SINK" or engine.handler(statement) == engine.push_query:
                label = f"sink {node.this.name}" if kind == "SINK" else "push query"
                out.write(f"-- {label} (line {statement.line})\n")
                explain = Statement(nodes.Explain(this=node), statement.text, statement.line)
                for (line,) in cursor.execute_statement(explain).fetchall():
                    out.write(line + "\n")
                out.write("\n")
        return 0
    finally:
        con.close()


if __name__ == "__main__":
    sys.exit(main())
