"""Throughput of streaming deduplication next to DuckDB's batch deduplication.

Prints, in one run on the same rows (every event twice, the copies a row apart, a few
seconds out of order), events/s per core (DuckDB on one thread) from the memory source for:
  - dropDuplicates on (id, ts): DEDUPLICATE ON (id, ts), keys forgotten by the watermark;
  - dropDuplicatesWithinWatermark on (id): DEDUPLICATE ON (id) WITHIN WATERMARK;
  - DuckDB's batch query over all the rows at once, keeping each key's first row
    (row_number() over the input order), the ceiling to compare with.

    python bench/bench_dedup.py [--events 2000000] [--batch-rows 250000]
"""

from __future__ import annotations

import argparse
import json
import time

import duckdb
import pyarrow as pa
from bench_tumbling import run_query

import streamsql

QUERIES = {
    "dropDuplicates (id, ts)": "SELECT * FROM events DEDUPLICATE ON (id, ts)",
    "dropDuplicatesWithinWatermark (id)": (
        "SELECT * FROM events DEDUPLICATE ON (id) WITHIN WATERMARK"
    ),
}
SOURCE = (
    "CREATE SOURCE events (id BIGINT, ts TIMESTAMP, "
    "WATERMARK FOR ts AS ts - INTERVAL '10 minutes') "
    "WITH (connector = 'memory', max_rows_per_trigger = {batch_rows})"
)


def events(count: int) -> pa.Table:
    """`count` events: ids 0, 0, 1, 1, ..., one id per millisecond, a few seconds late."""
    return duckdb.sql(
        f"SELECT i // 2 AS id, "
        f"make_timestamp(1704067200000000 + (i // 2) * 1000 - (hash(i // 2) % 5000000)::BIGINT) "
        f"AS ts FROM range({count}) AS t(i)"
    ).to_arrow_table()


def raw_duckdb(table: pa.Table, keys: str) -> float:
    """Seconds for DuckDB, on one thread, to keep each key's first row in one batch query."""
    con = duckdb.connect(config={"threads": 1})
    con.register("rows", table)
    started = time.perf_counter()
    con.execute(
        f"SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY seq) AS r "
        f"FROM (SELECT *, row_number() OVER () AS seq FROM rows)) WHERE r = 1"
    ).fetchall()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--batch-rows", type=int, default=250_000)
    args = parser.parse_args()
    table = events(args.events)
    results: dict[str, float] = {}
    print(f"{args.events:,} events (each twice), batches of {args.batch_rows:,} rows, 1 thread")

    def load(con: streamsql.Connection) -> None:
        con.register("generated", table)
        con.execute("INSERT INTO events SELECT * FROM generated")

    for (name, query), keys in zip(QUERIES.items(), ("id, ts", "id"), strict=True):
        raw = raw_duckdb(table, keys)
        seconds, batches = run_query(
            SOURCE.format(batch_rows=args.batch_rows), 1, load, query=query
        )
        results[name] = args.events / seconds
        results[f"{name}, raw DuckDB"] = args.events / raw
        print(
            f"  {name:36}: {args.events / seconds / 1e6:5.2f} M events/s ({batches} batches, "
            f"{seconds:.2f} s); DuckDB batch query {args.events / raw / 1e6:5.2f} M events/s "
            f"({raw / seconds:.0%} of it)"
        )
    print(json.dumps({k: round(v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
