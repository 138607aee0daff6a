"""The test broker (streamsql.testing.broker): a real Kafka-protocol broker on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError

from streamsql.testing.broker import Broker


def read_all(broker: Broker, topic: str, partitions: int, expected: int) -> list[tuple]:
    """Every record of the topic, by manual assignment from the start (no consumer group)."""
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers,
        enable_auto_commit=False,
        consumer_timeout_ms=5000,
    )
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        records = []
        for record in consumer:
            records.append((record.partition, record.offset, record.key, record.value))
            if len(records) == expected:
                break
        return records
    finally:
        consumer.close()


def test_records_produced_to_partitions_are_read_back_in_offset_order(broker: Broker) -> None:
    assert broker.bootstrap_servers.startswith("127.0.0.1:")
    topic = broker.create_topic(4)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    for i in range(40):
        producer.send(topic, key=b"k%d" % i, value=b'{"n": %d}' % i, partition=i % 4)
    producer.flush()
    producer.close()
    records = read_all(broker, topic, 4, 40)
    by_partition = {p: [(o, v) for q, o, _, v in records if q == p] for p in range(4)}
    for partition, rows in by_partition.items():
        assert rows == [(o, b'{"n": %d}' % (o * 4 + partition)) for o in range(10)]


def test_a_paused_broker_answers_nothing_until_resumed() -> None:
    with Broker() as paused:
        topic = paused.create_topic(1)
        producer = KafkaProducer(bootstrap_servers=paused.bootstrap_servers, max_block_ms=1000)
        producer.send(topic, b"before").get(timeout=10)
        paused.pause()
        with pytest.raises(KafkaTimeoutError):
            producer.send(topic, b"during").get(timeout=2)
        paused.resume()
        producer.send(topic, b"after").get(timeout=30)
        producer.close()
        values = [v for *_, v in read_all(paused, topic, 1, 3)]
        assert values[0] == b"before" and values[-1] == b"after"


def test_the_broker_script_prints_where_it_listens_and_stops_on_ctrl_c() -> None:
    script = subprocess.Popen(
        [sys.executable, "-m", "streamsql.testing.broker"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = script.stdout.readline()
        assert line.startswith("bootstrap_servers = '127.0.0.1:")
        script.send_signal(subprocess.signal.SIGINT)
        assert script.wait(20) == 0
    finally:
        script.kill()
        script.stdout.close()
