"""The query manager and triggers: concurrent sinks, STOP QUERY, restarts, trigger timing,
available_now / once, failures, and progress records.

Input comes from `files` sources (JSON-lines files appearing whole in a directory, which
survive reopening the database) or memory sources (for continuous feeding).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import streamsql
from streamsql.runtime.query import RECENT_PROGRESS, StreamingQuery

T0 = dt.datetime(2024, 1, 1)


def at(minutes: float) -> str:
    return str(T0 + dt.timedelta(minutes=minutes))


def put(directory: Path, name: str, events: list[dict[str, Any]]) -> None:
    """A JSON-lines file appears whole in the directory (written, then renamed)."""
    directory.mkdir(parents=True, exist_ok=True)
    hidden = directory / f".{name}.partial"
    hidden.write_text("".join(json.dumps(e) + "\n" for e in events))
    os.replace(hidden, directory / name)


def files_source(directory: Path, options: str = "") -> str:
    return (
        "CREATE SOURCE src (k VARCHAR, ts TIMESTAMP, v BIGINT, "
        "WATERMARK FOR ts AS ts - INTERVAL '1 minute') "
        f"WITH (connector = 'files', path = '{directory}'{options})"
    )


COUNTS = (
    "CREATE SINK counts WITH (connector = 'duckdb') AS "
    "SELECT k, count(*) AS n FROM src GROUP BY k EMIT CHANGES"
)
WINDOWS = (
    "CREATE SINK windows WITH (connector = 'duckdb') AS "
    "SELECT window_start, count(*) AS n FROM src "
    "WINDOW TUMBLING (ts, INTERVAL '1 minute') GROUP BY window_start EMIT FINAL"
)


def rows(con: streamsql.Connection, sql: str) -> list[tuple[Any, ...]]:
    return con.execute(sql).fetchall()


def caught_up(con: streamsql.Connection, *names: str) -> list[StreamingQuery]:
    queries = [con.query(name) for name in names]
    for query in queries:
        query.process_all_available(timeout=30)
    return queries


def shown(con: streamsql.Connection) -> dict[str, tuple[Any, ...]]:
    return {row[0]: row[1:] for row in rows(con, "SHOW QUERIES")}


def described(con: streamsql.Connection, name: str) -> dict[str, str]:
    return dict(rows(con, f"DESCRIBE QUERY {name}"))


def read_files(query: StreamingQuery) -> list[str]:
    """The files a query's batches (this run's) read, in order."""
    return [
        name
        for p in query.recent_progress
        for name in p.sources[0]["end_offset"]["files"]
        if not p.no_data_batch
    ]


def window(minute: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minute)


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    return tmp_path / "in"


# -- two sinks from one source, STOP QUERY, reopening ------------------------------------------


def test_two_sinks_run_concurrently_and_one_stops_while_the_other_goes_on(
    db_path: str, inputs: Path
) -> None:
    put(inputs, "1.json", [{"k": "a", "ts": at(0.1)}, {"k": "b", "ts": at(0.2)}])
    with streamsql.connect(db_path) as con:
        con.execute(files_source(inputs))
        con.execute(COUNTS)
        con.execute(WINDOWS)
        counts, windows = caught_up(con, "counts", "windows")
        assert counts.is_active and windows.is_active
        assert counts.id != windows.id
        put(inputs, "2.json", [{"k": "a", "ts": at(0.5)}, {"k": "a", "ts": at(2.5)}])
        caught_up(con, "counts", "windows")  # watermark 00:01:30 closes [00:00, 00:01)
        assert rows(con, "SELECT k, n FROM counts ORDER BY k") == [("a", 3), ("b", 1)]
        assert rows(con, "SELECT window_start, n FROM windows") == [(window(0), 3)]

        assert con.execute("STOP QUERY windows").description is None
        assert windows.is_active is False
        assert windows.await_termination(5) is True
        put(inputs, "3.json", [{"k": "b", "ts": at(4)}, {"k": "c", "ts": at(4.2)}])
        caught_up(con, "counts")
        assert counts.is_active
        assert rows(con, "SELECT k, n FROM counts ORDER BY k") == [("a", 3), ("b", 2), ("c", 1)]
        # the stopped one saw only the input before the stop: [00:02, 00:03) stays unclosed
        assert rows(con, "SELECT window_start, n FROM windows") == [(window(0), 3)]
        assert read_files(windows) == ["1.json", "2.json"]
        assert read_files(counts) == ["1.json", "2.json", "3.json"]

        queries = shown(con)
        assert queries["counts"][0] == "waiting for data"
        assert queries["windows"][0] == "stopped"
        assert queries["counts"][2] == counts.last_progress.batch_id == 2  # last_batch
        assert queries["windows"][2] == windows.last_progress.batch_id
        assert queries["windows"][3] == "2024-01-01T00:01:30.000000Z"  # its watermark
        assert queries["counts"][3] == "2024-01-01T00:03:12.000000Z"

        running, stopped = described(con, "counts"), described(con, "windows")
        assert (running["status"], stopped["status"]) == ("waiting for data", "stopped")
        assert (running["last_batch"], running["num_input_rows"]) == ("2", "2")
        # its last batch: the no-data batch that closed [00:00, 00:01) and emitted it
        assert stopped["last_batch"] == str(windows.last_progress.batch_id)
        assert (stopped["no_data_batch"], stopped["num_output_rows"]) == ("True", "1")
        assert (running["id"], stopped["id"]) == (counts.id, windows.id)
        assert running["run_batches"] == "3"  # since the engine opened
        assert running["run_input_rows"] == str(
            sum(p.num_input_rows for p in counts.recent_progress)
        )
        ids = {"counts": counts.id, "windows": windows.id}
        run_id = counts.run_id

    put(inputs, "4.json", [{"k": "a", "ts": at(6)}])  # while the database is closed
    with streamsql.connect(db_path) as con:
        assert set(shown(con)) == {"counts"}  # the stopped sink stays stopped
        assert [row[0] for row in rows(con, "SHOW SINKS")] == ["counts", "windows"]
        with pytest.raises(streamsql.ProgrammingError):
            con.query("windows")
        (counts,) = caught_up(con, "counts")
        assert (counts.id, counts.run_id != run_id) == (ids["counts"], True)
        assert [p.batch_id for p in counts.recent_progress] == [3]
        assert rows(con, "SELECT k, n FROM counts ORDER BY k") == [("a", 4), ("b", 2), ("c", 1)]
        assert rows(con, "SELECT window_start, n FROM windows") == [(window(0), 3)]

        con.execute(WINDOWS)  # submitted again: resumes from where it stopped
        (windows,) = caught_up(con, "windows")
        assert windows.id == ids["windows"]
        assert windows.recent_progress[0].batch_id == int(stopped["last_batch"]) + 1
        assert read_files(windows) == ["3.json", "4.json"]
        assert rows(con, "SELECT window_start, n FROM windows ORDER BY 1") == [
            (window(0), 3),
            (window(2), 1),
            (window(4), 2),
        ]
        assert set(shown(con)) == {"counts", "windows"}


# -- processing-time trigger ---------------------------------------------------------------------


def feed_continuously(con: streamsql.Connection, stop: threading.Event, every: float) -> None:
    cursor = con.cursor()
    n = 0
    while not stop.is_set():
        cursor.execute("INSERT INTO ev VALUES (?)", [n])
        n += 1
        stop.wait(every)
    cursor.close()


@pytest.fixture
def fed(con: streamsql.Connection) -> Iterator[streamsql.Connection]:
    """A memory source `ev` that gets a row every 0.1 s while the test runs."""
    con.execute("CREATE SOURCE ev (n BIGINT) WITH (connector = 'memory')")
    stop = threading.Event()
    feeder = threading.Thread(target=feed_continuously, args=(con, stop, 0.1), daemon=True)
    feeder.start()
    yield con
    stop.set()
    feeder.join(10)


def wait_for_batches(query: StreamingQuery, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(query.recent_progress) < count:
        assert query.is_active, query.status
        assert time.monotonic() < deadline, f"only {len(query.recent_progress)} batches"
        time.sleep(0.05)


def test_a_one_second_trigger_runs_batches_a_second_apart(fed: streamsql.Connection) -> None:
    fed.execute(
        "CREATE SINK out WITH (connector = 'duckdb', trigger = '1 second') AS SELECT n FROM ev"
    )
    query = fed.query("out")
    assert str(query.trigger) == "1 seconds"
    wait_for_batches(query, 5, timeout=15)
    progress = list(query.recent_progress)[:5]
    times = [parse_time(p.timestamp) for p in progress]
    intervals = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert 0.8 <= statistics.median(intervals) <= 1.6, intervals
    assert all(0.2 <= interval <= 3.0 for interval in intervals), intervals
    # data arrived all the time, yet it was taken in batches a tick apart, not row by row
    assert all(p.num_input_rows >= 3 for p in progress[1:]), [p.num_input_rows for p in progress]
    assert [p.batch_id for p in progress] == [0, 1, 2, 3, 4]
    assert shown(fed)["out"][1] == "1 seconds"


def test_a_batch_that_overruns_the_interval_is_followed_at_once(
    fed: streamsql.Connection,
) -> None:
    calls: list[tuple[int, float, float]] = []  # (batch_id, started, ended)

    def slow_second_batch(batch_id: int, batch: pa.Table) -> None:
        started = time.monotonic()
        if batch_id == 1:
            time.sleep(1.25)
        calls.append((batch_id, started, time.monotonic()))

    fed.register_callback("slow", slow_second_batch)
    fed.execute(
        "CREATE SINK out WITH (connector = 'callback', callback = 'slow', "
        "trigger = '1 second') AS SELECT n FROM ev"
    )
    query = fed.query("out")
    wait_for_batches(query, 3, timeout=15)
    (_, first, _), (_, second, second_end), (_, third, _) = calls[:3]
    assert 0.8 <= second - first <= 1.6  # on the tick
    # at once, not on the next tick (second + 2, i.e. 0.75 s after it ended)
    assert 0 <= third - second_end < 0.45


# -- available_now and once ----------------------------------------------------------------------

LATE: dict[str, Path] = {}
SEEN: list[tuple[int, list[str]]] = []


def add_a_file_during_the_first_batch(batch_id: int, batch: pa.Table) -> None:
    """Callback sink for available_now: records each batch; while the first runs, a new
    file appears (after the run started, so after its bound was taken)."""
    SEEN.append((batch_id, sorted(batch.column("k").to_pylist())))
    if batch_id == 0:
        put(LATE["directory"], "9-late.json", [{"k": "late", "ts": at(9)}])


def test_available_now_takes_what_is_there_in_capped_batches_then_stops(
    db_path: str, inputs: Path
) -> None:
    for i in range(5):
        put(inputs, f"{i}.json", [{"k": f"f{i}", "ts": at(i)}])
    LATE["directory"] = inputs
    SEEN.clear()
    sink = (
        "CREATE SINK out WITH (connector = 'callback', "
        f"callback = '{__name__}:add_a_file_during_the_first_batch', "
        "trigger = 'available_now') AS SELECT k FROM src"
    )
    with streamsql.connect(db_path) as con:
        con.execute(files_source(inputs, ", max_files_per_trigger = 2"))
        con.execute(sink)
        query = con.query("out")
        assert query.await_termination(30) is True
        assert query.is_active is False
        assert query.status["message"] == "stopped"
        assert query.status["error"] is None
        assert (inputs / "9-late.json").exists()
        ends = [p.sources[0]["end_offset"]["files"] for p in query.recent_progress]
        assert ends == [["0.json", "1.json"], ["2.json", "3.json"], ["4.json"]]
        assert [p.num_input_rows for p in query.recent_progress] == [2, 2, 1]
        assert SEEN[:3] == [(0, ["f0", "f1"]), (1, ["f2", "f3"]), (2, ["f4"])]
        assert all(batch_id < 3 or keys == [] for batch_id, keys in SEEN)
        assert shown(con)["out"][:3] == ("stopped", "available_now", query.last_progress.batch_id)
    SEEN.clear()
    with streamsql.connect(db_path) as con:  # the next run takes the file added meanwhile
        query = con.query("out")
        assert query.await_termination(30) is True
        assert [keys for _, keys in SEEN if keys] == [["late"]]
        assert query.recent_progress[0].sources[0]["end_offset"] == {"files": ["9-late.json"]}


def test_once_runs_a_single_batch_then_stops(con: streamsql.Connection, inputs: Path) -> None:
    for i in range(3):
        put(inputs, f"{i}.json", [{"k": f"f{i}", "ts": at(i)}, {"k": "x", "ts": at(i)}])
    con.execute(files_source(inputs, ", max_files_per_trigger = 2"))
    con.execute(
        "CREATE SINK out WITH (connector = 'duckdb', trigger = 'once') AS SELECT k FROM src"
    )
    query = con.query("out")
    assert query.await_termination(30) is True
    assert query.status["message"] == "stopped"
    assert [p.batch_id for p in query.recent_progress] == [0]
    # Everything available, as Spark's Trigger.Once: max_files_per_trigger does not apply.
    assert query.last_progress.sources[0]["end_offset"] == {"files": ["0.json", "1.json", "2.json"]}
    assert rows(con, "SELECT k FROM out ORDER BY k") == [
        ("f0",),
        ("f1",),
        ("f2",),
        ("x",),
        ("x",),
        ("x",),
    ]
    assert str(query.trigger) == "once"


def test_await_termination_times_out_on_a_running_query(con: streamsql.Connection) -> None:
    con.execute("CREATE SOURCE ev (n BIGINT) WITH (connector = 'memory')")
    con.execute("CREATE SINK out WITH (connector = 'duckdb') AS SELECT n FROM ev")
    query = con.query("out")
    started = time.monotonic()
    assert query.await_termination(0.2) is False
    assert time.monotonic() - started >= 0.15
    assert query.is_active
    query.stop()
    assert query.await_termination(5) is True
    assert query.status["message"] == "stopped"


# -- a failing query -----------------------------------------------------------------------------


def callback_query(
    con: streamsql.Connection, callback: Any, first: str, second: str
) -> StreamingQuery:
    """A callback sink `s` on a memory source `ev (k VARCHAR)`: batch 0 holds the row
    `first` (committed when this returns), batch 1 the row `second` (inserted only)."""
    con.register_callback("cb", callback)
    con.execute("CREATE SOURCE ev (k VARCHAR) WITH (connector = 'memory')")
    con.execute("CREATE SINK s WITH (connector = 'callback', callback = 'cb') AS SELECT k FROM ev")
    query = con.query("s")
    con.execute(f"INSERT INTO ev VALUES ({first})")
    query.process_all_available(timeout=30)
    con.execute(f"INSERT INTO ev VALUES ({second})")
    return query


def test_a_failed_query_keeps_its_error_and_await_termination_raises_it(
    con: streamsql.Connection,
) -> None:
    def explode(batch_id: int, batch: pa.Table) -> None:
        if batch.num_rows and "boom" in batch.column("k").to_pylist():
            raise ValueError(f"sink refused batch {batch_id}")

    query = callback_query(con, explode, "'fine'", "'boom'")
    with pytest.raises(streamsql.StreamingQueryError) as caught:
        query.await_termination(30)
    error = caught.value
    assert isinstance(error, streamsql.OperationalError)
    assert str(error).startswith("Sink s failed in batch 1: ValueError: sink refused batch 1")
    assert "sink refused batch 1" in str(error)
    assert isinstance(error.__cause__, ValueError)
    assert query.is_active is False
    assert query.status["message"] == "failed"
    assert query.status["is_active"] is False
    assert "sink refused batch 1" in query.status["error"]
    assert isinstance(query.exception, ValueError)
    with pytest.raises(streamsql.StreamingQueryError, match="sink refused batch 1"):
        query.await_termination(0)  # every time it is asked
    assert [p.batch_id for p in query.recent_progress] == [0]  # batch 1 never committed
    assert shown(con)["s"][0] == "failed"
    assert "sink refused batch 1" in described(con, "s")["error"]


# -- progress records ---------------------------------------------------------------------------


def test_progress_records_describe_each_batch(con: streamsql.Connection) -> None:
    con.execute(
        "CREATE SOURCE ev (k VARCHAR, ts TIMESTAMP, "
        "WATERMARK FOR ts AS ts - INTERVAL '1 minute') WITH (connector = 'memory')"
    )
    con.execute(
        "CREATE SINK out WITH (connector = 'duckdb') AS "
        "SELECT k, count(*) AS n FROM ev GROUP BY k EMIT CHANGES"
    )
    query = con.query("out")
    before = dt.datetime.now(dt.UTC)
    con.execute("INSERT INTO ev VALUES ('a', ?), ('b', ?), ('a', ?)", [at(1), at(2), at(3)])
    query.process_all_available(timeout=30)
    time.sleep(0.3)
    con.execute("INSERT INTO ev VALUES ('c', ?)", [at(5)])
    query.process_all_available(timeout=30)
    after = dt.datetime.now(dt.UTC)
    elapsed = (after - before).total_seconds()

    first, second = query.recent_progress
    assert query.last_progress is second
    for progress in (first, second):
        assert (progress.id, progress.run_id, progress.name) == (query.id, query.run_id, "out")
        assert before <= parse_time(progress.timestamp) <= after
        phases = dict(progress.duration_ms)
        total = phases.pop("total")
        assert {"plan", "read", "execute", "sink", "commit"} <= set(phases)
        assert 0 < total < elapsed * 1000
        assert all(ms >= 0 for ms in phases.values())
        assert sum(phases.values()) <= total + 0.01  # the phases add up to the total
        processed = progress.num_input_rows / (total / 1000)
        assert progress.processed_rows_per_second == pytest.approx(processed, rel=1e-6)
        assert progress.sink == {
            "name": "out",
            "connector": "DuckDBSink",
            "num_output_rows": progress.num_output_rows,
        }
        assert progress.no_data_batch is False
        (source,) = progress.sources
        assert (source["source"], source["connector"]) == ("ev", "memory")
        assert source["num_input_rows"] == progress.num_input_rows
        assert source["lag"] == 0  # everything inserted was read
        (operator,) = progress.state_operators
        assert operator["num_rows_total"] == progress.state_rows
        assert operator["num_rows_removed"] == 0
    assert (first.batch_id, second.batch_id) == (0, 1)
    assert (first.num_input_rows, second.num_input_rows) == (3, 1)
    assert (first.num_output_rows, second.num_output_rows) == (2, 1)
    assert (first.state_rows, second.state_rows) == (2, 3)
    assert first.watermark == "1970-01-01T00:00:00.000000Z"  # none yet: the epoch
    assert first.next_watermark == "2024-01-01T00:02:00.000000Z"  # max(ts) - 1 minute
    assert second.watermark == first.next_watermark
    assert second.next_watermark == "2024-01-01T00:04:00.000000Z"
    # input rate: rows over the time since the previous batch started (the whole batch for
    # the first); processed rate: rows over the batch's own duration, as in Spark
    assert first.input_rows_per_second == pytest.approx(first.processed_rows_per_second)
    assert 1 / elapsed <= second.input_rows_per_second <= 1 / 0.3
    assert second.input_rows_per_second < second.processed_rows_per_second
    run = first.sources[0]["end_offset"]["run"]  # the source instance whose rows they count
    assert first.sources[0]["start_offset"] == {"rows": 0, "run": run}
    assert first.sources[0]["end_offset"] == {"rows": 3, "run": run}
    assert second.sources[0]["start_offset"] == {"rows": 3, "run": run}
    assert second.sources[0]["end_offset"] == {"rows": 4, "run": run}
    assert [p.state_operators[0]["num_rows_updated"] for p in (first, second)] == [2, 1]
    record = second.to_dict()
    assert record["batch_id"] == 1
    assert record["duration_ms"] == second.duration_ms
    assert json.loads(json.dumps(record)) == record  # plain JSON, as Spark's progress


def test_recent_progress_keeps_the_last_batches_only(con: streamsql.Connection) -> None:
    extra = 5
    con.execute("CREATE SOURCE ev (n BIGINT) WITH (connector = 'memory', max_rows_per_trigger = 1)")
    con.execute("INSERT INTO ev SELECT range FROM range(?)", [RECENT_PROGRESS + extra])
    con.execute("CREATE SINK out WITH (connector = 'duckdb') AS SELECT n FROM ev")
    query = con.query("out")
    query.process_all_available(timeout=60)
    assert rows(con, "SELECT count(*), max(n) FROM out") == [
        (RECENT_PROGRESS + extra, RECENT_PROGRESS + extra - 1)
    ]
    batch_ids = [p.batch_id for p in query.recent_progress]
    assert batch_ids == list(range(extra, RECENT_PROGRESS + extra))
    assert all(p.num_input_rows == 1 for p in query.recent_progress)


def test_status_shows_a_batch_in_flight_and_is_published_after_the_last_batch(
    tmp_path: Path,
) -> None:
    """Issue 11 item 19: `streamsql status` (which reads what the process publishes) shows a
    batch stuck in flight and for how long, and the state after the last batch within a
    second, also when batches came faster than the once-a-second publishing."""
    from streamsql.status import database_status

    release = threading.Event()

    def stuck_second_batch(batch_id: int, batch: pa.Table) -> None:
        if batch_id == 1:
            release.wait(30)

    db = str(tmp_path / "app.db")
    con = streamsql.connect(db)
    try:
        query = callback_query(con, stuck_second_batch, "'a'", "'b'")

        def published() -> dict[str, Any]:
            origin, sinks = database_status(db)
            assert origin.startswith(f"live, published by process {os.getpid()} ")
            return sinks[0] if sinks else {"status": "not published yet"}

        deadline = time.monotonic() + 10
        while not published()["status"].startswith("processing batch 1 for "):
            assert time.monotonic() < deadline, published()
            time.sleep(0.1)
        time.sleep(1.5)  # still stuck: the time it has been in flight grows
        stuck = published()
        assert stuck["running"] is True and stuck["last_batch"] == 0
        assert float(stuck["status"].removeprefix("processing batch 1 for ").rstrip("s")) >= 1.4
        release.set()
        query.process_all_available(timeout=30)
        for k in ("c", "d"):  # two batches within the second
            con.execute(f"INSERT INTO ev VALUES ('{k}')")
            query.process_all_available(timeout=30)
        assert query.last_progress.batch_id == 3
        time.sleep(1.5)
        idle = published()
        assert idle["last_batch"] == 3 and idle["status"].startswith("waiting for data for ")
    finally:
        release.set()
        con.close()


def test_the_status_file_is_refreshed_while_idle_and_a_stale_one_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11 item 19: while a query runs its process rewrites the status file every
    STATUS_HEARTBEAT_SECONDS, also when nothing happens; so a file older than STALE_SECONDS
    (a process hung, or its pid now another program's) shows nothing running."""
    from streamsql import status
    from streamsql.engine import engine

    monkeypatch.setattr(engine, "STATUS_HEARTBEAT_SECONDS", 0.5)
    db = str(tmp_path / "app.db")
    published = engine.status_file(db)
    con = streamsql.connect(db)
    try:
        con.execute("CREATE SOURCE ev (k VARCHAR) WITH (connector = 'memory')")
        con.execute("CREATE SINK s AS SELECT k FROM ev")
        con.query("s").process_all_available(timeout=30)
        time.sleep(1.2)
        first = json.loads(published.read_text())["written_at"]
        time.sleep(1.5)  # idle: no batch, no change of state
        snapshot = json.loads(published.read_text())
        assert snapshot["written_at"] > first
        assert status.database_status(db)[1][0]["running"] is True
        monkeypatch.setattr(engine, "STATUS_HEARTBEAT_SECONDS", 60.0)
        time.sleep(1.2)  # the last quick heartbeat is written; the next is a minute away
        snapshot = json.loads(published.read_text())
        snapshot["written_at"] -= status.STALE_SECONDS
        published.write_text(json.dumps(snapshot))
        origin, (sink,) = status.database_status(db)
        assert "and not refreshed since" in origin
        assert sink["running"] is False
        assert sink["status"] == "not running: its process exited or stopped publishing"
    finally:
        con.close()
