"""PEP 249 (DB-API 2.0) conformance, beyond what tests/test_dbapi.py already covers.

The module surface, which exception each kind of failure raises, transactions, the cursor
attributes (description, rowcount, arraysize) on every kind of statement (DuckDB's own,
the engine's management statements, inserts into memory sources, push queries), qmark
binding of hostile strings into memory sources, and push-query life cycles.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import streamsql
from streamsql import dbapi, errors

HOSTILE = "x'); DROP TABLE t; --"
EVENTS = "CREATE SOURCE ev (k VARCHAR, note VARCHAR, v INTEGER) WITH (connector = 'memory')"
NAMES = ("apilevel", "threadsafety", "paramstyle", "connect", "Connection", "Cursor")
EXCEPTIONS = (
    "Warning",
    "Error",
    "InterfaceError",
    "DatabaseError",
    "DataError",
    "OperationalError",
    "IntegrityError",
    "InternalError",
    "ProgrammingError",
    "NotSupportedError",
)


@pytest.fixture
def con() -> Iterator[streamsql.Connection]:
    connection = streamsql.connect()  # ':memory:' by default
    yield connection
    connection.close()


@pytest.fixture
def events(con: streamsql.Connection) -> streamsql.Connection:
    con.execute(EVENTS)
    return con


def push_queries(con: streamsql.Connection) -> list[str]:
    return [name for name in con.engine.queries if name.startswith("__")]


def shown_queries(con: streamsql.Connection) -> list[tuple[str, str]]:
    return [(row[0], row[1]) for row in con.execute("SHOW QUERIES").fetchall()]


# -- the module ---------------------------------------------------------------------------------


def test_module_surface_is_reexported_from_the_package() -> None:
    assert streamsql.threadsafety in (0, 1, 2, 3)
    assert (streamsql.apilevel, streamsql.paramstyle) == ("2.0", "qmark")
    for name in NAMES + EXCEPTIONS:
        assert name in streamsql.__all__
        assert getattr(streamsql, name) is getattr(dbapi, name)
    for name in EXCEPTIONS:
        assert getattr(streamsql, name) is getattr(errors, name)
    assert streamsql.Warning is not builtins.Warning  # PEP 249's own, an Exception
    assert not issubclass(streamsql.Warning, builtins.Warning)


def test_connect_returns_a_connection_and_defaults_to_memory(tmp_path: Path) -> None:
    con = streamsql.connect()
    try:
        assert isinstance(con, streamsql.Connection)
        assert con.engine.database == ":memory:"
        cursor = con.cursor()
        assert isinstance(cursor, streamsql.Cursor)
        assert cursor.connection is con  # the optional Cursor.connection extension
        assert cursor.execute("SELECT 6 * 7 AS answer").fetchall() == [(42,)]
    finally:
        con.close()
    path = str(tmp_path / "x.db")
    with streamsql.connect(path, config={"threads": 1}) as con:
        assert con.execute("SELECT current_setting('threads')").fetchall() == [(1,)]
        assert con.engine.database == path


def test_threads_may_share_the_module_each_with_its_own_connection(tmp_path: Path) -> None:
    """threadsafety 1: threads share the module, not connections."""
    results: dict[int, list[tuple[object, ...]]] = {}
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with streamsql.connect(str(tmp_path / f"t{n}.db")) as con:
                con.execute("CREATE TABLE t (a INTEGER)")
                con.executemany("INSERT INTO t VALUES (?)", [[n], [n * 10]])
                results[n] = con.execute("SELECT sum(a) FROM t").fetchall()
        except BaseException as error:  # reported below
            failures.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    assert results == {1: [(11,)], 2: [(22,)], 3: [(33,)]}


# -- which error, when ---------------------------------------------------------------------------


def test_syntax_error_in_a_plain_statement_names_line_and_column(
    con: streamsql.Connection,
) -> None:
    with pytest.raises(streamsql.ProgrammingError) as caught:
        con.execute("SELECT 1 +\n  FROM range(3)")
    assert isinstance(caught.value, streamsql.SQLSyntaxError)
    assert (caught.value.line, caught.value.col) == (2, 3)
    assert "line 2, column 3" in str(caught.value)


def test_a_script_with_a_syntax_error_runs_none_of_its_statements(
    con: streamsql.Connection,
) -> None:
    with pytest.raises(streamsql.SQLSyntaxError, match="line 1, column 25: unknown statement"):
        con.execute("CREATE TABLE a (x INT); SELEC 1")
    with pytest.raises(streamsql.ProgrammingError, match="Table with name a does not exist"):
        con.execute("SELECT * FROM a")


def test_unknown_names_in_ddl_are_programming_errors(con: streamsql.Connection) -> None:
    with pytest.raises(streamsql.ProgrammingError, match="nope"):
        con.execute("DROP TABLE nope")
    with pytest.raises(streamsql.ProgrammingError, match="nope"):
        con.execute("INSERT INTO nope VALUES (1)")


@pytest.mark.parametrize("sql", ["SELECT 1 // 0", "SELECT 7 % 0", "SELECT CAST(300 AS TINYINT)"])
def test_division_by_zero_and_out_of_range_are_data_errors(
    con: streamsql.Connection, sql: str
) -> None:
    with pytest.raises(streamsql.DataError):
        con.execute(sql).fetchall()
    # DuckDB's `/` is floating-point division: 1 / 0 is infinity, not an error
    assert con.execute("SELECT 1 / 0").fetchall() == [(float("inf"),)]


def test_integrity_errors_from_not_null_and_executemany(con: streamsql.Connection) -> None:
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, s VARCHAR NOT NULL)")
    with pytest.raises(streamsql.IntegrityError, match="NOT NULL"):
        con.execute("INSERT INTO t VALUES (?, ?)", [1, None])
    with pytest.raises(streamsql.IntegrityError, match="Duplicate key"):
        con.executemany("INSERT INTO t VALUES (?, ?)", [(1, "a"), (1, "b")])
    assert con.execute("SELECT id, s FROM t").fetchall() == [(1, "a")]  # the first set ran


def test_every_operation_on_a_closed_connection_is_an_interface_error() -> None:
    con = streamsql.connect()
    cursor = con.cursor()
    cursor.execute("SELECT 1")
    con.close()
    for call in (
        cursor.fetchone,
        lambda: cursor.fetchmany(1),
        lambda: cursor.executemany("SELECT ?", [[1]]),
        lambda: cursor.register("x", None),
        lambda: con.executemany("SELECT ?", [[1]]),
        lambda: con.register("x", None),
        lambda: con.register_callback("f", print),
    ):
        with pytest.raises(streamsql.InterfaceError, match="closed"):
            call()
    cursor.close()  # still harmless


def test_a_failing_push_query_raises_operational_error_on_fetch(
    events: streamsql.Connection,
) -> None:
    cursor = events.cursor()
    cursor.stream_timeout = 15
    cursor.execute("SELECT k, CAST(note AS INTEGER) AS n FROM ev")
    (name,) = push_queries(events)
    events.execute("INSERT INTO ev VALUES ('a', '1', 0)")
    assert cursor.fetchmany(5) == [("a", 1)]
    events.execute("INSERT INTO ev VALUES ('b', 'not a number', 0)")
    with pytest.raises(streamsql.OperationalError) as caught:
        cursor.fetchmany(5)
    assert isinstance(caught.value, streamsql.StreamingQueryError)
    assert "not a number" in str(caught.value)
    assert cursor.streaming is False
    assert shown_queries(events) == [(name, "failed")]
    with pytest.raises(streamsql.StreamingQueryError):  # and again, not silently []
        cursor.fetchone()
    cursor.close()
    assert push_queries(events) == []
    assert shown_queries(events) == []


# -- transactions ------------------------------------------------------------------------------


def test_statements_autocommit_and_are_visible_to_other_cursors(
    con: streamsql.Connection,
) -> None:
    con.execute("CREATE TABLE t (a INTEGER)")
    writer, reader = con.cursor(), con.cursor()
    writer.execute("INSERT INTO t VALUES (1)")
    assert reader.execute("SELECT count(*) FROM t").fetchall() == [(1,)]
    assert con.commit() is None
    assert con.rollback() is None  # nothing pending: nothing undone
    assert reader.execute("SELECT count(*) FROM t").fetchall() == [(1,)]


def test_commit_commits_a_transaction_opened_with_begin(con: streamsql.Connection) -> None:
    con.execute("CREATE TABLE t (a INTEGER)")
    con.execute("BEGIN TRANSACTION")
    con.execute("INSERT INTO t VALUES (1)")
    con.commit()
    assert con.cursor().execute("SELECT count(*) FROM t").fetchall() == [(1,)]


def test_rollback_rolls_back_a_transaction_opened_with_begin(con: streamsql.Connection) -> None:
    con.execute("CREATE TABLE t (a INTEGER)")
    con.execute("BEGIN TRANSACTION")
    con.execute("INSERT INTO t VALUES (1)")
    con.rollback()
    assert con.execute("SELECT count(*) FROM t").fetchall() == [(0,)]


# -- description and rowcount --------------------------------------------------------------------


def test_description_is_none_for_engine_statements_without_rows(
    events: streamsql.Connection,
) -> None:
    cursor = events.cursor()
    cursor.execute("SELECT 1 AS x")
    assert [d[0] for d in cursor.description] == ["x"]
    assert cursor.fetchall() == [(1,)]
    for sql in (
        "CREATE SOURCE other (a INTEGER) WITH (connector = 'memory')",
        "INSERT INTO ev VALUES ('a', 'n', 1)",
        "CREATE SINK out WITH (connector = 'duckdb') AS SELECT k, v FROM ev",
        "STOP QUERY out",
        "DROP SINK out",
        "DROP SOURCE other",
    ):
        cursor.execute(sql)
        assert cursor.description is None, sql


def test_description_of_engine_results_has_seven_items_name_first(
    events: streamsql.Connection,
) -> None:
    cursor = events.cursor()
    for sql, names in (
        ("SHOW SOURCES", ["name", "connector", "columns", "watermark", "options"]),
        ("SHOW SINKS", ["name", "connector", "query", "options"]),
        ("EXPLAIN SELECT k FROM ev", ["explain"]),
    ):
        cursor.execute(sql)
        assert all(isinstance(d, tuple) and len(d) == 7 for d in cursor.description)
        assert [d[0] for d in cursor.description] == names
    cursor.stream_timeout = 0.1
    cursor.execute("SELECT k AS key, v * 2 AS twice FROM ev")
    assert [(len(d), d[0]) for d in cursor.description] == [(7, "key"), (7, "twice")]
    cursor.close()


def test_description_is_none_for_duckdb_ddl(con: streamsql.Connection) -> None:
    cursor = con.execute("CREATE TABLE t (a INTEGER)")
    assert cursor.description is None
    with pytest.raises(streamsql.ProgrammingError, match="no rows to fetch"):
        cursor.fetchall()  # PEP 249: an Error when the statement produced no result set
    assert con.execute("INSERT INTO t VALUES (1) RETURNING a").fetchall() == [(1,)]


def test_rowcount_of_engine_statements(events: streamsql.Connection) -> None:
    cursor = events.cursor()
    assert cursor.rowcount == -1  # nothing executed yet
    assert cursor.execute("INSERT INTO ev (k) VALUES ('a'), ('b')").rowcount == 2
    assert cursor.execute("SHOW SOURCES").rowcount == 1  # rows of a complete result
    cursor.execute("CREATE SOURCE other (a INTEGER) WITH (connector = 'memory')")
    assert cursor.rowcount == -1
    assert cursor.execute("SELECT 1 FROM range(5)").rowcount == -1  # DuckDB: not known
    assert len(cursor.fetchall()) == 5
    rows = [("p", None, 1), ("q", None, 2), ("r", None, 3)]
    assert cursor.executemany("INSERT INTO ev VALUES (?, ?, ?)", rows).rowcount == 3
    assert cursor.executemany("INSERT INTO ev VALUES (?, ?, ?)", []).rowcount == 0


def test_rowcount_of_duckdb_dml_is_the_number_of_rows_affected(
    con: streamsql.Connection,
) -> None:
    con.execute("CREATE TABLE t (a INTEGER)")
    assert con.execute("INSERT INTO t VALUES (1), (2), (3)").rowcount == 3
    assert con.execute("UPDATE t SET a = a + 1 WHERE a > 1").rowcount == 2
    assert con.execute("DELETE FROM t").rowcount == 3


def test_rowcount_of_a_push_query_is_unknown(events: streamsql.Connection) -> None:
    cursor = events.cursor()
    cursor.execute("SELECT k FROM ev")
    try:
        assert cursor.rowcount == -1
    finally:
        cursor.close()


# -- fetching engine results ---------------------------------------------------------------------


def test_arraysize_defaults_to_one_and_drives_fetchmany_of_engine_results(
    events: streamsql.Connection,
) -> None:
    events.execute("CREATE SOURCE b (x INTEGER) WITH (connector = 'memory')")
    events.execute("CREATE SOURCE c (x INTEGER) WITH (connector = 'memory')")
    cursor = events.cursor()
    assert cursor.arraysize == 1
    cursor.execute("SHOW SOURCES")
    assert [row[0] for row in cursor.fetchmany()] == ["ev"]
    cursor.arraysize = 5
    assert [row[0] for row in cursor.fetchmany()] == ["b", "c"]  # fewer than asked: the rest
    assert cursor.fetchmany() == []
    assert cursor.fetchone() is None
    assert cursor.fetchall() == []
    assert events.cursor().arraysize == 1  # per cursor


def test_fetchone_fetchmany_and_iteration_of_engine_results(
    events: streamsql.Connection,
) -> None:
    explain = "EXPLAIN SELECT k, count(*) AS n FROM ev GROUP BY k EMIT CHANGES"
    lines = [row[0] for row in events.execute(explain).fetchall()]
    assert len(lines) >= 4
    cursor = events.cursor().execute(explain)
    assert cursor.fetchone() == (lines[0],)
    assert cursor.fetchmany(0) == []
    assert cursor.fetchmany(2) == [(lines[1],), (lines[2],)]
    assert [row[0] for row in cursor] == lines[3:]
    assert cursor.fetchone() is None
    assert cursor.execute("SHOW SINKS").fetchone() is None  # an empty result


# -- executemany, setinputsizes, setoutputsize ----------------------------------------------------


def test_executemany_binds_each_parameter_set_verbatim(con: streamsql.Connection) -> None:
    con.execute("CREATE TABLE t (id INTEGER, s VARCHAR)")
    values = [HOSTILE, "'; SELECT ?; '?'", 'a"b\\c', "", None, "ünïcode; DELETE FROM t"]
    cursor = con.cursor()
    cursor.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(values)))
    assert cursor.execute("SELECT s FROM t ORDER BY id").fetchall() == [(v,) for v in values]


def test_setinputsizes_and_setoutputsize_are_accepted_and_ignored(
    con: streamsql.Connection,
) -> None:
    cursor = con.cursor()
    assert cursor.setinputsizes([int, str, None]) is None
    assert cursor.setinputsizes([]) is None
    assert cursor.setoutputsize(1024) is None
    assert cursor.setoutputsize(1024, 0) is None
    cursor.execute("SELECT ?, ?", [1, "a"])
    assert cursor.fetchall() == [(1, "a")]
    assert cursor.description is not None and len(cursor.description) == 2


# -- qmark binding into memory sources ---------------------------------------------------------


def test_hostile_strings_reach_a_memory_source_and_its_sink_verbatim(
    events: streamsql.Connection,
) -> None:
    events.execute("CREATE TABLE t (a INTEGER)")
    events.execute("CREATE SINK out WITH (connector = 'duckdb') AS SELECT k, note, v FROM ev")
    assert (
        events.execute("INSERT INTO ev VALUES (?, ?, ?)", [HOSTILE, "; SELECT ?", 1]).rowcount == 1
    )
    events.executemany(
        "INSERT INTO ev (k, note, v) VALUES (?, ?, ?)",
        [("'?'", "--", 2), ("a'b", "'); DROP SOURCE ev; --", 3)],
    )
    events.execute("INSERT INTO ev VALUES ('?', ?, 4)", ["literal ? stays"])
    events.query("out").process_all_available(timeout=30)
    assert events.execute("SELECT k, note, v FROM out ORDER BY v").fetchall() == [
        (HOSTILE, "; SELECT ?", 1),
        ("'?'", "--", 2),
        ("a'b", "'); DROP SOURCE ev; --", 3),
        ("?", "literal ? stays", 4),
    ]
    assert events.execute("SELECT count(*) FROM t").fetchall() == [(0,)]  # t is still there
    assert [row[0] for row in events.execute("SHOW SOURCES").fetchall()] == ["ev"]


def test_push_query_parameters_are_bound_verbatim(events: streamsql.Connection) -> None:
    cursor = events.cursor()
    cursor.stream_timeout = 15
    cursor.execute("SELECT v FROM ev WHERE k = ?", [HOSTILE])
    events.execute("INSERT INTO ev VALUES (?, NULL, 1), ('x', NULL, 2)", [HOSTILE])
    assert cursor.fetchmany(5) == [(1,)]
    cursor.close()


@pytest.mark.parametrize(
    ("sql", "parameters"),
    [
        ("INSERT INTO ev VALUES (?, ?, ?)", ["a", "b"]),
        ("INSERT INTO ev VALUES (?, ?, ?)", ["a", "b", 1, 2]),
        ("INSERT INTO ev VALUES ('a', 'b', 1)", ["a"]),
        ("SELECT 1", [1]),
    ],
)
def test_wrong_parameter_count_is_a_programming_error(
    events: streamsql.Connection, sql: str, parameters: list[object]
) -> None:
    with pytest.raises(streamsql.ProgrammingError):
        events.execute(sql, parameters)
    assert events.execute("SELECT 1").fetchall() == [(1,)]  # still usable


def test_wrong_parameter_count_in_executemany_is_a_programming_error(
    events: streamsql.Connection,
) -> None:
    events.execute("CREATE TABLE t (a INTEGER, b INTEGER)")
    with pytest.raises(streamsql.ProgrammingError):
        events.executemany("INSERT INTO t VALUES (?, ?)", [(1, 2), (3,)])
    with pytest.raises(streamsql.ProgrammingError):
        events.executemany("INSERT INTO ev VALUES (?, ?, ?)", [("a", "b", 1), ("c",)])


def test_insert_into_a_source_after_an_unfetched_select(events: streamsql.Connection) -> None:
    events.execute("SELECT * FROM range(3)")  # not fetched: sqlite3/duckdb discard it
    assert events.execute("INSERT INTO ev (k) VALUES ('a')").rowcount == 1


# -- push queries ----------------------------------------------------------------------------------


def test_push_query_fetchmany_returns_rows_as_soon_as_they_are_emitted(
    events: streamsql.Connection,
) -> None:
    cursor = events.cursor()
    cursor.stream_timeout = 20
    cursor.execute("SELECT k, v FROM ev WHERE v > 0")
    assert cursor.streaming is True
    (name,) = push_queries(events)
    events.query(name).process_all_available(timeout=30)
    assert shown_queries(events) == [(name, "waiting for data")]
    events.execute("INSERT INTO ev (k, v) VALUES ('a', 1), ('b', 0), ('c', 3)")
    started = time.monotonic()
    assert cursor.fetchmany(100) == [("a", 1), ("c", 3)]  # does not wait for 100 rows
    assert time.monotonic() - started < 10
    cursor.arraysize = 2
    events.execute("INSERT INTO ev (k, v) VALUES ('d', 4), ('e', 5), ('f', 6)")
    assert cursor.fetchmany() == [("d", 4), ("e", 5)]  # arraysize
    assert cursor.fetchone() == ("f", 6)
    cursor.stream_timeout = 0.2
    started = time.monotonic()
    assert list(cursor) == []  # iteration ends when nothing comes within stream_timeout
    assert time.monotonic() - started >= 0.15
    assert cursor.streaming is True
    cursor.close()
    assert push_queries(events) == []
    assert shown_queries(events) == []


def test_each_cursor_has_its_own_push_query(events: streamsql.Connection) -> None:
    first, second = events.cursor(), events.cursor()
    first.stream_timeout = second.stream_timeout = 15
    first.execute("SELECT k FROM ev WHERE v = 1")
    second.execute("SELECT k FROM ev WHERE v = 2")
    assert len(push_queries(events)) == 2
    events.execute("INSERT INTO ev (k, v) VALUES ('one', 1), ('two', 2)")
    assert first.fetchmany(5) == [("one",)]
    assert second.fetchmany(5) == [("two",)]
    first.close()
    (remaining,) = push_queries(events)
    events.query(remaining).process_all_available(timeout=30)
    assert shown_queries(events) == [(remaining, "waiting for data")]
    events.execute("INSERT INTO ev (k, v) VALUES ('two again', 2)")
    assert second.fetchmany(5) == [("two again",)]
    second.close()
    assert push_queries(events) == []


def test_closing_the_connection_stops_its_push_queries(tmp_path: Path) -> None:
    con = streamsql.connect(str(tmp_path / "engine.db"))
    con.execute(EVENTS)
    cursor = con.cursor()
    cursor.execute("SELECT k FROM ev")
    (name,) = push_queries(con)
    query = con.query(name)
    assert query.is_active
    con.close()
    assert query.is_active is False
    assert query.status["message"] == "stopped"
    assert con.engine.queries == {}
    with pytest.raises(streamsql.InterfaceError):
        cursor.fetchone()


def test_closing_a_push_cursor_after_its_connection_is_harmless() -> None:
    con = streamsql.connect()
    con.execute("CREATE SOURCE ev (k VARCHAR) WITH (connector = 'memory')")
    cursor = con.cursor()
    cursor.execute("SELECT k FROM ev")
    con.close()
    with contextlib.suppress(streamsql.Error):  # PEP 249 allows an Error; nothing else
        cursor.close()


def test_the_connection_carries_the_exception_classes(con: streamsql.Connection) -> None:
    names = [
        "Warning", "Error", "InterfaceError", "DatabaseError", "DataError", "OperationalError",
        "IntegrityError", "InternalError", "ProgrammingError", "NotSupportedError",
    ]  # fmt: skip
    assert all(getattr(con, name) is getattr(streamsql, name) for name in names)
    with pytest.raises(con.ProgrammingError):
        con.execute("SELEC 1")
    assert con.autocommit is True
