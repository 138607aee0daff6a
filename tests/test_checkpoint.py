"""Checkpoints on a database file: what resumes, what is refused, what starts over.

Every test reopens the engine with streamsql.connect(path) on the same file. Input comes from
a `files` source (JSON-lines files appearing in a directory): unlike a memory source, its
input is still there when the engine is opened again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

import streamsql
from streamsql.runtime import microbatch
from streamsql.runtime.query import StreamingQuery

T0 = dt.datetime(2024, 1, 1)
CHECKPOINT_TABLES = ("offsets", "commits", "metadata", "emitted_windows", "sink_files")


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def event(k: str, minutes: float, v: int = 1, u: str = "x") -> dict[str, Any]:
    return {"k": k, "u": u, "ts": str(at(minutes)), "v": v}


def put(tmp_path: Path, name: str, events: list[dict[str, Any]]) -> None:
    """A JSON-lines file appears whole in the source directory (written, then renamed)."""
    directory = tmp_path / "in"
    directory.mkdir(parents=True, exist_ok=True)
    hidden = directory / f".{name}.partial"
    hidden.write_text("".join(json.dumps(e) + "\n" for e in events))
    os.replace(hidden, directory / name)


def source_sql(tmp_path: Path, extra: str = "", options: str = "") -> str:
    (tmp_path / "in").mkdir(exist_ok=True)  # a query fails at start on a missing path
    return (
        f"CREATE SOURCE src (k VARCHAR, u VARCHAR, ts TIMESTAMP, v BIGINT{extra}) "
        f"WITH (connector = 'files', path = '{tmp_path / 'in'}'{options})"
    )


@contextlib.contextmanager
def opened(db_path: str) -> Iterator[streamsql.Connection]:
    con = streamsql.connect(db_path)
    try:
        yield con
    finally:
        con.close()


def caught_up(con: streamsql.Connection, name: str = "out") -> StreamingQuery:
    query = con.query(name)
    query.process_all_available(timeout=60)
    return query


def table(con: streamsql.Connection, sql: str, params: list[Any] | None = None) -> list[Any]:
    return con.execute(sql, params).fetchall()


def running(con: streamsql.Connection, name: str = "out") -> bool:
    try:
        return con.query(name).is_active
    except streamsql.ProgrammingError:
        return False


def catalog_sql(con: streamsql.Connection, name: str = "out") -> str:
    return table(con, "SELECT sql FROM _streamsql.catalog WHERE name = ?", [name])[0][0]


# -- a change to what shapes the state is refused ---------------------------------------------

WINDOWED = (
    "SELECT window_start, k, count(*) AS n FROM src "
    "WATERMARK ts DELAY OF INTERVAL '1 minute' WINDOW TUMBLING (ts, INTERVAL '1 minute') "
    "GROUP BY window_start, k EMIT FINAL"
)
STATE_CHANGES = [
    (
        WINDOWED.replace("k, count", "k, u, count").replace(
            "BY window_start, k", "BY window_start, k, u"
        ),
        "grouping keys: (k) -> (k, u)",
    ),
    (WINDOWED.replace("count(*)", "sum(v)"), "aggregates: (COUNT(*)) -> (SUM(v))"),
    (
        WINDOWED.replace("(ts, INTERVAL '1 minute')", "(ts, INTERVAL '2 minutes')"),
        "window: TUMBLING (ts, 1 minute) -> TUMBLING (ts, 2 minutes)",
    ),
    (
        WINDOWED.replace("DELAY OF INTERVAL '1 minute'", "DELAY OF INTERVAL '2 minutes'"),
        "watermark: ts - 1 minute -> ts - 2 minutes",
    ),
    (WINDOWED.replace("EMIT FINAL", "EMIT CHANGES"), "emit mode: FINAL -> CHANGES"),
]


@pytest.mark.parametrize("running_at_close", [False, True], ids=["stopped", "running"])
@pytest.mark.parametrize(
    ("changed", "phrase"),
    STATE_CHANGES,
    ids=["group-by", "aggregates", "window-size", "watermark-delay", "emit-mode"],
)
def test_a_change_to_what_shapes_the_state_is_refused_naming_it(
    db_path: str, tmp_path: Path, changed: str, phrase: str, running_at_close: bool
) -> None:
    create = f"CREATE SINK out WITH (connector = 'duckdb') AS {WINDOWED}"
    put(tmp_path, "1.json", [event("a", 0.1), event("b", 0.2), event("a", 2.5)])
    with opened(db_path) as con:
        con.execute(source_sql(tmp_path))
        con.execute(create)
        caught_up(con)
        first = [(at(0), "a", 1), (at(0), "b", 1)]
        assert table(con, "SELECT window_start, k, n FROM out ORDER BY k") == first
        if not running_at_close:
            con.execute("STOP QUERY out")
        fingerprint = table(con, "SELECT id, fingerprint FROM _streamsql.metadata")
    with opened(db_path) as con:
        assert running(con) is running_at_close
        run_id = con.query("out").run_id if running_at_close else None
        with pytest.raises(streamsql.ProgrammingError) as caught:
            con.execute(f"CREATE SINK out WITH (connector = 'duckdb') AS {changed}")
        message = str(caught.value)
        assert "Sink out already exists" in message
        assert f"different query ({phrase})" in message
        # nothing changed: the stored definition, the checkpoint, the query
        assert catalog_sql(con) == create
        assert table(con, "SELECT id, fingerprint FROM _streamsql.metadata") == fingerprint
        assert running(con) is running_at_close
        if running_at_close:
            assert con.query("out").run_id == run_id
        else:
            con.execute(create)  # the old query, submitted again, resumes
        put(tmp_path, "2.json", [event("c", 4.0)])
        query = caught_up(con)
        assert query.recent_progress[0].batch_id > 0
        assert table(con, "SELECT window_start, k, n FROM out ORDER BY window_start, k") == [
            *first,
            (at(2), "a", 1),
        ]


# -- changes that do not touch the state resume the checkpoint ----------------------------------

AGGREGATE = "SELECT k, count(*) AS n, sum(v) AS total FROM src{where} GROUP BY k EMIT CHANGES"


@pytest.mark.parametrize("running_at_close", [False, True], ids=["stopped", "running"])
@pytest.mark.parametrize(
    ("options", "where"),
    [
        (", trigger = '50 ms'", ""),
        (", table = 'out'", ""),  # a new option (its default, so the same table)
        ("", " WHERE v > 0"),
    ],
    ids=["trigger", "sink-option", "filter"],
)
def test_a_change_of_trigger_options_or_filter_resumes_the_checkpoint(
    db_path: str, tmp_path: Path, options: str, where: str, running_at_close: bool
) -> None:
    put(tmp_path, "1.json", [event("a", 0, 1), event("b", 0, 2), event("a", 0, 3)])
    with opened(db_path) as con:
        con.execute(source_sql(tmp_path))
        con.execute(f"CREATE SINK out WITH (connector = 'duckdb') AS {AGGREGATE.format(where='')}")
        query_id = caught_up(con).id
        if not running_at_close:
            con.execute("STOP QUERY out")
    changed = (
        f"CREATE SINK out WITH (connector = 'duckdb'{options}) AS {AGGREGATE.format(where=where)}"
    )
    with opened(db_path) as con:
        con.execute(changed)
        put(tmp_path, "2.json", [event("a", 1, 10), event("b", 1, -5), event("c", 1, 1)])
        query = caught_up(con)
        assert query.id == query_id
        assert [p.batch_id for p in query.recent_progress] == [1]
        assert query.recent_progress[0].sources[0]["end_offset"] == {"files": ["2.json"]}
        assert query.recent_progress[0].num_input_rows == 3  # 1.json not read again
        b = ("b", 1, 2) if where else ("b", 2, -3)
        assert table(con, "SELECT k, n, total FROM out ORDER BY k") == [
            ("a", 3, 14),
            b,
            ("c", 1, 1),
        ]
        if "trigger" in options:
            assert str(query.trigger) == "0.05 seconds"
        assert catalog_sql(con) == changed
    with opened(db_path) as con:  # the new definition is the one that resumes
        assert running(con)
        assert str(con.query("out").trigger) == (
            "0.05 seconds" if "trigger" in options else "0 seconds"
        )
        put(tmp_path, "3.json", [event("b", 2, -1)])
        caught_up(con)
        expected = ("b", 1, 2) if where else ("b", 3, -4)
        assert table(con, "SELECT k, n, total FROM out WHERE k = 'b'") == [expected]


# -- OR REPLACE, DROP, IF NOT EXISTS, identical CREATE --------------------------------------------


def test_create_or_replace_starts_over_without_the_state(db_path: str, tmp_path: Path) -> None:
    put(tmp_path, "1.json", [event("a", 0, 1), event("a", 0, 2), event("b", 0, 4)])
    with opened(db_path) as con:
        con.execute(source_sql(tmp_path))
        con.execute(
            "CREATE SINK out WITH (connector = 'duckdb') AS "
            "SELECT k, count(*) AS n FROM src GROUP BY k EMIT CHANGES"
        )
        caught_up(con)
        put(tmp_path, "2.json", [event("a", 1, 8)])
        old = caught_up(con)
        assert old.last_progress.batch_id == 1
        con.execute("STOP QUERY out")
    with opened(db_path) as con:
        con.execute(
            "CREATE OR REPLACE SINK out WITH (connector = 'duckdb', table = 'sums') AS "
            "SELECT k, sum(v) AS total, count(*) AS n FROM src GROUP BY k EMIT CHANGES"
        )
        query = caught_up(con)
        assert query.id != old.id
        assert [p.batch_id for p in query.recent_progress] == [0]
        assert query.recent_progress[0].sources[0]["end_offset"] == {"files": ["1.json", "2.json"]}
        assert table(con, "SELECT k, total, n FROM sums ORDER BY k") == [("a", 11, 3), ("b", 4, 1)]
        assert table(
            con, "SELECT batch_id FROM _streamsql.commits WHERE query = 'out' ORDER BY 1"
        ) == [(0,)]
        assert table(con, "SELECT count(*) FROM _streamsql.state_out") == [(2,)]
        assert table(con, "SELECT running FROM _streamsql.catalog WHERE name = 'out'") == [(True,)]


def test_drop_sink_removes_its_state_and_checkpoint(db_path: str, tmp_path: Path) -> None:
    final = (
        "SELECT window_start, k, count(*) AS n FROM src "
        "WINDOW TUMBLING (ts, INTERVAL '1 minute') GROUP BY window_start, k EMIT FINAL"
    )
    put(tmp_path, "1.json", [event("a", 0.5), event("b", 1.5)])
    (tmp_path / "in" / "2.json").write_text('{"k": "a", "ts": "not a time"}\n')
    with opened(db_path) as con:
        con.execute(source_sql(tmp_path, ", WATERMARK FOR ts AS ts"))
        con.execute(
            f"CREATE SINK out WITH (connector = 'parquet', path = '{tmp_path / 'out'}') AS {final}"
        )
        con.execute(f"CREATE SINK keep WITH (connector = 'duckdb') AS {final}")
        caught_up(con)
        caught_up(con, "keep")
        counts = {
            name: table(con, f"SELECT query, count(*) FROM _streamsql.{name} GROUP BY 1 ORDER BY 1")
            for name in CHECKPOINT_TABLES
        }
        for name in ("offsets", "commits", "metadata", "emitted_windows"):
            assert [q for q, _ in counts[name]] == ["keep", "out"], name
        assert counts["sink_files"] == [("out", 1)]
        assert table(con, "SELECT count(*) FROM _streamsql.dead_letters WHERE query = 'out'") == [
            (1,)
        ]
        kept = table(con, "SELECT * FROM keep")
        files = sorted(p.name for p in (tmp_path / "out").iterdir())
        con.execute("DROP SINK out")
        for name in CHECKPOINT_TABLES:
            assert table(con, f"SELECT count(*) FROM _streamsql.{name} WHERE query = 'out'") == [
                (0,)
            ], name
            assert table(
                con, f"SELECT query, count(*) FROM _streamsql.{name} GROUP BY 1 ORDER BY 1"
            ) == [row for row in counts[name] if row[0] != "out"]
        state_tables = "SELECT table_name FROM duckdb_tables() WHERE schema_name = '_streamsql'"
        assert ("state_out",) not in table(con, state_tables)
        assert ("state_keep",) in table(con, state_tables)
        assert table(con, "SELECT name FROM _streamsql.catalog WHERE kind = 'SINK'") == [("keep",)]
        assert not running(con)
        # its dead letters and its view go with it (a sink created again reads the input
        # again and records them anew); its files stay; the other sink is untouched
        assert table(con, "SELECT count(*) FROM _streamsql.dead_letters WHERE query = 'out'") == [
            (0,)
        ]
        views = "SELECT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = 'main'"
        assert table(con, views) == []
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == files
        assert table(con, "SELECT * FROM keep") == kept
    with opened(db_path) as con:
        assert [row[0] for row in table(con, "SHOW SINKS")] == ["keep"]
        assert not running(con)
        # the name is free: another query under it starts from batch 0
        con.execute(
            "CREATE SINK out WITH (connector = 'duckdb', table = 'counts') AS "
            "SELECT k, count(*) AS n FROM src GROUP BY k EMIT CHANGES"
        )
        query = caught_up(con)
        assert query.recent_progress[0].batch_id == 0
        assert table(con, "SELECT k, n FROM counts ORDER BY k") == [("a", 1), ("b", 1)]


def test_if_not_exists_is_a_no_op_and_an_identical_create_restarts_a_stopped_sink(
    db_path: str, tmp_path: Path
) -> None:
    create = (
        "CREATE SINK out WITH (connector = 'duckdb') AS "
        "SELECT k, count(*) AS n FROM src GROUP BY k EMIT CHANGES"
    )
    other = create.replace("count(*) AS n", "sum(v) AS n")
    put(tmp_path, "1.json", [event("a", 0)])
    with opened(db_path) as con:
        con.execute(source_sql(tmp_path))
        con.execute(create)
        first = caught_up(con)
        con.execute(other.replace("CREATE SINK", "CREATE SINK IF NOT EXISTS"))
        con.execute(create)  # identical, running: nothing happens
        assert con.query("out") is first
        assert first.is_active
        assert catalog_sql(con) == create
        con.execute("STOP QUERY out")
        assert not first.is_active
    with opened(db_path) as con:
        assert not running(con)  # a stopped sink stays stopped
        con.execute(create.replace("CREATE SINK", "CREATE SINK IF NOT EXISTS"))
        assert not running(con)
        put(tmp_path, "2.json", [event("a", 1)])
        con.execute(create)
        query = caught_up(con)
        assert (query.id, query.run_id != first.run_id) == (first.id, True)
        assert [p.batch_id for p in query.recent_progress] == [1]
        assert table(con, "SELECT k, n FROM out") == [("a", 2)]
    with opened(db_path) as con:
        assert running(con)  # started again, so resumed again


# -- sources --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "options", "phrases"),
    [
        (
            ", w INTEGER, WATERMARK FOR ts AS ts - INTERVAL '1 minute'",
            "",
            ["columns: (", "v BIGINT) -> (", "v BIGINT, w INT"],
        ),
        (
            ", WATERMARK FOR ts AS ts - INTERVAL '2 minutes'",
            "",
            ["watermark: (ts - INTERVAL '1' MINUTE) -> (ts - INTERVAL '2' MINUTES)"],
        ),
        (
            ", WATERMARK FOR ts AS ts - INTERVAL '1 minute'",
            ", max_files_per_trigger = 2",
            ["option max_files_per_trigger: unset -> '2'"],
        ),
    ],
    ids=["columns", "watermark", "options"],
)
def test_a_different_create_source_is_refused_naming_what_differs(
    db_path: str, tmp_path: Path, extra: str, options: str, phrases: list[str]
) -> None:
    original = source_sql(tmp_path, ", WATERMARK FOR ts AS ts - INTERVAL '1 minute'")
    with opened(db_path) as con:
        con.execute(original)
    with opened(db_path) as con:
        shown = table(con, "SHOW SOURCES")
        with pytest.raises(streamsql.ProgrammingError) as caught:
            con.execute(source_sql(tmp_path, extra, options))
        message = str(caught.value)
        assert "Source src already exists with a different definition" in message
        for phrase in phrases:
            assert phrase in message
        if "columns" not in phrases[0]:
            assert "columns" not in message
        assert table(con, "SHOW SOURCES") == shown
        assert catalog_sql(con, "src") == original
        con.execute(original)  # identical: a no-op
        con.execute(source_sql(tmp_path, extra, options).replace("SOURCE", "SOURCE IF NOT EXISTS"))
        assert table(con, "SHOW SOURCES") == shown
        assert catalog_sql(con, "src") == original


# -- restarts continue where the checkpoint left off ----------------------------------------------


def test_a_restart_continues_batch_ids_and_the_watermark(db_path: str, tmp_path: Path) -> None:
    source = source_sql(tmp_path, ", WATERMARK FOR ts AS ts - INTERVAL '1 minute'")
    create = (
        "CREATE SINK out WITH (connector = 'duckdb') AS SELECT window_start, k, count(*) AS n "
        "FROM src WINDOW TUMBLING (ts, INTERVAL '1 minute') GROUP BY window_start, k EMIT FINAL"
    )
    put(tmp_path, "1.json", [event("a", 0.5), event("b", 1.5)])
    with opened(db_path) as con:
        con.execute(source)
        con.execute(create)
        caught_up(con)
        put(tmp_path, "2.json", [event("a", 5.0), event("a", 3.5)])
        before = caught_up(con)
        last = before.last_progress
        assert last.next_watermark == "2024-01-01T00:04:00.000000Z"
        emitted = table(con, "SELECT window_start, k, n FROM out ORDER BY 1, 2")
        assert emitted == [(at(0), "a", 1), (at(1), "b", 1), (at(3), "a", 1)]
        shown = table(con, "SHOW QUERIES")
    put(tmp_path, "3.json", [event("late", 3.9), event("c", 7.5)])
    with opened(db_path) as con:
        after = caught_up(con)
        first = after.recent_progress[0]
        assert first.batch_id == last.batch_id + 1
        assert first.watermark == last.next_watermark
        assert first.late_threshold == last.watermark
        assert first.sources[0]["end_offset"] == {"files": ["3.json"]}
        assert first.num_late_rows == 1  # 00:03:54 is before the restored watermark (00:04)
        assert after.id == before.id
        assert after.run_id != before.run_id
        assert table(con, "SELECT window_start, k, n FROM out ORDER BY 1, 2") == [
            *emitted,
            (at(5), "a", 1),
        ]
        assert after.last_progress.next_watermark == "2024-01-01T00:06:30.000000Z"
    with opened(db_path) as con:  # right after a restart, before any batch
        row = table(con, "SHOW QUERIES")[0]
        assert row[0] == "out"
        assert row[3] == after.last_progress.batch_id
        assert row[4] == "2024-01-01T00:06:30.000000Z"
        assert shown[0][3] == last.batch_id


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        (
            "TUMBLING (ts, INTERVAL '1 minute')",
            {(at(0), at(1)): 2, (at(1), at(2)): 1, (at(3), at(4)): 1},
        ),
        (
            "HOPPING (ts, INTERVAL '2 minutes', INTERVAL '1 minute')",
            {
                (at(-1), at(1)): 2,
                (at(0), at(2)): 2,
                (at(1), at(3)): 1,
                (at(2), at(4)): 1,
                (at(3), at(5)): 1,
            },
        ),
    ],
    ids=["tumbling", "hopping"],
)
def test_the_emitted_window_log_has_one_row_per_emitted_window(
    db_path: str, tmp_path: Path, window: str, expected: dict[tuple[dt.datetime, dt.datetime], int]
) -> None:
    create = (
        "CREATE SINK out WITH (connector = 'duckdb', changelog = true) AS "
        f"SELECT window_start, window_end, k, count(*) AS n FROM src WINDOW {window} "
        "GROUP BY window_start, window_end, k EMIT FINAL"
    )
    with opened(db_path) as con:
        con.execute(source_sql(tmp_path, ", WATERMARK FOR ts AS ts"))
        con.execute(create)
        put(tmp_path, "1.json", [event("a", 0.5), event("b", 0.7)])
        caught_up(con)
        put(tmp_path, "2.json", [event("a", 1.5)])
        caught_up(con)
    with opened(db_path) as con:
        put(tmp_path, "3.json", [event("a", 3.2)])
        caught_up(con)
        put(tmp_path, "4.json", [event("a", 6.0), event("b", 0.1)])  # b: late, dropped
        caught_up(con)
        log = table(
            con,
            "SELECT window_start, window_end, batch_id, groups FROM _streamsql.emitted_windows "
            "WHERE query = 'out' ORDER BY 1",
        )
        sink = table(
            con,
            "SELECT window_start::VARCHAR, window_end::VARCHAR, _batch_id, count(*) FROM out "
            "GROUP BY ALL ORDER BY 1",
        )
        assert log == sink
        assert {
            (dt.datetime.fromisoformat(s), dt.datetime.fromisoformat(e)): g for s, e, _, g in log
        } == expected
        assert len({(s, e) for s, e, _, _ in log}) == len(log)
        # each window was emitted by a batch that committed output
        committed = dict(
            table(con, "SELECT batch_id, output_rows FROM _streamsql.commits WHERE query = 'out'")
        )
        assert all(committed[batch] > 0 for _, _, batch, _ in log)
        assert sum(committed.values()) == sum(expected.values())


# -- a batch planned but not committed is replayed over its logged range --------------------------

DELIVERED: list[tuple[int, list[dict[str, Any]]]] = []
FAIL_AT: set[int] = set()


def flaky_delivery(batch_id: int, rows: pa.Table) -> None:
    """A callback sink function (imported as 'module:function' when the engine reopens)."""
    DELIVERED.append((batch_id, sorted(rows.to_pylist(), key=lambda r: r["k"])))
    if batch_id in FAIL_AT:
        raise ConnectionError(f"could not deliver batch {batch_id}")


def test_a_planned_uncommitted_batch_is_replayed_over_exactly_its_logged_range(
    db_path: str, tmp_path: Path
) -> None:
    DELIVERED.clear()
    FAIL_AT.clear()
    create = (
        f"CREATE SINK out WITH (connector = 'callback', callback = '{__name__}:flaky_delivery') "
        "AS SELECT k, count(*) AS n, sum(v) AS total FROM src GROUP BY k EMIT CHANGES"
    )
    with opened(db_path) as con:
        con.execute(source_sql(tmp_path))
        con.execute(create)
        put(tmp_path, "0.json", [event("a", 0, 1)])
        caught_up(con)
        put(tmp_path, "1.json", [event("a", 1, 2), event("b", 1, 3)])
        caught_up(con)
        FAIL_AT.add(2)
        put(tmp_path, "2.json", [event("a", 2, 4), event("c", 2, 5)])
        query = con.query("out")
        with pytest.raises(streamsql.StreamingQueryError, match="could not deliver batch 2"):
            query.process_all_available(timeout=60)
        assert not query.is_active
        logged = table(
            con,
            "SELECT batch_id, start_offset, end_offset, watermark_us, late_threshold_us "
            "FROM _streamsql.offsets WHERE query = 'out' ORDER BY 1",
        )
        assert [(b, json.loads(end)) for b, _, end, *_ in logged] == [
            (-1, {"files": []}),  # where the query started, recorded when it was created
            (0, {"files": ["0.json"]}),
            (1, {"files": ["1.json"]}),
            (2, {"files": ["2.json"]}),
        ]
        assert table(con, "SELECT max(batch_id) FROM _streamsql.commits") == [(1,)]
    failed = DELIVERED[-1]
    assert failed == (2, [{"k": "a", "n": 3, "total": 7}, {"k": "c", "n": 1, "total": 5}])
    # more input arrives while the query is down; the sink is fixed
    put(tmp_path, "3.json", [event("a", 3, 8)])
    put(tmp_path, "4.json", [event("b", 4, 16)])
    FAIL_AT.clear()
    with opened(db_path) as con:
        query = caught_up(con)  # resumed when the database opened: it was running
        replayed, following = query.recent_progress
        assert replayed.batch_id == 2
        assert replayed.sources[0]["start_offset"] == json.loads(logged[3][1])
        assert replayed.sources[0]["end_offset"] == {"files": ["2.json"]}  # not 3.json, 4.json
        assert replayed.num_input_rows == 2
        assert (following.batch_id, following.sources[0]["end_offset"]) == (
            3,
            {"files": ["3.json", "4.json"]},
        )
        assert DELIVERED[-2] == failed  # the same batch id, the same rows
        assert DELIVERED[-1] == (
            3,
            [{"k": "a", "n": 4, "total": 15}, {"k": "b", "n": 2, "total": 19}],
        )
        assert [batch for batch, _ in DELIVERED] == [0, 1, 2, 2, 3]
        assert table(
            con, "SELECT batch_id, input_rows, output_rows FROM _streamsql.commits ORDER BY 1"
        ) == [(0, 1, 1), (1, 2, 2), (2, 2, 2), (3, 2, 2)]


# -- a sink refused when it opens leaves nothing behind -------------------------------------------


def test_a_sink_refused_at_open_leaves_no_checkpoint_behind(db_path: str, tmp_path: Path) -> None:
    with opened(db_path) as con:
        con.execute(source_sql(tmp_path))
        with pytest.raises(streamsql.PlanningError, match="changes-sink-needs-keys"):
            con.execute(
                f"CREATE SINK out WITH (connector = 'parquet', path = '{tmp_path / 'out'}') AS "
                "SELECT count(*) AS n FROM src GROUP BY k EMIT CHANGES"
            )
        assert table(con, "SELECT count(*) FROM _streamsql.metadata") == [(0,)]
        con.execute(
            "CREATE SINK out WITH (connector = 'duckdb') AS "
            "SELECT k, sum(v) AS total FROM src GROUP BY k EMIT CHANGES"
        )
        put(tmp_path, "1.json", [event("a", 0, 5)])
        caught_up(con)
        assert table(con, "SELECT k, total FROM out") == [("a", 5)]


def test_drop_sink_in_another_case_removes_the_checkpoint(db_path: str, tmp_path: Path) -> None:
    create = (
        "CREATE SINK Totals WITH (connector = 'duckdb') AS "
        "SELECT k, sum(v) AS total FROM src GROUP BY k EMIT CHANGES"
    )
    put(tmp_path, "1.json", [event("a", 0, 5)])
    with opened(db_path) as con:
        con.execute(source_sql(tmp_path))
        con.execute(create)
        caught_up(con, "Totals")
        con.execute("DROP SINK totals")
        for name in CHECKPOINT_TABLES:
            assert table(con, f"SELECT count(*) FROM _streamsql.{name}") == [(0,)], name
        assert table(con, "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'") == []
        con.execute(create)
        query = caught_up(con, "Totals")
        assert [p.batch_id for p in query.recent_progress] == [0]
        assert table(con, "SELECT k, total FROM Totals") == [("a", 5)]


def test_the_logs_keep_the_last_batches_and_files_stay_read_once(
    db_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(microbatch, "RETAINED_BATCHES", 5)
    for i in range(23):
        put(tmp_path, f"{i:02d}.json", [event("a", i, v=i)])
    with opened(db_path) as con:
        con.execute(source_sql(tmp_path, options=", max_files_per_trigger = 1"))
        con.execute(
            "CREATE SINK out WITH (connector = 'duckdb') AS "
            "SELECT k, count(*) AS n, sum(v) AS total FROM src GROUP BY k EMIT CHANGES"
        )
        caught_up(con)
        logged = table(con, "SELECT batch_id FROM _streamsql.offsets ORDER BY batch_id")
        committed = table(con, "SELECT batch_id FROM _streamsql.commits ORDER BY batch_id")
        # truncated at batch 20 through batch 15: batches 16..22 stay, 0..15 merged into -1
        assert [b for (b,) in logged] == [-1, *range(16, 23)]
        assert [b for (b,) in committed] == list(range(16, 23))
        (merged,) = table(con, "SELECT end_offset FROM _streamsql.offsets WHERE batch_id = -1")[0]
        assert json.loads(merged) == {"files": [f"{i:02d}.json" for i in range(16)]}
    put(tmp_path, "23.json", [event("a", 23, v=23)])
    with opened(db_path) as con:  # no file is read twice after the logs were cut
        query = caught_up(con)
        assert [p.sources[0]["end_offset"] for p in query.recent_progress] == [
            {"files": ["23.json"]}
        ]
        assert table(con, "SELECT k, n, total FROM out") == [("a", 24, sum(range(24)))]


# -- DROP SINK and CREATE OR REPLACE SINK are all or nothing ---------------------------------------

COUNTS = "SELECT k, count(*) AS n FROM src GROUP BY k EMIT CHANGES"


@pytest.mark.parametrize(
    "left",
    [
        ["DELETE FROM _streamsql.catalog WHERE name = 'out'"],  # catalog row gone first
        [  # ... and the checkpoint: the state table stayed
            "DELETE FROM _streamsql.catalog WHERE name = 'out'",
            *(f"DELETE FROM _streamsql.{t} WHERE query = 'out'" for t in CHECKPOINT_TABLES),
        ],
    ],
    ids=["checkpoint-and-state", "state"],
)
def test_leftovers_of_an_interrupted_drop_are_removed_on_open(
    db_path: str, tmp_path: Path, left: list[str]
) -> None:
    """What a DROP SINK of an earlier version left when killed between its statements: the
    next open says so and removes it, and the sink created again starts over (no doubled
    counts, no checkpoint of another query resumed or refused)."""
    put(tmp_path, "1.json", [event("a", 0), event("a", 0), event("b", 0)])
    with opened(db_path) as con:
        con.execute(source_sql(tmp_path))
        con.execute(f"CREATE SINK out WITH (connector = 'duckdb', table = 'old') AS {COUNTS}")
        caught_up(con)
    raw = duckdb.connect(db_path)
    for sql in left:
        raw.execute(sql)
    raw.close()
    with pytest.warns(UserWarning, match="removed the checkpoint and state of sinks out"):
        con = streamsql.connect(db_path)
    try:
        assert table(con, "SHOW SINKS") == []
        for name in CHECKPOINT_TABLES:
            assert table(con, f"SELECT count(*) FROM _streamsql.{name}") == [(0,)], name
        state = "SELECT table_name FROM duckdb_tables() WHERE schema_name = '_streamsql'"
        assert ("state_out",) not in table(con, state)
        con.execute(  # another query under the name: not refused for the old checkpoint
            "CREATE SINK out WITH (connector = 'duckdb') AS "
            "SELECT k, count(*) AS n, sum(v) AS total FROM src GROUP BY k EMIT CHANGES"
        )
        query = caught_up(con)
        assert [p.batch_id for p in query.recent_progress] == [0]
        assert table(con, "SELECT k, n, total FROM out ORDER BY k") == [("a", 2, 2), ("b", 1, 1)]
    finally:
        con.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left over now
        with opened(db_path) as con:
            caught_up(con)
            assert table(con, "SELECT k, n FROM out ORDER BY k") == [("a", 2), ("b", 1)]


def test_memory_source_rows_of_each_process_are_read_once(db_path: str) -> None:
    """Each connect is a new process's memory source: its rows are all read, once, though
    the checkpoint holds the row count of the one before (which said nothing of them)."""
    sink = "CREATE SINK out WITH (connector = 'duckdb') AS SELECT x FROM nums"
    for values in [(1, 2, 3), (4, 5, 6), (7, 8, 9, 10)]:
        with opened(db_path) as con:
            con.execute("CREATE SOURCE nums (x INTEGER) WITH (connector = 'memory')")
            con.execute(sink)
            con.executemany("INSERT INTO nums VALUES (?)", [(v,) for v in values])
            query = caught_up(con)
            assert sum(p.num_input_rows for p in query.recent_progress) == len(values)
            assert query.last_progress.sources[0]["lag"] == 0
    with opened(db_path) as con:
        assert [x for (x,) in table(con, "SELECT x FROM out ORDER BY x")] == list(range(1, 11))


def test_the_emitted_window_log_keeps_only_the_retained_batches(
    db_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(microbatch, "RETAINED_BATCHES", 5)
    for i in range(23):  # batch N reads minute N + 0.5 and closes the window of minute N - 2
        put(tmp_path, f"{i:02d}.json", [event("a", i + 0.5)])
    with opened(db_path) as con:
        con.execute(source_sql(tmp_path, ", WATERMARK FOR ts AS ts", ", max_files_per_trigger = 1"))
        con.execute(
            "CREATE SINK out WITH (connector = 'duckdb', changelog = true) AS "
            "SELECT window_start, count(*) AS n FROM src "
            "WINDOW TUMBLING (ts, INTERVAL '1 minute') GROUP BY window_start EMIT FINAL"
        )
        caught_up(con)
        # truncated at batch 20 through batch 15: the windows batches 16..23 emitted stay
        # (23: the no-data batch after the last file)
        logged = table(con, "SELECT batch_id FROM _streamsql.emitted_windows ORDER BY batch_id")
        assert [b for (b,) in logged] == list(range(16, 24))
        retained = table(con, "SELECT min(batch_id) FROM _streamsql.offsets WHERE batch_id >= 0")
        assert retained == [(16,)]
    put(tmp_path, "23.json", [event("a", 23.5)])
    with opened(db_path) as con:  # resumed on the pruned log: every window once, in order
        caught_up(con)
        emitted = table(con, "SELECT window_start, n, _batch_id FROM out ORDER BY window_start")
        # batch 24 reads 23.json, the no-data batch 25 closes its minute 22
        assert emitted == [(at(minute), 1, minute + 2) for minute in range(22)] + [(at(22), 1, 25)]
