"""Acceptance of the Kafka source, against a real Kafka-protocol broker (Tansu).

1. End to end: 100k user events with out-of-order event times (and late ones) in a
   4-partition topic, the seed's 5-minute tumbling EMIT FINAL count into a duckdb sink,
   trigger available_now: the sink must hold what Spark's rules give. The batch boundaries
   decide which rows are late, so the expectation replays the engine's own boundaries (its
   offset log) through the reference model (tests/reference_model.py); events hours behind
   are late under any split and must all be dropped; windows still open at the end must
   not be emitted.
2. SIGKILL: `streamsql run` on the job, killed at random moments STREAMSQL_KAFKA_KILLS
   times (default 6) and restarted, must end with exactly the sinks, dead letters and
   checkpoint of an uninterrupted run (tests/kafka_crash/harness.py).
3. Broker outage: a running query whose broker is frozen (SIGSTOP) reports the source
   unavailable in its status, waits, and resumes without loss or duplicates.
4. Malformed messages: each one in `_streamsql.dead_letters` with its partition, offset and
   raw bytes, counted in progress; the rest aggregated exactly.
5. A broker that is not there: CREATE SINK fails within a few seconds, saying so.

Topics are created per test (Tansu's producer would auto-create them with one partition);
nothing reads through a consumer group (Tansu's group joins take some 20 s). The workload
and the expectation are in tests/kafka_crash/workload.py. STREAMSQL_KAFKA_SEED changes the
data, STREAMSQL_KAFKA_KILL_SEED repeats the kills' aim (not their exact moments).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import duckdb
import pytest
from kafka_crash import harness
from kafka_crash import workload as w

import streamsql
from streamsql.runtime.progress import QueryProgress
from streamsql.runtime.query import StreamingQuery
from streamsql.testing.broker import Broker, free_port

SEED = int(os.environ.get("STREAMSQL_KAFKA_SEED", "20240101"))
KILLS = int(os.environ.get("STREAMSQL_KAFKA_KILLS", "6"))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[streamsql.Connection]:
    con = streamsql.connect(str(tmp_path / "engine.db"))
    yield con
    con.close()


def assert_matches(
    con: streamsql.Connection,
    query_name: str,
    topic: str,
    messages: Sequence[w.Message],
    progress: Iterable[QueryProgress] | None,
) -> w.Expectation:
    """The window sink against the reference model replayed over the logged batches; returns
    the expectation for further checks."""
    batches = w.logged_batches(con, query_name, topic)
    expected = w.expect(messages, batches)
    outcome = expected.outcome
    # The engine ran the batches Spark's rules schedule, with their thresholds.
    assert [(b.watermark_us, b.late_threshold_us, b.no_data) for b in batches] == [
        (b.watermark, b.late_threshold, b.no_data) for b in outcome.batches
    ]
    assert expected.windows == expected.batch_query  # the model agrees with a batch query
    assert w.windows_rows(con, query_name) == expected.windows
    emitted = con.execute(
        "SELECT epoch_us(window_start::TIMESTAMPTZ), epoch_us(window_end::TIMESTAMPTZ), "
        "batch_id, groups FROM _streamsql.emitted_windows WHERE query = ?",
        [query_name],
    ).fetchall()
    assert {(s, e): (b, g) for s, e, b, g in emitted} == expected.emitted_windows
    if progress is not None:
        by_batch = {p.batch_id: p for p in progress}
        assert sorted(by_batch) == [b.batch_id for b in batches]
        assert [by_batch[b.batch_id].num_late_rows for b in batches] == [
            b.num_late_rows for b in outcome.batches
        ]
        assert [by_batch[b.batch_id].num_input_rows for b in batches] == [
            b.num_input_rows for b in outcome.batches
        ]
    return expected


def spark_rate_limit(start: dict[int, int], until: dict[int, int], limit: int) -> dict[int, int]:
    """Spark's KafkaMicroBatchStream.rateLimit: `limit` offsets prorated by lag, a share
    below one rounded up (no partition starves), others down."""
    sizes = {p: end - start[p] for p, end in until.items() if end > start[p]}
    total = sum(sizes.values())
    ends = {}
    for p, end in until.items():
        if p not in sizes:
            ends[p] = end
            continue
        share = limit * (sizes[p] / total)  # in this order, as Spark computes it
        ends[p] = min(end, start[p] + (math.ceil(share) if share < 1 else math.floor(share)))
    return ends


# -- 1. end to end --------------------------------------------------------------------------------


def test_100k_out_of_order_events_give_sparks_windows_exactly(
    broker: Broker, engine: streamsql.Connection
) -> None:
    topic = broker.create_topic(4)
    messages = w.generate(100_000, seed=SEED, span_hours=4, late_share=0.01, far_late_share=0.002)
    began = time.monotonic()
    w.produce(broker.bootstrap_servers, topic, messages)
    produced = time.monotonic() - began
    engine.execute(w.source_sql(broker.bootstrap_servers, topic, max_offsets_per_trigger=1500))
    engine.execute(w.sink_sql("windows", w.WINDOWS_SELECT, trigger="available_now"))
    query = engine.query("windows")
    assert query.await_termination(timeout=180)
    ran = time.monotonic() - began - produced
    progress = list(query.recent_progress)
    print(f"produced 100k in {produced:.1f} s, {len(progress)} batches in {ran:.1f} s")

    expected = assert_matches(engine, "windows", topic, messages, progress)
    by_jitter = sum(m.kind == "event" for m in messages if m.row_id in expected.late)
    print(
        f"{len(expected.late)} late ({by_jitter} by jitter), {len(expected.windows)} groups "
        f"emitted, {expected.open_groups} open"
    )
    # Spark's rate limit: each batch takes 1500 offsets, shared among the partitions in
    # proportion to their lag; so batches enough for the split to decide lateness.
    batches = w.logged_batches(engine, "windows", topic)
    ends = {p: max(m.offset for m in messages if m.partition == p) + 1 for p in range(4)}
    assert [b.end for b in batches if not b.no_data] == [
        spark_rate_limit(b.start, ends, 1500) for b in batches if not b.no_data
    ]
    assert 60 <= len(batches) < 100
    assert progress[0].sources[0]["lag"] == len(messages) - sum(batches[0].end.values())
    assert progress[-1].sources[0]["lag_by_partition"] == {f"{topic}-{p}": 0 for p in range(4)}
    # Late rows: every event hours behind, most of those well behind the watermark, and the
    # sink holds exactly the rest.
    far_late = {m.row_id for m in messages if m.kind == "far_late"}
    late = {m.row_id for m in messages if m.kind == "late"}
    assert far_late and far_late <= expected.late
    assert len(late & expected.late) > len(late) // 2
    assert sum(p.num_late_rows for p in progress) == len(expected.late)
    assert sum(n for *_, n in expected.windows) + sum(
        len(rows) for rows in expected.outcome.open_groups.values()
    ) == len(messages) - len(expected.late)
    # EMIT FINAL: windows the final watermark has not passed stay in state, unemitted.
    assert expected.open_groups > 0
    assert progress[-1].no_data_batch and progress[-1].state_rows >= expected.open_groups
    assert max(end for _, end, _, _ in w.windows_rows(engine, "windows")) <= (
        expected.final_watermark
    )
    assert all(end > expected.final_watermark for _, end, _ in expected.outcome.open_groups)


# -- 2. SIGKILL --------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkilled_runs_resume_with_exactly_the_uninterrupted_results(
    broker: Broker, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap_servers
    topic = broker.create_topic(4)
    messages = w.generate(
        20_000, seed=SEED + 2, span_hours=6, late_share=0.01, far_late_share=0.002, bad_share=0.01
    )
    w.produce(bootstrap, topic, messages)
    bad = [m for m in messages if not m.valid]

    harness.prepare(tmp_path / "reference", bootstrap, topic)
    timing = harness.run_reference(tmp_path / "reference")
    reference = harness.collect(tmp_path / "reference")
    # The uninterrupted run is right: Spark's windows over the batches it logged, every
    # valid event in the totals, every malformed message once per sink.
    con = duckdb.connect(str(tmp_path / "reference" / "app.db"), read_only=True)
    try:
        expected = w.expect(messages, w.logged_batches(con, "windows", topic))
        assert w.windows_rows(con, "windows") == expected.windows == expected.batch_query
        assert w.check_coverage(messages, w.logged_batches(con, "totals", topic)) == []
    finally:
        con.close()
    assert expected.late and expected.open_groups
    assert reference.tables["totals"] == [tuple(row) for row in w.totals(messages)]
    for sink in harness.SINKS:
        dead = sorted(
            (p, o, raw) for q, _, _, p, o, raw, _ in reference.tables["dead_letters"] if q == sink
        )
        assert dead == sorted((f"{topic}-{m.partition}", m.offset, m.value) for m in bad)
    print(timing)
    assert min(timing.batches.values()) >= 40, timing

    seed = int(os.environ.get("STREAMSQL_KAFKA_KILL_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    kills = []
    for run in harness.crash_rounds(tmp_path, bootstrap, topic, KILLS, timing, rng):
        context = f"seed {seed}, {run.summary()}"
        print(context)
        assert run.findings == [], context
        assert harness.collect(run.directory).differences(reference) == [], context
        kills += run.kills
    assert len(kills) >= KILLS
    assert sum(bool(kill.in_flight) for kill in kills) >= max(1, KILLS // 4), f"seed {seed}"


# -- 3. broker outage ---------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float, every: float = 0.02) -> float | None:
    """Seconds until `condition()` held, or None if it did not within `timeout`."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if condition():
            return time.monotonic() - began
        time.sleep(every)
    return None


def read_up_to(query: StreamingQuery) -> int:
    """Offsets the query has committed, over all partitions."""
    progress = query.last_progress
    if progress is None:
        return 0
    return sum(sum(p.values()) for p in progress.sources[0]["end_offset"].values())


def test_a_broker_outage_makes_the_query_wait_and_resume_without_loss(tmp_path: Path) -> None:
    pause_seconds = 4.0
    with Broker() as private:
        bootstrap = private.bootstrap_servers
        topic = private.create_topic(4)
        messages = w.generate(7000, seed=SEED + 3, span_hours=1, late_share=0.01)
        before, during, after = messages[:1000], messages[1000:5000], messages[5000:]
        w.produce(bootstrap, topic, before)
        con = streamsql.connect(str(tmp_path / "engine.db"))
        try:
            con.execute(
                w.source_sql(
                    bootstrap,
                    topic,
                    request_timeout="1 second",
                    connect_timeout="1 second",
                    max_offsets_per_trigger=200,
                )
            )
            # A batch every 100 ms of at most 200 offsets: the 4000 messages produced just
            # before the outage take some 2 s to read, so most are still waiting in Kafka.
            con.execute(w.sink_sql("windows", w.WINDOWS_SELECT, trigger="100 ms"))
            query = con.query("windows")
            query.process_all_available(timeout=60)
            assert read_up_to(query) == len(before)

            w.produce(bootstrap, topic, during)
            private.pause()
            paused = time.monotonic()
            try:
                noticed = wait_for(lambda: not query.status["source_available"], timeout=10)
                assert noticed is not None, query.status
                status = query.status
                assert status["message"].startswith("source events unavailable"), status
                assert status["is_active"] and status["error"] is None
                assert read_up_to(query) < len(before) + len(during)  # data is pending
                last = query.last_progress.batch_id
                time.sleep(max(0.0, pause_seconds - (time.monotonic() - paused)))
                # Still waiting, not failed, no batch committed without the broker.
                assert not query.status["source_available"] and query.is_active
                assert query.last_progress.batch_id == last
            finally:
                private.resume()
            w.produce(bootstrap, topic, after)
            recovered = wait_for(lambda: query.status["source_available"], timeout=30)
            assert recovered is not None, query.status
            query.process_all_available(timeout=60)
            status = query.status
            assert status["source_available"] and status["is_active"], status
            assert "unavailable" not in status["message"], status
            print(
                f"unavailable noticed {noticed:.1f} s into the outage; back {recovered:.1f} s after"
            )

            assert read_up_to(query) == len(messages)
            expected = assert_matches(con, "windows", topic, messages, query.recent_progress)
            assert expected.late  # the late events were dropped, the rest counted once
        finally:
            con.close()


# -- 4. malformed messages ------------------------------------------------------------------------


def test_malformed_messages_are_dead_letters_with_partition_offset_and_raw_bytes(
    broker: Broker, engine: streamsql.Connection
) -> None:
    topic = broker.create_topic(4)
    messages = w.generate(
        20_000, seed=SEED + 4, span_hours=2, late_share=0, far_late_share=0, bad_share=0.01
    )
    w.produce(broker.bootstrap_servers, topic, messages)
    bad = [m for m in messages if not m.valid]
    assert {m.kind for m in bad} == set(w.MALFORMED) and 150 < len(bad) < 250
    engine.execute(w.source_sql(broker.bootstrap_servers, topic, max_offsets_per_trigger=3000))
    engine.execute(w.sink_sql("totals", w.TOTALS_SELECT, trigger="available_now"))
    query = engine.query("totals")
    assert query.await_termination(timeout=120)
    progress = list(query.recent_progress)

    dead = w.dead_letters(engine, "totals")
    # Every malformed message once, where it is in Kafka, its bytes as they were.
    assert [(p, o, raw) for p, o, raw, *_ in dead] == sorted(
        (f"{topic}-{m.partition}", m.offset, m.value) for m in bad
    )
    kinds = {(f"{topic}-{m.partition}", m.offset): m for m in bad}
    batches = w.logged_batches(engine, "totals", topic)
    ranges = {b.batch_id: b for b in batches}
    for partition, offset, _, error, batch_id, source in dead:
        message = kinds[(partition, offset)]
        assert source == "events"
        assert error, (message.kind, message.value)
        if message.broken:  # a wrong type: the error names the column and its type
            other = ({"user_id", "timestamp"} - {message.broken}).pop()
            assert message.broken in error and other not in error, (message.value, error)
            assert "BIGINT" in error, (message.value, error)
        # recorded by the batch that read it
        batch = ranges[batch_id]
        assert batch.start.get(message.partition, 0) <= offset < batch.end[message.partition]
    assert sum(p.num_dead_letters for p in progress) == len(bad)
    assert [p.num_dead_letters for p in progress] == [
        sum(d[4] == b.batch_id for d in dead) for b in batches
    ]
    # The rest, aggregated exactly: every valid event once.
    assert sum(p.num_input_rows for p in progress) == len(messages) - len(bad)
    assert engine.execute(
        "SELECT event_type, n, user_sum, first_ms, last_ms FROM totals ORDER BY event_type"
    ).fetchall() == w.totals(messages)


# -- 5. no broker -------------------------------------------------------------------------------


def test_create_sink_fails_within_seconds_when_no_broker_listens(
    engine: streamsql.Connection,
) -> None:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    engine.execute(w.source_sql(bootstrap, "events-nowhere", connect_timeout="1 second"))
    began = time.monotonic()
    with pytest.raises(streamsql.OperationalError) as caught:
        engine.execute(w.sink_sql("windows", w.WINDOWS_SELECT))
    elapsed = time.monotonic() - began
    message = str(caught.value)
    assert elapsed < 5, elapsed
    assert bootstrap in message and "Kafka" in message, message
    assert "reach" in message or "connect" in message, message
    # Nothing is left of the sink, and it can be created once the broker is there.
    assert engine.execute("SHOW SINKS").fetchall() == []
    assert engine.execute("SELECT count(*) FROM _streamsql.metadata").fetchall() == [(0,)]
    with Broker(port) as late_broker:
        topic = late_broker.create_topic(1)
        engine.execute(
            w.source_sql(bootstrap, topic, connect_timeout="1 second").replace(
                "CREATE SOURCE", "CREATE OR REPLACE SOURCE"
            )
        )
        messages = w.generate(100, seed=SEED + 5, partitions=1, span_hours=1)
        w.produce(bootstrap, topic, messages)
        engine.execute(w.sink_sql("totals", w.TOTALS_SELECT))
        engine.query("totals").process_all_available(timeout=30)
        assert engine.execute(
            "SELECT event_type, n, user_sum, first_ms, last_ms FROM totals ORDER BY 1"
        ).fetchall() == w.totals(messages)
        engine.query("totals").stop()
