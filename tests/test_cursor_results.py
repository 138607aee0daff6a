"""DuckDB's result methods on cursors: Arrow tables with DuckDB's types, record batches,
pandas and polars frames, for ordinary statements and push queries."""

from __future__ import annotations

import datetime as dt
import decimal
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

import streamsql

TYPED = (
    "SELECT 1::HUGEINT AS h, 2::UTINYINT AS u, [1, 2] AS l, {'a': 1} AS s, "
    "TIMESTAMPTZ '2024-01-01 00:00:00+00' AS tz, TIMESTAMP '2024-01-01 00:00:00' AS ts, "
    "1.5::DECIMAL(5, 2) AS d"
)
TYPED_SCHEMA = pa.schema(
    [
        ("h", pa.decimal128(38, 0)),
        ("u", pa.uint8()),
        ("l", pa.list_(pa.field("l", pa.int32()))),
        ("s", pa.struct([("a", pa.int32())])),
        ("tz", pa.timestamp("us", tz="UTC")),
        ("ts", pa.timestamp("us")),
        ("d", pa.decimal128(5, 2)),
    ]
)
SOURCE = (
    "CREATE SOURCE ev (k VARCHAR, ts TIMESTAMP, v DECIMAL(6, 2), h HUGEINT, n UTINYINT, "
    "WATERMARK FOR ts AS ts - INTERVAL '1 minute') WITH (connector = 'memory')"
)
ROWS = (
    "INSERT INTO ev VALUES ('a', TIMESTAMP '2024-01-01 00:00:00', 1.50, 10, 1), "
    "('b', TIMESTAMP '2024-01-01 00:00:10', 2.25, 20, 2), "
    "('a', TIMESTAMP '2024-01-01 00:00:20', 3.00, 30, 3)"
)
PUSH_SCHEMA = pa.schema(
    [
        ("k", pa.string()),
        ("v", pa.decimal128(6, 2)),
        ("h", pa.decimal128(38, 0)),
        ("n", pa.uint8()),
        ("ts", pa.timestamp("us")),
    ]
)


@pytest.fixture
def con(tmp_path: Path) -> Iterator[streamsql.Connection]:
    with streamsql.connect(str(tmp_path / "engine.db"), trigger="available_now") as con:
        con.execute(SOURCE)
        con.execute(ROWS)
        yield con


def test_arrow_of_a_duckdb_statement_keeps_duckdb_types(con: streamsql.Connection) -> None:
    table = con.cursor().execute(TYPED).fetch_arrow_table()
    assert table.schema == TYPED_SCHEMA
    assert table.to_pylist() == [
        {
            "h": decimal.Decimal(1),
            "u": 2,
            "l": [1, 2],
            "s": {"a": 1},
            "tz": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            "ts": dt.datetime(2024, 1, 1),
            "d": decimal.Decimal("1.50"),
        }
    ]
    assert con.cursor().execute(TYPED).arrow().schema == TYPED_SCHEMA


def test_arrow_takes_what_fetchall_would_after_rows_fetched(con: streamsql.Connection) -> None:
    cursor = con.cursor().execute("SELECT * FROM range(5) t(i)")
    assert cursor.fetchmany(2) == [(0,), (1,)]
    assert cursor.fetch_arrow_table().column("i").to_pylist() == [2, 3, 4]


def test_arrow_of_a_push_query_is_its_rows_until_it_stops(con: streamsql.Connection) -> None:
    cursor = con.cursor()
    cursor.execute("SELECT k, v, h, n, ts FROM ev WHERE v > 2")
    table = cursor.fetch_arrow_table()
    assert table.schema == PUSH_SCHEMA  # DuckDB's types, not ones inferred from Python values
    assert table.to_pylist() == [
        {
            "k": "b",
            "v": decimal.Decimal("2.25"),
            "h": decimal.Decimal(20),
            "n": 2,
            "ts": dt.datetime(2024, 1, 1, 0, 0, 10),
        },
        {
            "k": "a",
            "v": decimal.Decimal("3.00"),
            "h": decimal.Decimal(30),
            "n": 3,
            "ts": dt.datetime(2024, 1, 1, 0, 0, 20),
        },
    ]
    assert cursor.streaming is False
    assert cursor.fetch_arrow_table().num_rows == 0  # everything was fetched, as fetchall


def test_arrow_of_a_push_query_follows_rows_fetched_before(con: streamsql.Connection) -> None:
    cursor = con.cursor()
    cursor.execute("SELECT k, v, h, n, ts FROM ev")
    assert cursor.fetchone()[0] == "a"
    table = cursor.fetch_arrow_table()
    assert table.column("k").to_pylist() == ["b", "a"]
    assert table.column("h").to_pylist() == [decimal.Decimal(20), decimal.Decimal(30)]


def test_arrow_of_a_push_query_without_rows_has_its_schema(con: streamsql.Connection) -> None:
    table = con.cursor().execute("SELECT k, v, h, n, ts FROM ev WHERE k = 'none'").arrow()
    assert table.num_rows == 0
    assert table.schema == PUSH_SCHEMA


def test_record_batches_of_a_push_query(con: streamsql.Connection) -> None:
    cursor = con.cursor()
    cursor.execute("SELECT k, sum(v) AS total FROM ev GROUP BY k EMIT CHANGES")
    reader = cursor.fetch_record_batch()
    assert reader.schema == pa.schema([("k", pa.string()), ("total", pa.decimal128(38, 2))])
    assert sorted(reader.read_all().to_pylist(), key=lambda r: r["k"]) == [
        {"k": "a", "total": decimal.Decimal("4.50")},
        {"k": "b", "total": decimal.Decimal("2.25")},
    ]


def test_record_batches_of_a_duckdb_statement(con: streamsql.Connection) -> None:
    reader = con.cursor().execute("SELECT * FROM range(2500) t(i)").fetch_record_batch(1000)
    assert reader.schema == pa.schema([("i", pa.int64())])
    assert reader.read_all().column("i").to_pylist() == list(range(2500))


def test_arrow_of_a_management_statement(con: streamsql.Connection) -> None:
    con.execute("CREATE SINK out WITH (connector = 'duckdb') AS SELECT k FROM ev")
    con.query("out").await_termination(30)
    table = con.cursor().execute("SHOW SINKS").fetch_arrow_table()
    assert table.column("name").to_pylist() == ["out"]


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pandas not installed")
def test_df_of_a_push_query(con: streamsql.Connection) -> None:
    frame = con.cursor().execute("SELECT k, n, v, ts FROM ev").df()
    assert list(frame.columns) == ["k", "n", "v", "ts"]
    assert str(frame["n"].dtype) == "uint8"
    assert frame["k"].tolist() == ["a", "b", "a"]
    assert frame["v"].tolist() == [1.5, 2.25, 3.0]  # float64, as DuckDB's df() gives
    assert str(frame["ts"].dtype) == "datetime64[us]"
    assert con.cursor().execute("SELECT 42::SMALLINT AS x").df()["x"].tolist() == [42]


@pytest.mark.parametrize(("method", "package"), [("df", "pandas"), ("pl", "polars")])
def test_frames_name_the_package_they_need(
    con: streamsql.Connection, monkeypatch: pytest.MonkeyPatch, method: str, package: str
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    cursor = con.cursor().execute("SELECT 1")
    with pytest.raises(streamsql.NotSupportedError, match=f"{method}\\(\\) needs {package}"):
        getattr(cursor, method)()


@pytest.mark.skipif(importlib.util.find_spec("polars") is None, reason="polars not installed")
def test_pl_of_a_push_query(con: streamsql.Connection) -> None:
    frame = con.cursor().execute("SELECT k, n FROM ev").pl()
    assert frame["k"].to_list() == ["a", "b", "a"]
    assert str(frame["n"].dtype) == "UInt8"


def test_record_batches_of_a_running_push_query_come_as_it_emits(tmp_path: Path) -> None:
    with streamsql.connect(str(tmp_path / "engine.db")) as con:  # runs until stopped
        con.execute(SOURCE)
        cursor = con.cursor()
        cursor.execute("SELECT k, n FROM ev")
        reader = cursor.fetch_record_batch()
        con.execute("INSERT INTO ev (k, n) VALUES ('x', 7)")
        first = reader.read_next_batch()
        assert first.schema == pa.schema([("k", pa.string()), ("n", pa.uint8())])
        assert first.to_pylist() == [{"k": "x", "n": 7}]
        con.execute("INSERT INTO ev (k, n) VALUES ('y', 8), ('z', 9)")
        assert reader.read_next_batch().to_pylist() == [{"k": "y", "n": 8}, {"k": "z", "n": 9}]
        cursor.close()
