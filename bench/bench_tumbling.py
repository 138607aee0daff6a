"""Throughput and per-batch overhead of a 5-minute tumbling count over 10 keys.

Prints, in one run on the same rows:
  - events/s through the engine from the memory source and from the files source
    (Parquet and JSON lines), with DuckDB on one thread (per core) and on all cores;
  - the raw DuckDB batch GROUP BY over the same rows, the ceiling to compare with;
  - the fixed per-batch overhead: the time of a micro-batch of one row.

    python bench/bench_tumbling.py [--events 2000000] [--batch-rows 250000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

import streamsql

QUERY = """
SELECT window_start, window_end, k, count(*) AS n
FROM events
WINDOW TUMBLING (ts, INTERVAL '5 minutes')
GROUP BY window_start, window_end, k
EMIT FINAL
"""
TARGET_EVENTS_PER_CORE = 1_500_000
TARGET_OVERHEAD_MS = 5.0


def events(count: int) -> pa.Table:
    """`count` events, 10 keys, one per millisecond, a few seconds out of order."""
    return duckdb.sql(
        f"SELECT 'key' || (i % 10) AS k, "
        f"make_timestamp(1704067200000000 + i * 1000 - (hash(i) % 5000000)::BIGINT) AS ts "
        f"FROM range({count}) AS t(i)"
    ).to_arrow_table()


def raw_duckdb(table: pa.Table, threads: int) -> float:
    """Seconds for DuckDB to group the same rows into windows, in one batch query."""
    con = duckdb.connect(config={"threads": threads})
    con.register("rows", table)
    started = time.perf_counter()
    con.execute(
        "SELECT time_bucket(INTERVAL '5 minutes', ts, TIMESTAMP '1970-01-01') AS w, k, count(*) "
        "FROM rows GROUP BY ALL"
    ).fetchall()
    return time.perf_counter() - started


def run_query(source_sql: str, threads: int, load=None) -> tuple[float, int]:
    """Seconds from starting the sink until it stopped (available_now), and its batches."""
    with tempfile.TemporaryDirectory() as scratch:
        con = streamsql.connect(str(Path(scratch) / "bench.db"), config={"threads": threads})
        try:
            con.execute(source_sql)
            if load:
                load(con)
            started = time.perf_counter()
            con.execute(
                f"CREATE SINK out WITH (connector = 'duckdb', trigger = 'available_now') AS {QUERY}"
            )
            query = con.query("out")
            query.await_termination()
            return time.perf_counter() - started, query.last_progress.batch_id + 1
        finally:
            con.close()


def memory_source(table: pa.Table, batch_rows: int, threads: int) -> tuple[float, int]:
    def load(con: streamsql.Connection) -> None:
        con.register("generated", table)
        con.execute("INSERT INTO events SELECT * FROM generated")

    source = (
        "CREATE SOURCE events (k VARCHAR, ts TIMESTAMP, "
        "WATERMARK FOR ts AS ts - INTERVAL '10 minutes') "
        f"WITH (connector = 'memory', max_rows_per_trigger = {batch_rows})"
    )
    return run_query(source, threads, load)


def file_source(directory: Path, fmt: str, threads: int) -> tuple[float, int]:
    source = (
        "CREATE SOURCE events (k VARCHAR, ts TIMESTAMP, "
        "WATERMARK FOR ts AS ts - INTERVAL '10 minutes') "
        f"WITH (connector = 'files', path = '{directory}', format = '{fmt}', "
        "max_files_per_trigger = 1)"
    )
    return run_query(source, threads)


def write_files(table: pa.Table, batch_rows: int, root: Path) -> dict[str, Path]:
    paths = {"parquet": root / "parquet", "json": root / "json"}
    for path in paths.values():
        path.mkdir()
    for index, offset in enumerate(range(0, table.num_rows, batch_rows)):
        chunk = table.slice(offset, batch_rows)
        pq.write_table(chunk, paths["parquet"] / f"part_{index:05d}.parquet")
        lines = duckdb.sql(
            "SELECT to_json({'k': k, 'ts': strftime(ts, '%Y-%m-%d %H:%M:%S.%f')}) FROM chunk"
        ).fetchall()
        (paths["json"] / f"part_{index:05d}.jsonl").write_text(
            "\n".join(line for (line,) in lines) + "\n"
        )
    return paths


def batch_overhead(rows: int, database: str) -> tuple[float, float]:
    """Median duration of a one-row micro-batch, and wall time per batch (with planning and
    the offset log written before each batch), on a database file or in memory."""
    with tempfile.TemporaryDirectory() as scratch:
        path = str(Path(scratch) / "bench.db") if database == "file" else ":memory:"
        con = streamsql.connect(path)
        try:
            con.execute(
                "CREATE SOURCE events (k VARCHAR, ts TIMESTAMP, "
                "WATERMARK FOR ts AS ts - INTERVAL '10 minutes') "
                "WITH (connector = 'memory', max_rows_per_trigger = 1)"
            )
            con.register("generated", events(rows))
            con.execute("INSERT INTO events SELECT * FROM generated ORDER BY ts")
            started = time.perf_counter()
            con.execute(
                f"CREATE SINK out WITH (connector = 'duckdb', trigger = 'available_now') AS {QUERY}"
            )
            query = con.query("out")
            query.await_termination()
            wall = (time.perf_counter() - started) / (query.last_progress.batch_id + 1)
            median = statistics.median(p.duration_ms["total"] for p in query.recent_progress)
            return median, wall * 1000
        finally:
            con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--batch-rows", type=int, default=250_000)
    parser.add_argument("--overhead-batches", type=int, default=300)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    table = events(args.events)
    results: dict[str, float] = {}
    print(f"{args.events:,} events, 10 keys, batches of {args.batch_rows:,} rows, {cores} cores")
    for threads in sorted({1, cores}):
        label = f"{threads} thread{'s' if threads > 1 else ''}"
        raw = raw_duckdb(table, threads)
        results[f"raw_duckdb_{threads}"] = args.events / raw
        print(f"  raw DuckDB GROUP BY, {label:9}: {args.events / raw / 1e6:6.2f} M events/s")
        seconds, batches = memory_source(table, args.batch_rows, threads)
        results[f"memory_{threads}"] = args.events / seconds
        print(
            f"  memory source,       {label:9}: {args.events / seconds / 1e6:6.2f} M events/s "
            f"({batches} batches, {seconds:.2f} s, {raw / seconds:.0%} of raw DuckDB)"
        )
    with tempfile.TemporaryDirectory() as scratch:
        paths = write_files(table, args.batch_rows, Path(scratch))
        for fmt, path in paths.items():
            seconds, batches = file_source(path, fmt, cores)
            results[f"files_{fmt}"] = args.events / seconds
            print(
                f"  files source ({fmt:7}), {cores} threads: "
                f"{args.events / seconds / 1e6:6.2f} M events/s ({batches} batches)"
            )
    for database in ("memory", "file"):
        median, wall = batch_overhead(args.overhead_batches, database)
        results[f"batch_ms_{database}"] = median
        results[f"batch_wall_ms_{database}"] = wall
        print(
            f"  one-row batch, {database + ' database':15}: {median:.2f} ms inside the batch, "
            f"{wall:.2f} ms per batch all in (planning, offset log, commit)"
        )
    wall = results["batch_wall_ms_memory"]
    per_core = results["memory_1"]
    print(
        f"targets: >= {TARGET_EVENTS_PER_CORE / 1e6:.1f} M events/s per core from memory: "
        f"{'met' if per_core >= TARGET_EVENTS_PER_CORE else 'MISSED'} ({per_core / 1e6:.2f} M); "
        f"per-batch overhead < {TARGET_OVERHEAD_MS:.0f} ms: "
        f"{'met' if wall < TARGET_OVERHEAD_MS else 'MISSED'} ({wall:.2f} ms)"
    )
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))


if __name__ == "__main__":
    main()
