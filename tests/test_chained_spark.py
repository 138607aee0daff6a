"""Chained stateful operators against real Spark (local mode): the rows emitted per batch.

Spark 3.5+ runs several stateful operators in one query in append mode, each under the
watermark its input propagates (WatermarkPropagator.scala: a window passes its input
watermark on, a stream-stream join the lower of its sides' state watermarks,
StreamingSymmetricHashJoinExec.produceOutputWatermark), late rows judged against the
previous batch's and state evicted by the current batch's. Three such queries run here over
the same small files in Spark and in streamsql, one file per source and batch
(maxFilesPerTrigger / max_files_per_trigger = 1, trigger availableNow), and must emit the
same rows in the same batches:

- a window over a window: per-key 5-minute counts, added up per hour over their
  `window_time` (Spark's `groupBy(window(window_time("window"), "1 hour"))`), with a row
  late for the first window;
- a window over a deduplication (`dropDuplicatesWithinWatermark`);
- a window over a stream-stream LEFT OUTER interval join of two sources: impressions and
  clicks per 15 minutes of impression time, unmatched impressions counted once the
  watermark has proven no click can come, and an impression late for the join.

The Spark session is test_export_spark's (one per test run).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

pyspark = pytest.importorskip("pyspark")
from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from test_export_spark import (  # noqa: E402
    SparkRun,
    normalized,
    spark,  # noqa: F401  (the session fixture, one per test run)
    streamsql_batches,
)

START = dt.datetime(2024, 1, 1)
US = dt.timedelta(microseconds=1)

# (key, minutes after START) per file: one file per batch.
EVENTS = [
    [("a", 1), ("b", 2), ("a", 7)],
    [("a", 12), ("b", 31), ("c", 20)],
    [("a", 58), ("b", 64)],
    [("a", 3), ("c", 70), ("a", 80)],  # a at 00:03: late (W = 00:54 since the batch before)
    [("b", 125)],
    [],
    [("a", 190)],
]
IMPRESSIONS = [
    [("a", 1), ("b", 2), ("c", 7)],
    [("a", 12), ("b", 20), ("c", 25)],
    [("a", 40), ("d", 44)],
    [("e", 10), ("a", 60)],  # e at 00:10: late for the join (W = 00:39)
    [("b", 80)],
    [],
    [("a", 130)],
]
CLICKS = [
    [("a", 5)],
    [("b", 9), ("c", 30)],  # c at 00:30: 23 minutes after impression c, no match
    [("a", 45), ("a", 50)],
    [("a", 65)],
    [("b", 85), ("d", 40)],
    [("x", 120)],
    [("a", 140)],
]


def write(directory: Path, files: list[list[tuple[str, int]]], key: str) -> Path:
    """JSON-lines files, their modification times in name order: Spark's file source takes
    new files oldest first, streamsql's in name order."""
    directory.mkdir(parents=True)
    for number, rows in enumerate(files):
        path = directory / f"{number:04d}.json"
        lines = [{key: k, "ts": str(START + dt.timedelta(minutes=m))} for k, m in rows]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        os.utime(path, (1_700_000_000 + number, 1_700_000_000 + number))
    return directory


def source(name: str, path: Path, key: str, delay: str) -> str:
    return (
        f"CREATE SOURCE {name} ({key} VARCHAR, ts TIMESTAMP, "
        f"WATERMARK FOR ts AS ts - INTERVAL '{delay}') WITH (connector = 'files', "
        f"path = '{path}', format = 'json', max_files_per_trigger = 1);\n"
    )


def read(session: SparkSession, path: Path, key: str) -> DataFrame:
    return (
        session.readStream.schema(f"{key} STRING, ts TIMESTAMP")
        .option("maxFilesPerTrigger", 1)
        .json(str(path))
    )


def events(session: SparkSession, tmp: Path) -> tuple[DataFrame, str]:
    """EVENTS as a source 10 minutes of watermark delay behind: in Spark, in streamsql."""
    path = write(tmp / "events", EVENTS, "k")
    rows = read(session, path, "k").withWatermark("ts", "10 minutes")
    return rows, source("events", path, "k", "10 minutes")


SINK = "CREATE SINK out WITH (connector = 'duckdb') AS "


def window_over_window(session: SparkSession, tmp: Path) -> tuple[DataFrame, str]:
    rows, sql = events(session, tmp)
    hourly = (
        rows.groupBy(F.window("ts", "5 minutes"), "k")
        .count()
        .groupBy(F.window(F.window_time("window"), "1 hour"))
        .agg(F.count("*").alias("keys"), F.sum("count").alias("n"))
        .select("window.start", "window.end", "keys", "n")
    )
    return hourly, sql + SINK + (
        "SELECT window_start, window_end, count(*) AS keys, sum(n) AS n FROM ("
        "  SELECT window_time, k, count(*) AS n FROM events"
        "  WINDOW TUMBLING (ts, INTERVAL '5 minutes') GROUP BY window_start, window_end, k"
        ") AS per_key WINDOW TUMBLING (window_time, INTERVAL '1 hour') "
        "GROUP BY window_start, window_end EMIT FINAL"
    )


def window_over_deduplication(session: SparkSession, tmp: Path) -> tuple[DataFrame, str]:
    rows, sql = events(session, tmp)
    windows = (
        rows.dropDuplicatesWithinWatermark(["k"])
        .groupBy(F.window("ts", "15 minutes"))
        .count()
        .select("window.start", "window.end", "count")
    )
    return windows, sql + SINK + (
        "SELECT window_start, window_end, count(*) AS n FROM ("
        "  SELECT * FROM events DEDUPLICATE ON (k) WITHIN WATERMARK"
        ") AS firsts WINDOW TUMBLING (ts, INTERVAL '15 minutes') "
        "GROUP BY window_start, window_end EMIT FINAL"
    )


def window_over_join(session: SparkSession, tmp: Path) -> tuple[DataFrame, str]:
    impressions = write(tmp / "impressions", IMPRESSIONS, "ad")
    clicks = write(tmp / "clicks", CLICKS, "ad")
    left = read(session, impressions, "ad").select(
        F.col("ad").alias("imp_ad"), F.col("ts").alias("imp_ts")
    )
    right = read(session, clicks, "ad").select(
        F.col("ad").alias("click_ad"), F.col("ts").alias("click_ts")
    )
    joined = left.withWatermark("imp_ts", "5 minutes").join(
        right.withWatermark("click_ts", "5 minutes"),
        F.expr("imp_ad = click_ad AND click_ts BETWEEN imp_ts AND imp_ts + INTERVAL 10 MINUTES"),
        "leftOuter",
    )
    windows = (
        joined.groupBy(F.window("imp_ts", "15 minutes"))
        .agg(F.count("*").alias("n"), F.count("click_ts").alias("clicks"))
        .select("window.start", "window.end", F.window_time("window"), "n", "clicks")
    )
    sql = (
        source("impressions", impressions, "ad", "5 minutes")
        + source("clicks", clicks, "ad", "5 minutes")
        + SINK
        + "SELECT window_start, window_end, window_time, count(*) AS n, count(c.ts) AS clicks "
        "FROM impressions AS i LEFT OUTER JOIN clicks AS c "
        "ON i.ad = c.ad AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '10 minutes' "
        "WINDOW TUMBLING (i.ts, INTERVAL '15 minutes') GROUP BY window_start, window_end "
        "EMIT FINAL"
    )
    return windows, sql


def at(hour: int, minute: int) -> dt.datetime:
    return START + dt.timedelta(hours=hour, minutes=minute)


# What both engines emit (Spark 4.3, recorded by this test), batch by batch.
EXPECTED = {
    "window_over_window": {
        4: [(at(0, 0), at(1, 0), 7, 7)],  # W = 01:10: 00:00-01:00 closes; a@00:03 was late
        7: [(at(1, 0), at(2, 0), 3, 3), (at(2, 0), at(3, 0), 1, 1)],  # the closing batch
    },
    "window_over_deduplication": {  # a key is dropped while in state: until its first
        2: [(at(0, 0), at(0, 15), 2)],  # row's time + 10 minutes passes the watermark, at
        3: [(at(0, 15), at(0, 30), 1)],  # the end of a batch (a@58, b@64 and c@70 dropped)
        5: [(at(1, 15), at(1, 30), 1)],
        7: [(at(2, 0), at(2, 15), 1)],
    },
    "window_over_join": {  # window_time: the window's end - 1 microsecond
        3: [(at(0, 0), at(0, 15), at(0, 15) - US, 4, 2)],  # a-a@5, b-b@9; c, a@12 unmatched
        4: [(at(0, 15), at(0, 30), at(0, 30) - US, 2, 1)],
        5: [(at(0, 30), at(0, 45), at(0, 45) - US, 3, 2)],  # a@40 clicked twice; d unmatched
        7: [
            (at(1, 0), at(1, 15), at(1, 15) - US, 1, 1),
            (at(1, 15), at(1, 30), at(1, 30) - US, 1, 1),
        ],
    },
}


def test_chained_operators_emit_what_spark_emits_batch_by_batch(
    spark: SparkSession,  # noqa: F811
    tmp_path: Path,
) -> None:
    runs = {}
    for number, build in enumerate(
        (window_over_window, window_over_deduplication, window_over_join)
    ):
        rows, sql = build(spark, tmp_path / build.__name__)
        run = SparkRun(rows, "append", tmp_path / f"checkpoint{number}")  # both run at once
        runs[build.__name__] = (
            run,
            normalized(streamsql_batches(sql, "out", tmp_path / f"{number}.db")),
        )
    for name, (run, streamsql_rows) in runs.items():
        assert run.result() == EXPECTED[name], name
        assert streamsql_rows == EXPECTED[name], name
