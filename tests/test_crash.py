"""Exactly-once across SIGKILL: `streamsql run` killed at random moments and run again.

The job (tests/crash/job.sql) has an EMIT CHANGES per-key sink and an EMIT FINAL window
sink for each sink kind (callback, csv, delta, duckdb, json, parquet), all in one process. It
runs once uninterrupted (the reference); then, in a fresh directory, it is killed with
SIGKILL and started again, STREAMSQL_CRASH_KILLS times (default 40), and then run until it
exits 0 by itself. The process starts its sinks one after another, so each kill aims at the
first batches of a random sink with batches left, when the sinks started before it are in
the middle of theirs too; some aim at start-up and recovery (tests/crash/harness.py). If
every sink has committed its last batch before the kills are done, the rest go to another
run in another fresh directory.

Every sink must then hold exactly the reference's rows (none lost, none twice), EMIT
CHANGES sinks the same changelog, batch for batch, the checkpoint the same batches, and the
sink directories nothing a reader could mistake for data. The reference must agree with the
job's SQL evaluated over the input by Spark's rules (`harness.model`). STREAMSQL_CRASH_SEED
repeats the kills' aim (not their exact moments). tests/soak/crash_soak.py does the same
with hundreds of kills.

DROP SINK and CREATE OR REPLACE SINK are killed at their kill points (every fifth by
default, every one with STREAMSQL_CRASH_DDL_STRIDE=1): each sink must be left as it was
or as the statement made it.
"""

from __future__ import annotations

import itertools
import os
import random
import warnings
from pathlib import Path

import pytest
from crash import harness

import streamsql

# Every kill hits all twelve sinks; 40 kills catch each sink kind mid-batch some 20 times.
KILLS = int(os.environ.get("STREAMSQL_CRASH_KILLS", "40"))


@pytest.mark.slow
def test_sigkilled_runs_resume_every_sink_exactly_once(tmp_path: Path) -> None:
    files = harness.FILES
    harness.prepare(tmp_path / "reference", files)
    timing = harness.run_reference(tmp_path / "reference")
    reference = harness.collect(tmp_path / "reference")
    assert reference.problems == []
    model = harness.model(tmp_path / "reference" / "data")
    assert harness.model_differences(model, reference) == []

    seed = int(os.environ.get("STREAMSQL_CRASH_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    kills = []
    for crashed in harness.crash_rounds(tmp_path, files, KILLS, timing, reference, rng):
        context = f"{crashed.directory}, seed {seed}: {crashed.run.summary()}"
        print(context)  # where the kills landed (pytest -rP shows it)
        assert crashed.run.findings == [], context
        assert crashed.results.problems == [], context
        assert crashed.differences == [], context
        kills += crashed.run.kills
    assert len(kills) >= KILLS
    # the kills are aimed at running batches, not all at start-up
    interrupted = [kill for kill in kills if kill.in_flight]
    assert len(interrupted) >= KILLS // 2, f"seed {seed}: {len(interrupted)} kills mid-batch"
    for kind in harness.KINDS:
        assert any(s.endswith(f"_{kind}") for kill in kills for s in kill.in_flight), kind


# -- DROP SINK and CREATE OR REPLACE SINK killed at each of their statements ---------------------

# Every STRIDE-th kill point is tried (from a random first one); 1 tries every one.
DDL_STRIDE = int(os.environ.get("STREAMSQL_CRASH_DDL_STRIDE", "5"))


def _run_in_process(run_dir: Path, script: str) -> dict[str, harness.SinkState]:
    """Run `script` on run_dir/app.db to completion (available_now); the sinks' states.
    No warning may be raised: a database the DDL left must hold no leftovers."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        con = streamsql.connect(str(run_dir / "app.db"), trigger="available_now")
    try:
        con.execute(script)
        for query in list(con.engine.queries.values()):
            assert query.await_termination(60)
            assert query.exception is None, query.exception
        return {name: harness.sink_state(con, name) for name in harness.DDL_OUTPUTS}
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["drop", "replace"])
def test_ddl_killed_at_any_statement_leaves_the_old_sink_or_the_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A kill anywhere in DROP SINK or CREATE OR REPLACE SINK (a `streamsql run` of them,
    SIGKILLed at the n-th kill point of their transaction) leaves each sink whole: as it
    was, or dropped (replaced) entirely. The next open finds no leftovers, the sink left as
    it was has the reference's rows, a replaced one the new query's only (none of the old
    table's, no resumed checkpoint: batch 0 on), and a sink created again after a drop
    counts every row once."""
    script = harness.ddl_script(kind)
    reference = tmp_path / "reference"
    harness.write_input(reference / "data", harness.DDL_FILES)
    monkeypatch.chdir(reference)  # the job's paths are relative to its directory
    before = _run_in_process(reference, harness.DDL_SETUP)
    after = _run_in_process(reference, script)
    for name in harness.DDL_SINKS:
        assert before[name].output and before[name].commits[0] == 0, name
        assert after[name].gone if kind == "drop" else after[name].commits[0] == 0, name
        assert after[name] != before[name]
    assert after["keep"] == before["keep"]

    first = random.randrange(1, DDL_STRIDE + 1)
    print(f"kill points {first}, {first + DDL_STRIDE}, ...")
    outcomes = []
    for kill_at in itertools.count(first, DDL_STRIDE):
        run_dir = tmp_path / f"kill-{kill_at:03d}"
        harness.write_input(run_dir / "data", harness.DDL_FILES)
        monkeypatch.chdir(run_dir)
        assert _run_in_process(run_dir, harness.DDL_SETUP) == before
        if harness.run_killed(run_dir, script, kill_at) == 0:
            break  # fewer kill points than that
        states = _run_in_process(run_dir, "")  # open (resuming the sinks) after the kill
        outcomes.append(tuple(states[name] == after[name] for name in harness.DDL_SINKS))
        for name in harness.DDL_SINKS:
            assert states[name] in (before[name], after[name]), (kill_at, name, states[name])
        assert states["keep"] == before["keep"]
        assert _run_in_process(run_dir, script) == after  # the DDL run again completes it
        if kind == "drop":  # created again: from batch 0, each row once
            assert _run_in_process(run_dir, harness.DDL_SETUP) == before
    print(f"{len(outcomes)} kills; sinks dropped or replaced when killed: {outcomes}")
    assert len(outcomes) >= 16 // DDL_STRIDE
    if DDL_STRIDE == 1:  # every state between: neither, the first sink, both
        assert set(outcomes) == {(False, False), (True, False), (True, True)}
