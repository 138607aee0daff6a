"""Bad SQL gets a clear error that says what and where; nothing escapes as a raw traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from test_aggregates import batch, stream

import streamsql
from streamsql import PlanningError, SQLSyntaxError

ROOT = Path(__file__).resolve().parent.parent

SOURCES = (
    "CREATE SOURCE events (user_id BIGINT, event_type VARCHAR, ts TIMESTAMP, amount DOUBLE, "
    "WATERMARK FOR ts AS ts - INTERVAL '10 minutes') WITH (connector = 'memory')",
    "CREATE SOURCE raw (user_id BIGINT, ts TIMESTAMP) WITH (connector = 'memory')",
    "CREATE TABLE dim (user_id BIGINT, name VARCHAR)",
)
WINDOWED = "SELECT window_start, count(*) FROM {source} WINDOW {window} GROUP BY window_start"


@pytest.fixture
def con() -> Iterator[streamsql.Connection]:
    connection = streamsql.connect()
    for sql in SOURCES:
        connection.execute(sql)
    yield connection
    connection.close()


SYNTAX_ERRORS = [
    (
        "SELECT event_type FROM events GROUP BY event_type\nEMIT NEVER",
        "Expected CHANGES, FINAL, ON WINDOW CLOSE or SNAPSHOT after EMIT",
        (2, 6),
    ),
    (
        "SELECT window_start, count(*) FROM events WINDOW TUMBLING (ts) GROUP BY 1",
        "Expected ', <size interval>' in the WINDOW clause",
        (1, 62),
    ),
    (
        "SELECT * FROM events WATERMARK ts DELAY INTERVAL '1 minute'",
        "Expected DELAY OF <interval>",
        (1, 35),
    ),
    ("SELECT 1;\nSELECT 'unterminated FROM events", "unterminated string", (2, 8)),
    ("SELECT * FROM WHERE", "Expected table name", (1, 15)),
    # a word that starts no statement: not sqlglot's "missing for Mul"
    ("SELEC * FROM events", "unknown statement SELEC", (1, 1)),
    # a missing ';': the SELECT is not a query of the CREATE SOURCE, which wrote no AS
    (
        "CREATE SOURCE s2 (a BIGINT) WITH (connector = 'memory')\nSELECT * FROM events",
        "a ';' is probably missing after the CREATE SOURCE",
        (2, 1),
    ),
    # what sqlglot's lenient parser accepted, DuckDB's parser refuses
    ("SELECT user_id , , amount FROM events", 'syntax error at or near ","', (1, 18)),
    ("SELECT user_id FROM events WHERE amount > > 1", 'syntax error at or near ">"', (1, 43)),
    ("SELECT AS , amount FROM events", 'syntax error at or near "AS"', (1, 8)),
    ("WITH WITH x AS (SELECT 1) SELECT * FROM x", "Expected CTE to have alias", (1, 6)),
    (
        "CREATE SOURCE s (a BIGINT, , v VARCHAR) WITH (connector = 'memory')",
        'in CREATE SOURCE s: syntax error at or near ","',
        (1, 28),
    ),
    (  # the options were dropped silently
        "CREATE SINK k WITH WITH (connector = 'console') AS SELECT * FROM events",
        'in CREATE SINK k: syntax error at or near "("',
        (1, 25),
    ),
    (  # after a clause of ours that DuckDB's parser does not read: still the script's column
        "SELECT count(*) FROM events WINDOW TUMBLING (ts, INTERVAL '5 minutes')\n"
        "GROUP BY window_start,, user_id",
        'syntax error at or near ","',
        (2, 23),
    ),
    (  # after a computed column, which DuckDB reads as `e AS (expr)`
        "CREATE SOURCE c (a BIGINT, e AS a + 1 b, v INT) WITH (connector = 'memory')",
        'syntax error at or near "b"',
        (1, 39),
    ),
    ("SELECT 1 + FROM events", 'syntax error at or near "FROM"', (1, 12)),
]


@pytest.mark.parametrize(("sql", "words", "position"), SYNTAX_ERRORS)
def test_syntax_errors_name_line_column_and_expectation(
    con: streamsql.Connection, sql: str, words: str, position: tuple[int, int]
) -> None:
    with pytest.raises(SQLSyntaxError) as caught:
        con.execute(sql)
    assert words in str(caught.value)
    assert (caught.value.line, caught.value.col) == position
    assert f"line {position[0]}, column {position[1]}" in str(caught.value)
    assert isinstance(caught.value, streamsql.ProgrammingError)


# (sql, rule, words the message contains, where in the query the error points)
PLANNING_ERRORS = [
    ("SELECT count(*) FROM nosuch EMIT CHANGES", None, "Unknown source 'nosuch'", "nosuch"),
    (
        WINDOWED.format(source="events", window="TUMBLING (ts, INTERVAL 'five minutes')"),
        "bad-interval",
        "is not an interval",
        "'five minutes'",
    ),
    (
        WINDOWED.format(source="events", window="TUMBLING (ts, INTERVAL '1 month')"),
        "bad-interval",
        "no fixed length",
        "WINDOW",
    ),
    (
        WINDOWED.format(source="events", window="TUMBLING (ts, INTERVAL '-5 minutes')"),
        "bad-interval",
        "must be positive",
        "WINDOW",
    ),
    (
        WINDOWED.format(
            source="events", window="HOPPING (ts, INTERVAL '5 minutes', INTERVAL '10 minutes')"
        ),
        "bad-interval",
        "slide is larger than its size",
        "WINDOW",
    ),
    (
        WINDOWED.format(source="events", window="TUMBLING (event_type, INTERVAL '5 minutes')"),
        "window-time-column",
        "event_type is VARCHAR, not a TIMESTAMP",
        "event_type,",
    ),
    (
        "SELECT event_type, count(*) FROM events GROUP BY event_type EMIT FINAL",
        "final-needs-window",
        "global aggregation",
        "EMIT",
    ),
    (
        WINDOWED.format(source="raw", window="TUMBLING (ts, INTERVAL '5 minutes')") + " EMIT FINAL",
        "windowed-final-needs-watermark",
        "needs a watermark",
        "EMIT",
    ),
    (
        WINDOWED.format(source="raw", window="TUMBLING (ts, INTERVAL '5 minutes')"),
        "windowed-final-needs-watermark",
        "state would grow without bound",
        "WINDOW",
    ),
    (
        "SELECT event_type, median(amount) FROM events GROUP BY event_type",
        "unmergeable-aggregate",
        "do not merge exactly",
        "median",
    ),
    (
        "SELECT event_type, sum(DISTINCT amount) FROM events GROUP BY event_type",
        "unmergeable-aggregate",
        "DISTINCT is only supported in count(DISTINCT x)",
        "sum(",
    ),
    (
        "SELECT event_type, count(*) AS n FROM events GROUP BY event_type ORDER BY n DESC",
        "order-limit-needs-snapshot",
        "use them with EMIT SNAPSHOT",
        "n DESC",
    ),
    (
        "SELECT count(*) FROM events WINDOW TUMBLING (ts, INTERVAL '5 minutes') "
        "GROUP BY event_type",
        "window-group-by",
        "must GROUP BY window_start",
        "event_type",
    ),
    ("SELECT * FROM events EMIT SNAPSHOT", "snapshot-needs-aggregation", "aggregation", "EMIT"),
    (
        "SELECT count(*) FROM events e JOIN raw r ON e.user_id = r.user_id",
        "chained-operators-append-only",
        "A global aggregation (its groups never close, so it emits CHANGES) over the rows",
        "count(*)",
    ),
    (
        "SELECT * FROM events e FULL JOIN dim d ON e.user_id = d.user_id",
        "stream-static-outer-join",
        "FULL JOIN with the stream on the left: Spark refuses it too",
        "dim d",
    ),
    (
        "SELECT * FROM (SELECT user_id, count(*) AS n FROM events GROUP BY user_id) AS c",
        "chained-operators-append-only",
        "A global aggregation below another operator must emit each row once",
        "user_id) AS c",
    ),
    (
        "SELECT * FROM events WHERE user_id IN (SELECT user_id FROM dim)",
        "subquery-expression",
        "Subqueries in expressions",
        "user_id FROM dim",
    ),
    (
        "SELECT user_id, sum(amount) OVER (PARTITION BY user_id) FROM events",
        "window-function",
        "Window functions (OVER)",
        "sum(",
    ),
    ("SELECT nope, count(*) FROM events GROUP BY nope", None, '"nope" not found', "nope"),
    ("SELECT user_id, count(*) FROM events GROUP BY event_type", None, "GROUP BY", "user_id"),
    (
        "SELECT * FROM events WATERMARK to_timestamp(user_id) DELAY OF INTERVAL '1 minute'",
        "watermark-needs-name",
        "needs a name",
        "to_timestamp",
    ),
    *(
        (
            f"SELECT user_id, count(*) FROM events GROUP BY {grouping}",
            "grouping-sets",
            "GROUPING SETS, CUBE and ROLLUP are not supported",
            "user_id)",
        )
        for grouping in ("ROLLUP(user_id)", "CUBE(user_id)", "GROUPING SETS ((user_id), ())")
    ),
    (
        "SELECT user_id FROM raw UNION SELECT user_id FROM events",
        "union-all-only",
        "UNION over streams is not supported: only UNION ALL is stateless",
        "user_id FROM raw",
    ),
    (
        "SELECT user_id FROM raw INTERSECT SELECT user_id FROM events",
        "union-all-only",
        "Source raw is a stream: INTERSECT over streams is not supported",
        "raw",
    ),
    (
        "INSERT INTO totals SELECT user_id FROM events",
        None,
        "Source events is a stream: to write it into table totals, use CREATE SINK name "
        "WITH (connector = 'duckdb', table = 'totals') AS SELECT ...",
        "events",
    ),
    (
        "CREATE TABLE totals AS SELECT user_id FROM events",
        None,
        "use CREATE SINK name WITH (connector = 'duckdb', table = 'totals')",
        "events",
    ),
]


@pytest.mark.parametrize(("sql", "rule", "words", "marker"), PLANNING_ERRORS)
def test_planning_errors_name_the_rule_and_the_place(
    con: streamsql.Connection, sql: str, rule: str | None, words: str, marker: str
) -> None:
    """The error points at `marker`: the first place in the query where it occurs."""
    with pytest.raises(PlanningError) as caught:
        con.execute(sql)
    assert_refusal(caught.value, sql, rule, words, marker)


def assert_refusal(
    error: PlanningError, sql: str, rule: str | None, words: str, marker: str
) -> None:
    """The error says `words`, names `rule` and points at `marker` in `sql` (line 1)."""
    assert words in str(error)
    assert error.rule == rule
    if rule:
        assert str(error).endswith(f"[{rule}]")
    assert (error.line, error.col) == (1, sql.index(marker) + 1)
    assert f"(line 1, column {sql.index(marker) + 1})" in str(error)


@pytest.mark.parametrize(
    ("sql", "error", "words"),
    [
        (
            "CREATE SOURCE s (a INT) WITH (connector = 'kafkaesque')",
            streamsql.ProgrammingError,
            "Unknown source connector 'kafkaesque'",
        ),
        ("CREATE SOURCE s (a INT)", PlanningError, "needs WITH (connector"),
        (
            "CREATE SOURCE s (a INT, WATERMARK FOR b AS b - INTERVAL '1 minute') "
            "WITH (connector = 'memory')",
            PlanningError,
            "no column 'b'",
        ),
        (
            "CREATE SOURCE s (a TIMESTAMP, WATERMARK FOR a AS a + INTERVAL '1 minute') "
            "WITH (connector = 'memory')",
            PlanningError,
            "must be 'a - INTERVAL",
        ),
        (
            "CREATE SINK s WITH (connector = 'nosuch') AS SELECT * FROM events",
            streamsql.ProgrammingError,
            "Unknown sink connector 'nosuch'",
        ),
        ("INSERT INTO events (nope) VALUES (1)", streamsql.ProgrammingError, "no column 'nope'"),
        (
            "INSERT INTO events VALUES ('not a number', NULL, NULL, NULL)",
            streamsql.DataError,
            "Could not convert string 'not a number'",
        ),
        (
            "SELECT * FROM not_a_table",
            streamsql.ProgrammingError,
            "Table with name not_a_table does not exist",
        ),
    ],
)
def test_definition_and_data_errors(
    con: streamsql.Connection, sql: str, error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as caught:
        con.execute(sql)
    assert words in str(caught.value)


def test_an_error_leaves_the_connection_usable(con: streamsql.Connection) -> None:
    with pytest.raises(SQLSyntaxError):
        con.execute("SELECT FROM WHERE")
    con.execute("INSERT INTO raw VALUES (1, TIMESTAMP '2024-01-01')")
    assert con.execute("SELECT 40 + 2").fetchall() == [(42,)]


# -- messages that say what and where (issue 11, items 15-17) ----------------------------------


def test_a_sink_without_a_table_says_so_when_selected_from(con: streamsql.Connection) -> None:
    con.execute("CREATE SINK shown WITH (connector = 'console') AS SELECT user_id FROM raw")
    sql = "SELECT *\nFROM shown"
    with pytest.raises(PlanningError) as caught:
        con.execute(sql)
    assert str(caught.value).startswith(
        "Sink shown writes to the console and has no table to select from; sinks with "
        "connector = 'duckdb' (a table) or a file connector (a view) can be selected from"
    )
    assert (caught.value.line, caught.value.col) == (2, 6)


def test_create_sink_with_a_union_names_the_rule(con: streamsql.Connection) -> None:
    with pytest.raises(PlanningError) as caught:
        con.execute(
            "CREATE SINK u WITH (connector = 'console') AS "
            "SELECT user_id FROM raw EXCEPT SELECT user_id FROM raw"
        )
    assert caught.value.rule == "union-all-only"


def test_any_value_merges_across_batches(tmp_path: Path) -> None:
    """DuckDB's any_value skips NULLs: the first non-NULL value of each group, in every mode;
    it was refused as a nested aggregate (sqlglot wraps it in IGNORE NULLS)."""
    rows = ["('a', NULL)", "('b', 'y')", "('a', 'x')", "('a', 'z')", "('b', NULL)"]
    query = (
        "SELECT k, any_value(v) AS v, any_value(v) FILTER (WHERE v <> 'x') AS w "
        "FROM ev GROUP BY k EMIT {}"
    )
    (tmp_path / "changes").mkdir()
    (tmp_path / "snap").mkdir()
    changes = stream(tmp_path / "changes", "k VARCHAR, v VARCHAR", rows, query.format("CHANGES"))
    assert changes.rows == [
        ("a", None, None, 0),
        ("b", "y", "y", 1),
        ("a", "x", None, 2),
        ("a", "x", "z", 3),
        ("b", "y", "y", 4),
    ]
    expected, _ = batch(
        "k VARCHAR, v VARCHAR", rows, query.format("").replace("EMIT", "ORDER BY k")
    )
    snapshot = stream(tmp_path / "snap", "k VARCHAR, v VARCHAR", rows, query.format("SNAPSHOT"))
    assert sorted(row[:3] for row in snapshot.rows if row[3] == 4) == expected


SCRIPT = """\
-- clicks per window, a file as `streamsql run` reads it
CREATE SOURCE events (
    k VARCHAR,
    amount DOUBLE,
    ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '10 minutes'
) WITH (connector = 'memory');

CREATE SINK clicks_per_window
WITH (connector = 'console')
AS SELECT window_start,
          count(*) AS n
          {line_13} AS total
   FROM events
   WINDOW TUMBLING (ts, INTERVAL '5 minutes')
   GROUP BY window_start;
"""


@pytest.mark.parametrize("command", ["run", "explain"])
@pytest.mark.parametrize(
    ("line_13", "message"),
    [
        # a missing comma: was `syntax error at or near "SINK"` at line 1
        (
            "sum(amount)",
            "Error: Syntax error at line 13, column 11 in CREATE SINK clicks_per_window: "
            "unexpected 'sum'\n            sum(amount) AS total\n            ^",
        ),
        # a binder error: its line was counted from the statement's start
        (
            ", sum(amountx)",
            "Error: CREATE SINK clicks_per_window: Invalid query: Binder Error: Referenced column "
            '"amountx" not found in FROM '
            "clause! (line 13, column 17)",
        ),
    ],
)
def test_errors_in_a_file_point_at_the_files_line(
    tmp_path: Path, command: str, line_13: str, message: str
) -> None:
    script = tmp_path / "clicks.sql"
    script.write_text(SCRIPT.format(line_13=line_13))
    done = subprocess.run(
        [sys.executable, "-m", "streamsql.cli", command, str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1  # explain printed nothing and exited 0
    assert done.stderr.startswith(message), done.stderr


def test_duckdbs_line_numbers_count_from_the_start_of_the_script() -> None:
    with streamsql.connect() as con, pytest.raises(streamsql.ProgrammingError) as caught:
        con.execute("CREATE TABLE t (a INT);\n\nSELECT a,\n  b FROM t")
    assert "LINE 4:   b FROM t" in str(caught.value)


def test_a_failed_sink_names_itself_and_its_batch_with_the_cause_first(tmp_path: Path) -> None:
    with streamsql.connect(str(tmp_path / "app.db")) as con:
        con.execute("CREATE SOURCE ev (k VARCHAR) WITH (connector = 'memory')")
        con.execute(
            "CREATE SINK clicks WITH (connector = 'duckdb') AS SELECT CAST(k AS INT) AS n FROM ev"
        )
        con.execute("INSERT INTO ev VALUES ('1')")
        con.query("clicks").process_all_available(60)
        con.execute("INSERT INTO ev VALUES ('x')")
        with pytest.raises(streamsql.StreamingQueryError) as caught:
            con.query("clicks").await_termination(60)
    first = str(caught.value).splitlines()[0]
    assert first == (
        "Sink clicks failed in batch 1: Conversion Error: Could not convert string 'x' to "
        "INT32 when casting from source column k"
    )
    assert isinstance(caught.value.__cause__, streamsql.DataError)


def test_a_failed_push_query_is_named_by_its_sql() -> None:
    with streamsql.connect(trigger="available_now") as con:
        con.execute("CREATE SOURCE ev (k VARCHAR) WITH (connector = 'memory')")
        con.execute("INSERT INTO ev VALUES ('x')")
        with pytest.raises(streamsql.StreamingQueryError) as caught:
            con.execute("\nSELECT CAST(k AS INT) AS n\nFROM ev").fetchall()
    assert str(caught.value).splitlines()[0] == (
        "Push query `SELECT CAST(k AS INT) AS n` (line 2) failed in batch 0: Conversion Error: "
        "Could not convert string 'x' to INT32 when casting from source column k"
    )
    assert "__push_" not in str(caught.value)


def test_a_database_whose_catalog_duckdb_would_now_refuse_still_opens(tmp_path: Path) -> None:
    """Stored statements were accepted when created: DuckDB's parser does not judge them
    again (an older version took an unquoted reserved word as a column name)."""
    database = str(tmp_path / "app.db")
    with streamsql.connect(database) as con:
        con.execute("""CREATE SOURCE s ("order" INT) WITH (connector = 'memory')""")
    with duckdb.connect(database) as db:
        db.execute("UPDATE _streamsql.catalog SET sql = replace(sql, '\"order\"', 'order')")
    with pytest.raises(SQLSyntaxError, match='syntax error at or near "order"'):
        streamsql.connect().execute("CREATE SOURCE s (order INT) WITH (connector = 'memory')")
    with streamsql.connect(database, trigger="available_now") as con:
        con.execute("INSERT INTO s VALUES (7)")
        assert con.execute("SELECT * FROM s").fetchall() == [(7,)]
