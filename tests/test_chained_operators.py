"""Chained stateful operators by example: a window over a window with hand-computed rows and
batch ids, a restart between batches that resumes both operators' state, EXPLAIN, DROP SINK,
progress, a window over a join whose ON range starts above the left time, and each refusal
rule with its message and place (tests/test_chained_properties.py has the properties)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from test_errors import assert_refusal

import streamsql
from streamsql import PlanningError
from streamsql.errors import UnboundedStateWarning

SOURCE = (
    "CREATE SOURCE {name} (k VARCHAR, ts TIMESTAMP, x BIGINT{watermark}) WITH ("
    "connector = 'files', path = '{path}', format = 'json', max_files_per_trigger = 1)"
)
WATERMARK = ", WATERMARK FOR ts AS ts - INTERVAL '5 minutes'"
PER_KEY = (
    "SELECT window_time, k, count(*) AS n, sum(x) AS sx FROM a "
    "WINDOW TUMBLING (ts, INTERVAL '5 minutes') GROUP BY window_start, window_end, k"
)
WINDOW_OVER_WINDOW = (
    "SELECT window_start, window_end, count(*) AS groups, sum(n) AS n, sum(sx) AS sx "
    f"FROM ({PER_KEY}) AS per_key WINDOW TUMBLING (window_time, INTERVAL '15 minutes') "
    "GROUP BY window_start, window_end EMIT FINAL"
)
# (k, minutes after 2024-01-01 00:00, x) per file, one file per micro-batch.
BATCHES = [
    [("a", 1, 1), ("b", 2, 2), ("a", 6, 3)],
    [("a", 12, 4), ("b", 3, 5)],
    [("a", 21, 6)],
    [("b", 4, 7), ("a", 31, 8)],
]


def at(minutes: int) -> dt.datetime:
    return dt.datetime(2024, 1, 1) + dt.timedelta(minutes=minutes)


def write(directory: Path, number: int, rows: list[tuple[str, int, int]]) -> None:
    directory.mkdir(exist_ok=True)
    text = "".join(
        json.dumps({"k": k, "ts": at(m).isoformat(sep=" "), "x": x}) + "\n" for k, m, x in rows
    )
    (directory / f"batch_{number:04d}.jsonl").write_text(text)


def run(
    tmp_path: Path,
    sources: dict[str, list[list[tuple[str, int, int]]]],
    query: str,
    stop: int | None = None,
    watermarks: dict[str, str] | None = None,
) -> tuple[list[tuple], list, list[str]]:
    """A changelog sink over files sources (trigger available_now); with `stop`, the engine
    is closed after the batch of that file and reopened on the same database for the rest.
    Returns the sink's rows (last column _batch_id), the progress and the state tables."""
    watermarks = watermarks or {name: WATERMARK for name in sources}
    length = max(len(batches) for batches in sources.values())
    progress: list = []
    first = 0
    for last in ([stop] if stop is not None else []) + [length - 1]:
        for name, batches in sources.items():
            for number in range(first, min(last, len(batches) - 1) + 1):
                write(tmp_path / name, number, batches[number])
        with streamsql.connect(str(tmp_path / "engine.db")) as con:
            if first == 0:
                for name in sources:
                    (tmp_path / name).mkdir(exist_ok=True)
                    path = tmp_path / name
                    con.execute(SOURCE.format(name=name, watermark=watermarks[name], path=path))
                con.execute(
                    "CREATE SINK out WITH (connector = 'duckdb', changelog = true, "
                    f"trigger = 'available_now') AS {query}"
                )
            stream = con.query("out")
            assert stream.await_termination(60)
            progress += stream.recent_progress
            rows = con.execute("SELECT * EXCLUDE (_batch_id), _batch_id FROM out").fetchall()
            tables = state_tables(con)
        first = last + 1
    return sorted(rows), progress, tables


def state_tables(con: streamsql.Connection) -> list[str]:
    return [
        name
        for (name,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = '_streamsql' "
            "AND starts_with(table_name, 'state_') ORDER BY table_name"
        ).fetchall()
    ]


def test_window_over_window_emits_hand_computed_rows_in_their_batches(tmp_path: Path) -> None:
    """Watermark delay 5 minutes; windows of 5 minutes per key below, of 15 minutes above on
    their window_time (end - 1 microsecond). W_N / L_N: the watermark and late threshold of
    batch N.

    - batch 0 (W 0, L 0): below holds a[00:00,00:05) {x 1}, b[00:00,00:05) {2}, a[00:05,00:10)
      {3}; max time 00:06 -> W_1 = 00:01.
    - batch 1 (W 00:01, L 0): a[00:10,00:15) {4}; b at 00:03 joins b[00:00,00:05) {2, 5};
      nothing ends by 00:01. Max 00:12 -> W_2 = 00:07.
    - batch 2 (W 00:07, L 00:01): a[00:20,00:25) {6}; below closes a[00:00,00:05) (n 1, sx 1)
      and b[00:00,00:05) (n 2, sx 7): above puts both (at 00:04:59.999999) in [00:00,00:15),
      which stays open. Max 00:21 -> W_3 = 00:16.
    - batch 3 (W 00:16, L 00:07): b at 00:04 is late (its window ends 00:05 <= 00:07); a at
      00:31 opens a[00:30,00:35). Below closes a[00:05,00:10) (n 1, sx 3) and a[00:10,00:15)
      (n 1, sx 4); above closes [00:00,00:15) by 00:16: 4 groups, n 1+2+1+1 = 5, sx 15.
      Max 00:31 -> W_4 = 00:26 > W_3: the run ends with a no-data batch.
    - batch 4 (no data, W 00:26, L 00:16): below closes a[00:20,00:25); above puts it in
      [00:15,00:30), still open. State: a[00:30,00:35) below, [00:15,00:30) above.
    """
    rows, progress, tables = run(tmp_path, {"a": BATCHES}, WINDOW_OVER_WINDOW)
    assert rows == [(at(0), at(15), 4, 5, 15, 3)]
    assert [p.no_data_batch for p in progress] == [False, False, False, False, True]
    assert [p.num_late_rows for p in progress] == [0, 0, 0, 1, 0]
    assert [len(p.state_operators) for p in progress] == [2] * 5
    dropped = [[op["num_rows_dropped_by_watermark"] for op in p.state_operators] for p in progress]
    assert dropped == [[0, 0], [0, 0], [0, 0], [1, 0], [0, 0]]
    totals = [[op["num_rows_total"] for op in p.state_operators] for p in progress]
    assert totals[-1] == [1, 1]
    assert tables == ["state_out", "state_out/op0"]


def test_restart_between_batches_resumes_both_operators_state(tmp_path: Path) -> None:
    """Stopped after file 1: a no-data batch (W 00:07) closes both [00:00,00:05) windows below
    into the open [00:00,00:15) above, while a[00:05,00:10) and a[00:10,00:15) stay below.
    Reopened, the rest emits the same row as an uninterrupted run, two batches later (the
    no-data batch at the stop, and file 2 runs under W 00:07 again): the state of both
    operators came back (the reopened engine once dropped `state_out/op0` as a leftover)."""
    rows, progress, tables = run(tmp_path, {"a": BATCHES}, WINDOW_OVER_WINDOW, stop=1)
    assert rows == [(at(0), at(15), 4, 5, 15, 4)]
    assert [p.no_data_batch for p in progress] == [False, False, True, False, False, True]
    assert tables == ["state_out", "state_out/op0"]


def test_explain_lists_both_operators_with_their_watermarks() -> None:
    with streamsql.connect() as con:
        con.execute(SOURCE.format(name="a", watermark=WATERMARK, path="/nonexistent"))
        lines = [line for (line,) in con.execute(f"EXPLAIN {WINDOW_OVER_WINDOW}").fetchall()]
    headers = [line for line in lines if line.startswith("-- operator ")]
    assert headers == [
        "-- operator 1 of 2: windowed aggregation over source a, EMIT FINAL",
        "-- operator 2 of 2 (feeds the sink): windowed aggregation over the rows of operator 1 "
        "(per_key), EMIT FINAL",
    ]
    first, second = lines.index(headers[0]), lines.index(headers[1])
    assert lines[first + 1] == "-- watermark: max(ts) - 5 minutes"
    assert "-- passes on its rows and the watermark on window_time" in lines[first:second]
    assert lines[second + 1].startswith("-- watermark: the query's, on window_time (")
    assert 'CREATE TABLE IF NOT EXISTS _streamsql."state_query/op0" AS' in lines[first:second]
    assert 'CREATE TABLE IF NOT EXISTS _streamsql."state_query" AS' in lines[second:]


def test_drop_sink_removes_every_state_table(tmp_path: Path) -> None:
    run(tmp_path, {"a": BATCHES[:2]}, WINDOW_OVER_WINDOW)
    with streamsql.connect(str(tmp_path / "engine.db")) as con:
        assert state_tables(con) == ["state_out", "state_out/op0"]
        con.execute("DROP SINK out")
        assert state_tables(con) == []
    with streamsql.connect(str(tmp_path / "engine.db")) as con:
        assert state_tables(con) == []


def test_window_over_join_never_runs_above_the_query_watermark(tmp_path: Path) -> None:
    """`r.ts BETWEEN l.ts + 10 minutes AND l.ts + 20 minutes` with a watermark on l only
    (delay 0): r's state goes once r.ts <= W + 10 minutes - 1 ms, yet a left row just above W
    still joins, so the join passes on W (Spark's produceOutputWatermark: the min of its state
    watermarks and W), not W + 9:59.999. The engine used to run the window at W + 9:59.999:
    it closed [00:00,00:05) in batch 1 (W 00:00) and then dropped the pair (l 00:00, r 00:19)
    of batch 2 as late for the window."""
    sources = {
        "l": [[("a", 0, 1)], [("a", 7, 2)], [("a", 8, 3), ("a", 40, 4)]],
        "r": [[], [("a", 12, 10), ("a", 18, 20)], [("a", 19, 30)]],
    }
    query = (
        "SELECT window_start, window_end, count(*) AS n, sum(l.x) AS lx, sum(r.x) AS rx "
        "FROM l JOIN r ON l.k = r.k AND r.ts BETWEEN l.ts + INTERVAL '10 minutes' "
        "AND l.ts + INTERVAL '20 minutes' WINDOW TUMBLING (l.ts, INTERVAL '5 minutes') "
        "GROUP BY window_start, window_end EMIT FINAL"
    )
    watermarks = {"l": ", WATERMARK FOR ts AS ts", "r": ""}
    with pytest.warns(UnboundedStateWarning):  # l's state: r has no watermark
        rows, progress, _ = run(tmp_path, sources, query, watermarks=watermarks)
    # l keeps every row (r has no watermark). l 00:00 pairs with r 00:12, 00:18 and 00:19
    # (x 10 + 20 + 30); l 00:07 and l 00:08 with 00:18 and 00:19 (00:12 is below their
    # ranges). W 00:07 in batch 2 closes [00:00,00:05) after its pairs arrive; W 00:40 after
    # file 2 closes [00:05,00:10) in the no-data batch 3.
    assert rows == [(at(0), at(5), 3, 3, 60, 2), (at(5), at(10), 4, 10, 100, 3)]
    dropped = [p.state_operators[1]["num_rows_dropped_by_watermark"] for p in progress]
    assert dropped == [0, 0, 0, 0]


# -- refusals --------------------------------------------------------------------------------

REFUSALS = [
    (
        "SELECT window_start, count(*) AS c FROM (SELECT k, max(ts) AS t, count(*) AS n "
        "FROM a GROUP BY k) AS c WINDOW TUMBLING (t, INTERVAL '1 hour') GROUP BY window_start",
        "chained-operators-append-only",
        "A global aggregation below another operator must emit each row once",
        "k) AS c",
    ),
    (
        f"SELECT window_start, count(*) AS c FROM ({PER_KEY} EMIT CHANGES) AS t "
        "WINDOW TUMBLING (window_time, INTERVAL '1 hour') GROUP BY window_start",
        "chained-operators-append-only",
        "A windowed aggregation below another operator must emit each row once",
        "EMIT CHANGES)",
    ),
    (
        f"SELECT window_start, count(*) AS c FROM ({PER_KEY}) AS t "
        "WINDOW TUMBLING (window_time, INTERVAL '1 hour') GROUP BY window_start EMIT CHANGES",
        "chained-operators-append-only",
        "EMIT CHANGES over the rows of a windowed aggregation",
        "EMIT CHANGES",
    ),
    (  # a global aggregation on top emits CHANGES
        f"SELECT count(*) AS c FROM ({PER_KEY}) AS t",
        "chained-operators-append-only",
        "A global aggregation (its groups never close, so it emits CHANGES) over the rows of a "
        "windowed aggregation",
        "count(*) AS c",
    ),
    (
        f"SELECT window_start, count(*) AS c FROM ({PER_KEY}) AS t "
        "WINDOW TUMBLING (sx, INTERVAL '1 hour') GROUP BY window_start",
        "chained-window-time",
        "needs a time column that carries that operator's watermark: window by window_time",
        "sx, INTERVAL '1 hour'",
    ),
    (
        f"SELECT window_start, count(*) AS c FROM ({PER_KEY}) AS t JOIN b ON t.k = b.k "
        "WINDOW TUMBLING (window_time, INTERVAL '1 hour') GROUP BY window_start",
        "chained-operators",
        "b is read next to the rows of a windowed aggregation",
        "b ON t.k",
    ),
    (
        f"SELECT * FROM ({PER_KEY} UNION ALL SELECT ts, k, x, x FROM b) AS u",
        "stateful-subquery",
        "GROUP BY in a subquery, CTE or view over a stream here",
        "window_start, window_end, k",
    ),
    (
        f"SELECT b.k, t.n FROM b JOIN ({PER_KEY}) AS t ON t.k = b.k",
        "stateful-subquery",
        "runs below another only as the subquery the query reads FROM",
        "window_start, window_end, k",
    ),
]


@pytest.mark.parametrize(("sql", "rule", "words", "marker"), REFUSALS)
def test_refusals_name_the_rule_and_the_place(sql: str, rule: str, words: str, marker: str):
    with streamsql.connect() as con:
        for name in ("a", "b"):
            con.execute(SOURCE.format(name=name, watermark=WATERMARK, path="/nonexistent"))
        with pytest.raises(PlanningError) as caught:
            con.execute(sql)
    assert_refusal(caught.value, sql, rule, words, marker)
