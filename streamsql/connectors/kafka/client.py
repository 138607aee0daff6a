"""What the Kafka source asks of a client (`KafkaClient`), and the values the clients and the
source share. Two clients implement it: `kafka_python.KafkaPythonClient` (the default) and
`confluent.ConfluentClient` (`client = 'confluent'`)."""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import kafka.errors as kafka_errors
from kafka import TopicPartition

from streamsql.connectors.kafka.records import RecordColumns


def topic_id_text(raw: bytes) -> str | None:
    """A topic id as Kafka's tools print it (URL-safe base64 of its 16 bytes, unpadded);
    None for the zero id, which a broker sends when it has none."""
    if not any(raw):
        return None
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def partition_name(tp: TopicPartition) -> str:
    """`topic-N`, as Kafka's tools write a partition."""
    return f"{tp.topic}-{tp.partition}"


@dataclass(frozen=True)
class Watermarks:
    log_start: int  # the earliest offset the broker still has
    high: int  # the offset after the last record (the fetch response's high watermark)


class PartitionError(Exception):
    """The broker refused a partition's fetch (offset out of range, unknown topic)."""

    def __init__(self, partition: TopicPartition, error: type[kafka_errors.KafkaError]) -> None:
        super().__init__(f"{partition_name(partition)}: {error.__name__}")
        self.partition = partition
        self.error = error


class KafkaClient(ABC):
    """The few requests the source needs: partitions assigned by the source itself (never a
    consumer group), offsets kept in the query's checkpoint, each partition's [start, end)
    read exactly. Network trouble is SourceUnavailable; a partition the broker refuses is
    PartitionError."""

    def __init__(
        self, bootstrap_servers: str, config: dict[str, Any], connect_timeout: float
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.config = config  # kafka-python's settings, as the `kafka.` options give them
        self.connect_timeout = connect_timeout
        self._interrupted = False

    @abstractmethod
    def partitions(
        self, topics: list[str] | None, pattern: str | None, missing_ok: bool = False
    ) -> list[TopicPartition]:
        """The partitions of `topics` (or of every topic matching `pattern`), as of now; a
        named topic that does not exist is an error unless `missing_ok`."""

    @abstractmethod
    def topic_ids(self, topics: set[str]) -> dict[str, str]:
        """Each topic's id, for the topics the broker reports one for."""

    @abstractmethod
    def watermarks(self, partitions: list[TopicPartition]) -> dict[TopicPartition, Watermarks]:
        """Each partition's log start and high watermark, as of now."""

    @abstractmethod
    def fetch(
        self, ranges: dict[TopicPartition, tuple[int, int]], keep_headers: bool
    ) -> dict[TopicPartition, RecordColumns]:
        """Every record in each partition's [start, end), in offset order."""

    @abstractmethod
    def commit(self, group_id: str, offsets: dict[TopicPartition, int]) -> None:
        """Record `offsets` as the group's position, for lag tools; never read back."""

    @abstractmethod
    def interrupt(self) -> None:
        """From another thread: fail the request in flight and any later one soon."""

    @abstractmethod
    def close(self) -> None:
        """Release the connections."""
