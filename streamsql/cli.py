"""The `streamsql` command: run a .sql file, explain its per-batch SQL, show where a
database's sinks stand, run statements, or open the interactive shell."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import duckdb

import streamsql
from streamsql.engine import Engine
from streamsql.engine.engine import declared_paths
from streamsql.engine.statements import push_query
from streamsql.errors import Error
from streamsql.export import export_spark
from streamsql.format import elapsed_text, format_table
from streamsql.runtime.query import StreamingQuery
from streamsql.server import ServeOptions, Server
from streamsql.sql import Statement, nodes, parse
from streamsql.status import COLUMNS, database_status, state_text

PROGRESS_SECONDS = 2.0  # between a query's progress lines when not on a terminal, at least
LIVE_SECONDS = 0.5  # between redraws of the live lines on a terminal
INTERRUPTED_EXIT = 130  # a second Ctrl-C: the shell's code for a process ended by SIGINT


EXPORT_DIFFERENCES = (
    "export even where the job would differ from streamsql (the compatibility report heads "
    "the script)"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamsql", description=__doc__)
    parser.add_argument("--version", action="version", version=f"streamsql {_version()}")
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
    run.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics at http://HOST:PORT/metrics while it runs (0: a free port)",
    )
    run.add_argument(
        "--metrics-host", default="127.0.0.1", help="address of --metrics-port (default 127.0.0.1)"
    )
    run.add_argument(
        "--serve",
        metavar="[HOST:]PORT",
        help="serve the database over the PostgreSQL protocol while the file runs (psql, "
        "psycopg, JDBC connect; 127.0.0.1 unless a host is given)",
    )
    _serving_arguments(run)
    serve = commands.add_parser(
        "serve", help="open a database (its sinks resume) and serve it over the PostgreSQL protocol"
    )
    serve.add_argument("db")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=5432, help="port (default 5432; 0: any free)")
    _serving_arguments(serve)
    explain = commands.add_parser("explain", help="print each query's plan and per-batch SQL")
    explain.add_argument("file", type=Path)
    export = commands.add_parser("export", help="write a .sql file as a PySpark streaming job")
    export.add_argument("file", type=Path)
    export.add_argument("--target", choices=["spark"], required=True)
    export.add_argument("-o", dest="output", type=Path, help="the job's file (default: stdout)")
    export.add_argument("--allow-differences", action="store_true", help=EXPORT_DIFFERENCES)
    export.add_argument("--root", help="directory of checkpoints, tables and dead letters")
    status = commands.add_parser("status", help="where each sink of a database stands")
    status.add_argument("db")
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    sql = commands.add_parser("sql", help="run statements on a database, print their results")
    sql.add_argument("db", help="engine database file (':memory:' for none)")
    sql.add_argument("statements", help="SQL statements, separated by ';'")
    shell = commands.add_parser("shell", help="the interactive SQL shell")
    shell.add_argument("db", nargs="?", help="engine database file (default: in memory)")
    shell.add_argument(
        "-c", dest="statements", help="run these statements (separated by ';') and exit"
    )
    shell.add_argument(
        "--restricted",
        action="store_true",
        help="DuckDB reaches only the directories the database's sources and sinks name",
    )
    args = parser.parse_args(argv)
    if args.command in ("shell", "sql") and args.statements is not None:
        restricted = getattr(args, "restricted", False)
        return run_statements(args.db or ":memory:", args.statements, restricted)
    if args.command == "shell":
        from streamsql.shell import main as shell_main  # prompt-toolkit, only when asked

        return shell_main(args.db, restricted=args.restricted)
    if args.command == "serve":
        try:
            options = ServeOptions.parse(
                f"{args.host}:{args.port}", args.password_env, args.allow_writes
            )
            return serve_database(args.db, options, sys.stderr)
        except Error as error:
            print(f"Error: {error}", file=sys.stderr)
            return 1
    if args.command == "status":
        try:
            return print_status(args.db, sys.stdout, as_json=args.json)
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
        if args.command == "export":
            job_file = args.output.name if args.output else "job.py"
            job = export_spark(sql, str(args.file), args.root, args.allow_differences, job_file)
            if args.output is None:
                sys.stdout.write(job.script)
                return 0
            try:
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(job.script)
            except OSError as error:
                print(f"Error: cannot write {args.output}: {error.strerror}", file=sys.stderr)
                return 2
            return 0
        serving = (
            ServeOptions.parse(args.serve, args.password_env, args.allow_writes)
            if args.serve
            else None
        )
        metrics = None if args.metrics_port is None else (args.metrics_host, args.metrics_port)
        return run_file(
            sql, args.db, args.trigger, sys.stdout, sys.stderr, args.restricted, serving, metrics
        )
    except Error as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


def _serving_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-env",
        metavar="VAR",
        help="clients must give the password in this environment variable (SCRAM-SHA-256); "
        "required to bind an address other than 127.0.0.1",
    )
    parser.add_argument(
        "--allow-writes",
        action="store_true",
        help="clients may change the database (DML, DDL, CREATE SINK); read-only by default",
    )


def _version() -> str:
    """The installed distribution's version; the package's own when run from a checkout
    that is not installed."""
    try:
        return importlib.metadata.version("streamsql")
    except importlib.metadata.PackageNotFoundError:
        return streamsql.__version__


def run_statements(database: str, sql: str, restricted: bool = False) -> int:
    """`streamsql sql DB "SQL"` and `streamsql shell DB -c "SQL"`: each statement in turn,
    its result printed as the shell prints it; the first that fails stops the rest, its
    error on stderr, exit code 1. Values and rows are printed whole."""
    from prompt_toolkit.input import DummyInput  # no terminal is read or drawn on
    from prompt_toolkit.output import DummyOutput

    from streamsql.shell.repl import Shell

    try:
        con = streamsql.connect(database, restricted=restricted)
    except (Error, duckdb.Error) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    try:
        shell = Shell(con, input=DummyInput(), output=DummyOutput(), out=sys.stdout)
        shell.settings.max_width = shell.settings.max_rows = 0  # for scripts: values whole
        shell.run_sql(sql)
        return 0
    except (Error, duckdb.Error) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return INTERRUPTED_EXIT
    finally:
        con.close()


def run_file(
    sql: str,
    db: str,
    trigger: str | None,
    out: TextIO,
    err: TextIO,
    restricted: bool = False,
    serving: ServeOptions | None = None,
    metrics: tuple[str, int] | None = None,
) -> int:
    """Run every statement; then wait for the file's queries (until done, or Ctrl-C).
    `restricted`: DuckDB may reach only the directories the file's sources and sinks name;
    `serving`: where to serve the database over the PostgreSQL protocol meanwhile;
    `metrics`: (host, port) to serve Prometheus metrics on."""
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
        if metrics is not None:
            host, port = metrics
            port = con.serve_metrics(port, host)
            print(f"Metrics at http://{host}:{port}/metrics", file=err, flush=True)
        with contextlib.ExitStack() as stack:
            if serving is not None:
                server = stack.enter_context(Server(con, serving))
                print(f"Serving {db} on {server.url}", file=err, flush=True)
            with contextlib.redirect_stdout(out):  # console sinks print where the caller reads
                return _run_statements(con, sql, interrupted, out, err)
    finally:
        con.close()
        signal.signal(signal.SIGINT, previous)


def serve_database(db: str, serving: ServeOptions, err: TextIO) -> int:
    """Open `db` (its sinks resume) and serve it until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    con = streamsql.connect(db)
    try:
        with Server(con, serving) as server:
            print(f"Serving {db} on {server.url}; Ctrl-C stops", file=err, flush=True)
            stop.wait()
        return 0
    finally:
        con.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_statements(
    con: streamsql.Connection, sql: str, interrupted: threading.Event, out: TextIO, err: TextIO
) -> int:
    cursor = con.cursor()
    for statement in parse(sql):
        cursor.execute_statement(statement)
        if cursor.description:
            _print_rows(cursor, interrupted, out)
    queries = list(con.engine.queries.values())  # also those done already (available_now)
    _wait(queries, interrupted, err)
    for query in queries:
        err.write(_summary(query, con.engine.database) + "\n")
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


def _wait(queries: list[StreamingQuery], interrupted: threading.Event, err: TextIO) -> None:
    """Until the queries end or Ctrl-C: a live line per query on a terminal, redrawn in
    place; elsewhere (a log, a pipe) a query's line when its state changed or it committed
    a batch since its last line, at most every PROGRESS_SECONDS; the last lines at the end."""
    live = err.isatty()
    shown = 0
    last_report = time.monotonic()
    printed: dict[str, tuple[tuple[Any, ...], float]] = {}  # per query: what, and when
    while any(q.is_active for q in queries) and not interrupted.is_set():
        time.sleep(0.05)
        now = time.monotonic()
        if live:
            if now - last_report >= LIVE_SECONDS:
                last_report = now
                shown = _report(queries, err, shown)
            continue
        for query in queries:
            seen = _seen(query)
            before, at = printed.get(query.name, ((None,), float("-inf")))
            if seen != before and now - at >= PROGRESS_SECONDS:
                printed[query.name] = (seen, now)
                err.write(_progress_line(query) + "\n")
                err.flush()
    if interrupted.is_set():
        print(
            "Interrupted: stopping after the batches in flight commit (Ctrl-C again to exit now)",
            file=err,
            flush=True,
        )
        shown = 0
    for query in queries:
        query.stop()  # after the batch in flight commits
    _report(queries, err, shown if live else 0)


def _seen(query: StreamingQuery) -> tuple[Any, ...]:
    """What a line on a pipe reports: a change of any of these is worth a line."""
    progress = query.last_progress
    return (query.status["message"], query.status["batch"], progress and progress.batch_id)


def _report(queries: list[StreamingQuery], err: TextIO, shown: int) -> int:
    """Print a line per query, over the `shown` lines printed last time."""
    if shown:
        err.write(f"\x1b[{shown}F")  # back to the first of them
    for query in queries:
        err.write(("\x1b[2K" if shown else "") + _progress_line(query) + "\n")
    err.flush()
    return len(queries)


def _progress_line(query: StreamingQuery) -> str:
    """The query's state, then its last batch and the totals of this run."""
    state = state_text(query.status, query.is_active, time.time())
    progress = query.last_progress
    if progress is None:
        return f"{query.name}: {state}, no batch yet"
    totals = query.totals
    lag = progress.sources[0]["lag"] if progress.sources else None
    return (
        f"{query.name}: {state}, last batch {progress.batch_id}, "
        f"{totals.input_rows:,} rows in, {totals.output_rows:,} out, "
        f"{totals.late_rows:,} late, {_dead_letters(totals.dead_letters)} so far, "
        f"{progress.processed_rows_per_second:,.0f} rows/s, "
        f"{progress.duration_ms['total']:.1f} ms, watermark {progress.next_watermark or '-'}, "
        f"lag {'-' if lag is None else lag}, state rows {progress.state_rows}"
    )


def _dead_letters(count: int) -> str:
    return f"{count:,} dead letter{'' if count == 1 else 's'}"


def _summary(query: StreamingQuery, database: str) -> str:
    """The totals over the whole run, and where its dead letters are kept."""
    totals = query.totals
    line = (
        f"{query.name}: in all, {totals.batches:,} batch{'' if totals.batches == 1 else 'es'} "
        f"in {elapsed_text(totals.elapsed)}: {totals.input_rows:,} rows in, "
        f"{totals.output_rows:,} out, {totals.late_rows:,} late, "
        f"{_dead_letters(totals.dead_letters)}"
    )
    if not totals.dead_letters:
        return line
    if all(source.on_error == "skip" for source in query.execution.sources.values()):
        return line + " (skipped: the source has on_error = 'skip')"
    if database == ":memory:":
        return line + " (kept in the in-memory database only: run with --db to keep them)"
    name = query.name.replace("'", "''")
    return (
        f"{line}: see them with streamsql sql {shlex.quote(database)} "
        f"\"SELECT * FROM _streamsql.dead_letters WHERE query = '{name}'\""
    )


def print_status(database: str, out: TextIO, *, as_json: bool = False) -> int:
    """Per sink: its state, last batch, committed offsets, lag, watermark, state rows, dead
    letters. Values are shown whole: a table too wide for the terminal becomes one
    `column = value` block per sink."""
    origin, sinks = database_status(database)
    if as_json:
        document = {"database": database, "origin": origin, "sinks": sinks}
        out.write(json.dumps(document, indent=2, default=str) + "\n")
        return 0
    out.write(f"{database} ({origin})\n")
    rows = [
        tuple(
            json.dumps(sink[column]) if isinstance(sink[column], dict | list) else sink[column]
            for column in COLUMNS
        )
        for sink in sinks
    ]
    text = format_table(list(COLUMNS), rows, max_width=0)
    columns = shutil.get_terminal_size().columns
    if out.isatty() and max(map(len, text.splitlines())) > columns:
        from streamsql.shell.render import Settings, line

        text = line(COLUMNS, [""] * len(COLUMNS), rows, Settings())
    out.write(text + "\n")
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
            elif kind == "SINK" or engine.handler(statement) is push_query:
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
