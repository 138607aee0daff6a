"""Property: a query over several sources, or over a source joined with a table, emits what
a batch query over the rows the reference model accepts gives.

Hypothesis draws two sources' batches (of different lengths, empty ones included), each
source's watermark delay (or none), the policy that combines them (min or max), and
restarts at batch boundaries; each source gets one Parquet file per batch, trigger
available_now. The reference model (tests/reference_model.py: schedule_sources, after
Spark's WatermarkTracker) says which micro-batch reads what, the watermark of every batch,
and which windows are emitted when, with which rows; DuckDB gives their values. A second
property joins one source with a table that changes while the query is stopped: every
batch's rows meet the table as it is when the batch runs; with a window over an inner
join, rows whose key is NULL move no watermark (Spark infers `k IS NOT NULL` and pushes it
below the watermark) and rows without a match move it without reaching any window.

STREAMSQL_MULTI_SOURCE_EXAMPLES sets the examples of the union property (200 by default);
each of the two stream-static join properties runs half as many (200 for the operator).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import reference_model as model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_incremental_properties import (
    JITTER,
    REFERENCE,
    T0,
    check_rows,
    interval,
    micros,
    model_figures,
    progress_figures,
)

import streamsql

EXAMPLES = int(os.environ.get("STREAMSQL_MULTI_SOURCE_EXAMPLES", "200"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HALF = settings(SETTINGS, max_examples=max(EXAMPLES // 2, 1))
UNIT = 1_000_000  # a second
SCHEMA = pa.schema([("k", pa.string()), ("ts", pa.timestamp("us")), ("x", pa.int64())])


@dataclass(frozen=True)
class Row:
    row_id: int
    k: str | None
    ts: int | None
    x: int | None


Batches = tuple[tuple[Row, ...], ...]


@st.composite
def batches(draw: st.DrawFn, first_id: int) -> Batches:
    """A source's batches: event time drifts forward, rows lag behind it."""
    clock = draw(st.integers(0, 4))
    drawn = []
    row_id = first_id
    for _ in range(draw(st.integers(0, 5))):
        clock += draw(st.integers(0, 4))
        rows = []
        for _ in range(draw(st.integers(0, 4))):
            ts = None
            if draw(st.integers(0, 14)):
                ts = (
                    T0
                    + max(clock - draw(st.integers(-1, 8)), 0) * UNIT
                    + draw(st.sampled_from(JITTER))
                )
            rows.append(
                Row(row_id, draw(st.sampled_from(["a", "b", None])), ts, draw(st.integers(-3, 9)))
            )
            row_id += 1
        drawn.append(tuple(rows))
    return tuple(drawn)


def events(source: Batches) -> list[list[model.Event]]:
    return [[model.Event(r.row_id, r.ts, (r.k,)) for r in batch] for batch in source]


def write_batches(directory: Path, source: Batches, first: int, last: int) -> None:
    directory.mkdir(exist_ok=True)
    for number in range(first, min(last, len(source) - 1) + 1):
        rows = source[number]
        table = pa.table(
            {
                "k": [r.k for r in rows],
                "ts": pa.array([r.ts for r in rows], pa.timestamp("us")),
                "x": pa.array([r.x for r in rows], pa.int64()),
            },
            schema=SCHEMA,
        )
        pq.write_table(table, directory / f"batch_{number:04d}.parquet")


def source_sql(name: str, path: Path, delay: int | None) -> str:
    watermark = f", WATERMARK FOR ts AS ts - {interval(delay)}" if delay is not None else ""
    return (
        f"CREATE SOURCE {name} (k VARCHAR, ts TIMESTAMP, x BIGINT{watermark}) WITH ("
        f"connector = 'files', path = '{path}', format = 'parquet', max_files_per_trigger = 1)"
    )


def run_sink(
    directory: Path,
    sources: Sequence[tuple[str, Batches, int | None]],
    query: str,
    stops: Sequence[int],
    between: dict[int, str] | None = None,
    options: str = "",
    setup: str | None = None,
) -> tuple[list[str], list[tuple], list, list[tuple]]:
    """One changelog sink over the sources; `setup` (SQL) runs before the sources are
    created. After each batch index in `stops` the engine is closed, `between[index]` (SQL)
    runs, the next files are written, and it reopens. Returns the sink's columns, rows,
    progress and state rows."""
    length = max(len(batches) for _, batches, _ in sources)
    progress: list = []
    first = 0
    for last in sorted({*(s for s in stops if s < length - 1), length - 1}):
        for name, batches, _ in sources:
            write_batches(directory / name, batches, first, last)
        con = streamsql.connect(str(directory / "engine.db"))
        try:
            if first == 0:
                if setup:
                    con.execute(setup)
                for name, _, delay in sources:
                    (directory / name).mkdir(exist_ok=True)
                    con.execute(source_sql(name, directory / name, delay))
                con.execute(
                    "CREATE SINK out WITH (connector = 'duckdb', changelog = true, "
                    f"trigger = 'available_now'{options}) AS {query}"
                )
            stream = con.query("out")
            assert stream.await_termination(60), "out did not stop"
            progress.extend(stream.recent_progress)
            if last == length - 1:
                output = con.execute("SELECT * FROM out")
                columns, rows = [d[0] for d in output.description], output.fetchall()
                stateful = con.execute(
                    "SELECT 1 FROM duckdb_tables() WHERE table_name = 'state_out'"
                ).fetchall()
                state = (
                    con.execute('SELECT * FROM _streamsql."state_out"').fetchall()
                    if stateful
                    else []
                )
                return columns, rows, progress, state
            if between and last in between:
                con.execute(between[last])
        finally:
            con.close()
        first = last + 1
    raise AssertionError("unreachable")


def check_progress(progress: list, outcome: model.Outcome) -> None:
    assert progress_figures(progress) == model_figures(outcome), (
        "progress (batch, watermark, late threshold, no-data, rows, NULL times)"
    )


def expected_windows(rows: Sequence[Row], outcome: model.Outcome) -> list[tuple]:
    """The emitted windows' values: one batch query over the rows the model put in them."""
    db = REFERENCE.cursor()
    try:
        db.register(
            "input",
            pa.table(
                {"row_id": [r.row_id for r in rows], "x": pa.array([r.x for r in rows], pa.int64())}
            ),
        )
        members = [
            (number, batch_id, start, end, key[0], row)
            for number, (batch_id, (start, end, key), ids) in enumerate(outcome.emitted)
            for row in ids
        ]
        columns = list(zip(*members, strict=True)) if members else [[]] * 6
        db.register(
            "emissions",
            pa.table(
                {
                    "emission": pa.array(columns[0], pa.int64()),
                    "_batch_id": pa.array(columns[1], pa.int64()),
                    "window_start": pa.array(columns[2], pa.timestamp("us")),
                    "window_end": pa.array(columns[3], pa.timestamp("us")),
                    "k": pa.array(columns[4], pa.string()),
                    "row_id": pa.array(columns[5], pa.int64()),
                }
            ),
        )
        return db.execute(
            "SELECT _batch_id, window_start, window_end, k, count(*), sum(x) "
            "FROM emissions JOIN input USING (row_id) "
            "GROUP BY emission, _batch_id, window_start, window_end, k"
        ).fetchall()
    finally:
        db.close()


def check_windows(label: str, run: tuple, rows: Sequence[Row], outcome: model.Outcome) -> None:
    columns, emitted, progress, state = run
    check_progress(progress, outcome)
    names = ["_batch_id", "window_start", "window_end", "k", "n", "sx"]
    index = [columns.index(c) for c in names]
    actual = [tuple(micros(row[i]) for i in index) for row in emitted]
    expected = [tuple(map(micros, row)) for row in expected_windows(rows, outcome)]
    check_rows(label, names, actual, expected)
    in_state = {(micros(r[0]), micros(r[1]), r[2]) for r in state}
    assert in_state == {(s, e, k[0]) for s, e, k in outcome.open_groups}, f"{label}: state"


WINDOWED = (
    "SELECT window_start, window_end, k, count(*) AS n, sum(x) AS sx FROM {relation} "
    "WINDOW TUMBLING (ts, {size}) GROUP BY window_start, window_end, k EMIT {emit}"
)


# -- UNION ALL of two sources ------------------------------------------------------------


@SETTINGS
@given(
    first=batches(0),
    second=batches(1000),
    delays=st.tuples(st.sampled_from([None, 0, 1, 3]), st.sampled_from([None, 0, 2, 4])).filter(
        lambda d: d != (None, None)
    ),
    policy=st.sampled_from(["min", "max"]),
    size=st.integers(1, 4),
    emit=st.sampled_from(["final", "changes"]),
    stop=st.integers(-1, 4),
)
def test_union_of_two_sources_matches_reference(
    tmp_path_factory, first, second, delays, policy, size, emit, stop
) -> None:
    if not first and not second:
        first = ((),)
    delays_us = [None if d is None else d * UNIT for d in delays]
    stops = [stop] if stop >= 0 else []
    directory = tmp_path_factory.mktemp("union")
    query = WINDOWED.format(
        relation="(SELECT k, ts, x FROM s0 UNION ALL SELECT k, ts, x FROM s1) AS u",
        size=interval(size * UNIT),
        emit=emit.upper(),
    )
    sources = [("s0", first, delays_us[0]), ("s1", second, delays_us[1])]
    options = f", multiple_watermark_policy = '{policy}'"
    if delays[0] is None and emit == "final":
        # A UNION ALL's columns carry its first branch's watermark, as in Spark: none here,
        # so its windows never close.
        with pytest.raises(streamsql.ProgrammingError, match="windowed-final-needs-watermark"):
            run_sink(directory, sources, query, stops, options=options)
        return
    run = run_sink(directory, sources, query, stops, options=options)
    outcome = model.run_sources(
        [events(first), events(second)],
        delays_us,
        model.Tumbling(size * UNIT),
        emit,
        policy,
        set(stops),
        watermarked=delays[0] is not None,
    )
    rows = [r for source in (first, second) for batch in source for r in batch]
    check_windows(f"UNION ALL, EMIT {emit.upper()}, {policy}", run, rows, outcome)
    shutil.rmtree(directory)


# -- a source joined with a table ----------------------------------------------------------

NAMES = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["x", "y", None]))


def dim_sql(names: dict[str, str | None]) -> str:
    """The table `dim` (k VARCHAR, name VARCHAR) holding `names`."""
    values = ", ".join(
        f"('{k}', {'NULL' if v is None else repr(v)})" for k, v in sorted(names.items())
    )
    rows = (
        f"(VALUES {values}) AS v(k, name)"
        if values
        else "(SELECT NULL AS k, NULL AS name WHERE false)"
    )
    return (
        f"CREATE OR REPLACE TABLE dim AS SELECT k::VARCHAR AS k, name::VARCHAR AS name FROM {rows}"
    )


@HALF
@given(
    source=batches(0).filter(bool),
    names=st.lists(NAMES, min_size=2, max_size=2),
    kind=st.sampled_from(["JOIN", "LEFT JOIN"]),
    stop=st.integers(0, 3),
)
def test_stream_static_join_sees_the_table_as_each_batch_runs(
    tmp_path_factory, source, names, kind, stop
) -> None:
    """Stateless: each batch's rows joined with the table as it was when the batch ran (it
    changes while the query is stopped after batch `stop`)."""
    directory = tmp_path_factory.mktemp("join")
    query = f"SELECT s.k, d.name, s.x, s.ts FROM s0 AS s {kind} dim AS d ON s.k = d.k"
    columns, emitted, progress, _ = run_sink(
        directory,
        [("s0", source, 0)],
        query,
        [stop],
        {stop: dim_sql(names[1])},
        setup=dim_sql(names[0]),
    )
    db = REFERENCE.cursor()
    expected = []
    for batch_id, batch in enumerate(source):
        version = names[0] if batch_id <= stop else names[1]
        db.execute(dim_sql(version))
        db.register(
            "batch",
            pa.table(
                {
                    "k": [r.k for r in batch],
                    "x": pa.array([r.x for r in batch], pa.int64()),
                    "ts": pa.array([r.ts for r in batch], pa.timestamp("us")),
                }
            ),
        )
        expected += db.execute(
            f"SELECT {batch_id}, s.k, d.name, s.x, s.ts FROM batch AS s {kind} dim AS d "
            "ON s.k = d.k"
        ).fetchall()
    db.close()
    index = [columns.index(c) for c in ("_batch_id", "k", "name", "x", "ts")]
    actual = [tuple(micros(row[i]) for i in index) for row in emitted]
    check_rows(
        kind,
        ["_batch_id", "k", "name", "x", "ts"],
        actual,
        [tuple(map(micros, row)) for row in expected],
    )
    assert [p.num_input_rows for p in progress if not p.no_data_batch] == [len(b) for b in source]
    shutil.rmtree(directory)


@HALF
@given(
    source=batches(0).filter(bool),
    names=NAMES,
    delay=st.integers(0, 3),
    size=st.integers(1, 4),
    emit=st.sampled_from(["final", "changes"]),
    stop=st.integers(-1, 3),
)
def test_window_over_a_stream_static_join_matches_reference(
    tmp_path_factory, source, names, delay, size, emit, stop
) -> None:
    """Rows with a NULL key never reach the watermark (the inferred `k IS NOT NULL`); rows
    without a match in the table move it but reach no window."""
    directory = tmp_path_factory.mktemp("join-window")
    query = WINDOWED.format(
        relation="s0 JOIN dim AS d ON s0.k = d.k",
        size=interval(size * UNIT),
        emit=emit.upper(),
    ).replace("GROUP BY window_start, window_end, k", "GROUP BY window_start, window_end, s0.k")
    query = query.replace(
        "SELECT window_start, window_end, k,", "SELECT window_start, window_end, s0.k,"
    )
    stops = [stop] if stop >= 0 else []
    run = run_sink(directory, [("s0", source, delay * UNIT)], query, stops, setup=dim_sql(names))
    reaches = {r.row_id: r.k in names for batch in source for r in batch}
    sources = [
        [
            [model.Event(r.row_id, r.ts, (r.k,), r.k is not None, reaches[r.row_id]) for r in b]
            for b in source
        ]
    ]
    outcome = model.run_sources(
        sources, [delay * UNIT], model.Tumbling(size * UNIT), emit, "min", set(stops)
    )
    rows = [r for batch in source for r in batch]
    check_windows(f"window over JOIN, EMIT {emit.upper()}", run, rows, outcome)
    shutil.rmtree(directory)
