"""Bad SQL gets a clear error that says what and where; nothing escapes as a raw traceback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import streamsql
from streamsql import PlanningError, SQLSyntaxError

SOURCES = (
    "CREATE SOURCE events (user_id BIGINT, event_type VARCHAR, ts TIMESTAMP, amount DOUBLE, "
    "WATERMARK FOR ts AS ts - INTERVAL '10 minutes') WITH (connector = 'memory')",
    "CREATE SOURCE raw (user_id BIGINT, ts TIMESTAMP) WITH (connector = 'memory')",
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
        "single-source",
        "Joins are not supported",
        "raw",
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
]


@pytest.mark.parametrize(("sql", "rule", "words", "marker"), PLANNING_ERRORS)
def test_planning_errors_name_the_rule_and_the_place(
    con: streamsql.Connection, sql: str, rule: str | None, words: str, marker: str
) -> None:
    """The error points at `marker`: the first place in the query where it occurs."""
    with pytest.raises(PlanningError) as caught:
        con.execute(sql)
    error = caught.value
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
