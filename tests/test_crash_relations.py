"""Exactly-once across SIGKILL for queries over several sources.

A job of two file sources (different lengths and delays) with a windowed EMIT FINAL over
their UNION ALL and a stream-static join of one of them with a table, each into a duckdb
changelog sink (every row with its batch id), runs once uninterrupted; then, in a fresh
directory, `streamsql run` is SIGKILLed at random moments and started again until it exits
0 by itself. Both runs must leave the same rows in the same batches and the same offset
and commit logs: each batch read the same range of every source, once.
STREAMSQL_CRASH_RELATION_KILLS sets the kills (default 12).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import time
from pathlib import Path

import duckdb
import pytest
from crash import harness

KILLS = int(os.environ.get("STREAMSQL_CRASH_RELATION_KILLS", "12"))
START = dt.datetime(2024, 1, 1)

JOB = """
CREATE SOURCE a (k VARCHAR, ts TIMESTAMP, amount BIGINT,
                 WATERMARK FOR ts AS ts - INTERVAL '10 minutes')
WITH (connector = 'files', path = 'data/a', format = 'json', max_files_per_trigger = 1);
CREATE SOURCE b (k VARCHAR, ts TIMESTAMP, amount BIGINT,
                 WATERMARK FOR ts AS ts - INTERVAL '4 minutes')
WITH (connector = 'files', path = 'data/b', format = 'json', max_files_per_trigger = 1);
CREATE TABLE IF NOT EXISTS dim AS
    SELECT * FROM (VALUES ('ant', 'insect'), ('bee', 'insect'), ('cat', 'mammal')) AS v(k, kind);
CREATE VIEW both_sources AS
    SELECT k, ts, amount FROM a UNION ALL SELECT k, ts, amount FROM b;
CREATE SINK union_windows WITH (connector = 'duckdb', changelog = true) AS
    SELECT window_start, window_end, k, count(*) AS n, sum(amount) AS total
    FROM both_sources WINDOW TUMBLING (ts, INTERVAL '5 minutes')
    GROUP BY window_start, window_end, k EMIT FINAL;
CREATE SINK enriched WITH (connector = 'duckdb', changelog = true) AS
    SELECT a.k, d.kind, a.ts, a.amount FROM a JOIN dim AS d ON a.k = d.k;
"""
SINKS = ("union_windows", "enriched")


def write_input(directory: Path, seed: int = 7) -> None:
    rng = random.Random(seed)
    for name, files, step in (("a", 14, 3), ("b", 9, 4)):
        (directory / name).mkdir(parents=True)
        for number in range(files):
            rows = []
            for _ in range(200):
                ts = START + dt.timedelta(minutes=number * step, seconds=rng.randint(0, 240))
                if rng.random() < 0.05:
                    ts -= dt.timedelta(minutes=rng.randint(8, 30))
                row = {"k": rng.choice(["ant", "bee", "cat", "dog", None]), "ts": str(ts)}
                rows.append(json.dumps({**row, "amount": rng.randint(-5, 50)}))
            (directory / name / f"{number:04d}.jsonl").write_text("\n".join(rows) + "\n")


def prepare(run_dir: Path) -> None:
    run_dir.mkdir()
    write_input(run_dir / "data")
    (run_dir / "job.sql").write_text(JOB)


def command() -> tuple[str, ...]:
    return ("run", "job.sql", "--db", "app.db", "--trigger", "available_now")


def results(run_dir: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(run_dir / "app.db"), read_only=True) as db:
        found = {
            name: db.execute(f"SELECT * FROM {name} ORDER BY ALL").fetchall() for name in SINKS
        }
        for log, value in (("offsets", "end_offset"), ("commits", "next_watermark_us")):
            found[log] = db.execute(
                f"SELECT query, batch_id, {value} FROM _streamsql.{log} ORDER BY ALL"
            ).fetchall()
    return found


@pytest.mark.slow
def test_sigkilled_multi_source_runs_equal_an_uninterrupted_one(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    prepare(reference)
    began = time.monotonic()
    proc = harness.spawn(reference, reference / "log.txt", command())
    harness.wait_for(proc, time.monotonic() + 300)
    harness.exited(proc, reference / "log.txt", "the reference run")
    duration = time.monotonic() - began
    expected = results(reference)
    assert len(expected["union_windows"]) > 50 and len(expected["enriched"]) > 1000

    crashed = tmp_path / "crashed"
    prepare(crashed)
    rng = random.Random(int(os.environ.get("STREAMSQL_CRASH_SEED", random.randrange(1 << 32))))
    kills = 0
    for attempt in range(KILLS + 1):
        log = crashed / f"log_{attempt}.txt"
        proc = harness.spawn(crashed, log, command())
        if attempt == KILLS:  # the last run goes to its end
            harness.wait_for(proc, time.monotonic() + 300)
            harness.exited(proc, log, "the last run")
            break
        if harness.wait_for(proc, time.monotonic() + rng.uniform(0.3, duration)) is None:
            proc.kill()
            proc.wait()
            kills += 1
        else:
            harness.exited(proc, log, f"run {attempt}")
            break
    assert kills > 0
    assert results(crashed) == expected
