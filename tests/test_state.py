"""State handling: compaction of appended partials, exact merges, and what stays in state."""

from __future__ import annotations

import datetime as dt
import math
import random
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

import streamsql
from streamsql.runtime import microbatch

BASE = dt.datetime(2024, 1, 1)
SOURCE = (
    "CREATE SOURCE ev (k VARCHAR, ts TIMESTAMP, x DOUBLE, "
    "WATERMARK FOR ts AS ts - INTERVAL '10 seconds') "
    "WITH (connector = 'memory', max_rows_per_trigger = {rows})"
)


def rows_table(rows: list[tuple[str | None, dt.datetime, float | None]]) -> pa.Table:
    return pa.table(
        {
            "k": pa.array([r[0] for r in rows], pa.string()),
            "ts": pa.array([r[1] for r in rows], pa.timestamp("us")),
            "x": pa.array([r[2] for r in rows], pa.float64()),
        }
    )


def run(tmp_path: Path, rows: list, query: str, batch_rows: int) -> streamsql.Connection:
    con = streamsql.connect(str(tmp_path / "e.db"), trigger="available_now")
    con.execute(SOURCE.format(rows=batch_rows))
    con.register("input", rows_table(rows))
    con.execute("INSERT INTO ev SELECT * FROM input")
    con.execute(f"CREATE SINK out WITH (connector = 'duckdb', changelog = true) AS {query}")
    assert con.query("out").await_termination(120)
    return con


def test_compaction_keeps_results_and_bounds_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a tiny threshold the appended partials are combined many times along the way;
    every window still comes out exactly as a batch query computes it."""
    monkeypatch.setattr(microbatch, "COMPACTION_MIN_ROWS", 5)
    rng = random.Random(3)
    rows = [
        (f"k{rng.randrange(4)}", BASE + dt.timedelta(milliseconds=i * 250), rng.uniform(-5, 5))
        for i in range(400)
    ]
    query = (
        "SELECT window_start, k, count(*) AS n, sum(x) AS s, stddev_samp(x) AS sd, "
        "count(DISTINCT round(x)) AS d FROM ev WINDOW TUMBLING (ts, INTERVAL '20 seconds') "
        "GROUP BY window_start, window_end, k EMIT FINAL"
    )
    con = run(tmp_path, rows, query, batch_rows=3)
    try:
        progress = list(con.query("out").recent_progress)
        assert max(p.state_rows for p in progress) < 60  # ~4 keys x 2 open windows, compacted
        emitted = con.execute(
            "SELECT window_start, k, n, s, sd, d FROM out ORDER BY 1, 2"
        ).fetchall()
        state = con.execute('SELECT count(*) FROM _streamsql."state_out"').fetchall()[0][0]
        assert progress[-1].state_rows == state
    finally:
        con.close()
    expected = duckdb.connect()
    expected.register("input", rows_table(rows))
    reference = expected.execute(
        "SELECT time_bucket(INTERVAL '20 seconds', ts, TIMESTAMP '1970-01-01') AS w, k, "
        "count(*), sum(x), stddev_samp(x), count(DISTINCT round(x)) FROM input "
        "WHERE ts < TIMESTAMP '2024-01-01 00:01:20' GROUP BY ALL ORDER BY 1, 2"
    ).fetchall()
    assert len(emitted) == len(reference) > 10
    for got, want in zip(emitted, reference, strict=True):
        assert got[:3] == want[:3] and got[5] == want[5]
        assert math.isclose(got[3], want[3], rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(got[4], want[4], rel_tol=1e-9, abs_tol=1e-9)


def test_variance_merges_without_cancellation(tmp_path: Path) -> None:
    """Values near 1e9 with a spread of 1: a sum of squares would lose every digit."""
    rows = [("a", BASE + dt.timedelta(seconds=i), 1e9 + (i % 7) * 0.25) for i in range(70)]
    query = (
        "SELECT k, var_samp(x) AS v, stddev_pop(x) AS sd, avg(x) AS m FROM ev GROUP BY k "
        "EMIT CHANGES"
    )
    con = run(tmp_path, rows, query, batch_rows=4)
    try:
        final = con.execute("SELECT v, sd, m FROM out ORDER BY _batch_id DESC LIMIT 1").fetchall()
    finally:
        con.close()
    values = [x for _, _, x in rows]
    mean = sum(values) / len(values)
    var_samp = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    var_pop = var_samp * (len(values) - 1) / len(values)
    naive = (sum(v * v for v in values) - len(values) * mean * mean) / (len(values) - 1)
    assert not math.isclose(naive, var_samp, rel_tol=1e-3)  # what a sum of squares gives
    ((v, sd, m),) = final
    assert math.isclose(v, var_samp, rel_tol=1e-6)
    assert math.isclose(sd, math.sqrt(var_pop), rel_tol=1e-6)
    assert math.isclose(m, mean, rel_tol=1e-12)


@pytest.mark.parametrize("batch_rows", [37, 400])
def test_approx_count_distinct_does_not_depend_on_batches(tmp_path: Path, batch_rows: int) -> None:
    rng = random.Random(11)
    rows = [
        ("a", BASE + dt.timedelta(milliseconds=i), float(rng.randrange(3000))) for i in range(1200)
    ]
    query = "SELECT k, approx_count_distinct(x) AS a FROM ev GROUP BY k EMIT CHANGES"
    con = run(tmp_path, rows, query, batch_rows=batch_rows)
    try:
        estimate = con.execute("SELECT a FROM out ORDER BY _batch_id DESC LIMIT 1").fetchall()[0][0]
    finally:
        con.close()
    exact = len({x for _, _, x in rows})
    assert abs(estimate - exact) <= 0.05 * exact
    # the same registers whatever the batches: the estimate of one batch is the estimate
    (tmp_path / "one").mkdir()
    single = run(tmp_path / "one", rows, query, batch_rows=10_000)
    try:
        assert single.execute("SELECT a FROM out").fetchall() == [(estimate,)]
    finally:
        single.close()


def test_closed_windows_leave_the_state_and_null_keys_are_groups(tmp_path: Path) -> None:
    rows = [
        (None, BASE, 1.0),
        (None, BASE + dt.timedelta(seconds=1), None),
        ("a", BASE + dt.timedelta(seconds=2), 2.0),
        ("a", BASE + dt.timedelta(seconds=40), 4.0),  # moves the watermark past 00:00:20
    ]
    query = (
        "SELECT window_start, window_end, k, count(*) AS n, count(x) AS c, sum(x) AS s "
        "FROM ev WINDOW TUMBLING (ts, INTERVAL '20 seconds') "
        "GROUP BY window_start, window_end, k EMIT FINAL"
    )
    con = run(tmp_path, rows, query, batch_rows=2)
    try:
        emitted = con.execute("SELECT k, n, c, s FROM out ORDER BY k NULLS FIRST").fetchall()
        state = con.execute('SELECT window_start, key0 FROM _streamsql."state_out"').fetchall()
    finally:
        con.close()
    assert emitted == [(None, 2, 1, 1.0), ("a", 1, 1, 2.0)]
    assert state == [(dt.datetime(2024, 1, 1, 0, 0, 40), "a")]
