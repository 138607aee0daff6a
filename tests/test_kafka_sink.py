"""The kafka sink against a real broker (Tansu): one message per emitted row, JSON or CSV
values, keys from an expression, batch headers, and a batch that commits only once Kafka has
all its messages.

Rows go into a memory source one INSERT per micro-batch; each test writes to a topic of its
own and reads it back by manual assignment up to the partitions' end offsets (no consumer
group), so the assertions see every message and nothing else.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

import streamsql
from streamsql.testing.broker import Broker, free_port

T0 = dt.datetime(2024, 1, 1)
EVENTS = (
    "CREATE SOURCE ev (k VARCHAR, ts TIMESTAMP, v DOUBLE, "
    "WATERMARK FOR ts AS ts - INTERVAL '1 minute') WITH (connector = 'memory')"
)


@dataclass(frozen=True)
class Message:
    partition: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    @property
    def batch_id(self) -> int:
        return int(self.headers["streamsql.batch_id"])

    @property
    def row(self) -> dict[str, object]:
        return json.loads(self.value)


@pytest.fixture
def con(tmp_path: Path) -> Iterator[streamsql.Connection]:
    connection = streamsql.connect(str(tmp_path / "engine.db"))
    connection.execute(EVENTS)
    yield connection
    connection.close()


def messages(broker: Broker, topic: str) -> list[Message]:
    """Every message in the topic, partition by partition in offset order: read up to the
    high watermarks of Fetch responses (Tansu's ListOffsets under-reports the end)."""
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False)
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        found = []
        deadline = time.monotonic() + 10
        while not all(
            consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp)
            for tp in partitions
        ):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for records in consumer.poll(timeout_ms=200).values():
                found += records
        found.sort(key=lambda r: (r.partition, r.offset))
        return [Message(r.partition, r.key, r.value, dict(r.headers)) for r in found]
    finally:
        consumer.close()


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def feed(con: streamsql.Connection, rows: list[tuple[object, ...]]) -> None:
    """Insert rows as one statement (one micro-batch for a query that is caught up)."""
    placeholders = ", ".join(["(?, ?, ?)"] * len(rows))
    con.execute(f"INSERT INTO ev VALUES {placeholders}", [v for row in rows for v in row])


def caught_up(con: streamsql.Connection, name: str = "out") -> None:
    con.query(name).process_all_available(timeout=60)


def create(broker: Broker, topic: str, options: str = "") -> str:
    """The head of a CREATE SINK statement for sink `out` writing to `topic`."""
    extra = f", {options}" if options else ""
    return (
        "CREATE SINK out WITH (connector = 'kafka', "
        f"bootstrap_servers = '{broker.bootstrap_servers}', topic = '{topic}'{extra}) AS "
    )


def committed(con: streamsql.Connection, name: str = "out") -> int | None:
    return con.execute(
        "SELECT max(batch_id) FROM _streamsql.commits WHERE query = ?", [name]
    ).fetchall()[0][0]


def producer_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("streamsql-out-network")]


# -- values, keys, headers --------------------------------------------------------------------


def test_each_row_is_one_json_message_with_the_batch_in_its_headers(
    broker: Broker, con: streamsql.Connection
) -> None:
    topic = broker.create_topic()
    con.execute(create(broker, topic) + "SELECT k, ts, v * 10 AS tenfold FROM ev WHERE v > 0")
    feed(con, [("a", at(0), 1.0), ("b", at(0), -1.0), ("c", at(1), 2.5)])
    caught_up(con)
    feed(con, [("a", at(2), 3.0)])
    caught_up(con)
    query_id = con.query("out").id
    found = messages(broker, topic)
    assert [m.value for m in found] == [
        b'{"k":"a","ts":"2024-01-01 00:00:00","tenfold":10.0}',
        b'{"k":"c","ts":"2024-01-01 00:01:00","tenfold":25.0}',
        b'{"k":"a","ts":"2024-01-01 00:02:00","tenfold":30.0}',
    ]
    assert [m.key for m in found] == [None, None, None]
    assert [m.headers for m in found] == [
        {
            "streamsql.query": b"out",
            "streamsql.query_id": query_id.encode(),
            "streamsql.batch_id": b"0",
        },
        {
            "streamsql.query": b"out",
            "streamsql.query_id": query_id.encode(),
            "streamsql.batch_id": b"0",
        },
        {
            "streamsql.query": b"out",
            "streamsql.query_id": query_id.encode(),
            "streamsql.batch_id": b"1",
        },
    ]
    producer = con.query("out").execution.sink._producer
    assert producer.config["enable_idempotence"] is True and producer.config["acks"] == -1
    assert producer._transaction_manager.producer_id_and_epoch.producer_id >= 0  # InitProducerId


def test_json_values_keep_timestamps_decimals_hugeints_nulls_and_nested_values(
    broker: Broker, con: streamsql.Connection
) -> None:
    topic = broker.create_topic()
    con.execute(
        "CREATE SOURCE typed (k VARCHAR, tz TIMESTAMPTZ, d DECIMAL(10, 2), n BIGINT, f DOUBLE, "
        "tags VARCHAR[], day DATE) WITH (connector = 'memory')"
    )
    con.execute(
        create(broker, topic) + "SELECT k, tz, d, n::HUGEINT * 1000000000000 AS big, f, tags, day, "
        "{'n': n, 'k': k} AS nested FROM typed"
    )
    con.execute(
        "INSERT INTO typed VALUES ('a \"quoted\"', TIMESTAMPTZ '2024-01-01 10:00:00+02', 12.5, "
        "9223372036854775807, 'nan'::DOUBLE, ['x', NULL], DATE '2024-02-29'), "
        "(NULL, NULL, NULL, NULL, '-inf'::DOUBLE, NULL, NULL)"
    )
    caught_up(con)
    assert [m.value for m in messages(broker, topic)] == [
        b'{"k":"a \\"quoted\\"","tz":"2024-01-01 08:00:00+00","d":12.5,'
        b'"big":9223372036854775807000000000000,"f":"NaN","tags":["x",null],'
        b'"day":"2024-02-29","nested":{"n":9223372036854775807,"k":"a \\"quoted\\""}}',
        b'{"k":null,"tz":null,"d":null,"big":null,"f":"-Infinity","tags":null,"day":null,'
        b'"nested":{"n":null,"k":null}}',
    ]


def test_csv_values_are_one_record_without_header_quoted_as_csv(
    broker: Broker, con: streamsql.Connection
) -> None:
    topic = broker.create_topic()
    con.execute(create(broker, topic, "format = 'csv'") + "SELECT k, ts, v FROM ev")
    feed(
        con,
        [
            ("plain", at(0), 1.5),
            ('say "hi", twice', at(1), None),
            ("two\nlines", None, -2.0),
            ("", at(2), 0.0),
            (None, at(3), 1e20),
        ],
    )
    caught_up(con)
    assert [m.value for m in messages(broker, topic)] == [
        b"plain,2024-01-01 00:00:00,1.5",
        b'"say ""hi"", twice",2024-01-01 00:01:00,',
        b'"two\nlines",,-2.0',
        b'"",2024-01-01 00:02:00,0.0',
        b",2024-01-01 00:03:00,1e+20",
    ]


def test_keys_come_from_a_sql_expression_and_a_null_key_means_no_key(
    broker: Broker, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(3)
    con.execute(create(broker, topic, "key = 'k || ''-'' || ts::DATE'") + "SELECT k, ts, v FROM ev")
    feed(con, [("a", at(0), 1.0), ("b", at(0), 2.0), (None, at(0), 3.0), ("a", at(1), 4.0)])
    caught_up(con)
    feed(con, [("b", at(2), 5.0), ("a", at(3), 6.0)])
    caught_up(con)
    found = messages(broker, topic)
    by_value = {m.row["v"]: m for m in found}
    assert {v: m.key for v, m in by_value.items()} == {
        1.0: b"a-2024-01-01",
        2.0: b"b-2024-01-01",
        3.0: None,
        4.0: b"a-2024-01-01",
        5.0: b"b-2024-01-01",
        6.0: b"a-2024-01-01",
    }
    assert len(found) == 6
    partitions = {}
    for message in found:
        if message.key is not None:  # one key, one partition (the producer's murmur2 hash)
            assert partitions.setdefault(message.key, message.partition) == message.partition


def test_a_key_that_is_a_blob_is_the_key_as_it_is(
    broker: Broker, con: streamsql.Connection
) -> None:
    topic = broker.create_topic()
    con.execute(create(broker, topic, "key = 'unhex(k)'") + "SELECT k FROM ev")
    feed(con, [("00ff", at(0), 1.0)])
    caught_up(con)
    assert [(m.key, m.value) for m in messages(broker, topic)] == [(b"\x00\xff", b'{"k":"00ff"}')]


# -- output modes ------------------------------------------------------------------------------


def test_final_windows_are_sent_once_in_the_batch_that_closes_them(
    broker: Broker, con: streamsql.Connection
) -> None:
    topic = broker.create_topic()
    con.execute(
        create(broker, topic, "key = 'k'")
        + "SELECT window_start, window_end, k, count(*) AS n, sum(v) AS total FROM ev "
        "WINDOW TUMBLING (ts, INTERVAL '1 minute') GROUP BY window_start, window_end, k "
        "EMIT FINAL"
    )
    feed(con, [("a", at(0.1), 1.0), ("b", at(0.2), 2.0), ("a", at(0.5), 3.0)])
    caught_up(con)
    assert messages(broker, topic) == []  # watermark 23:59:30: nothing closed yet
    feed(con, [("a", at(2.5), 4.0)])  # watermark -> 00:01:30 closes [00:00, 00:01)
    caught_up(con)
    feed(con, [("a", at(0.9), 100.0)])  # late: dropped, the window is not sent again
    caught_up(con)
    feed(con, [("c", at(4), 5.0)])  # watermark -> 00:03:00 closes [00:02, 00:03)
    caught_up(con)
    emitted = [p.batch_id for p in con.query("out").recent_progress if p.num_output_rows]
    assert len(emitted) == 2
    found = sorted(messages(broker, topic), key=lambda m: (m.batch_id, m.key))
    assert [(m.batch_id, m.key, m.row) for m in found] == [
        (
            emitted[0],
            b"a",
            {
                "window_start": "2024-01-01 00:00:00",
                "window_end": "2024-01-01 00:01:00",
                "k": "a",
                "n": 2,
                "total": 4.0,
            },
        ),
        (
            emitted[0],
            b"b",
            {
                "window_start": "2024-01-01 00:00:00",
                "window_end": "2024-01-01 00:01:00",
                "k": "b",
                "n": 1,
                "total": 2.0,
            },
        ),
        (
            emitted[1],
            b"a",
            {
                "window_start": "2024-01-01 00:02:00",
                "window_end": "2024-01-01 00:03:00",
                "k": "a",
                "n": 1,
                "total": 4.0,
            },
        ),
    ]


def test_changes_send_the_groups_each_batch_changed(
    broker: Broker, con: streamsql.Connection
) -> None:
    topic = broker.create_topic()
    con.execute(
        create(broker, topic, "key = 'k'")
        + "SELECT k, count(*) AS n, sum(v) AS total FROM ev GROUP BY k EMIT CHANGES"
    )
    feed(con, [("a", at(0), 1.0), ("b", at(0), 2.0)])
    caught_up(con)
    feed(con, [("a", at(1), 10.0), ("a", at(1), 0.5)])
    caught_up(con)
    feed(con, [("c", at(2), 7.0), ("b", at(2), 1.0)])
    caught_up(con)
    found = sorted(messages(broker, topic), key=lambda m: (m.batch_id, m.key))
    assert [(m.batch_id, m.key, m.value) for m in found] == [
        (0, b"a", b'{"k":"a","n":1,"total":1.0}'),
        (0, b"b", b'{"k":"b","n":1,"total":2.0}'),
        (1, b"a", b'{"k":"a","n":3,"total":11.5}'),
        (2, b"b", b'{"k":"b","n":2,"total":3.0}'),
        (2, b"c", b'{"k":"c","n":1,"total":7.0}'),
    ]


def test_snapshot_sends_the_whole_result_every_batch(
    broker: Broker, con: streamsql.Connection
) -> None:
    topic = broker.create_topic()
    con.execute(
        create(broker, topic, "format = 'csv'")
        + "SELECT k, count(*) AS n FROM ev GROUP BY k ORDER BY k EMIT SNAPSHOT"
    )
    feed(con, [("a", at(0), 1.0), ("b", at(0), 2.0)])
    caught_up(con)
    feed(con, [("a", at(1), 3.0)])
    caught_up(con)
    assert [(m.batch_id, m.value) for m in messages(broker, topic)] == [
        (0, b"a,1"),
        (0, b"b,1"),
        (1, b"a,2"),
        (1, b"b,1"),
    ]


# -- failures: the batch does not commit ---------------------------------------------------------


def test_an_unreachable_broker_fails_the_query_without_committing_the_batch(
    con: streamsql.Connection,
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    con.execute(
        f"CREATE SINK out WITH (connector = 'kafka', bootstrap_servers = '{nowhere}', "
        "topic = 'nowhere', timeout = '1 second') AS SELECT k, v FROM ev"
    )
    feed(con, [("a", at(0), 1.0)])
    query = con.query("out")
    with pytest.raises(streamsql.StreamingQueryError) as caught:
        query.process_all_available(timeout=60)
    message = str(caught.value)
    assert "Sink out: batch 0 was not written to Kafka topic 'nowhere'" in message
    assert nowhere in message and "timeout 1 second" in message
    assert isinstance(caught.value.__cause__, streamsql.OperationalError)
    assert not query.is_active and query.status["message"] == "failed"
    assert committed(con) is None
    assert producer_threads() == []


@pytest.mark.parametrize(
    "security",
    [
        # the README's example against a plaintext listener: the TLS handshake gets no answer
        "kafka.security_protocol = 'SASL_SSL', kafka.sasl_mechanism = 'PLAIN', "
        "kafka.sasl_plain_username = 'app', kafka.sasl_plain_password = 'secret'",
        "kafka.security_protocol = 'SASL_PLAINTEXT', kafka.sasl_mechanism = 'PLAIN', "
        "kafka.sasl_plain_username = 'app', kafka.sasl_plain_password = 'secret'",
        "kafka.security_protocol = 'SSL'",
        None,  # a closed port
    ],
)
def test_a_sink_that_cannot_connect_fails_within_its_timeout_naming_sink_and_servers(
    broker: Broker, con: streamsql.Connection, security: str | None
) -> None:
    servers = broker.bootstrap_servers if security else f"127.0.0.1:{free_port()}"
    con.execute(
        f"CREATE SINK out WITH (connector = 'kafka', bootstrap_servers = '{servers}', "
        f"topic = 'never', timeout = '2 seconds'{', ' + security if security else ''}) "
        "AS SELECT k, v FROM ev"
    )
    feed(con, [("a", at(0), 1.0)])
    query = con.query("out")
    began = time.monotonic()
    with pytest.raises(streamsql.StreamingQueryError) as caught:
        query.process_all_available(timeout=60)
    assert time.monotonic() - began < 2 + 3  # the timeout, and the query's own overhead
    message = str(caught.value)
    assert f"Sink out: batch 0 was not written to Kafka topic 'never' at {servers}" in message
    assert "(timeout 2 seconds)" in message
    assert committed(con) is None
    wait_until_no_threads = time.monotonic() + 5
    while producer_threads() and time.monotonic() < wait_until_no_threads:
        time.sleep(0.05)
    assert producer_threads() == []
    assert not [t for t in threading.enumerate() if t.name == "streamsql-out-connect"]


def test_a_send_the_broker_cannot_take_fails_the_batch_naming_the_topic(
    broker: Broker, con: streamsql.Connection
) -> None:
    topic = broker.create_topic()
    con.execute(create(broker, topic, "kafka.max_request_size = 300") + "SELECT k, v FROM ev")
    feed(con, [("a", at(0), 1.0)])
    caught_up(con)
    feed(con, [("x" * 500, at(1), 2.0)])
    with pytest.raises(streamsql.StreamingQueryError) as caught:
        caught_up(con)
    assert f"batch 1 was not written to Kafka topic '{topic}'" in str(caught.value)
    assert "MessageSizeTooLargeError" in str(caught.value)
    assert committed(con) == 0
    assert [m.value for m in messages(broker, topic)] == [b'{"k":"a","v":1.0}']
    assert producer_threads() == []


def test_a_batch_failed_during_an_outage_is_sent_again_with_its_batch_id(
    con: streamsql.Connection,
) -> None:
    with Broker() as paused:
        topic = paused.create_topic()
        statement = create(paused, topic, "timeout = '2 seconds'") + "SELECT k, v FROM ev"
        con.execute(statement)
        feed(con, [("a", at(0), 1.0)])
        caught_up(con)
        paused.pause()
        feed(con, [("b", at(1), 2.0), ("c", at(1), 3.0)])
        with pytest.raises(streamsql.StreamingQueryError, match=f"topic '{topic}'"):
            caught_up(con)
        assert committed(con) == 0
        assert producer_threads() == []  # the failed batch's producer is dropped
        paused.resume()
        con.execute(statement)  # the failed sink, submitted again, replays batch 1
        caught_up(con)
        assert committed(con) == 1
        found = messages(paused, topic)
    # at least once: the failed attempt's messages may have reached the broker too
    assert [(m.batch_id, m.value) for m in found if m.batch_id == 0] == [(0, b'{"k":"a","v":1.0}')]
    replayed = [(m.batch_id, m.value) for m in found if m.batch_id == 1]
    assert set(replayed) == {(1, b'{"k":"b","v":2.0}'), (1, b'{"k":"c","v":3.0}')}
    assert replayed[-2:] == [(1, b'{"k":"b","v":2.0}'), (1, b'{"k":"c","v":3.0}')]


def test_stopping_the_query_closes_its_producer(broker: Broker, con: streamsql.Connection) -> None:
    topic = broker.create_topic()
    con.execute(create(broker, topic) + "SELECT k FROM ev")
    feed(con, [("a", at(0), 1.0)])
    caught_up(con)
    assert producer_threads() == ["streamsql-out-network-thread"]
    con.execute("STOP QUERY out")
    assert producer_threads() == []


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ("topik = 'x'", "unknown option 'topik' for connector 'kafka'"),
        ("format = 'avro'", "format = 'avro' is not one of json, csv"),
        ("timeout = 'soon'", "timeout = 'soon' is not a duration"),
        ("kafka.no_such_setting = 1", "kafka.no_such_setting is not a setting of kafka-python"),
        ("kafka.acks = 1", "kafka.acks cannot be set"),
        ("kafka.bootstrap_servers = 'h:1'", "use the bootstrap_servers option"),
        ("kafka.linger_ms = 'soon'", "kafka.linger_ms = 'soon' is not an integer"),
        ("kafka.ssl_context = 'x'", "kafka.ssl_context takes a Python object"),
        ("key = 'no_such_column'", "key = 'no_such_column' is not an expression over the output"),
    ],
)
def test_bad_options_are_refused_when_the_sink_is_created(
    con: streamsql.Connection, options: str, error: str
) -> None:
    with pytest.raises(streamsql.ProgrammingError, match=error):
        con.execute(
            "CREATE SINK out WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:1', "
            f"topic = 't', {options}) AS SELECT k, v FROM ev"
        )
    assert con.execute("SHOW SINKS").fetchall() == []


def test_a_missing_topic_is_refused(con: streamsql.Connection) -> None:
    with pytest.raises(streamsql.ProgrammingError, match="the kafka connector needs topic"):
        con.execute(
            "CREATE SINK out WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:1') "
            "AS SELECT k FROM ev"
        )


def test_kafka_options_reach_the_producer_typed(broker: Broker, con: streamsql.Connection) -> None:
    topic = broker.create_topic()
    options = (
        "kafka.security.protocol = 'PLAINTEXT', kafka.linger_ms = 5, "
        "kafka.allow_auto_create_topics = false, kafka.sasl_plain_password = '12345', "
        "kafka.client_id = 'reporting'"
    )
    con.execute(create(broker, topic, options) + "SELECT k FROM ev")
    feed(con, [("a", at(0), 1.0)])
    caught_up(con)
    config = con.query("out").execution.sink._producer.config
    assert (config["security_protocol"], config["linger_ms"]) == ("PLAINTEXT", 5)
    assert config["allow_auto_create_topics"] is False
    assert config["sasl_plain_password"] == "12345" and config["client_id"] == "reporting"
    assert [m.value for m in messages(broker, topic)] == [b'{"k":"a"}']
