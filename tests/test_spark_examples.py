"""What Spark 4.3 emitted, batch by batch, for two inputs: streamsql must emit the same.

Each case feeds one file per micro-batch (max_files_per_trigger = 1) with trigger
available_now; the changelog sink records every emitted row with its batch id, and the
progress records give the watermark and late-row threshold of every batch.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import reference_model as model

import streamsql

EXAMPLES = Path(__file__).parent / "data" / "spark-examples"

SOURCE = """
CREATE SOURCE events (
    user_id BIGINT, event_type VARCHAR, ts TIMESTAMP, amount DOUBLE
    {watermark}
) WITH (connector = 'files', path = '{path}', format = 'json', max_files_per_trigger = 1)
"""
WATERMARK = ", WATERMARK FOR ts AS ts - INTERVAL '10 minutes'"

AGGREGATES = (
    "count(*) AS cnt, sum(amount) AS sum_amount, avg(amount) AS avg_amount, "
    "min(amount) AS min_amount, max(amount) AS max_amount"
)
QUERIES = {
    "global_count_complete": (
        False,
        "SELECT event_type, count(*) AS cnt, sum(amount) AS sum_amount "
        "FROM events GROUP BY event_type EMIT SNAPSHOT",
    ),
    "tumble_5m_append": (
        True,
        f"SELECT window_start, window_end, event_type, {AGGREGATES} FROM events "
        "WINDOW TUMBLING (ts, INTERVAL '5 minutes') "
        "GROUP BY window_start, window_end, event_type EMIT FINAL",
    ),
    "tumble_5m_update": (
        True,
        f"SELECT window_start, window_end, event_type, {AGGREGATES} FROM events "
        "WINDOW TUMBLING (ts, INTERVAL '5 minutes') "
        "GROUP BY window_start, window_end, event_type EMIT CHANGES",
    ),
    "slide_10m_5m_append": (
        True,
        "SELECT window_start, window_end, event_type, count(*) AS cnt FROM events "
        "WINDOW HOPPING (ts, INTERVAL '10 minutes', INTERVAL '5 minutes') "
        "GROUP BY window_start, window_end, event_type EMIT FINAL",
    ),
    "session_5m_append": (
        True,
        "SELECT window_start AS session_start, window_end AS session_end, user_id, "
        "count(*) AS cnt FROM events WINDOW SESSION (ts, INTERVAL '5 minutes') "
        "GROUP BY window_start, window_end, user_id EMIT ON WINDOW CLOSE",
    ),
    "dedup_append": (True, "SELECT * FROM events DEDUPLICATE ON (user_id, ts) EMIT APPEND"),
    "dedup_within_wm_append": (
        True,
        "SELECT * FROM events DEDUPLICATE ON (user_id, ts) WITHIN WATERMARK EMIT APPEND",
    ),
    "dedup_within_wm_user_type_append": (
        True,
        "SELECT * FROM events DEDUPLICATE ON (user_id, event_type) WITHIN WATERMARK",
    ),
}
# The other spellings of Spark's dropDuplicates(['user_id', 'ts']), which must emit the same.
SPELLINGS = {
    "dedup_append": [
        "SELECT DISTINCT ON (user_id, ts) * FROM events",
        "SELECT user_id, event_type, ts, amount FROM (SELECT *, ROW_NUMBER() OVER "
        "(PARTITION BY user_id, ts ORDER BY ts) AS rn FROM events) WHERE rn = 1",
        "WITH numbered AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id, ts ORDER BY ts) "
        "AS rn FROM events) SELECT * FROM numbered WHERE rn = 1",
    ],
}
RUNS = [(name, sql) for name, (_, sql) in QUERIES.items()] + [
    (name, sql) for name, spellings in SPELLINGS.items() for sql in spellings
]
CASES = sorted(p.name for p in EXAMPLES.iterdir() if (p / "case.json").exists())


def spark_timestamp(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def progress_timestamp(value: str | None) -> str | None:
    """Progress prints ISO-8601 with 'T' and 'Z'; the recordings use Spark's format."""
    return value.replace("T", " ").rstrip("Z") if value else None


def normalized(rows: list[dict]) -> list[tuple]:
    return sorted(
        (tuple((k, spark_timestamp(v)) for k, v in row.items()) for row in rows), key=repr
    )


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("query", "sql"), RUNS)
def test_emits_what_spark_emitted(tmp_path: Path, case: str, query: str, sql: str) -> None:
    expected = json.loads((EXAMPLES / case / "expected" / f"{query}.json").read_text())
    has_watermark = QUERIES[query][0]
    con = streamsql.connect(str(tmp_path / "engine.db"))
    try:
        con.execute(
            SOURCE.format(
                watermark=WATERMARK if has_watermark else "",
                path=EXAMPLES / case / "input",
            )
        )
        con.execute(
            f"CREATE SINK out WITH (connector = 'duckdb', changelog = true, "
            f"trigger = 'available_now') AS {sql}"
        )
        stream = con.query("out")
        assert stream.await_termination(60)
        columns = expected["columns"]
        emitted = con.execute(f"SELECT _batch_id, {', '.join(columns)} FROM out").fetchall()
        progress = list(stream.recent_progress)
    finally:
        con.close()

    assert [p.batch_id for p in progress] == [b["batch_id"] for b in expected["batches"]]
    for batch, record in zip(expected["batches"], progress, strict=True):
        assert record.no_data_batch == batch["no_data_batch"], batch["batch_id"]
        assert record.num_input_rows == batch["num_input_rows"], batch["batch_id"]
        if has_watermark:
            assert progress_timestamp(record.watermark) == batch["watermark"]
            assert progress_timestamp(record.late_threshold) == batch["late_event_watermark"]
        rows = [
            dict(zip(columns, row[1:], strict=True))
            for row in emitted
            if row[0] == batch["batch_id"]
        ]
        assert normalized(rows) == normalized(batch["rows"]), f"batch {batch['batch_id']}"


# A case in the recordings' form, its expected batches derived from Spark's optimizer rule
# rather than recorded: PushPredicateThroughNonJoin moves a Filter over EventTimeWatermark
# below it when the conjunct is deterministic and does not reference the event-time column,
# so the row of 'b' at 00:30 never reaches the watermark's max event time.
FILTERED_INPUT = (
    [
        {"event_type": "a", "ts": "2024-01-01 00:00:00"},
        {"event_type": "b", "ts": "2024-01-01 00:30:00"},
    ],
    [{"event_type": "a", "ts": "2024-01-01 00:01:00"}],
)
FILTERED_BATCHES = [
    # (batch_id, no_data_batch, num_input_rows, watermark, late_event_watermark, rows)
    (0, False, 2, "1970-01-01 00:00:00.000000", "1970-01-01 00:00:00.000000", []),
    (1, False, 1, "2023-12-31 23:50:00.000000", "1970-01-01 00:00:00.000000", []),
    (2, True, 0, "2023-12-31 23:51:00.000000", "2023-12-31 23:50:00.000000", []),
]


def test_rows_removed_by_where_do_not_move_the_watermark(tmp_path: Path) -> None:
    """WHERE event_type = 'a' removes the 00:30 row before the watermark sees it: the
    watermark stays at 23:50, so the 00:00 window is still open after batch 1 (the old
    engine counted the filtered row, moved the watermark to 00:20 and emitted it)."""
    inputs = tmp_path / "input"
    inputs.mkdir()
    for number, rows in enumerate(FILTERED_INPUT):
        lines = "".join(json.dumps(row) + "\n" for row in rows)
        (inputs / f"batch_{number:04d}.jsonl").write_text(lines)
    con = streamsql.connect(str(tmp_path / "engine.db"))
    try:
        con.execute(SOURCE.format(watermark=WATERMARK, path=inputs))
        con.execute(
            "CREATE SINK out WITH (connector = 'duckdb', changelog = true, "
            "trigger = 'available_now') AS SELECT window_start, window_end, event_type, "
            "count(*) AS cnt FROM events WHERE event_type = 'a' "
            "WINDOW TUMBLING (ts, INTERVAL '5 minutes') "
            "GROUP BY window_start, window_end, event_type EMIT FINAL"
        )
        stream = con.query("out")
        assert stream.await_termination(60)
        emitted = con.execute("SELECT _batch_id, window_start, cnt FROM out").fetchall()
        progress = list(stream.recent_progress)
    finally:
        con.close()
    assert [
        (
            p.batch_id,
            p.no_data_batch,
            p.num_input_rows,
            progress_timestamp(p.watermark),
            progress_timestamp(p.late_threshold),
            [row[1:] for row in emitted if row[0] == p.batch_id],
        )
        for p in progress
    ] == FILTERED_BATCHES
    assert emitted == []


def test_reference_model_applies_the_filter_below_the_watermark() -> None:
    """The reference model gives the same batches for the filtered case."""
    minute = 60_000_000
    t0 = 1_704_067_200_000_000  # 2024-01-01 00:00
    events = [
        [
            model.Event(
                i + 10 * b,
                t0 + int(row["ts"][14:16]) * minute,
                (row["event_type"],),
                row["event_type"] == "a",
            )
            for i, row in enumerate(rows)
        ]
        for b, rows in enumerate(FILTERED_INPUT)
    ]
    outcome = model.run(events, model.Tumbling(5 * minute), 10 * minute, "final")
    assert outcome.emitted == []
    assert [
        (b.batch_id, b.no_data, b.num_input_rows, b.watermark - t0, b.late_threshold)
        for b in outcome.batches
    ] == [
        (0, False, 2, -t0, 0),
        (1, False, 1, -10 * minute, 0),
        (2, True, 0, -9 * minute, t0 - 10 * minute),
    ]
