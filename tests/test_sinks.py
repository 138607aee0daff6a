"""Sinks: the duckdb sink keeps the table a user expects for each EMIT mode; console prints.

Rows go into a memory source one INSERT per micro-batch (each followed by
process_all_available), so batch boundaries are known; the sink tables are read back
with plain SQL from the same DuckDB file.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

import streamsql
from streamsql.runtime.query import StreamingQuery

T0 = dt.datetime(2024, 1, 1)
EVENTS = (
    "CREATE SOURCE ev (k VARCHAR, ts TIMESTAMP, v DOUBLE, "
    "WATERMARK FOR ts AS ts - INTERVAL '1 minute') WITH (connector = 'memory')"
)


@pytest.fixture
def con(tmp_path: Path) -> Iterator[streamsql.Connection]:
    connection = streamsql.connect(str(tmp_path / "engine.db"))
    connection.execute(EVENTS)
    yield connection
    connection.close()


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def feed(
    con: streamsql.Connection, rows: list[tuple[str | None, dt.datetime | None, float | None]]
) -> None:
    """Insert rows as one statement (one micro-batch for a query that is caught up)."""
    placeholders = ", ".join(["(?, ?, ?)"] * len(rows))
    params = [value for row in rows for value in row]
    assert con.execute(f"INSERT INTO ev VALUES {placeholders}", params).rowcount == len(rows)


def caught_up(con: streamsql.Connection, *names: str) -> list[StreamingQuery]:
    queries = [con.query(name) for name in names]
    for query in queries:
        query.process_all_available(timeout=30)
    return queries


def table(con: streamsql.Connection, sql: str) -> list[tuple[object, ...]]:
    return con.execute(sql).fetchall()


# -- append: stateless queries and EMIT FINAL ---------------------------------------------------


def test_stateless_query_appends_each_accepted_row_once(con: streamsql.Connection) -> None:
    con.execute(
        "CREATE SINK out WITH (connector = 'duckdb') AS "
        "SELECT upper(k) AS key, v * 10 AS tenfold FROM ev WHERE v > 0"
    )
    feed(con, [("a", at(0), 1.0), ("b", at(0), -1.0)])
    (query,) = caught_up(con, "out")
    feed(con, [("c", at(1), 2.5), ("a", at(2), 3.0)])
    caught_up(con, "out")
    assert table(con, "SELECT key, tenfold FROM out") == [("A", 10.0), ("C", 25.0), ("A", 30.0)]
    assert [p.num_output_rows for p in query.recent_progress] == [1, 2]
    assert [d[0] for d in con.execute("SELECT * FROM out").description] == ["key", "tenfold"]


def test_table_option_names_the_output_table(con: streamsql.Connection) -> None:
    con.execute(
        "CREATE SINK out WITH (connector = 'duckdb', table = 'results') AS SELECT k, v FROM ev"
    )
    feed(con, [("a", at(0), 1.0)])
    caught_up(con, "out")
    assert table(con, "SELECT k, v FROM results") == [("a", 1.0)]
    names = table(con, "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'")
    assert names == [("results",)]


def test_final_windows_are_appended_once_when_the_watermark_closes_them(
    con: streamsql.Connection,
) -> None:
    con.execute(
        "CREATE SINK out WITH (connector = 'duckdb') AS "
        "SELECT window_start, window_end, k, count(*) AS n, sum(v) AS total FROM ev "
        "WINDOW TUMBLING (ts, INTERVAL '1 minute') GROUP BY window_start, window_end, k "
        "EMIT FINAL"
    )
    select = "SELECT window_start, k, n, total FROM out ORDER BY window_start, k"
    feed(con, [("a", at(0.1), 1.0), ("b", at(0.2), 2.0), ("a", at(0.5), 3.0)])
    caught_up(con, "out")
    assert table(con, select) == []  # watermark 23:59:30: nothing closed yet
    feed(con, [("a", at(2.5), 4.0)])  # watermark -> 00:01:30 closes [00:00, 00:01)
    caught_up(con, "out")
    first = [(at(0), "a", 2, 4.0), (at(0), "b", 1, 2.0)]
    assert table(con, select) == first
    feed(con, [("a", at(0.9), 100.0)])  # late for the closed window: dropped, not re-emitted
    (query,) = caught_up(con, "out")
    assert query.last_progress.num_late_rows == 1
    feed(con, [("c", at(4), 5.0)])  # watermark -> 00:03:00 closes [00:02, 00:03)
    caught_up(con, "out")
    assert table(con, select) == [*first, (at(2), "a", 1, 4.0)]
    assert table(con, "SELECT DISTINCT window_end - window_start FROM out") == [
        (dt.timedelta(minutes=1),)
    ]


# -- EMIT CHANGES: upsert on the group key ------------------------------------------------------


def test_changes_upsert_replaces_the_values_of_updated_groups(con: streamsql.Connection) -> None:
    con.execute(
        "CREATE SINK out WITH (connector = 'duckdb', changelog = false) AS "
        "SELECT k, count(*) AS n, sum(v) AS total FROM ev GROUP BY k EMIT CHANGES"
    )
    feed(con, [("a", at(0), 1.0), ("b", at(0), 2.0)])
    caught_up(con, "out")
    assert table(con, "SELECT k, n, total FROM out ORDER BY k") == [("a", 1, 1.0), ("b", 1, 2.0)]
    feed(con, [("a", at(1), 10.0), ("a", at(1), 0.5)])
    (query,) = caught_up(con, "out")
    assert table(con, "SELECT k, n, total FROM out ORDER BY k") == [
        ("a", 3, 11.5),
        ("b", 1, 2.0),
    ]
    assert query.last_progress.num_output_rows == 1  # only the touched group is emitted


def test_changes_upsert_treats_a_null_group_key_as_its_own_group(
    con: streamsql.Connection,
) -> None:
    con.execute(
        "CREATE SINK out WITH (connector = 'duckdb') AS "
        "SELECT k, v > 0 AS positive, count(*) AS n FROM ev GROUP BY k, v > 0 EMIT CHANGES"
    )
    select = "SELECT k, positive, n FROM out ORDER BY k NULLS FIRST, positive NULLS FIRST"
    feed(con, [(None, at(0), 1.0), ("a", at(0), 2.0), ("a", at(0), None)])
    caught_up(con, "out")
    assert table(con, select) == [(None, True, 1), ("a", None, 1), ("a", True, 1)]
    feed(con, [(None, at(1), 3.0), ("a", at(1), None), (None, at(1), None)])
    caught_up(con, "out")
    assert table(con, select) == [
        (None, None, 1),
        (None, True, 2),
        ("a", None, 2),
        ("a", True, 1),
    ]


def test_changes_upsert_keys_on_the_window_and_the_group(con: streamsql.Connection) -> None:
    # no watermark, so no window closes and every row counts
    con.execute("CREATE SOURCE clicks (k VARCHAR, ts TIMESTAMP) WITH (connector = 'memory')")
    con.execute(
        "CREATE SINK out WITH (connector = 'duckdb') AS "
        "SELECT window_start, k, count(*) AS n FROM clicks "
        "WINDOW TUMBLING (ts, INTERVAL '10 minutes') GROUP BY window_start, k EMIT CHANGES"
    )
    con.execute("INSERT INTO clicks VALUES ('a', ?), ('a', ?), ('b', ?)", [at(1), at(12), at(3)])
    caught_up(con, "out")
    con.execute("INSERT INTO clicks VALUES ('a', ?), ('a', ?), ('a', ?)", [at(2), at(13), at(14)])
    (query,) = caught_up(con, "out")
    assert table(con, "SELECT window_start, k, n FROM out ORDER BY window_start, k") == [
        (at(0), "a", 2),
        (at(0), "b", 1),
        (at(10), "a", 3),
    ]
    assert query.last_progress.num_output_rows == 2


@pytest.mark.parametrize(
    "select",
    [
        "SELECT count(*) AS n FROM ev GROUP BY k EMIT CHANGES",
        "SELECT k, count(*) AS n FROM ev WINDOW TUMBLING (ts, INTERVAL '1 minute') "
        "GROUP BY window_start, k EMIT CHANGES",
    ],
    ids=["group-key", "window"],
)
def test_changes_sink_without_every_key_is_refused_naming_the_rule(
    con: streamsql.Connection, select: str
) -> None:
    with pytest.raises(streamsql.PlanningError) as caught:
        con.execute(f"CREATE SINK out WITH (connector = 'duckdb') AS {select}")
    assert caught.value.rule == "changes-sink-needs-keys"
    assert "changes-sink-needs-keys" in str(caught.value)
    assert isinstance(caught.value, streamsql.ProgrammingError)
    assert table(con, "SHOW SINKS") == []
    assert table(con, "SHOW QUERIES") == []
    # appending every change needs no key
    con.execute(f"CREATE SINK log WITH (connector = 'duckdb', changelog = true) AS {select}")
    feed(con, [("a", at(0), 1.0)])
    caught_up(con, "log")
    assert table(con, "SELECT n, _batch_id FROM log") == [(1, 0)]


def test_refused_sink_leaves_no_table_behind(con: streamsql.Connection) -> None:
    with pytest.raises(streamsql.PlanningError):
        con.execute(
            "CREATE SINK out WITH (connector = 'duckdb') AS "
            "SELECT count(*) AS n FROM ev GROUP BY k EMIT CHANGES"
        )
    assert table(con, "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'") == []
    con.execute(
        "CREATE SINK out WITH (connector = 'duckdb') AS "
        "SELECT k, count(*) AS n FROM ev GROUP BY k EMIT CHANGES"
    )
    feed(con, [("a", at(0), 1.0)])
    caught_up(con, "out")
    assert table(con, "SELECT k, n FROM out") == [("a", 1)]


def test_existing_table_with_other_columns_is_refused(con: streamsql.Connection) -> None:
    con.execute("CREATE TABLE taken (x INTEGER)")
    con.execute("INSERT INTO taken VALUES (7)")
    with pytest.raises(streamsql.ProgrammingError, match="taken"):
        con.execute(
            "CREATE SINK out WITH (connector = 'duckdb', table = 'taken') AS SELECT k, v FROM ev"
        )
    assert table(con, "SELECT x FROM taken") == [(7,)]
    assert table(con, "SHOW SINKS") == []


# -- EMIT SNAPSHOT: replace ------------------------------------------------------------------------


def test_snapshot_replaces_the_table_so_vanished_rows_vanish(con: streamsql.Connection) -> None:
    con.execute(
        "CREATE SINK out WITH (connector = 'duckdb') AS "
        "SELECT k, sum(v) AS total FROM ev GROUP BY k HAVING sum(v) < 10 EMIT SNAPSHOT"
    )
    select = "SELECT k, total FROM out ORDER BY k"
    feed(con, [("a", at(0), 1.0), ("b", at(0), 2.0)])
    caught_up(con, "out")
    assert table(con, select) == [("a", 1.0), ("b", 2.0)]
    feed(con, [("a", at(1), 20.0), ("c", at(1), 3.0)])
    (query,) = caught_up(con, "out")
    assert table(con, select) == [("b", 2.0), ("c", 3.0)]
    assert query.last_progress.num_output_rows == 2
    feed(con, [("b", at(2), 50.0), ("c", at(2), 50.0)])
    caught_up(con, "out")
    assert table(con, select) == []


# -- changelog = true: every emission with its batch id -----------------------------------------


def test_changelog_appends_every_emitted_row_with_its_batch_id(
    con: streamsql.Connection,
) -> None:
    con.execute(
        "CREATE SINK out WITH (connector = 'duckdb', changelog = true) AS "
        "SELECT k, count(*) AS n FROM ev GROUP BY k EMIT CHANGES"
    )
    feed(con, [("a", at(0), 1.0), ("b", at(0), 1.0)])
    caught_up(con, "out")
    feed(con, [("a", at(1), 1.0)])
    caught_up(con, "out")
    feed(con, [("a", at(2), 1.0), (None, at(2), 1.0)])
    caught_up(con, "out")
    assert table(con, "SELECT k, n, _batch_id FROM out ORDER BY _batch_id, k NULLS FIRST") == [
        ("a", 1, 0),
        ("b", 1, 0),
        ("a", 2, 1),
        (None, 1, 2),
        ("a", 3, 2),
    ]
    described = con.execute("SELECT * FROM out").description
    assert [(d[0], d[1]) for d in described] == [
        ("k", "VARCHAR"),
        ("n", "BIGINT"),
        ("_batch_id", "BIGINT"),
    ]


def test_changelog_of_a_snapshot_keeps_every_batch_result(con: streamsql.Connection) -> None:
    con.execute(
        "CREATE SINK out WITH (connector = 'duckdb', changelog = true) AS "
        "SELECT k, count(*) AS n FROM ev GROUP BY k EMIT SNAPSHOT"
    )
    feed(con, [("a", at(0), 1.0)])
    caught_up(con, "out")
    feed(con, [("b", at(1), 1.0)])
    caught_up(con, "out")
    assert table(con, "SELECT _batch_id, k, n FROM out ORDER BY _batch_id, k") == [
        (0, "a", 1),
        (1, "a", 1),
        (1, "b", 1),
    ]


# -- console ---------------------------------------------------------------------------------------


def test_console_prints_each_non_empty_batch_as_a_table(
    con: streamsql.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    con.execute("CREATE SINK show WITH (connector = 'console') AS SELECT k, v FROM ev WHERE v > 0")
    feed(con, [("a", at(0), 1.5), ("bb", at(0), 20.0), ("no", at(0), -1.0)])
    (query,) = caught_up(con, "show")
    banner = "-" * 43
    assert capsys.readouterr().out == (
        f"{banner}\nshow batch: 0\n{banner}\n"
        "┌────┬──────┐\n"
        "│ k  │ v    │\n"
        "├────┼──────┤\n"
        "│ a  │  1.5 │\n"
        "│ bb │ 20.0 │\n"
        "└────┴──────┘\n"
        "2 rows\n"
    )
    feed(con, [("c", at(1), -5.0)])  # a batch that emits nothing prints nothing
    caught_up(con, "show")
    assert query.last_progress.batch_id == 1
    assert query.last_progress.num_output_rows == 0
    assert capsys.readouterr().out == ""
    feed(con, [(None, at(2), 3.0)])
    caught_up(con, "show")
    out = capsys.readouterr().out
    assert "show batch: 2\n" in out
    assert "│ NULL │ 3.0 │\n" in out
    assert out.endswith("1 row\n")
    assert table(con, "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'") == []


def test_set_trigger_is_the_trigger_of_sinks_without_one(con: streamsql.Connection) -> None:
    con.execute("SET trigger = '2 seconds'")
    con.execute("CREATE SINK plain WITH (connector = 'duckdb') AS SELECT k FROM ev")
    con.execute("CREATE SINK own WITH (connector = 'duckdb', trigger = 'once') AS SELECT k FROM ev")
    con.execute("SET trigger = available_now")
    con.execute("CREATE SINK later WITH (connector = 'duckdb') AS SELECT k FROM ev")
    triggers = {name: str(con.query(name).trigger) for name in ("plain", "own", "later")}
    assert triggers == {"plain": "2 seconds", "own": "once", "later": "available_now"}
    with pytest.raises(streamsql.ProgrammingError, match="Invalid trigger 'soon'"):
        con.execute("SET trigger = 'soon'")
    con.execute("SET threads = 1")  # other settings are DuckDB's
    assert con.execute("SELECT current_setting('threads')").fetchall() == [(1,)]


def test_a_misspelt_option_is_an_error_naming_it(con: streamsql.Connection) -> None:
    with pytest.raises(streamsql.ProgrammingError, match=r"unknown option 'tigger'.*trigger"):
        con.execute(
            "CREATE SINK s WITH (connector = 'duckdb', tigger = '1 second') AS SELECT k FROM ev"
        )
    with pytest.raises(streamsql.ProgrammingError, match="Source s2: unknown option 'paht'"):
        con.execute("CREATE SOURCE s2 (a INT) WITH (connector = 'files', paht = 'x', path = 'y')")
    assert con.execute("SHOW SINKS").fetchall() == []


# -- a sink owns its table: replaced, dropped, never shared ---------------------------------------

COUNT_BY_KEY = "SELECT k, count(*) AS n FROM ev GROUP BY k EMIT CHANGES"
SUM_BY_KEY = "SELECT k, sum(v) AS n FROM ev GROUP BY k EMIT CHANGES"


@pytest.mark.parametrize("how", ["or-replace", "drop-and-create"])
def test_a_replaced_sink_table_holds_the_new_query_results_only(
    con: streamsql.Connection, how: str
) -> None:
    sink = "CREATE SINK out WITH (connector = 'duckdb', table = 'Results') AS "
    con.execute(sink + COUNT_BY_KEY)
    feed(con, [("a", at(0), 5.0), ("a", at(0), 6.0), ("b", at(0), 7.0)])
    caught_up(con, "out")
    assert table(con, "SELECT k, n FROM results ORDER BY k") == [("a", 2), ("b", 1)]
    if how == "or-replace":
        con.execute(sink.replace("CREATE SINK", "CREATE OR REPLACE SINK") + SUM_BY_KEY)
    else:
        con.execute("DROP SINK out")
        assert table(con, "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'") == []
        con.execute(sink + SUM_BY_KEY)
    feed(con, [("c", at(1), 1.5)])  # the new query reads this process's rows from the start
    caught_up(con, "out")
    assert table(con, "SELECT k, n FROM results ORDER BY k") == [
        ("a", 11.0),
        ("b", 7.0),
        ("c", 1.5),
    ]


RELATIONS = (
    "SELECT sql FROM duckdb_tables() WHERE schema_name = 'main' "
    "UNION ALL SELECT sql FROM duckdb_views() WHERE NOT internal ORDER BY sql"
)


@pytest.mark.parametrize(
    ("first", "second", "relation"),
    [
        ("connector = 'duckdb', table = 'shared'", "connector = 'duckdb', table = 'SHARED'",
         "shared"),
        ("connector = 'duckdb', table = 'shared'", "connector = 'duckdb', table = 'main.shared'",
         "shared"),
        ("connector = 'duckdb'", "connector = 'parquet', path = '{out}', view = 'one'", "one"),
        ("connector = 'parquet', path = '{out}'", "connector = 'csv', path = '{o2}', view = 'One'",
         "one"),
        ("connector = 'parquet', path = '{out}', view = 'v'",
         "connector = 'duckdb', table = 'v'", "v"),
    ],
    ids=["two-tables", "schema-qualified", "view-over-table", "view-over-view", "table-over-view"],
)  # fmt: skip
def test_a_sink_cannot_take_the_table_or_view_of_another(
    con: streamsql.Connection, tmp_path: Path, first: str, second: str, relation: str
) -> None:
    paths = {"out": tmp_path / "out", "o2": tmp_path / "o2"}
    con.execute(f"CREATE SINK one WITH ({first.format(**paths)}) AS SELECT k, v FROM ev")
    feed(con, [("a", at(0), 1.0)])
    caught_up(con, "one")
    before = table(con, RELATIONS)
    with pytest.raises(streamsql.ProgrammingError, match="of sink one"):
        con.execute(f"CREATE SINK two WITH ({second.format(**paths)}) AS SELECT k, v FROM ev")
    assert [row[0] for row in table(con, "SHOW SINKS")] == ["one"]
    assert table(con, RELATIONS) == before
    feed(con, [("b", at(1), 2.0)])
    caught_up(con, "one")
    assert table(con, f"SELECT k, v FROM {relation} ORDER BY k") == [("a", 1.0), ("b", 2.0)]


@pytest.mark.parametrize(
    ("existing", "options"),
    [
        ("CREATE TABLE mine (k VARCHAR, v DOUBLE)", "connector = 'duckdb', table = 'MINE'"),
        ("CREATE VIEW mine AS SELECT 1 AS x", "connector = 'duckdb', table = 'mine'"),
        ("CREATE TABLE mine (x INTEGER)", "connector = 'json', path = '{out}', view = 'mine'"),
    ],
    ids=["table", "view", "file-sink-view"],
)
def test_a_sink_cannot_take_the_place_of_a_table_or_view_of_the_user(
    con: streamsql.Connection, tmp_path: Path, existing: str, options: str
) -> None:
    con.execute(existing)
    before = table(con, RELATIONS)
    with pytest.raises(streamsql.ProgrammingError, match=r"(?i)'mine' exists already"):
        con.execute(
            f"CREATE SINK out WITH ({options.format(out=tmp_path / 'out')}) AS SELECT k, v FROM ev"
        )
    assert table(con, "SHOW SINKS") == []
    assert table(con, RELATIONS) == before
