"""Stream-stream joins: DESIGN.md section 8's impressions/clicks example batch by batch, with
its state cleanup bounds, and the joins that are refused (each naming its rule)."""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot

import streamsql
from streamsql.errors import UnboundedStateWarning
from streamsql.runtime.query import StreamingQuery

MS = dt.timedelta(milliseconds=1)


def at(clock: str) -> dt.datetime:
    return dt.datetime.fromisoformat(f"2024-05-01 {clock}")


def write(directory: Path, number: int, rows: list[tuple[str, dt.datetime]]) -> None:
    directory.mkdir(exist_ok=True)
    table = pa.table(
        {
            "ad": pa.array([r[0] for r in rows], pa.string()),
            "ts": pa.array([r[1] for r in rows], pa.timestamp("us")),
        }
    )
    pq.write_table(table, directory / f"batch_{number:04d}.parquet")


def connect(tmp_path: Path, right_watermark: bool = True) -> streamsql.Connection:
    con = streamsql.connect(str(tmp_path / "engine.db"))
    for name, watermark in (("impressions", True), ("clicks", right_watermark)):
        (tmp_path / name).mkdir(exist_ok=True)
        clause = ", WATERMARK FOR ts AS ts - INTERVAL '0 seconds'" if watermark else ""
        con.execute(
            f"CREATE SOURCE {name} (ad VARCHAR, ts TIMESTAMP{clause}) WITH (connector = "
            f"'files', path = '{tmp_path / name}', format = 'parquet', "
            "max_files_per_trigger = 1)"
        )
    return con


def run_to_end(con: streamsql.Connection, query: str, options: str = "") -> StreamingQuery:
    """Sink `out` over `query`, run with trigger available_now until it stops."""
    con.execute(
        "CREATE SINK out WITH (connector = 'duckdb', trigger = 'available_now'"
        f"{options}) AS {query}"
    )
    stream = con.query("out")
    assert stream.await_termination(60)
    return stream


IMPRESSIONS_CLICKS = (
    "SELECT i.ad, i.ts AS imp_ts, c.ts AS click_ts FROM impressions AS i "
    "LEFT OUTER JOIN clicks AS c ON i.ad = c.ad "
    "AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '1 hour'"
)


def test_impressions_clicks_left_outer_join_batch_by_batch(tmp_path: Path) -> None:
    """Both watermarks without delay. Left rows go when imp_ts <= W - 1 hour - 1 ms, right
    rows when click_ts <= W - 1 ms; an impression that never matched is emitted with NULLs
    in the batch it leaves state; a row at or below the previous watermark is late."""
    imp, clk = tmp_path / "impressions", tmp_path / "clicks"
    b_ts = at("10:30") + MS
    write(imp, 0, [("A", at("10:00")), ("B", b_ts)])
    write(clk, 0, [("A", at("10:20"))])  # W_1 = min(10:30:00.001, 10:20) = 10:20
    write(imp, 1, [("C", at("12:00"))])
    write(clk, 1, [("X", at("11:30") + MS)])  # W_2 = min(12:00, 11:30:00.001)
    # Batch 2, W = 11:30:00.001: A (10:00) goes, B (1 ms above 10:30, the bound) stays;
    # click A goes, click X (1 ms above 11:30) stays.
    write(imp, 2, [])
    write(clk, 2, [("C", at("12:10"))])  # W_3 = min(12:00, 12:10) = 12:00
    # Batch 3, W = 12:00, L = 11:30:00.001: impression D (11:00) is late; B leaves state
    # (10:30:00.001 <= 10:59:59.999) never matched: emitted with NULLs; click X goes.
    write(imp, 3, [("D", at("11:00"))])
    write(clk, 3, [])
    con = connect(tmp_path)
    try:
        query = run_to_end(con, IMPRESSIONS_CLICKS, ", changelog = true")
        progress = query.recent_progress
        rows = con.execute(
            "SELECT _batch_id, ad, imp_ts, click_ts FROM out ORDER BY _batch_id, ad"
        ).fetchall()
        state = con.execute('SELECT count(*) FROM _streamsql."state_out"').fetchall()[0][0]
    finally:
        con.close()
    assert rows == [
        (0, "A", at("10:00"), at("10:20")),
        (2, "C", at("12:00"), at("12:10")),
        (3, "B", b_ts, None),
    ]
    assert [(p.batch_id, p.watermark, p.num_late_rows, p.state_rows) for p in progress] == [
        (0, "1970-01-01T00:00:00.000000Z", 0, 3),
        (1, "2024-05-01T10:20:00.000000Z", 0, 5),
        (2, "2024-05-01T11:30:00.001000Z", 0, 4),
        (3, "2024-05-01T12:00:00.000000Z", 1, 2),
    ]
    assert progress[-1].state_operators[0]["operator"] == "stream-stream join"
    assert "unbounded" not in progress[-1].state_operators[0]
    assert state == 2  # impression C and its click, until the watermark passes them


def test_join_state_survives_restart(tmp_path: Path) -> None:
    """A click in a later run matches an impression stored by an earlier one; DROP SINK
    removes the join's state."""
    imp, clk = tmp_path / "impressions", tmp_path / "clicks"
    write(imp, 0, [("A", at("10:00"))])
    write(clk, 0, [])
    con = connect(tmp_path)
    try:
        run_to_end(con, IMPRESSIONS_CLICKS)
    finally:
        con.close()
    write(imp, 1, [])
    write(clk, 1, [("A", at("10:45"))])
    con = streamsql.connect(str(tmp_path / "engine.db"))
    try:
        assert con.query("out").await_termination(60)
        assert con.execute("SELECT ad, imp_ts, click_ts FROM out").fetchall() == [
            ("A", at("10:00"), at("10:45"))
        ]
        con.execute("DROP SINK out")
        assert not con.execute(
            "SELECT 1 FROM duckdb_tables() WHERE table_name = 'state_out'"
        ).fetchall()
    finally:
        con.close()


@pytest.mark.parametrize(
    ("query", "rule"),
    [
        (  # no time range: no impression could ever be emitted with NULLs
            "SELECT i.ad FROM impressions AS i LEFT JOIN clicks AS c ON i.ad = c.ad",
            "stream-stream-outer-join-needs-bound",
        ),
        (  # the range bounds the clicks by the impressions, not the other way
            "SELECT i.ad FROM impressions AS i LEFT JOIN clicks AS c ON i.ad = c.ad "
            "AND c.ts >= i.ts",
            "stream-stream-outer-join-needs-bound",
        ),
        (  # a full outer join needs both sides bounded
            "SELECT i.ad FROM impressions AS i FULL OUTER JOIN clicks AS c ON i.ad = c.ad "
            "AND c.ts <= i.ts + INTERVAL '1 hour'",
            "stream-stream-outer-join-needs-bound",
        ),
        (
            "SELECT i.ad FROM impressions AS i ANTI JOIN clicks AS c ON i.ad = c.ad",
            "stream-stream-join-type",
        ),
        ("SELECT i.ad FROM impressions AS i CROSS JOIN clicks AS c", "stream-stream-join-type"),
        (
            "SELECT i.ad FROM impressions AS i JOIN (SELECT * FROM clicks WHERE ad <> 'x') "
            "AS c ON i.ad = c.ad",
            "stream-stream-join-input",
        ),
        (
            "SELECT i.ad, count(*) AS n FROM impressions AS i JOIN clicks AS c "
            "ON i.ad = c.ad AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '1 hour' GROUP BY i.ad "
            "EMIT CHANGES",
            "chained-operators-append-only",
        ),
        (
            "SELECT i.ad FROM impressions AS i JOIN clicks AS c ON i.ad = c.ad "
            "AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '1 hour' EMIT CHANGES",
            "stream-stream-join-append-only",
        ),
        (
            "SELECT i.ad FROM impressions AS i JOIN clicks AS c ON i.ad = c.ad "
            "AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '1 hour' JOIN ads AS a ON a.ad = i.ad",
            "stream-stream-join-chain",
        ),
    ],
)
def test_refused_stream_stream_joins(tmp_path: Path, query: str, rule: str) -> None:
    con = connect(tmp_path)
    try:
        con.execute("CREATE TABLE ads (ad VARCHAR)")
        with pytest.raises(streamsql.ProgrammingError, match=rule):
            con.execute(f"CREATE SINK out WITH (connector = 'duckdb') AS {query}")
    finally:
        con.close()


def test_left_join_needs_the_right_watermark(tmp_path: Path) -> None:
    con = connect(tmp_path, right_watermark=False)
    try:
        with pytest.raises(streamsql.ProgrammingError, match="watermark on c"):
            con.execute(f"CREATE SINK out WITH (connector = 'duckdb') AS {IMPRESSIONS_CLICKS}")
    finally:
        con.close()


def test_unbounded_inner_join_runs_with_a_warning(tmp_path: Path) -> None:
    """As Spark, an inner join without a bound on its state runs; the warning, EXPLAIN and
    the progress record say that its state grows without bound."""
    write(tmp_path / "impressions", 0, [("A", at("10:00")), ("A", at("10:05"))])
    write(tmp_path / "clicks", 0, [("A", at("09:00"))])
    con = connect(tmp_path)
    query = "SELECT i.ad, c.ts AS click_ts FROM impressions AS i JOIN clicks AS c ON i.ad = c.ad"
    try:
        with pytest.warns(UnboundedStateWarning, match="in state forever"):
            explained = con.execute(f"EXPLAIN {query}").fetchall()
        assert any("state is unbounded" in line for (line,) in explained)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnboundedStateWarning)
            con.execute(
                f"CREATE SINK out WITH (connector = 'duckdb', trigger = 'available_now') AS {query}"
            )
        stream = con.query("out")
        assert stream.await_termination(60)
        assert stream.recent_progress[-1].state_operators[0]["unbounded"] is True
        assert sorted(con.execute("SELECT * FROM out").fetchall()) == [
            ("A", at("09:00")),
            ("A", at("09:00")),
        ]
    finally:
        con.close()


def test_fingerprint_covers_the_join(tmp_path: Path) -> None:
    """A checkpoint's state is shaped by the join: its type and ON (with the bounds)."""
    from streamsql.checkpoint.fingerprint import changes, fingerprint

    con = connect(tmp_path)
    try:
        engine = con.engine
        plans = [
            engine.plan(sqlglot.parse_one(query, read="duckdb"))
            for query in (
                IMPRESSIONS_CLICKS,
                IMPRESSIONS_CLICKS.replace("LEFT OUTER", "FULL OUTER").replace(
                    "c.ts BETWEEN", "c.ts <= i.ts + INTERVAL '1 hour' AND c.ts BETWEEN"
                ),
                IMPRESSIONS_CLICKS.replace("1 hour", "2 hours"),
            )
        ]
    finally:
        con.close()
    first = fingerprint(plans[0])
    assert "LEFT OUTER i x c" in first["join"]
    for other in plans[1:]:
        assert [c.split(":")[0] for c in changes(first, fingerprint(other))] == ["join"]


def test_where_over_the_null_extended_side_filters_the_joined_rows(tmp_path: Path) -> None:
    """`WHERE c.ad <> 'B'` over a left outer join filters its output, as batch SQL does: the
    impression B, never clicked, is not emitted with NULLs (a NULL click's ad is not <> 'B'
    either). Pushed below the join into the clicks, it would be."""
    write(tmp_path / "impressions", 0, [("A", at("10:00")), ("B", at("10:00"))])
    write(tmp_path / "clicks", 0, [("A", at("10:30")), ("B", at("12:30"))])
    write(tmp_path / "impressions", 1, [("Z", at("13:00"))])
    write(tmp_path / "clicks", 1, [("Z", at("13:00"))])
    con = connect(tmp_path)
    try:
        run_to_end(con, f"{IMPRESSIONS_CLICKS} WHERE c.ad <> 'B'")
        rows = con.execute("SELECT ad, imp_ts, click_ts FROM out ORDER BY ad").fetchall()
    finally:
        con.close()
    assert rows == [("A", at("10:00"), at("10:30")), ("Z", at("13:00"), at("13:00"))]


def test_window_time_of_a_window_over_a_join(tmp_path: Path) -> None:
    """`window_time` in the SELECT of a window written over a stream-stream join is the
    window's end - 1 microsecond, as over a source. (The join's output names were taken
    with it unbound: the query was refused, "Referenced column window_time not found".)
    The window closes once the join's output watermark, W - 1 hour - 1 ms, passes 11:00."""
    imp, clk = tmp_path / "impressions", tmp_path / "clicks"
    write(imp, 0, [("A", at("10:00")), ("A", at("10:20"))])
    write(clk, 0, [("A", at("10:30"))])
    write(imp, 1, [("B", at("12:00"))])
    write(clk, 1, [("B", at("12:10"))])
    write(imp, 2, [("C", at("13:30"))])  # W = 13:30 in the batch after: 10:00-11:00 closes
    write(clk, 2, [("C", at("13:30"))])
    con = connect(tmp_path)
    try:
        run_to_end(
            con,
            "SELECT window_time, count(*) AS n, count(c.ts) AS clicks FROM impressions AS i "
            "LEFT OUTER JOIN clicks AS c ON i.ad = c.ad "
            "AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '1 hour' "
            "WINDOW TUMBLING (i.ts, INTERVAL '1 hour') GROUP BY window_start, window_end",
        )
        rows = con.execute("SELECT * FROM out").fetchall()
    finally:
        con.close()
    assert rows == [(at("10:59:59.999999"), 2, 2)]
