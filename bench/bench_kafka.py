"""Kafka source throughput against the raw consumers, on one private broker in one run.

Produces `--messages` JSON events (user_id, event_type, timestamp in ms) to a 4-partition
topic on a private Tansu broker (streamsql.testing.broker), then measures on the same
messages:
  (a) kafka-python's KafkaConsumer, manual assignment from the beginning, a poll loop that
      touches nothing: the ceiling for client = 'kafka-python';
  (b) the engine with client = 'kafka-python': the seed query (5-minute tumbling count per
      event type, 10-minute watermark), trigger 'available_now', into a duckdb sink; msgs/s
      from the wall time between CREATE SINK and the query's termination;
  (c) confluent-kafka's Consumer, manual assignment, a consume() loop that touches nothing,
      with the settings ConfluentClient uses (large fetches): the ceiling for (d);
  (d) the engine with client = 'confluent'.
and prints msgs/s for each, the engine/raw ratios (target >= 90%), and where the engine's
time went (the batches' own read/execute/sink/commit timings).

    python bench/bench_kafka.py [--messages 500000] [--max-offsets-per-trigger N]
                                [--repeat 1] [--profile confluent|kafka-python]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import pstats
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

import streamsql
from streamsql.runtime.query import StreamingQuery
from streamsql.testing.broker import Broker

PARTITIONS = 4
EVENT_TYPES = (b"click", b"view", b"purchase")
T0_MS = 1_704_067_200_000  # 2024-01-01
TARGET = 0.90

SOURCE = """
CREATE SOURCE events (
    user_id    BIGINT,
    event_type VARCHAR,
    timestamp  BIGINT,
    event_time AS to_timestamp(timestamp / 1000),
    WATERMARK FOR event_time AS event_time - INTERVAL '10 minutes'
) WITH (
    connector = 'kafka',
    bootstrap_servers = '{servers}',
    topic = '{topic}',
    starting_offsets = 'earliest',
    format = 'json',
    client = '{client}'{limit}
)
"""
SINK = """
CREATE SINK clicks_per_window WITH (connector = 'duckdb', trigger = 'available_now') AS
SELECT window_start, window_end, event_type, count(*) AS n
FROM events
WINDOW TUMBLING (event_time, INTERVAL '5 minutes')
GROUP BY window_start, window_end, event_type
EMIT FINAL
"""


def event(i: int) -> bytes:
    """Event i: 1000 users, three event types, 10 ms apart (about 80 minutes per 500k)."""
    return b'{"user_id": %d, "event_type": "%s", "timestamp": %d}' % (
        i % 1000,
        EVENT_TYPES[i % 3],
        T0_MS + i * 10,
    )


def produce(servers: str, topic: str, count: int) -> float:
    """Write `count` events round-robin over the partitions; returns seconds taken."""
    started = time.perf_counter()
    try:
        from confluent_kafka import Producer
    except ImportError:  # kafka-python's producer: slower, same messages
        from kafka import KafkaProducer

        producer = KafkaProducer(
            bootstrap_servers=servers, linger_ms=20, batch_size=1 << 20, acks=1
        )
        for i in range(count):
            producer.send(topic, event(i), partition=i % PARTITIONS)
        producer.flush()
        producer.close()
        return time.perf_counter() - started
    producer = Producer(
        {
            "bootstrap.servers": servers,
            "linger.ms": 20,
            "batch.size": 1 << 20,
            "queue.buffering.max.messages": 1_000_000,
            "enable.idempotence": False,
        }
    )
    for i in range(count):
        while True:
            try:
                producer.produce(topic, event(i), partition=i % PARTITIONS)
                break
            except BufferError:
                producer.poll(0.01)
    if producer.flush(60) != 0:
        raise RuntimeError("messages still unsent after 60 s")
    return time.perf_counter() - started


def raw_kafka_python(servers: str, topic: str, count: int) -> float:
    """Seconds for KafkaConsumer to hand over `count` records (nothing done with them)."""
    consumer = KafkaConsumer(
        bootstrap_servers=servers,
        enable_auto_commit=False,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
        max_poll_records=100_000,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        started = time.perf_counter()
        seen = 0
        while seen < count:
            for records in consumer.poll(timeout_ms=1000).values():
                seen += len(records)
        return time.perf_counter() - started
    finally:
        consumer.close()


def raw_confluent(servers: str, topic: str, count: int) -> float:
    """Seconds for confluent-kafka's Consumer to hand over `count` messages, with the
    consumer settings of ConfluentClient (nothing done with the messages)."""
    from confluent_kafka import Consumer
    from confluent_kafka import TopicPartition as ConfluentPartition

    from streamsql.connectors.kafka.confluent import CHUNK, CONSUMER_SETTINGS

    consumer = Consumer({**CONSUMER_SETTINGS, "bootstrap.servers": servers})
    try:
        consumer.list_topics(timeout=10)  # connected, as the engine's client is by then
        started = time.perf_counter()
        consumer.assign([ConfluentPartition(topic, p, 0) for p in range(PARTITIONS)])
        seen = 0
        while seen < count:  # never more than are left, or consume() waits out its timeout
            for message in consumer.consume(min(CHUNK, count - seen), 1.0):
                if message.error() is None:
                    seen += 1
        return time.perf_counter() - started
    finally:
        consumer.close()


def raw_confluent_untouched(servers: str, topic: str, count: int) -> float:
    """As raw_confluent, counting len() of each consume() (not even error() per message)."""
    from confluent_kafka import Consumer
    from confluent_kafka import TopicPartition as ConfluentPartition

    from streamsql.connectors.kafka.confluent import CHUNK, CONSUMER_SETTINGS

    consumer = Consumer({**CONSUMER_SETTINGS, "bootstrap.servers": servers})
    try:
        consumer.list_topics(timeout=10)
        started = time.perf_counter()
        consumer.assign([ConfluentPartition(topic, p, 0) for p in range(PARTITIONS)])
        seen = 0
        while seen < count:  # end-of-partition events are counted: a few too many
            seen += len(consumer.consume(min(CHUNK, count - seen), 1.0))
        return time.perf_counter() - started
    finally:
        consumer.close()


def engine(
    servers: str, topic: str, client: str, limit: int | None, profile: bool
) -> tuple[float, int, int, dict[str, float]]:
    """Seconds from CREATE SINK to the query's end, rows processed, batches, and the sums
    of the batches' timings (ms)."""
    with tempfile.TemporaryDirectory() as scratch:
        con = streamsql.connect(str(Path(scratch) / "bench.db"))
        try:
            option = f",\n    max_offsets_per_trigger = {limit}" if limit else ""
            con.execute(SOURCE.format(servers=servers, topic=topic, client=client, limit=option))
            with _profiled(profile) as profiler:
                started = time.perf_counter()
                con.execute(SINK)
                query = con.engine.queries["clicks_per_window"]
                query.await_termination()
                seconds = time.perf_counter() - started
            if profiler is not None:
                print(f"\n  cProfile of the query thread, client = {client!r}:")
                stats = pstats.Stats(profiler)
                stats.sort_stats("tottime").print_stats(25)
                stats.sort_stats("cumulative").print_stats(30)
            progress = list(query.recent_progress)
            complete = bool(progress) and len(progress) == progress[-1].batch_id + 1
            rows = sum(p.num_input_rows for p in progress) if complete else -1
            timings: dict[str, float] = {}
            for p in progress:
                for step, ms in p.duration_ms.items():
                    timings[step] = timings.get(step, 0.0) + ms
            return seconds, rows, len(progress), timings
        finally:
            con.close()


@contextlib.contextmanager
def _profiled(enabled: bool) -> Iterator[cProfile.Profile | None]:
    """cProfile the query threads started inside the block (a query runs on its own)."""
    if not enabled:
        yield None
        return
    profiler = cProfile.Profile()
    loop = StreamingQuery._loop

    def profiled_loop(self: StreamingQuery) -> None:
        profiler.runcall(loop, self)

    StreamingQuery._loop = profiled_loop
    try:
        yield profiler
    finally:
        StreamingQuery._loop = loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500_000)
    parser.add_argument(
        "--max-offsets-per-trigger",
        type=int,
        default=None,
        help="the source's max_offsets_per_trigger (default: none, one batch)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement")
    parser.add_argument(
        "--profile",
        choices=("confluent", "kafka-python"),
        help="cProfile the engine's query thread with this client and print the top calls",
    )
    args = parser.parse_args()
    count, limit = args.messages, args.max_offsets_per_trigger
    try:
        import confluent_kafka

        confluent = f"confluent-kafka {confluent_kafka.version()[0]}"
    except ImportError:
        confluent = None
    results: dict[str, float] = {}
    with Broker() as broker:
        servers = broker.bootstrap_servers
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        admin = KafkaAdminClient(bootstrap_servers=servers)
        admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
        admin.close()
        seconds = produce(servers, topic, count)
        print(
            f"{count:,} JSON events on {PARTITIONS} partitions of a Tansu broker "
            f"(produced at {count / seconds:,.0f} msgs/s); "
            f"max_offsets_per_trigger = {limit or 'none'}; best of {args.repeat}"
        )

        def best(measure) -> float:
            return min(measure() for _ in range(args.repeat))

        def engine_run(client: str) -> float:
            runs = [
                engine(servers, topic, client, limit, args.profile == client)
                for _ in range(args.repeat)
            ]
            seconds, rows, batches, timings = min(runs, key=lambda run: run[0])
            shown = ", ".join(
                f"{step} {ms / 1000:.2f} s" for step, ms in timings.items() if step != "total"
            )
            print(
                f"      {rows if rows >= 0 else '?':,} rows processed in {batches} batches; "
                f"in the batches: {shown}"
            )
            if rows not in (count, -1):
                print(f"      WARNING: {rows:,} rows processed, {count:,} produced")
            return seconds

        results["raw_kafka_python"] = count / best(lambda: raw_kafka_python(servers, topic, count))
        print(f"  (a) raw kafka-python consumer:     {results['raw_kafka_python']:>12,.0f} msgs/s")
        seconds = engine_run("kafka-python")
        results["engine_kafka_python"] = count / seconds
        print(
            f"  (b) engine, client kafka-python:   {results['engine_kafka_python']:>12,.0f} msgs/s"
        )
        if confluent is None:
            print(
                "  (c), (d): confluent-kafka is not installed (pip install 'streamsql[confluent]')"
            )
        else:
            results["raw_confluent"] = count / best(lambda: raw_confluent(servers, topic, count))
            print(
                f"  (c) raw confluent consumer:       {results['raw_confluent']:>12,.0f} msgs/s "
                f"({confluent}; error() per message)"
            )
            results["raw_confluent_untouched"] = count / best(
                lambda: raw_confluent_untouched(servers, topic, count)
            )
            print(
                f"      raw, len() of each consume():  "
                f"{results['raw_confluent_untouched']:>12,.0f} msgs/s"
            )
            seconds = engine_run("confluent")
            results["engine_confluent"] = count / seconds
            print(
                f"  (d) engine, client confluent:      {results['engine_confluent']:>12,.0f} msgs/s"
            )
    ratios = {"kafka-python": results["engine_kafka_python"] / results["raw_kafka_python"]}
    if confluent is not None:
        ratios["confluent"] = results["engine_confluent"] / results["raw_confluent"]
    for client, ratio in ratios.items():
        verdict = "met" if ratio >= TARGET else "MISSED"
        print(f"engine / raw, {client:12}: {ratio:6.1%}  (target >= {TARGET:.0%}: {verdict})")
    if confluent is not None:
        print(
            f"engine confluent / engine kafka-python: "
            f"{results['engine_confluent'] / results['engine_kafka_python']:.2f}x"
        )
    print(json.dumps({k: round(v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
