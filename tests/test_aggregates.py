"""Aggregates against DuckDB batch SQL: NULL-safe merges, the arg_max family, the N-argument
forms, variance on huge and infinite values, types, and what SNAPSHOT emits and when.

Each query runs over a memory source in batches of `batch_rows` rows, trigger
available_now, into a changelog table; the values it emits are compared with DuckDB's
batch query over the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from test_incremental_properties import same_value

import streamsql
from streamsql.errors import PlanningError


@dataclass
class Run:
    rows: list[tuple]  # emitted rows, _batch_id last, in batch order
    types: dict[str, str]  # the sink table's column types
    no_data: list[bool]  # per batch: whether it ran without data


def stream(tmp_path: Path, columns: str, rows: list[str], query: str, batch_rows: int = 1) -> Run:
    """Rows are SQL tuples such as "('a', 60.0)"; they are inserted in order."""
    con = streamsql.connect(str(tmp_path / "engine.db"), trigger="available_now")
    try:
        con.execute(
            f"CREATE SOURCE ev ({columns}) "
            f"WITH (connector = 'memory', max_rows_per_trigger = {batch_rows})"
        )
        con.execute(f"INSERT INTO ev VALUES {', '.join(rows)}")
        con.execute(f"CREATE SINK out WITH (connector = 'duckdb', changelog = true) AS {query}")
        query_handle = con.query("out")
        assert query_handle.await_termination(60)
        emitted = con.execute("SELECT * FROM out ORDER BY _batch_id").fetchall()
        types = {name: type_ for name, type_, *_ in con.execute("DESCRIBE out").fetchall()}
        no_data = [p.no_data_batch for p in query_handle.recent_progress]
    finally:
        con.close()
    return Run(emitted, types, no_data)


def batch(columns: str, rows: list[str], query: str) -> tuple[list[tuple], list[str]]:
    """DuckDB's answer over all the rows in one batch query, and its column types."""
    db = duckdb.connect()
    try:
        db.execute(f"CREATE TABLE ev ({columns})")
        db.execute(f"INSERT INTO ev VALUES {', '.join(rows)}")
        result = db.sql(query)
        return result.fetchall(), [str(t) for t in result.types]
    finally:
        db.close()


# -- 1. count_if over conditions that are all NULL in a batch ------------------------------

AMOUNTS = "k VARCHAR, amount DOUBLE"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            "SELECT k, count_if(amount > 50) AS c FROM ev GROUP BY k EMIT CHANGES",
            [("a", 1, 0), ("a", 1, 1), ("b", None, 2)],
        ),
        (
            "SELECT k, count_if(amount > 50) AS c FROM ev GROUP BY k EMIT SNAPSHOT",
            [("a", 1, 0), ("a", 1, 1), ("a", 1, 2), ("b", None, 2)],
        ),
        (
            "SELECT count_if(amount > 50) AS c FROM ev EMIT SNAPSHOT",
            [(1, 0), (1, 1), (1, 2)],
        ),
        ("SELECT count_if(amount > 50) AS c FROM ev", [(1, 0), (1, 1), (1, 2)]),
    ],
)
def test_count_if_over_null_conditions_keeps_the_count(
    tmp_path: Path, query: str, expected: list[tuple]
) -> None:
    """('a', 60.0) then ('a', NULL): the second emission was NULL; batch SQL says 1. A
    group whose conditions are all NULL is NULL, as in DuckDB."""
    rows = ["('a', 60.0)", "('a', NULL)", "('b', NULL)"]
    run = stream(tmp_path, AMOUNTS, rows, query)
    assert sorted(run.rows, key=lambda r: (r[-1], str(r))) == expected
    assert run.types["c"] == "HUGEINT"


def test_count_if_has_duckdb_type_in_every_mode(tmp_path: Path) -> None:
    """EMIT FINAL combined count_if's partials into a BIGINT; DuckDB's count_if is HUGEINT."""
    columns = "k VARCHAR, ts TIMESTAMP, amount DOUBLE, WATERMARK FOR ts AS ts"
    rows = [
        "('a', TIMESTAMP '2024-01-01 00:00:10', 60.0)",
        "('a', TIMESTAMP '2024-01-01 00:00:20', NULL)",
        "('a', TIMESTAMP '2024-01-01 00:00:30', 70.0)",
        "('b', TIMESTAMP '2024-01-01 00:05:00', 1.0)",
    ]
    query = (
        "SELECT window_start, k, count_if(amount > 50) AS c FROM ev "
        "WINDOW TUMBLING (ts, INTERVAL '1 minute') GROUP BY window_start, k EMIT FINAL"
    )
    run = stream(tmp_path, columns, rows, query)
    assert [row[1:3] for row in run.rows] == [("a", 2)]
    _, types = batch(
        "amount DOUBLE", ["(60.0)", "(NULL)"], "SELECT count_if(amount > 50) AS c FROM ev"
    )
    assert run.types["c"] == types[0] == "HUGEINT"


# -- 2. arg_max/arg_min/max_by/min_by skip rows whose argument is NULL ---------------------

PAIRS = "k VARCHAR, ts TIMESTAMP, a VARCHAR, v INTEGER, WATERMARK FOR ts AS ts"
PAIR_ROWS = [
    "('g', TIMESTAMP '2024-01-01 00:00:01', NULL, 10)",
    "('g', TIMESTAMP '2024-01-01 00:00:02', 'x', 5)",
    "('g', TIMESTAMP '2024-01-01 00:00:03', 'y', 7)",
    "('g', TIMESTAMP '2024-01-01 00:00:04', NULL, 1)",
    "('g', TIMESTAMP '2024-01-01 00:00:05', 'z', NULL)",
    "('later', TIMESTAMP '2024-01-01 00:10:00', NULL, NULL)",  # closes the windows
]
ARG_SELECT = "arg_max(a, v) AS am, max_by(a, v) AS mb, arg_min(a, v) AS an, min_by(a, v) AS nb"


@pytest.mark.parametrize(
    "query",
    [
        f"SELECT k, {ARG_SELECT} FROM ev GROUP BY k EMIT CHANGES",
        f"SELECT k, {ARG_SELECT} FROM ev GROUP BY k EMIT SNAPSHOT",
        f"SELECT window_start, k, {ARG_SELECT} FROM ev "
        "WINDOW TUMBLING (ts, INTERVAL '1 minute') GROUP BY window_start, k EMIT FINAL",
        f"SELECT window_start, k, {ARG_SELECT} FROM ev "
        "WINDOW SESSION (ts, INTERVAL '1 minute') GROUP BY window_start, k EMIT FINAL",
    ],
)
def test_arg_max_family_skips_rows_with_a_null_argument(tmp_path: Path, query: str) -> None:
    """(NULL, 10), ('x', 5) then ('y', 7): arg_max was 'x' (the key 10 came from the row
    DuckDB skips); batch SQL says 'y'. arg_min went to 'y' by the key of (NULL, 1)."""
    run = stream(tmp_path, PAIRS, PAIR_ROWS, query, batch_rows=2)
    last = [row for row in run.rows if "g" in row][-1]
    assert last[-5:-1] == ("y", "y", "x", "x")
    expected, _ = batch(
        PAIRS.rsplit(",", 1)[0], PAIR_ROWS, f"SELECT {ARG_SELECT} FROM ev WHERE k = 'g'"
    )
    assert expected == [("y", "y", "x", "x")]


# -- 3. the N-argument forms ---------------------------------------------------------------

TOP = (
    "max(v, 2) AS mx, min(v, 3) AS mn, max(f, 2) AS fx, arg_max(a, v, 2) AS am, "
    "max_by(a, v, 3) AS mb, arg_min(a, v, 2) AS an, min_by(a, f, 2) AS nb"
)
TOP_COLUMNS = "k VARCHAR, ts TIMESTAMP, a VARCHAR, v INTEGER, f DOUBLE, WATERMARK FOR ts AS ts"


def top_rows() -> list[str]:
    """Distinct keys v (ties leave DuckDB's choice open), NULL arguments and keys."""
    rows = []
    for i in range(14):
        a = "NULL" if i % 5 == 0 else f"'a{i}'"
        v = "NULL" if i % 6 == 1 else str((i * 7) % 17 - 8)
        f = "'nan'" if i == 9 else ("'-inf'" if i == 4 else f"{(i * 5) % 11 / 4}")
        f = f"{f}::DOUBLE"
        rows.append(f"('{'pq'[i % 2]}', TIMESTAMP '2024-01-01 00:00:{i:02d}', {a}, {v}, {f})")
    return rows


@pytest.mark.parametrize(
    "query",
    [
        f"SELECT k, {TOP} FROM ev GROUP BY k EMIT CHANGES",
        f"SELECT window_start, k, {TOP} FROM ev "
        "WINDOW SESSION (ts, INTERVAL '1 minute') GROUP BY window_start, k EMIT FINAL",
    ],
)
def test_n_argument_forms_keep_the_top_n(tmp_path: Path, query: str) -> None:
    """max(x, n) gave max(x) (3.0 instead of [3, 2]): n was dropped. The state keeps the
    top n, merged as the top n of two lists; values and types are DuckDB's."""
    rows = [*top_rows(), "('later', TIMESTAMP '2024-01-01 00:10:00', NULL, NULL, NULL)"]
    run = stream(tmp_path, TOP_COLUMNS, rows, query, batch_rows=3)
    latest = {row[-9]: row[-8:-1] for row in run.rows if row[-9] in ("p", "q")}
    expected, types = batch(
        TOP_COLUMNS.rsplit(",", 1)[0],
        top_rows(),
        f"SELECT k, {TOP} FROM ev GROUP BY k ORDER BY k",
    )
    # compared as text: NaN (kept by max(f, 2), as DuckDB orders it highest) is not NaN
    assert [repr((k, *latest[k])) for k in ("p", "q")] == [repr(row) for row in expected]
    names = ["mx", "mn", "fx", "am", "mb", "an", "nb"]
    assert [run.types[n] for n in names] == types[1:]
    assert expected[0][1] == [8, 6]  # a list, not the max


@pytest.mark.parametrize("call", ["max(v, 0)", "min(v, v)", "arg_max(a, v, -1)", "max(v, ?)"])
def test_n_must_be_a_positive_integer_literal(con: streamsql.Connection, call: str) -> None:
    con.execute(f"CREATE SOURCE ev ({PAIRS}) WITH (connector = 'memory')")
    parameters = [2] if "?" in call else None
    with pytest.raises(PlanningError) as caught:
        con.execute(f"SELECT k, {call} AS m FROM ev GROUP BY k EMIT CHANGES", parameters)
    assert caught.value.rule == "unmergeable-aggregate"
    assert "positive integer literal" in str(caught.value)


# -- 4. a global SNAPSHOT has its one row before any row matched ---------------------------


@pytest.mark.parametrize(
    ("having", "expected"), [("", [(0, None, None, 0)]), (" HAVING count(*) > 0", [])]
)
def test_global_snapshot_without_matching_rows_emits_the_empty_aggregate(
    tmp_path: Path, having: str, expected: list[tuple]
) -> None:
    """Batch SQL always gives one row without GROUP BY (count(*) = 0, sum NULL)."""
    select = "SELECT count(*) AS n, sum(amount) AS s, count_if(amount > 1) AS c FROM ev"
    query = f"{select} WHERE k = 'zz'{having}"
    run = stream(tmp_path, AMOUNTS, ["('a', 60.0)"], f"{query} EMIT SNAPSHOT")
    assert run.rows == expected
    assert [(*row, 0) for row in batch(AMOUNTS, ["('a', 60.0)"], query)[0]] == expected


# -- 5. SNAPSHOT runs no batch without data ------------------------------------------------


def test_snapshot_with_a_watermark_emits_once_per_data_batch(tmp_path: Path) -> None:
    """Complete mode never asks for a no-data batch (Spark's stateful operators return
    false for it): the whole result was emitted again after every data batch."""
    columns = "k VARCHAR, ts TIMESTAMP, amount DOUBLE, WATERMARK FOR ts AS ts"
    rows = [
        "('a', TIMESTAMP '2024-01-01 00:00:10', 1.0)",
        "('a', TIMESTAMP '2024-01-01 00:03:00', 2.0)",
    ]
    query = (
        "SELECT window_start, count(*) AS n FROM ev WINDOW TUMBLING (ts, INTERVAL '1 minute') "
        "GROUP BY window_start EMIT SNAPSHOT"
    )
    run = stream(tmp_path, columns, rows, query)
    assert run.no_data == [False, False]
    assert [row[1:] for row in run.rows] == [(1, 0), (1, 1), (1, 1)]


# -- 14. variance on huge and infinite values ----------------------------------------------

VARIANCE = (
    "var_samp(x) AS vs, var_pop(x) AS vp, stddev_samp(x) AS ss, stddev_pop(x) AS sp, "
    "variance(x) AS v"
)
VALUES = [
    ["1e300", "NULL", "2.0"],
    ["-1e300", "1e300", "2.0", "'inf'"],
    ["1e300", "1e300", "-1e300", "3.0"],
    ["'inf'", "1.0"],
    ["1.0", "'-inf'", "NULL", "'inf'"],
    ["'inf'"],
    ["'nan'", "4.0", "5.0"],
    ["1e300", "1e300", "1e300", "NULL", "1e300", "1e300"],  # equal: 0, not inf
]


@pytest.mark.parametrize("values", VALUES)
@pytest.mark.parametrize("emit", ["CHANGES", "FINAL"])
@pytest.mark.parametrize("batch_rows", [1, 2])
def test_variance_of_huge_and_infinite_values_is_duckdbs(
    tmp_path: Path, values: list[str], emit: str, batch_rows: int
) -> None:
    """DuckDB gives inf where squares overflow and NaN once an infinite value is in; the
    merged states gave NaN for the first (0 * inf) and inf for the second."""
    columns = "ts TIMESTAMP, x DOUBLE, WATERMARK FOR ts AS ts"
    values = [f"CAST({x} AS DOUBLE)" for x in values]
    rows = [f"(TIMESTAMP '2024-01-01 00:00:{i:02d}', {x})" for i, x in enumerate(values)]
    if emit == "CHANGES":
        query = f"SELECT {VARIANCE} FROM ev EMIT CHANGES"
    else:
        rows.append("(TIMESTAMP '2024-01-01 00:10:00', NULL)")  # closes the window
        query = (
            f"SELECT window_start, {VARIANCE} FROM ev "
            "WINDOW TUMBLING (ts, INTERVAL '1 minute') GROUP BY window_start EMIT FINAL"
        )
    run = stream(tmp_path, columns, rows, query, batch_rows)
    got = run.rows[-1][-6:-1] if emit == "CHANGES" else run.rows[0][-6:-1]
    expected, _ = batch("x DOUBLE", [f"({x})" for x in values], f"SELECT {VARIANCE} FROM ev")
    assert all(same_value(a, b) for a, b in zip(got, expected[0], strict=True)), (got, expected[0])


# -- 14. HUGEINT columns keep their type in a duckdb sink ----------------------------------

HUGE = "k VARCHAR, h HUGEINT, u UHUGEINT"
HUGE_ROWS = ["('a', 170141183460469231731687303715884105727, 1)", "('a', -5, 2)"]


@pytest.mark.parametrize(
    ("query", "columns"),
    [
        ("SELECT k, h, u FROM ev", ["h", "u"]),
        ("SELECT k, max(h) AS m, sum(u) AS s FROM ev GROUP BY k EMIT CHANGES", ["m", "s"]),
    ],
)
def test_hugeint_columns_keep_their_type_in_a_duckdb_sink(
    tmp_path: Path, query: str, columns: list[str]
) -> None:
    """Arrow carries HUGEINT as DECIMAL(38,0): the sink table was DECIMAL(38,0), and
    max of a HUGEINT column near 2^127 overflowed as a DECIMAL sum."""
    run = stream(tmp_path, HUGE, HUGE_ROWS, query, batch_rows=2)
    expected, types = batch(HUGE, HUGE_ROWS, query.replace(" EMIT CHANGES", ""))
    assert [run.types[c] for c in columns] == types[1:]
    assert not any("DECIMAL" in t for t in types)
    assert sorted(row[:-1] for row in run.rows) == sorted(expected)


# -- 14. session windows refuse EMIT CHANGES -----------------------------------------------


def test_session_windows_refuse_emit_changes(con: streamsql.Connection) -> None:
    """A session absorbed into a later one would leave its row behind: Spark refuses update
    mode for session windows, and so does the planner, with a rule."""
    con.execute(f"CREATE SOURCE ev ({PAIRS}) WITH (connector = 'memory')")
    sql = (
        "SELECT window_start, k, count(*) AS n FROM ev WINDOW SESSION (ts, INTERVAL '1 minute') "
        "GROUP BY window_start, k EMIT CHANGES"
    )
    with pytest.raises(PlanningError) as caught:
        con.execute(sql)
    assert caught.value.rule == "session-changes"
    assert (caught.value.line, caught.value.col) == (1, sql.index("EMIT") + 1)
    assert len(con.execute(sql.replace("CHANGES", "SNAPSHOT")).description) == 3
    # without a watermark, the way out it suggests is SNAPSHOT, not CHANGES
    con.execute("CREATE SOURCE raw (k VARCHAR, ts TIMESTAMP) WITH (connector = 'memory')")
    with pytest.raises(PlanningError) as caught:
        con.execute(sql.replace(" FROM ev", " FROM raw").replace(" EMIT CHANGES", ""))
    assert caught.value.rule == "windowed-final-needs-watermark"
    assert "ask for EMIT SNAPSHOT explicitly" in str(caught.value)
