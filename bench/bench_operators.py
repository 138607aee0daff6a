"""Throughput of the operators over several inputs, each next to DuckDB batch SQL over the
same rows in the same run.

For each case, events/s per core (DuckDB on one thread) through the engine, from memory
sources in micro-batches of `--batch-rows` (trigger available_now, a duckdb sink), and the
same result computed by one DuckDB batch query over all the rows:

  - dedup: DEDUPLICATE ON (k) over a stream with many repeats (Spark's dropDuplicates
    without the event time among the keys: each key once, ever);
  - stream-static join: every event joined with a 10,000-row table (LEFT JOIN);
  - stream-stream join: impressions and clicks (half the events each), an interval join
    (click within 10 minutes of its impression);
  - union: UNION ALL of two sources into a 5-minute tumbling count;
  - chained windows: per-key 1-minute windows counted per hour (a window over a window).

    python bench/bench_operators.py [--events 2000000] [--batch-rows 250000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

import streamsql

T0 = 1_704_067_200_000_000  # 2024-01-01, microseconds


@dataclass(frozen=True)
class Case:
    name: str
    sources: dict[str, str]  # source name -> SQL of its rows (over range(n) AS t(i))
    query: str  # the streaming query over the sources (and the table `dim`)
    batch: str  # the same result in one DuckDB query over tables named as the sources


COLUMNS = "(k BIGINT, ts TIMESTAMP, v BIGINT, WATERMARK FOR ts AS ts - INTERVAL '1 minute')"
EVENTS = (
    "SELECT i % {keys} AS k, make_timestamp({t0} + i * {step}) AS ts, i AS v "
    "FROM range({n}) AS t(i)"
)

CASES = [
    Case(
        "dedup",
        {"events": EVENTS.replace("{keys}", "200000").replace("{step}", "100")},
        "SELECT k, ts, v FROM events DEDUPLICATE ON (k)",
        "SELECT k, min(ts), arg_min(v, ts) FROM events GROUP BY k",
    ),
    Case(
        "stream-static join",
        {"events": EVENTS.replace("{keys}", "20000").replace("{step}", "100")},
        "SELECT e.k, d.name, e.v FROM events AS e LEFT JOIN dim AS d ON e.k = d.k",
        "SELECT e.k, d.name, e.v FROM events AS e LEFT JOIN dim AS d ON e.k = d.k",
    ),
    Case(
        "stream-stream join",
        {
            "impressions": EVENTS.replace("{keys}", "1000000000").replace("{step}", "200"),
            "clicks": (
                "SELECT i AS k, make_timestamp({t0} + i * 200 + 60000000) AS ts, i AS v "
                "FROM range({n}) AS t(i)"
            ),
        },
        "SELECT i.k, i.ts AS shown, c.ts AS clicked FROM impressions AS i JOIN clicks AS c "
        "ON i.k = c.k AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '10 minutes'",
        "SELECT i.k, i.ts AS shown, c.ts AS clicked FROM impressions AS i JOIN clicks AS c "
        "ON i.k = c.k AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '10 minutes'",
    ),
    Case(
        "union",
        {
            "a": EVENTS.replace("{keys}", "10").replace("{step}", "10000"),
            "b": EVENTS.replace("{keys}", "10").replace("{step}", "10000"),
        },
        "SELECT window_start, k, count(*) AS n FROM (SELECT * FROM a UNION ALL SELECT * FROM b) "
        "WINDOW TUMBLING (ts, INTERVAL '5 minutes') GROUP BY window_start, k EMIT FINAL",
        "SELECT time_bucket(INTERVAL '5 minutes', ts) AS w, k, count(*) FROM "
        "(SELECT * FROM a UNION ALL SELECT * FROM b) GROUP BY ALL",
    ),
    Case(
        "chained windows",
        {"events": EVENTS.replace("{keys}", "1000").replace("{step}", "20000")},
        "SELECT window_start, count(*) AS keys, sum(n) AS n FROM (SELECT window_time, k, "
        "count(*) AS n FROM events WINDOW TUMBLING (ts, INTERVAL '1 minute') "
        "GROUP BY window_start, window_end, k) WINDOW TUMBLING (window_time, INTERVAL '1 hour') "
        "GROUP BY window_start EMIT FINAL",
        "SELECT time_bucket(INTERVAL '1 hour', w) AS h, count(*), sum(n) FROM ("
        "SELECT time_bucket(INTERVAL '1 minute', ts) AS w, k, count(*) AS n FROM events "
        "GROUP BY ALL) GROUP BY ALL",
    ),
]


def rows(sql: str, count: int) -> pa.Table:
    return duckdb.sql(sql.format(t0=T0, n=count)).to_arrow_table()


def engine(
    case: Case, tables: dict[str, pa.Table], dim: pa.Table, batch_rows: int
) -> tuple[float, int, int]:
    """Seconds from starting the sink until it stopped, its batches and its output rows."""
    with tempfile.TemporaryDirectory() as scratch:
        con = streamsql.connect(str(Path(scratch) / "bench.db"), config={"threads": 1})
        try:
            con.register("dim_rows", dim)
            con.execute("CREATE TABLE dim AS SELECT * FROM dim_rows")
            for name, table in tables.items():
                con.execute(
                    f"CREATE SOURCE {name} {COLUMNS} WITH (connector = 'memory', "
                    f"max_rows_per_trigger = {batch_rows})"
                )
                con.register(f"{name}_rows", table)
                con.execute(f"INSERT INTO {name} SELECT * FROM {name}_rows")
            started = time.perf_counter()
            con.execute(
                f"CREATE SINK out WITH (connector = 'duckdb', trigger = 'available_now') AS "
                f"{case.query}"
            )
            query = con.query("out")
            query.await_termination()
            seconds = time.perf_counter() - started
            (output,) = con.execute("SELECT count(*) FROM out").fetchall()[0]
            return seconds, query.last_progress.batch_id + 1, output
        finally:
            con.close()


def batch(case: Case, tables: dict[str, pa.Table], dim: pa.Table) -> tuple[float, int]:
    """Seconds for DuckDB to compute the result into a table, as the engine's sink keeps
    it, and its rows."""
    con = duckdb.connect(config={"threads": 1})
    con.register("dim", dim)
    for name, table in tables.items():
        con.register(name, table)
    started = time.perf_counter()
    con.execute(f"CREATE TABLE result AS {case.batch}")
    seconds = time.perf_counter() - started
    return seconds, con.execute("SELECT count(*) FROM result").fetchall()[0][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--batch-rows", type=int, default=250_000)
    parser.add_argument("--cases", default=",".join(c.name for c in CASES))
    args = parser.parse_args()
    dim = duckdb.sql(
        "SELECT i AS k, 'name ' || i AS name FROM range(10000) AS t(i)"
    ).to_arrow_table()
    wanted = set(args.cases.split(","))
    results = {}
    print(f"{args.events:,} events per case, batches of {args.batch_rows:,} rows, 1 thread")
    for case in CASES:
        if case.name not in wanted:
            continue
        share = args.events // len(case.sources)
        tables = {name: rows(sql, share) for name, sql in case.sources.items()}
        raw, raw_rows = batch(case, tables, dim)
        seconds, batches, output = engine(case, tables, dim, args.batch_rows)
        results[case.name] = {
            "engine_events_per_s": round(args.events / seconds),
            "duckdb_events_per_s": round(args.events / raw),
            "batches": batches,
            "engine_rows": output,
            "duckdb_rows": raw_rows,
        }
        print(
            f"  {case.name:20}: {args.events / seconds / 1e6:6.2f} M events/s per core "
            f"({batches} batches, {output:,} rows out); DuckDB batch SQL "
            f"{args.events / raw / 1e6:6.2f} M events/s ({raw_rows:,} rows): "
            f"{raw / seconds:.0%} of it"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
