"""The `streamsql` command, run as users run it: in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb

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
