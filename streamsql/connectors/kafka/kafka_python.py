"""The few Kafka requests the source needs (metadata, fetch, offset commit), on kafka-python.

The source assigns partitions itself and keeps offsets in its checkpoint, as Spark does, so
it needs no consumer: it sends Fetch requests through kafka-python's connection manager and
decodes the record sets with records.py, without a Python object per message.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any

import kafka.errors as kafka_errors
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.net.compat import KafkaNetClient
from kafka.protocol.consumer import FetchRequest, ListOffsetsRequest

from streamsql.connectors.kafka.client import (
    KafkaClient,
    PartitionError,
    Watermarks,
    partition_name,
    topic_id_text,
)
from streamsql.connectors.kafka.net import NetworkClients, within
from streamsql.connectors.kafka.records import RecordColumns
from streamsql.errors import SourceUnavailable

FETCH_VERSION = 12  # the last Fetch version that names topics (13+ use topic ids)
PROBE_WAIT_MS = 1  # for watermarks; Tansu answers max_wait_ms = 0 with no partitions at all
DATA_WAIT_MS = 200  # for records known to exist: the broker answers as soon as it has them
EARLIEST, LATEST = -2, -1  # ListOffsets' timestamps for the start and the end of a log
MAX_RESPONSE_BYTES = 64 << 20
PARTITION_FETCH_BYTES = 16 << 20


NETWORK_ERRORS = (
    kafka_errors.KafkaConnectionError,
    kafka_errors.KafkaTimeoutError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.RequestTimedOutError,
    ConnectionError,
    TimeoutError,
)


class KafkaPythonClient(KafkaClient):
    """The client on kafka-python's connection manager: Fetch and ListOffsets requests sent
    by hand, record batches decoded to columns without a Python object per record."""

    def __init__(
        self, bootstrap_servers: str, config: dict[str, Any], connect_timeout: float
    ) -> None:
        super().__init__(bootstrap_servers, config, connect_timeout)
        self.request_timeout_ms = int(config.get("request_timeout_ms", 30_000))
        self._client: KafkaNetClient | None = None
        self._committer: KafkaConsumer | None = None

    @property
    def _manager(self) -> Any:
        if self._interrupted:
            raise SourceUnavailable(f"Kafka at {self.bootstrap_servers}: the query is stopping")
        if self._client is None:
            connect_ms = int(self.connect_timeout * 1000)
            client = KafkaNetClient(
                bootstrap_servers=self.bootstrap_servers,
                receive_message_max_bytes=MAX_RESPONSE_BYTES + (1 << 20),
                allow_auto_create_topics=False,
                # reconnections too give up after connect_timeout (kafka-python: 10 s)
                socket_connection_setup_timeout_ms=connect_ms,
                socket_connection_setup_timeout_max_ms=connect_ms,
                **self.config,
            )
            client._manager._net.start()
            try:
                # kafka-python's bootstrap does not bound a TLS handshake: net.py does
                bootstrap = client._manager.bootstrap
                within(self.connect_timeout, lambda: bootstrap(connect_ms), [client])
            except kafka_errors.KafkaError as error:
                client.close()
                raise SourceUnavailable(
                    f"cannot reach Kafka at {self.bootstrap_servers} within "
                    f"{self.connect_timeout:g} s ({error})"
                ) from None
            client._manager.cluster.need_all_topic_metadata = True
            self._client = client
        return self._client._manager

    def _run(self, coroutine: Any, *args: Any) -> Any:
        """Run a request on the client's I/O thread; network trouble is SourceUnavailable."""
        manager = self._manager
        try:
            return manager.run(coroutine, *args)
        except NETWORK_ERRORS as error:
            raise SourceUnavailable(f"Kafka at {self.bootstrap_servers}: {error}") from None
        except Exception:
            if self._interrupted:  # the client was closed under the request
                raise SourceUnavailable(
                    f"Kafka at {self.bootstrap_servers}: the query is stopping"
                ) from None
            raise

    def partitions(
        self, topics: list[str] | None, pattern: str | None, missing_ok: bool = False
    ) -> list[TopicPartition]:
        """The partitions of `topics` (or of every topic matching `pattern`), as of now; a
        named topic that does not exist is an error unless `missing_ok`."""
        manager = self._manager
        self._run(manager.cluster.refresh_metadata)
        cluster = manager.cluster
        names = (
            [t for t in sorted(cluster.topics()) if re.fullmatch(pattern, t)]
            if pattern is not None
            else topics or []
        )
        found = []
        for topic in names:
            numbers = cluster.partitions_for_topic(topic)
            if numbers is None and missing_ok:
                continue
            if numbers is None:
                raise PartitionError(
                    TopicPartition(topic, -1), kafka_errors.UnknownTopicOrPartitionError
                )
            found.extend(TopicPartition(topic, p) for p in sorted(numbers))
        return found

    def topic_ids(self, topics: set[str]) -> dict[str, str]:
        """Each topic's id, for the topics the broker reports one for (Metadata v10+), as of
        the metadata of the last partitions() call."""
        cluster = self._manager.cluster
        ids = {topic: cluster.topic_id(topic) for topic in topics}
        return {
            topic: text
            for topic, uuid in ids.items()
            if uuid is not None and (text := topic_id_text(uuid.bytes)) is not None
        }

    def watermarks(self, partitions: list[TopicPartition]) -> dict[TopicPartition, Watermarks]:
        """Each partition's log start and high watermark. ListOffsets(latest) under-reports on
        some brokers (Tansu: the last batch's base offset + 1), the high watermark of a Fetch
        response does not; fetching from ListOffsets' answer, which is always in range, it
        carries at most the last record batch (brokers send a whole batch, whatever the size
        asked), not the backlog."""
        starts = self._list_offsets(partitions, EARLIEST)
        ends = self._list_offsets(partitions, LATEST)
        answers = self._fetch({tp: ends.get(tp, 0) for tp in partitions}, max_bytes=1)
        return {
            tp: Watermarks(
                starts.get(tp, data.log_start_offset), max(data.high_watermark, ends.get(tp, 0))
            )
            for tp, data in answers.items()
        }

    def _list_offsets(
        self, partitions: list[TopicPartition], timestamp: int
    ) -> dict[TopicPartition, int]:
        manager = self._manager
        by_leader = self._by_leader(
            {
                tp: ListOffsetsRequest.ListOffsetsTopic.ListOffsetsPartition(
                    partition_index=tp.partition, timestamp=timestamp, current_leader_epoch=-1
                )
                for tp in partitions
            }
        )
        offsets: dict[TopicPartition, int] = {}
        for node, topics in by_leader.items():
            request = ListOffsetsRequest(
                replica_id=-1,
                isolation_level=0,
                topics=[
                    ListOffsetsRequest.ListOffsetsTopic(name=t, partitions=p)
                    for t, p in topics.items()
                ],
            )
            for topic in self._run(self._send, manager, node, request).topics:
                for answer in topic.partitions:
                    if not answer.error_code:
                        offsets[TopicPartition(topic.name, answer.partition_index)] = answer.offset
        return offsets

    def _by_leader(self, parts: dict[TopicPartition, Any]) -> dict[Any, dict[str, list]]:
        """Request parts grouped by the partition's leader, then topic: a request per node."""
        grouped: dict[Any, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for tp, part in parts.items():
            grouped[self._leader(tp)][tp.topic].append(part)
        return grouped

    def _leader(self, tp: TopicPartition) -> Any:
        manager = self._manager
        leader = manager.cluster.leader_for_partition(tp)
        if leader is None or leader == -1:
            self._run(manager.cluster.refresh_metadata)
            leader = manager.cluster.leader_for_partition(tp)
            if leader is None:
                raise PartitionError(tp, kafka_errors.UnknownTopicOrPartitionError)
        return leader

    async def _send(self, manager: Any, node: Any, request: Any) -> Any:
        return await manager.send(request, node_id=node, request_timeout_ms=self.request_timeout_ms)

    def fetch(
        self, ranges: dict[TopicPartition, tuple[int, int]], keep_headers: bool
    ) -> dict[TopicPartition, RecordColumns]:
        """Every record in each partition's [start, end), in offset order."""
        records = {tp: RecordColumns(start, end, start) for tp, (start, end) in ranges.items()}
        deadline = time.monotonic() + self.request_timeout_ms / 1000
        while pending := {tp: r.next_offset for tp, r in records.items() if not r.done}:
            progressed = False
            answers = self._fetch(pending, PARTITION_FETCH_BYTES, DATA_WAIT_MS)
            for tp, data in answers.items():
                if data.error_code:
                    raise PartitionError(tp, kafka_errors.for_code(data.error_code))
                before = records[tp].next_offset
                records[tp].add(data.records or b"", keep_headers)
                if records[tp].next_offset == before and data.high_watermark <= before:
                    # Nothing at or after `before` any more: the log was truncated under us.
                    raise PartitionError(tp, kafka_errors.OffsetOutOfRangeError)
                progressed = progressed or records[tp].next_offset > before
            # A loaded broker may answer before it has read the records: ask again, for as
            # long as a request may take.
            if not progressed and time.monotonic() > deadline:
                raise SourceUnavailable(
                    f"Kafka at {self.bootstrap_servers}: no records from "
                    + ", ".join(map(partition_name, sorted(pending)))
                    + f" within {self.request_timeout_ms / 1000:g} s"
                )
        return records

    def _fetch(
        self, positions: dict[TopicPartition, int], max_bytes: int, wait_ms: int = PROBE_WAIT_MS
    ) -> dict[TopicPartition, Any]:
        """One Fetch request per leader; the partition data of the answers."""
        manager = self._manager
        by_leader = self._by_leader(
            {
                tp: FetchRequest.FetchTopic.FetchPartition(
                    partition=tp.partition,
                    current_leader_epoch=-1,
                    fetch_offset=offset,
                    last_fetched_epoch=-1,
                    log_start_offset=-1,
                    partition_max_bytes=max_bytes,
                )
                for tp, offset in positions.items()
            }
        )

        answers: dict[TopicPartition, Any] = {}
        for node, topics in by_leader.items():
            request = FetchRequest(
                max_wait_ms=wait_ms,
                min_bytes=1,
                max_bytes=MAX_RESPONSE_BYTES,
                isolation_level=0,
                session_id=0,
                session_epoch=-1,
                topics=[FetchRequest.FetchTopic(topic=t, partitions=p) for t, p in topics.items()],
                max_version=FETCH_VERSION,
            )
            response = self._run(self._send, manager, node, request)
            for topic in response.responses:
                for data in topic.partitions:
                    answers[TopicPartition(topic.topic, data.partition_index)] = data
        if any(
            data.error_code == kafka_errors.NotLeaderForPartitionError.errno
            for data in answers.values()
        ):
            self._run(manager.cluster.refresh_metadata)
            raise SourceUnavailable(f"Kafka at {self.bootstrap_servers}: partition leaders moved")
        return answers

    def commit(self, group_id: str, offsets: dict[TopicPartition, int]) -> None:
        """Record `offsets` as the group's position, for lag tools; never read back."""
        clients = NetworkClients()
        try:
            if self._committer is None:
                self._committer = within(
                    self.connect_timeout,
                    lambda: KafkaConsumer(
                        bootstrap_servers=self.bootstrap_servers,
                        group_id=group_id,
                        enable_auto_commit=False,
                        kafka_client=clients,
                        **self.config,
                    ),
                    clients,
                    KafkaConsumer.close,
                )
            self._committer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        except kafka_errors.KafkaError as error:
            raise SourceUnavailable(f"Kafka at {self.bootstrap_servers}: {error}") from None

    def interrupt(self) -> None:
        """From another thread: fail the request in flight and any later one at once."""
        self._interrupted = True
        self.close()

    def close(self) -> None:
        if self._committer is not None:
            self._committer.close()
            self._committer = None
        if self._client is not None:
            self._client.close()
            self._client = None
