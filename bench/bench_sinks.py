"""What each sink kind costs per batch, against the duckdb sink in the same run.

A stateless copy query (every input row is emitted) runs over a memory source on a database
file, in batches of `--rows` rows; each sink kind gets the same batches. Prints the median
wall time per batch (the batch's own `duration_ms.total`: read, steps, sink, commit) and
rows/s, and each kind's time relative to the duckdb sink. File sinks are measured with and
without fsync, and with compaction every 10 batches.

    python bench/bench_sinks.py [--rows 1 100000] [--batches 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import duckdb
import pyarrow as pa

import streamsql

SINKS = {
    "duckdb": "connector = 'duckdb'",
    "parquet": "connector = 'parquet', path = '{out}', compact_every = 0",
    "parquet, no fsync": "connector = 'parquet', path = '{out}', compact_every = 0, fsync = false",
    "parquet, compact every 10": "connector = 'parquet', path = '{out}', compact_every = 10",
    "csv": "connector = 'csv', path = '{out}', compact_every = 0",
    "json": "connector = 'json', path = '{out}', compact_every = 0",
    "callback (no-op)": "connector = 'callback', callback = 'noop'",
}


def rows(count: int, batch: int) -> pa.Table:
    return duckdb.sql(
        f"SELECT 'key' || (i % 10) AS k, i + {batch * count} AS v, "
        f"make_timestamp(1704067200000000 + i * 1000) AS ts FROM range({count}) AS t(i)"
    ).to_arrow_table()


def batch_ms(directory: Path, options: str, count: int, batches: int) -> float:
    """Median milliseconds per batch of a copy query into the sink."""
    con = streamsql.connect(str(directory / "bench.db"))
    try:
        con.register_callback("noop", lambda batch_id, table: None)
        cursor = con.cursor()
        cursor.execute(
            "CREATE SOURCE events (k VARCHAR, v BIGINT, ts TIMESTAMP) WITH (connector = 'memory')"
        )
        cursor.execute(
            f"CREATE SINK out WITH ({options.format(out=directory / 'out')}) AS "
            "SELECT k, v, ts FROM events"
        )
        query = con.query("out")
        source = con.engine.source("events")
        for batch in range(batches):
            source.append(rows(count, batch))
            query.process_all_available(120)
        totals = [p.duration_ms["total"] for p in query.recent_progress if p.num_input_rows]
        return statistics.median(totals[2:])  # the first batches warm caches up
    finally:
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 100_000])
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    for count in args.rows:
        print(f"\nbatches of {count} rows, median of {args.batches - 2} batches")
        print(f"{'sink':28} {'ms/batch':>10} {'rows/s':>12} {'vs duckdb':>10}")
        baseline = None
        for name, options in SINKS.items():
            with tempfile.TemporaryDirectory() as directory:
                ms = batch_ms(Path(directory), options, count, args.batches)
            baseline = baseline or ms
            print(f"{name:28} {ms:10.2f} {count / ms * 1000:12,.0f} {ms / baseline:9.2f}x")


if __name__ == "__main__":
    main()
