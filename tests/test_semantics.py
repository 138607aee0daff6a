"""Semantics of issue 11: event times far in the future, time zones in timestamp strings,
trigger once, sub-millisecond watermark delays, session windows over expressions of their
bounds, query parameters of sinks, and the rules Spark's parsers follow for JSON and CSV.

Each test runs real queries on a DuckDB file in tmp_path and compares what the sink wrote
with what batch SQL (or Spark's documented rule) gives.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kafka import KafkaProducer
from sqlglot.generator import Generator

import streamsql
from streamsql.runtime.query import StreamingQuery
from streamsql.testing.broker import Broker


@pytest.fixture
def now(tmp_path: Path) -> Iterator[streamsql.Connection]:
    """An engine whose queries process what is there, then stop (trigger available_now)."""
    connection = streamsql.connect(str(tmp_path / "engine.db"), trigger="available_now")
    yield connection
    connection.close()


def rows(con: streamsql.Connection, sql: str) -> list[tuple[Any, ...]]:
    return con.execute(sql).fetchall()


def run_to_end(con: streamsql.Connection, sql: str, name: str = "out") -> StreamingQuery:
    """Create a sink on an available_now engine and wait until its query has stopped."""
    con.execute(sql)
    query = con.query(name)
    assert query.await_termination(30) is True
    assert query.exception is None
    return query


# -- item 7: event times after 2262-04-11 in TIMESTAMP_MS / TIMESTAMP_S ---------------------------


@pytest.mark.parametrize("time_type", ["TIMESTAMP_MS", "TIMESTAMP_S"])
def test_event_times_after_2262_in_coarse_timestamps_aggregate_as_batch_sql_does(
    now: streamsql.Connection, time_type: str
) -> None:
    """epoch_us of a TIMESTAMP_MS goes through nanoseconds, which end at 2262-04-11: the
    query failed with "Could not convert Timestamp to higher precision"."""
    now.execute(f"CREATE SOURCE src (k VARCHAR, ts {time_type}) WITH (connector = 'memory')")
    times = ["2300-01-01 00:01:00", "2300-01-01 00:04:00", "2300-01-01 00:30:00"]
    now.executemany("INSERT INTO src VALUES ('a', ?)", [[t] for t in times])
    run_to_end(
        now,
        "CREATE SINK out WITH (connector = 'duckdb') AS SELECT window_start, k, count(*) AS n "
        "FROM src WATERMARK ts DELAY OF INTERVAL '1 minute' "
        "WINDOW TUMBLING (ts, INTERVAL '5 minutes') GROUP BY window_start, k EMIT FINAL",
    )
    assert rows(now, "SELECT * FROM out") == [(dt.datetime(2300, 1, 1), "a", 2)]


# -- item 10: watermark delays below a millisecond ------------------------------------------------


@pytest.mark.parametrize("in_source", [True, False])
def test_a_watermark_delay_below_a_millisecond_is_no_delay_as_in_spark(
    now: streamsql.Connection, in_source: bool
) -> None:
    """Spark keeps the delay in whole milliseconds: 500 microseconds is 0 ms, so the
    watermark after a row at 00:05 is 00:05 and closes the window ending there (the delay
    was kept as 500 us, the watermark was 00:04:59.9995 and the window stayed open)."""
    watermark = ", WATERMARK FOR ts AS ts - INTERVAL '500 microseconds'" if in_source else ""
    now.execute(
        f"CREATE SOURCE src (k VARCHAR, ts TIMESTAMP{watermark}) WITH (connector = 'memory')"
    )
    now.execute(
        "INSERT INTO src VALUES ('a', TIMESTAMP '2024-01-01 00:01:00'), "
        "('a', TIMESTAMP '2024-01-01 00:05:00')"
    )
    in_from = "" if in_source else " WATERMARK ts DELAY OF INTERVAL '500 microseconds'"
    query = run_to_end(
        now,
        "CREATE SINK out WITH (connector = 'duckdb') AS SELECT window_start, count(*) AS n "
        f"FROM src{in_from} WINDOW TUMBLING (ts, INTERVAL '5 minutes') "
        "GROUP BY window_start EMIT FINAL",
    )
    assert query.recent_progress[0].next_watermark == "2024-01-01T00:05:00.000000Z"
    assert rows(now, "SELECT * FROM out") == [(dt.datetime(2024, 1, 1), 1)]


# -- item 9: trigger once reads everything available, whatever the per-trigger limits ------------


def test_trigger_once_reads_every_file_in_one_batch_and_available_now_keeps_the_limit(
    tmp_path: Path,
) -> None:
    """Spark's Trigger.Once runs one batch over everything available; only
    Trigger.AvailableNow respects maxFilesPerTrigger (once read a single file)."""
    directory = tmp_path / "in"
    directory.mkdir()
    for number in range(3):
        (directory / f"{number}.json").write_text(f'{{"k": "k{number}"}}\n')
    con = streamsql.connect(str(tmp_path / "engine.db"))
    try:
        con.execute(
            f"CREATE SOURCE src (k VARCHAR) WITH (connector = 'files', path = '{directory}', "
            "max_files_per_trigger = 1)"
        )
        for name, trigger in (("once", "once"), ("now", "available_now")):
            run_to_end(
                con,
                f"CREATE SINK {name} WITH (connector = 'duckdb', trigger = '{trigger}') "
                "AS SELECT k FROM src",
                name,
            )
        once, now = con.query("once"), con.query("now")
        assert [p.num_input_rows for p in once.recent_progress] == [3]
        assert rows(con, "SELECT k FROM once ORDER BY k") == [("k0",), ("k1",), ("k2",)]
        assert [p.num_input_rows for p in now.recent_progress] == [1, 1, 1]
    finally:
        con.close()


def test_trigger_once_ignores_max_rows_per_trigger(tmp_path: Path) -> None:
    now = streamsql.connect(str(tmp_path / "engine.db"))
    now.execute(
        "CREATE SOURCE src (v BIGINT) WITH (connector = 'memory', max_rows_per_trigger = 2)"
    )
    now.executemany("INSERT INTO src VALUES (?)", [[v] for v in range(5)])
    query = run_to_end(
        now, "CREATE SINK out WITH (connector = 'duckdb', trigger = 'once') AS SELECT v FROM src"
    )
    assert [p.num_input_rows for p in query.recent_progress] == [5]
    assert rows(now, "SELECT count(*) FROM out") == [(5,)]
    now.close()


# -- item 8: a UTC offset in a timestamp string converts to UTC ----------------------------------

OFFSET_TIMES = [
    ("a", "2024-01-01T02:00:00+02:00", dt.datetime(2024, 1, 1, 0, 0)),
    ("b", "2024-01-01 02:00:00", dt.datetime(2024, 1, 1, 2, 0)),  # no offset: UTC
    ("c", "2024-01-01T02:00:00-01:30", dt.datetime(2024, 1, 1, 3, 30)),
    ("d", "2024-01-01T02:00:00Z", dt.datetime(2024, 1, 1, 2, 0)),
]
EXPECTED_UTC = [(k, utc) for k, _, utc in OFFSET_TIMES]


def copied(con: streamsql.Connection, source: str) -> list[tuple[Any, ...]]:
    run_to_end(con, f"CREATE SINK out WITH (connector = 'duckdb') AS SELECT k, ts FROM {source}")
    return rows(con, "SELECT k, ts FROM out ORDER BY k")


@pytest.mark.parametrize("time_type", ["TIMESTAMP", "TIMESTAMP_MS"])
def test_json_file_timestamps_with_an_offset_are_converted_to_utc(
    now: streamsql.Connection, tmp_path: Path, time_type: str
) -> None:
    """Spark converts "2024-01-01T02:00:00+02:00" to 00:00 UTC; the offset was dropped."""
    directory = tmp_path / "in"
    directory.mkdir()
    lines = "".join(f'{{"k": "{k}", "ts": "{text}"}}\n' for k, text, _ in OFFSET_TIMES)
    (directory / "a.json").write_text(lines)
    now.execute(
        f"CREATE SOURCE src (k VARCHAR, ts {time_type}) "
        f"WITH (connector = 'files', path = '{directory}')"
    )
    assert copied(now, "src") == EXPECTED_UTC


def test_csv_file_timestamps_with_an_offset_are_converted_to_utc(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    directory.mkdir()
    lines = "".join(f"{k},{text}\n" for k, text, _ in OFFSET_TIMES)
    (directory / "a.csv").write_text(f"k,ts\n{lines}")
    now.execute(
        f"CREATE SOURCE src (k VARCHAR, ts TIMESTAMP) "
        f"WITH (connector = 'files', path = '{directory}', format = 'csv')"
    )
    assert copied(now, "src") == EXPECTED_UTC


def test_memory_insert_of_timestamp_text_with_an_offset_is_converted_to_utc(
    now: streamsql.Connection,
) -> None:
    now.execute("CREATE SOURCE src (k VARCHAR, ts TIMESTAMP) WITH (connector = 'memory')")
    first, *others = OFFSET_TIMES
    now.execute(f"INSERT INTO src VALUES ('{first[0]}', '{first[1]}')")
    now.executemany("INSERT INTO src VALUES (?, ?)", [[k, text] for k, text, _ in others])
    assert copied(now, "src") == EXPECTED_UTC


def test_kafka_json_and_csv_timestamps_with_an_offset_are_converted_to_utc(
    broker: Broker, now: streamsql.Connection
) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    try:
        for fmt in ("json", "csv"):
            topic = broker.create_topic(1)
            for k, text, _ in OFFSET_TIMES:
                value = f'{{"k": "{k}", "ts": "{text}"}}' if fmt == "json" else f"{k},{text}"
                producer.send(topic, value=value.encode())
            producer.flush()
            now.execute(
                f"CREATE SOURCE src_{fmt} (k VARCHAR, ts TIMESTAMP) WITH (connector = 'kafka', "
                f"bootstrap_servers = '{broker.bootstrap_servers}', topic = '{topic}', "
                f"format = '{fmt}', starting_offsets = 'earliest')"
            )
            run_to_end(
                now,
                f"CREATE SINK out_{fmt} WITH (connector = 'duckdb') AS SELECT k, ts FROM src_{fmt}",
                f"out_{fmt}",
            )
            assert rows(now, f"SELECT k, ts FROM out_{fmt} ORDER BY k") == EXPECTED_UTC
    finally:
        producer.close()


# -- item 13: CREATE SINK with ? parameters ------------------------------------------------------


def test_sink_parameters_are_bound_and_resume_with_the_database(tmp_path: Path) -> None:
    """`CREATE SINK ... WHERE v > ?` failed with "1 parameter(s) and 0 value(s)". The
    values are bound (never pasted into SQL) and stored with the sink in the catalog, with
    their types, so a reopened database resumes the sink with the same values."""
    directory = tmp_path / "in"
    directory.mkdir()
    (directory / "a.json").write_text(
        '{"k": "a", "v": 5, "ts": "2024-01-01 00:00:00"}\n'
        '{"k": "b", "v": 10, "ts": "2024-01-01 00:00:00"}\n'
        '{"k": "x\'; DROP TABLE out; --", "v": 20, "ts": "2024-01-01 00:00:00"}\n'
    )
    database = str(tmp_path / "engine.db")
    con = streamsql.connect(database, trigger="available_now")
    con.execute(
        f"CREATE SOURCE src (k VARCHAR, v BIGINT, ts TIMESTAMP) "
        f"WITH (connector = 'files', path = '{directory}')"
    )
    cursor = con.cursor()
    cursor.execute(
        "CREATE SINK out WITH (connector = 'duckdb') AS SELECT k, v FROM src "
        "WHERE v > ? AND k <> ? AND ts >= ?",
        [6, "x'; DROP TABLE out; --", dt.datetime(2024, 1, 1)],
    )
    assert con.query("out").await_termination(30) is True
    assert rows(con, "SELECT k, v FROM out") == [("b", 10)]
    (stored,) = rows(con, "SELECT parameters FROM _streamsql.catalog WHERE name = 'out'")[0]
    assert stored == [6, "x'; DROP TABLE out; --", dt.datetime(2024, 1, 1)]
    con.close()

    (directory / "b.json").write_text(
        '{"k": "c", "v": 7, "ts": "2024-01-01 00:01:00"}\n'
        '{"k": "d", "v": 6, "ts": "2024-01-01 00:01:00"}\n'
    )
    again = streamsql.connect(database, trigger="available_now")
    try:
        assert again.query("out").await_termination(30) is True
        assert again.query("out").exception is None
        assert rows(again, "SELECT k, v FROM out ORDER BY k") == [("b", 10), ("c", 7)]
    finally:
        again.close()


def test_a_sink_submitted_again_with_other_parameter_values_is_a_changed_sink(
    tmp_path: Path,
) -> None:
    now = streamsql.connect(str(tmp_path / "engine.db"))
    now.execute("CREATE SOURCE src (v BIGINT) WITH (connector = 'memory')")
    sink = "CREATE SINK out WITH (connector = 'duckdb') AS SELECT v FROM src WHERE v > ?"
    now.execute(sink, [1])
    now.execute(sink, [1])  # the same sink: a no-op
    now.execute(f"CREATE OR REPLACE {sink[len('CREATE ') :]}", [3])
    now.executemany("INSERT INTO src VALUES (?)", [[v] for v in range(6)])
    query = now.query("out")
    query.process_all_available(timeout=30)
    assert rows(now, "SELECT v FROM out ORDER BY v") == [(4,), (5,)]
    assert rows(now, "SELECT parameters FROM _streamsql.catalog WHERE name = 'out'") == [([3],)]
    now.close()


# -- item 12: the CSV file sink's view reads every file in the dialect the sink wrote -------------


def test_csv_sink_view_reads_a_quoted_file_after_an_unquoted_one(tmp_path: Path) -> None:
    """read_csv sniffed each file's quote: writing 'a,"q"' after 'x' broke the view
    ("Could not convert string ... to BIGINT"). The dialect is pinned, so every value
    comes back as written, NULL and '' apart, line breaks and quotes included."""
    con = streamsql.connect(str(tmp_path / "engine.db"))
    try:
        con.execute("CREATE SOURCE src (s VARCHAR, n BIGINT) WITH (connector = 'memory')")
        con.execute(
            f"CREATE SINK out WITH (connector = 'csv', path = '{tmp_path / 'out'}') "
            "AS SELECT s, n FROM src"
        )
        query = con.query("out")
        values = [("x", 1), ('a,"q"', 2), ("", 3), (None, 4), ('he said "hi"\nnext', 5)]
        for value in values:  # one batch, one file each
            con.execute("INSERT INTO src VALUES (?, ?)", list(value))
            query.process_all_available(timeout=30)
        assert query.exception is None
        assert len(list((tmp_path / "out").glob("*.csv"))) == len(values)
        assert rows(con, "SELECT s, n FROM out ORDER BY n") == values
    finally:
        con.close()


# -- item 11: session windows with expressions over their bounds in GROUP BY ----------------------

SESSION_TIMES = ["00:00", "00:03", "00:30", "00:32", "01:00"]


@pytest.mark.parametrize("emit", ["FINAL", "SNAPSHOT"])
def test_session_window_groups_by_an_expression_over_its_bounds(
    now: streamsql.Connection, emit: str
) -> None:
    """`GROUP BY ALL` with `window_end - window_start AS dur` failed at sink creation with a
    DuckDB binder error (the expression was grouped on before sessions merged); the same
    query over TUMBLING windows planned. It is computed from each merged session's bounds."""
    now.execute(
        "CREATE SOURCE src (k VARCHAR, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1 minute') "
        "WITH (connector = 'memory')"
    )
    now.executemany(
        "INSERT INTO src VALUES ('a', ?)", [[f"2024-01-01 {t}:00"] for t in SESSION_TIMES]
    )
    run_to_end(
        now,
        "CREATE SINK out WITH (connector = 'duckdb', changelog = true) AS SELECT window_start, "
        "window_end, k, window_end - window_start AS dur, count(*) AS n FROM src "
        f"WINDOW SESSION (ts, INTERVAL '5 minutes') GROUP BY ALL EMIT {emit}",
    )
    minutes = dt.timedelta(minutes=1)
    t0 = dt.datetime(2024, 1, 1)
    expected = [
        (t0, t0 + 8 * minutes, "a", 8 * minutes, 2),
        (t0 + 30 * minutes, t0 + 37 * minutes, "a", 7 * minutes, 2),
    ]
    if emit == "SNAPSHOT":  # every session, the open one included
        expected.append((t0 + 60 * minutes, t0 + 65 * minutes, "a", 5 * minutes, 1))
    last = " WHERE _batch_id = (SELECT max(_batch_id) FROM out)" if emit == "SNAPSHOT" else ""
    got = rows(now, f"SELECT window_start, window_end, k, dur, n FROM out{last} ORDER BY 1")
    assert got == expected


def test_session_bounds_mixed_with_row_columns_in_group_by_are_refused_by_rule(
    now: streamsql.Connection,
) -> None:
    now.execute(
        "CREATE SOURCE src (k VARCHAR, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1 minute') "
        "WITH (connector = 'memory')"
    )
    with pytest.raises(streamsql.Error, match=r"session-bounds-in-group-by"):
        now.execute(
            "CREATE SINK out WITH (connector = 'duckdb') AS SELECT window_start, "
            "k || window_start::VARCHAR AS label, count(*) AS n FROM src "
            "WINDOW SESSION (ts, INTERVAL '5 minutes') GROUP BY window_start, label"
        )


# -- item 14: one rule per type for JSON values, CSV whitespace, duplicate JSON keys --------------

DEAD_LETTERS = 'SELECT "offset", error FROM _streamsql.dead_letters ORDER BY "offset"'


def read_all(con: streamsql.Connection, directory: Path, columns: str, fmt: str) -> None:
    con.execute(
        f"CREATE SOURCE src ({columns}) WITH (connector = 'files', path = '{directory}', "
        f"format = '{fmt}')"
    )
    run_to_end(con, "CREATE SINK out WITH (connector = 'duckdb') AS SELECT * FROM src")


def test_json_values_follow_sparks_rule_for_every_type(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    """Spark's JacksonParser: BOOLEAN takes only true/false (the string "true" and the
    number 1 were accepted while "7" was refused for BIGINT); DOUBLE takes numbers and
    "NaN"/"Infinity"-like strings; DECIMAL numbers and decimal strings; a TIMESTAMP
    strings and whole numbers (epoch seconds); DATE only strings; VARCHAR any value."""
    directory = tmp_path / "in"
    directory.mkdir()
    records = [
        ('{"b": true, "n": 1, "x": 1.5, "m": "2.5", "t": 1704067200, "s": 5}', None),
        ('{"b": "true"}', 'column b: cannot read "true" as BOOLEAN'),
        ('{"b": 1}', "column b: cannot read 1 as BOOLEAN"),
        ('{"n": "7"}', 'column n: cannot read "7" as BIGINT'),
        ('{"x": "-INF", "s": {"a": [1]}}', None),
        ('{"x": "7"}', 'column x: cannot read "7" as DOUBLE'),
        ('{"m": " 7 "}', 'column m: cannot read " 7 " as DECIMAL(9, 2)'),
        ('{"t": true}', "column t: cannot read true as TIMESTAMP"),
        ('{"d": 5}', "column d: cannot read 5 as DATE"),
        ('{"d": "2024-01-02"}', None),
    ]
    (directory / "a.json").write_text("".join(f"{r}\n" for r, _ in records))
    read_all(
        now,
        directory,
        "b BOOLEAN, n BIGINT, x DOUBLE, m DECIMAL(9,2), t TIMESTAMP, s VARCHAR, d DATE",
        "json",
    )
    assert rows(now, "SELECT * FROM out") == [
        (True, 1, 1.5, Decimal("2.50"), dt.datetime(2024, 1, 1), "5", None),
        (None, None, float("-inf"), None, None, '{"a":[1]}', None),
        (None, None, None, None, None, None, dt.date(2024, 1, 2)),
    ]
    assert rows(now, DEAD_LETTERS) == [
        (line, error) for line, (_, error) in enumerate(records, 1) if error
    ]


def test_duplicate_json_keys_take_the_last_value_as_in_spark(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    directory.mkdir()
    (directory / "a.json").write_text(
        '{"k": "first", "v": 1, "k": "last"}\n{"v": 2, "v": null, "k": "x"}\n'
        '{"k": "a", "v": 3, "v": "oops"}\n'
    )
    read_all(now, directory, "k VARCHAR, v BIGINT", "json")
    assert rows(now, "SELECT k, v FROM out") == [("last", 1), ("x", None)]
    assert rows(now, DEAD_LETTERS) == [(3, 'column v: cannot read "oops" as BIGINT')]


def test_csv_fields_with_spaces_are_bad_records_where_sparks_parser_refuses_them(
    now: streamsql.Connection, tmp_path: Path
) -> None:
    """Spark reads CSV with ignoreLeadingWhiteSpace/ignoreTrailingWhiteSpace false: " 7 "
    is not an integer, a DECIMAL or a BOOLEAN (it was read as 7); Java's parseDouble and
    Spark's timestamp parser trim, and text keeps its spaces."""
    directory = tmp_path / "in"
    directory.mkdir()
    (directory / "a.csv").write_text(
        "n,x,b,m,t,s\n"
        "7, 2.5 ,true,1, 2024-01-01 00:00:00 , a \n"
        " 7 ,1,true,1,2024-01-01,b\n"
        "8,1, true,1,2024-01-01,c\n"
        "9,1,true,1.5 ,2024-01-01,d\n"
    )
    read_all(
        now,
        directory,
        "n BIGINT, x DOUBLE, b BOOLEAN, m DECIMAL(9,2), t TIMESTAMP, s VARCHAR",
        "csv",
    )
    assert rows(now, "SELECT * FROM out") == [
        (7, 2.5, True, Decimal("1.00"), dt.datetime(2024, 1, 1), " a ")
    ]
    assert rows(now, DEAD_LETTERS) == [
        (3, "column n: cannot read  7  as BIGINT"),
        (4, "column b: cannot read  true as BOOLEAN"),
        (5, "column m: cannot read 1.5  as DECIMAL(9, 2)"),
    ]


# -- item 14: no source column collides with a column the engine adds -----------------------------

WINDOWS = {
    "tumbling": "TUMBLING (ts, INTERVAL '5 minutes')",
    "hopping": "HOPPING (ts, INTERVAL '10 minutes', INTERVAL '5 minutes')",
    "session": "SESSION (ts, INTERVAL '5 minutes')",
}


@pytest.mark.parametrize("window", sorted(WINDOWS))
@pytest.mark.parametrize("column", ["__ws", "__i"])
def test_a_source_column_named_like_an_internal_one_aggregates_as_batch_sql(
    now: streamsql.Connection, column: str, window: str
) -> None:
    """A source column named `__ws` broke windowed queries (the window start's name)."""
    now.execute(
        f'CREATE SOURCE src (k VARCHAR, "{column}" BIGINT, ts TIMESTAMP, '
        "WATERMARK FOR ts AS ts - INTERVAL '1 minute') WITH (connector = 'memory')"
    )
    now.execute(
        "INSERT INTO src VALUES ('a', 5, TIMESTAMP '2024-01-01 00:00:00'), "
        "('a', 7, TIMESTAMP '2024-01-01 00:01:00')"
    )
    run_to_end(
        now,
        f"CREATE SINK out WITH (connector = 'duckdb') AS SELECT window_start, sum(\"{column}\") "
        f"AS total FROM src WINDOW {WINDOWS[window]} GROUP BY window_start EMIT SNAPSHOT",
    )
    t0 = dt.datetime(2024, 1, 1)
    expected = {
        "tumbling": [(t0, 12)],
        "hopping": [(t0 - dt.timedelta(minutes=5), 12), (t0, 12)],
        "session": [(t0, 12)],
    }[window]
    assert rows(now, "SELECT * FROM out ORDER BY 1") == expected


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_source_columns_named_like_the_decoders_own_are_read(
    now: streamsql.Connection, tmp_path: Path, fmt: str
) -> None:
    """Columns named `offset`, `raw`, `partition` or `__error` shadowed the decoder's:
    rows vanished, or `offset` read the line number."""
    names = ["offset", "raw", "partition", "value", "__error", "__position"]
    directory = tmp_path / "in"
    directory.mkdir()
    values = {name: 10 + i for i, name in enumerate(names)}
    if fmt == "json":
        (directory / "a.json").write_text(json.dumps(values) + "\n")
    elif fmt == "csv":
        header, line = ",".join(names), ",".join(map(str, values.values()))
        (directory / "a.csv").write_text(f"{header}\n{line}\n")
    else:
        pq.write_table(pa.table({name: [v] for name, v in values.items()}), directory / "a.pq")
    read_all(now, directory, ", ".join(f'"{n}" BIGINT' for n in names), fmt)
    assert rows(now, "SELECT * FROM out") == [tuple(values.values())]


def test_internal_prefix_and_window_bound_names_are_refused_with_a_reason(
    now: streamsql.Connection,
) -> None:
    with pytest.raises(streamsql.Error, match=r"'__streamsql_ws' starts with '__streamsql_'"):
        now.execute("CREATE SOURCE bad (__streamsql_ws BIGINT) WITH (connector = 'memory')")
    now.execute(
        "CREATE SOURCE src (window_start BIGINT, ts TIMESTAMP, "
        "WATERMARK FOR ts AS ts - INTERVAL '1 minute') WITH (connector = 'memory')"
    )
    with pytest.raises(streamsql.Error, match=r"window-column-names"):
        now.execute(
            "CREATE SINK out WITH (connector = 'duckdb') AS SELECT window_start, count(*) "
            "AS n FROM src WINDOW TUMBLING (ts, INTERVAL '5 minutes') GROUP BY window_start"
        )


# -- item 6: which WHERE conjuncts Spark pushes below the watermark -------------------------------


@pytest.mark.parametrize(
    ("where", "emitted"),
    [
        # pushed: the 00:30 row of 'b' never reaches the watermark, nothing closes
        ("k = 'a'", []),
        # the conjunct that removes 'b' reads the event time, or is volatile: applied above
        # the watermark, which the 00:30 row moves to 00:20, so the 00:00 window closes in
        # batch 1 with both rows of 'a' (the other conjunct is pushed, and removes nothing)
        ("(k = 'a' OR ts < TIMESTAMP '2023-01-01') AND ts > TIMESTAMP '2023-01-01'", [(1, 2)]),
        ("(k = 'a' OR random() > 2) AND k IS NOT NULL", [(1, 2)]),
        ("(k = 'a' OR abs(abs(random())) > 2) AND k IS NOT NULL", [(1, 2)]),
        ("k = 'a' OR length(gen_random_uuid()::VARCHAR) < 0", [(1, 2)]),
        # a name that is not a call (a string, a column alias) is deterministic: pushed
        ("k = 'a' OR 'random()' = k", []),
    ],
)
def test_only_conjuncts_off_the_event_time_filter_rows_before_the_watermark(
    tmp_path: Path, where: str, emitted: list[tuple[int, int]]
) -> None:
    directory = tmp_path / "in"
    directory.mkdir()
    (directory / "0.json").write_text(
        '{"k": "a", "ts": "2024-01-01 00:00:00"}\n{"k": "b", "ts": "2024-01-01 00:30:00"}\n'
    )
    (directory / "1.json").write_text('{"k": "a", "ts": "2024-01-01 00:01:00"}\n')
    con = streamsql.connect(str(tmp_path / "engine.db"), trigger="available_now")
    try:
        con.execute(
            "CREATE SOURCE src (k VARCHAR, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL "
            f"'10 minutes') WITH (connector = 'files', path = '{directory}', "
            "max_files_per_trigger = 1)"
        )
        run_to_end(
            con,
            "CREATE SINK out WITH (connector = 'duckdb', changelog = true) AS "
            f"SELECT window_start, count(*) AS n FROM src WHERE {where} "
            "WINDOW TUMBLING (ts, INTERVAL '5 minutes') GROUP BY window_start EMIT FINAL",
        )
        assert rows(con, "SELECT _batch_id, n FROM out") == emitted
    finally:
        con.close()


def test_planning_renders_nested_calls_once(
    now: streamsql.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner renders a WHERE of nested calls in text proportional to its length:
    looking for volatile calls by rendering each call apart rendered every inner call
    again (quadratic: a few hundred nested calls took seconds, test_fuzz nests 1000)."""
    rendered = [0]
    generate = Generator.generate

    def counted(self: Generator, expression: Any, copy: bool = True) -> str:
        text = generate(self, expression, copy)
        rendered[0] += len(text)
        return text

    monkeypatch.setattr(Generator, "generate", counted)
    now.execute(
        "CREATE SOURCE src (a INT, ts TIMESTAMP, WATERMARK FOR ts AS ts) "
        "WITH (connector = 'memory')"
    )
    texts = {}
    for depth in (100, 200):
        rendered[0] = 0
        now.execute(
            f"CREATE OR REPLACE SINK out AS SELECT a FROM src WHERE "
            f"{'coalesce(' * depth}a{')' * depth} > 0"
        )
        texts[depth] = rendered[0]
    assert texts[200] < 2.5 * texts[100], texts
