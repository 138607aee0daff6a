"""Connector options: every one checked when its statement runs, before anything is stored;
values of secret options hidden in every message and in SHOW SOURCES / SHOW SINKS."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import streamsql
from streamsql.cli import main

SECRET = "hunter2-s3cr3t"
KAFKA_SOURCE = (
    "CREATE SOURCE ks (k VARCHAR) WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:1', "
    "topic = 't', kafka.security_protocol = 'SASL_PLAINTEXT', kafka.sasl_mechanism = 'PLAIN', "
    f"kafka.sasl_plain_username = 'app', kafka.sasl_plain_password = '{SECRET}'{{extra}})"
)


def catalog(con: streamsql.Connection) -> list[tuple]:
    return con.execute("SELECT kind, name FROM _streamsql.catalog ORDER BY ALL").fetchall()


# -- every option checked when the statement runs ------------------------------------------------


def test_a_bad_trigger_is_refused_also_when_trigger_overrides_it(db_path: str) -> None:
    """`--trigger` (the connection's trigger) overrides the sink's for this run only: the
    sink's own trigger is checked all the same, so the next run is not broken by it."""
    with streamsql.connect(db_path, trigger="available_now") as con:
        con.execute("CREATE SOURCE ev (k VARCHAR) WITH (connector = 'memory')")
        with pytest.raises(streamsql.ProgrammingError, match=r"Sink out: Invalid trigger 'soon'"):
            con.execute("CREATE SINK out WITH (trigger = 'soon') AS SELECT k FROM ev")
        assert catalog(con) == [("SOURCE", "ev")]
        assert "out" not in con.engine.queries
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the next run opens cleanly: no sink fails to resume
        with streamsql.connect(db_path) as con:
            assert catalog(con) == [("SOURCE", "ev")]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("connector = 'console', print_empty = 'yes'", "print_empty = 'yes' is not true or false"),
        ("connector = 'duckdb', changelog = 'sure'", "changelog = 'sure' is not true or false"),
        ("connector = 'duckdb', table = 'a..b'", "table = 'a..b' is not a name"),
        ("connector = 'parquet', path = 'o', fsync = 'no'", "fsync = 'no' is not true or false"),
        ("connector = 'parquet', path = 'o', compression = 'lzo'", "compression = 'lzo' is not"),
        ("connector = 'csv', path = 'o', delimiter = ';;'", "delimiter = ';;' is not one char"),
        ("connector = 'json', path = 'o', changelog = 'y'", "changelog = 'y' is not true or"),
        ("connector = 'kafka', bootstrap_servers = 'h:1', topic = 'a b'", "topic = 'a b' is not"),
        ("connector = 'kafka', bootstrap_servers = 'h:1', topic = 't', key = 'k FROM x'", "key ="),
    ],
)
def test_every_sink_option_is_checked_when_the_sink_is_created(
    con: streamsql.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: str,
    message: str,
) -> None:
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    con.execute("CREATE SOURCE ev (k VARCHAR) WITH (connector = 'memory')")
    with pytest.raises(streamsql.ProgrammingError, match=f"Sink out: {message}"):
        con.execute(f"CREATE SINK out WITH ({options}) AS SELECT k FROM ev")
    assert catalog(con) == [("SOURCE", "ev")]
    assert list((tmp_path / "work").iterdir()) == []  # nothing created on disk either


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("connector = 'files', path = 'in', header = 'maybe'", "header = 'maybe' is not true"),
        ("connector = 'files', path = 'in', delimiter = '\"'", "delimiter = '\"' is not one"),
        (
            "connector = 'kafka', bootstrap_servers = 'h:1', topic_pattern = '(', format = 'csv'",
            r"topic_pattern = '\(' is not a regular expression",
        ),
        ("connector = 'kafka', bootstrap_servers = 'h:1', topic = 't', delimiter = ''", "delim"),
    ],
)
def test_every_source_option_is_checked_when_the_source_is_created(
    con: streamsql.Connection, options: str, message: str
) -> None:
    with pytest.raises(streamsql.ProgrammingError, match=f"Source src: {message}"):
        con.execute(f"CREATE SOURCE src (k VARCHAR) WITH ({options})")
    assert catalog(con) == []


# -- secrets --------------------------------------------------------------------------------------


def test_a_syntax_error_does_not_echo_a_password(con: streamsql.Connection) -> None:
    for broken in (
        KAFKA_SOURCE.format(extra=" format = 'json'"),  # a missing comma
        KAFKA_SOURCE.format(extra="").replace(f"'{SECRET}'", f"'{SECRET}"),  # unterminated
        KAFKA_SOURCE.format(extra="").replace(f"'{SECRET}'", f"{SECRET.replace('-', '_')} ="),
    ):
        with pytest.raises(streamsql.ProgrammingError) as caught:
            con.execute(broken)
        message = str(caught.value)
        assert "Syntax error" in message and "kafka.sasl_plain_password = '***'" in message
        assert "s3cr3t" not in message
        assert "kafka.sasl_plain_username = 'app'" in message  # only secrets are hidden


def test_the_command_line_does_not_print_a_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "app.sql"
    script.write_text(f"CREATE TABLE t (x INTEGER);\n{KAFKA_SOURCE.format(extra=' format = 1')};\n")
    assert main(["run", str(script), "--db", str(tmp_path / "app.db")]) == 1
    printed = capsys.readouterr()
    assert "Syntax error at line 2" in printed.err
    assert SECRET not in printed.err + printed.out


def test_a_duckdb_error_does_not_echo_a_secret(con: streamsql.Connection) -> None:
    with pytest.raises(streamsql.ProgrammingError) as caught:
        con.execute(f"CREATE SECRET s3 (TYPE s3, KEY_ID 'AKIA1', SECRET '{SECRET}' REGION 'x')")
    assert "SECRET '***'" in str(caught.value) and SECRET not in str(caught.value)


def test_show_lists_options_with_secrets_hidden(con: streamsql.Connection) -> None:
    con.execute(KAFKA_SOURCE.format(extra=", format = 'json'"))
    con.execute("CREATE SOURCE ev (k VARCHAR) WITH (connector = 'memory')")
    con.execute(  # the broker is reached at the first batch with rows: never here
        "CREATE SINK out WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:1', "
        f"topic = 'o', key = 'upper(k)', kafka.ssl_password = '{SECRET}') AS SELECT k FROM ev"
    )
    shown = {row[0]: row for row in con.execute("SHOW SOURCES").fetchall()}
    source_options = shown["ks"][4]
    ((_, _, _, sink_options),) = con.execute("SHOW SINKS").fetchall()
    assert "kafka.sasl_plain_password = '***'" in source_options
    assert "kafka.sasl_plain_username = 'app'" in source_options
    assert "kafka.ssl_password = '***'" in sink_options
    assert "key = 'upper(k)'" in sink_options  # the sink's key is an expression, not a secret
    assert SECRET not in source_options + sink_options


def test_a_changed_definition_is_described_without_its_secrets(con: streamsql.Connection) -> None:
    con.execute(KAFKA_SOURCE.format(extra=""))
    with pytest.raises(streamsql.ProgrammingError) as caught:
        con.execute(KAFKA_SOURCE.format(extra="").replace(SECRET, "other-password"))
    message = str(caught.value)
    assert "option kafka.sasl_plain_password: '***' -> '***'" in message
    assert SECRET not in message and "other-password" not in message
