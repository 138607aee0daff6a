"""SIGKILL harness for the Kafka source: `streamsql run` on job.sql, killed and run again.

- `run_reference`: the job once, uninterrupted, in its own directory, timed: when the
  first batch of each sink is planned and how long its batches take.
- `crash_rounds`: the job in fresh directories, SIGKILLed at random moments and started
  again, until the kills asked for are done; each directory's job is then run until it exits
  0 by itself. Most kills aim at the batches a restarted run does first (a few at start-up:
  imports, the database's recovery, sinks resuming); a run whose sinks committed all their
  batches gets no more kills (they could only land in start-up), and the next kills go to
  a fresh directory. What each kill interrupted is read from a copy of the database it
  left.
- `collect`: what a run left: both sinks' tables, the dead letters and the checkpoint logs,
  compared by the test with the reference run's, which must match exactly: Kafka offsets
  are replayed, so even the batch boundaries of a resumed run are the uninterrupted ones.
"""

from __future__ import annotations

import random
import shutil
import signal
import string
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from crash import harness as crash
from crash.harness import HarnessError, exited, unexpected_output, wait_for

HERE = Path(__file__).resolve().parent
JOB = HERE / "job.sql"
SINKS = ("windows", "totals")  # the job's sinks, in the order it starts them
COMMAND = ("run", "job.sql", "--db", "app.db", "--trigger", "available_now")
STARTUP_SHARE = 0.15  # kills aimed at start-up rather than at batches


def prepare(run_dir: Path, bootstrap: str, topic: str) -> None:
    run_dir.mkdir(parents=True)
    job = string.Template(JOB.read_text()).substitute(bootstrap=bootstrap, topic=topic)
    (run_dir / "job.sql").write_text(job)


def spawn(run_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    return crash.spawn(run_dir, log, COMMAND)


def _finish(proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float) -> None:
    if wait_for(proc, time.monotonic() + timeout) is None:
        proc.kill()
        proc.wait()
        raise HarnessError(f"{what} did not finish within {timeout} s ({log})")
    exited(proc, log, what)


@dataclass
class Timing:
    first_batch: float  # seconds from spawn to the first batch planned, any sink
    batch: float  # mean seconds per batch, per sink (the sinks run side by side)
    batches: dict[str, int]  # batches each sink runs in all
    total: float
    resumed: float = 0.0  # the same as first_batch in a restarted run (recovery takes longer)

    def __post_init__(self) -> None:
        self.resumed = self.resumed or self.first_batch


def run_reference(run_dir: Path, timeout: float = 300) -> Timing:
    log = run_dir / "logs" / "reference.log"
    began, wall = time.monotonic(), time.time()
    _finish(spawn(run_dir, log), log, "the reference run", timeout)
    total = time.monotonic() - began
    con = duckdb.connect(str(run_dir / "app.db"), read_only=True)
    try:
        rows = con.execute(
            "SELECT query, epoch(min(planned_at)), epoch(max(planned_at)), count(*) "
            "FROM _streamsql.offsets WHERE batch_id >= 0 GROUP BY query"  # batches only
        ).fetchall()
    finally:
        con.close()
    return Timing(
        first_batch=min(first for _, first, _, _ in rows) - wall,
        batch=max((last - first) / max(n - 1, 1) for _, first, last, n in rows),
        batches={query: n for query, _, _, n in rows},
        total=total,
    )


@dataclass
class Kill:
    """Where one SIGKILL landed, read from a copy of the database the process left."""

    attempt: int
    seconds: float  # since spawn
    aimed_at: str  # "start-up" or "batches"
    committed: dict[str, int] = field(default_factory=dict)  # batches committed per sink
    in_flight: list[str] = field(default_factory=list)  # sinks with a batch planned, uncommitted
    started: float | None = None  # seconds from spawn to this attempt's first batch planned

    @property
    def where(self) -> str:
        return "mid-batch" if self.in_flight else "start-up or between batches"


@dataclass
class CrashRun:
    directory: Path
    kills: list[Kill] = field(default_factory=list)
    attempts: int = 0
    findings: list[str] = field(default_factory=list)  # unexpected output of the attempts

    def summary(self) -> str:
        landed = [f"{k.seconds:.2f}s {k.aimed_at}->{k.where} {k.committed}" for k in self.kills]
        return f"{self.directory.name}: {self.attempts} attempts; kills: {', '.join(landed)}"


def inspect(run_dir: Path, kill: Kill, spawned_wall: float) -> Kill:
    """Fill in what `kill` interrupted, from a copy of the database and its WAL."""
    scratch = run_dir / ".inspect"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        for name in ("app.db", "app.db.wal"):
            if (run_dir / name).exists():
                shutil.copy2(run_dir / name, scratch / name)
        if not (scratch / "app.db").exists():
            return kill
        try:
            con = duckdb.connect(str(scratch / "app.db"), read_only=True)
        except duckdb.Error:
            return kill  # killed while DuckDB created the file
        try:
            tables = {
                name
                for (name,) in con.execute(
                    "SELECT table_name FROM duckdb_tables() WHERE schema_name = '_streamsql'"
                ).fetchall()
            }
            if not {"offsets", "commits"} <= tables:
                return kill
            committed = dict(
                con.execute(
                    "SELECT query, max(batch_id) + 1 FROM _streamsql.commits GROUP BY query"
                ).fetchall()
            )
            planned_now = con.execute(  # batches planned by this attempt
                "SELECT query, max(batch_id), epoch(min(planned_at)) - ? FROM "
                "_streamsql.offsets WHERE epoch(planned_at) >= ? AND batch_id >= 0 "
                "GROUP BY query",
                [spawned_wall, spawned_wall],
            ).fetchall()
        finally:
            con.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    kill.committed = committed
    kill.in_flight = sorted(q for q, batch, _ in planned_now if batch >= committed.get(q, 0))
    kill.started = min((started for *_, started in planned_now), default=None)
    return kill


def crash_until_done(
    run_dir: Path, kills: int, timing: Timing, rng: random.Random, timeout: float = 300
) -> CrashRun:
    """Kill the job in `run_dir` up to `kills` times (fewer if its sinks finish first),
    then run it until it exits 0 by itself."""
    run = CrashRun(run_dir)
    began = time.monotonic()
    done = False
    while len(run.kills) < kills and not done:
        if time.monotonic() - began > timeout:
            raise HarnessError(f"{len(run.kills)} kills in {timeout} s; giving up")
        run.attempts += 1
        log = run_dir / "logs" / f"attempt-{run.attempts:02d}.log"
        first_batch = timing.first_batch if run.attempts == 1 else timing.resumed
        if rng.random() < STARTUP_SHARE:
            aim, delay = "start-up", rng.uniform(0.05, first_batch)
        else:  # the first few batches this attempt plans
            aim = "batches"
            delay = first_batch + rng.uniform(0, 4 * timing.batch)
        spawned, wall = time.monotonic(), time.time()
        proc = spawn(run_dir, log)
        if wait_for(proc, spawned + delay) is not None:
            _finish(proc, log, f"attempt {run.attempts}", 0)
            done = True  # finished before the kill
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kill = inspect(run_dir, Kill(run.attempts, time.monotonic() - spawned, aim), wall)
        run.kills.append(kill)
        if run.attempts > 1 and kill.started is not None:
            timing.resumed = kill.started  # aim the next kills where restarts start batches
        elif run.attempts > 1 and aim == "batches":  # too early: no batch planned yet
            timing.resumed = max(timing.resumed, kill.seconds) + timing.batch
        done = all(kill.committed.get(s, 0) >= timing.batches[s] for s in SINKS)
    run.attempts += 1
    log = run_dir / "logs" / f"attempt-{run.attempts:02d}.log"
    _finish(spawn(run_dir, log), log, "the last attempt", timeout)
    run.findings = unexpected_output(run_dir / "logs")
    return run


def crash_rounds(
    base: Path, bootstrap: str, topic: str, kills: int, timing: Timing, rng: random.Random
) -> Iterator[CrashRun]:
    """Crashed runs in fresh directories until `kills` kills in all."""
    done = number = 0
    while done < kills:
        number += 1
        directory = base / f"crashed-{number}"
        prepare(directory, bootstrap, topic)
        run = crash_until_done(directory, kills - done, timing, rng)
        if not run.kills:
            raise HarnessError(f"{directory}: the job finished before the first kill")
        done += len(run.kills)
        yield run


# -- what a run left ---------------------------------------------------------------------------


@dataclass
class Results:
    tables: dict[str, list[tuple[Any, ...]]]

    def differences(self, other: Results) -> list[str]:
        found = []
        for name, rows in self.tables.items():
            theirs = other.tables.get(name)
            if rows != theirs:
                missing = sorted(set(rows) - set(theirs or []), key=repr)[:5]
                extra = sorted(set(theirs or []) - set(rows), key=repr)[:5]
                found.append(
                    f"{name}: {len(rows)} rows vs {len(theirs or [])}; "
                    f"only here: {missing}; only there: {extra}"
                )
        return found


QUERIES = {
    "windows": "SELECT epoch_us(window_start), epoch_us(window_end), event_type, n FROM windows",
    "totals": "SELECT event_type, n, user_sum, first_ms, last_ms FROM totals",
    "dead_letters": 'SELECT query, batch_id, source, "partition", "offset", raw, error '
    "FROM _streamsql.dead_letters",
    "offsets": "SELECT query, batch_id, start_offset, end_offset, watermark_us, "
    "late_threshold_us FROM _streamsql.offsets",
    "commits": "SELECT query, batch_id, next_watermark_us, max_event_us, input_rows, "
    "output_rows FROM _streamsql.commits",
    "emitted_windows": "SELECT query, window_start, window_end, batch_id, groups "
    "FROM _streamsql.emitted_windows",
}


def collect(run_dir: Path) -> Results:
    con = duckdb.connect(str(run_dir / "app.db"), read_only=True)
    try:
        return Results(
            {name: sorted(con.execute(sql).fetchall(), key=repr) for name, sql in QUERIES.items()}
        )
    finally:
        con.close()
