"""The kafka source with client = 'confluent' (librdkafka) against the real broker (Tansu).

First the client on its own, side by side with the kafka-python client on the same topics:
the same partitions, the same watermarks (from Fetch responses: Tansu's ListOffsets(latest)
under-reports the end of a log written in multi-record batches), the same records, the same
errors. Then a representative part of the source's behaviour through the engine: JSON with
METADATA columns over four partitions, dead letters at their partition and offset, an
available_now windowed count equal to the kafka-python client's, starting offsets, a limit
per trigger, group offsets, and a broker that cannot be reached or stops answering.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as ConfluentPartition
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.errors import OffsetOutOfRangeError, UnknownTopicOrPartitionError

import streamsql
from streamsql.connectors.kafka.client import PartitionError, Watermarks
from streamsql.connectors.kafka.confluent import ConfluentClient, librdkafka_settings
from streamsql.connectors.kafka.kafka_python import KafkaPythonClient
from streamsql.runtime.query import StreamingQuery
from streamsql.testing.broker import Broker, free_port

T0_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
DEAD_LETTERS = (
    'SELECT query, batch_id, source, "partition", "offset", raw, error '
    'FROM _streamsql.dead_letters ORDER BY "partition", "offset"'
)
WINDOWED = """
CREATE SINK {name} WITH (connector = 'duckdb', trigger = 'available_now') AS
SELECT window_start, window_end, event_type, count(*) AS n
FROM {source}
WINDOW TUMBLING (event_time, INTERVAL '5 minutes')
GROUP BY window_start, window_end, event_type
EMIT FINAL
"""
EVENT_COLUMNS = (
    "user_id BIGINT, event_type VARCHAR, timestamp BIGINT, "
    "event_time AS to_timestamp(timestamp / 1000), "
    "WATERMARK FOR event_time AS event_time - INTERVAL '10 minutes'"
)


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def batching(broker: Broker) -> Iterator[KafkaProducer]:
    """A producer that puts many records in one batch (what Tansu's ListOffsets gets wrong)."""
    client = KafkaProducer(
        bootstrap_servers=broker.bootstrap_servers, linger_ms=50, batch_size=1 << 20
    )
    yield client
    client.close()


@pytest.fixture
def clients(broker: Broker) -> Iterator[tuple[KafkaPythonClient, ConfluentClient]]:
    config = {"request_timeout_ms": 10_000}
    reference = KafkaPythonClient(broker.bootstrap_servers, config, 10)
    confluent = ConfluentClient(broker.bootstrap_servers, config, 10)
    yield reference, confluent
    reference.close()
    confluent.close()


def produce(producer: KafkaProducer, topic: str, records: list[dict[str, Any]]) -> list[Any]:
    """Send records (dicts of send() arguments) and wait for every ack; their metadata."""
    futures = [producer.send(topic, **record) for record in records]
    producer.flush()
    return [future.get(timeout=10) for future in futures]


def event(i: int, partitions: int = 4) -> dict[str, Any]:
    """Event i of a stream 7 s apart, round-robin over the partitions."""
    value = {"user_id": i % 13, "event_type": ("click", "view", "buy")[i % 3]}
    value["timestamp"] = T0_MS + 7_000 * i
    return {"partition": i % partitions, "value": json.dumps(value).encode()}


def kafka_source(
    broker: Broker | str, topic: str, columns: str, name: str = "ev", **options: object
) -> str:
    servers = broker if isinstance(broker, str) else broker.bootstrap_servers
    options = {"topic": topic, "starting_offsets": "earliest", "client": "confluent", **options}
    extra = "".join(f", {key} = '{value}'" for key, value in options.items())
    return (
        f"CREATE SOURCE {name} ({columns}) WITH (connector = 'kafka', "
        f"bootstrap_servers = '{servers}'{extra})"
    )


def copy_sink(source: str = "ev", name: str = "out", trigger: str | None = "available_now") -> str:
    option = f", trigger = '{trigger}'" if trigger else ""
    return f"CREATE SINK {name} WITH (connector = 'duckdb'{option}) AS SELECT * FROM {source}"


def run_to_end(con: streamsql.Connection, sql: str, name: str = "out") -> StreamingQuery:
    con.execute(sql)
    query = con.query(name)
    assert query.await_termination(60) is True
    assert query.exception is None
    return query


def rows(con: streamsql.Connection, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- the client beside kafka-python's ----------------------------------------------------------


def test_watermarks_are_fetch_high_watermarks_of_multi_record_batches(
    broker: Broker,
    batching: KafkaProducer,
    clients: tuple[KafkaPythonClient, ConfluentClient],
) -> None:
    reference, confluent = clients
    topic = broker.create_topic(3)
    produce(batching, topic, [{"partition": i % 2, "value": b"%d" % i} for i in range(50)])
    produce(batching, topic, [{"partition": 0, "value": b"x"} for _ in range(30)])
    partitions = confluent.partitions([topic], None)
    assert partitions == [TopicPartition(topic, p) for p in range(3)]
    assert partitions == reference.partitions([topic], None)
    expected = {
        partitions[0]: Watermarks(0, 55),
        partitions[1]: Watermarks(0, 25),
        partitions[2]: Watermarks(0, 0),
    }
    assert confluent.watermarks(partitions) == expected
    assert reference.watermarks(partitions) == expected
    # What librdkafka's ListOffsets-based lookup says on this broker, for the record: the
    # base offset of the last batch + 1, which is why the client never relies on it.
    probe = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": "probe"})
    try:
        _, listed = probe.get_watermark_offsets(
            ConfluentPartition(topic, 0), timeout=10, cached=False
        )
    finally:
        probe.close()
    assert listed <= 55
    # Fresh on every call, never a cached answer: more records move the high watermark.
    produce(batching, topic, [{"partition": 2, "value": b"y"} for _ in range(7)])
    assert confluent.watermarks([partitions[2]]) == {partitions[2]: Watermarks(0, 7)}
    assert confluent.watermarks(partitions) == {
        **expected,
        partitions[2]: Watermarks(0, 7),
    }


def test_fetch_gives_the_same_columns_as_the_kafka_python_client(
    broker: Broker,
    batching: KafkaProducer,
    clients: tuple[KafkaPythonClient, ConfluentClient],
) -> None:
    reference, confluent = clients
    topic = broker.create_topic(3)
    produce(
        batching,
        topic,
        [
            {
                "partition": i % 3,
                "key": None if i % 4 == 0 and i % 17 else b"k%d" % i,
                "value": None if i % 17 == 0 else b'{"n": %d}' % i,
                "headers": [("h", b"%d" % i), ("e", b"")] if i % 5 == 0 else [],
                "timestamp_ms": T0_MS + i,
            }
            for i in range(600)
        ],
    )
    tps = [TopicPartition(topic, p) for p in range(3)]
    # Ranges starting and ending inside the producer's batches, one empty, one record.
    ranges = {tps[0]: (13, 177), tps[1]: (0, 200), tps[2]: (199, 200)}
    for keep_headers in (False, True):
        expected = reference.fetch(ranges, keep_headers)
        got = confluent.fetch(ranges, keep_headers)
        assert set(got) == set(ranges)
        for tp in ranges:
            assert got[tp].table().equals(expected[tp].table()), tp
            assert got[tp].done
    table = confluent.fetch(ranges, True)[tps[0]].table()
    assert table["offset"].to_pylist() == list(range(13, 177))
    assert table["headers"][2].as_py() == [{"key": "h", "value": b"45"}, {"key": "e", "value": b""}]
    assert confluent.fetch({tps[1]: (5, 5)}, False)[tps[1]].table().num_rows == 0


def test_fetch_errors_are_the_kafka_python_clients(
    broker: Broker,
    batching: KafkaProducer,
    clients: tuple[KafkaPythonClient, ConfluentClient],
) -> None:
    reference, confluent = clients
    topic = broker.create_topic(1)
    produce(batching, topic, [{"partition": 0, "value": b"v"} for _ in range(10)])
    beyond = {TopicPartition(topic, 0): (5, 12)}  # the log ends at 10
    for client in (reference, confluent):
        with pytest.raises(PartitionError) as caught:
            client.fetch(beyond, False)
        assert caught.value.error is OffsetOutOfRangeError
    missing = TopicPartition(topic, 3)
    for client in (reference, confluent):
        with pytest.raises(PartitionError) as caught:
            client.fetch({missing: (0, 1)}, False)
        assert (caught.value.partition, caught.value.error) == (
            missing,
            UnknownTopicOrPartitionError,
        )
    with pytest.raises(PartitionError) as caught:
        confluent.partitions([f"missing-{uuid.uuid4().hex[:8]}"], None)
    assert caught.value.error is UnknownTopicOrPartitionError
    assert confluent.partitions(None, f"{topic}|nothing-else") == [TopicPartition(topic, 0)]


def test_kafka_python_settings_become_librdkafka_ones_or_are_refused() -> None:
    assert librdkafka_settings(
        {
            "request_timeout_ms": 5000,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": "u",
            "sasl_plain_password": "p",
            "ssl_cafile": "/ca.pem",
            "ssl_check_hostname": False,
            "client_id": "me",
        }
    ) == {
        "socket.timeout.ms": 5000,
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "u",
        "sasl.password": "p",
        "ssl.ca.location": "/ca.pem",
        "ssl.endpoint.identification.algorithm": "none",
        "client.id": "me",
        "receive.message.max.bytes": (64 << 20) + (1 << 20),
    }
    for setting, why in [
        ("api_version", "ApiVersions"),
        ("sasl_kerberos_domain_name", "host name"),
        ("max_poll_records", "no librdkafka equivalent"),
    ]:
        with pytest.raises(streamsql.ProgrammingError) as caught:
            librdkafka_settings({setting: "x"})
        assert f"kafka.{setting} cannot be used with client = 'confluent'" in str(caught.value)
        assert why in str(caught.value)


def test_kafka_options_are_checked_at_create_source(
    broker: Broker, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(1)
    with pytest.raises(streamsql.ProgrammingError, match=r"kafka\.api_version cannot be used"):
        con.execute(kafka_source(broker, topic, "v BIGINT", **{"kafka.api_version": "2.8"}))
    with pytest.raises(streamsql.ProgrammingError, match="librdkafka refuses the settings"):
        con.execute(
            kafka_source(
                broker, topic, "v BIGINT", **{"kafka.security_protocol": "SSL",
                                              "kafka.ssl_cafile": "/no/such/ca.pem"}
            )
        )  # fmt: skip
    assert rows(con, "SHOW SOURCES") == []
    con.execute(kafka_source(broker, topic, "v BIGINT", **{"kafka.client_id": "mine"}))
    assert con.engine.source("ev").client.settings["client.id"] == "mine"


# -- the source through the engine -------------------------------------------------------------


def test_json_and_metadata_columns_across_four_partitions(
    broker: Broker, batching: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(4)
    sent = produce(
        batching,
        topic,
        [
            {
                "partition": i % 4,
                "key": None if i % 5 == 0 else b"user-%d" % (i % 11),
                "value": json.dumps({"user_id": i, "name": f"n\u00e9{i}"}).encode(),
            }
            for i in range(400)
        ],
    )
    con.execute(
        kafka_source(
            broker,
            topic,
            "user_id BIGINT, name VARCHAR, k VARCHAR METADATA FROM 'key', "
            "part INT METADATA FROM 'partition', off BIGINT METADATA FROM 'offset'",
        )
    )
    query = run_to_end(con, copy_sink())
    assert isinstance(query.execution.sources["ev"].client, ConfluentClient)
    expected = sorted(
        (
            i,
            f"n\u00e9{i}",
            None if i % 5 == 0 else f"user-{i % 11}",
            meta.partition,
            meta.offset,
        )
        for i, meta in enumerate(sent)
    )
    assert sorted(rows(con, "SELECT * FROM out")) == expected
    assert rows(
        con, "SELECT part, min(off), max(off), count(*) FROM out GROUP BY part ORDER BY part"
    ) == [(p, 0, 99, 100) for p in range(4)]
    (progress,) = query.recent_progress
    assert (progress.num_input_rows, progress.num_dead_letters) == (400, 0)
    (source,) = progress.sources
    assert source["end_offset"] == {topic: {str(p): 100 for p in range(4)}}
    assert source["lag_by_partition"] == {f"{topic}-{p}": 0 for p in range(4)}


def test_bad_values_are_dead_letters_at_their_partition_and_offset(
    broker: Broker, batching: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(2)
    values = [b'{"user_id": 1}', b"{not json", b'{"user_id": "many"}', b"[1]", None]
    produce(batching, topic, [{"partition": 1, "key": b"k", "value": v} for v in values])
    produce(batching, topic, [{"partition": 0, "value": b'{"user_id": 2}'}])
    con.execute(kafka_source(broker, topic, "user_id BIGINT"))
    query = run_to_end(con, copy_sink())
    assert sorted(rows(con, "SELECT user_id FROM out")) == [(1,), (2,)]
    dead = rows(con, DEAD_LETTERS)
    assert [row[:6] for row in dead] == [
        ("out", 0, "ev", f"{topic}-1", 1, b"{not json"),
        ("out", 0, "ev", f"{topic}-1", 2, b'{"user_id": "many"}'),
        ("out", 0, "ev", f"{topic}-1", 3, b"[1]"),
        ("out", 0, "ev", f"{topic}-1", 4, None),
    ]
    assert "malformed" in dead[0][6].lower()
    assert "user_id" in dead[1][6]
    assert (query.last_progress.num_input_rows, query.last_progress.num_dead_letters) == (2, 4)


@pytest.mark.parametrize("limit", [None, 70])
def test_an_available_now_windowed_count_equals_the_kafka_python_clients(
    broker: Broker,
    batching: KafkaProducer,
    con: streamsql.Connection,
    limit: int | None,
) -> None:
    topic = broker.create_topic(4)
    produce(batching, topic, [event(i) for i in range(600)])
    extra = {"max_offsets_per_trigger": limit} if limit else {}
    for client in ("kafka-python", "confluent"):
        name = client.replace("-", "_")
        con.execute(
            kafka_source(broker, topic, EVENT_COLUMNS, name=f"src_{name}", client=client, **extra)
        )
        query = run_to_end(
            con, WINDOWED.format(name=f"w_{name}", source=f"src_{name}"), f"w_{name}"
        )
        assert sum(p.num_input_rows for p in query.recent_progress) == 600
        if limit:
            assert len(query.recent_progress) >= 600 // limit
    result = "SELECT * FROM {} ORDER BY window_start, event_type"
    expected = rows(con, result.format("w_kafka_python"))
    assert len(expected) > 10  # 70 minutes of events: 14 windows, 3 types, the last open
    assert rows(con, result.format("w_confluent")) == expected


def test_starting_offsets_latest_reads_only_what_comes_after_the_start(
    broker: Broker, batching: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(2)
    produce(batching, topic, [{"partition": i % 2, "value": b'{"v": %d}' % i} for i in range(6)])
    con.execute(kafka_source(broker, topic, "v BIGINT", starting_offsets="latest"))
    con.execute(copy_sink(trigger=None))
    query = con.query("out")
    query.process_all_available(timeout=30)
    assert rows(con, "SELECT count(*) FROM out") == [(0,)]
    produce(batching, topic, [{"partition": i % 2, "value": b'{"v": %d}' % i} for i in range(6, 9)])
    query.process_all_available(timeout=30)
    assert rows(con, "SELECT v FROM out ORDER BY v") == [(6,), (7,), (8,)]
    (first,) = [p for p in query.recent_progress if p.num_input_rows]
    assert first.sources[0]["start_offset"] == {topic: {"0": 3, "1": 3}}
    assert first.sources[0]["end_offset"] == {topic: {"0": 5, "1": 4}}


def test_group_id_gets_a_copy_of_the_committed_offsets(
    broker: Broker, admin: KafkaAdminClient, batching: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(2)
    group = f"lag-{uuid.uuid4().hex[:8]}"
    produce(batching, topic, [{"partition": i % 2, "value": b'{"v": 1}'} for i in range(5)])
    con.execute(kafka_source(broker, topic, "v BIGINT", group_id=group))
    began = time.monotonic()
    run_to_end(con, copy_sink())
    assert time.monotonic() - began < 10  # no consumer group is joined
    found = admin.list_group_offsets({group: None})[group]
    assert {tp.partition: meta.offset for tp, meta in found.items()} == {0: 3, 1: 2}


def test_an_unreachable_broker_fails_create_sink_quickly_naming_the_address(
    con: streamsql.Connection,
) -> None:
    address = f"127.0.0.1:{free_port()}"
    con.execute(kafka_source(address, "t", "v BIGINT", connect_timeout="1 second"))
    began = time.monotonic()
    with pytest.raises(streamsql.OperationalError) as caught:
        con.execute(copy_sink(trigger=None))
    assert time.monotonic() - began < 5
    assert f"cannot reach Kafka at {address} within 1 s" in str(caught.value)
    assert rows(con, "SHOW SINKS") == []


def test_a_topic_that_does_not_exist_is_a_clear_error(
    broker: Broker, admin: KafkaAdminClient, con: streamsql.Connection
) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    con.execute(kafka_source(broker, missing, "v BIGINT"))
    with pytest.raises(streamsql.DataError) as caught:
        con.execute(copy_sink())
    assert str(caught.value) == f"Source ev: topic '{missing}' does not exist"
    assert missing not in admin.list_topics()


def test_a_paused_broker_makes_the_source_unavailable_and_the_query_goes_on_after(
    con: streamsql.Connection,
) -> None:
    with Broker() as own:
        admin = KafkaAdminClient(bootstrap_servers=own.bootstrap_servers)
        writer = KafkaProducer(bootstrap_servers=own.bootstrap_servers)
        try:
            topic = own.create_topic(2)
            produce(
                writer, topic, [{"partition": i % 2, "value": b'{"v": %d}' % i} for i in range(4)]
            )
            con.execute(kafka_source(own, topic, "v BIGINT", request_timeout="1 second"))
            con.execute(copy_sink(trigger=None))
            query = con.query("out")
            query.process_all_available(timeout=30)
            own.pause()
            try:
                wait_until(lambda: not query.status["source_available"], 15, "unavailable")
                assert query.is_active
                assert query.status["message"].startswith("source ev unavailable: Kafka at ")
            finally:
                own.resume()
            produce(
                writer,
                topic,
                [{"partition": i % 2, "value": b'{"v": %d}' % i} for i in range(4, 8)],
            )
            query.process_all_available(timeout=60)
            assert query.status["source_available"] is True
            assert rows(con, "SELECT v FROM out ORDER BY 1") == [(i,) for i in range(8)]
        finally:
            writer.close()
            admin.close()
            con.close()
