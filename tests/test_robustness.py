"""What used to escape as a raw Python exception: deep nesting, an option without a value,
timestamps beyond Python's year 9999, a foreign exception stopping a query.

(tests/test_fuzz.py looks for more of them with mutated statements.)
"""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pyarrow as pa
import pytest

import streamsql
from streamsql.runtime.progress import timestamp_of
from streamsql.sql import MAX_NESTING

SOURCE = "CREATE SOURCE ev (k VARCHAR, t TIMESTAMP, v DOUBLE) WITH (connector = 'memory')"


@pytest.fixture
def con() -> Iterator[streamsql.Connection]:
    connection = streamsql.connect(":memory:", trigger="available_now")
    connection.execute(SOURCE)
    yield connection
    connection.close()


@pytest.mark.parametrize("depth", [40, 50, 200, 400])
def test_deeply_nested_statements_run(con: streamsql.Connection, depth: int) -> None:
    assert con.execute("SELECT " + "abs(" * depth + "-1" + ")" * depth).fetchall() == [(1,)]
    assert con.execute("SELECT " + "(" * depth + "1" + ")" * depth).fetchall() == [(1,)]
    con.execute("INSERT INTO ev VALUES ('a', NULL, -1.5), ('a', NULL, 2)")
    con.execute(
        "CREATE SINK deep WITH (connector = 'duckdb') AS SELECT k, sum("
        + "abs(" * depth
        + "v"
        + ")" * depth
        + ") AS total FROM ev GROUP BY k EMIT CHANGES"
    )
    con.query("deep").await_termination(60)
    assert con.execute("SELECT k, total FROM deep").fetchall() == [("a", 3.5)]


def test_nesting_deeper_than_the_limit_is_a_syntax_error_at_its_position(
    con: streamsql.Connection,
) -> None:
    depth = MAX_NESTING + 1
    sql = "SELECT 1,\n  " + "(" * depth + "1" + ")" * depth
    with pytest.raises(streamsql.SQLSyntaxError) as caught:
        con.execute(sql)
    assert (caught.value.line, caught.value.col) == (2, 3 + MAX_NESTING)
    assert f"more than {MAX_NESTING} levels of parentheses" in str(caught.value)


def test_an_option_without_a_value_is_a_syntax_error_at_its_position(
    con: streamsql.Connection,
) -> None:
    with pytest.raises(streamsql.SQLSyntaxError) as caught:
        con.execute("CREATE SINK x WITH (connector = 'duckdb',\n  format = ) AS SELECT * FROM ev")
    assert (caught.value.line, caught.value.col) == (2, 12)
    assert "Expected a value for option format" in str(caught.value)


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "1970-01-01T00:00:00.000000Z"),
        (253402300799999999, "9999-12-31T23:59:59.999999Z"),
        (253402300800000000, "+10000-01-01T00:00:00.000000Z"),
        (9223372036854775806, "+294247-01-10T04:00:54.775806Z"),  # DuckDB's last timestamp
        (-9223372036854775806, "-290308-12-21T19:59:05.224194Z"),  # 290309 BC, astronomically
    ],
)
def test_timestamps_beyond_python_years_are_printed(micros: int, text: str) -> None:
    assert timestamp_of(micros) == text


def test_rows_with_timestamps_beyond_python_years_are_fetched_as_duckdb_gives_them(
    con: streamsql.Connection,
) -> None:
    con.execute(
        "INSERT INTO ev VALUES ('far', TIMESTAMP '294247-01-10 04:00:54', 1), "
        "('inf', 'infinity', 2), ('near', TIMESTAMP '2024-01-01', 3)"
    )
    con.execute("CREATE SINK shown WITH (connector = 'console') AS SELECT k, t FROM ev")
    con.query("shown").await_termination(60)
    pushed = con.execute("SELECT k, t FROM ev").fetchall()
    assert (
        pushed
        == con.execute(
            "SELECT * FROM (VALUES ('far', TIMESTAMP '294247-01-10 04:00:54'), "
            "('inf', 'infinity'::TIMESTAMP), ('near', TIMESTAMP '2024-01-01'))"
        ).fetchall()
    )


def test_a_foreign_exception_that_stops_a_query_is_named_with_its_batch(
    con: streamsql.Connection,
) -> None:
    def broken(batch_id: int, rows: pa.Table) -> None:
        [][rows.num_rows]  # a bug in a callback: IndexError

    con.register_callback("broken", broken)
    con.execute("INSERT INTO ev VALUES ('a', NULL, 1)")
    con.execute(
        "CREATE SINK s WITH (connector = 'callback', callback = 'broken') AS SELECT k FROM ev"
    )
    with pytest.raises(streamsql.StreamingQueryError) as caught:
        con.query("s").await_termination(60)
    assert str(caught.value) == "Sink s failed in batch 0: IndexError: list index out of range"
    assert isinstance(caught.value.__cause__, IndexError)
    assert con.query("s").status["error"] == str(caught.value)


@pytest.mark.parametrize(
    ("sql", "error", "message"),
    [
        (
            "EXPLAIN CREATE SINK k",
            streamsql.PlanningError,
            "CREATE SINK k needs AS SELECT ...",
        ),
        (
            "SELECT * FROM ev WATERMARK t DELAY OF INTERVAL NULL",
            streamsql.PlanningError,
            "WATERMARK delay INTERVAL (NULL) is NULL, not an interval [bad-interval]",
        ),
        (  # DuckDB's parser judges it before the engine would
            "INSERT INTO ev ",
            streamsql.SQLSyntaxError,
            'line 1, column 13: syntax error at or near "ev"\n  INSERT INTO ev \n              ^',
        ),
        (
            "SELECT " + "[" * 70 + "k" + "]" * 70 + " AS deep FROM ev",
            streamsql.NotSupportedError,
            "returns rows that Arrow cannot carry: Recursion level in ArrowSchema struct exceeded",
        ),
    ],
    ids=["explain-sink-without-query", "null-interval", "insert-without-rows", "lists-70-deep"],
)
def test_what_the_fuzzer_found_is_a_streamsql_error(
    con: streamsql.Connection, sql: str, error: type[streamsql.Error], message: str
) -> None:
    with pytest.raises(error) as caught:
        con.execute(sql).fetchall()
    assert str(caught.value).endswith(message)


def test_a_duckdb_error_that_stops_a_query_is_a_streamsql_error_with_its_batch(
    con: streamsql.Connection,
) -> None:
    con.execute("INSERT INTO ev VALUES ('abc', NULL, 1)")
    con.execute(
        "CREATE SINK s WITH (connector = 'duckdb') AS SELECT CAST(k AS INTEGER) AS n FROM ev"
    )
    with pytest.raises(streamsql.StreamingQueryError) as caught:
        con.query("s").await_termination(60)
    failure = con.query("s").exception
    assert isinstance(failure, streamsql.DataError)
    assert str(failure).startswith("batch 0: Conversion Error: Could not convert string 'abc'")
    assert isinstance(failure.__cause__, duckdb.ConversionException)
    assert caught.value.__cause__ is failure
