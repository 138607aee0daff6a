"""Property: a chain of stateful operators (a window over a window, over a deduplication, over
a stream-stream join) emits what one batch DuckDB query over the rows the reference model
accepts gives, restricted to the windows the final watermark has closed, each in the batch
the model says.

Hypothesis draws the sources' batches (empty ones included), watermark delays, window sizes,
ON time ranges and restarts at batch boundaries (the engine is closed and reopened on the same
DuckDB file); each source gets one Parquet file per batch, trigger available_now. The model
(tests/reference_model.py) runs the operator below (run_sources, deduplicate, run_join), then
the window above over the rows it emits, under the query's watermark shifted as Spark's
WatermarkPropagator shifts it (run_over, join_shift). The batch query recomputes the window
above from the rows the operator below accepted, independently of the model's window
assignment; the model says in which batch each window is emitted, what stays in state and how
many rows each operator drops as late (progress `state_operators`).

STREAMSQL_CHAIN_EXAMPLES sets the examples of each property (200 by default).
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import replace

import duckdb
import pyarrow as pa
import reference_model as model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_incremental_properties import (
    check_rows,
    interval,
    micros,
    model_figures,
    progress_figures,
    window_clause,
)
from test_multi_source_properties import UNIT, Batches, batches, events, run_sink
from test_stream_join_properties import events as join_events

from streamsql.errors import UnboundedStateWarning

EXAMPLES = int(os.environ.get("STREAMSQL_CHAIN_EXAMPLES", "200"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INNER_WINDOWS = st.one_of(
    st.integers(1, 3).map(lambda n: model.Tumbling(n * UNIT)),
    st.sampled_from([(2, 1), (3, 1), (4, 2), (3, 2)]).map(
        lambda w: model.Hopping(w[0] * UNIT, w[1] * UNIT)
    ),
)


def closed_windows(
    db: duckdb.DuckDBPyConnection, size: int, closed_by: int, aggregates: str
) -> dict[tuple, tuple]:
    """One batch DuckDB query: the rows of the relation `accepted` in `db` (t: the event time
    the window above uses, in microseconds; k: its key; value columns) in tumbling windows of
    `size`, for the windows that end at or before `closed_by`: (start, end, (k,)) ->
    aggregates."""
    rows = db.execute(
        f"SELECT window_start, window_end, k, {aggregates} FROM ("
        f"  SELECT *, t // {size} * {size} AS window_start, "
        f"  t // {size} * {size} + {size} AS window_end FROM accepted"
        f") WHERE window_end <= {closed_by} GROUP BY window_start, window_end, k"
    ).fetchall()
    return {(start, end, (k,)): tuple(values) for start, end, k, *values in rows}


def check_chain(
    label: str,
    run: tuple,
    outer: model.Outcome,
    expected: dict[tuple, tuple],
    names: Sequence[str],
    keyed: bool = True,
) -> None:
    """The sink's rows (`names` after the window's bounds; `keyed`: k first) are the batch
    query's, each window in the batch the model emits it in;
    the model emits exactly the windows the batch query closes; the state above holds the
    model's open windows; the operator above drops as late the rows the model says."""
    columns, emitted, progress, state = run
    batch_of = {group: batch_id for batch_id, group, _ in outer.emitted}
    assert len(batch_of) == len(outer.emitted), f"{label}: a window emitted twice by the model"
    assert set(batch_of) == set(expected), f"{label}: windows the model emits != closed windows"
    want = [
        (batch_of[g], g[0], g[1], *(g[2] if keyed else ()), *values)
        for g, values in expected.items()
    ]
    index = [columns.index(c) for c in ("_batch_id", "window_start", "window_end", *names)]
    actual = [tuple(micros(row[i]) for i in index) for row in emitted]
    check_rows(label, ["_batch_id", "window_start", "window_end", *names], actual, want)
    key = (lambda r: (r[2],)) if keyed else (lambda r: (None,))
    assert {(micros(r[0]), micros(r[1]), key(r)) for r in state} == set(outer.open_groups), (
        f"{label}: windows in the state of the operator above"
    )
    assert all(len(p.state_operators) == 2 for p in progress), "two stateful operators"
    dropped = [p.state_operators[1]["num_rows_dropped_by_watermark"] for p in progress]
    assert dropped == [b.num_late_rows for b in outer.batches], f"{label}: late rows above"


def query_figures(progress: Sequence) -> list[tuple]:
    """progress_figures with the query's late rows, and those the first operator dropped."""
    return [
        (*figures, p.num_late_rows, p.state_operators[0]["num_rows_dropped_by_watermark"])
        for figures, p in zip(progress_figures(progress), progress, strict=True)
    ]


def model_query_figures(outcome: model.Outcome | model.DedupOutcome) -> list[tuple]:
    """The same figures, as the model of the first operator has them."""
    return [
        (*figures, b.num_late_rows, b.num_late_rows)
        for figures, b in zip(model_figures(outcome), outcome.batches, strict=True)
    ]


def stops_of(stop: int) -> list[int]:
    return [stop] if stop >= 0 else []


# -- a window over a window ------------------------------------------------------------------


@SETTINGS
@given(
    source=batches(0),
    delay=st.integers(0, 3),
    inner=INNER_WINDOWS,
    outer=st.integers(2, 8),
    keyed=st.booleans(),
    stop=st.integers(-1, 4),
)
def test_window_over_window_matches_reference(
    tmp_path_factory, source: Batches, delay, inner, outer, keyed, stop
) -> None:
    source = source or ((),)
    stops = stops_of(stop)
    key = ", k" if keyed else ""
    query = (
        f"SELECT window_start, window_end{key}, count(*) AS groups, sum(n) AS n, "
        f"sum(sx) AS sx FROM (SELECT window_time, k, count(*) AS n, sum(x) AS sx FROM s0 "
        f"{window_clause(inner)} GROUP BY window_start, window_end, k) AS per_key "
        f"WINDOW TUMBLING (window_time, {interval(outer * UNIT)}) "
        f"GROUP BY window_start, window_end{key} EMIT FINAL"
    )
    directory = tmp_path_factory.mktemp("window-window")
    run = run_sink(directory, [("s0", source, delay * UNIT)], query, stops)
    sources = [events(source)]
    _, steps = model.schedule_sources(sources, [delay * UNIT], "min", set(stops))
    below = model.run_sources(sources, [delay * UNIT], inner, "final", "min", set(stops))
    windows = [
        [e if keyed else replace(e, key=(None,)) for e in step]
        for step in model.window_rows(below, steps)
    ]
    above = model.run_over(steps, windows, model.Tumbling(outer * UNIT), 0)
    assert query_figures(run[2]) == model_query_figures(below), "progress"
    # The batch query: the window below over the (row, window) pairs its operator accepted
    # (emitted or still open), the window above over its rows at window_time.
    rows = [r for batch in source for r in batch]
    members = [
        (start, end, group_key[0], row)
        for (start, end, group_key), ids in [
            *((g, ids) for _, g, ids in below.emitted),
            *below.open_groups.items(),
        ]
        for row in ids
    ]
    by_id = {r.row_id: r for r in rows}
    db = duckdb.connect()
    try:
        db.register(
            "members",
            pa.table(
                {
                    "window_end": pa.array([m[1] for m in members], pa.int64()),
                    "window_start": pa.array([m[0] for m in members], pa.int64()),
                    "k": pa.array([m[2] for m in members], pa.string()),
                    "x": pa.array([by_id[m[3]].x for m in members], pa.int64()),
                }
            ),
        )
        db.execute(
            "CREATE VIEW accepted AS SELECT window_end - 1 AS t, "
            f"{'k' if keyed else 'NULL'} AS k, count(*) AS n, sum(x) AS sx FROM members "
            "GROUP BY window_start, window_end, members.k"
        )
        expected = closed_windows(
            db, outer * UNIT, steps[-1].watermark, "count(*), sum(n), sum(sx)"
        )
    finally:
        db.close()
    names = ["k", "groups", "n", "sx"] if keyed else ["groups", "n", "sx"]
    check_chain("window over window", run, above, expected, names, keyed)
    shutil.rmtree(directory)


# -- a window over a deduplication -----------------------------------------------------------

DEDUPLICATIONS = {
    # spelling -> (the subquery, its key columns, within watermark, a key column is the time)
    "k": ("SELECT * FROM s0 DEDUPLICATE ON (k)", ("k",), False, False),
    "k, x": ("SELECT * FROM s0 DEDUPLICATE ON (k, x)", ("k", "x"), False, False),
    "k within": ("SELECT * FROM s0 DEDUPLICATE ON (k) WITHIN WATERMARK", ("k",), True, False),
    "x within": ("SELECT * FROM s0 DEDUPLICATE ON (x) WITHIN WATERMARK", ("x",), True, False),
    "distinct": ("SELECT DISTINCT k, ts, x FROM s0", ("k", "ts", "x"), False, True),
}


@SETTINGS
@given(
    source=batches(0),
    delay=st.integers(0, 3),
    spelling=st.sampled_from(sorted(DEDUPLICATIONS)),
    size=st.integers(1, 4),
    stop=st.integers(-1, 4),
)
def test_window_over_deduplication_matches_reference(
    tmp_path_factory, source: Batches, delay, spelling, size, stop
) -> None:
    source = source or ((),)
    stops = stops_of(stop)
    subquery, keys, within, key_has_time = DEDUPLICATIONS[spelling]
    query = (
        f"SELECT window_start, window_end, k, count(*) AS n, sum(x) AS sx FROM ({subquery}) "
        f"AS d WINDOW TUMBLING (ts, {interval(size * UNIT)}) GROUP BY window_start, window_end, "
        "k EMIT FINAL"
    )
    directory = tmp_path_factory.mktemp("window-dedup")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnboundedStateWarning)  # DEDUPLICATE ON (k) keeps keys
        run = run_sink(directory, [("s0", source, delay * UNIT)], query, stops)
    keyed = [
        [model.Event(r.row_id, r.ts, tuple(getattr(r, k) for k in keys)) for r in batch]
        for batch in source
    ]
    below = model.deduplicate(keyed, delay * UNIT, within, key_has_time, set(stops))
    steps = model.schedule(keyed, delay * UNIT, set(stops))
    rows = [r for batch in source for r in batch]
    inputs: list[list[model.Event]] = [[] for _ in steps]
    for r in rows:
        if r.row_id in below.emitted:
            inputs[below.emitted[r.row_id]].append(model.Event(r.row_id, r.ts, (r.k,)))
    above = model.run_over(steps, inputs, model.Tumbling(size * UNIT), 0)
    assert query_figures(run[2]) == model_query_figures(below), "progress"
    accepted = [r for r in rows if r.row_id in below.emitted]
    db = duckdb.connect()
    try:
        db.register(
            "accepted",
            pa.table(
                {
                    "t": pa.array([r.ts for r in accepted], pa.int64()),
                    "k": pa.array([r.k for r in accepted], pa.string()),
                    "x": pa.array([r.x for r in accepted], pa.int64()),
                }
            ),
        )
        expected = closed_windows(db, size * UNIT, steps[-1].watermark, "count(*), sum(x)")
    finally:
        db.close()
    check_chain(f"window over {spelling}", run, above, expected, ["k", "n", "sx"])
    shutil.rmtree(directory)


# -- a window over a stream-stream join ------------------------------------------------------

JOIN = "s0 AS l {kind} s1 AS r ON l.k = r.k AND r.ts BETWEEN l.ts {low} AND l.ts {high}"
SPELLINGS = {
    # the window written over the join directly, or over a subquery or CTE holding it
    "direct": (
        "SELECT window_start, window_end, l.k AS k, count(*) AS n, sum(l.x) AS lx, "
        "sum(r.x) AS rx FROM {join} WINDOW TUMBLING ({side}.ts, {size}) "
        "GROUP BY window_start, window_end, l.k EMIT FINAL"
    ),
    "subquery": (
        "SELECT window_start, window_end, k, count(*) AS n, sum(lx) AS lx, sum(rx) AS rx "
        "FROM (SELECT l.k AS k, {side}.ts AS t, l.x AS lx, r.x AS rx FROM {join}) AS j "
        "WINDOW TUMBLING (t, {size}) GROUP BY window_start, window_end, k EMIT FINAL"
    ),
    "cte": (
        "WITH j AS (SELECT l.k AS k, {side}.ts AS t, l.x AS lx, r.x AS rx FROM {join}) "
        "SELECT window_start, window_end, k, count(*) AS n, sum(lx) AS lx, sum(rx) AS rx "
        "FROM j WINDOW TUMBLING (t, {size}) GROUP BY window_start, window_end, k EMIT FINAL"
    ),
}


def offset(seconds: int) -> str:
    """`+ INTERVAL ...` or `- INTERVAL ...` (an interval is never negative)."""
    return f"{'-' if seconds < 0 else '+'} {interval(abs(seconds) * UNIT)}"


@st.composite
def join_cases(draw: st.DrawFn) -> tuple:
    """An inner join needs a watermark on one side at least (else nothing bounds its state
    and it passes on no watermark), a left outer join one on its right side; the window is
    on the time of a side with a watermark (the left one for a left outer join, whose right
    time is NULL in NULL-extended rows)."""
    kind = draw(st.sampled_from(["JOIN", "LEFT OUTER JOIN"]))
    if kind == "JOIN":
        delays = draw(
            st.tuples(st.sampled_from([None, 0, 2]), st.sampled_from([None, 0, 3])).filter(
                lambda d: d != (None, None)
            )
        )
        side = draw(
            st.sampled_from([s for s, d in zip("lr", delays, strict=True) if d is not None])
        )
    else:
        delays = draw(st.tuples(st.sampled_from([0, 2]), st.sampled_from([0, 3])))
        side = "l"
    low = draw(st.integers(-3, 2))
    return kind, delays, side, low, low + draw(st.integers(0, 4))


@SETTINGS
@given(
    left=batches(0),
    right=batches(1000),
    case=join_cases(),
    spelling=st.sampled_from(sorted(SPELLINGS)),
    size=st.integers(1, 4),
    policy=st.sampled_from(["min", "max"]),
    stop=st.integers(-1, 4),
)
def test_window_over_stream_join_matches_reference(
    tmp_path_factory, left: Batches, right: Batches, case, spelling, size, policy, stop
) -> None:
    kind, delays, side, low, high = case
    if not left and not right:
        left = ((),)
    stops = stops_of(stop)
    join = JOIN.format(kind=kind, low=offset(low), high=offset(high))
    query = SPELLINGS[spelling].format(join=join, side=side, size=interval(size * UNIT))
    directory = tmp_path_factory.mktemp("window-join")
    delays_us = tuple(None if d is None else d * UNIT for d in delays)
    sources = [("s0", left, delays_us[0]), ("s1", right, delays_us[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnboundedStateWarning)  # an inner join, one watermark
        run = run_sink(
            directory, sources, query, stops, options=f", multiple_watermark_policy = '{policy}'"
        )
    join_type = "inner" if kind == "JOIN" else "left"
    before, after = -low * UNIT, high * UNIT
    below = model.run_join(
        join_events(left, join_type, 0),
        join_events(right, join_type, 1),
        delays_us,
        join_type,
        before,
        after,
        policy,
        set(stops),
    )
    shift = model.join_shift(delays_us, before, after)
    rows = {r.row_id: r for source in (left, right) for batch in source for r in batch}
    inputs: list[list[model.Event]] = [[] for _ in below.steps]
    pairs = []
    for number, (batch_id, lid, rid) in enumerate(below.emitted):
        lrow, rrow = rows[lid], rows.get(rid)
        t = lrow.ts if side == "l" else rrow.ts
        inputs[batch_id].append(model.Event(number, t, (lrow.k,)))
        pairs.append((t, lrow.k, lrow.x, rrow.x if rrow else None))
    above = model.run_over(below.steps, inputs, model.Tumbling(size * UNIT), shift)
    # A side without a watermark keeps the other's rows for good, so a row arriving on it
    # late can join an old one below the watermark the join passes on: the window drops
    # that pair as late (counted by check_chain), as Spark's would.
    pairs = [pair for number, pair in enumerate(pairs) if number in above.accepted]
    got = [(*progress_figures([p])[0][:4], p.num_late_rows) for p in run[2]]
    want = [
        (n, s.watermark, s.late_threshold, s.batch is None, late)
        for n, (s, late) in enumerate(zip(below.steps, below.late_rows, strict=True))
    ]
    assert got == want, "batches (id, watermark, late threshold, no-data, late rows)"
    db = duckdb.connect()
    try:
        columns = list(zip(*pairs, strict=True)) if pairs else [[]] * 4
        db.register(
            "accepted",
            pa.table(
                {
                    "t": pa.array(columns[0], pa.int64()),
                    "k": pa.array(columns[1], pa.string()),
                    "lx": pa.array(columns[2], pa.int64()),
                    "rx": pa.array(columns[3], pa.int64()),
                }
            ),
        )
        closed_by = below.steps[-1].watermark + shift
        expected = closed_windows(db, size * UNIT, closed_by, "count(*), sum(lx), sum(rx)")
    finally:
        db.close()
    label = f"window over {kind} ({spelling}, on {side}.ts)"
    check_chain(label, run, above, expected, ["k", "n", "lx", "rx"])
    shutil.rmtree(directory)
