"""Semantics of issue 11: event times far in the future, time zones in timestamp strings,
trigger once, sub-millisecond watermark delays, session windows over expressions of their
bounds, query parameters of sinks, and the rules Spark's parsers follow for JSON and CSV.

Each test runs real queries on a DuckDB file in tmp_path and compares what the sink wrote
with what batch SQL (or Spark's documented rule) gives.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import streamsql
from streamsql.runtime.query import StreamingQuery


@pytest.fixture
def now(tmp_path: Path) -> Iterator[streamsql.Connection]:
    """An engine whose queries process what is there, then stop (trigger available_now)."""
    connection = streamsql.connect(str(tmp_path / "engine.db"), trigger="available_now")
    yield connection
    connection.close()


def rows(con: streamsql.Connection, sql: str) -> list[tuple[Any, ...]]:
    return con.execute(sql).fetchall()


def run_to_end(con: streamsql.Connection, sql: str, name: str = "out") -> StreamingQuery:
    """Create a sink on an available_now engine and wait until its query has stopped."""
    con.execute(sql)
    query = con.query(name)
    assert query.await_termination(30) is True
    assert query.exception is None
    return query


# -- item 7: event times after 2262-04-11 in TIMESTAMP_MS / TIMESTAMP_S ---------------------------


@pytest.mark.parametrize("time_type", ["TIMESTAMP_MS", "TIMESTAMP_S"])
def test_event_times_after_2262_in_coarse_timestamps_aggregate_as_batch_sql_does(
    now: streamsql.Connection, time_type: str
) -> None:
    """epoch_us of a TIMESTAMP_MS goes through nanoseconds, which end at 2262-04-11: the
    query failed with "Could not convert Timestamp to higher precision"."""
    now.execute(f"CREATE SOURCE src (k VARCHAR, ts {time_type}) WITH (connector = 'memory')")
    times = ["2300-01-01 00:01:00", "2300-01-01 00:04:00", "2300-01-01 00:30:00"]
    now.executemany("INSERT INTO src VALUES ('a', ?)", [[t] for t in times])
    run_to_end(
        now,
        "CREATE SINK out WITH (connector = 'duckdb') AS SELECT window_start, k, count(*) AS n "
        "FROM src WATERMARK ts DELAY OF INTERVAL '1 minute' "
        "WINDOW TUMBLING (ts, INTERVAL '5 minutes') GROUP BY window_start, k EMIT FINAL",
    )
    assert rows(now, "SELECT * FROM out") == [(dt.datetime(2300, 1, 1), "a", 2)]
