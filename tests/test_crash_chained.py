"""Exactly-once across SIGKILL for chained stateful operators over a two-source join.

Two file sources, impressions and clicks (different watermark delays, out-of-order and late
rows), feed a stream-stream LEFT OUTER interval join; over the join's rows, sink `ctr` (a
duckdb changelog: every row with its batch id) counts impressions and clicks per ad in
5-minute tumbling windows (2 operators), and sink `ctr_rollup` (parquet files) adds those
per-ad windows up over their window_time in 20-minute windows every 10 minutes (3
operators: join, window, window). The job runs once uninterrupted; then, in fresh
directories, `streamsql run` is SIGKILLed and started again until it exits 0 by itself.
Every other kill comes at a random moment (most after start-up), the others at a random
point of the batches' work (STREAMSQL_TEST_KILL_IN_BATCH_AT: before one of a batch's SQL
steps, between the operators too, or before a COMMIT). Each crashed run must leave what
the reference left: the sinks' rows in the same batches, the parquet sink's live files
and their rows, the offset and commit logs, the windows each sink emitted, and every
operator's state table (`_streamsql."state_<sink>"` and `"state_<sink>/op<i>"`); its
output, progress lines only.
STREAMSQL_CRASH_CHAINED_KILLS sets the kills (default 6), STREAMSQL_CRASH_SEED their aim.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import signal
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from crash import harness

import streamsql
from streamsql.checkpoint.transactions import KILL_IN_BATCH_AT

KILLS = int(os.environ.get("STREAMSQL_CRASH_CHAINED_KILLS", "6"))
# A run reaches some 500 batch kill points; a kill at one of the first 300 after a (re)start
# lands in one of its batches: between the operators of one sink's or inside the other's.
KILL_POINTS = 300
START = dt.datetime(2024, 1, 1)
FILES = 20  # of impressions, so batches; 16 of clicks
ADS = [f"ad{number:02d}" for number in range(40)]

JOINED = """impressions AS i LEFT OUTER JOIN clicks AS c
    ON i.ad = c.ad AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '5 minutes'"""
JOB = f"""
CREATE SOURCE impressions (ad VARCHAR, ts TIMESTAMP,
                           WATERMARK FOR ts AS ts - INTERVAL '2 minutes')
WITH (connector = 'files', path = 'data/impressions', format = 'json', max_files_per_trigger = 1);
CREATE SOURCE clicks (ad VARCHAR, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '3 minutes')
WITH (connector = 'files', path = 'data/clicks', format = 'json', max_files_per_trigger = 1);
CREATE SINK ctr WITH (connector = 'duckdb', changelog = true) AS
    SELECT window_start, window_end, i.ad, count(*) AS impressions, count(c.ts) AS clicks,
           max(c.ts) AS last_click
    FROM {JOINED}
    WINDOW TUMBLING (i.ts, INTERVAL '5 minutes') GROUP BY window_start, window_end, i.ad
    EMIT FINAL;
CREATE SINK ctr_rollup WITH (connector = 'parquet', path = 'out/ctr_rollup') AS
    SELECT window_start, window_end, count(*) AS ads, sum(impressions) AS impressions,
           sum(clicks) AS clicks
    FROM (
        SELECT window_time, i.ad, count(*) AS impressions, count(c.ts) AS clicks
        FROM {JOINED}
        WINDOW TUMBLING (i.ts, INTERVAL '5 minutes') GROUP BY window_start, window_end, i.ad
    ) AS per_ad
    WINDOW HOPPING (window_time, INTERVAL '20 minutes', INTERVAL '10 minutes')
    GROUP BY window_start, window_end
    EMIT FINAL;
"""
# Each sink's state tables: the operator feeding the sink, then the ones below it.
STATES = ("state_ctr", "state_ctr/op0", "state_ctr_rollup", "state_ctr_rollup/op0",
          "state_ctr_rollup/op1")  # fmt: skip
RUN = ("run", "job.sql", "--db", "app.db", "--trigger", "available_now")  # in its directory
QUERY_ID = re.compile(r"-[0-9a-f]{8}\.parquet$")  # a part file's query id: one per run


def write_input(directory: Path, files: int = FILES, seed: int = 11) -> None:
    """One file per batch and source (`files` of impressions, 4/5 as many of clicks);
    clicks a little after their impressions, some of either moved 5-25 minutes back (late
    for their window, or nearly)."""
    rng = random.Random(seed)
    for name, count, rows, minutes in (
        ("impressions", files, 150, 2),
        ("clicks", files * 4 // 5, 60, 2.5),
    ):
        (directory / name).mkdir(parents=True)
        for number in range(count):
            lines = []
            for _ in range(rows):
                ts = START + dt.timedelta(minutes=number * minutes, seconds=rng.uniform(-90, 150))
                if name == "clicks":
                    ts += dt.timedelta(minutes=rng.uniform(0, 6))
                if rng.random() < 0.04:
                    ts -= dt.timedelta(minutes=rng.uniform(5, 25))
                lines.append(json.dumps({"ad": rng.choice(ADS), "ts": ts.isoformat(sep=" ")}))
            (directory / name / f"{number:04d}.jsonl").write_text("\n".join(lines) + "\n")


def prepare(run_dir: Path, files: int = FILES) -> None:
    run_dir.mkdir()
    write_input(run_dir / "data", files)
    (run_dir / "job.sql").write_text(JOB)


def results(run_dir: Path) -> dict[str, Any]:
    """What a finished run left: sink rows, the parquet sink's files, logs, state tables."""
    sink = run_dir / "out" / "ctr_rollup"
    manifest = json.loads((sink / "_manifest.json").read_text())
    with duckdb.connect(str(run_dir / "app.db"), read_only=True) as db:

        def rows(sql: str, params: list[Any] | None = None) -> list[tuple]:
            return harness._rows(db.execute(sql, params or []).fetchall())

        found: dict[str, Any] = {
            "ctr": rows("SELECT * FROM ctr ORDER BY ALL"),
            "ctr_rollup": rows("SELECT * FROM ctr_rollup ORDER BY ALL"),
            "ctr_rollup files": {  # each live file's batches and rows
                QUERY_ID.sub("", file): rows(
                    "SELECT * FROM read_parquet(?) ORDER BY ALL", [str(sink / file)]
                )
                for file in manifest["files"]
            },
            "sink_files": [
                (query, QUERY_ID.sub("", file), *rest)
                for query, file, *rest in rows(
                    "SELECT query, file, first_batch, last_batch, rows, retired_at IS NOT NULL "
                    "FROM _streamsql.sink_files ORDER BY ALL"
                )
            ],
            "offsets": rows(
                "SELECT query, batch_id, start_offset, end_offset, watermark_us, "
                "late_threshold_us FROM _streamsql.offsets ORDER BY ALL"
            ),
            "commits": rows(
                "SELECT query, batch_id, next_watermark_us, max_event_us, input_rows, "
                "output_rows, max_event_by_source FROM _streamsql.commits ORDER BY ALL"
            ),
            "emitted_windows": rows(
                "SELECT query, window_start, window_end, batch_id, groups "
                "FROM _streamsql.emitted_windows ORDER BY ALL"
            ),
            "staged": sorted(os.listdir(sink / ".staging")),
        }
        for table in STATES:
            found[table] = rows(f"SELECT * FROM _streamsql.{harness._quote(table)} ORDER BY ALL")
    return found


def run_to_end(run_dir: Path, log: Path, what: str) -> None:
    proc = harness.spawn(run_dir, log, RUN)
    if harness.wait_for(proc, time.monotonic() + 300) is None:
        proc.kill()
        proc.wait()
        raise harness.HarnessError(f"{what} did not finish in 300 s")
    harness.exited(proc, log, what)


@pytest.mark.slow
def test_sigkilled_chained_join_aggregations_equal_an_uninterrupted_run(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    prepare(reference)
    began, wall = time.monotonic(), time.time()
    run_to_end(reference, reference / "logs" / "attempt-001.log", "the reference run")
    duration = time.monotonic() - began
    with duckdb.connect(str(reference / "app.db"), read_only=True) as db:  # after start-up
        (first,) = db.execute(
            "SELECT epoch(min(planned_at)) FROM _streamsql.offsets WHERE batch_id >= 0"
        ).fetchone()
    batches_from = first - wall  # seconds from spawn to the first batch
    expected = results(reference)
    # the join emits unmatched impressions with NULLs; both chains emit in many batches
    assert sum(row[3] - row[4] for row in expected["ctr"]) > 100
    assert len({row[-1] for row in expected["ctr"]}) > 5 and len(expected["ctr"]) > 150
    assert len(expected["ctr_rollup"]) >= 5 and expected["ctr_rollup files"]
    assert all(expected[table] for table in STATES)
    assert expected["staged"] == []
    assert harness.unexpected_output(reference / "logs") == []

    seed = int(os.environ.get("STREAMSQL_CRASH_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    kills: list[harness.Kill] = []
    rounds = 0
    while len(kills) < KILLS:  # a round ends when a run finishes before its kill
        rounds += 1
        assert rounds <= KILLS, f"seed {seed}: the runs end before the kills"
        crashed = tmp_path / f"crashed-{rounds}"
        prepare(crashed)
        for attempt in range(1, KILLS + 2):
            log = crashed / "logs" / f"attempt-{attempt:03d}.log"
            if len(kills) == KILLS:
                run_to_end(crashed, log, "the last run")
                break
            at_point = len(kills) % 2 == 1
            env = {KILL_IN_BATCH_AT: str(rng.randint(1, KILL_POINTS))} if at_point else {}
            spawned, wall = time.monotonic(), time.time()
            proc = harness.spawn(crashed, log, RUN, env)
            until = spawned + (300 if at_point else rng.uniform(0.7 * batches_from, duration))
            if harness.wait_for(proc, until) is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            if proc.returncode != -signal.SIGKILL:
                harness.exited(proc, log, f"attempt {attempt}")
                break  # it finished before its kill
            target = "kill point" if at_point else "random moment"
            kill = harness.Kill(attempt, target, time.monotonic() - spawned)
            kills.append(harness.inspect(crashed, kill, wall))
        assert results(crashed) == expected, f"seed {seed}, {crashed}"
        assert harness.unexpected_output(crashed / "logs") == []
    landed = [(kill.target, kill.where, kill.in_flight) for kill in kills]
    print(f"seed {seed}: {landed}")  # where the kills landed (pytest -rP shows it)
    assert any(kill.in_flight for kill in kills), f"seed {seed}: no kill mid-batch: {landed}"


def run_in_process(run_dir: Path) -> None:
    """The job on run_dir/app.db (its sinks resumed) until each sink has read every file."""
    with streamsql.connect(str(run_dir / "app.db"), trigger="available_now") as con:
        con.execute(JOB)
        for query in con.engine.queries.values():
            assert query.await_termination(60) and query.exception is None, query.exception


def test_opening_the_database_keeps_the_state_of_every_operator_of_a_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened again, the database still has the state of the operators below each sink's
    (the join's, the per-ad window's), so a restarted query resumes them. (Opening it took
    their state tables, `state_<sink>/op<i>`, for leftovers of dropped sinks and removed
    them: the join forgot the impressions waiting for clicks, the window its counts.)"""
    prepare(tmp_path / "run", files=6)
    monkeypatch.chdir(tmp_path / "run")
    run_in_process(tmp_path / "run")
    before = {table: results(tmp_path / "run")[table] for table in STATES}
    assert all(before.values())
    with duckdb.connect("app.db") as db:  # what a chain's interrupted DROP SINK left
        db.execute('CREATE TABLE _streamsql."state_gone/op0" AS SELECT 1 AS x')
    with pytest.warns(UserWarning, match="state of sinks gone, which are no longer"):
        run_in_process(tmp_path / "run")
    assert {table: results(tmp_path / "run")[table] for table in STATES} == before
    with duckdb.connect("app.db") as db:
        assert db.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?",
                          ["state_gone/op0"]).fetchall() == [(0,)]  # fmt: skip
