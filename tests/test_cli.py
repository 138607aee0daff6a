"""The `streamsql` command, run as users run it: in a subprocess."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from streamsql import cli, connect

ROOT = Path(__file__).resolve().parent.parent


def streamsql(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamsql.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_run_prints_a_push_query_and_exits_zero() -> None:
    result = streamsql("run", "queries/stateless_filter.sql", "--trigger", "available_now")
    assert result.returncode == 0, result.stderr
    assert "event_time" in result.stdout and "user_id" in result.stdout


def test_run_writes_a_sink_table_into_the_database(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    result = streamsql(
        "run", "queries/tumbling_windows.sql", "--db", str(db), "--trigger", "available_now"
    )
    assert result.returncode == 0, result.stderr
    assert "clicks_per_window: stopped" in result.stderr
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) > 0 FROM clicks_per_window").fetchall() == [(True,)]
    con.close()


def test_explain_prints_the_per_batch_sql() -> None:
    result = streamsql("explain", "queries/tumbling_windows.sql")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "-- sink clicks_per_window (line" in out
    assert "windowed aggregation over source events, EMIT FINAL" in out
    assert "INSERT INTO _streamsql" in out and "DELETE FROM _streamsql" in out


def test_bad_sql_exits_non_zero_with_the_position(tmp_path: Path) -> None:
    script = tmp_path / "bad.sql"
    script.write_text(
        "CREATE SOURCE s (a INT) WITH (connector = 'memory');\nSELECT a FROM s EMIT NOW;\n"
    )
    result = streamsql("run", str(script), "--trigger", "available_now")
    assert result.returncode == 1
    assert "Error: Syntax error at line 2, column 22" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failing_query_exits_non_zero(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"a": 1}\n{"a": "x"}\n')
    script = tmp_path / "fail.sql"
    script.write_text(
        f"CREATE SOURCE s (a INT) WITH (connector = 'files', path = '{data}', on_error = 'fail');\n"
        "CREATE SINK out WITH (connector = 'duckdb') AS SELECT a FROM s;\n"
    )
    result = streamsql("run", str(script), "--trigger", "available_now")
    assert result.returncode == 1
    assert "a.jsonl offset 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_is_reported() -> None:
    result = streamsql("run", "no/such/file.sql")
    assert result.returncode == 2
    assert "cannot read no/such/file.sql" in result.stderr


def _status_rows(text: str) -> dict[str, list[str]]:
    """The status table's rows by sink name, cells stripped."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells and cells[0] not in ("", "sink"):
            rows[cells[0]] = cells
    return rows


def test_status_reads_a_database_no_process_has_open(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    done = streamsql(
        "run", "queries/tumbling_windows.sql", "--db", str(db), "--trigger", "available_now"
    )
    assert done.returncode == 0, done.stderr
    result = streamsql("status", str(db))
    assert result.returncode == 0, result.stderr
    assert "(from the checkpoint: no process has it open)" in result.stdout
    con = duckdb.connect(str(db), read_only=True)
    (state_rows,) = con.execute(
        'SELECT count(*) FROM _streamsql."state_clicks_per_window"'
    ).fetchall()[0]
    (last_batch, watermark) = con.execute(
        "SELECT batch_id, next_watermark_us FROM _streamsql.commits ORDER BY batch_id DESC LIMIT 1"
    ).fetchall()[0]
    con.close()
    files = sorted(p.name for p in (ROOT / "queries/data/events").iterdir())
    cells = _status_rows(result.stdout)["clicks_per_window"]
    # no process runs it now; the next one to open the database resumes it
    assert cells[1:4] == ["False", "stopped, resumes when the database is opened", str(last_batch)]
    assert files[-1] in cells[4]  # the committed offsets: the last file read
    assert cells[5] == "0"  # lag: no file left to read
    assert cells[7:] == [str(state_rows), "0"]
    assert cells[6].startswith("2024-01-01T") and watermark > 0


def test_status_of_a_file_that_is_not_a_streamsql_database_exits_1_with_a_message(
    tmp_path: Path,
) -> None:
    plain = tmp_path / "plain.db"
    con = duckdb.connect(str(plain))
    con.execute("CREATE TABLE t AS SELECT 1 AS a")
    con.close()
    # an engine killed while it was creating its tables: the checkpoint's, not the catalog
    half = tmp_path / "half.db"
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys, duckdb\n"
            "from streamsql.checkpoint.schema import create_tables\n"
            "create_tables(duckdb.connect(sys.argv[1]))\n"
            "os.kill(os.getpid(), 9)",
            str(half),
        ],
        cwd=ROOT,
    )
    assert killed.returncode == -9
    for db in (plain, half):
        result = streamsql("status", str(db))
        assert result.returncode == 1, result.stdout
        assert result.stderr == (
            f"Error: {db} is not a streamsql database: it has no _streamsql.catalog (a plain "
            "DuckDB file, or one whose engine was stopped before it was set up; "
            "streamsql.connect sets it up)\n"
        )


def test_status_of_a_running_process_and_ctrl_c_stops_it_with_the_checkpoint_committed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "app.db"
    command = ["run", "queries/tumbling_windows.sql", "--db", str(db), "--trigger", "1 seconds"]
    running = subprocess.Popen(
        [sys.executable, "-m", "streamsql.cli", *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        published = tmp_path / "app.db.status.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and '"last_batch": 0' not in (
            published.read_text() if published.exists() else ""
        ):
            time.sleep(0.1)
        live = streamsql("status", str(db))
        assert live.returncode == 0, live.stderr
        assert f"published by process {running.pid}" in live.stdout
        cells = _status_rows(live.stdout)["clicks_per_window"]
        assert cells[1] == "True" and int(cells[3]) >= 0 and int(cells[5]) >= 0
        assert cells[2].startswith(("waiting for next trigger for ", "processing batch "))
        running.send_signal(signal.SIGINT)
        _, err = running.communicate(timeout=60)
    finally:
        running.kill()
    assert running.returncode == 0, err
    assert "Interrupted: stopping after the batches in flight commit" in err
    *_, last_line, summary = err.strip().splitlines()
    assert last_line.startswith("clicks_per_window: stopped, last batch ")
    assert summary.startswith("clicks_per_window: in all, ")
    stopped_at = int(last_line.split("batch ")[1].split(",")[0])
    con = duckdb.connect(str(db), read_only=True)
    committed = con.execute("SELECT max(batch_id) FROM _streamsql.commits").fetchall()[0][0]
    planned = con.execute("SELECT max(batch_id) FROM _streamsql.offsets").fetchall()[0][0]
    con.close()
    assert committed == planned == stopped_at  # nothing half done
    assert not (tmp_path / "app.db.status.json").exists()


def test_a_second_ctrl_c_exits_at_once_while_a_batch_is_stuck(tmp_path: Path) -> None:
    from streamsql.testing.broker import Broker

    with Broker() as broker:
        # the README's SASL_SSL sink against a plaintext listener: batch 0 waits the whole
        # timeout for a TLS handshake the broker never answers
        script = tmp_path / "stuck.sql"
        script.write_text(
            "CREATE SOURCE ev (k VARCHAR) WITH (connector = 'memory');\n"
            "CREATE SINK out WITH (connector = 'kafka', "
            f"bootstrap_servers = '{broker.bootstrap_servers}', topic = 't', "
            "timeout = '120 seconds', kafka.security_protocol = 'SASL_SSL', "
            "kafka.sasl_mechanism = 'PLAIN', kafka.sasl_plain_username = 'app', "
            "kafka.sasl_plain_password = 'secret') AS SELECT k FROM ev;\n"
            "INSERT INTO ev VALUES ('a');\n"
        )
        running = subprocess.Popen(
            [sys.executable, "-m", "streamsql.cli", "run", str(script), "--db", ":memory:"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(3)  # batch 0 is connecting
            running.send_signal(signal.SIGINT)
            time.sleep(1.5)
            assert running.poll() is None  # the first Ctrl-C waits for the batch in flight
            running.send_signal(signal.SIGINT)
            began = time.monotonic()
            _, err = running.communicate(timeout=30)
            exited_after = time.monotonic() - began
        finally:
            running.kill()
    assert running.returncode == 130, err
    assert exited_after < 5
    assert "Interrupted: stopping after the batches in flight commit (Ctrl-C again" in err
    assert "Interrupted again: exiting now" in err


def test_progress_lines_are_redrawn_in_place_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    class Query:
        name, is_active, last_progress = "q", False, None
        status = {"message": "stopped", "is_active": False, "batch": None, "error": None}

    terminal = Terminal()
    shown = cli._report([Query(), Query()], terminal, 0)
    cli._report([Query(), Query()], terminal, shown)
    first, second = terminal.getvalue().split("\x1b[2F")
    assert first == "q: stopped, no batch yet\n" * 2
    assert second == "\x1b[2Kq: stopped, no batch yet\n" * 2


def test_shell_opens_a_database_runs_statements_and_quits(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    result = subprocess.run(
        [sys.executable, "-m", "streamsql.cli", "shell", str(db)],
        input="CREATE TABLE t AS SELECT 42 AS answer;\nSELECT answer FROM t;\n.quit\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "STREAMSQL_HISTORY": str(tmp_path / "history")},
    )
    assert result.returncode == 0, result.stderr
    assert f"on {db}" in result.stdout and "42" in result.stdout
    assert "SELECT answer FROM t;" in (tmp_path / "history").read_text()


def test_progress_lines_on_a_pipe_are_plain(tmp_path: Path) -> None:
    """No terminal control codes in a log: every line stands on its own, also the last
    ones, printed when the queries end by themselves."""
    data = tmp_path / "in"
    data.mkdir()
    for i in range(200):
        (data / f"{i:03d}.json").write_text(f'{{"k": "k{i % 7}", "v": {i}}}\n')
    job = tmp_path / "job.sql"
    job.write_text(
        f"CREATE SOURCE s (k VARCHAR, v BIGINT) WITH (connector = 'files', path = '{data}', "
        "max_files_per_trigger = 1);\n"
        "CREATE SINK totals AS SELECT k, sum(v) AS total FROM s GROUP BY k EMIT CHANGES;\n"
        "CREATE SINK copies WITH (connector = 'parquet', path = 'out') AS SELECT * FROM s;\n"
    )
    db = tmp_path / "app.db"
    result = streamsql("run", str(job), "--db", str(db), "--trigger", "available_now", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) >= 4, result.stderr  # a report (every two seconds) and the last lines
    assert all(line.startswith(("totals: ", "copies: ")) for line in lines), result.stderr
    assert "\x1b" not in result.stderr


def test_status_shows_a_watermark_out_of_range_instead_of_a_traceback(tmp_path: Path) -> None:
    """A checkpoint poisoned by an older version (a watermark near int64 max)."""
    db = tmp_path / "app.db"
    done = streamsql(
        "run", "queries/tumbling_windows.sql", "--db", str(db), "--trigger", "available_now"
    )
    assert done.returncode == 0, done.stderr
    con = duckdb.connect(str(db))
    con.execute("UPDATE _streamsql.commits SET next_watermark_us = 9223372036854000000")
    con.close()
    result = streamsql("status", str(db))
    assert result.returncode == 0, result.stderr
    assert "│ +294247-01-10T04:00:54.000000Z │" in result.stdout  # beyond year 9999, whole


def _files_job(tmp_path: Path, files: list[str], options: str = "") -> Path:
    """A job reading JSON-lines files (one batch each) of `{"k": ..., "v": ...}` into a
    duckdb sink `out`."""
    data = tmp_path / "in"
    data.mkdir(parents=True)
    for i, text in enumerate(files):
        (data / f"{i:03d}.json").write_text(text)
    job = tmp_path / "job.sql"
    job.write_text(
        f"CREATE SOURCE s (k VARCHAR, v BIGINT) WITH (connector = 'files', path = '{data}', "
        f"max_files_per_trigger = 1{options});\n"
        "CREATE SINK out AS SELECT k, v FROM s WHERE v > 1;\n"
    )
    return job


def test_run_ends_with_totals_over_the_run_and_where_its_dead_letters_are(
    tmp_path: Path,
) -> None:
    """Item 18: the summary sums every batch (not the last one's counts), and dead letters
    are counted in the live lines and in the summary, with the query that shows them."""
    files = [
        '{"k": "a", "v": 1}\n{"k": "b", "v": 2}\n',
        '{"k": "c", "v": "x"}\n{"k": "d", "v": 4}\n',
    ]
    job = _files_job(tmp_path, [*files, '{"k": "e", "v": 5}\n'])
    db = tmp_path / "app.db"
    result = streamsql("run", str(job), "--db", str(db), "--trigger", "available_now")
    assert result.returncode == 0, result.stderr
    *_, last_line, summary = result.stderr.strip().splitlines()
    assert last_line.startswith("out: stopped, last batch 2, 4 rows in, 3 out, 0 late, ")
    assert "1 dead letter so far" in last_line
    query = "SELECT * FROM _streamsql.dead_letters WHERE query = 'out'"
    assert summary.startswith("out: in all, 3 batches in ")
    assert summary.endswith(
        f': 4 rows in, 3 out, 0 late, 1 dead letter: see them with streamsql sql {db} "{query}"'
    )
    shown = streamsql("sql", str(db), "SELECT decode(raw) AS raw FROM _streamsql.dead_letters")
    assert shown.returncode == 0, shown.stderr
    assert '{"k": "c", "v": "x"}' in shown.stdout and "1 row" in shown.stdout


def test_run_of_an_in_memory_database_says_its_dead_letters_are_not_kept(tmp_path: Path) -> None:
    job = _files_job(tmp_path, ['{"k": "c", "v": "x"}\n'])
    result = streamsql("run", str(job), "--trigger", "available_now")
    assert result.returncode == 0, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith("1 dead letter (kept in the in-memory database only: run with --db to keep them)")
    )
    skipped = _files_job(tmp_path / "skip", ['{"k": "c", "v": "x"}\n'], ", on_error = 'skip'")
    result = streamsql("run", str(skipped), "--trigger", "available_now")
    assert result.stderr.strip().endswith("(skipped: the source has on_error = 'skip')")


def test_a_files_source_whose_path_does_not_exist_fails_when_a_query_starts(
    tmp_path: Path,
) -> None:
    """Item 18: as Spark's "Path does not exist" when the stream is defined; CREATE SOURCE
    itself does not check (a source may be declared before its directory is made)."""
    job = _files_job(tmp_path, [])
    missing = tmp_path / "in"
    missing.rmdir()
    result = streamsql("run", str(job), "--trigger", "available_now")
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: Source s: path does not exist: {missing} (a files source reads the files "
        "of a directory)\n"
    )
    con = connect(":memory:")
    con.execute(f"CREATE SOURCE s (k VARCHAR) WITH (connector = 'files', path = '{missing}')")
    missing.mkdir()  # made after the source, before the query: fine
    (missing / "a.json").write_text('{"k": "a"}\n')
    con.execute("CREATE SINK out AS SELECT k FROM s")
    con.query("out").process_all_available(timeout=30)
    assert con.execute("SELECT k FROM out").fetchall() == [("a",)]
    con.close()


def test_progress_on_a_pipe_is_printed_only_when_something_changed(tmp_path: Path) -> None:
    """Item 18: an idle query prints no line every two seconds; its state at the end does."""
    job = _files_job(tmp_path, ['{"k": "a", "v": 2}\n'])
    running = subprocess.Popen(
        [sys.executable, "-m", "streamsql.cli", "run", str(job)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(9)  # batch 0, then idle: the old loop printed a line every 2 s
        running.send_signal(signal.SIGINT)
        _, err = running.communicate(timeout=60)
    finally:
        running.kill()
    before, after = err.split("Interrupted: stopping after the batches in flight commit")
    lines = before.strip().splitlines()
    assert 1 <= len(lines) <= 3, err  # e.g. initializing, processing batch 0, waiting
    what = [re.sub(r" for [\d.hms]+,", ",", line) for line in lines]  # the time in a state
    assert len(set(what)) == len(what), err  # no line repeats the one before
    assert lines[-1].startswith("out: waiting for data for "), err
    assert "last batch 0, 1 rows in, 1 out" in lines[-1]
    assert after.strip().splitlines()[1].startswith("out: stopped, last batch 0")


def test_status_of_a_process_that_died_says_nothing_runs(tmp_path: Path) -> None:
    """Item 19: a process killed with its status file left behind: no sink shows as running,
    whether the database is free (read from the checkpoint) or held by another process
    (the stale file is read, and its process is gone)."""
    job = _files_job(tmp_path, ['{"k": "a", "v": 2}\n'])
    db = tmp_path / "app.db"
    running = subprocess.Popen(
        [sys.executable, "-m", "streamsql.cli", "run", str(job), "--db", str(db)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    published = tmp_path / "app.db.status.json"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and '"last_batch": 0' not in (
            published.read_text() if published.exists() else ""
        ):
            time.sleep(0.1)
        live = streamsql("status", str(db), "--json")
        running.kill()
        running.wait(30)
    finally:
        running.kill()
    (sink,) = json.loads(live.stdout)["sinks"]
    assert (sink["running"], sink["last_batch"]) == (True, 0)
    assert sink["status"].startswith("waiting for data for ")
    assert published.exists()  # left behind by the killed process
    free = json.loads(streamsql("status", str(db), "--json").stdout)
    assert free["origin"] == "from the checkpoint: no process has it open"
    assert [(s["running"], s["status"]) for s in free["sinks"]] == [
        (False, "stopped, resumes when the database is opened")
    ]
    holder = subprocess.Popen(  # another process holds the database now
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]);"
            "print('open', flush=True); time.sleep(60)",
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "open\n"
        held = json.loads(streamsql("status", str(db), "--json").stdout)
    finally:
        holder.kill()
    assert f"published by process {running.pid} " in held["origin"]
    assert held["origin"].endswith("which has exited: nothing runs")
    assert [(s["running"], s["status"]) for s in held["sinks"]] == [
        (False, "not running: its process exited or stopped publishing")
    ]


def test_status_shows_long_values_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 19: no cell is cut, however long the sink name or the offsets; on a terminal
    too narrow for the table, each sink is a block of `column = value` lines."""
    name = "clicks_per_window_of_a_very_long_sink_name_for_the_status_table"
    job = tmp_path / "job.sql"
    job.write_text(
        (ROOT / "queries/tumbling_windows.sql")
        .read_text()
        .replace("clicks_per_window", name)
        .replace("'queries/data/events'", f"'{ROOT / 'queries/data/events'}'")
    )
    db = tmp_path / "app.db"
    done = streamsql("run", str(job), "--db", str(db), "--trigger", "available_now")
    assert done.returncode == 0, done.stderr
    result = streamsql("status", str(db))
    assert "…" not in result.stdout
    cells = _status_rows(result.stdout)[name]
    assert cells[4] == '{"files": ["events_0005.jsonl"]}'

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "100")
    terminal = Terminal()
    assert cli.print_status(str(db), terminal) == 0
    lines = terminal.getvalue().splitlines()
    assert f"             sink = {name}" in lines
    assert 'committed_offsets = {"files": ["events_0005.jsonl"]}' in lines
    assert max(map(len, lines[1:])) <= 100


def test_version_is_the_installed_packages() -> None:
    import importlib.metadata

    result = streamsql("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"streamsql {importlib.metadata.version('streamsql')}\n"


def test_sql_and_shell_c_run_statements_in_order_and_fail_with_the_error(tmp_path: Path) -> None:
    """Item 20: one-shot statements, printed as the shell prints them; the first failure
    stops the rest, exits 1 and is on stderr."""
    db = tmp_path / "app.db"
    wide = "x" * 60
    result = streamsql(
        "sql", str(db), f"CREATE TABLE t AS SELECT 1 AS a, '{wide}' AS w; SELECT a, w FROM t"
    )
    assert result.returncode == 0, result.stderr
    assert wide in result.stdout and "1 row" in result.stdout  # whole, not cut
    result = streamsql(
        "shell", str(db), "-c", "INSERT INTO t VALUES (2, 'y'); SELECT nope FROM t; DROP TABLE t"
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and "nope" in result.stderr
    assert result.stdout == "1 row affected\n"
    after = streamsql("shell", str(db), "-c", "SELECT count(*) AS n FROM t")
    assert after.returncode == 0, after.stderr
    assert "│ 2 │" in after.stdout  # the INSERT ran, the DROP did not


def test_status_of_a_sink_over_a_view_lists_the_sources_behind_it(tmp_path: Path) -> None:
    """The union example's sink reads a view over two sources: status names both, with
    each source's committed files and lag, from the checkpoint alone."""
    db = tmp_path / "app.db"
    done = streamsql(
        "run", "queries/union_of_two_sources.sql", "--db", str(db), "--trigger", "available_now"
    )
    assert done.returncode == 0, done.stderr
    result = streamsql("status", str(db), "--json")
    assert result.returncode == 0, result.stderr
    (sink,) = json.loads(result.stdout)["sinks"]
    last = {
        name: sorted(p.name for p in (ROOT / "queries/data" / directory).iterdir())[-1]
        for name, directory in (("web", "events"), ("app", "app_events"))
    }
    assert sink["committed_offsets"] == {name: {"files": [f]} for name, f in last.items()}
    assert sink["lag"] == {"web": 0, "app": 0}
