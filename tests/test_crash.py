"""Exactly-once across SIGKILL: `streamsql run` killed at random moments and run again.

The job (tests/crash/job.sql) has an EMIT CHANGES per-key sink and an EMIT FINAL window
sink for each sink kind (callback, csv, duckdb, json, parquet), all in one process. It
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
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from crash import harness

# Every kill hits all ten sinks; 40 kills catch each sink kind mid-batch some 20 times.
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
