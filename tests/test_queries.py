"""Every example in queries/ parses, runs to completion, and produces its documented result."""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from collections import Counter
from pathlib import Path

import duckdb
import pytest

import streamsql
from streamsql.cli import run_file
from streamsql.sql import parse
from streamsql.testing.broker import Broker

ROOT = Path(__file__).resolve().parent.parent
QUERIES = sorted((ROOT / "queries").glob("*.sql"))
EVENTS = sorted((ROOT / "queries" / "data" / "events").glob("*.jsonl"))
MINUTE_MS = 60_000
READS_FILES = {"enrichment_join"}  # examples whose DuckDB statements read files themselves


@pytest.fixture(autouse=True)
def at_repository_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The examples name their data relative to the repository root, where users run them;
    here a stand-in for it, so that what they write (out/) stays out of the repository."""
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "queries").symlink_to(ROOT / "queries")
    monkeypatch.chdir(tmp_path / "root")


@pytest.fixture
def kafka_names(broker: Broker) -> dict[str, str]:
    """The Kafka examples name a broker at localhost:9092: here the test broker, and a topic
    of the test's own."""
    return {
        "localhost:9092": broker.bootstrap_servers,
        "'user-events'": f"'user-events-{uuid.uuid4().hex[:8]}'",
    }


def run(
    path: Path, db: str, rename: dict[str, str] | None = None, restricted: bool = False
) -> tuple[int, str, str]:
    text = path.read_text()
    for name, value in (rename or {}).items():
        text = text.replace(name, value)
    out, err = io.StringIO(), io.StringIO()
    code = run_file(text, db, "available_now", out, err, restricted)
    return code, out.getvalue(), err.getvalue()


def events() -> list[list[dict]]:
    return [[json.loads(line) for line in f.read_text().splitlines() if line] for f in EVENTS]


def printed_tables(output: str) -> list[list[list[str]]]:
    """The rows of each boxed table printed by the console sink, cells stripped."""
    tables = []
    for block in output.split("┌")[1:]:
        rows = [line for line in block.splitlines() if line.startswith("│")]
        tables.append([[c.strip() for c in row.strip("│").split("│")] for row in rows[1:]])
    return tables


def test_there_are_examples_for_every_seed_query() -> None:
    names = {path.stem for path in QUERIES}
    assert {
        "running_counts",
        "tumbling_windows",
        "complete_mode",
        "backfill_available_now",
        "stateless_filter",
        "windows_to_parquet",
        "enrichment_join",
        "union_of_two_sources",
        "chained_windows",
    } <= names


@pytest.mark.parametrize("restricted", [False, True], ids=["trusted", "restricted"])
@pytest.mark.parametrize("path", QUERIES, ids=lambda p: p.stem)
def test_every_example_parses_and_runs(
    path: Path, tmp_path: Path, request: pytest.FixtureRequest, restricted: bool
) -> None:
    """Also in restricted mode (`streamsql run --restricted`): the examples need nothing
    beyond the directories their sources and sinks name."""
    assert parse(path.read_text())
    rename = request.getfixturevalue("kafka_names") if path.stem.startswith("kafka") else None
    if path.stem in ("kafka_windows", "kafka_dedup"):  # read what kafka_load.sql writes
        load = run(
            ROOT / "queries" / "kafka_load.sql", str(tmp_path / "load.db"), rename, restricted
        )
        assert load[0] == 0
    if restricted and path.stem in READS_FILES:
        # A DuckDB view over files outside the directories the file's sources and sinks
        # name: restricted mode does not let DuckDB reach them, and says where.
        with pytest.raises(streamsql.DatabaseError, match=r"Cannot access file(.|\n)*LINE 22"):
            run(path, str(tmp_path / "app.db"), rename, restricted)
        return
    code, _, err = run(path, str(tmp_path / "app.db"), rename, restricted)
    assert code == 0, err
    assert "failed" not in err


def test_running_counts_end_at_the_totals(tmp_path: Path) -> None:
    _, out, _ = run(ROOT / "queries" / "running_counts.sql", str(tmp_path / "app.db"))
    latest: dict[str, int] = {}
    for table in printed_tables(out):
        for event_type, n in table:
            latest[event_type] = int(n)
    assert latest == Counter(e["event_type"] for batch in events() for e in batch)


def test_comments_in_a_query_change_nothing(tmp_path: Path) -> None:
    """A comment after a GROUP BY key or a SELECT expression is not part of it: the query
    plans and prints what it prints without them (a comment after `GROUP BY ... event_type`
    made the planner refuse `event_type` in the SELECT list)."""
    source = "CREATE SOURCE e (event_type VARCHAR) WITH (connector = 'files', "
    source += "path = 'queries/data/events', max_files_per_trigger = 2);\n"
    plain = "SELECT event_type, count(*) AS n FROM e GROUP BY event_type EMIT CHANGES;"
    commented = (
        "SELECT event_type /* the key */, count(*) AS n -- how many\n"
        "FROM e GROUP BY event_type -- CHANGES: every batch's changed groups\nEMIT CHANGES;"
    )
    printed = []
    for name, query in [("plain", plain), ("commented", commented)]:
        (tmp_path / f"{name}.sql").write_text(source + query)
        code, out, err = run(tmp_path / f"{name}.sql", str(tmp_path / f"{name}.db"))
        assert code == 0, err
        printed.append(sorted(row for table in printed_tables(out) for row in table))
    assert len(printed[0]) == 12 and printed[1] == printed[0]  # 4 event types, 3 batches


def test_complete_mode_prints_the_whole_result_sorted(tmp_path: Path) -> None:
    _, out, _ = run(ROOT / "queries" / "complete_mode.sql", str(tmp_path / "app.db"))
    tables = printed_tables(out)
    assert len(tables) == 3  # six files, two per batch: every batch prints the whole result
    everything = [e for batch in events() for e in batch]
    totals = Counter(e["event_type"] for e in everything)
    users = {t: len({e["user_id"] for e in everything if e["event_type"] == t}) for t in totals}
    expected = sorted(
        ([t, str(n), str(users[t])] for t, n in totals.items()), key=lambda r: -int(r[1])
    )
    assert tables[-1] == expected


def test_stateless_filter_prints_every_purchase_once(tmp_path: Path) -> None:
    _, out, _ = run(ROOT / "queries" / "stateless_filter.sql", str(tmp_path / "app.db"))
    printed = sorted(int(row[1]) for table in printed_tables(out) for row in table)
    purchases = sorted(e["user_id"] for b in events() for e in b if e["event_type"] == "purchase")
    assert printed == purchases


def test_impressions_clicks_join_emits_unclicked_impressions_when_the_watermark_passes(
    tmp_path: Path,
) -> None:
    """Batch 0: a1 and its click; batch 1: a4 (a2's click at 11:30 is past its hour);
    batch 2, watermark 11:20: a5 and a6 with their clicks, and a2 and a3 with NULLs, since
    impressions go when imp_time <= 11:20 - 1 hour - 1 ms (DESIGN.md section 8)."""
    code, out, err = run(ROOT / "queries" / "impressions_clicks_join.sql", str(tmp_path / "a.db"))
    assert code == 0, err
    assert [sorted(tuple(row) for row in table) for table in printed_tables(out)] == [
        [("a1", "2024-05-01 10:00:00", "2024-05-01 10:20:00")],
        [("a4", "2024-05-01 10:40:00", "2024-05-01 10:50:00")],
        [
            ("a2", "2024-05-01 10:05:00", "NULL"),
            ("a3", "2024-05-01 10:10:00", "NULL"),
            ("a5", "2024-05-01 11:30:00", "2024-05-01 12:00:00"),
            ("a6", "2024-05-01 13:00:00", "2024-05-01 13:10:00"),
        ],
    ]


def test_tumbling_windows_match_spark_rules(tmp_path: Path) -> None:
    """One file per batch; drop rows whose window ended by the previous batch's watermark;
    emit each window once the watermark passes its end (delay 10 minutes)."""
    db = str(tmp_path / "app.db")
    code, _, err = run(ROOT / "queries" / "tumbling_windows.sql", db)
    assert code == 0, err
    size, delay = 5 * MINUTE_MS, 10 * MINUTE_MS
    watermark = late = 0
    max_seen = None
    counts: Counter[tuple[int, str]] = Counter()
    batches = events()
    for batch in batches:
        for event in batch:
            end = event["timestamp"] // size * size + size
            if end > late:
                counts[(end, event["event_type"])] += 1
        max_seen = max([max_seen or 0, *(e["timestamp"] for e in batch)])
        late, watermark = watermark, max(watermark, max_seen - delay)
    # the trailing no-data batch of available_now emits with the final watermark
    expected = sorted(
        (end - size, event_type, n) for (end, event_type), n in counts.items() if end <= watermark
    )
    con = duckdb.connect(db, read_only=True)
    rows = con.execute(
        "SELECT epoch_ms(window_start), event_type, n FROM clicks_per_window ORDER BY ALL"
    ).fetchall()
    con.close()
    assert rows == expected
    assert len(rows) > 10


def test_windows_to_parquet_writes_the_windows_of_the_duckdb_example(tmp_path: Path) -> None:
    """The same windows as tumbling_windows.sql, in Parquet files behind the sink's view."""
    code, _, err = run(ROOT / "queries" / "tumbling_windows.sql", str(tmp_path / "a.db"))
    assert code == 0, err
    code, _, err = run(ROOT / "queries" / "windows_to_parquet.sql", str(tmp_path / "b.db"))
    assert code == 0, err
    select = "SELECT window_start, event_type, n FROM clicks_per_window ORDER BY ALL"
    tables = duckdb.connect(str(tmp_path / "a.db"), read_only=True)
    files = duckdb.connect(str(tmp_path / "b.db"), read_only=True)
    try:
        expected = tables.execute(select).fetchall()
        assert files.execute(select).fetchall() == expected
        written = files.execute(
            "SELECT window_start, event_type, n "
            "FROM read_parquet('out/clicks_per_window/*.parquet') ORDER BY ALL"
        ).fetchall()
        assert written == expected and len(expected) > 10
    finally:
        tables.close()
        files.close()


def test_kafka_windows_equal_the_files_example(tmp_path: Path, kafka_names: dict[str, str]) -> None:
    """Loaded into one partition in file order and read 40 offsets (one file) per batch, the
    topic gives the batches, and so the windows, of tumbling_windows.sql."""
    code, _, err = run(ROOT / "queries" / "kafka_load.sql", str(tmp_path / "load.db"), kafka_names)
    assert code == 0, err
    db = str(tmp_path / "app.db")
    code, _, err = run(ROOT / "queries" / "kafka_windows.sql", db, kafka_names)
    assert code == 0, err
    code, _, err = run(ROOT / "queries" / "tumbling_windows.sql", str(tmp_path / "files.db"))
    assert code == 0, err
    select = "SELECT window_start, event_type, n FROM {} ORDER BY ALL"
    with (
        duckdb.connect(db, read_only=True) as kafka,
        duckdb.connect(str(tmp_path / "files.db"), read_only=True) as files,
    ):
        expected = files.execute(select.format("clicks_per_window")).fetchall()
        assert kafka.execute(select.format("kafka_clicks_per_window")).fetchall() == expected
        # running it again reads nothing new and changes nothing
    assert run(ROOT / "queries" / "kafka_windows.sql", db, kafka_names)[0] == 0
    with duckdb.connect(db, read_only=True) as kafka:
        assert kafka.execute(select.format("kafka_clicks_per_window")).fetchall() == expected


def test_kafka_dedup_keeps_each_event_once_when_the_topic_is_loaded_twice(
    tmp_path: Path, kafka_names: dict[str, str]
) -> None:
    """The topic loaded once, then again (each event redelivered): the deduplicated sink
    holds each event once, and the redelivered copies add nothing."""
    load = ROOT / "queries" / "kafka_load.sql"
    dedup = ROOT / "queries" / "kafka_dedup.sql"
    assert run(load, str(tmp_path / "load.db"), kafka_names)[0] == 0
    db = str(tmp_path / "app.db")
    code, _, err = run(dedup, db, kafka_names)
    assert code == 0, err
    select = "SELECT user_id, event_type, timestamp FROM unique_events ORDER BY ALL"
    with duckdb.connect(db, read_only=True) as con:
        once = con.execute(select).fetchall()
    assert run(load, str(tmp_path / "again.db"), kafka_names)[0] == 0
    code, _, err = run(dedup, db, kafka_names)
    assert code == 0, err
    with duckdb.connect(db, read_only=True) as con:
        assert con.execute(select).fetchall() == once
    everything = {(e["user_id"], e["event_type"], e["timestamp"]) for b in events() for e in b}
    assert len(once) == len(set(once)) and set(once) <= everything
    assert len(once) > 200  # all but the events late by the time they first arrive


def test_backfill_resumes_where_it_stopped(tmp_path: Path) -> None:
    """A second available_now run over the same files adds nothing and loses nothing."""
    db = str(tmp_path / "app.db")
    path = ROOT / "queries" / "backfill_available_now.sql"
    assert run(path, db)[0] == 0
    first = duckdb.connect(db, read_only=True)
    rows = first.execute("SELECT * FROM hourly_users ORDER BY window_start").fetchall()
    first.close()
    assert rows and all(events >= users > 0 for _, _, events, users in rows)
    code, _, err = run(path, db)
    assert code == 0, err
    again = duckdb.connect(db, read_only=True)
    assert again.execute("SELECT * FROM hourly_users ORDER BY window_start").fetchall() == rows
    again.close()


def test_examples_document_how_to_run_them() -> None:
    for path in QUERIES:
        text = path.read_text()
        assert re.search(r"^--.*streamsql run queries/", text, re.M), path.name
        assert os.path.basename(path) in text or "streamsql run" in text


def windows_and_watermark(tmp_path: Path, example: str, windows: str) -> tuple[list, int]:
    """Run an example of one sink; its rows (the `windows` query) and the watermark its
    last batch left, which says which windows it has closed."""
    code, _, err = run(ROOT / "queries" / f"{example}.sql", str(tmp_path / "app.db"))
    assert code == 0, err
    with duckdb.connect(str(tmp_path / "app.db"), read_only=True) as db:
        (watermark_us,) = db.execute(
            "SELECT next_watermark_us FROM _streamsql.commits ORDER BY batch_id DESC LIMIT 1"
        ).fetchall()[0]
        return db.execute(windows).fetchall(), watermark_us


def test_enrichment_join_counts_clicks_per_country_of_the_parquet_table(tmp_path: Path) -> None:
    """Each window the watermark closed holds the clicks of a batch query over the events
    joined with the Parquet table (country NULL for user 7, whom the table does not know)."""
    got, watermark_us = windows_and_watermark(
        tmp_path,
        "enrichment_join",
        "SELECT epoch_ms(window_start), country, clicks, users FROM clicks_per_country",
    )
    db = duckdb.connect()
    db.execute(f"CREATE VIEW events AS FROM read_json_auto('{ROOT}/queries/data/events/*.jsonl')")
    expected = db.execute(
        f"SELECT timestamp // 300000 * 300000 AS start, u.country, count(*), "
        f"count(DISTINCT e.user_id) FROM events AS e "
        f"LEFT JOIN '{ROOT}/queries/data/users/users.parquet' AS u USING (user_id) "
        "WHERE event_type = 'click' GROUP BY ALL "
        f"HAVING start + 300000 <= {watermark_us // 1000}"
    ).fetchall()
    assert sorted(got, key=repr) == sorted(expected, key=repr)
    assert any(country is None for _, country, _, _ in got)


def test_union_of_two_sources_counts_both_channels(tmp_path: Path) -> None:
    """Each window the (minimum) watermark closed holds the events of both sources, as a
    batch query over the two directories gives them."""
    got, watermark_us = windows_and_watermark(
        tmp_path,
        "union_of_two_sources",
        "SELECT epoch_ms(window_start), channel, events, users FROM events_per_channel",
    )
    data = ROOT / "queries" / "data"
    expected = duckdb.sql(
        "SELECT timestamp // 300000 * 300000 AS start, channel, count(*), "
        "count(DISTINCT user_id) FROM ("
        f"SELECT 'web' AS channel, * FROM read_json_auto('{data}/events/*.jsonl') UNION ALL "
        f"SELECT 'app', * FROM read_json_auto('{data}/app_events/*.jsonl')) "
        f"GROUP BY ALL HAVING start + 300000 <= {watermark_us // 1000}"
    ).fetchall()
    assert sorted(got, key=repr) == sorted(expected, key=repr)
    assert {channel for _, channel, _, _ in got} == {"web", "app"}


def test_chained_windows_count_the_five_minute_windows_of_each_quarter_hour(
    tmp_path: Path,
) -> None:
    """Each quarter-hour the watermark closed holds the 5-minute windows per user of a
    nested batch query (a 5-minute window's time is its end - 1 microsecond); no event of
    the example is late, so every one counts."""
    code, _, err = run(ROOT / "queries" / "chained_windows.sql", str(tmp_path / "app.db"))
    assert code == 0, err
    assert "240 rows in, 5 out, 0 late" in err
    with duckdb.connect(str(tmp_path / "app.db"), read_only=True) as db:
        (watermark_ms,) = db.execute(
            "SELECT next_watermark_us // 1000 FROM _streamsql.commits "
            "ORDER BY batch_id DESC LIMIT 1"
        ).fetchall()[0]
        got = db.execute(
            "SELECT epoch_ms(window_start), users, active_slots, busiest_slot, events "
            "FROM quarter_hour_activity"
        ).fetchall()
    quarter, five = 15 * MINUTE_MS, 5 * MINUTE_MS
    expected = duckdb.sql(
        f"SELECT (slot_end * 1000 - 1) // {quarter * 1000} * {quarter} AS start, "
        "count(DISTINCT user_id), count(*), max(n), sum(n) FROM ("
        f"SELECT timestamp // {five} * {five} + {five} AS slot_end, user_id, count(*) AS n "
        f"FROM read_json_auto('{ROOT}/queries/data/events/*.jsonl') GROUP BY ALL "
        f"HAVING slot_end <= {watermark_ms}) "
        f"GROUP BY start HAVING start + {quarter} <= {watermark_ms}"
    ).fetchall()
    assert sorted(got) == sorted(expected)
    assert len(got) == 5
