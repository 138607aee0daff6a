"""The `streamsql` command: run a .sql file, or explain the per-batch SQL of its queries."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import streamsql
from streamsql.engine import Engine
from streamsql.errors import Error
from streamsql.format import format_table
from streamsql.runtime.query import StreamingQuery
from streamsql.sql import parse

PROGRESS_SECONDS = 2.0


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
    explain = commands.add_parser("explain", help="print each query's plan and per-batch SQL")
    explain.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    try:
        sql = args.file.read_text()
    except OSError as error:
        print(f"Error: cannot read {args.file}: {error.strerror}", file=sys.stderr)
        return 2
    try:
        if args.command == "explain":
            return explain_file(sql, sys.stdout)
        return run_file(sql, args.db, args.trigger, sys.stdout, sys.stderr)
    except Error as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


def run_file(sql: str, db: str, trigger: str | None, out: TextIO, err: TextIO) -> int:
    """Run every statement; then wait for the file's queries (until done, or Ctrl-C)."""
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    con = streamsql.connect(db, trigger=trigger)
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
        cursor.execute(statement.text)
        if cursor.description:
            _print_rows(cursor, interrupted, out)
    _wait(con.engine, interrupted, err)
    failed = [q for q in con.engine.queries.values() if q.exception is not None]
    for query in failed:
        print(f"Error: query {query.name} failed: {query.exception}", file=err)
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
    queries = [q for q in engine.queries.values() if q.is_active]
    last_report = time.monotonic()
    while any(q.is_active for q in queries) and not interrupted.is_set():
        time.sleep(0.05)
        if time.monotonic() - last_report >= PROGRESS_SECONDS:
            last_report = time.monotonic()
            for query in queries:
                print(_progress_line(query), file=err, flush=True)
    for query in queries:
        query.stop()  # after the batch in flight commits
    for query in queries:
        print(_progress_line(query), file=err, flush=True)


def _progress_line(query: StreamingQuery) -> str:
    progress = query.last_progress
    if progress is None:
        return f"{query.name}: {query.status['message']}, no batch yet"
    return (
        f"{query.name}: {query.status['message']}, batch {progress.batch_id}, "
        f"{progress.num_input_rows} rows in, {progress.num_output_rows} out, "
        f"{progress.duration_ms['total']:.1f} ms, watermark {progress.next_watermark or '-'}, "
        f"state rows {progress.state_rows}"
    )


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
                cursor.execute(statement.text)
            elif kind == "SINK" or engine.handler(statement) == engine.push_query:
                label = f"sink {node.this.name}" if kind == "SINK" else "push query"
                out.write(f"-- {label} (line {statement.line})\n")
                for (line,) in cursor.execute(f"EXPLAIN {statement.text}").fetchall():
                    out.write(line + "\n")
                out.write("\n")
        return 0
    finally:
        con.close()


if __name__ == "__main__":
    sys.exit(main())
