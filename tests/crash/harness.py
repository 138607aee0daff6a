"""Crash harness: tests/crash/job.sql run as `streamsql run` subprocesses, SIGKILLed, rerun.

Used by tests/test_crash.py (20 kills) and tests/soak/crash_soak.py (hundreds).

- `write_input`: JSON-lines files, one micro-batch each (`max_files_per_trigger = 1`), with
  out-of-order and late event times, NULLs, an empty file and two bad records, from a
  fixed seed.
- `run_reference`: one uninterrupted run of the job, timed: when each sink starts (the run
  starts them one after another, some 0.1-0.4 s apart) and how long its batches take.
- `crash_until_done`: the job in a fresh directory, SIGKILLed and started again until it
  has had its kills or its sinks have committed their last batch, then run until it exits
  0 by itself. Each kill aims at the first two batches of a random sink that has batches
  left (the sinks started before it are in the middle of theirs), or at start-up (imports,
  the database's recovery, sinks recovering their files). What each kill interrupted is
  read from a copy of the database the killed process left. `crash_rounds`: as many such
  runs as it takes for the kills asked for.
- `collect`: every sink's result read the way a user reads it (duckdb tables, the file
  sinks' views and `_manifest.json`, the callback's batch files), the checkpoint logs, and
  the problems found in the sink directories (staged files left, files that are neither
  live nor retired, a manifest or view that lists other files than the live ones).
- `differences`: a crashed run against the reference; `model_differences`: a run against
  `model`, the job's SQL evaluated over the input files in Python by Spark's rules for
  watermarks, late rows and emission.
- DDL under kills: `ddl_script` (DROP SINK or CREATE OR REPLACE SINK of two of the sinks
  `DDL_SETUP` creates) run by `run_killed` with STREAMSQL_TEST_KILL_AT = n, which SIGKILLs
  the process at the n-th kill point of the engine's atomic DDL (before each statement,
  before the COMMIT, after it); `sink_state` says what the database holds of a sink.
"""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
from deltalake import DeltaTable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
JOB = HERE / "job.sql"
RUN = ("run", str(JOB), "--db", "app.db", "--trigger", "available_now")  # in the run's directory

KINDS = ("duckdb", "parquet", "csv", "json", "callback", "delta")
FILE_KINDS = ("parquet", "csv", "json")
MODES = ("final", "changes")
SINKS = tuple(sorted(f"{mode}_{kind}" for kind in KINDS for mode in MODES))  # start order
COLUMNS = {
    "final": ("window_start", "window_end", "k", "n", "total"),
    "changes": ("k", "n", "total", "min_amount", "max_amount", "first_ts", "last_ts"),
}

# The input: file i holds events around START + i * STEP, so the watermark (10 minutes
# behind the latest event) moves about STEP per batch and 5-minute windows close steadily.
START = dt.datetime(2024, 1, 1)
STEP = dt.timedelta(minutes=3)
DELAY = dt.timedelta(minutes=10)  # the source's watermark delay (job.sql)
WINDOW = dt.timedelta(minutes=5)  # the tumbling window (job.sql)
KEYS = ("ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen")
ROWS_PER_FILE = 300
LATE_SHARE = 0.05  # rows moved 12-40 minutes back: late for their window, or nearly
EMPTY_FILE = 11  # an empty file: a batch with no rows, which still closes windows
BAD_FILE = 7  # two bad records (dead letters): malformed JSON, a string for a BIGINT
INPUT_SEED = 20240101
FILES = 36  # input files, so batches; a crashed run takes some 10-20 kills to finish

STARTUP_SHARE = 0.15  # kills aimed at start-up (imports, recovery, sinks opening)
EPOCH = dt.datetime(1970, 1, 1)
MICROSECOND = dt.timedelta(microseconds=1)
PART_FILE = re.compile(r"part-(\d{10})-(\d{10})-([0-9a-f]{8})\.(parquet|csv|json)")
PROGRESS_LINE = re.compile(
    r"[a-z_]+: ((initializing|waiting for data|processing batch \d+) for [\dhms.]+|stopped), "
    r"(last batch \d+|no batch yet)|[a-z_]+: in all, \d+ batch"
)

Row = tuple[Any, ...]


class HarnessError(AssertionError):
    """A run that failed by itself (not by a kill), or that did not finish in time."""


# -- input ----------------------------------------------------------------------------------


def write_input(directory: Path, files: int, seed: int = INPUT_SEED) -> None:
    rng = random.Random(seed)
    directory.mkdir(parents=True)
    for i in range(files):
        lines = []
        if i != EMPTY_FILE:
            base = START + i * STEP
            for _ in range(ROWS_PER_FILE):
                seconds = rng.uniform(-150, 180)  # out of order within and across files
                if rng.random() < LATE_SHARE:
                    seconds -= rng.uniform(12 * 60, 40 * 60)
                ts = base + dt.timedelta(microseconds=round(seconds * 1e6))
                record = {
                    "k": None if rng.random() < 0.01 else rng.choice(KEYS),
                    "ts": None if rng.random() < 0.005 else ts.isoformat(sep=" "),
                    "amount": None if rng.random() < 0.01 else rng.randint(-100, 10_000),
                }
                lines.append(json.dumps(record))
        if i == BAD_FILE:
            lines.insert(5, '{"k": "ant", "ts": "2024-01-01 00:20:00", "amount": ')
            lines.insert(50, '{"k": "bee", "ts": "2024-01-01 00:21:00", "amount": "abc"}')
        (directory / f"events-{i:04d}.jsonl").write_text("".join(f"{line}\n" for line in lines))


def prepare(run_dir: Path, files: int) -> None:
    """A fresh place to run the job: its input in `data/`."""
    run_dir.mkdir(parents=True)
    write_input(run_dir / "data", files)


# -- running the job ---------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(HERE), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)  # the callbacks; this checkout of streamsql
    return env


def spawn(
    run_dir: Path,
    log: Path,
    command: Sequence[str] = RUN,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`streamsql <command>` in `run_dir`, its output in `log` (`env`: variables to add)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streamsql.cli", *command],
            cwd=run_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**_env(), **(env or {})},
        )


def wait_for(proc: subprocess.Popen[bytes], until: float) -> int | None:
    """Wait until the monotonic time `until` or the process's exit; its exit code or None."""
    while proc.poll() is None and time.monotonic() < until:
        time.sleep(0.005)
    return proc.poll()


def exited(proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    """A HarnessError with the output of `proc` unless it exited 0."""
    if proc.returncode != 0:
        raise HarnessError(
            f"{what} exited {proc.returncode} by itself; its output ({log}):\n"
            + log.read_text(errors="replace")[-5000:]
        )


@dataclass
class Timing:
    """When each sink starts (a run starts them one after another, in SINKS order) and how
    long its batches take. Measured on the reference run, which creates the sinks; a
    restarted run resumes them sooner, and the kills measure that (`resumed`)."""

    created: dict[str, float]  # seconds from spawn to the sink's first batch, first run
    resumed: dict[str, float]  # the same in a restarted run
    batch: dict[str, float]  # the sink's mean seconds per batch
    batches: dict[str, int]  # the batches the sink runs in all
    total: float  # seconds of the whole uninterrupted run


def run_reference(run_dir: Path, timeout: float = 600) -> Timing:
    """Run the job once, uninterrupted, and time it."""
    log = run_dir / "logs" / "reference.log"
    began, wall = time.monotonic(), time.time()
    proc = spawn(run_dir, log)
    if wait_for(proc, began + timeout) is None:
        proc.kill()
        proc.wait()
        raise HarnessError(f"the reference run took over {timeout} s")
    total = time.monotonic() - began
    exited(proc, log, "the reference run")
    con = duckdb.connect(str(run_dir / "app.db"), read_only=True)
    try:
        rows = con.execute(
            "SELECT query, epoch(min(planned_at)), epoch(max(planned_at)), count(*) "
            "FROM _streamsql.offsets WHERE batch_id >= 0 GROUP BY query"  # batches only
        ).fetchall()
    finally:
        con.close()
    created = {query: first - wall for query, first, _, _ in rows}
    return Timing(
        created=created,
        resumed=dict(created),
        batch={query: (last - first) / max(n - 1, 1) for query, first, last, n in rows},
        batches={query: n for query, _, _, n in rows},
        total=total,
    )


@dataclass
class Kill:
    """What one SIGKILL interrupted, read from a copy of the database it left behind."""

    attempt: int
    target: str  # the sink whose first batches the kill was aimed at, or "start-up"
    seconds: float  # since the process was spawned
    database: bool = False  # the engine database existed
    committed: dict[str, int] = field(default_factory=dict)  # per sink: batches committed
    in_flight: list[str] = field(default_factory=list)  # sinks whose new batch it interrupted
    started: dict[str, float] = field(default_factory=dict)  # first new batch planned, seconds
    leftovers: set[str] = field(default_factory=set)  # staged and uncommitted part files
    new_leftovers: int = 0  # of them, left by this kill (not there after the last one)
    compaction: bool = False  # a new leftover is a compacted file (part-a-b, a < b)
    callback_ahead: int = 0  # callback batch files this attempt wrote, of batches not committed
    callback_temporary: int = 0  # temporary files of a callback write cut short
    delta_ahead: int = 0  # Delta sinks this attempt committed a batch to, that the database did not

    @property
    def where(self) -> str:
        if not self.database:
            return "before the database existed"
        if self.compaction:
            return "mid-compaction"
        if self.in_flight:
            return "mid-batch"
        return "between batches, start-up or shutdown"


@dataclass
class CrashRun:
    kills: list[Kill] = field(default_factory=list)
    attempts: int = 0
    seconds: float = 0.0
    findings: list[str] = field(default_factory=list)  # unexpected output of any attempt

    def in_flight(self, kind: str) -> int:
        """Kills that interrupted a batch of a sink of this kind."""
        return sum(any(s.endswith(f"_{kind}") for s in kill.in_flight) for kill in self.kills)

    def summary(self) -> dict[str, int]:
        counts = collections.Counter(kill.where for kill in self.kills)
        return {
            "kills": len(self.kills),
            "attempts": self.attempts,
            "seconds": round(self.seconds),
            "start-up kills (drawn)": sum(kill.target == "start-up" for kill in self.kills),
            **{f"landed {where}": n for where, n in sorted(counts.items())},
            **{f"{kind} batch in flight": self.in_flight(kind) for kind in KINDS},
            "sink batches interrupted": sum(len(kill.in_flight) for kill in self.kills),
            "kills leaving staged or uncommitted files": sum(
                kill.new_leftovers > 0 for kill in self.kills
            ),
            "kills after a callback, before its commit": sum(
                kill.callback_ahead > 0 for kill in self.kills
            ),
            "kills after a Delta commit, before the batch's": sum(
                kill.delta_ahead > 0 for kill in self.kills
            ),
        }


def _draw(
    rng: random.Random, starts: dict[str, float], timing: Timing, unfinished: list[str]
) -> tuple[str, float]:
    """Where the next kill aims: at start-up (imports, the database's recovery, sinks
    opening and recovering their files), or at the first two batches of a sink with
    batches left (the sinks started before it are running batches too)."""
    if rng.random() >= STARTUP_SHARE:
        target = rng.choice(unfinished)
        return target, starts[target] + rng.uniform(-0.1, 2 * timing.batch[target])
    return "start-up", rng.uniform(0.05, min(starts.values()))


def crash_until_done(
    run_dir: Path, kills: int, timing: Timing, rng: random.Random, timeout: float = 600
) -> CrashRun:
    """Run the job in `run_dir`, SIGKILL it at a random moment and start it again, until
    `kills` kills or until every sink has committed its last batch (kills would then only
    land in start-up); then run it until it exits 0 by itself. Raises HarnessError if an
    attempt ends by itself otherwise."""
    run = CrashRun()
    began = time.monotonic()
    unfinished = list(SINKS)
    leftovers: set[str] = set()
    finished = False
    while len(run.kills) < kills and unfinished:
        if time.monotonic() - began > timeout:
            raise HarnessError(f"{len(run.kills)} kills in {timeout} s; giving up")
        run.attempts += 1
        log = run_dir / "logs" / f"attempt-{run.attempts:03d}.log"
        starts = timing.created if run.attempts == 1 else timing.resumed
        target, delay = _draw(rng, starts, timing, unfinished)
        spawned, wall = time.monotonic(), time.time()
        proc = spawn(run_dir, log)
        if wait_for(proc, spawned + delay) is not None:
            exited(proc, log, f"attempt {run.attempts}")
            finished = True  # done before the kill
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kill = inspect(run_dir, Kill(run.attempts, target, time.monotonic() - spawned), wall)
        new = kill.leftovers - leftovers
        kill.new_leftovers = len(new)
        kill.compaction = any(_compacted(name) for name in new)
        leftovers = kill.leftovers
        unfinished = [s for s in SINKS if kill.committed.get(s, 0) < timing.batches[s]]
        if run.attempts > 1:  # aim at where restarted runs start their sinks
            timing.resumed.update(kill.started)
        run.kills.append(kill)
    if not finished:
        run.attempts += 1
        log = run_dir / "logs" / f"attempt-{run.attempts:03d}.log"
        proc = spawn(run_dir, log)
        if wait_for(proc, time.monotonic() + timeout) is None:
            proc.kill()
            proc.wait()
            raise HarnessError(f"the last attempt did not finish in {timeout} s")
        exited(proc, log, "the last attempt")
    run.seconds = time.monotonic() - began
    run.findings = unexpected_output(run_dir / "logs")
    return run


@dataclass
class Round:
    """One crashed run, in its own directory, compared with the reference."""

    directory: Path
    run: CrashRun
    results: Results
    differences: list[str]


def crash_rounds(
    base: Path, files: int, kills: int, timing: Timing, reference: Results, rng: random.Random
) -> Iterator[Round]:
    """Crashed runs in fresh directories (base/crashed-1, ...) until `kills` kills in all:
    a run's sinks finish after some ten kills, more would only land in start-up."""
    done, number = 0, 0
    while done < kills:
        number += 1
        directory = base / f"crashed-{number}"
        prepare(directory, files)
        run = crash_until_done(directory, kills - done, timing, rng)
        if not run.kills:
            raise HarnessError(f"{directory}: the job finished before the first kill")
        results = collect(directory)
        done += len(run.kills)
        yield Round(directory, run, results, differences(reference, results))


def _compacted(name: str) -> bool:
    match = PART_FILE.search(name)
    return match is not None and match.group(1) != match.group(2)


def unexpected_output(logs: Path) -> list[str]:
    """Lines of the attempts' output other than the CLI's progress lines."""
    found = []
    for log in sorted(logs.glob("attempt-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if line.strip() and not PROGRESS_LINE.match(line):
                found.append(f"{log.name}: {line}")
    return found


def inspect(run_dir: Path, kill: Kill, spawned: float) -> Kill:
    """Fill in what the kill interrupted, from a copy of the database (the copy is opened,
    not the database the next attempt recovers). `spawned`: the attempt's wall-clock start."""
    database = run_dir / "app.db"
    if not database.exists():
        return kill
    kill.database = True
    scratch = run_dir / ".inspect"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for name in ("app.db", "app.db.wal"):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, scratch / name)
    try:
        con = duckdb.connect(str(scratch / "app.db"), read_only=True)
    except duckdb.Error:
        return kill  # killed while DuckDB created the file
    try:
        tables = {row[0] for row in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = '_streamsql'"
        ).fetchall()}  # fmt: skip
        if not {"offsets", "commits", "sink_files"} <= tables:
            return kill
        planned = dict(
            con.execute(
                "SELECT query, max(batch_id) FROM _streamsql.offsets GROUP BY query"
            ).fetchall()
        )
        committed = dict(
            con.execute(
                "SELECT query, max(batch_id) FROM _streamsql.commits GROUP BY query"
            ).fetchall()
        )
        kill.started = dict(
            con.execute(
                "SELECT query, epoch(min(planned_at)) - ? FROM _streamsql.offsets "
                "WHERE epoch(planned_at) >= ? AND batch_id >= 0 GROUP BY query",
                [spawned, spawned],
            ).fetchall()
        )
        kill.committed = {query: batch + 1 for query, batch in committed.items()}
        kill.in_flight = sorted(  # planned by this attempt (a replayed batch is not counted)
            query
            for query, batch in planned.items()
            if batch > committed.get(query, -1) and query in kill.started
        )
        recorded = {f for (f,) in con.execute("SELECT file FROM _streamsql.sink_files").fetchall()}
        for name in SINKS:
            directory = run_dir / "out" / name
            if not directory.is_dir():
                continue
            if name.endswith("_delta"):
                versions = [batch for _, batch in delta_transactions(directory, since=spawned)]
                kill.delta_ahead += any(v > committed.get(name, -1) for v in versions)
                continue
            if name.endswith("_callback"):
                for entry in os.scandir(directory):
                    if entry.name.startswith("."):
                        kill.callback_temporary += 1
                    elif (
                        int(entry.name.split(".")[0]) > committed.get(name, -1)
                        and entry.stat().st_mtime >= spawned
                    ):
                        kill.callback_ahead += 1
                continue
            staging = directory / ".staging"
            for entry in os.listdir(staging) if staging.is_dir() else []:
                kill.leftovers.add(f"{name}/.staging/{entry}")
            for entry in os.listdir(directory):
                if PART_FILE.fullmatch(entry) and entry not in recorded:
                    kill.leftovers.add(f"{name}/{entry}")
    finally:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return kill


# -- reading the results ------------------------------------------------------------------------


def normalize(value: Any) -> Any:
    """Values as Python compares them: HUGEINT sums come back from Parquet and Arrow as
    DECIMAL(38, 0)."""
    if isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        return int(value)
    return value


def _rows(rows: Iterable[Sequence[Any]]) -> list[Row]:
    return [tuple(normalize(v) for v in row) for row in rows]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def latest_per_key(changelog: Iterable[Row]) -> tuple[collections.Counter[Row], list[Row]]:
    """An EMIT CHANGES changelog (rows ending in their batch id, the key first) folded into
    the live result: the latest row of each key. Also the (key, batch) pairs that occur
    more than once (a key is emitted at most once per batch)."""
    latest: dict[Any, Row] = {}
    seen = collections.Counter((row[0], row[-1]) for row in changelog)
    for row in sorted(changelog, key=lambda row: row[-1]):
        latest[row[0]] = row[:-1]
    return collections.Counter(latest.values()), [pair for pair, n in seen.items() if n > 1]


@dataclass
class Results:
    final: dict[str, collections.Counter[Row]] = field(default_factory=dict)  # what users read
    changelog: dict[str, collections.Counter[Row]] = field(default_factory=dict)  # + batch id
    batches: dict[str, dict[int, collections.Counter[Row]]] = field(default_factory=dict)
    log: dict[str, list[Row]] = field(default_factory=dict)  # offsets, commits, dead letters
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # live and retired files, and the like


def collect(run_dir: Path) -> Results:
    """Every sink's result and the checkpoint logs of a finished run."""
    results = Results()
    con = duckdb.connect(str(run_dir / "app.db"), read_only=True)
    try:
        for name in SINKS:
            mode, kind = name.split("_")
            columns = ", ".join(COLUMNS[mode])
            if kind == "duckdb":
                rows = _rows(con.execute(f"SELECT {columns} FROM {name}").fetchall())
                results.final[name] = collections.Counter(rows)
            elif kind in FILE_KINDS:
                _collect_file_sink(con, run_dir / "out" / name, name, kind, mode, results)
            elif kind == "delta":
                _collect_delta(con, run_dir / "out" / name, name, mode, results)
            else:
                _collect_callback(con, run_dir / "out" / name, name, mode, results)
        results.log = {
            "offsets": _rows(con.execute(
                "SELECT query, batch_id, start_offset, end_offset, watermark_us, "
                "late_threshold_us FROM _streamsql.offsets ORDER BY ALL"
            ).fetchall()),
            "commits": _rows(con.execute(
                "SELECT query, batch_id, next_watermark_us, max_event_us, input_rows, "
                "output_rows FROM _streamsql.commits ORDER BY ALL"
            ).fetchall()),
            "dead letters": _rows(con.execute(
                'SELECT query, batch_id, source, "partition", "offset", raw, error '
                "FROM _streamsql.dead_letters ORDER BY ALL"
            ).fetchall()),
        }  # fmt: skip
        uncommitted = con.execute(
            "SELECT query, batch_id FROM _streamsql.offsets "
            "ANTI JOIN _streamsql.commits USING (query, batch_id) "
            "WHERE batch_id >= 0"  # -1: where the first batch started, no batch of its own
        ).fetchall()
        if uncommitted:
            results.problems.append(f"planned batches never committed: {uncommitted}")
    finally:
        con.close()
    return results


def _collect_file_sink(
    con: duckdb.DuckDBPyConnection,
    directory: Path,
    name: str,
    kind: str,
    mode: str,
    results: Results,
) -> None:
    problems = results.problems
    columns = COLUMNS[mode]
    view = _rows(con.execute(f"SELECT {', '.join(columns)} FROM {name}").fetchall())
    results.final[name] = collections.Counter(view)
    types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {name})").fetchall())
    query_id = con.execute("SELECT id FROM _streamsql.metadata WHERE query = ?", [name]).fetchall()[
        0
    ][0]
    recorded = dict(
        con.execute(
            "SELECT file, retired_at IS NOT NULL FROM _streamsql.sink_files WHERE query = ? "
            "ORDER BY first_batch",
            [name],
        ).fetchall()
    )
    live = [file for file, retired in recorded.items() if not retired]

    # the manifest lists the live files, and they hold the view's rows
    manifest = json.loads((directory / "_manifest.json").read_text())
    if sorted(manifest["files"]) != sorted(live):
        problems.append(f"{name}: _manifest.json lists {manifest['files']}, live are {live}")
    files = [str((directory / file).resolve()) for file in manifest["files"]]
    typed = {column: types[column] for column in columns}
    if mode == "changes":
        typed["_batch_id"] = "BIGINT"
    rows: list[Row] = []
    if files:
        listing = "[" + ", ".join(_string(f) for f in files) + "]"
        declared = "{" + ", ".join(f"{_string(c)}: {_string(t)}" for c, t in typed.items()) + "}"
        reader = {
            "parquet": f"read_parquet({listing})",
            "csv": f"read_csv({listing}, header = true, columns = {declared})",
            "json": f"read_json({listing}, format = 'newline_delimited', columns = {declared})",
        }[kind]
        casts = ", ".join(f"CAST({_quote(c)} AS {t})" for c, t in typed.items())
        rows = _rows(con.execute(f"SELECT {casts} FROM {reader}").fetchall())
    if mode == "final":
        if collections.Counter(rows) != results.final[name]:
            problems.append(f"{name}: the manifest's files do not hold the view's rows")
    else:
        results.changelog[name] = collections.Counter(rows)
        latest, repeated = latest_per_key(rows)
        if latest != results.final[name]:
            problems.append(f"{name}: the latest row per key of the files is not the view")
        if repeated:
            problems.append(f"{name}: keys emitted twice in one batch: {repeated[:5]}")

    # the view reads exactly the live files
    (sql,) = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ?", [name]).fetchall()[0]
    in_view = sorted(match.group(0) for match in PART_FILE.finditer(sql))
    if in_view != sorted(live):
        problems.append(f"{name}: the view reads {in_view}, live are {live}")

    # nothing staged; every data file in the directory is live or retired and pending
    staged = sorted(os.listdir(directory / ".staging"))
    if staged:
        problems.append(f"{name}: files left in .staging: {staged}")
    retired = 0
    for entry in sorted(os.listdir(directory)):
        if entry in (".staging", "_manifest.json"):
            continue
        match = PART_FILE.fullmatch(entry)
        if match is None or match.group(3) != query_id[:8] or match.group(4) != kind:
            problems.append(f"{name}: unexpected file {entry}")
        elif entry not in recorded:
            problems.append(f"{name}: {entry} is neither live nor retired")
        else:
            retired += recorded[entry]
    for file in live:
        if not (directory / file).exists():
            problems.append(f"{name}: live file {file} is missing")
    results.notes.append(f"{name}: {len(live)} live files, {retired} retired pending deletion")


def delta_transactions(table: Path, since: float = 0.0) -> list[tuple[str, int]]:
    """(app id, version) of the txn action of each commit in a Delta log that has one
    (of the commits written at the wall-clock time `since` or later)."""
    found = []
    for entry in sorted((table / "_delta_log").glob("*.json")):
        if entry.stat().st_mtime < since:
            continue
        for line in entry.read_text().splitlines():
            txn = json.loads(line).get("txn")
            if txn is not None:
                found.append((txn["appId"], txn["version"]))
    return found


def _collect_delta(
    con: duckdb.DuckDBPyConnection, table: Path, name: str, mode: str, results: Results
) -> None:
    """The view's rows, which deltalake must read from the table too; each batch that
    emitted rows is one Delta commit with txn(query id, batch id), and no other is."""
    columns = COLUMNS[mode]
    view = _rows(con.execute(f"SELECT {', '.join(columns)} FROM {name}").fetchall())
    results.final[name] = collections.Counter(view)
    read = DeltaTable(str(table)).to_pyarrow_table(columns=list(columns)).to_pylist()
    naive = [
        tuple(
            v.astimezone(dt.UTC).replace(tzinfo=None) if isinstance(v, dt.datetime) else v
            for v in row.values()
        )
        for row in read
    ]
    if collections.Counter(_rows(naive)) != results.final[name]:
        results.problems.append(f"{name}: deltalake reads other rows than the view")
    (query_id,) = con.execute(
        "SELECT id FROM _streamsql.metadata WHERE query = ?", [name]
    ).fetchone()
    emitted = [
        batch
        for (batch,) in con.execute(
            "SELECT batch_id FROM _streamsql.commits WHERE query = ? AND output_rows > 0 "
            "ORDER BY batch_id",
            [name],
        ).fetchall()
    ]
    transactions = delta_transactions(table)
    if transactions != [(query_id, batch) for batch in emitted]:
        repeated = [t for t, n in collections.Counter(transactions).items() if n > 1]
        results.problems.append(
            f"{name}: Delta commits of batches {[b for _, b in transactions]} (repeated: "
            f"{repeated}), the batches that emitted rows are {emitted}"
        )


def _collect_callback(
    con: duckdb.DuckDBPyConnection, directory: Path, name: str, mode: str, results: Results
) -> None:
    columns = COLUMNS[mode]
    batches: dict[int, collections.Counter[Row]] = {}
    temporary = []
    for entry in sorted(os.listdir(directory)):
        if entry.startswith("."):
            temporary.append(entry)  # a write the kill cut short: the callback's own affair
            continue
        table = pq.read_table(directory / entry)
        rows = _rows(zip(*(table[c].to_pylist() for c in columns), strict=True))
        batches[int(entry.split(".")[0])] = collections.Counter(rows)
    results.batches[name] = batches
    committed = [
        batch
        for (batch,) in con.execute(
            "SELECT batch_id FROM _streamsql.commits WHERE query = ? ORDER BY batch_id", [name]
        ).fetchall()
    ]
    if sorted(batches) != committed:
        results.problems.append(
            f"{name}: callback files for batches {sorted(batches)}, committed {committed}"
        )
    if temporary:
        results.notes.append(f"{name}: {len(temporary)} temporary files of cut-short writes")
    if mode == "final":
        results.final[name] = sum(batches.values(), collections.Counter())
    else:
        changelog = [(*row, batch) for batch, rows in batches.items() for row in rows.elements()]
        results.changelog[name] = collections.Counter(changelog)
        results.final[name], repeated = latest_per_key(changelog)
        if repeated:
            results.problems.append(f"{name}: keys emitted twice in one batch: {repeated[:5]}")


# -- comparing ----------------------------------------------------------------------------------


def _describe(what: str, expected: collections.Counter, actual: collections.Counter) -> list[str]:
    if expected == actual:
        return []
    missing, extra = expected - actual, actual - expected
    return [
        f"{what}: {sum(missing.values())} rows missing, {sum(extra.values())} extra "
        f"(of {sum(expected.values())}); missing e.g. {sorted(missing.elements(), key=str)[:3]}, "
        f"extra e.g. {sorted(extra.elements(), key=str)[:3]}"
    ]


def differences(expected: Results, actual: Results) -> list[str]:
    """How a run's results differ from another's (the uninterrupted reference)."""
    found = []
    for name in SINKS:
        found += _describe(f"{name} result", expected.final[name], actual.final[name])
    for name, changelog in expected.changelog.items():
        found += _describe(f"{name} changelog", changelog, actual.changelog[name])
    for name, batches in expected.batches.items():
        if sorted(batches) != sorted(actual.batches[name]):
            found.append(f"{name}: batches {sorted(actual.batches[name])}, not {sorted(batches)}")
        for batch, rows in batches.items():
            found += _describe(
                f"{name} batch {batch}",
                rows,
                actual.batches[name].get(batch, collections.Counter()),
            )
    for log, rows in expected.log.items():
        found += _describe(
            f"checkpoint {log}",
            collections.Counter(rows),
            collections.Counter(actual.log[log]),
        )
    return found


# -- the model: the job's SQL evaluated over the input by Spark's rules -----------------------


@dataclass
class Model:
    final: collections.Counter[Row]  # EMIT FINAL windows emitted by the end of the run
    final_batches: dict[int, collections.Counter[Row]]  # the same, by emitting batch
    changes: collections.Counter[Row]  # EMIT CHANGES: the live result
    changelog: collections.Counter[Row]  # every change with its batch id


def _micros(ts: dt.datetime) -> int:
    return (ts - EPOCH) // MICROSECOND


def _valid(line: str) -> tuple[str | None, dt.datetime | None, int | None] | None:
    """A record as the source decodes it; None for a record it dead-letters."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    k, ts, amount = record.get("k"), record.get("ts"), record.get("amount")
    if amount is not None and (not isinstance(amount, int) or isinstance(amount, bool)):
        return None
    return k, None if ts is None else dt.datetime.fromisoformat(ts), amount


def model(data: Path) -> Model:
    """W_0 = L_0 = epoch; batch N drops rows whose window ended at or before L_N = W_(N-1),
    emits windows ending at or before W_N; W_(N+1) = max(W_N, M_N - delay) with M_N the
    latest event time of batches 0..N in milliseconds. After the last file, one batch
    without data if the watermark moved (available_now)."""
    batches = [
        [row for line in path.read_text().splitlines() if (row := _valid(line)) is not None]
        for path in sorted(data.glob("*.jsonl"))
    ]
    size, delay = _micros(EPOCH + WINDOW), _micros(EPOCH + DELAY)
    watermark = late = 0
    latest: int | None = None
    open_windows: dict[tuple[int, str | None], list[Any]] = collections.defaultdict(
        lambda: [0, None]  # count(*), sum(amount) (NULL until an amount is not)
    )
    final_batches: dict[int, collections.Counter[Row]] = {}
    totals: dict[str | None, list[Any]] = {}
    changelog: collections.Counter[Row] = collections.Counter()

    def emit(batch: int) -> None:
        closed = [(w, k) for w, k in open_windows if w + size <= watermark]
        rows = collections.Counter()
        for start, k in closed:
            n, total = open_windows.pop((start, k))
            begins = EPOCH + dt.timedelta(microseconds=start)
            rows[(begins, begins + WINDOW, k, n, total)] += 1
        final_batches[batch] = rows

    for batch, rows in enumerate(batches):
        touched = []
        for k, ts, amount in rows:
            # EMIT CHANGES, global: every row counts (no window, so nothing is late)
            group = totals.setdefault(k, [0, None, None, None, None, None])
            group[0] += 1
            if amount is not None:
                group[1] = amount + (group[1] or 0)
                group[2] = amount if group[2] is None else min(group[2], amount)
                group[3] = amount if group[3] is None else max(group[3], amount)
            if ts is not None:
                group[4] = ts if group[4] is None else min(group[4], ts)
                group[5] = ts if group[5] is None else max(group[5], ts)
            touched.append(k)
            # EMIT FINAL, tumbling: rows without an event time or late for their window drop
            if ts is None:
                continue
            start = _micros(ts) // size * size
            if start + size <= late:
                continue
            window = open_windows[(start, k)]
            window[0] += 1
            if amount is not None:
                window[1] = amount + (window[1] or 0)
        for k in dict.fromkeys(touched):
            changelog[(k, *totals[k], batch)] += 1
        emit(batch)
        times = [_micros(ts) for _, ts, _ in rows if ts is not None]
        if times:
            latest = max(latest or 0, max(times) // 1000 * 1000)
        late, watermark = watermark, max(watermark, (latest or 0) - delay)
    if watermark > late:  # available_now's closing batch without data
        emit(len(batches))
    final = sum(final_batches.values(), collections.Counter())
    changes = collections.Counter((k, *values) for k, values in totals.items())
    return Model(final, final_batches, changes, changelog)


def model_differences(expected: Model, results: Results) -> list[str]:
    found = []
    for name in SINKS:
        mode = name.split("_")[0]
        want = expected.final if mode == "final" else expected.changes
        found += _describe(f"{name} result vs model", want, results.final[name])
    for name, changelog in results.changelog.items():
        found += _describe(f"{name} changelog vs model", expected.changelog, changelog)
    batches = results.batches["final_callback"]
    for batch in sorted(set(batches) | set(expected.final_batches)):
        found += _describe(
            f"final_callback batch {batch} vs model",
            expected.final_batches.get(batch, collections.Counter()),
            batches.get(batch, collections.Counter()),
        )
    return found


# -- DDL under kills ------------------------------------------------------------------------------

DDL_FILES = 4  # input files (of write_input) for the DDL tests: a few batches per sink
DDL_SOURCE = """CREATE SOURCE events (
    k VARCHAR, ts TIMESTAMP, amount BIGINT, WATERMARK FOR ts AS ts - INTERVAL '10 minutes'
) WITH (connector = 'files', path = 'data', format = 'json', max_files_per_trigger = 1);
"""
# The sinks the DDL drops or replaces (old and new query), and one it leaves alone.
DDL_SINKS = {
    "counts": (
        "CREATE SINK counts WITH (connector = 'duckdb', table = 'key_counts') AS "
        "SELECT k, count(*) AS n, sum(amount) AS total FROM events GROUP BY k EMIT CHANGES",
        "CREATE OR REPLACE SINK counts WITH (connector = 'duckdb', table = 'key_counts') AS "
        "SELECT k, max(amount) AS top FROM events GROUP BY k EMIT CHANGES",
    ),
    "windows": (
        "CREATE SINK windows WITH (connector = 'parquet', path = 'out/windows') AS "
        "SELECT window_start, k, count(*) AS n FROM events "
        "WINDOW TUMBLING (ts, INTERVAL '5 minutes') GROUP BY window_start, k EMIT FINAL",
        "CREATE OR REPLACE SINK windows WITH (connector = 'parquet', path = 'out/windows') AS "
        "SELECT window_start, count(*) AS n FROM events "
        "WINDOW TUMBLING (ts, INTERVAL '10 minutes') GROUP BY window_start EMIT FINAL",
    ),
}
DDL_OUTPUTS = {"counts": "key_counts", "windows": "windows", "keep": "keep"}
DDL_KEEP = (
    "CREATE SINK keep WITH (connector = 'duckdb') AS "
    "SELECT k, count(*) AS n FROM events GROUP BY k EMIT CHANGES"
)
DDL_SETUP = DDL_SOURCE + "".join(f"{old};\n" for old, _ in DDL_SINKS.values()) + DDL_KEEP + ";\n"


def ddl_script(kind: str) -> str:
    """The source again (an identical CREATE is a no-op), then DROP SINK or CREATE OR
    REPLACE SINK of each sink of DDL_SINKS."""
    if kind == "drop":
        return DDL_SOURCE + "".join(f"DROP SINK IF EXISTS {name};\n" for name in DDL_SINKS)
    return DDL_SOURCE + "".join(f"{new};\n" for _, new in DDL_SINKS.values())


def run_killed(run_dir: Path, script: str, kill_at: int, timeout: float = 120) -> int:
    """Run `script` in `run_dir` (on app.db, available_now) with a kill at the `kill_at`-th
    kill point; its exit code (-9 when killed there, 0 when it has fewer kill points)."""
    (run_dir / "ddl.sql").write_text(script)
    log = run_dir / "logs" / f"ddl-{kill_at:03d}.log"
    command = ("run", "ddl.sql", "--db", "app.db", "--trigger", "available_now")
    proc = spawn(run_dir, log, command, {"STREAMSQL_TEST_KILL_AT": str(kill_at)})
    if wait_for(proc, time.monotonic() + timeout) is None:
        proc.kill()
        proc.wait()
        raise HarnessError(f"the DDL run with a kill at point {kill_at} did not end in {timeout} s")
    if proc.returncode not in (0, -signal.SIGKILL):
        exited(proc, log, f"the DDL run with a kill at point {kill_at}")
    return proc.returncode


@dataclass(frozen=True)
class SinkState:
    """What the database holds of one sink, as a user and the engine read it."""

    sql: str | None  # its catalog row
    commits: tuple[int, ...]  # batch ids in the commit log
    checkpoint_rows: int  # rows of any checkpoint table (metadata, offsets, ...)
    state_rows: int | None  # None: no state table
    dead_letters: int
    output: tuple[Row, ...] | None  # its table or view, sorted; None: there is none

    @property
    def gone(self) -> bool:
        """Dropped whole: nothing of it left."""
        return self == SinkState(None, (), 0, None, 0, None)


def sink_state(con: Any, name: str) -> SinkState:
    """`con`: a streamsql connection (or a DuckDB one) on the engine database."""

    def rows(sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return _rows(con.execute(sql, list(params)).fetchall())

    catalog = rows("SELECT sql FROM _streamsql.catalog WHERE kind = 'SINK' AND name = ?", [name])
    commits = rows("SELECT batch_id FROM _streamsql.commits WHERE query = ? ORDER BY 1", [name])
    checkpoint = sum(
        rows(f"SELECT count(*) FROM _streamsql.{table} WHERE query = ?", [name])[0][0]
        for table in ("offsets", "commits", "metadata", "emitted_windows", "sink_files")
    )
    tables = {
        table
        for (table,) in rows(
            "SELECT table_name FROM duckdb_tables() UNION ALL "
            "SELECT view_name FROM duckdb_views() WHERE NOT internal"
        )
    }
    state = f"state_{name}"
    output = DDL_OUTPUTS[name]
    return SinkState(
        sql=catalog[0][0] if catalog else None,
        commits=tuple(batch for (batch,) in commits),
        checkpoint_rows=checkpoint,
        state_rows=rows(f"SELECT count(*) FROM _streamsql.{state}")[0][0]
        if state in tables
        else None,
        dead_letters=rows(
            "SELECT count(*) FROM _streamsql.dead_letters WHERE lower(query) = ?", [name]
        )[0][0],
        output=tuple(rows(f"SELECT * FROM {_quote(output)} ORDER BY ALL"))
        if output in tables
        else None,
    )
