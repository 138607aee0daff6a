"""Property: windowed aggregation emits what a batch query over the accepted rows gives.

Hypothesis draws events (out of order, late, on window boundaries and on the watermark,
NULL keys, NULL values, NULL event times, sub-millisecond timestamps), splits them into
micro-batches (empty ones included) and feeds one Parquet file per batch to the engine,
trigger available_now, through an EMIT FINAL and an EMIT CHANGES sink (sessions: FINAL
only, as Spark refuses update mode for them). Some cases are NULL-heavy (most x NULL, so
whole batches of a group have no value), some have huge and infinite doubles. The reference
model (tests/reference_model.py, written from docs/semantics.md) says which rows are
accepted, which groups must be emitted in which batch, and which must still be in state;
DuckDB, in one batch query over the rows the model puts in each emitted group, gives the
aggregate values. The engine must emit exactly those rows, batch for batch, report the
same watermarks and late-row thresholds, and keep in state exactly the open groups.

A second property runs global, keyed and tumbling aggregations in EMIT SNAPSHOT and
EMIT CHANGES, with WHERE clauses that may match no row, against DuckDB over the rows of
the batches so far.

STREAMSQL_PROPERTY_EXAMPLES sets the examples per window kind: by default 64 for each of
the three, 32 for the snapshot property, 8 for approx_count_distinct and 2 with a state
large enough to be compacted, 234 in all (2.5 CPU-minutes; 4 minutes on 2 busy cores).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import shutil
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import reference_model as model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamsql

EPOCH = dt.datetime(1970, 1, 1)
T0 = 1_704_067_200_000_000  # 2024-01-01T00:00:00 in microseconds since the epoch
MS = 1_000

EXAMPLES = int(os.environ.get("STREAMSQL_PROPERTY_EXAMPLES", "64"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# The arg_max family orders on the whole row, so that rows with equal keys have equal
# arguments: DuckDB leaves the choice among equal keys open. k and g are often NULL, and
# rows whose argument is NULL do not count.
ROW = "{'x': x, 'k': k, 'g': g, 't': ts}"
AGGREGATES = (
    "count(*) AS n, count(x) AS nx, sum(x) AS s, avg(x) AS a, min(x) AS lo, max(x) AS hi, "
    "var_pop(x) AS vp, var_samp(x) AS vs, stddev_pop(x) AS sdp, stddev_samp(x) AS sds, "
    "count(DISTINCT x) AS nd, sum(x) / count(*) AS ratio, max(x) - min(x) AS spread, "
    f"count_if(x > 0) AS ci, arg_max(k, {ROW}) AS ak, min_by(g, {ROW}) AS mg, "
    f"max(x, 2) AS top2, min(x, 3) AS low3, max_by(k, {ROW}, 2) AS ak2, "
    f"arg_min(g, {ROW}, 3) AS mg3"
)
HAVING = (None, "count(*) > 1", "max(x) > 0", "count(DISTINCT x) >= 2 OR sum(x) IS NULL")
KEYS = ((), ("k",), ("k", "g"))
# WHERE over columns other than the event time, with the rows each keeps: Spark applies it
# below the watermark, so rows it removes move no watermark (and are never late).
FILTERS: dict[str | None, Any] = {
    None: lambda row: True,
    "k = 'a'": lambda row: row.k == "a",
    "g IS NULL OR x > 0": lambda row: row.g is None or (row.x is not None and row.x > 0),
}
WINDOW_COLUMNS = (
    ("window_start", "window_end"),
    ("window_start", "window_end"),
    ("window_end", "window_start"),
    ("window_start",),
    ("window_end",),
)


@dataclass(frozen=True)
class Row:
    row_id: int
    k: str | None
    g: int | None
    ts: int | None  # microseconds since the epoch
    x: float | int | Decimal | None


@dataclass(frozen=True)
class Case:
    batches: tuple[tuple[Row, ...], ...]
    window: model.Window
    delay: int  # microseconds
    keys: tuple[str, ...]
    having: str | None
    aggregates: str = AGGREGATES
    stops: frozenset[int] = frozenset()  # batches after which the engine stops and restarts
    x_type: str = "DOUBLE"
    # How the query is spelled: window columns grouped on, in this order, keys before or
    # after them; the watermark in the source DDL or in FROM (Databricks form).
    window_columns: tuple[str, ...] = ("window_start", "window_end")
    keys_first: bool = False
    watermark_in_from: bool = False
    where: str | None = None

    def events(self) -> list[list[model.Event]]:
        passes = FILTERS[self.where]
        return [
            [
                model.Event(r.row_id, r.ts, tuple(getattr(r, k) for k in self.keys), passes(r))
                for r in batch
            ]
            for batch in self.batches
        ]

    def rows(self) -> list[Row]:
        return [row for batch in self.batches for row in batch]


# -- strategies ----------------------------------------------------------------------------

# Every duration of a case is a small multiple of one unit and event times sit on the unit
# grid (aligned to the Unix epoch, like windows), so rows often fall exactly on window
# boundaries, on the watermark and on the late-row threshold. 700 ms does not divide a
# day: those windows do not start at midnight.
UNITS = (250 * MS, 700 * MS, 1_000 * MS)
# Microseconds off the grid: mostly none; 1 us either side of a boundary; fractions of a
# millisecond, which the watermark's truncation to milliseconds drops.
JITTER = (0,) * 12 + (1, -1, 500, -500, 999, 1_000, 1_001, 123_456)
# The type of x, with its Arrow type and values: small ones (sums exact whatever the
# order), awkward ones (-0.0, 0.1, 1/3, integers beyond 2^53 and sums beyond 2^63).
X_TYPES = {
    "DOUBLE": (
        pa.float64(),
        st.one_of(
            st.none(),
            st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, 0.5, 3.0, -7.25, 10.0, 0.1, 1 / 3]),
            st.integers(-20, 20).map(float),
            st.floats(-1_000, 1_000, allow_nan=False, allow_infinity=False),
        ),
    ),
    "BIGINT": (
        pa.int64(),
        st.one_of(
            st.none(),
            st.integers(-20, 20),
            st.sampled_from([2**53 + 1, -(2**40), 2**61, -(2**61)]),  # max - min fits BIGINT
        ),
    ),
    "DECIMAL(9,2)": (
        pa.decimal128(9, 2),
        st.one_of(
            st.none(),
            st.integers(-2_000, 2_000).map(lambda n: Decimal(n).scaleb(-2)),
            st.just(Decimal("9999999.99")),
        ),
    ),
}

# Huge and infinite doubles, in a case of their own: every finite one is a multiple of
# 2^996 (~6.7e299), so sums are exact in any order (DuckDB's own would depend on the order
# of 1e300 + 2 - 1e300), while squares overflow and infinities make NaN.
HUGE = st.one_of(
    st.none(),
    st.sampled_from([2.0**996, -(2.0**996), 3 * 2.0**996, math.inf, -math.inf]),
)

TUMBLING = st.integers(1, 4).map(lambda n: ("tumbling", n))
HOPPING = st.sampled_from([(2, 1), (3, 1), (4, 2), (3, 2), (4, 3), (2, 2), (4, 1)]).map(
    lambda n: ("hopping", *n)
)
SESSION = st.integers(1, 4).map(lambda n: ("session", n))


def make_window(spec: tuple, unit: int) -> model.Window:
    if spec[0] == "tumbling":
        return model.Tumbling(spec[1] * unit)
    if spec[0] == "hopping":
        return model.Hopping(spec[1] * unit, spec[2] * unit)
    return model.Session(spec[1] * unit)


@st.composite
def cases(draw: st.DrawFn, windows: st.SearchStrategy[tuple]) -> Case:
    """Batches of rows: event time drifts forward batch by batch, rows lag behind it."""
    unit = draw(st.sampled_from(UNITS))
    x_type = draw(st.sampled_from(sorted(X_TYPES)))
    values = X_TYPES[x_type][1]
    if x_type == "DOUBLE" and draw(st.integers(0, 4)) == 0:
        values = HUGE
    nulls = draw(st.sampled_from([0, 0, 0, 3, 4]))  # in 5: NULL-heavy cases, all-NULL ones
    origin = T0 // unit * unit
    batches = []
    clock = draw(st.integers(0, 4))  # in units after the origin
    row_id = 0
    for _ in range(draw(st.integers(1, 6))):
        clock += draw(st.integers(0, 5))
        rows = []
        for _ in range(draw(st.integers(0, 6))):
            if draw(st.integers(0, 19)) == 0:
                ts = None
            else:
                lag = draw(st.integers(-2, 10))
                ts = origin + max(clock - lag, 0) * unit + draw(st.sampled_from(JITTER))
            rows.append(
                Row(
                    row_id=row_id,
                    k=draw(st.sampled_from(["a", "b", "", None])),
                    g=draw(st.sampled_from([0, 1, None])),
                    ts=ts,
                    x=None if draw(st.integers(0, 4)) < nulls else draw(values),
                )
            )
            row_id += 1
        batches.append(tuple(rows))
    stops = frozenset()
    if len(batches) > 1 and draw(st.integers(0, 4)) == 0:
        stops = frozenset({draw(st.integers(0, len(batches) - 2))})
    return Case(
        batches=tuple(batches),
        stops=stops,
        window=make_window(draw(windows), unit),
        delay=draw(st.integers(0, 4)) * unit,
        keys=draw(st.sampled_from(KEYS)),
        having=draw(st.sampled_from(HAVING)),
        x_type=x_type,
        window_columns=draw(st.sampled_from(WINDOW_COLUMNS)),
        keys_first=draw(st.booleans()),
        watermark_in_from=draw(st.booleans()),
        where=draw(st.sampled_from([None, None, *(w for w in FILTERS if w)])),
    )


# -- SQL -----------------------------------------------------------------------------------


def interval(micros: int) -> str:
    assert micros % MS == 0
    return f"INTERVAL '{micros // MS} milliseconds'"


def window_clause(window: model.Window) -> str:
    if isinstance(window, model.Tumbling):
        return f"WINDOW TUMBLING (ts, {interval(window.size)})"
    if isinstance(window, model.Hopping):
        return f"WINDOW HOPPING (ts, {interval(window.size)}, {interval(window.slide)})"
    return f"WINDOW SESSION (ts, {interval(window.gap)})"


def group_by(case: Case) -> str:
    columns = [*case.keys, *case.window_columns]
    if not case.keys_first:
        columns = [*case.window_columns, *case.keys]
    return ", ".join(columns)


def select_list(case: Case) -> str:
    return f"{group_by(case)}, {case.aggregates}"


def having(case: Case) -> str:
    return f" HAVING {case.having}" if case.having else ""


def streaming_query(case: Case, source: str, emit: str) -> str:
    if case.watermark_in_from:
        source = f"{source} WATERMARK ts DELAY OF {interval(case.delay)}"
    where = f" WHERE {case.where}" if case.where else ""
    return (
        f"SELECT {select_list(case)} FROM {source}{where} {window_clause(case.window)} "
        f"GROUP BY {group_by(case)}{having(case)} EMIT {emit.upper()}"
    )


# -- running the engine --------------------------------------------------------------------


@dataclass
class EngineRun:
    columns: list[str]
    rows: list[tuple]
    progress: list[Any]
    state_columns: list[str]
    state: list[tuple]


def rows_table(rows: Sequence[Row], x_type: str) -> pa.Table:
    return pa.table(
        {
            "k": [r.k for r in rows],
            "g": [r.g for r in rows],
            "ts": pa.array([r.ts for r in rows], pa.timestamp("us")),
            "x": [r.x for r in rows],
        },
        schema=pa.schema(
            [
                ("k", pa.string()),
                ("g", pa.int32()),
                ("ts", pa.timestamp("us")),
                ("x", X_TYPES[x_type][0]),
            ]
        ),
    )


def run_engine(
    directory: Path,
    batches: Sequence[Sequence[Row]],
    delay: int,
    emits: Sequence[str],
    query: Any,
    stops: Collection[int] = (),
    x_type: str = "DOUBLE",
    watermark_in_source: bool = True,
) -> dict[str, EngineRun]:
    """One changelog sink per EMIT mode, trigger available_now, one file per batch.

    query(source, emit) gives the SQL. The sinks run at the same time over one files
    source, which must hand every file to each of them. After each batch index in stops
    the engine is closed once its queries have stopped; the next batches' files are then
    written and the engine reopened, which restarts the sinks from their checkpoints.
    """
    inputs = directory / "input"
    inputs.mkdir(parents=True)
    progress: dict[str, list[Any]] = {emit: [] for emit in emits}
    runs = {}
    first = 0
    for last in sorted({*stops, len(batches) - 1}):
        for number in range(first, last + 1):
            path = inputs / f"batch_{number:04d}.parquet"
            pq.write_table(rows_table(batches[number], x_type), path)
        con = streamsql.connect(str(directory / "engine.db"))
        try:
            if first == 0:
                watermark = f", WATERMARK FOR ts AS ts - {interval(delay)}"
                con.execute(
                    f"CREATE SOURCE events (k VARCHAR, g INTEGER, ts TIMESTAMP, x {x_type}"
                    f"{watermark if watermark_in_source else ''}) WITH (connector = 'files', "
                    f"path = '{inputs}', format = 'parquet', max_files_per_trigger = 1)"
                )
                for emit in emits:
                    con.execute(
                        f"CREATE SINK out_{emit} WITH (connector = 'duckdb', changelog = true, "
                        f"trigger = 'available_now') AS {query('events', emit)}"
                    )
            for emit in emits:
                stream = con.query(f"out_{emit}")
                assert stream.await_termination(60), f"out_{emit} did not stop"
                progress[emit].extend(stream.recent_progress)
            if last == len(batches) - 1:
                for emit in emits:
                    output = con.execute(f"SELECT * FROM out_{emit}")
                    columns, rows = [d[0] for d in output.description], output.fetchall()
                    state = con.execute(f'SELECT * FROM _streamsql."state_out_{emit}"')
                    state_columns = [d[0] for d in state.description]
                    runs[emit] = EngineRun(
                        columns, rows, progress[emit], state_columns, state.fetchall()
                    )
        finally:
            con.close()
        first = last + 1
    return runs


# -- expected rows: the model's emissions, valued by one batch DuckDB query ----------------


# The batch queries that value the expected rows run on cursors of one in-memory database:
# a cursor is a connection of its own (its registered tables and TEMP tables are its own),
# and opening a database for each example took longer than its queries.
REFERENCE = duckdb.connect()


def reference_db(case: Case) -> duckdb.DuckDBPyConnection:
    db = REFERENCE.cursor()
    rows = case.rows()
    table = rows_table(rows, case.x_type).append_column(
        "row_id", pa.array([r.row_id for r in rows])
    )
    db.register("input_rows", table)
    db.execute("CREATE TEMP TABLE input AS SELECT * FROM input_rows")
    return db


def expected_rows(
    db: duckdb.DuckDBPyConnection, case: Case, outcome: model.Outcome
) -> tuple[list[str], list[tuple]]:
    members = [
        (number, batch_id, start, end, row)
        for number, (batch_id, (start, end, _), group_rows) in enumerate(outcome.emitted)
        for row in group_rows
    ]
    columns = list(zip(*members, strict=True)) if members else [[]] * 5
    emissions = pa.table(
        {
            "emission_id": pa.array(columns[0], pa.int64()),
            "_batch_id": pa.array(columns[1], pa.int64()),
            "window_start": pa.array(columns[2], pa.timestamp("us")),
            "window_end": pa.array(columns[3], pa.timestamp("us")),
            "row_id": pa.array(columns[4], pa.int64()),
        }
    )
    db.register("emissions", emissions)
    cursor = db.execute(
        f"SELECT _batch_id, {select_list(case)} FROM ("
        "  SELECT e.emission_id, e._batch_id, e.window_start, e.window_end, i.* "
        "  FROM emissions AS e JOIN input AS i USING (row_id)) "
        f"GROUP BY emission_id, _batch_id, {group_by(case)}{having(case)}"
    )
    result = cursor.fetchall()
    db.unregister("emissions")
    return [d[0] for d in cursor.description], result


# -- comparison ----------------------------------------------------------------------------


def micros(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        assert value.tzinfo is None
        return (value - EPOCH) // dt.timedelta(microseconds=1)
    return value


def iso_micros(text: str) -> int:
    return micros(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None))


def sort_key(row: Sequence[Any]) -> tuple:
    return tuple((v is None, v if isinstance(v, int | float | str) else 0) for v in row)


def same_value(actual: Any, expected: Any) -> bool:
    if isinstance(actual, float) and isinstance(expected, float):
        if math.isnan(expected):
            return math.isnan(actual)
        return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9)
    return actual == expected and type(actual) is type(expected)


def check_rows(label: str, columns: list[str], actual: list[tuple], expected: list[tuple]) -> None:
    actual = sorted(actual, key=sort_key)
    expected = sorted(expected, key=sort_key)

    def message() -> str:
        shown = (
            f"\n  expected {expected}\n  actual   {actual}"
            if len(expected) + len(actual) <= 200
            else f" ({len(expected)} expected, {len(actual)} emitted)"
        )
        return f"{label}: emitted rows differ; columns {columns}{shown}"

    assert len(actual) == len(expected), message()
    for got, want in zip(actual, expected, strict=True):
        if got == want and all(type(a) is type(b) for a, b in zip(got, want, strict=True)):
            continue
        same = all(same_value(a, b) for a, b in zip(got, want, strict=True))
        assert same, f"{message()}\n  first difference: {got} != {want}"


def progress_figures(progress: Sequence[Any]) -> list[tuple]:
    """(batch, watermark, late threshold, no-data, input rows, NULL event times) of each
    progress record, times in microseconds."""
    return [
        (
            p.batch_id,
            iso_micros(p.watermark),
            iso_micros(p.late_threshold),
            p.no_data_batch,
            p.num_input_rows,
            p.num_null_event_times,
        )
        for p in progress
    ]


def model_figures(outcome: model.Outcome) -> list[tuple]:
    """The same figures as the reference model has them."""
    return [
        (
            b.batch_id,
            b.watermark,
            b.late_threshold,
            b.no_data,
            b.num_input_rows,
            b.num_null_event_times,
        )
        for b in outcome.batches
    ]


def check_run(
    db: duckdb.DuckDBPyConnection,
    case: Case,
    emit: str,
    run: EngineRun,
    *,
    check_values: bool = True,
) -> model.Outcome:
    outcome = model.run(case.events(), case.window, case.delay, emit, case.stops)
    label = f"EMIT {emit.upper()}"

    assert progress_figures(run.progress) == model_figures(outcome), (
        f"{label}: progress (batch, watermark, late threshold, no-data, input rows, "
        "NULL event times)"
    )
    # A hopping row late for some of its windows counts as late when it is dropped from all
    # of them (docs/semantics.md); checked loosely here: the count must lie between rows
    # late for all windows and late (row, window)s.
    late = [p.num_late_rows for p in run.progress]
    assert all(
        b.num_late_rows <= n <= b.num_late_windows
        for n, b in zip(late, outcome.batches, strict=True)
    ), f"{label}: late rows {late}, model {[b.num_late_rows for b in outcome.batches]}"

    if check_values:
        columns, expected = expected_rows(db, case, outcome)
        index = [run.columns.index(c) for c in columns]
        actual = [tuple(micros(row[i]) for i in index) for row in run.rows]
        expected = [tuple(map(micros, row)) for row in expected]
        check_rows(label, columns, actual, expected)

    # State holds exactly the groups still open: none that was emitted and closed.
    names = ("window_start", "window_end", *(f"key{i}" for i in range(len(case.keys))))
    index = [run.state_columns.index(c) for c in names]
    in_state = {tuple(micros(row[i]) for i in index) for row in run.state}
    open_groups = {(start, end, *key) for start, end, key in outcome.open_groups}
    assert in_state == open_groups, f"{label}: state (window_start, window_end, keys...)"
    return outcome


EMITS = ("final", "changes")


def check_case(directory: Path, case: Case, emits: Sequence[str] = EMITS) -> None:
    runs = run_engine(
        directory,
        case.batches,
        case.delay,
        emits,
        lambda source, emit: streaming_query(case, source, emit),
        case.stops,
        case.x_type,
        not case.watermark_in_from,
    )
    db = reference_db(case)
    try:
        for emit in emits:
            check_run(db, case, emit, runs[emit])
    finally:
        db.close()
    shutil.rmtree(directory)  # about 2 MB an example; kept when the example fails


# -- the property, per window kind ---------------------------------------------------------


@SETTINGS
@given(case=cases(TUMBLING))
def test_tumbling_windows_match_reference(
    tmp_path_factory: pytest.TempPathFactory, case: Case
) -> None:
    check_case(tmp_path_factory.mktemp("tumbling"), case)


@SETTINGS
@given(case=cases(HOPPING))
def test_hopping_windows_match_reference(
    tmp_path_factory: pytest.TempPathFactory, case: Case
) -> None:
    check_case(tmp_path_factory.mktemp("hopping"), case)


@SETTINGS
@given(case=cases(SESSION))
def test_session_windows_match_reference(
    tmp_path_factory: pytest.TempPathFactory, case: Case
) -> None:
    check_case(tmp_path_factory.mktemp("session"), case, ("final",))


# -- large state: EMIT FINAL compacts appended partials past 50,000 state rows ------------

BULK_GROUPS = 25_001


def typed(hundredths: int | None, x_type: str) -> float | int | Decimal | None:
    if hundredths is None:
        return None
    if x_type == "DOUBLE":
        return hundredths / 100
    return hundredths if x_type == "BIGINT" else Decimal(hundredths).scaleb(-2)


@st.composite
def bulk_cases(draw: st.DrawFn) -> Case:
    """A case whose first two batches add BULK_GROUPS more groups each, in an open window.

    The bulk rows sit at batch 0's latest event time, so their windows are still open in
    batch 1 and every bulk group has two appended partials: more than 50,000 state rows,
    past the point where EMIT FINAL compacts its state. A last batch with one row far
    ahead moves the watermark past every window, so all groups are emitted in the end.
    """
    case = draw(cases(TUMBLING))
    batches = [list(batch) for batch in case.batches]
    batches += [[] for _ in range(2 - len(batches))]
    times = [row.ts for row in batches[0] if row.ts is not None]
    ts = max(times) if times else T0
    rng = random.Random(draw(st.integers(0, 2**32)))
    row_id = len(case.rows())
    for batch in batches[:2]:
        for group in range(BULK_GROUPS):
            x = rng.randrange(-5_000, 5_000) if rng.random() < 0.9 else None
            batch.append(Row(row_id, f"bulk{group}", group % 3, ts, typed(x, case.x_type)))
            row_id += 1
    last = max(row.ts for batch in batches for row in batch if row.ts is not None)
    closer = last + case.window.size + case.delay + 1_000 * MS
    batches.append([Row(row_id, "closer", None, closer, None)])
    return replace(
        case, batches=tuple(tuple(batch) for batch in batches), keys=("k", "g"), stops=frozenset()
    )


@settings(SETTINGS, max_examples=2)
@given(case=bulk_cases())
def test_compacted_state_gives_the_same_results(
    tmp_path_factory: pytest.TempPathFactory, case: Case
) -> None:
    check_case(tmp_path_factory.mktemp("bulk"), case, ("final",))


# -- approx_count_distinct: mergeable, so independent of batch boundaries ------------------

APPROX = "approx_count_distinct(x) AS approx, count(DISTINCT x) AS exact"


@st.composite
def approx_cases(draw: st.DrawFn) -> Case:
    """Tumbling windows over batches of up to a few hundred rows with many distinct x."""
    case = draw(cases(TUMBLING))
    rng = random.Random(draw(st.integers(0, 2**32)))
    width = draw(st.sampled_from([10, 1_000, 1_000_000]))
    row_id = 0
    batches = []
    for batch in case.batches:
        rows = []
        for template in batch:
            for _ in range(draw(st.integers(1, 120))):
                x = None if rng.random() < 0.02 else float(rng.randrange(width))
                rows.append(replace(template, row_id=row_id, x=x))
                row_id += 1
        batches.append(tuple(rows))
    return replace(
        case,
        batches=tuple(batches),
        having=None,
        aggregates=APPROX,
        x_type="DOUBLE",
        window_columns=("window_start", "window_end"),
        watermark_in_from=False,
    )


@settings(SETTINGS, max_examples=max(EXAMPLES * 8 // 64, 3))
@given(case=approx_cases())
def test_approx_count_distinct_does_not_depend_on_batches(
    tmp_path_factory: pytest.TempPathFactory, case: Case
) -> None:
    directory = tmp_path_factory.mktemp("approx")
    batched = run_engine(
        directory / "batched",
        case.batches,
        case.delay,
        EMITS,
        lambda source, emit: streaming_query(case, source, emit),
        case.stops,
        case.x_type,
    )
    db = reference_db(case)
    try:
        outcomes = {
            emit: check_run(db, case, emit, batched[emit], check_values=False) for emit in EMITS
        }
    finally:
        db.close()
    # The accepted rows in one batch, where no row is late and CHANGES emits every group.
    accepted = [row for row in case.rows() if row.row_id in outcomes["final"].accepted]
    single = run_engine(
        directory / "single",
        [accepted],
        case.delay,
        ("changes",),
        lambda source, emit: streaming_query(case, source, emit),
    )["changes"]

    def values(run: EngineRun) -> list[tuple[tuple, int, int]]:
        group = [run.columns.index(c) for c in ("window_start", "window_end", *case.keys)]
        approx, exact = run.columns.index("approx"), run.columns.index("exact")
        return [(tuple(row[i] for i in group), row[approx], row[exact]) for row in run.rows]

    in_one_batch = {group: approx for group, approx, _ in values(single)}
    for group, approx, _ in values(batched["final"]):
        assert approx == in_one_batch[group], (group, approx, in_one_batch[group])
    for run in (*batched.values(), single):
        for group, approx, exact in values(run):
            assert abs(approx - exact) <= 0.05 * exact + 2, (group, approx, exact)
    shutil.rmtree(directory)


# -- global, keyed and tumbling aggregations in EMIT SNAPSHOT and CHANGES -----------------

WHERES = (None, "k = 'a'", "x > 0", "g = 7")  # no row has g = 7
GROUPINGS = {"global": "", "keyed": "k", "tumbling": "window_start, k"}


@dataclass(frozen=True)
class SnapshotCase:
    case: Case
    grouping: str  # a key of GROUPINGS
    where: str | None
    emit: str

    def query(self, source: str, emit: str) -> str:
        keys = GROUPINGS[self.grouping]
        where = f" WHERE {self.where}" if self.where else ""
        window = f" {window_clause(self.case.window)}" if self.grouping == "tumbling" else ""
        group = f" GROUP BY {keys}" if keys else ""
        select = f"{keys}, {AGGREGATES}" if keys else AGGREGATES
        return (
            f"SELECT {select} FROM {source}{where}{window}{group}{having(self.case)} "
            f"EMIT {emit.upper()}"
        )


@st.composite
def snapshot_cases(draw: st.DrawFn) -> SnapshotCase:
    """A global aggregation's one row exists before any row matched (WHERE g = 7 never
    does); tumbling windows with a watermark must not run batches without data."""
    grouping = draw(st.sampled_from(sorted(GROUPINGS)))
    emits = ["snapshot"] if grouping == "tumbling" else ["snapshot", "changes"]
    return SnapshotCase(
        draw(cases(TUMBLING)), grouping, draw(st.sampled_from(WHERES)), draw(st.sampled_from(emits))
    )


def snapshot_expected(
    db: duckdb.DuckDBPyConnection, case: SnapshotCase
) -> tuple[list[str], list[tuple]]:
    """Per batch, DuckDB over the rows of the batches so far: SNAPSHOT every group (the
    one global row always), CHANGES the groups with a matching row in the batch."""
    batch_of = [
        (row.row_id, number) for number, rows in enumerate(case.case.batches) for row in rows
    ]
    db.register(
        "batch_of",
        pa.table(
            {
                "row_id": pa.array([r for r, _ in batch_of], pa.int64()),
                "batch": pa.array([b for _, b in batch_of], pa.int64()),
            }
        ),
    )
    size = case.case.window.size
    keys = GROUPINGS[case.grouping]
    conditions = [f"({case.where})"] if case.where else []
    if case.grouping == "tumbling":
        conditions.append("ts IS NOT NULL")
    having_parts = [f"({case.case.having})"] if case.case.having else []
    columns: list[str] = []
    expected: list[tuple] = []
    for number in range(len(case.case.batches)):
        touched = ["bool_or(batch = $batch)"] if case.emit == "changes" else []
        where = " AND ".join(["batch <= $batch", *conditions])
        having_sql = " AND ".join(touched + having_parts)
        cursor = db.execute(
            f"SELECT $batch AS _batch_id, {f'{keys}, ' if keys else ''}{AGGREGATES} FROM ("
            f"  SELECT *, make_timestamp(epoch_us(ts) // {size} * {size}) AS window_start"
            "   FROM input JOIN batch_of USING (row_id)) "
            f"WHERE {where}{f' GROUP BY {keys}' if keys else ''}"
            f"{f' HAVING {having_sql}' if having_sql else ''}",
            {"batch": number},
        )
        columns = [d[0] for d in cursor.description]
        expected += cursor.fetchall()
    db.unregister("batch_of")
    return columns, expected


@settings(SETTINGS, max_examples=max(EXAMPLES // 2, 3))
@given(case=snapshot_cases())
def test_snapshot_and_global_aggregations_match_duckdb(
    tmp_path_factory: pytest.TempPathFactory, case: SnapshotCase
) -> None:
    directory = tmp_path_factory.mktemp("snapshot")
    run = run_engine(
        directory,
        case.case.batches,
        case.case.delay,
        (case.emit,),
        case.query,
        case.case.stops,
        case.case.x_type,
    )[case.emit]
    # One batch per file, empty ones included, and none without data (complete mode never
    # asks for one; a global or keyed aggregation has no windows to close).
    batches = [(p.batch_id, p.no_data_batch) for p in run.progress]
    assert batches == [(number, False) for number in range(len(case.case.batches))]
    db = reference_db(case.case)
    try:
        columns, expected = snapshot_expected(db, case)
    finally:
        db.close()
    index = [run.columns.index(c) for c in columns]
    actual = [tuple(micros(row[i]) for i in index) for row in run.rows]
    check_rows(
        f"EMIT {case.emit.upper()}", columns, actual, [tuple(map(micros, r)) for r in expected]
    )
    shutil.rmtree(directory)


# -- regressions found by the property ----------------------------------------------------


def test_sum_of_bigint_has_duckdb_type(tmp_path: Path) -> None:
    """sum(BIGINT) is HUGEINT, as in DuckDB: it came back as DECIMAL(38,0), so sum(x) // 7
    over x = 100 was 14.285714285714286 instead of 14."""
    case = Case(
        batches=((Row(0, "a", 0, T0, 100),),),
        window=model.Tumbling(1_000 * MS),
        delay=0,
        keys=("k",),
        having=None,
        aggregates="sum(x) AS s, sum(x) // 7 AS q, sum(x) % 7 AS r",
        x_type="BIGINT",
    )
    run = run_engine(
        tmp_path / "engine",
        case.batches,
        case.delay,
        ("changes",),
        lambda source, emit: streaming_query(case, source, emit),
        x_type=case.x_type,
    )["changes"]
    assert [row[3:6] for row in run.rows] == [(100, 14, 2)]
    assert [type(v) for v in run.rows[0][3:6]] == [int, int, int]


# -- the reference model itself, against what Spark emitted -------------------------------

SPARK = Path(__file__).parent / "data" / "spark-examples"
SPARK_QUERIES = ("tumble_5m_append", "tumble_5m_update", "slide_10m_5m_append", "session_5m_append")
MINUTE = 60_000_000


def spark_micros(text: str) -> int:
    return micros(dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f"))


def assert_spark_batches(batches: Sequence[model.BatchInfo], expected: dict) -> None:
    """The model's batches are Spark's: ids, no-data batches, input rows, thresholds."""
    assert [
        (b.batch_id, b.no_data, b.num_input_rows, b.watermark, b.late_threshold) for b in batches
    ] == [
        (
            b["batch_id"],
            b["no_data_batch"],
            b["num_input_rows"],
            spark_micros(b["watermark"]),
            spark_micros(b["late_event_watermark"]),
        )
        for b in expected["batches"]
    ]


@pytest.mark.parametrize("query", SPARK_QUERIES)
@pytest.mark.parametrize("case", ["c07_boundaries", "c09_sessions"])
def test_reference_model_agrees_with_spark(case: str, query: str) -> None:
    """The model, run on the recorded inputs, gives Spark's batches and emitted groups."""
    spec = json.loads((SPARK / "queries" / f"{query}.json").read_text())["spark"]
    expected = json.loads((SPARK / case / "expected" / f"{query}.json").read_text())
    window = {
        "tumbling": lambda w: model.Tumbling(int(w["duration"].split()[0]) * MINUTE),
        "sliding": lambda w: model.Hopping(
            int(w["duration"].split()[0]) * MINUTE, int(w["slide"].split()[0]) * MINUTE
        ),
        "session": lambda w: model.Session(int(w["gap"].split()[0]) * MINUTE),
    }[spec["window"]["type"]](spec["window"])
    delay = int(spec["watermark"]["delay"].split()[0]) * MINUTE
    (key,) = spec["group_by"]
    rows: list[dict] = []
    batches = []
    for path in sorted((SPARK / case / "input").iterdir()):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        batches.append([len(rows) + i for i in range(len(lines))])
        rows.extend(lines)
    events = [
        [
            model.Event(
                i, None if rows[i]["ts"] is None else spark_micros(rows[i]["ts"]), (rows[i][key],)
            )
            for i in batch
        ]
        for batch in batches
    ]
    emit = "final" if expected["output_mode"] == "append" else "changes"
    outcome = model.run(events, window, delay, emit)

    assert_spark_batches(outcome.batches, expected)
    start, end, key_column = expected["columns"][:3]
    for b in expected["batches"]:
        spark_rows = sorted(
            (
                spark_micros(r[start]),
                spark_micros(r[end]),
                repr(r[key_column]),
                r["cnt"],
                r.get("sum_amount"),
            )
            for r in b["rows"]
        )
        model_rows = []
        for batch_id, (first, last, group_key), members in outcome.emitted:
            if batch_id != b["batch_id"]:
                continue
            amounts = [rows[i]["amount"] for i in members if rows[i]["amount"] is not None]
            total = math.fsum(amounts) if amounts and "sum_amount" in expected["columns"] else None
            model_rows.append((first, last, repr(group_key[0]), len(members), total))
        assert sorted(model_rows) == spark_rows, f"batch {b['batch_id']}"
