"""The `streamsql` command, run as users run it: in a subprocess."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from streamsql import cli

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
    assert "(from the checkpoint)" in result.stdout
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
    assert cells[1:3] == ["True", str(last_batch)]
    assert files[-1] in cells[3]  # the committed offsets: the last file read
    assert cells[4] == "0"  # lag: no file left to read
    assert cells[6:] == [str(state_rows), "0"]
    assert cells[5].startswith("2024-01-01T") and watermark > 0


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
            "from streamsql.checkpoint.log import Checkpoint\n"
            "Checkpoint.create_tables(duckdb.connect(sys.argv[1]))\n"
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
        while not published.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        live = streamsql("status", str(db))
        assert live.returncode == 0, live.stderr
        assert f"published by process {running.pid}" in live.stdout
        cells = _status_rows(live.stdout)["clicks_per_window"]
        assert cells[1] == "True" and int(cells[2]) >= 0 and int(cells[4]) >= 0
        running.send_signal(signal.SIGINT)
        _, err = running.communicate(timeout=60)
    finally:
        running.kill()
    assert running.returncode == 0, err
    assert "Interrupted: stopping after the batches in flight commit" in err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("clicks_per_window: stopped, batch ")
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
        name, status, last_progress = "q", {"message": "waiting for data"}, None

    terminal = Terminal()
    shown = cli._report([Query(), Query()], terminal, 0)
    cli._report([Query(), Query()], terminal, shown)
    first, second = terminal.getvalue().split("\x1b[2F")
    assert first == "q: waiting for data, no batch yet\n" * 2
    assert second == "\x1b[2Kq: waiting for data, no batch yet\n" * 2


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
    assert "+294247-01-10T04:00:54" in result.stdout  # printed, past Python's years
