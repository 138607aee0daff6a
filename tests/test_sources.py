"""Sources: rows inserted into memory sources, and directories of JSON, CSV and Parquet files.

Every test runs real queries on a DuckDB file in tmp_path and reads what the sink wrote,
the progress records, or the dead-letter table.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streamsql
from streamsql.runtime.query import StreamingQuery

T0 = dt.datetime(2024, 1, 1)
EVENTS = "CREATE SOURCE ev (k VARCHAR, ts TIMESTAMP, v DOUBLE) WITH (connector = 'memory'{opts})"
COPY_SINK = "CREATE SINK out WITH (connector = 'duckdb') AS SELECT * FROM {source}"
DEAD_LETTERS = (
    'SELECT query, batch_id, source, "partition", "offset", raw, error '
    'FROM _streamsql.dead_letters ORDER BY "partition", "offset"'
)


def connect(tmp_path: Path, trigger: str | None = None) -> streamsql.Connection:
    return streamsql.connect(str(tmp_path / "engine.db"), trigger=trigger)


@pytest.fixture
def con(tmp_path: Path) -> Iterator[streamsql.Connection]:
    connection = connect(tmp_path)
    yield connection
    connection.close()


@pytest.fixture
def now(tmp_path: Path) -> Iterator[streamsql.Connection]:
    """An engine whose queries process what is there, then stop (trigger available_now)."""
    connection = connect(tmp_path, trigger="available_now")
    yield connection
    connection.close()


def put(directory: Path, name: str, data: str | bytes | pa.Table) -> Path:
    """Make a file appear whole, as the files source expects: write a hidden file, rename it."""
    directory.mkdir(parents=True, exist_ok=True)
    hidden = directory / f".{name}.partial"
    if isinstance(data, pa.Table):
        pq.write_table(data, hidden)
    else:
        hidden.write_bytes(data.encode() if isinstance(data, str) else data)
    final = directory / name
    os.replace(hidden, final)
    return final


def files_source(
    con: streamsql.Connection, directory: Path, columns: str, fmt: str = "json", **options: object
) -> None:
    extra = "".join(f", {key} = '{value}'" for key, value in options.items())
    con.execute(
        f"CREATE SOURCE src ({columns}) WITH (connector = 'files', path = '{directory}', "
        f"format = '{fmt}'{extra})"
    )


def read_files(
    now: streamsql.Connection,
    tmp_path: Path,
    files: dict[str, str | bytes | pa.Table],
    columns: str,
    fmt: str = "json",
    **options: object,
) -> StreamingQuery:
    """Put the files in a directory and copy them through a files source into `out`."""
    directory = tmp_path / "in"
    for name, data in files.items():
        put(directory, name, data)
    files_source(now, directory, columns, fmt, **options)
    return run_to_end(now, COPY_SINK.format(source="src"))


def run_to_end(con: streamsql.Connection, sql: str, name: str = "out") -> StreamingQuery:
    """Create a sink on an available_now engine and wait until its query has stopped."""
    con.execute(sql)
    query = con.query(name)
    assert query.await_termination(30) is True
    return query


def caught_up(con: streamsql.Connection, name: str = "out") -> StreamingQuery:
    query = con.query(name)
    query.process_all_available(timeout=30)
    return query


def rows(
    con: streamsql.Connection, sql: str, params: list[object] | None = None
) -> list[tuple[object, ...]]:
    return con.execute(sql, params).fetchall()


# -- memory source: INSERT ---------------------------------------------------------------------


def test_insert_values_reports_rowcount_and_rows_reach_the_query(
    con: streamsql.Connection,
) -> None:
    con.execute(EVENTS.format(opts=""))
    con.execute(COPY_SINK.format(source="ev"))
    cursor = con.execute(
        "INSERT INTO ev VALUES ('a', TIMESTAMP '2024-01-01 00:00:00', 1.5), "
        "('b', TIMESTAMP '2024-01-01 00:00:05', NULL), (NULL, NULL, -2.0)"
    )
    assert cursor.rowcount == 3
    query = caught_up(con)
    assert rows(con, "SELECT k, ts, v FROM out") == [
        ("a", T0, 1.5),
        ("b", T0 + dt.timedelta(seconds=5), None),
        (None, None, -2.0),
    ]
    assert sum(p.num_input_rows for p in query.recent_progress) == 3


def test_insert_with_column_list_sets_only_the_named_columns(con: streamsql.Connection) -> None:
    con.execute(EVENTS.format(opts=""))
    con.execute(COPY_SINK.format(source="ev"))
    cursor = con.execute("INSERT INTO ev (v, k) VALUES (2.5, 'x'), (3.5, 'y')")
    assert cursor.rowcount == 2
    caught_up(con)
    assert rows(con, "SELECT k, ts, v FROM out ORDER BY k") == [
        ("x", None, 2.5),
        ("y", None, 3.5),
    ]


def test_insert_casts_values_to_the_declared_column_types(con: streamsql.Connection) -> None:
    con.execute("CREATE SOURCE typed (n BIGINT, ts TIMESTAMP, s VARCHAR) WITH (connector='memory')")
    con.execute(COPY_SINK.format(source="typed"))
    con.execute("INSERT INTO typed VALUES ('42', '2024-01-01 00:00:07', 17)")
    caught_up(con)
    assert rows(con, "SELECT n, ts, s FROM out") == [(42, T0 + dt.timedelta(seconds=7), "17")]
    assert [d[1] for d in con.execute("SELECT n, ts, s FROM out").description] == [
        "BIGINT",
        "TIMESTAMP",
        "VARCHAR",
    ]


def test_executemany_appends_one_row_per_parameter_set(con: streamsql.Connection) -> None:
    con.execute(EVENTS.format(opts=""))
    con.execute(COPY_SINK.format(source="ev"))
    params = [
        ("a", "2024-01-01 00:00:00", 1.0),
        ("b", T0 + dt.timedelta(minutes=1), 2),
        ("c", None, None),
    ]
    cursor = con.executemany("INSERT INTO ev VALUES (?, ?, ?)", params)
    assert cursor.rowcount == 3
    caught_up(con)
    assert rows(con, "SELECT k, ts, v FROM out ORDER BY k") == [
        ("a", T0, 1.0),
        ("b", T0 + dt.timedelta(minutes=1), 2.0),
        ("c", None, None),
    ]


def test_insert_select_from_a_registered_arrow_table(con: streamsql.Connection) -> None:
    con.execute(EVENTS.format(opts=""))
    con.execute(COPY_SINK.format(source="ev"))
    table = pa.table(
        {
            "k": ["a", None, "c"],
            "ts": pa.array([T0, None, T0 + dt.timedelta(hours=1)], pa.timestamp("us")),
            "v": [1.0, 2.0, None],
        }
    )
    con.register("arrow_rows", table)
    assert con.execute("INSERT INTO ev SELECT * FROM arrow_rows").rowcount == 3
    # a column subset, from a table registered on another cursor
    other = pa.table({"name": ["d", "e"], "amount": [4, 5]})
    cursor = con.cursor()
    cursor.register("more", other)
    cursor.execute("INSERT INTO ev (k, v) SELECT name, amount FROM more WHERE amount > 4")
    assert cursor.rowcount == 1
    caught_up(con)
    assert rows(con, "SELECT k, ts, v FROM out") == [
        ("a", T0, 1.0),
        (None, None, 2.0),
        ("c", T0 + dt.timedelta(hours=1), None),
        ("e", None, 5.0),
    ]


EVIL = [
    "O'Brien",
    "it''s; DROP TABLE out; --",
    "'); DELETE FROM out; SELECT ('",
    'double "quotes" and \\ backslash',
    "SELECT * FROM ev WHERE 1=1 OR '1'='1'",
    "?",
    "line\nbreak\ttab ünïcödé 🙂",
]


def test_parameter_values_with_quotes_and_sql_are_stored_verbatim(
    con: streamsql.Connection,
) -> None:
    con.execute("CREATE SOURCE notes (id INTEGER, body VARCHAR) WITH (connector = 'memory')")
    con.execute(COPY_SINK.format(source="notes"))
    for i, text in enumerate(EVIL):
        assert con.execute("INSERT INTO notes VALUES (?, ?)", [i, text]).rowcount == 1
    con.executemany(
        "INSERT INTO notes (body, id) VALUES (?, ?)", [(t, 100 + i) for i, t in enumerate(EVIL)]
    )
    caught_up(con)
    stored = rows(con, "SELECT id, body FROM out ORDER BY id")
    assert stored == [(i, t) for i, t in enumerate(EVIL)] + [
        (100 + i, t) for i, t in enumerate(EVIL)
    ]
    assert rows(con, "SELECT count(*) FROM out WHERE body = ?", [EVIL[2]]) == [(2,)]


def test_failed_insert_appends_nothing(con: streamsql.Connection) -> None:
    con.execute("CREATE SOURCE nums (n INTEGER) WITH (connector = 'memory')")
    con.execute(COPY_SINK.format(source="nums"))
    with pytest.raises(streamsql.DataError, match="nums"):
        con.execute("INSERT INTO nums VALUES (1), ('two'), (3)")
    con.execute("INSERT INTO nums VALUES (4)")
    caught_up(con)
    assert rows(con, "SELECT n FROM out") == [(4,)]


def test_insert_naming_an_unknown_column_is_a_programming_error(
    con: streamsql.Connection,
) -> None:
    con.execute(EVENTS.format(opts=""))
    with pytest.raises(streamsql.ProgrammingError, match="nope"):
        con.execute("INSERT INTO ev (k, nope) VALUES ('a', 1)")


def test_insert_into_a_files_source_is_refused(con: streamsql.Connection, tmp_path: Path) -> None:
    files_source(con, tmp_path / "in", "k VARCHAR")
    with pytest.raises(streamsql.ProgrammingError, match="only memory sources"):
        con.execute("INSERT INTO src VALUES ('a')")


# -- memory source: options --------------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["available_now", None])
def test_max_rows_per_trigger_splits_input_into_batches(
    tmp_path: Path, trigger: str | None
) -> None:
    con = connect(tmp_path, trigger=trigger)
    try:
        con.execute(
            "CREATE SOURCE nums (n INTEGER) WITH (connector='memory', max_rows_per_trigger=2)"
        )
        con.execute("INSERT INTO nums SELECT range FROM range(5)")
        con.execute(
            "CREATE SINK out WITH (connector = 'duckdb', changelog = true) AS SELECT n FROM nums"
        )
        query = con.query("out")
        if trigger:
            assert query.await_termination(30)
        else:
            query.process_all_available(timeout=30)
        assert [p.num_input_rows for p in query.recent_progress] == [2, 2, 1]
        assert [p.sources[0]["end_offset"]["rows"] for p in query.recent_progress] == [2, 4, 5]
        assert rows(con, "SELECT n, _batch_id FROM out ORDER BY n") == [
            (0, 0),
            (1, 0),
            (2, 1),
            (3, 1),
            (4, 2),
        ]
    finally:
        con.close()


def test_starting_offsets_latest_skips_rows_inserted_before_the_query(
    con: streamsql.Connection,
) -> None:
    con.execute(
        "CREATE SOURCE late (k VARCHAR) WITH (connector='memory', starting_offsets='latest')"
    )
    con.execute("CREATE SOURCE early (k VARCHAR) WITH (connector = 'memory')")
    for source in ("late", "early"):
        con.execute(f"INSERT INTO {source} VALUES ('before')")
    con.execute("CREATE SINK out_late WITH (connector = 'duckdb') AS SELECT k FROM late")
    con.execute("CREATE SINK out_early WITH (connector = 'duckdb') AS SELECT k FROM early")
    caught_up(con, "out_late")
    caught_up(con, "out_early")
    for source in ("late", "early"):
        con.execute(f"INSERT INTO {source} VALUES ('after')")
    caught_up(con, "out_late")
    caught_up(con, "out_early")
    assert rows(con, "SELECT k FROM out_late") == [("after",)]
    assert rows(con, "SELECT k FROM out_early") == [("before",), ("after",)]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ("max_rows_per_trigger = 0", "max_rows_per_trigger = '0' is not an integer of at least 1"),
        ("max_rows_per_trigger = 'many'", "max_rows_per_trigger = 'many' is not an integer"),
        ("starting_offsets = 'middle'", "starting_offsets"),
        ("on_error = 'ignore'", "on_error = 'ignore' is not one of"),
    ],
)
def test_invalid_memory_source_options_are_refused(
    con: streamsql.Connection, options: str, words: str
) -> None:
    with pytest.raises(streamsql.ProgrammingError, match=words):
        con.execute(f"CREATE SOURCE bad (k VARCHAR) WITH (connector = 'memory', {options})")


def test_refused_source_definition_leaves_no_trace(con: streamsql.Connection) -> None:
    with pytest.raises(streamsql.ProgrammingError):
        con.execute("CREATE SOURCE x (a INTEGER) WITH (connector='memory', max_rows_per_trigger=0)")
    assert rows(con, "SHOW SOURCES") == []
    con.execute("CREATE SOURCE x (a INTEGER) WITH (connector = 'memory')")
    assert con.execute("INSERT INTO x VALUES (1)").rowcount == 1


# -- files source: formats ---------------------------------------------------------------------


def test_json_files_decode_into_the_declared_columns(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    put(
        directory,
        "a.json",
        '{"k": "a", "n": 1, "ts": "2024-01-01 00:00:00", "extra": true}\n'
        '{"n": 2, "k": "b", "ts": "2024-01-01T00:00:05"}\r\n'
        '{"k": null, "n": null}\n',
    )
    files_source(now, directory, "k VARCHAR, n BIGINT, ts TIMESTAMP")
    query = run_to_end(now, COPY_SINK.format(source="src"))
    assert rows(now, "SELECT k, n, ts FROM out") == [
        ("a", 1, T0),
        ("b", 2, T0 + dt.timedelta(seconds=5)),
        (None, None, None),
    ]
    assert query.last_progress.num_input_rows == 3
    assert query.last_progress.num_dead_letters == 0
    assert rows(now, DEAD_LETTERS) == []


@pytest.mark.parametrize(
    ("text", "options"),
    [
        ("k,n,ts\nx,1,2024-01-01 00:00:00\ny,,\n", {}),
        ("n,ts,k\n1,2024-01-01 00:00:00,x\n,,y\n", {}),  # the header maps fields by name
        ("x,1,2024-01-01 00:00:00\ny,,\n", {"header": "false"}),
        ("k;n;ts\nx;1;2024-01-01 00:00:00\ny;;\n", {"delimiter": ";"}),
        ("k,n,ts\r\nx,1,2024-01-01 00:00:00\r\ny,,\r\n", {}),
    ],
    ids=["header", "header-reordered", "no-header", "semicolon", "crlf"],
)
def test_csv_files_decode_with_header_and_delimiter_options(
    now: streamsql.Connection, tmp_path: Path, text: str, options: dict[str, str]
) -> None:
    directory = tmp_path / "in"
    put(directory, "a.csv", text)
    files_source(now, directory, "k VARCHAR, n BIGINT, ts TIMESTAMP", "csv", **options)
    run_to_end(now, COPY_SINK.format(source="src"))
    assert rows(now, "SELECT k, n, ts FROM out") == [("x", 1, T0), ("y", None, None)]
    assert rows(now, DEAD_LETTERS) == []


def test_parquet_files_cast_columns_and_fill_missing_ones_with_null(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    put(
        directory,
        "a.parquet",
        pa.table(
            {
                "n": pa.array([1, 2], pa.int32()),
                "k": ["a", "b"],
                "unused": [0.5, 0.25],
            }
        ),
    )
    files_source(now, directory, "k VARCHAR, n BIGINT, v DOUBLE", "parquet")
    run_to_end(now, COPY_SINK.format(source="src"))
    assert rows(now, "SELECT k, n, v FROM out") == [("a", 1, None), ("b", 2, None)]
    assert [d[1] for d in now.execute("SELECT k, n, v FROM out").description] == [
        "VARCHAR",
        "BIGINT",
        "DOUBLE",
    ]


# -- files source: which files, in which batches ------------------------------------------------


def test_a_file_added_while_the_query_runs_is_picked_up(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    put(directory, "1.json", '{"k": "a"}\n')
    files_source(con, directory, "k VARCHAR")
    con.execute(COPY_SINK.format(source="src"))
    query = caught_up(con)
    assert rows(con, "SELECT k FROM out") == [("a",)]
    put(directory, "2.json", '{"k": "b"}\n{"k": "c"}\n')
    caught_up(con)
    assert rows(con, "SELECT k FROM out") == [("a",), ("b",), ("c",)]
    last = query.last_progress
    assert last.sources[0]["end_offset"] == {"files": ["2.json"]}
    assert last.num_input_rows == 2
    assert query.is_active


def test_files_are_read_in_name_order_one_batch_per_file(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    put(directory, "c.json", '{"k": "c1"}\n')  # written first, read last
    put(directory, "a.json", '{"k": "a1"}\n{"k": "a2"}\n')
    put(directory, "b.json", "")  # an empty file is a batch of its own, with no rows
    files_source(now, directory, "k VARCHAR", max_files_per_trigger=1)
    query = run_to_end(
        now,
        "CREATE SINK out WITH (connector = 'duckdb', changelog = true) AS SELECT k FROM src",
    )
    progress = [
        (p.batch_id, p.sources[0]["end_offset"]["files"], p.num_input_rows)
        for p in query.recent_progress
    ]
    assert progress == [(0, ["a.json"], 2), (1, ["b.json"], 0), (2, ["c.json"], 1)]
    assert rows(now, "SELECT k, _batch_id FROM out ORDER BY k") == [
        ("a1", 0),
        ("a2", 0),
        ("c1", 2),
    ]


def test_hidden_files_and_files_outside_the_pattern_are_ignored(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    put(directory, "a.json", '{"k": "visible"}\n')
    put(directory, ".hidden.json", '{"k": "dot"}\n')
    put(directory, "_SUCCESS.json", '{"k": "underscore"}\n')
    put(directory, "notes.txt", '{"k": "wrong extension"}\n')
    (directory / "sub.json").mkdir()
    put(directory / "sub.json", "inner.json", '{"k": "in a subdirectory"}\n')
    files_source(now, directory, "k VARCHAR", pattern="*.json")
    query = run_to_end(now, COPY_SINK.format(source="src"))
    assert rows(now, "SELECT k FROM out") == [("visible",)]
    assert [p.sources[0]["end_offset"] for p in query.recent_progress] == [{"files": ["a.json"]}]


def test_max_files_per_trigger_limits_files_per_batch(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    for i in range(5):
        put(directory, f"part-{i}.json", "".join(f'{{"n": {i * 10 + j}}}\n' for j in range(i + 1)))
    files_source(now, directory, "n INTEGER", max_files_per_trigger=2)
    query = run_to_end(now, COPY_SINK.format(source="src"))
    assert [p.sources[0]["end_offset"]["files"] for p in query.recent_progress] == [
        ["part-0.json", "part-1.json"],
        ["part-2.json", "part-3.json"],
        ["part-4.json"],
    ]
    assert [p.num_input_rows for p in query.recent_progress] == [3, 7, 5]
    assert rows(now, "SELECT count(*), sum(n) FROM out") == [(15, 420)]


def test_files_read_before_a_restart_are_not_read_again(tmp_path: Path) -> None:
    directory = tmp_path / "in"
    put(directory, "1.json", '{"k": "a"}\n')
    con = connect(tmp_path)
    try:
        files_source(con, directory, "k VARCHAR")
        con.execute(COPY_SINK.format(source="src"))
        caught_up(con)
    finally:
        con.close()
    put(directory, "2.json", '{"k": "b"}\n')
    con = connect(tmp_path)
    try:
        query = caught_up(con)
        assert rows(con, "SELECT k FROM out") == [("a",), ("b",)]
        assert [p.sources[0]["end_offset"] for p in query.recent_progress] == [
            {"files": ["2.json"]}
        ]
    finally:
        con.close()


def test_two_queries_over_one_files_source_each_read_every_file(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    put(directory, "1.json", '{"k": "a"}\n')
    files_source(con, directory, "k VARCHAR")
    con.execute("CREATE SINK one WITH (connector = 'duckdb') AS SELECT k FROM src")
    con.execute("CREATE SINK two WITH (connector = 'duckdb') AS SELECT k FROM src")
    caught_up(con, "one")
    caught_up(con, "two")
    put(directory, "2.json", '{"k": "b"}\n')
    caught_up(con, "one")
    caught_up(con, "two")
    assert rows(con, "SELECT k FROM one ORDER BY k") == [("a",), ("b",)]
    assert rows(con, "SELECT k FROM two ORDER BY k") == [("a",), ("b",)]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ("", "needs path"),
        ("path = '{dir}', format = 'xml'", "format = 'xml' is not one of"),
        ("path = '{dir}', max_files_per_trigger = 0", "max_files_per_trigger = '0' is not an"),
        ("path = '{dir}', on_error = 'retry'", "on_error = 'retry' is not one of"),
        ("path = '{dir}', header = 'yes'", "header = 'yes' is not"),
        ("path = '{dir}', delimiter = ''", "delimiter = '' is not"),
        ("path = '{dir}', delimiter = '\"'", "delimiter = '\"' is not"),
    ],
)
def test_invalid_files_source_options_are_refused(
    con: streamsql.Connection, tmp_path: Path, options: str, words: str
) -> None:
    options = options.format(dir=tmp_path)
    with pytest.raises(streamsql.ProgrammingError, match=words):
        con.execute(
            f"CREATE SOURCE bad (k VARCHAR) WITH (connector = 'files'"
            f"{', ' + options if options else ''})"
        )


# -- files source: bad records -------------------------------------------------------------------

BAD_JSON = (
    '{"k": "a", "n": 1}\n'  # 1
    "\n"  # 2: blank lines count as lines but are not records
    "{not json\n"  # 3
    "[1, 2]\n"  # 4
    '{"k": "b", "n": "many"}\n'  # 5
    '{"k": "c", "ts": "yesterday"}\n'  # 6
    '{"k": "d", "n": 4}\n'  # 7
)


def test_malformed_json_and_wrong_types_go_to_dead_letters_with_file_and_line(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    put(directory, "good.json", '{"k": "g", "n": 0}\n')
    put(directory, "mixed.json", BAD_JSON)
    files_source(now, directory, "k VARCHAR, n BIGINT, ts TIMESTAMP", max_files_per_trigger=1)
    query = run_to_end(now, COPY_SINK.format(source="src"))
    assert rows(now, "SELECT k, n FROM out") == [("g", 0), ("a", 1), ("d", 4)]
    assert [p.num_dead_letters for p in query.recent_progress] == [0, 4]
    assert [p.num_input_rows for p in query.recent_progress] == [1, 2]
    dead = rows(now, DEAD_LETTERS)
    assert [row[:6] for row in dead] == [
        ("out", 1, "src", "mixed.json", 3, b"{not json"),
        ("out", 1, "src", "mixed.json", 4, b"[1, 2]"),
        ("out", 1, "src", "mixed.json", 5, b'{"k": "b", "n": "many"}'),
        ("out", 1, "src", "mixed.json", 6, b'{"k": "c", "ts": "yesterday"}'),
    ]
    errors = [row[6] for row in dead]
    assert "malformed" in errors[0].lower()
    assert "object" in errors[1].lower()
    assert "column n" in errors[2] and "many" in errors[2]
    assert "column ts" in errors[3] and "yesterday" in errors[3]


@pytest.mark.parametrize(("header", "line"), [("true", 3), ("false", 2)])
def test_csv_field_of_the_wrong_type_is_a_dead_letter_at_its_line(
    now: streamsql.Connection, tmp_path: Path, header: str, line: int
) -> None:
    directory = tmp_path / "in"
    text = ("k,n\n" if header == "true" else "") + "x,1\ny,oops\nz,3\n"
    put(directory, "data.csv", text)
    files_source(now, directory, "k VARCHAR, n INTEGER", "csv", header=header)
    query = run_to_end(now, COPY_SINK.format(source="src"))
    assert rows(now, "SELECT k, n FROM out") == [("x", 1), ("z", 3)]
    assert query.last_progress.num_dead_letters == 1
    ((name, batch, source, partition, offset, raw, error),) = rows(now, DEAD_LETTERS)
    assert (name, batch, source, partition, offset) == ("out", 0, "src", "data.csv", line)
    assert b"oops" in raw
    assert "column n" in error


def test_parquet_value_that_does_not_cast_is_a_dead_letter_at_its_row(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    put(directory, "a.parquet", pa.table({"k": ["a", "b", "c"], "n": ["1", "two", "3"]}))
    files_source(now, directory, "k VARCHAR, n BIGINT", "parquet")
    run_to_end(now, COPY_SINK.format(source="src"))
    assert rows(now, "SELECT k, n FROM out") == [("a", 1), ("c", 3)]
    ((*_, partition, offset, raw, error),) = rows(now, DEAD_LETTERS)
    assert (partition, offset) == ("a.parquet", 2)
    assert b"two" in raw
    assert "column n" in error


def test_csv_row_with_wrong_field_count_is_a_dead_letter_at_its_line(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    put(directory, "data.csv", "k,n\nx,1\ny,2,3\n")
    files_source(now, directory, "k VARCHAR, n INTEGER", "csv")
    run_to_end(now, COPY_SINK.format(source="src"))
    assert rows(now, "SELECT k, n FROM out") == [("x", 1)]
    ((*_, partition, offset, raw, _error),) = rows(now, DEAD_LETTERS)
    assert (partition, offset, raw) == ("data.csv", 3, b"y,2,3")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("k,n\nx,1\n\nz,oops\n", 4),
        ("k,n\ny,2,3\nz,oops\n", 3),
        ('k,n\n"two\nlines",1\nz,oops\n', 4),
    ],
    ids=["after-blank-line", "after-malformed-row", "after-multiline-field"],
)
def test_csv_offsets_are_line_numbers_after_irregular_lines(
    now: streamsql.Connection, tmp_path: Path, text: str, line: int
) -> None:
    directory = tmp_path / "in"
    put(directory, "data.csv", text)
    files_source(now, directory, "k VARCHAR, n INTEGER", "csv")
    run_to_end(now, COPY_SINK.format(source="src"))
    offsets = [row[4] for row in rows(now, DEAD_LETTERS) if "oops" in row[6]]
    assert offsets == [line]


def test_csv_dead_letter_keeps_the_line_as_written(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    put(directory, "data.csv", "k,n\ny,oops\n")
    files_source(now, directory, "k VARCHAR, n INTEGER", "csv")
    run_to_end(now, COPY_SINK.format(source="src"))
    assert [row[5] for row in rows(now, DEAD_LETTERS)] == [b"y,oops"]


@pytest.mark.parametrize(
    ("fmt", "text"),
    [("json", '\n{"k": "a", "n": 2.5}\n'), ("csv", "k,n\na,2.5\n")],
    ids=["json", "csv"],
)
def test_fractional_number_for_an_integer_column_is_a_dead_letter(
    now: streamsql.Connection, tmp_path: Path, fmt: str, text: str
) -> None:
    directory = tmp_path / "in"
    put(directory, f"a.{fmt}", text)
    files_source(now, directory, "k VARCHAR, n BIGINT", fmt)
    run_to_end(now, COPY_SINK.format(source="src"))
    assert rows(now, "SELECT k, n FROM out") == []
    assert [(row[3], row[4]) for row in rows(now, DEAD_LETTERS)] == [(f"a.{fmt}", 2)]


def test_on_error_skip_counts_bad_records_but_stores_none(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    put(directory, "mixed.json", BAD_JSON)
    files_source(now, directory, "k VARCHAR, n BIGINT, ts TIMESTAMP", on_error="skip")
    query = run_to_end(now, COPY_SINK.format(source="src"))
    assert rows(now, "SELECT k, n FROM out") == [("a", 1), ("d", 4)]
    assert query.last_progress.num_dead_letters == 4
    assert query.last_progress.num_input_rows == 2
    assert rows(now, DEAD_LETTERS) == []


def test_on_error_fail_stops_the_query_naming_file_and_offset(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    put(directory, "a.json", '{"k": "a"}\n')
    put(directory, "b.json", '{"k": "b"}\n{"k": \n{"k": "c"}\n')
    files_source(now, directory, "k VARCHAR", on_error="fail", max_files_per_trigger=1)
    now.execute(COPY_SINK.format(source="src"))
    query = now.query("out")
    with pytest.raises(streamsql.StreamingQueryError) as caught:
        query.await_termination(30)
    message = str(caught.value)
    assert "b.json" in message
    assert "offset 2" in message
    assert isinstance(caught.value, streamsql.OperationalError)
    assert query.status["message"] == "failed"
    assert query.is_active is False
    assert "b.json" in query.status["error"]
    # the failed batch committed nothing: neither its good rows nor a dead letter
    assert rows(now, "SELECT k FROM out") == [("a",)]
    assert rows(now, DEAD_LETTERS) == []
    assert rows(now, "SELECT batch_id FROM _streamsql.commits WHERE query = 'out'") == [(0,)]


# -- files source: hostile and irregular input (issue 10) -----------------------------------------


def test_csv_reads_only_an_unquoted_empty_field_as_null(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    """Not pyarrow's null list: NA, null, N/A, NaN are values, "" is the empty string."""
    read_files(
        now,
        tmp_path,
        {"a.csv": 'k,v\nNA,NaN\nnull,nan\nN/A,1\n"NA",2\n"",3\n,\n'},
        "k VARCHAR, v DOUBLE",
        "csv",
    )
    assert rows(now, "SELECT k, v::VARCHAR FROM out") == [
        ("NA", "nan"),
        ("null", "nan"),
        ("N/A", "1.0"),
        ("NA", "2.0"),
        ("", "3.0"),
        (None, None),
    ]
    assert rows(now, DEAD_LETTERS) == []


def test_csv_null_value_and_nan_value_options_are_values_not_sql(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    """Spark's nullValue (any column, quoted or not) and nanValue (FLOAT/DOUBLE only)."""
    null = "$nan_value' OR TRUE --"
    text = f'k,v\n{null},-\n"{null}",1\n-,2\nx,\n'
    sql_null = null.replace("'", "''")
    options = {"null_value": sql_null, "nan_value": "-"}
    read_files(now, tmp_path, {"a.csv": text}, "k VARCHAR, v DOUBLE", "csv", **options)
    assert rows(now, "SELECT k, v::VARCHAR FROM out") == [
        (None, "nan"),
        (None, "1.0"),
        ("-", "2.0"),  # nan_value is NaN in a DOUBLE column only
        ("x", None),  # an unquoted empty field stays NULL
    ]


def test_csv_stray_quote_spoils_its_own_line_only_and_every_line_is_accounted_for(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    lines = [
        "k,n",
        'x,"abc,1',  # unbalanced quote: used to swallow the next line
        "y,2",
        'a"b,3',
        '"two',
        'lines",4',
        "z,5",
        '"q,""uoted""",6',
    ]
    read_files(now, tmp_path, {"a.csv": "\n".join(lines) + "\n"}, "k VARCHAR, n INTEGER", "csv")
    accepted = rows(now, "SELECT k, n FROM out")
    assert accepted == [("y", 2), ("z", 5), ('q,"uoted"', 6)]
    dead = rows(now, DEAD_LETTERS)
    assert [(row[4], row[5]) for row in dead] == [
        (2, b'x,"abc,1'),
        (4, b'a"b,3'),
        (5, b'"two'),
        (6, b'lines",4'),
    ]
    # every line of the file is the header, a row's line or a dead letter's raw bytes
    written = {"y,2", "z,5", '"q,""uoted""",6'}
    assert sorted([lines[0], *written, *(row[5].decode() for row in dead)]) == sorted(lines)


@pytest.mark.parametrize(
    ("fmt", "data", "line"),
    [
        ("json", b'{"k": "a"}\n{"k": "b\xff"}\n{"k": "c"}\n', 2),
        ("csv", b"k\na\nb\xff\nc\n", 3),
    ],
    ids=["json", "csv"],
)
def test_invalid_utf8_line_is_a_dead_letter_not_replaced(
    now: streamsql.Connection,
    tmp_path: Path,
    fmt: str,
    data: bytes,
    line: int,
) -> None:
    read_files(now, tmp_path, {f"a.{fmt}": data}, "k VARCHAR", fmt)
    assert rows(now, "SELECT k FROM out") == [("a",), ("c",)]
    ((*_, partition, offset, raw, error),) = rows(now, DEAD_LETTERS)
    assert (partition, offset) == (f"a.{fmt}", line)
    assert raw == data.split(b"\n")[line - 1]
    assert "UTF-8" in error


@pytest.mark.parametrize(
    ("fmt", "first"),
    [
        ("csv", "User_Id,NAME\n7,a\n"),
        ("parquet", pa.table({"User_Id": [7], "NAME": ["a"]})),
    ],
    ids=["csv", "parquet"],
)
def test_file_columns_match_declared_ones_case_insensitively(
    now: streamsql.Connection, tmp_path: Path, fmt: str, first: str | pa.Table
) -> None:
    read_files(now, tmp_path, {f"a.{fmt}": first}, "user_id BIGINT, name VARCHAR", fmt)
    assert rows(now, "SELECT user_id, name FROM out") == [(7, "a")]
    assert rows(now, DEAD_LETTERS) == []


@pytest.mark.parametrize(
    ("fmt", "unrelated"),
    [
        ("csv", "other,columns\n1,2\n"),
        ("parquet", pa.table({"other": [1, 2], "columns": ["x", "y"]})),
    ],
    ids=["csv", "parquet"],
)
def test_file_sharing_no_declared_column_is_a_bad_file_not_null_rows(
    now: streamsql.Connection, tmp_path: Path, fmt: str, unrelated: str | pa.Table
) -> None:
    second = "user_id\n8\n" if fmt == "csv" else pa.table({"user_id": [8]})
    files = {f"a.{fmt}": unrelated, f"b.{fmt}": second}
    read_files(now, tmp_path, files, "user_id BIGINT, name VARCHAR", fmt)
    assert rows(now, "SELECT user_id, name FROM out") == [(8, None)]
    ((*_, partition, offset, raw, error),) = rows(now, DEAD_LETTERS)
    assert (partition, offset, raw) == (f"a.{fmt}", 0, b"")
    assert "a." + fmt in error and "none of the declared" in error


TRUNCATED_PARQUET = b"PAR1\x15\x00\x15"


@pytest.mark.parametrize(
    ("fmt", "files", "expected", "bad"),
    [
        (
            "json",
            {
                "a.json": b'\xef\xbb\xbf{"k": "bom"}\n',
                "b.json": '{"k": "utf16"}\n'.encode("utf-16"),
                "c.json": b'{"k": "c"}\n',
                "d.json": '{"k": "utf16 without a byte-order mark"}\n'.encode("utf-16-le"),
            },
            [("bom",), ("c",)],
            ["b.json", "d.json"],
        ),
        (
            "csv",
            {
                "a.csv": b"",
                "b.csv": b"\xef\xbb\xbfk\nbom\n",
                "c.csv": b"\xff\xfek\x00\n",
                "d.csv": b"k\nd\n",
            },
            [("bom",), ("d",)],
            ["c.csv"],
        ),
        (
            "parquet",
            {
                "a.parquet": TRUNCATED_PARQUET,
                "b.parquet": b"k\nnot parquet\n",
                "c.parquet": pa.table({"k": ["c"]}),
            },
            [("c",)],
            ["a.parquet", "b.parquet"],
        ),
    ],
    ids=["json", "csv", "parquet"],
)
def test_a_file_that_cannot_be_decoded_is_one_dead_letter_and_the_stream_goes_on(
    tmp_path: Path,
    fmt: str,
    files: dict[str, bytes | pa.Table],
    expected: list[tuple[str]],
    bad: list[str],
) -> None:
    now = connect(tmp_path, trigger="available_now")
    query = read_files(now, tmp_path, files, "k VARCHAR", fmt, max_files_per_trigger=1)
    assert query.exception is None
    assert rows(now, "SELECT k FROM out") == expected
    dead = rows(now, DEAD_LETTERS)
    assert [(row[3], row[4], row[5]) for row in dead] == [(name, 0, b"") for name in bad]
    assert all(row[6].startswith(f"cannot read {row[3]} as {fmt}: ") for row in dead)
    now.close()
    # a restart does not stop on the bad files either
    directory = tmp_path / "in"
    last = {"json": '{"k": "z"}\n', "csv": "k\nz\n", "parquet": pa.table({"k": ["z"]})}[fmt]
    put(directory, f"z.{fmt}", last)
    again = connect(tmp_path, trigger="available_now")
    assert again.query("out").await_termination(30) is True
    assert rows(again, "SELECT k FROM out") == [*expected, ("z",)]
    again.close()


def test_undecodable_file_under_on_error_fail_names_the_file(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    put(directory, "broken.parquet", TRUNCATED_PARQUET)
    files_source(now, directory, "k VARCHAR", "parquet", on_error="fail")
    now.execute(COPY_SINK.format(source="src"))
    with pytest.raises(streamsql.StreamingQueryError, match=r"broken\.parquet"):
        now.query("out").await_termination(30)


def test_a_file_changed_after_it_was_read_is_reported(
    con: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    first = put(directory, "1.json", '{"k": "a"}\n')
    files_source(con, directory, "k VARCHAR")
    con.execute(COPY_SINK.format(source="src"))
    query = caught_up(con)
    assert query.last_progress.sources[0]["files_changed_after_read"] == 0
    with first.open("a") as appended:
        appended.write('{"k": "late"}\n')
    put(directory, "2.json", '{"k": "b"}\n')
    caught_up(con)
    assert rows(con, "SELECT k FROM out") == [("a",), ("b",)]
    source = query.last_progress.sources[0]
    assert source["files_changed_after_read"] == 1
    assert any("1.json changed after it was read" in w for w in source["warnings"])


# -- event times out of range (issue 10) ----------------------------------------------------------

WINDOWED = (
    "CREATE SINK out WITH (connector = 'duckdb') AS SELECT window_start, count(*) AS n "
    "FROM src WATERMARK {time} DELAY OF INTERVAL '1 minute' "
    "WINDOW TUMBLING ({time}, INTERVAL '5 minutes') GROUP BY window_start, window_end EMIT FINAL"
)
EXTREME = ["infinity", "294247-01-10 04:00:54", "-infinity", "10000-01-01 00:00:00"]


def test_event_time_out_of_range_from_memory_is_a_dead_letter_not_watermark_input(
    now: streamsql.Connection,
) -> None:
    now.execute("CREATE SOURCE src (k VARCHAR, ts TIMESTAMP) WITH (connector = 'memory')")
    times = ["2024-01-01 00:00:00", *EXTREME, "2024-01-01 00:10:00"]
    now.executemany("INSERT INTO src VALUES (?, ?)", [[str(i), t] for i, t in enumerate(times)])
    query = run_to_end(now, WINDOWED.format(time="ts"))
    assert query.exception is None
    assert rows(now, "SELECT window_start, n FROM out") == [(T0, 1)]
    assert query.recent_progress[0].num_dead_letters == 4
    assert query.recent_progress[0].num_input_rows == 2
    assert query.last_progress.next_watermark == "2024-01-01T00:09:00.000000Z"
    dead = rows(now, DEAD_LETTERS)
    assert [(row[3], row[4]) for row in dead] == [("src", 1), ("src", 2), ("src", 3), ("src", 4)]
    assert dead[0][5] == b'{"k":"1","ts":"infinity"}'
    assert all(
        f"event time ts = {t} is outside 0001-01-01 .. 9999-12-31" in row[6]
        for t, row in zip(EXTREME, dead, strict=True)
    )


def test_computed_event_time_out_of_range_is_a_dead_letter_and_restarts_work(
    tmp_path: Path,
) -> None:
    """The computed column is evaluated in DuckDB (not the Arrow fast path); the bad records
    are dead letters at their file and line, and the query runs again after a restart."""
    directory = tmp_path / "in"
    put(
        directory,
        "a.json",
        '{"t": "2024-01-01 00:00:00"}\n{"t": "infinity"}\n{"t": "2024-01-01 00:10:00"}\n',
    )
    now = connect(tmp_path, trigger="available_now")
    now.execute(
        f"CREATE SOURCE src (t VARCHAR, ts AS CAST(t AS TIMESTAMP)) WITH (connector = 'files', "
        f"path = '{directory}')"
    )
    query = run_to_end(now, WINDOWED.format(time="ts"))
    assert query.exception is None
    assert query.last_progress.next_watermark == "2024-01-01T00:09:00.000000Z"
    ((*_, partition, offset, raw, error),) = rows(now, DEAD_LETTERS)
    assert (partition, offset, raw) == ("a.json", 2, b'{"t": "infinity"}')
    assert "event time ts = infinity is outside" in error
    now.close()
    put(directory, "b.json", '{"t": "2024-01-01 00:20:00"}\n')
    again = connect(tmp_path, trigger="available_now")
    assert again.query("out").await_termination(30) is True
    assert rows(again, "SELECT window_start, n FROM out ORDER BY 1") == [
        (T0, 1),
        (T0 + dt.timedelta(minutes=10), 1),
    ]
    again.close()


def test_event_time_out_of_range_under_on_error_fail_names_file_and_line(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    put(directory, "a.json", '{"ts": "2024-01-01 00:00:00"}\n{"ts": "infinity"}\n')
    files_source(now, directory, "ts TIMESTAMP", on_error="fail")
    now.execute(WINDOWED.format(time="ts"))
    with pytest.raises(streamsql.StreamingQueryError, match=r"a\.json offset 2: event time"):
        now.query("out").await_termination(30)
