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
from collections.abc import Sequence
from dataclasses import replace

import duckdb
import pyarrow as pa
import reference_model as model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_incremental_properties import check_rows, interval, micros, progress_figures
from test_multi_source_properties import UNIT, Batches, Row, batches, events, run_sink

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


def window_clause(window: model.Tumbling | model.Hopping, column: str) -> str:
    if isinstance(window, model.Tumbling):
        return f"WINDOW TUMBLING ({column}, {interval(window.size)})"
    return f"WINDOW HOPPING ({column}, {interval(window.size)}, {interval(window.slide)})"


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


def late_and_nulls(progress: Sequence) -> list[tuple]:
    """Progress figures with the late rows of the query (the first operator's)."""
    return [
        (*figures, p.num_late_rows, p.state_operators[0]["num_rows_dropped_by_watermark"])
        for figures, p in zip(progress_figures(progress), progress, strict=True)
    ]


def model_late_and_nulls(infos: Sequence[model.BatchInfo]) -> list[tuple]:
    return [
        (
            b.batch_id,
            b.watermark,
            b.late_threshold,
            b.no_data,
            b.num_input_rows,
            b.num_null_event_times,
            b.num_late_rows,
            b.num_late_rows,
        )
        for b in infos
    ]


def row_table(rows: Sequence[Row], ids: Sequence[int], time: dict[int, int]) -> dict[str, list]:
    by_id = {r.row_id: r for r in rows}
    return {
        "t": [time[i] for i in ids],
        "k": [by_id[i].k for i in ids],
        "x": [by_id[i].x for i in ids],
    }


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
        f"{window_clause(inner, 'ts')} GROUP BY window_start, window_end, k) AS per_key "
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
    assert late_and_nulls(run[2]) == model_late_and_nulls(below.batches), "progress"
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
