"""Queries over relations of sources: subqueries, CTEs, views over streams, UNION ALL of
sources, joins of a stream with tables; offsets and watermarks per source."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import streamsql
from streamsql import PlanningError, ProgrammingError

EVENTS = (
    "CREATE SOURCE {name} (k VARCHAR, ts TIMESTAMP, x BIGINT, "
    "WATERMARK FOR ts AS ts - INTERVAL '{delay} minutes') "
    "WITH (connector = 'files', path = '{path}', format = 'json', max_files_per_trigger = 1)"
)


def write(directory: Path, batches: list[list[tuple[str | None, str, int]]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for number, rows in enumerate(batches):
        lines = [json.dumps({"k": k, "ts": f"2024-01-01 {ts}", "x": x}) for k, ts, x in rows]
        (directory / f"batch_{number:04d}.jsonl").write_text("".join(f"{line}\n" for line in lines))


@pytest.fixture
def two_sources(tmp_path: Path) -> Iterator[streamsql.Connection]:
    """a: three batches; b: one batch, then it runs out."""
    write(tmp_path / "a", [[("p", "00:00:00", 1)], [("p", "00:20:00", 2)], [("q", "00:40:00", 4)]])
    write(tmp_path / "b", [[("p", "00:01:00", 10)]])
    con = streamsql.connect(str(tmp_path / "engine.db"))
    con.execute(EVENTS.format(name="a", delay=5, path=tmp_path / "a"))
    con.execute(EVENTS.format(name="b", delay=10, path=tmp_path / "b"))
    yield con
    con.close()


WINDOWS = (
    "CREATE SINK out WITH (connector = 'duckdb', changelog = true, trigger = 'available_now'"
    "{options}) AS SELECT window_start, count(*) AS n, sum(x) AS sx FROM {relation} "
    "WINDOW TUMBLING (ts, INTERVAL '5 minutes') GROUP BY window_start EMIT FINAL"
)
UNION = "(SELECT k, ts, x FROM a UNION ALL SELECT k, ts, x FROM b) AS u"


def run(con: streamsql.Connection, sql: str) -> tuple[list[tuple], list]:
    con.execute(sql)
    stream = con.query("out")
    assert stream.await_termination(60)
    rows = con.execute("SELECT _batch_id, strftime(window_start, '%H:%M'), n, sx FROM out")
    return sorted(rows.fetchall()), list(stream.recent_progress)


def test_a_source_that_runs_out_holds_the_min_watermark(two_sources) -> None:
    """Spark's default policy: b's watermark stops at 23:51 when b runs out, and the global
    watermark with it: the 00:00 window never closes (DESIGN.md section 8)."""
    rows, progress = run(two_sources, WINDOWS.format(options="", relation=UNION))
    assert rows == []
    assert [p.watermark[11:19] for p in progress] == ["00:00:00", "23:51:00", "23:51:00"]
    assert [[s["num_input_rows"] for s in p.sources] for p in progress] == [[1, 1], [1, 0], [1, 0]]
    assert [s["watermark"][11:19] for s in progress[-1].sources] == ["00:35:00", "23:51:00"]


def test_the_max_policy_follows_the_fastest_source(two_sources) -> None:
    options = ", multiple_watermark_policy = 'max'"
    rows, progress = run(two_sources, WINDOWS.format(options=options, relation=UNION))
    # Batch 0 sees a at 00:00 (wm 23:55) and b at 00:01 (wm 23:51): max = 23:55; batch 1's
    # 00:20 moves it to 00:15, which closes 00:00 (a's 1 and b's 10) in batch 2.
    assert [p.watermark[11:19] for p in progress] == [
        "00:00:00",
        "23:55:00",
        "00:15:00",
        "00:35:00",
    ]
    assert rows == [(2, "00:00", 2, 11), (3, "00:20", 1, 2)]


def test_offsets_are_logged_per_source_and_resumed(two_sources, tmp_path: Path) -> None:
    run(two_sources, WINDOWS.format(options="", relation=UNION))
    logged = two_sources.execute(
        "SELECT batch_id, end_offset FROM _streamsql.offsets WHERE query = 'out' ORDER BY 1"
    ).fetchall()
    assert [json.loads(end) for _, end in logged] == [
        {"a": {"files": []}, "b": {"files": []}},
        {"a": {"files": ["batch_0000.jsonl"]}, "b": {"files": ["batch_0000.jsonl"]}},
        {"a": {"files": ["batch_0001.jsonl"]}, "b": {"files": ["batch_0000.jsonl"]}},
        {"a": {"files": ["batch_0002.jsonl"]}, "b": {"files": ["batch_0000.jsonl"]}},
    ]
    status = dict(two_sources.execute("DESCRIBE QUERY out").fetchall())
    assert json.loads(status["committed_offsets"]) == {
        "a": {"files": ["batch_0002.jsonl"]},
        "b": {"files": ["batch_0000.jsonl"]},
    }
    # New files for b only: the resumed query reads them, and a's nothing new.
    write(tmp_path / "b", [[("p", "00:01:00", 10)], [("p", "00:50:00", 7)]])
    two_sources.close()
    con = streamsql.connect(str(tmp_path / "engine.db"))
    stream = con.query("out")
    assert stream.await_termination(60)
    last = [p for p in stream.recent_progress if not p.no_data_batch][-1]
    assert [(s["source"], s["num_input_rows"]) for s in last.sources] == [("a", 0), ("b", 1)]
    # b's watermark reaches 00:40, a's is 00:35: the min closes 00:00 and 00:20.
    assert con.execute("SELECT count(*) FROM out").fetchall() == [(2,)]
    con.close()


@pytest.mark.parametrize(
    "relation",
    [
        UNION,
        "(SELECT * FROM (SELECT k, ts, x FROM a UNION ALL SELECT k, ts, x FROM b)) AS u",
        "both_ab",
        "both_cte",
    ],
)
def test_subqueries_ctes_and_views_are_the_same_relation(two_sources, relation) -> None:
    two_sources.execute("CREATE VIEW both_ab AS SELECT k, ts, x FROM a UNION ALL SELECT * FROM b")
    options = ", multiple_watermark_policy = 'max'"
    sql = WINDOWS.format(options=options, relation=relation)
    if relation == "both_cte":
        sql = sql.replace(
            " AS SELECT window_start", f" AS WITH both_cte AS {UNION[:-5]} SELECT window_start"
        )
    rows, _ = run(two_sources, sql)
    assert rows == [(2, "00:00", 2, 11), (3, "00:20", 1, 2)]


def test_views_over_streams_are_kept_and_guard_what_they_read(two_sources, tmp_path) -> None:
    two_sources.execute("CREATE VIEW pa AS SELECT k, ts, x * 10 AS x FROM a WHERE k = 'p'")
    two_sources.execute("CREATE VIEW pa2 AS SELECT * FROM pa")
    with pytest.raises(ProgrammingError, match="Cannot drop source a: view pa, view pa2 read it"):
        two_sources.execute("DROP SOURCE a")
    with pytest.raises(ProgrammingError, match="Cannot drop view pa: view pa2 read it"):
        two_sources.execute("DROP VIEW pa")
    with pytest.raises(PlanningError, match="Source pa is a stream"):
        two_sources.execute("CREATE TABLE t AS SELECT * FROM pa")
    two_sources.close()
    con = streamsql.connect(str(tmp_path / "engine.db"))
    con.execute(
        "CREATE SINK out WITH (connector = 'duckdb', trigger = 'available_now') AS "
        "SELECT k, x FROM pa2"
    )
    assert con.query("out").await_termination(60)
    assert sorted(con.execute("SELECT * FROM out").fetchall()) == [("p", 10), ("p", 20)]
    with pytest.raises(ProgrammingError, match="sink out"):
        con.execute("DROP VIEW pa2")
    con.execute("DROP SINK out")
    con.execute("DROP VIEW pa2")
    con.execute("DROP VIEW pa")
    con.execute("DROP SOURCE a")
    con.close()


def test_a_stream_static_join_sees_the_table_as_each_batch_runs(tmp_path: Path) -> None:
    con = streamsql.connect(str(tmp_path / "engine.db"))
    con.execute("CREATE SOURCE s (k VARCHAR, x BIGINT) WITH (connector = 'memory')")
    con.execute("CREATE TABLE dim (k VARCHAR, name VARCHAR)")
    con.execute("INSERT INTO dim VALUES ('p', 'first')")
    con.execute(
        "CREATE SINK out WITH (connector = 'duckdb', changelog = true) AS "
        "SELECT s.k, d.name, x FROM s LEFT JOIN dim AS d ON s.k = d.k"
    )
    stream = con.query("out")
    con.execute("INSERT INTO s VALUES ('p', 1), ('q', 2)")
    stream.process_all_available()
    con.execute("UPDATE dim SET name = 'second'")
    con.execute("INSERT INTO dim VALUES ('q', 'new')")
    con.execute("INSERT INTO s VALUES ('p', 3), ('q', 4)")
    stream.process_all_available()
    assert con.execute("SELECT k, name, x FROM out ORDER BY x").fetchall() == [
        ("p", "first", 1),
        ("q", None, 2),
        ("p", "second", 3),
        ("q", "new", 4),
    ]
    con.close()


def test_a_join_keeps_the_names_duckdb_gives_its_columns(two_sources) -> None:
    two_sources.execute("CREATE TABLE dim AS SELECT 'p' AS k, 'one' AS name")
    description = two_sources.execute(
        "EXPLAIN SELECT a.k, d.k, d.name, a.x + 1 FROM a JOIN dim AS d ON a.k = d.k"
    ).fetchall()[0][0]
    assert "stateless projection/filter over source a" in description
    two_sources.execute(
        "CREATE SINK out WITH (connector = 'duckdb', trigger = 'available_now') AS "
        "SELECT a.k, d.k AS dk, d.name, a.x + 1 FROM a JOIN dim AS d ON a.k = d.k"
    )
    assert two_sources.query("out").await_termination(60)
    result = two_sources.execute("SELECT * FROM out ORDER BY ALL")
    assert [c[0] for c in result.description] == ["k", "dk", "name", "(a.x + 1)"]
    assert result.fetchall() == [("p", "p", "one", 2), ("p", "p", "one", 3)]


def test_an_unknown_watermark_policy_is_refused(two_sources) -> None:
    with pytest.raises(ProgrammingError, match="multiple_watermark_policy = 'median'"):
        two_sources.execute(
            WINDOWS.format(options=", multiple_watermark_policy = 'median'", relation=UNION)
        )


def test_explain_names_every_source_and_the_global_watermark(two_sources) -> None:
    lines = two_sources.execute(
        f"EXPLAIN SELECT window_start, count(*) FROM {UNION} "
        "WINDOW TUMBLING (ts, INTERVAL '5 minutes') GROUP BY window_start"
    ).fetchall()
    text = "\n".join(line for (line,) in lines)
    assert "windowed aggregation over sources a, b, EMIT FINAL" in text
    assert "-- watermark of a: max(ts) - 5 minutes" in text
    assert "-- watermark of b: max(ts) - 10 minutes" in text
    assert "-- global watermark: the min of the sources'" in text


def test_a_view_declared_again_is_a_no_op_and_a_different_one_an_error(two_sources) -> None:
    """A script run again (streamsql run after a stop) declares its views again."""
    view = "CREATE VIEW pa AS SELECT k, ts FROM a WHERE k = 'p'"
    two_sources.execute(view)
    two_sources.execute(view)
    two_sources.execute("CREATE VIEW IF NOT EXISTS pa AS SELECT k FROM a")
    with pytest.raises(ProgrammingError, match="View 'pa' already exists with another query"):
        two_sources.execute("CREATE VIEW pa AS SELECT k FROM a")
    two_sources.execute("CREATE OR REPLACE VIEW pa AS SELECT k FROM a")
    assert two_sources.execute("EXPLAIN SELECT * FROM pa").fetchall()
