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
}
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
@pytest.mark.parametrize("query", sorted(QUERIES))
def test_emits_what_spark_emitted(tmp_path: Path, case: str, query: str) -> None:
    expected = json.loads((EXAMPLES / case / "expected" / f"{query}.json").read_text())
    has_watermark, sql = QUERIES[query]
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
