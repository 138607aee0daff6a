"""Crash soak: the crash test's job SIGKILLed hundreds of times, every result checked.

    python tests/soak/crash_soak.py --kills 200 [--seed N] [--workdir DIR] [--keep]

Runs tests/crash/job.sql once uninterrupted (the reference, also checked against the
model of its SQL), then crashed runs in fresh directories (each SIGKILLed until its sinks
have committed their last batch, then run to completion) until --kills kills in all.
After every crashed run it compares every sink with the reference (tests/test_crash.py's
checks) and prints where its kills landed; at the end, the totals. Exits 1 if any run
differed from the reference or left something behind; that run's directory is kept.
A crashed run takes 15-60 kills before its sinks are done, 30-90 s on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for crash

from crash import harness


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200, help="kills in all (default 200)")
    parser.add_argument("--seed", type=int, help="seed of the kill moments (default: random)")
    parser.add_argument("--workdir", type=Path, help="where the runs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep every run's directory")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="streamsql-crash-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"seed {seed}, runs in {workdir}", flush=True)

    began = time.monotonic()
    harness.prepare(workdir / "reference", harness.FILES)
    timing = harness.run_reference(workdir / "reference")
    reference = harness.collect(workdir / "reference")
    model = harness.model(workdir / "reference" / "data")
    wrong = reference.problems + harness.model_differences(model, reference)
    print(f"reference: {timing.total:.1f} s, {sum(timing.batches.values())} sink batches")
    for line in wrong:
        print(f"  REFERENCE: {line}")
    if wrong:
        return 1

    totals: collections.Counter[str] = collections.Counter()
    failed = []
    rng = random.Random(seed)
    for number, crashed in enumerate(
        harness.crash_rounds(workdir, harness.FILES, args.kills, timing, reference, rng), 1
    ):
        run = crashed.run
        summary = run.summary()
        totals.update({k: v for k, v in summary.items() if k not in ("seconds",)})
        totals["runs"] += 1
        totals["seconds"] += run.seconds
        bad = run.findings + crashed.results.problems + crashed.differences
        landed = ", ".join(f"{k.split(' ', 1)[1]} {v}" for k, v in summary.items() if "landed" in k)
        kinds = ", ".join(f"{kind} {run.in_flight(kind)}" for kind in harness.KINDS)
        print(
            f"run {number}: {len(run.kills)} kills in {run.attempts} attempts, "
            f"{run.seconds:.0f} s; landed {landed}; batch in flight: {kinds}; "
            f"{'FAILED' if bad else 'ok'}",
            flush=True,
        )
        for line in bad:
            print(f"  {line}")
        if bad:
            failed.append(crashed.directory)
        elif not args.keep:
            shutil.rmtree(crashed.directory)

    print(f"\n{totals['runs']} crashed runs, {time.monotonic() - began:.0f} s in all:")
    for key, value in sorted(totals.items()):
        if key not in ("runs", "seconds", "attempts"):
            print(f"  {key}: {value}")
    if failed:
        print("FAILED; kept: " + ", ".join(map(str, failed)))
        return 1
    print(f"every run held exactly the reference's rows (seed {seed})")
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
