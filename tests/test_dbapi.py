"""The PEP 249 surface: module globals, errors, cursors, push queries, management statements."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest

import streamsql

EVENTS = (
    "CREATE SOURCE ev (k VARCHAR, ts TIMESTAMP, v DOUBLE, "
    "WATERMARK FOR ts AS ts - INTERVAL '1 minute') WITH (connector = 'memory')"
)
COUNTS = (
    "CREATE SINK out WITH (connector = 'duckdb') AS "
    "SELECT k, count(*) AS n FROM ev GROUP BY k EMIT CHANGES"
)
ROWS = (
    "INSERT INTO ev VALUES ('a', TIMESTAMP '2024-01-01 00:00:00', 1.0), "
    "('b', TIMESTAMP '2024-01-01 00:00:10', 2.0), ('a', TIMESTAMP '2024-01-01 00:00:20', 3.0)"
)


@pytest.fixture
def events(con: streamsql.Connection) -> streamsql.Connection:
    con.execute(EVENTS)
    return con


def push_queries(con: streamsql.Connection) -> list[str]:
    return [row[0] for row in con.execute("SHOW QUERIES").fetchall() if row[0].startswith("__")]


# -- module globals and the exception hierarchy --------------------------------------------------


def test_module_globals() -> None:
    assert streamsql.apilevel == "2.0"
    assert streamsql.threadsafety == 1
    assert streamsql.paramstyle == "qmark"


@pytest.mark.parametrize(
    ("error", "parent"),
    [
        (streamsql.Error, Exception),
        (streamsql.Warning, Exception),
        (streamsql.InterfaceError, streamsql.Error),
        (streamsql.DatabaseError, streamsql.Error),
        (streamsql.DataError, streamsql.DatabaseError),
        (streamsql.OperationalError, streamsql.DatabaseError),
        (streamsql.IntegrityError, streamsql.DatabaseError),
        (streamsql.InternalError, streamsql.DatabaseError),
        (streamsql.ProgrammingError, streamsql.DatabaseError),
        (streamsql.NotSupportedError, streamsql.DatabaseError),
        (streamsql.SQLSyntaxError, streamsql.ProgrammingError),
        (streamsql.PlanningError, streamsql.ProgrammingError),
        (streamsql.StreamingQueryError, streamsql.OperationalError),
    ],
)
def test_exception_hierarchy(error: type[Exception], parent: type[Exception]) -> None:
    assert issubclass(error, parent)


def test_warning_is_not_an_error() -> None:
    assert not issubclass(streamsql.Warning, streamsql.Error)
    assert not issubclass(streamsql.InterfaceError, streamsql.DatabaseError)


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        ("SELEC 1", streamsql.SQLSyntaxError),
        ("SELECT * FROM no_such_table", streamsql.ProgrammingError),
        ("SELECT no_such_column FROM range(3)", streamsql.ProgrammingError),
        ("SELECT CAST('abc' AS INTEGER)", streamsql.DataError),
        ("SELECT 'abc'::DATE", streamsql.DataError),
        ("SELECT 2147483647::INTEGER + 1", streamsql.DataError),
        ("SELECT * FROM read_csv('/no/such/dir/x.csv')", streamsql.OperationalError),
    ],
)
def test_duckdb_errors_map_onto_pep249_classes(
    con: streamsql.Connection, sql: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        con.execute(sql).fetchall()


def test_constraint_violation_is_an_integrity_error(con: streamsql.Connection) -> None:
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    con.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(streamsql.IntegrityError):
        con.execute("INSERT INTO t VALUES (1)")
    assert con.execute("SELECT count(*) FROM t").fetchall() == [(1,)]


def test_bad_cast_inserting_into_a_memory_source_is_a_data_error(
    events: streamsql.Connection,
) -> None:
    with pytest.raises(streamsql.DataError, match="ev"):
        events.execute("INSERT INTO ev (k, v) VALUES ('a', 'not a number')")
    with pytest.raises(streamsql.DataError):
        events.execute("INSERT INTO ev (k, ts) VALUES (?, ?)", ["a", "not a time"])


def test_streaming_errors_are_programming_errors(events: streamsql.Connection) -> None:
    with pytest.raises(streamsql.ProgrammingError):
        events.execute("SELECT k, no_such_column FROM ev")
    with pytest.raises(streamsql.ProgrammingError):
        events.execute("CREATE SINK s WITH (connector = 'nowhere') AS SELECT k FROM ev")
    with pytest.raises(streamsql.ProgrammingError):
        events.execute("CREATE SOURCE s (k VARCHAR) WITH (connector = 'nowhere')")
    with pytest.raises(streamsql.ProgrammingError):
        events.query("no_such_query")


def test_wrong_number_of_parameters_is_a_programming_error(con: streamsql.Connection) -> None:
    with pytest.raises(streamsql.ProgrammingError):
        con.execute("SELECT ?, ?", [1])


def test_parameters_bind_a_single_statement_only(con: streamsql.Connection) -> None:
    with pytest.raises(streamsql.ProgrammingError):
        con.execute("SELECT ?; SELECT ?", [1])
    with pytest.raises(streamsql.ProgrammingError):
        con.executemany("SELECT ?; SELECT ?", [[1], [2]])


# -- cursors on plain DuckDB statements ---------------------------------------------------------


@pytest.fixture
def letters(con: streamsql.Connection) -> streamsql.Connection:
    con.execute("CREATE TABLE letters (id INTEGER, letter VARCHAR)")
    con.execute("INSERT INTO letters SELECT i, chr(96 + i::INTEGER) FROM range(1, 6) AS r(i)")
    return con


def test_description_of_a_plain_query(letters: streamsql.Connection) -> None:
    cursor = letters.cursor()
    assert cursor.description is None
    assert cursor.rowcount == -1
    cursor.execute("SELECT id, letter, id / 2 AS half FROM letters")
    assert [(d[0], d[1]) for d in cursor.description] == [
        ("id", "INTEGER"),
        ("letter", "VARCHAR"),
        ("half", "DOUBLE"),
    ]
    assert all(len(d) == 7 for d in cursor.description)
    assert cursor.rowcount == -1


def test_fetchone_fetchmany_fetchall(letters: streamsql.Connection) -> None:
    cursor = letters.cursor()
    cursor.execute("SELECT id, letter FROM letters ORDER BY id")
    assert cursor.fetchone() == (1, "a")
    assert cursor.fetchmany() == [(2, "b")]  # arraysize defaults to 1
    assert cursor.fetchmany(2) == [(3, "c"), (4, "d")]
    assert cursor.fetchall() == [(5, "e")]
    assert cursor.fetchone() is None
    assert cursor.fetchmany(3) == []
    assert cursor.fetchall() == []


def test_fetchmany_uses_arraysize(letters: streamsql.Connection) -> None:
    cursor = letters.cursor()
    cursor.arraysize = 3
    cursor.execute("SELECT id FROM letters ORDER BY id")
    assert cursor.fetchmany() == [(1,), (2,), (3,)]
    assert cursor.fetchmany() == [(4,), (5,)]


def test_iterating_a_cursor_yields_every_row(letters: streamsql.Connection) -> None:
    cursor = letters.execute("SELECT letter FROM letters WHERE id > ? ORDER BY id", [2])
    assert list(cursor) == [("c",), ("d",), ("e",)]
    assert [row for row in letters.execute("SELECT 1 WHERE false")] == []


def test_a_script_runs_every_statement_and_returns_the_last_result(
    con: streamsql.Connection,
) -> None:
    cursor = con.execute(
        "CREATE TABLE t (a INTEGER); INSERT INTO t VALUES (1), (2);\nSELECT sum(a) FROM t"
    )
    assert cursor.fetchall() == [(3,)]


def test_qmark_parameters_are_bound_not_interpolated(con: streamsql.Connection) -> None:
    hostile = "x'); DROP TABLE t; --"
    con.execute("CREATE TABLE t (s VARCHAR)")
    con.execute("INSERT INTO t VALUES (?)", [hostile])
    assert con.execute("SELECT s, '?' AS literal FROM t WHERE s = ?", [hostile]).fetchall() == [
        (hostile, "?")
    ]


def test_rowcount_of_inserts_into_a_memory_source(events: streamsql.Connection) -> None:
    assert events.execute(ROWS).rowcount == 3
    assert events.execute("INSERT INTO ev (k) VALUES (?)", ["x"]).rowcount == 1
    nothing = "INSERT INTO ev SELECT * FROM (VALUES ('z', NULL, NULL)) WHERE false"
    assert events.execute(nothing).rowcount == 0
    cursor = events.executemany("INSERT INTO ev (k, v) VALUES (?, ?)", [("p", 1), ("q", 2)])
    assert cursor.rowcount == 2


def test_rowcount_of_executemany_into_a_plain_table(con: streamsql.Connection) -> None:
    con.execute("CREATE TABLE t (a INTEGER)")
    cursor = con.cursor()
    cursor.executemany("INSERT INTO t VALUES (?)", [[1], [2], [3]])
    assert cursor.rowcount in (3, -1)
    assert con.execute("SELECT count(*) FROM t").fetchall() == [(3,)]


def test_fetch_before_execute_is_an_error(con: streamsql.Connection) -> None:
    cursor = con.cursor()
    with pytest.raises(streamsql.Error):
        cursor.fetchone()
    with pytest.raises(streamsql.Error):
        cursor.fetchall()


def test_closed_cursor_raises_interface_error(con: streamsql.Connection) -> None:
    cursor = con.cursor()
    cursor.execute("SELECT 1")
    cursor.close()
    cursor.close()  # closing twice is harmless
    for call in (
        lambda: cursor.execute("SELECT 1"),
        lambda: cursor.executemany("SELECT ?", [[1]]),
        cursor.fetchone,
        cursor.fetchall,
        lambda: cursor.fetchmany(2),
    ):
        with pytest.raises(streamsql.InterfaceError):
            call()
    assert con.execute("SELECT 2").fetchall() == [(2,)]  # the connection is still open


def test_closed_connection_raises_interface_error(tmp_path: Path) -> None:
    con = streamsql.connect(str(tmp_path / "engine.db"))
    cursor = con.cursor()
    cursor.execute("SELECT 1")
    con.close()
    con.close()
    for call in (
        lambda: con.execute("SELECT 1"),
        con.cursor,
        con.commit,
        con.rollback,
        lambda: con.query("out"),
        cursor.fetchall,
        lambda: cursor.execute("SELECT 1"),
    ):
        with pytest.raises(streamsql.InterfaceError):
            call()


def test_context_managers_close(tmp_path: Path) -> None:
    with streamsql.connect(str(tmp_path / "engine.db")) as con:
        with con.cursor() as cursor:
            assert cursor.execute("SELECT 41 + 1").fetchall() == [(42,)]
        with pytest.raises(streamsql.InterfaceError):
            cursor.fetchall()
        con.execute("CREATE TABLE kept (a INTEGER); INSERT INTO kept VALUES (1)")
    with pytest.raises(streamsql.InterfaceError):
        con.cursor()
    with streamsql.connect(str(tmp_path / "engine.db")) as again:
        assert again.execute("SELECT a FROM kept").fetchall() == [(1,)]


# -- push queries: a streaming SELECT on a cursor -----------------------------------------------


def test_push_query_returns_rows_as_batches_emit_them(events: streamsql.Connection) -> None:
    cursor = events.cursor()
    cursor.stream_timeout = 15
    cursor.execute("SELECT k, count(*) AS n FROM ev GROUP BY k EMIT CHANGES")
    assert [d[0] for d in cursor.description] == ["k", "n"]
    assert cursor.streaming
    (name,) = push_queries(events)
    events.execute(ROWS)
    assert sorted(cursor.fetchmany(10)) == [("a", 2), ("b", 1)]
    events.execute("INSERT INTO ev (k, ts) VALUES ('b', TIMESTAMP '2024-01-01 00:01:00')")
    assert cursor.fetchone() == ("b", 2)
    cursor.stream_timeout = 0.2
    started = time.monotonic()
    assert cursor.fetchmany(5) == []  # nothing new: waits stream_timeout, then returns
    assert time.monotonic() - started >= 0.15
    assert cursor.streaming
    assert events.query(name).is_active


def test_closing_the_cursor_stops_the_push_query(events: streamsql.Connection) -> None:
    cursor = events.cursor()
    cursor.stream_timeout = 15
    cursor.execute("SELECT k, v FROM ev WHERE v > 1")
    (name,) = push_queries(events)
    query = events.query(name)
    events.execute(ROWS)
    assert cursor.fetchmany(5) == [("b", 2.0), ("a", 3.0)]
    cursor.close()
    assert query.is_active is False
    assert query.status["message"] == "stopped"
    assert push_queries(events) == []
    assert events.execute(
        "SELECT count(*) FROM _streamsql.offsets WHERE query = ?", [name]
    ).fetchall() == [(0,)]
    with pytest.raises(streamsql.ProgrammingError):
        events.query(name)


def test_a_new_statement_on_the_cursor_stops_its_push_query(
    events: streamsql.Connection,
) -> None:
    cursor = events.cursor()
    cursor.execute("SELECT k FROM ev")
    (name,) = push_queries(events)
    query = events.query(name)
    assert cursor.execute("SELECT 7").fetchall() == [(7,)]
    assert query.is_active is False
    assert push_queries(events) == []


def test_push_query_fetchall_waits_for_an_available_now_query(tmp_path: Path) -> None:
    with streamsql.connect(str(tmp_path / "engine.db"), trigger="available_now") as con:
        con.execute(EVENTS)
        con.execute(ROWS)
        cursor = con.cursor()
        cursor.execute("SELECT k, v * 2 AS doubled FROM ev WHERE v >= 2")
        assert cursor.fetchall() == [("b", 4.0), ("a", 6.0)]
        assert cursor.streaming is False
        assert cursor.fetchall() == []
        cursor.execute("SELECT k, sum(v) AS total FROM ev GROUP BY k EMIT SNAPSHOT")
        assert sorted(cursor) == [("a", 4.0), ("b", 2.0)]


def test_push_query_binds_parameters(tmp_path: Path) -> None:
    with streamsql.connect(str(tmp_path / "engine.db"), trigger="available_now") as con:
        con.execute(EVENTS)
        con.execute(ROWS)
        cursor = con.execute("SELECT k, v FROM ev WHERE k = ?", ["a"])
        assert cursor.fetchall() == [("a", 1.0), ("a", 3.0)]


# -- management statements ----------------------------------------------------------------------


def test_show_sources_sinks_and_queries(events: streamsql.Connection) -> None:
    events.execute("CREATE SOURCE plain (x INTEGER) WITH (connector = 'memory')")
    events.execute(COUNTS)
    events.execute(ROWS)
    events.query("out").process_all_available(timeout=30)

    cursor = events.execute("SHOW SOURCES")
    assert [d[0] for d in cursor.description] == [
        "name",
        "connector",
        "columns",
        "watermark",
        "options",
    ]
    sources = {row[0]: row for row in cursor.fetchall()}
    assert sources["ev"][:3] == ("ev", "memory", "k, ts, v")
    assert sources["ev"][3].startswith("ts - ")
    assert "minute" in sources["ev"][3].lower()
    assert sources["plain"] == ("plain", "memory", "x", None, "connector = 'memory'")

    cursor = events.execute("SHOW SINKS")
    assert [d[0] for d in cursor.description] == ["name", "connector", "query", "options"]
    ((name, connector, query, _),) = cursor.fetchall()
    assert (name, connector) == ("out", "duckdb")
    assert "FROM ev" in query and "GROUP BY k" in query

    cursor = events.execute("SHOW QUERIES")
    assert [d[0] for d in cursor.description] == [
        "name",
        "status",
        "trigger",
        "last_batch",
        "watermark",
        "state_rows",
    ]
    assert cursor.fetchall() == [
        ("out", "waiting for data", "0 seconds", 0, "2023-12-31T23:59:20.000000Z", 2)
    ]


def test_describe_query_reports_progress(events: streamsql.Connection) -> None:
    events.execute(COUNTS)
    events.execute(ROWS)
    events.query("out").process_all_available(timeout=30)
    cursor = events.execute("DESCRIBE QUERY out")
    assert [d[0] for d in cursor.description] == ["property", "value"]
    pairs = cursor.fetchall()
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names))  # each property once
    described = dict(pairs)
    assert described["name"] == "out"
    assert described["status"] == "waiting for data"
    assert described["last_batch"] == "0"
    assert described["num_input_rows"] == described["run_input_rows"] == "3"
    assert described["num_output_rows"] == "2"
    assert described["state_rows"] == "2"
    assert described["watermark"] == "2023-12-31T23:59:20.000000Z"
    assert described["batch_watermark"] == "1970-01-01T00:00:00.000000Z"  # W_0 = 0, as in Spark
    assert json.loads(described["duration_ms"])["total"] > 0  # structured values are JSON
    with pytest.raises(streamsql.ProgrammingError):
        events.execute("DESCRIBE QUERY nothing")


def test_stop_query_stops_it_and_it_stays_stopped_after_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "engine.db")
    with streamsql.connect(path) as con:
        con.execute(EVENTS)
        con.execute(COUNTS)
        con.execute(ROWS)
        query = con.query("out")
        query.process_all_available(timeout=30)
        assert con.execute("STOP QUERY out").description is None
        assert query.is_active is False
        assert query.status["message"] == "stopped"
        assert query.await_termination(0) is True
        con.execute("INSERT INTO ev (k) VALUES ('c')")
        time.sleep(0.3)
        assert con.execute("SELECT k, n FROM out ORDER BY k").fetchall() == [("a", 2), ("b", 1)]
        assert con.execute("SHOW QUERIES").fetchall()[0][:2] == ("out", "stopped")
        with pytest.raises(streamsql.ProgrammingError):
            con.execute("STOP QUERY nothing")
    with streamsql.connect(path) as con:
        assert con.execute("SHOW QUERIES").fetchall() == []
        assert [row[0] for row in con.execute("SHOW SINKS").fetchall()] == ["out"]
        with pytest.raises(streamsql.ProgrammingError):
            con.query("out")


def test_sinks_resume_when_the_database_is_opened_again(tmp_path: Path) -> None:
    directory = tmp_path / "in"
    directory.mkdir()
    (directory / "1.json").write_text('{"k": "a"}\n{"k": "b"}\n')
    path = str(tmp_path / "engine.db")
    with streamsql.connect(path) as con:
        con.execute(
            f"CREATE SOURCE src (k VARCHAR) WITH (connector = 'files', path = '{directory}')"
        )
        con.execute(
            "CREATE SINK out WITH (connector = 'duckdb') AS "
            "SELECT k, count(*) AS n FROM src GROUP BY k EMIT CHANGES"
        )
        con.query("out").process_all_available(timeout=30)
    (directory / "2.json").write_text('{"k": "a"}\n')
    with streamsql.connect(path) as con:
        query = con.query("out")
        query.process_all_available(timeout=30)
        assert con.execute("SELECT k, n FROM out ORDER BY k").fetchall() == [("a", 2), ("b", 1)]
        assert query.last_progress.batch_id == 1


def test_explain_shows_the_per_batch_sql(events: streamsql.Connection) -> None:
    cursor = events.execute("EXPLAIN SELECT k, count(*) AS n FROM ev GROUP BY k EMIT CHANGES")
    assert [d[0] for d in cursor.description] == ["explain"]
    text = "\n".join(row[0] for row in cursor.fetchall())
    assert "over source ev" in text
    assert "EMIT CHANGES" in text
    assert "MERGE INTO" in text
    assert push_queries(events) == []  # explaining runs nothing
    assert events.execute("SHOW QUERIES").fetchall() == []
    plain = events.execute("EXPLAIN SELECT 42").fetchall()
    assert plain and plain[0][0] == "physical_plan"


def test_available_now_connection_overrides_every_query_trigger(tmp_path: Path) -> None:
    with streamsql.connect(str(tmp_path / "engine.db"), trigger="available_now") as con:
        con.execute(EVENTS)
        con.execute(ROWS)
        con.execute(
            "CREATE SINK out WITH (connector = 'duckdb', trigger = '1 hour') AS "
            "SELECT k, count(*) AS n FROM ev GROUP BY k EMIT CHANGES"
        )
        query = con.query("out")
        assert query.await_termination(30) is True
        assert query.status["message"] == "stopped"
        assert str(query.trigger) == "available_now"
        assert con.execute("SELECT k, n FROM out ORDER BY k").fetchall() == [("a", 2), ("b", 1)]


def checkpoint_rows(con: streamsql.Connection, name: str) -> tuple[int, int]:
    ((offsets,),) = con.execute(
        "SELECT count(*) FROM _streamsql.offsets WHERE query = ?", [name]
    ).fetchall()
    ((commits,),) = con.execute(
        "SELECT count(*) FROM _streamsql.commits WHERE query = ?", [name]
    ).fetchall()
    return offsets, commits


def state_tables(con: streamsql.Connection) -> list[str]:
    return [
        row[0]
        for row in con.execute(
            "SELECT table_name FROM duckdb_tables() "
            "WHERE schema_name = '_streamsql' AND table_name LIKE 'state_%' ORDER BY 1"
        ).fetchall()
    ]


def test_drop_sink_removes_its_query_state_and_checkpoint(events: streamsql.Connection) -> None:
    events.execute(COUNTS)
    events.execute(COUNTS.replace("SINK out", "SINK other"))
    events.execute(ROWS)
    for name in ("out", "other"):
        events.query(name).process_all_available(timeout=30)
    query = events.query("out")
    assert checkpoint_rows(events, "out") == (2, 1)  # initial offsets, batch 0; its commit
    assert state_tables(events) == ["state_other", "state_out"]

    events.execute("DROP SINK out")
    assert query.is_active is False
    assert checkpoint_rows(events, "out") == (0, 0)
    assert state_tables(events) == ["state_other"]
    assert [row[0] for row in events.execute("SHOW SINKS").fetchall()] == ["other"]
    assert [row[0] for row in events.execute("SHOW QUERIES").fetchall()] == ["other"]
    with pytest.raises(streamsql.ProgrammingError):
        events.execute("DESCRIBE QUERY out")
    assert checkpoint_rows(events, "other") == (2, 1)  # other sinks keep theirs


def test_drop_of_unknown_names(events: streamsql.Connection) -> None:
    events.execute("DROP SINK IF EXISTS nothing")
    events.execute("DROP SOURCE IF EXISTS nothing")
    with pytest.raises(streamsql.ProgrammingError):
        events.execute("DROP SINK nothing")
    with pytest.raises(streamsql.ProgrammingError):
        events.execute("DROP SOURCE nothing")


def test_drop_source_is_refused_while_a_sink_reads_it(events: streamsql.Connection) -> None:
    events.execute(COUNTS)
    events.execute("CREATE SOURCE unused (x INTEGER) WITH (connector = 'memory')")
    with pytest.raises(streamsql.ProgrammingError, match="out"):
        events.execute("DROP SOURCE ev")
    events.execute("DROP SOURCE unused")
    assert [row[0] for row in events.execute("SHOW SOURCES").fetchall()] == ["ev"]


def test_a_second_connect_to_an_open_database_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two engines on one file would run each sink twice; the second connect is refused
    (by the resolved path), and the file opens again once the first is closed."""
    monkeypatch.chdir(tmp_path)
    first = streamsql.connect("app.db")
    try:
        first.execute(EVENTS)
        first.execute(COUNTS)
        first.execute(ROWS)
        first.query("out").process_all_available(timeout=30)
        for spelling in ("app.db", str(tmp_path / "app.db"), "./sub/../app.db"):
            (tmp_path / "sub").mkdir(exist_ok=True)
            with pytest.raises(streamsql.OperationalError, match="already open in this process"):
                streamsql.connect(spelling)
        first.execute(ROWS)
        query = first.query("out")
        query.process_all_available(timeout=30)
        assert query.exception is None
        assert first.execute("SELECT k, n FROM out ORDER BY k").fetchall() == [("a", 4), ("b", 2)]
        with contextlib.closing(streamsql.connect(":memory:")) as scratch:  # not a file
            assert scratch.execute("SELECT 1").fetchall() == [(1,)]
    finally:
        first.close()
    again = streamsql.connect(str(tmp_path / "app.db"))
    try:
        assert again.execute("SELECT k, n FROM out ORDER BY k").fetchall() == [("a", 4), ("b", 2)]
    finally:
        again.close()
