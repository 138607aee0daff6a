"""File sinks (parquet, csv, json) and callback sinks.

Each batch's rows are published as one file named after the batch, recorded in the batch's
commit; readers see exactly the committed rows through the sink's view (and the files listed
in `_manifest.json`), also while compaction rewrites small files into bigger ones.

Rows go into a memory source one INSERT per micro-batch (each followed by
process_all_available), so batch boundaries are known. Tests that reopen the engine read a
`files` source instead: memory rows do not outlive their engine.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

import streamsql
from streamsql.runtime.query import StreamingQuery

T0 = dt.datetime(2024, 1, 1)
EVENTS = (
    "CREATE SOURCE ev (k VARCHAR, ts TIMESTAMP, v BIGINT, "
    "WATERMARK FOR ts AS ts - INTERVAL '1 minute') WITH (connector = 'memory')"
)
EXTENSIONS = {"parquet": "parquet", "csv": "csv", "json": "json"}
READERS = {"parquet": "read_parquet", "csv": "read_csv", "json": "read_json"}
BIG = 2**60  # sums of these are beyond 2^53: a DOUBLE on the way would lose the last digits


@pytest.fixture
def con(db_path: str) -> Iterator[streamsql.Connection]:
    connection = streamsql.connect(db_path)
    connection.execute(EVENTS)
    yield connection
    connection.close()


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def feed(con: streamsql.Connection, rows: list[tuple[str | None, dt.datetime, int]]) -> None:
    """Insert rows as one statement (one micro-batch for a query that is caught up)."""
    placeholders = ", ".join(["(?, ?, ?)"] * len(rows))
    params = [value for row in rows for value in row]
    assert con.execute(f"INSERT INTO ev VALUES {placeholders}", params).rowcount == len(rows)


def caught_up(con: streamsql.Connection, name: str = "out") -> StreamingQuery:
    query = con.query(name)
    query.process_all_available(timeout=60)
    return query


def table(con: streamsql.Connection, sql: str) -> list[tuple[Any, ...]]:
    return con.execute(sql).fetchall()


def manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "_manifest.json").read_text())


def live_files(directory: Path) -> list[str]:
    return manifest(directory)["files"]


def read_files(directory: Path, fmt: str, select: str, order: str) -> list[tuple[Any, ...]]:
    """`select` over the files the manifest lists, read by a DuckDB of our own (as a reader
    outside the engine would)."""
    paths = [str(directory / name) for name in live_files(directory)]
    if not paths:
        return []
    reader = duckdb.connect()
    try:
        reader.execute("SET TimeZone = 'UTC'")
        return reader.execute(
            f"SELECT {select} FROM {READERS[fmt]}(?) ORDER BY {order}", [paths]
        ).fetchall()
    finally:
        reader.close()


def part_name(first: int, last: int, query_id: str, fmt: str = "parquet") -> str:
    return f"part-{first:010d}-{last:010d}-{query_id[:8]}.{EXTENSIONS[fmt]}"


def data_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("part-"))


def put(directory: Path, name: str, rows: list[dict[str, Any]]) -> None:
    """A JSON-lines file appears whole in a files source's directory (written, then renamed)."""
    directory.mkdir(parents=True, exist_ok=True)
    hidden = directory / f".{name}.partial"
    hidden.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(hidden, directory / name)


# -- append: EMIT FINAL windows into parquet, csv and json files ---------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_final_windows_are_read_back_through_the_view_and_the_manifest(
    con: streamsql.Connection, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / "out"
    con.execute(
        f"CREATE SINK out WITH (connector = '{fmt}', path = '{out}') AS "
        "SELECT window_start, window_end, k, count(*) AS n, sum(v) AS total FROM ev "
        "WINDOW TUMBLING (ts, INTERVAL '1 minute') GROUP BY window_start, window_end, k "
        "EMIT FINAL"
    )
    select = "SELECT window_start, window_end, k, n, total FROM out ORDER BY window_start, k"
    feed(con, [("a", at(0.1), BIG + 1), ("b", at(0.2), 7), ("a", at(0.5), BIG + 2)])
    query = caught_up(con)
    assert table(con, select) == []  # watermark 23:59:30: nothing closed yet
    assert live_files(out) == []
    feed(con, [("a", at(2.5), 5)])  # watermark -> 00:01:30 closes [00:00, 00:01)
    caught_up(con)
    first = [(at(0), at(1), "a", 2, 2 * BIG + 3), (at(0), at(1), "b", 1, 7)]
    assert table(con, select) == first
    assert int(float(2 * BIG + 3)) != 2 * BIG + 3  # so a DOUBLE on the way would show
    feed(con, [("c", at(4), 1)])  # watermark -> 00:03:00 closes [00:02, 00:03)
    caught_up(con)
    expected = [*first, (at(2), at(3), "a", 1, 5)]
    assert table(con, select) == expected
    described = con.execute("SELECT * FROM out").description
    assert [(d[0], d[1]) for d in described] == [
        ("window_start", "TIMESTAMP"),
        ("window_end", "TIMESTAMP"),
        ("k", "VARCHAR"),
        ("n", "BIGINT"),
        ("total", "HUGEINT"),
    ]
    # one file per batch that emitted rows, named after the batch and the query's id
    emitting = [p.batch_id for p in query.recent_progress if p.num_output_rows]
    assert len(emitting) == 2
    files = [part_name(b, b, query.id, fmt) for b in emitting]
    assert data_files(out) == files
    assert manifest(out) == {
        "sink": "out",
        "format": EXTENSIONS[fmt],
        "last_batch": emitting[-1],
        "files": files,
    }
    assert list((out / ".staging").iterdir()) == []
    # the same rows, read from the files by someone else
    outside = read_files(
        out, fmt, "window_start::TIMESTAMP, window_end::TIMESTAMP, k, n, total::HUGEINT", "1, 3"
    )
    assert outside == expected
    assert table(
        con, "SELECT file, first_batch, last_batch, rows FROM _streamsql.sink_files ORDER BY 2"
    ) == [(files[0], emitting[0], emitting[0], 2), (files[1], emitting[1], emitting[1], 1)]


def test_parquet_keeps_hugeint_sums_exact_in_the_files(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    con.execute(
        f"CREATE SINK out WITH (connector = 'parquet', path = '{out}') AS "
        "SELECT k, sum(v) AS total FROM ev GROUP BY k EMIT CHANGES"
    )
    feed(con, [("a", at(0), BIG + 1), ("a", at(0), BIG + 2), ("a", at(0), BIG + 4)])
    caught_up(con)
    assert table(con, "SELECT k, total FROM out") == [("a", 3 * BIG + 7)]
    (name,) = live_files(out)
    schema = duckdb.sql(f"DESCRIBE SELECT total FROM read_parquet('{out / name}')").fetchall()
    assert schema[0][1] == "DECIMAL(38,0)"  # not DOUBLE
    assert read_files(out, "parquet", "total::HUGEINT", "1") == [(3 * BIG + 7,)]


@pytest.mark.parametrize("delimiter", [",", "|"])
def test_csv_values_with_delimiters_quotes_and_newlines_roundtrip(
    con: streamsql.Connection, tmp_path: Path, delimiter: str
) -> None:
    out = tmp_path / "out"
    con.execute(
        f"CREATE SINK out WITH (connector = 'csv', path = '{out}', delimiter = '{delimiter}') "
        "AS SELECT k, v FROM ev"
    )
    values = ["a,b", "x|y", 'say "hi"', '"', "line1\nline2", "crlf\r\nend", "it's", " pad ", None]
    feed(con, [(value, at(0), i) for i, value in enumerate(values)])
    caught_up(con)
    feed(con, [("plain", at(1), 100)])
    caught_up(con)
    expected = [*((value, i) for i, value in enumerate(values)), ("plain", 100)]
    assert table(con, "SELECT k, v FROM out ORDER BY v") == expected
    assert len(live_files(out)) == 2
    (header,) = {(out / name).read_text().split("\n")[0] for name in live_files(out)}
    assert header == f"k{delimiter}v"


def test_csv_empty_string_is_not_read_back_as_null(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    con.execute(f"CREATE SINK out WITH (connector = 'csv', path = '{out}') AS SELECT k, v FROM ev")
    feed(con, [("", at(0), 1), (None, at(0), 2)])
    caught_up(con)
    assert table(con, "SELECT k, v FROM out ORDER BY v") == [("", 1), (None, 2)]


# -- EMIT CHANGES, changelog and EMIT SNAPSHOT into files ----------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_changes_view_shows_the_latest_row_per_key_and_files_every_change(
    con: streamsql.Connection, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / "out"
    con.execute(
        f"CREATE SINK out WITH (connector = '{fmt}', path = '{out}') AS "
        "SELECT k, count(*) AS n, sum(v) AS total FROM ev GROUP BY k EMIT CHANGES"
    )
    select = "SELECT k, n, total FROM out ORDER BY k NULLS FIRST"
    feed(con, [("a", at(0), 1), ("b", at(0), 2)])
    caught_up(con)
    assert table(con, select) == [("a", 1, 1), ("b", 1, 2)]
    feed(con, [("a", at(1), 10), ("a", at(1), BIG)])
    caught_up(con)
    assert table(con, select) == [("a", 3, BIG + 11), ("b", 1, 2)]
    feed(con, [(None, at(2), 5), ("b", at(2), 3)])
    query = caught_up(con)
    assert table(con, select) == [(None, 1, 5), ("a", 3, BIG + 11), ("b", 2, 5)]
    assert [d[0] for d in con.execute("SELECT * FROM out").description] == ["k", "n", "total"]
    assert [p.num_output_rows for p in query.recent_progress] == [2, 1, 2]
    assert read_files(out, fmt, "k, n, total::HUGEINT, _batch_id", "_batch_id, k NULLS FIRST") == [
        ("a", 1, 1, 0),
        ("b", 1, 2, 0),
        ("a", 3, BIG + 11, 1),
        (None, 1, 5, 2),
        ("b", 2, 5, 2),
    ]


def test_changelog_view_shows_every_change_with_its_batch_id(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    con.execute(
        f"CREATE SINK out WITH (connector = 'parquet', path = '{out}', changelog = true) AS "
        "SELECT count(*) AS n FROM ev GROUP BY k EMIT CHANGES"  # no key needed: appends
    )
    feed(con, [("a", at(0), 1), ("b", at(0), 1)])
    caught_up(con)
    feed(con, [("a", at(1), 1)])
    caught_up(con)
    assert table(con, "SELECT n, _batch_id FROM out ORDER BY _batch_id, n") == [
        (1, 0),
        (1, 0),
        (2, 1),
    ]
    described = con.execute("SELECT * FROM out").description
    assert [(d[0], d[1]) for d in described] == [("n", "BIGINT"), ("_batch_id", "BIGINT")]
    assert read_files(out, "parquet", "n, _batch_id", "2, 1") == [(1, 0), (1, 0), (2, 1)]


def test_snapshot_view_shows_only_the_latest_snapshot(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    con.execute(
        f"CREATE SINK out WITH (connector = 'json', path = '{out}') AS "
        "SELECT k, sum(v) AS total FROM ev GROUP BY k HAVING sum(v) < 10 EMIT SNAPSHOT"
    )
    select = "SELECT k, total FROM out ORDER BY k"
    feed(con, [("a", at(0), 1), ("b", at(0), 2)])
    query = caught_up(con)
    assert table(con, select) == [("a", 1), ("b", 2)]
    feed(con, [("a", at(1), 20), ("c", at(1), 3)])
    caught_up(con)
    assert table(con, select) == [("b", 2), ("c", 3)]
    assert live_files(out) == [part_name(1, 1, query.id, "json")]
    assert read_files(out, "json", "k, total", "1") == [("b", 2), ("c", 3)]
    # the replaced snapshot stays on disk for the retention period, out of the view
    assert data_files(out) == [part_name(0, 0, query.id, "json"), part_name(1, 1, query.id, "json")]
    feed(con, [("b", at(2), 50), ("c", at(2), 50)])
    caught_up(con)
    assert table(con, select) == []
    assert live_files(out) == []
    assert table(con, "SELECT count(*) FROM _streamsql.sink_files WHERE retired_at IS NULL") == [
        (0,)
    ]


@pytest.mark.parametrize(
    "select",
    [
        "SELECT count(*) AS n FROM ev GROUP BY k EMIT CHANGES",
        "SELECT k, count(*) AS n FROM ev WINDOW TUMBLING (ts, INTERVAL '1 minute') "
        "GROUP BY window_start, k EMIT CHANGES",
    ],
    ids=["group-key", "window"],
)
def test_changes_into_files_without_every_key_is_refused_naming_the_rule(
    con: streamsql.Connection, tmp_path: Path, select: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(streamsql.PlanningError) as caught:
        con.execute(f"CREATE SINK out WITH (connector = 'parquet', path = '{out}') AS {select}")
    assert caught.value.rule == "changes-sink-needs-keys"
    assert "changes-sink-needs-keys" in str(caught.value)
    assert table(con, "SHOW SINKS") == []
    assert table(con, "SHOW QUERIES") == []
    assert not out.exists()


def test_the_view_option_names_the_view_and_paths_may_hold_quotes(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    out = tmp_path / "o'brien's out"
    path = str(out).replace("'", "''")
    con.execute(
        f"CREATE SINK out WITH (connector = 'csv', path = '{path}', view = 'my results') AS "
        "SELECT k, v FROM ev"
    )
    feed(con, [("a", at(0), 1)])
    caught_up(con)
    assert table(con, 'SELECT k, v FROM "my results"') == [("a", 1)]
    assert len(live_files(out)) == 1
    views = "SELECT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = 'main'"
    assert table(con, views) == [("my results",)]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("compact_every = 'x'", "compact_every = 'x' is not an integer of at least 0"),
        ("compact_every = '-1'", "compact_every = '-1' is not an integer of at least 0"),
        ("target_file_size = '12 parsecs'", "target_file_size = '12 parsecs' is not a size"),
        ("retention = 'soon'", "retention = 'soon' is not a duration"),
    ],
)
def test_invalid_file_sink_options_are_refused(
    con: streamsql.Connection, tmp_path: Path, option: str, message: str
) -> None:
    with pytest.raises(streamsql.ProgrammingError, match=re.escape(message)):
        con.execute(
            f"CREATE SINK out WITH (connector = 'parquet', path = '{tmp_path / 'out'}', "
            f"{option}) AS SELECT k, v FROM ev"
        )
    with pytest.raises(streamsql.ProgrammingError, match="needs path"):
        con.execute("CREATE SINK out WITH (connector = 'json') AS SELECT k, v FROM ev")
    assert table(con, "SHOW SINKS") == []


def test_a_view_name_taken_by_a_table_is_refused_with_a_streamsql_error(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    con.execute("CREATE TABLE taken (x INTEGER)")
    with pytest.raises(streamsql.ProgrammingError, match="taken"):
        con.execute(
            f"CREATE SINK out WITH (connector = 'parquet', path = '{tmp_path / 'out'}', "
            "view = 'taken') AS SELECT k, v FROM ev"
        )
    assert table(con, "SHOW SINKS") == []
    assert table(con, "SELECT count(*) FROM taken") == [(0,)]


# -- atomic publish and recovery ------------------------------------------------------------------


def files_pipeline(con: streamsql.Connection, tmp_path: Path, **options: object) -> Path:
    """A files source `src` and a parquet sink `out` copying it; returns the sink's directory."""
    out = tmp_path / "out"
    (tmp_path / "in").mkdir(exist_ok=True)  # a query fails at start on a missing path
    con.execute(
        f"CREATE SOURCE src (k VARCHAR, v BIGINT) WITH (connector = 'files', "
        f"path = '{tmp_path / 'in'}')"
    )
    extra = "".join(f", {key} = '{value}'" for key, value in options.items())
    con.execute(
        f"CREATE SINK out WITH (connector = 'parquet', path = '{out}'{extra}) AS "
        "SELECT k, v FROM src"
    )
    return out


def test_reopening_removes_interrupted_publishes_and_leaves_foreign_files(
    db_path: str, tmp_path: Path
) -> None:
    put(tmp_path / "in", "1.json", [{"k": "a", "v": 1}, {"k": "b", "v": 2}])
    con = streamsql.connect(db_path)
    try:
        out = files_pipeline(con, tmp_path, compact_every=0)
        caught_up(con)
        put(tmp_path / "in", "2.json", [{"k": "c", "v": 3}])
        query = caught_up(con)
        query_id = query.id
    finally:
        con.close()
    ours = [part_name(0, 0, query_id), part_name(1, 1, query_id)]
    assert data_files(out) == ours
    # batch 2 was interrupted: its file staged, or published but never committed
    staged = out / ".staging" / part_name(2, 2, query_id)
    staged.write_bytes(b"PAR1 half a file")
    unrecorded = out / part_name(2, 2, query_id)
    shutil.copy(out / ours[1], unrecorded)
    # a file of another query sharing the directory
    other_id = "0badf00d" if not query_id.startswith("0badf00d") else "1badf00d"
    foreign = out / part_name(0, 0, other_id)
    duckdb.sql(f"COPY (SELECT 'foreign' AS k, 99::BIGINT AS v) TO '{foreign}' (FORMAT parquet)")
    con = streamsql.connect(db_path)
    try:
        assert not staged.exists()
        assert not unrecorded.exists()
        assert foreign.exists()
        assert table(con, "SELECT k, v FROM out ORDER BY v") == [("a", 1), ("b", 2), ("c", 3)]
        put(tmp_path / "in", "3.json", [{"k": "d", "v": 4}])
        query = caught_up(con)
        assert query.id == query_id
        assert query.last_progress.batch_id == 2
        assert table(con, "SELECT k, v FROM out ORDER BY v") == [
            ("a", 1),
            ("b", 2),
            ("c", 3),
            ("d", 4),
        ]
        assert live_files(out) == [*ours, part_name(2, 2, query_id)]
        assert data_files(out) == sorted([*ours, part_name(2, 2, query_id), foreign.name])
        assert read_files(out, "parquet", "k, v", "2") == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
    finally:
        con.close()


def test_a_committed_file_deleted_by_hand_stops_the_sink_naming_the_file(
    db_path: str, tmp_path: Path
) -> None:
    put(tmp_path / "in", "1.json", [{"k": "a", "v": 1}])
    con = streamsql.connect(db_path)
    try:
        out = files_pipeline(con, tmp_path, compact_every=0)
        caught_up(con)
        put(tmp_path / "in", "2.json", [{"k": "b", "v": 2}])
        query_id = caught_up(con).id
    finally:
        con.close()
    deleted = part_name(0, 0, query_id)
    (out / deleted).unlink()
    with pytest.warns(UserWarning, match=rf"Sink out did not resume: .*{deleted}"):
        con = streamsql.connect(db_path)
    try:
        with pytest.raises(streamsql.ProgrammingError):
            con.query("out")
        with pytest.raises(streamsql.OperationalError, match=rf"missing.*first: {deleted}"):
            con.execute(
                f"CREATE SINK out WITH (connector = 'parquet', path = '{out}', "
                "compact_every = '0') AS SELECT k, v FROM src"
            )
        assert data_files(out) == [part_name(1, 1, query_id)]  # nothing else was touched
        assert table(con, "SELECT count(*) FROM _streamsql.commits") == [(2,)]
    finally:
        con.close()


def test_a_new_column_in_a_file_sink_query_is_refused_and_the_query_keeps_running(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    put(tmp_path / "in", "1.json", [{"k": "a", "v": 1}])
    out = files_pipeline(con, tmp_path)
    caught_up(con)
    with pytest.raises(
        streamsql.ProgrammingError, match=r"have columns \(k, v\) but the query emits \(k, v, w\)"
    ):
        con.execute(
            f"CREATE SINK out WITH (connector = 'parquet', path = '{out}') AS "
            "SELECT k, v, v * 2 AS w FROM src"
        )
    put(tmp_path / "in", "2.json", [{"k": "b", "v": 2}])
    caught_up(con)
    assert table(con, "SELECT * FROM out ORDER BY v") == [("a", 1), ("b", 2)]


# -- compaction -----------------------------------------------------------------------------------


def test_compact_every_n_batches_compacts_automatically(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    con.execute(
        f"CREATE SINK out WITH (connector = 'parquet', path = '{out}', compact_every = 3) AS "
        "SELECT k, v FROM ev"
    )
    inserted: list[tuple[str, int]] = []
    counts = []
    for batch in range(7):
        rows = [(f"k{batch}", at(batch), batch * 10 + i) for i in range(batch + 1)]
        feed(con, rows)
        query = caught_up(con)
        inserted += [(k, v) for k, _, v in rows]
        assert table(con, "SELECT k, v FROM out ORDER BY v") == sorted(inserted, key=lambda r: r[1])
        counts.append(len(live_files(out)))
    assert counts == [1, 2, 1, 2, 3, 1, 2]
    assert live_files(out) == [part_name(0, 5, query.id), part_name(6, 6, query.id)]
    assert read_files(out, "parquet", "k, v", "2") == sorted(inserted, key=lambda r: r[1])
    live = "SELECT first_batch, last_batch, rows FROM _streamsql.sink_files "
    assert table(con, live + "WHERE retired_at IS NULL ORDER BY 1") == [(0, 5, 21), (6, 6, 7)]
    # the replaced files are retired, not yet deleted (retention: 1 minute)
    assert table(con, live + "WHERE retired_at IS NOT NULL ORDER BY 1, 2") == [
        (0, 0, 1),
        (0, 2, 6),
        (1, 1, 2),
        (2, 2, 3),
        (3, 3, 4),
        (4, 4, 5),
        (5, 5, 6),
    ]
    assert len(data_files(out)) == 9


def test_compact_sink_on_a_running_and_on_a_stopped_sink(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    con.execute(
        f"CREATE SINK out WITH (connector = 'csv', path = '{out}', compact_every = 0) AS "
        "SELECT k, count(*) AS n, sum(v) AS total FROM ev GROUP BY k EMIT CHANGES"
    )
    select = "SELECT k, n, total FROM out ORDER BY k"
    for batch in range(4):
        feed(con, [("a", at(batch), BIG), (f"k{batch}", at(batch), batch)])
        query = caught_up(con)
    before = table(con, select)
    assert before == [("a", 4, 4 * BIG), ("k0", 1, 0), ("k1", 1, 1), ("k2", 1, 2), ("k3", 1, 3)]
    assert len(live_files(out)) == 4
    compacted = con.execute("COMPACT SINK out")
    assert [d[0] for d in compacted.description] == ["files_replaced", "files_written"]
    assert compacted.fetchall() == [(4, 1)]
    assert table(con, select) == before
    assert live_files(out) == [part_name(0, 3, query.id, "csv")]
    assert query.is_active
    # the query goes on after its compaction
    feed(con, [("a", at(5), 1)])
    caught_up(con)
    feed(con, [("b", at(6), 1)])
    caught_up(con)
    before = table(con, select)
    assert before[0] == ("a", 5, 4 * BIG + 1)
    con.execute("STOP QUERY out")
    assert not query.is_active
    assert table(con, "COMPACT SINK out") == [(3, 1)]
    assert table(con, select) == before
    assert live_files(out) == [part_name(0, 5, query.id, "csv")]
    assert read_files(out, "csv", "_batch_id", "1") == [
        (b,) for b in (0, 0, 1, 1, 2, 2, 3, 3, 4, 5)
    ]
    assert table(con, "COMPACT SINK out") == [(0, 0)]  # nothing left to compact
    assert table(con, "SHOW QUERIES")[0][:2] == ("out", "stopped")
    # started again, the sink goes on from its compacted files
    con.execute(
        f"CREATE SINK out WITH (connector = 'csv', path = '{out}', compact_every = 0) AS "
        "SELECT k, count(*) AS n, sum(v) AS total FROM ev GROUP BY k EMIT CHANGES"
    )
    feed(con, [("a", at(7), 1)])
    restarted = caught_up(con)
    assert restarted.last_progress.batch_id == 6
    assert table(con, select) == [("a", 6, 4 * BIG + 2), *before[1:]]
    assert live_files(out) == [part_name(0, 5, query.id, "csv"), part_name(6, 6, query.id, "csv")]


def test_compaction_leaves_files_of_the_target_size_alone(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    con.execute(
        f"CREATE SINK out WITH (connector = 'parquet', path = '{out}', compact_every = 0, "
        "target_file_size = '8KB') AS SELECT k, v FROM ev"
    )
    rng = random.Random(5)
    noise = [("".join(rng.choices("abcdefghij", k=40)), at(2), i) for i in range(2000)]
    for batch in range(5):
        feed(con, noise if batch == 2 else [(f"small{batch}", at(batch), 10_000 + batch)])
        query = caught_up(con)
    sizes = dict(table(con, "SELECT file, bytes FROM _streamsql.sink_files"))
    big = part_name(2, 2, query.id)
    assert sizes[big] > 8 * 1024
    assert sum(size for name, size in sizes.items() if name != big) < 8 * 1024
    before = table(con, "SELECT k, v FROM out ORDER BY v")
    assert len(before) == 2004
    assert table(con, "COMPACT SINK out") == [(4, 2)]
    assert live_files(out) == [
        part_name(0, 1, query.id),
        big,  # not rewritten
        part_name(3, 4, query.id),
    ]
    assert table(con, f"SELECT bytes FROM _streamsql.sink_files WHERE file = '{big}'") == [
        (sizes[big],)
    ]
    assert table(con, "SELECT k, v FROM out ORDER BY v") == before


@pytest.mark.parametrize(
    ("retention", "kept"),
    [("0 seconds", False), (None, True)],
    ids=["retention-0", "default-1-minute"],
)
def test_replaced_files_are_deleted_after_the_retention(
    con: streamsql.Connection, tmp_path: Path, retention: str | None, kept: bool
) -> None:
    out = tmp_path / "out"
    option = f", retention = '{retention}'" if retention else ""
    con.execute(
        f"CREATE SINK out WITH (connector = 'parquet', path = '{out}', compact_every = 0"
        f"{option}) AS SELECT k, v FROM ev"
    )
    for batch in range(3):
        feed(con, [("a", at(batch), batch)])
        query = caught_up(con)
    replaced = [part_name(b, b, query.id) for b in range(3)]
    assert data_files(out) == replaced
    assert table(con, "COMPACT SINK out") == [(3, 1)]
    compacted = part_name(0, 2, query.id)
    assert live_files(out) == [compacted]
    assert table(con, "SELECT v FROM out ORDER BY v") == [(0,), (1,), (2,)]
    retired = table(
        con, "SELECT file FROM _streamsql.sink_files WHERE retired_at IS NOT NULL ORDER BY 1"
    )
    if kept:  # readers that listed the old files can still read them
        assert data_files(out) == sorted([*replaced, compacted])
        assert retired == [(name,) for name in replaced]
    else:
        assert data_files(out) == [compacted]
        assert retired == []


def test_replaced_files_go_at_the_first_batch_after_the_retention(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    con.execute(
        f"CREATE SINK out WITH (connector = 'parquet', path = '{out}', compact_every = 0, "
        "retention = '1 second') AS SELECT k, v FROM ev"
    )
    for batch in range(2):
        feed(con, [("a", at(batch), batch)])
        query = caught_up(con)
    assert table(con, "COMPACT SINK out") == [(2, 1)]
    assert len(data_files(out)) == 3
    time.sleep(1.2)
    feed(con, [("a", at(3), 3)])
    caught_up(con)
    assert data_files(out) == [part_name(0, 1, query.id), part_name(2, 2, query.id)]
    assert table(con, "SELECT count(*) FROM _streamsql.sink_files") == [(2,)]


def test_compact_sink_needs_a_file_sink(con: streamsql.Connection) -> None:
    con.execute("CREATE SINK out WITH (connector = 'duckdb') AS SELECT k, v FROM ev")
    feed(con, [("a", at(0), 1)])
    query = caught_up(con)
    with pytest.raises(streamsql.ProgrammingError, match="only file sinks can be compacted"):
        con.execute("COMPACT SINK out")
    assert query.is_active  # the query goes on
    feed(con, [("b", at(1), 2)])
    caught_up(con)
    assert table(con, "SELECT k, v FROM out ORDER BY v") == [("a", 1), ("b", 2)]
    with pytest.raises(streamsql.ProgrammingError, match="does not exist"):
        con.execute("COMPACT SINK nothing")


# -- THE acceptance test: compaction under a concurrent reader ---------------------------------


def test_a_concurrent_reader_sees_only_committed_totals_while_the_sink_compacts(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    """Another cursor counts the sink's view in a loop while batches arrive and files are
    compacted (every 3 batches, and by COMPACT SINK): every count it sees is the total of
    some prefix of committed batches, and counts never go down."""
    out = tmp_path / "out"
    con.execute(
        f"CREATE SINK out WITH (connector = 'parquet', path = '{out}', compact_every = 3) AS "
        "SELECT k, v FROM ev WHERE v >= 0"
    )
    batches = 45
    sizes = [1 + (b * 7) % 11 for b in range(batches)]  # rows each batch emits
    totals = {0}
    running = 0
    for size in sizes:
        running += size
        totals.add(running)

    seen: list[tuple[int, int]] = []  # (count, live files) in one snapshot
    errors: list[BaseException] = []
    done = threading.Event()
    read = threading.Condition()

    def reader() -> None:
        cursor = con.cursor()
        try:
            while not done.is_set():
                (count, files) = cursor.execute(
                    "SELECT (SELECT count(*) FROM out), (SELECT count(*) FROM "
                    "_streamsql.sink_files WHERE query = 'out' AND retired_at IS NULL)"
                ).fetchone()
                with read:
                    seen.append((count, files))
                    read.notify_all()
        except BaseException as error:
            with read:
                errors.append(error)
                read.notify_all()
            raise
        finally:
            cursor.close()

    def wait_for_reads(n: int) -> None:
        """Let the reader finish n more reads (all but one begun after this call)."""
        with read:
            target = len(seen) + n
            assert read.wait_for(lambda: len(seen) >= target or errors, timeout=30)
        assert not errors, errors

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        explicit = []
        for batch, size in enumerate(sizes):
            # and one row the query filters out: the output counts are not the input counts
            rows = [(f"k{batch}", at(batch), batch * 100 + i) for i in range(size)]
            feed(con, [*rows, ("neg", at(batch), -1)])
            query = caught_up(con)
            assert query.last_progress.num_output_rows == size
            wait_for_reads(4)
            if batch % 9 == 4:  # three live files then: one compacted, two batches since
                explicit.append(table(con, "COMPACT SINK out")[0])
                wait_for_reads(4)
    finally:
        done.set()
        thread.join(30)
    assert not errors, errors
    assert len(seen) >= 200
    counts = [count for count, _ in seen]
    assert set(counts) <= totals, sorted(set(counts) - totals)
    assert all(a <= b for a, b in itertools.pairwise(counts))
    assert set(counts) == totals - {0} or set(counts) == totals  # every commit was observed
    assert counts[-1] == sum(sizes)
    # compactions happened while the reader was reading: it saw the live files drop
    drops = [i for i in range(1, len(seen)) if seen[i][1] < seen[i - 1][1]]
    assert len(drops) >= 10
    assert explicit == [(3, 1)] * 5
    assert table(con, "SELECT count(*), sum(v) FROM out") == [
        (sum(sizes), sum(b * 100 * s + s * (s - 1) // 2 for b, s in enumerate(sizes)))
    ]


# -- callback sinks -------------------------------------------------------------------------------

RECEIVED: list[tuple[int, pa.Table]] = []


def record_batch(batch_id: int, rows: pa.Table) -> None:
    """A callback sink function, referenced as 'module:function'."""
    RECEIVED.append((batch_id, rows))


def test_a_registered_callback_receives_every_batch_in_order(con: streamsql.Connection) -> None:
    calls: list[tuple[int, pa.Table]] = []
    con.register_callback("collect", lambda batch_id, rows: calls.append((batch_id, rows)))
    con.execute(
        "CREATE SINK out WITH (connector = 'callback', callback = 'collect') AS "
        "SELECT k, sum(v) AS total FROM ev WHERE v > 0 GROUP BY k EMIT CHANGES"
    )
    feed(con, [("a", at(0), 1), ("b", at(0), 2), ("a", at(0), 3)])
    caught_up(con)
    feed(con, [("a", at(1), -5)])  # filtered out: a batch with no rows is passed too
    caught_up(con)
    feed(con, [("b", at(2), BIG)])
    caught_up(con)
    assert [batch_id for batch_id, _ in calls] == [0, 1, 2]
    assert all(isinstance(rows, pa.Table) for _, rows in calls)
    assert [rows.column_names for _, rows in calls] == [["k", "total"]] * 3
    assert [sorted(rows.to_pylist(), key=lambda r: r["k"]) for _, rows in calls] == [
        [{"k": "a", "total": 4}, {"k": "b", "total": 2}],
        [],
        [{"k": "b", "total": BIG + 2}],
    ]


def test_a_module_function_reference_is_imported(con: streamsql.Connection) -> None:
    RECEIVED.clear()
    con.execute(
        f"CREATE SINK out WITH (connector = 'callback', callback = '{__name__}:record_batch') "
        "AS SELECT upper(k) AS k, v FROM ev"
    )
    feed(con, [("a", at(0), 1)])
    caught_up(con)
    feed(con, [("b", at(1), 2), ("c", at(1), 3)])
    caught_up(con)
    assert [(batch_id, rows.to_pylist()) for batch_id, rows in RECEIVED] == [
        (0, [{"k": "A", "v": 1}]),
        (1, [{"k": "B", "v": 2}, {"k": "C", "v": 3}]),
    ]
    for reference, message in [
        ("no_such_function", "no callback registered"),
        ("no_such_module_xyz:f", "cannot import"),
        (f"{__name__}:no_such_function", "cannot import"),
        (f"{__name__}:BIG", "not callable"),
    ]:
        with pytest.raises(streamsql.ProgrammingError, match=message):
            con.execute(
                f"CREATE SINK bad WITH (connector = 'callback', callback = '{reference}') AS "
                "SELECT k FROM ev"
            )
    assert [row[0] for row in table(con, "SHOW SINKS")] == ["out"]


def test_a_failing_callback_stops_the_query_and_its_batch_comes_again_after_a_fix(
    con: streamsql.Connection,
) -> None:
    calls: list[tuple[int, list[dict[str, Any]]]] = []
    broken = {"on": False}

    def callback(batch_id: int, rows: pa.Table) -> None:
        calls.append((batch_id, rows.to_pylist()))
        if broken["on"]:
            raise RuntimeError(f"downstream unavailable at batch {batch_id}")

    con.register_callback("deliver", callback)
    sink = (
        "CREATE SINK out WITH (connector = 'callback', callback = 'deliver') AS "
        "SELECT k, count(*) AS n FROM ev GROUP BY k EMIT CHANGES"
    )
    con.execute(sink)
    feed(con, [("a", at(0), 1)])
    caught_up(con)
    broken["on"] = True
    feed(con, [("a", at(1), 1), ("b", at(1), 1)])
    query = con.query("out")
    with pytest.raises(streamsql.StreamingQueryError, match="downstream unavailable at batch 1"):
        query.process_all_available(timeout=60)
    assert not query.is_active
    assert query.status["message"] == "failed"
    assert isinstance(query.exception, RuntimeError)
    assert table(con, "SELECT max(batch_id) FROM _streamsql.commits") == [(0,)]
    assert table(con, "SELECT max(batch_id) FROM _streamsql.offsets") == [(1,)]
    failed = calls[-1]
    assert failed[0] == 1
    assert sorted(failed[1], key=lambda r: r["k"]) == [{"k": "a", "n": 2}, {"k": "b", "n": 1}]
    # fixed: submitting the same sink again restarts it on the batch that failed
    broken["on"] = False
    con.execute(sink)
    restarted = caught_up(con)
    assert restarted is not query
    assert restarted.id == query.id
    assert calls[-1][0] == 1
    assert sorted(calls[-1][1], key=lambda r: r["k"]) == sorted(failed[1], key=lambda r: r["k"])
    assert [p.batch_id for p in restarted.recent_progress] == [1]
    feed(con, [("b", at(2), 1)])
    caught_up(con)
    assert calls[-1] == (2, [{"k": "b", "n": 2}])  # batch 1 counted once in the state
    assert [batch_id for batch_id, _ in calls] == [0, 1, 1, 2]


def test_two_sinks_cannot_share_a_directory(con: streamsql.Connection, tmp_path: Path) -> None:
    out = files_pipeline(con, tmp_path)
    with pytest.raises(streamsql.ProgrammingError, match="is where sink out writes"):
        con.execute(
            f"CREATE SINK other WITH (connector = 'csv', path = '{out}/../out') AS "
            "SELECT k, v FROM src"
        )
    assert [row[0] for row in con.execute("SHOW SINKS").fetchall()] == ["out"]


# -- a failed write reports its own error ---------------------------------------------------------

SELECT_KV = "SELECT k, v FROM ev"


@pytest.mark.parametrize("failure", ["external-access-off", "staging-is-a-file", "not-null"])
def test_a_write_that_fails_inside_the_batch_reports_its_own_error(
    con: streamsql.Connection, tmp_path: Path, failure: str
) -> None:
    """Not DuckDB's 'transaction is aborted' of a statement after the failed one: the cause.
    The batch rolls back."""
    out = tmp_path / "out"
    if failure == "not-null":
        con.execute("CREATE SINK out WITH (connector = 'duckdb') AS SELECT k, v FROM ev")
        con.execute("ALTER TABLE out ALTER COLUMN k SET NOT NULL")
        expected = "NOT NULL constraint failed"
    else:
        con.execute(f"CREATE SINK out WITH (connector = 'parquet', path = '{out}') AS {SELECT_KV}")
        if failure == "external-access-off":
            con.execute("SET enable_external_access = false")
            expected = "file system operations are disabled"
        else:
            (out / ".staging").rmdir()
            (out / ".staging").write_text("a file where the staging directory was")
            expected = "staging"
    feed(con, [(None, at(0), 1)])
    query = con.query("out")
    with pytest.raises(streamsql.StreamingQueryError, match=expected) as raised:
        query.process_all_available(timeout=30)
    assert "aborted" not in str(raised.value)
    assert expected in str(query.exception)
    assert table(con, "SELECT count(*) FROM _streamsql.commits") == [(0,)]


def test_a_bad_compression_is_named_not_hidden(con: streamsql.Connection, tmp_path: Path) -> None:
    """Refused when the sink is created, or failing its first batch: either way the error
    names the compression, never 'transaction is aborted'."""
    create = (
        f"CREATE SINK out WITH (connector = 'parquet', path = '{tmp_path / 'out'}', "
        f"compression = 'bogus') AS {SELECT_KV}"
    )
    try:
        con.execute(create)
        feed(con, [("a", at(0), 1)])
        con.query("out").process_all_available(timeout=30)
    except streamsql.Error as error:
        assert "compression" in str(error).lower()
        assert "aborted" not in str(error)
    else:
        pytest.fail("a parquet sink wrote with compression 'bogus'")


def test_a_path_that_cannot_be_a_directory_is_refused_naming_it(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    out = tmp_path / "a-file" / "out"
    with pytest.raises(streamsql.OperationalError, match=f"Sink out: cannot create .*{out}"):
        con.execute(f"CREATE SINK out WITH (connector = 'parquet', path = '{out}') AS {SELECT_KV}")
    assert table(con, "SHOW SINKS") == []
