"""Property: a stream-stream join emits, batch for batch, the pairs (and NULL-extended or
semi rows) the reference model (tests/reference_model.py: run_join) says, with the values a
DuckDB batch query over those rows gives.

Hypothesis draws two sources' batches (of different lengths, empty ones included), each
source's watermark delay, the ON clause's time range, the policy combining the
watermarks and restarts at batch boundaries; each source gets one Parquet file per batch,
trigger available_now. Each join type has its own property.

STREAMSQL_JOIN_EXAMPLES sets the examples per join type (40 by default: 200 in all).
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import replace

import pyarrow as pa
import pytest
import reference_model as model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_incremental_properties import REFERENCE, check_rows, interval, iso_micros, micros
from test_multi_source_properties import UNIT, Batches, batches, run_sink

from streamsql.errors import UnboundedStateWarning

# 200 examples for the operator, 40 for each of its five join types
EXAMPLES = int(os.environ.get("STREAMSQL_JOIN_EXAMPLES", "40"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SPELLED = {
    "inner": "JOIN",
    "left": "LEFT OUTER JOIN",
    "right": "RIGHT OUTER JOIN",
    "full": "FULL OUTER JOIN",
    "semi": "SEMI JOIN",
}
# Delays each join type can run with: an outer (semi) join needs a watermark on the side
# opposite the one it preserves (both, for full), to bound the preserved side's state.
DELAYS = {
    "inner": st.tuples(st.sampled_from([None, 0, 2]), st.sampled_from([None, 0, 3])),
    "left": st.tuples(st.sampled_from([None, 0, 2]), st.sampled_from([0, 3])),
    "semi": st.tuples(st.sampled_from([None, 0, 2]), st.sampled_from([0, 3])),
    "right": st.tuples(st.sampled_from([0, 2]), st.sampled_from([None, 0, 3])),
    "full": st.tuples(st.sampled_from([0, 2]), st.sampled_from([0, 3])),
}


def events(source: Batches, join_type: str, side: int) -> list[list[model.Event]]:
    """Rows whose key is NULL on a side never NULL-extended are filtered below the
    watermark (the inferred `k IS NOT NULL`)."""
    preserved = {"left": {0}, "right": {1}, "full": {0, 1}}.get(join_type, set())
    return [
        [
            model.Event(r.row_id, r.ts, (r.k,), passes=r.k is not None or side in preserved)
            for r in batch
        ]
        for batch in source
    ]


def expected_rows(rows: list, emitted: list[tuple[int, int | None, int | None]]) -> list[tuple]:
    """The emitted rows' values, by a batch query over the input rows the model paired."""
    db = REFERENCE.cursor()
    try:
        db.register(
            "input",
            pa.table(
                {
                    "row_id": pa.array([r.row_id for r in rows], pa.int64()),
                    "k": pa.array([r.k for r in rows], pa.string()),
                    "ts": pa.array([r.ts for r in rows], pa.timestamp("us")),
                }
            ),
        )
        columns = list(zip(*emitted, strict=True)) if emitted else [[]] * 3
        db.register(
            "emitted",
            pa.table(
                {n: pa.array(c, pa.int64()) for n, c in zip(("b", "l", "r"), columns, strict=True)}
            ),
        )
        return db.execute(
            "SELECT e.b, e.l, e.r, l.k, l.ts, r.ts FROM emitted AS e "
            "LEFT JOIN input AS l ON l.row_id = e.l LEFT JOIN input AS r ON r.row_id = e.r"
        ).fetchall()
    finally:
        db.close()


def check_join(join_type: str, data: st.DataObject, tmp_path_factory) -> None:
    # x carries the row's id, so that each output row says which input rows it pairs.
    first, second = (
        tuple(tuple(replace(r, x=r.row_id) for r in batch) for batch in source)
        for source in (data.draw(batches(0), "left"), data.draw(batches(1000), "right"))
    )
    if not first and not second:
        first = ((),)
    delays = data.draw(DELAYS[join_type], "delays")
    before, after = data.draw(st.integers(0, 3), "before"), data.draw(st.integers(0, 4), "after")
    policy = data.draw(st.sampled_from(["min", "max"]), "policy")
    stop = data.draw(st.integers(-1, 4), "stop")
    delays_us = tuple(None if d is None else d * UNIT for d in delays)
    stops = [stop] if stop >= 0 else []
    right = "" if join_type == "semi" else ", r.x AS rx, r.ts AS rts"
    query = (
        f"SELECT l.x AS lx, l.k AS lk, l.ts AS lts{right} FROM s0 AS l {SPELLED[join_type]} "
        f"s1 AS r ON l.k = r.k AND r.ts BETWEEN l.ts - {interval(before * UNIT)} "
        f"AND l.ts + {interval(after * UNIT)}"
    )
    directory = tmp_path_factory.mktemp("join")
    sources = [("s0", first, delays_us[0]), ("s1", second, delays_us[1])]
    options = f", multiple_watermark_policy = '{policy}'"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        columns, emitted, progress, state = run_sink(
            directory, sources, query, stops, options=options
        )
    warned = any(issubclass(w.category, UnboundedStateWarning) for w in caught)
    assert warned == (join_type == "inner" and None in delays), "unbounded state warning"
    outcome = model.run_join(
        events(first, join_type, 0),
        events(second, join_type, 1),
        delays_us,
        join_type,
        before * UNIT,
        after * UNIT,
        policy,
        set(stops),
    )
    got = [
        (
            p.batch_id,
            iso_micros(p.watermark) if p.watermark else model.NO_WATERMARK,
            iso_micros(p.late_threshold) if p.late_threshold else model.NO_WATERMARK,
            p.no_data_batch,
            p.num_late_rows,
            p.num_null_event_times,
        )
        for p in progress
    ]
    want = [
        (n, s.watermark, s.late_threshold, s.batch is None, late, nulls)
        for n, (s, late, nulls) in enumerate(
            zip(outcome.steps, outcome.late_rows, outcome.null_event_times, strict=True)
        )
    ]
    assert got == want, "batches (id, watermark, late threshold, no-data, late rows, NULL times)"
    rows = [r for source in (first, second) for batch in source for r in batch]
    names = ["_batch_id", "lx", "rx", "lk", "lts", "rts"]
    index = {n: columns.index(n) for n in names if n in columns}
    actual = [
        tuple(micros(row[index[n]]) if n in index else None for n in names) for row in emitted
    ]
    expected = [tuple(map(micros, row)) for row in expected_rows(rows, outcome.emitted)]
    check_rows(f"{join_type} join", names, actual, expected)
    assert len(state) == outcome.state_rows, "rows in state"
    shutil.rmtree(directory)


@pytest.mark.parametrize("join_type", list(SPELLED))
@SETTINGS
@given(data=st.data())
def test_stream_stream_join_matches_reference(tmp_path_factory, join_type: str, data) -> None:
    """One property per join type: inner, left, right and full outer, left semi."""
    check_join(join_type, data, tmp_path_factory)
