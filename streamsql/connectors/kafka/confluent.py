"""The Kafka source's client on confluent-kafka (librdkafka): `client = 'confluent'`.

Same requests and semantics as KafkaPythonClient (kafka_python.py): partitions are assigned by
hand (Consumer.assign, never a group subscription, whose join takes many seconds), offsets
live in the query's checkpoint, and a fetch reads each partition's [start, end) exactly.

Two things differ from the protocol-level client:

- End offsets come from a Fetch response's high watermark, never from ListOffsets (some
  brokers, Tansu among them, under-report ListOffsets(latest)). librdkafka keeps the high
  watermark and log start of the last Fetch response per partition
  (get_watermark_offsets(cached=True)); `watermarks` assigns the partitions at their end,
  waits for the first event of a fetch made after the call began (a message or the
  end-of-partition event) and reads those cached values, which are then fresh.
- Messages reach Python as one object per message (librdkafka has no columnar API). A fetch
  pulls them with consume(n) and turns them into columns with one C-level pass per field
  (map over the unbound Message methods), then splits partitions and cuts [start, end) with
  Arrow kernels, so no Python bytecode runs per message.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import threading
import time
from array import array
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from itertools import filterfalse
from operator import itemgetter
from typing import Any

import kafka.errors as kafka_errors
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicCollection,
)
from confluent_kafka import TopicPartition as ConfluentPartition
from confluent_kafka.admin import AdminClient
from kafka import TopicPartition

from streamsql.connectors.kafka.client import (
    KafkaClient,
    PartitionError,
    Watermarks,
    partition_name,
    topic_id_text,
)
from streamsql.connectors.kafka.records import COLUMNS, HEADERS_TYPE, RecordColumns
from streamsql.errors import ProgrammingError, SourceUnavailable

log = logging.getLogger(__name__)

# Large fetches: one request brings megabytes per partition, librdkafka's queue holds a
# batch's worth of records while Python turns the previous chunk into columns.
CONSUMER_SETTINGS: dict[str, Any] = {
    "group.id": "streamsql-unused",  # librdkafka needs one; no group is ever joined
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,  # the event that says a partition's end was reached
    "auto.offset.reset": "error",  # an offset off the log is an error, never a jump
    "isolation.level": "read_uncommitted",  # up to the high watermark, as kafka_python
    "allow.auto.create.topics": False,
    "check.crcs": True,  # records.py checks every batch's CRC too
    "fetch.wait.max.ms": 1,  # Tansu answers max_wait_ms = 0 with no partitions at all
    "fetch.min.bytes": 1,
    "fetch.max.bytes": 64 << 20,
    "max.partition.fetch.bytes": 16 << 20,
    "receive.message.max.bytes": (64 << 20) + (1 << 20),
    "queued.min.messages": 1_000_000,
    "queued.max.messages.kbytes": 1 << 20,  # 1 GiB: the queue is bounded by the range read
    "fetch.queue.backoff.ms": 1,  # 1000 by default: a second's stall once the queue is full
    "client.id": "streamsql",
}
# Consumer properties an admin client (asked for topic ids) does not take.
ADMIN_UNUSED = frozenset(CONSUMER_SETTINGS) - {"client.id", "receive.message.max.bytes"}
MASK_64 = (1 << 64) - 1  # a topic id's halves come as signed 64-bit numbers
CHUNK = 2_000  # messages per consume() call: a few MB of Message objects, cache-sized
WAIT_SECONDS = 0.05  # one consume() call's wait, between checks of the deadline
SLICE_SECONDS = 0.5  # one wait of a blocking request, between checks for interrupt()

# kafka-python settings (as `kafka.` options give them) -> librdkafka properties.
SETTINGS: dict[str, str] = {
    "client_id": "client.id",
    "client_rack": "client.rack",
    "client_dns_lookup": "client.dns.lookup",
    "fetch_max_wait_ms": "fetch.wait.max.ms",
    "fetch_min_bytes": "fetch.min.bytes",
    "fetch_max_bytes": "fetch.max.bytes",
    "max_partition_fetch_bytes": "max.partition.fetch.bytes",
    "receive_message_max_bytes": "receive.message.max.bytes",
    "retry_backoff_ms": "retry.backoff.ms",
    "reconnect_backoff_ms": "reconnect.backoff.ms",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms",
    "max_in_flight_requests_per_connection": "max.in.flight.requests.per.connection",
    "check_crcs": "check.crcs",
    "allow_auto_create_topics": "allow.auto.create.topics",
    "metadata_max_age_ms": "metadata.max.age.ms",
    "connections_max_idle_ms": "connections.max.idle.ms",
    "receive_buffer_bytes": "socket.receive.buffer.bytes",
    "send_buffer_bytes": "socket.send.buffer.bytes",
    "session_timeout_ms": "session.timeout.ms",  # for the lag-tool commits' group
    "heartbeat_interval_ms": "heartbeat.interval.ms",
    "max_poll_interval_ms": "max.poll.interval.ms",
    "group_instance_id": "group.instance.id",
    "security_protocol": "security.protocol",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "ssl_crlfile": "ssl.crl.location",
    "ssl_ciphers": "ssl.cipher.suites",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "sasl_kerberos_service_name": "sasl.kerberos.service.name",
}
# Settings without a librdkafka counterpart, and what to do instead.
REFUSED: dict[str, str] = {
    "api_version": "librdkafka asks the broker for its versions (ApiVersions)",
    "bootstrap_timeout_ms": "use the connect_timeout option",
    "auto_offset_reset": "use the starting_offsets option",
    "isolation_level": "the source reads up to the high watermark (read_uncommitted)",
    "sasl_kerberos_name": "librdkafka builds the broker's principal from "
    "sasl_kerberos_service_name and the broker's host name",
    "sasl_kerberos_domain_name": "librdkafka uses the broker's host name",
    "proxy_url": "librdkafka has no proxy support",
    "socks5_proxy": "librdkafka has no proxy support",
}
INTERNAL_TOPICS = frozenset({"__consumer_offsets", "__transaction_state"})

NETWORK_CODES = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._WAIT_COORD,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
    }
)
OUT_OF_RANGE_CODES = frozenset({KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET})
UNKNOWN_CODES = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
    }
)

_offset, _partition, _topic = Message.offset, Message.partition, Message.topic
_timestamp, _key, _value, _headers, _error = (
    Message.timestamp,
    Message.key,
    Message.value,
    Message.headers,
    Message.error,
)
_first, _second = itemgetter(0), itemgetter(1)


def librdkafka_settings(config: dict[str, Any]) -> dict[str, Any]:
    """kafka-python settings (what `kafka.` options and the source give) as librdkafka's."""
    settings: dict[str, Any] = {}
    for name, value in config.items():
        if name == "request_timeout_ms":
            settings["socket.timeout.ms"] = int(value)
        elif name == "exclude_internal_topics":
            continue  # applied by partitions() itself
        elif name == "ssl_check_hostname":
            settings["ssl.endpoint.identification.algorithm"] = "https" if value else "none"
        elif name in SETTINGS:
            if name == "security_protocol" and isinstance(value, str):
                value = value.lower()
            settings[SETTINGS[name]] = value
        else:
            why = REFUSED.get(name, "it has no librdkafka equivalent")
            raise ProgrammingError(
                f"kafka.{name} cannot be used with client = 'confluent': {why} "
                "(use client = 'kafka-python' for it)"
            )
    fetch_bytes = int(settings.get("fetch.max.bytes", CONSUMER_SETTINGS["fetch.max.bytes"]))
    receive = int(settings.get("receive.message.max.bytes", 0))
    if receive < fetch_bytes + 512:  # librdkafka's rule; KIP-74 answers may pass fetch.max
        settings["receive.message.max.bytes"] = max(
            fetch_bytes + 512, CONSUMER_SETTINGS["receive.message.max.bytes"]
        )
    return settings


class ConfluentClient(KafkaClient):
    """The client on librdkafka. One consumer, assigned by hand for the length of each call."""

    def __init__(
        self, bootstrap_servers: str, config: dict[str, Any], connect_timeout: float
    ) -> None:
        super().__init__(bootstrap_servers, config, connect_timeout)
        self.request_timeout = int(config.get("request_timeout_ms", 30_000)) / 1000
        self.exclude_internal = bool(config.get("exclude_internal_topics", True))
        self.settings = {
            **CONSUMER_SETTINGS,
            **librdkafka_settings(config),
            "bootstrap.servers": bootstrap_servers,
            "logger": log,
            "error_cb": self._on_error,
        }
        self._error: KafkaError | None = None  # the last client-wide error (broker down)
        self._consumer: Consumer | None = None
        self._committers: dict[str, tuple[Consumer, list]] = {}
        self._known: set[tuple[str, int]] = set()  # partitions in the last metadata
        self._admin: AdminClient | None = None  # for topic ids, asked for when needed
        self._new_consumer(self.settings).close()  # refuse a bad setting now, not at start

    # -- connection ------------------------------------------------------------------------

    def _new_consumer(self, settings: dict[str, Any]) -> Consumer:
        try:
            return Consumer(settings)
        except KafkaException as error:
            raise ProgrammingError(
                f"client = 'confluent': librdkafka refuses the settings: {_text(error)}"
            ) from None

    def _on_error(self, error: KafkaError) -> None:
        self._error = error

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            consumer = self._new_consumer(self.settings)
            try:
                metadata = consumer.list_topics(timeout=self.connect_timeout)
            except KafkaException as error:
                consumer.close()
                raise SourceUnavailable(  # a query resumed while Kafka is down waits for it
                    f"cannot reach Kafka at {self.bootstrap_servers} within "
                    f"{self.connect_timeout:g} s ({self._why(error)})"
                ) from None
            self._consumer = consumer
            self._remember(metadata)
        return self._consumer

    def _why(self, error: Exception | None = None) -> str:
        """What went wrong, with the last client-wide error when it says more."""
        parts = [_text(error)] if error is not None else []
        if self._error is not None and _text(self._error) not in parts:
            parts.append(_text(self._error))
        return "; ".join(parts) or "no answer"

    def _unavailable(self, what: str, error: Exception | None = None) -> SourceUnavailable:
        return SourceUnavailable(f"Kafka at {self.bootstrap_servers}: {what} ({self._why(error)})")

    # -- metadata --------------------------------------------------------------------------

    def _metadata(self) -> Any:
        consumer = self.consumer
        metadata = self._patiently(
            lambda wait: consumer.list_topics(timeout=wait), "metadata request failed"
        )
        self._remember(metadata)
        return metadata

    def _patiently(self, call: Any, what: str) -> Any:
        """`call(wait)` retried in short waits until request_timeout, so that interrupt()
        is heard within one of them."""
        deadline = time.monotonic() + self.request_timeout
        while True:
            try:
                return call(max(0.01, min(SLICE_SECONDS, deadline - time.monotonic())))
            except KafkaException as error:
                if time.monotonic() >= deadline or self._interrupted:
                    raise self._unavailable(what, error) from None

    def _remember(self, metadata: Any) -> None:
        self._known = {
            (name, number)
            for name, topic in metadata.topics.items()
            if topic.error is None
            for number in topic.partitions
        }

    def partitions(
        self, topics: list[str] | None, pattern: str | None, missing_ok: bool = False
    ) -> list[TopicPartition]:
        """The partitions of `topics` (or of every topic matching `pattern`), as of now; a
        named topic that does not exist is an error unless `missing_ok`."""
        self._error = None
        metadata = self._metadata()
        listed = {
            name: topic
            for name, topic in metadata.topics.items()
            if not (self.exclude_internal and name in INTERNAL_TOPICS)
        }
        names = (
            [t for t in sorted(listed) if re.fullmatch(pattern, t)]
            if pattern is not None
            else topics or []
        )
        found = []
        for name in names:
            topic = listed.get(name)
            if topic is None or (topic.error is not None and not topic.partitions):
                code = topic.error.code() if topic is not None else None
                if topic is not None and code not in UNKNOWN_CODES:
                    raise self._unavailable(f"topic {name}: {_text(topic.error)}")
                if missing_ok:
                    continue
                raise PartitionError(
                    TopicPartition(name, -1), kafka_errors.UnknownTopicOrPartitionError
                )
            found.extend(TopicPartition(name, p) for p in sorted(topic.partitions))
        return found

    def topic_ids(self, topics: set[str]) -> dict[str, str]:
        """Each topic's id, for the topics the broker reports one for (librdkafka's consumer
        metadata has none: an admin client's DescribeTopics asks for them)."""
        if not topics:
            return {}
        if self._admin is None:
            self._admin = AdminClient(
                {k: v for k, v in self.settings.items() if k not in ADMIN_UNUSED}
            )
        futures = self._admin.describe_topics(
            TopicCollection(sorted(topics)), request_timeout=self.request_timeout
        )
        deadline = time.monotonic() + self.request_timeout
        ids = {}
        for name, future in futures.items():
            while True:
                try:
                    uuid = future.result(timeout=SLICE_SECONDS).topic_id
                except FutureTimeout:
                    if time.monotonic() < deadline and not self._interrupted:
                        continue
                    raise self._unavailable(f"no DescribeTopics answer for {name}") from None
                except KafkaException as error:
                    if error.args[0].code() in UNKNOWN_CODES:
                        break  # deleted since the metadata was read: partitions() will say
                    raise self._unavailable("DescribeTopics failed", error) from None
                raw = (
                    (uuid.get_most_significant_bits() & MASK_64) << 64
                    | uuid.get_least_significant_bits() & MASK_64
                ).to_bytes(16, "big")
                if (text := topic_id_text(raw)) is not None:
                    ids[name] = text
                break
        return ids

    def _check_known(self, partitions: Any) -> None:
        """PartitionError for a partition the cluster does not have (after a refresh), as
        kafka_python does for a partition without a leader: librdkafka would wait for it."""
        if any((tp.topic, tp.partition) not in self._known for tp in partitions):
            self._metadata()
            for tp in partitions:
                if (tp.topic, tp.partition) not in self._known:
                    raise PartitionError(tp, kafka_errors.UnknownTopicOrPartitionError)

    # -- watermarks ------------------------------------------------------------------------

    def watermarks(self, partitions: list[TopicPartition]) -> dict[TopicPartition, Watermarks]:
        """Each partition's log start and high watermark, from a Fetch response made during
        this call. The partitions are assigned at their end (librdkafka looks it up with
        ListOffsets, which may under-report: then the fetch brings the last records), and
        each partition's first event (a message, or end of partition) means a Fetch answer
        has come back with the watermarks librdkafka caches."""
        if not partitions:
            return {}
        consumer = self.consumer
        self._error = None
        self._check_known(partitions)
        handles = {(tp.topic, tp.partition): tp for tp in partitions}
        consumer.assign([ConfluentPartition(t, p, OFFSET_END) for t, p in handles])
        paused: list[ConfluentPartition] = []
        try:
            pending = set(handles)
            deadline = time.monotonic() + self.request_timeout
            while pending:
                left = deadline - time.monotonic()
                if left <= 0 or self._interrupted:
                    raise self._unavailable(
                        "no fetch answer for "
                        + ", ".join(f"{t}-{p}" for t, p in sorted(pending))
                        + f" within {self.request_timeout:g} s"
                    )
                events = consumer.consume(len(pending), min(left, WAIT_SECONDS))
                answered = []
                for message in events:
                    key = (message.topic(), message.partition())
                    if key not in pending:
                        continue
                    error = message.error()
                    if error is not None and error.code() != KafkaError._PARTITION_EOF:
                        self._raise_for(handles[key], error)
                    pending.discard(key)
                    answered.append(ConfluentPartition(*key))
                if answered:  # drop their other queued messages: only the watermarks count
                    consumer.pause(answered)
                    paused.extend(answered)
            marks = {}
            for key, tp in handles.items():
                low, high = consumer.get_watermark_offsets(ConfluentPartition(*key), cached=True)
                if low < 0 or high < 0:  # not in the Fetch answer (an old broker): ask
                    low, listed = self._listed_watermarks(key)
                    high = max(high, listed)
                marks[tp] = Watermarks(low, high)
            return marks
        finally:
            _release(consumer, paused)

    def _listed_watermarks(self, key: tuple[str, int]) -> tuple[int, int]:
        consumer = self.consumer
        return self._patiently(
            lambda wait: consumer.get_watermark_offsets(
                ConfluentPartition(*key), timeout=wait, cached=False
            ),
            "ListOffsets failed",
        )

    # -- records ---------------------------------------------------------------------------

    def fetch(
        self, ranges: dict[TopicPartition, tuple[int, int]], keep_headers: bool
    ) -> dict[TopicPartition, RecordColumns]:
        """Every record in each partition's [start, end), in offset order."""
        wanted = {tp: r for tp, r in ranges.items() if r[1] > r[0]}
        records = {tp: ArrowRecordColumns(start, end, start) for tp, (start, end) in ranges.items()}
        if not wanted:
            return records
        consumer = self.consumer
        self._check_known(wanted)
        topics = sorted({tp.topic for tp in wanted})
        # A partition's id in the columns: its number, plus the topic's index when several.
        width = max(tp.partition for tp in wanted) + 1
        ident = {tp: topics.index(tp.topic) * width + tp.partition for tp in wanted}
        by_ident = {i: tp for tp, i in ident.items()}
        reached = {i: wanted[tp][0] for tp, i in ident.items()}  # next offset to come
        ends = {i: wanted[tp][1] for tp, i in ident.items()}
        open_ = set(ident.values())
        columns = _Columns(keep_headers)
        topic_base = {t: n * width for n, t in enumerate(topics)}
        self._error = None
        consumer.assign(
            [ConfluentPartition(tp.topic, tp.partition, s) for tp, (s, _) in wanted.items()]
        )
        paused: list[ConfluentPartition] = []
        try:
            deadline = time.monotonic() + self.request_timeout
            while open_:
                # Never ask for more messages than the open ranges can still hold, or
                # consume() would sit out its wait for messages that do not exist.
                room = sum(ends[i] - reached[i] for i in open_)
                left = deadline - time.monotonic()
                if left <= 0 or self._interrupted:
                    names = ", ".join(partition_name(by_ident[i]) for i in sorted(open_))
                    raise self._unavailable(
                        f"no records from {names} within {self.request_timeout:g} s"
                    )
                with _collector_off():
                    last, events = _take(
                        consumer, min(CHUNK, room), min(left, WAIT_SECONDS), columns, topic_base
                    )
                for i, offset in last.items():
                    if i in reached and offset >= reached[i]:
                        reached[i] = offset + 1
                for event in events:
                    self._event(event, topic_base, by_ident, reached, ends)
                finished = [i for i in open_ if reached[i] >= ends[i]]
                if finished:
                    open_.difference_update(finished)
                    if open_:  # stop fetching (and queueing) what is no longer wanted
                        done = [
                            ConfluentPartition(by_ident[i].topic, by_ident[i].partition)
                            for i in finished
                        ]
                        consumer.pause(done)
                        paused.extend(done)
                if finished or last:
                    deadline = time.monotonic() + self.request_timeout
        finally:
            _release(consumer, paused)
        table = columns.table()
        for tp, i in ident.items():
            start, end = wanted[tp]
            part = records[tp]
            part.next_offset = max(reached[i], start)
            part.arrow = _cut(table, i, start, end, len(ident) > 1)
        return records

    def _event(
        self,
        event: Message,
        topic_base: dict[str, int],
        by_ident: dict[int, TopicPartition],
        reached: dict[int, int],
        ends: dict[int, int],
    ) -> None:
        """A partition's event among the messages: its end (EOF), or an error."""
        error = event.error()
        topic, partition = event.topic(), event.partition()
        if topic is None or partition is None:
            self._error = error  # a client-wide error: the deadline decides
            return
        i = topic_base.get(topic, -1) + partition
        if topic not in topic_base or i not in by_ident:
            return  # not a partition of this fetch (an event from before its assignment)
        tp = by_ident[i]
        if error.code() != KafkaError._PARTITION_EOF:
            self._raise_for(tp, error)
        at = event.offset()  # the partition's end (high watermark) when it was reached
        if at < ends[i]:
            # The log ends before the range does: truncated under us (as in kafka_python).
            raise PartitionError(tp, kafka_errors.OffsetOutOfRangeError)
        reached[i] = max(reached[i], ends[i])

    def _raise_for(self, tp: TopicPartition, error: KafkaError) -> None:
        code = error.code()
        if code in OUT_OF_RANGE_CODES:
            raise PartitionError(tp, kafka_errors.OffsetOutOfRangeError)
        if code in UNKNOWN_CODES:
            raise PartitionError(tp, kafka_errors.UnknownTopicOrPartitionError)
        if code in NETWORK_CODES or code < 0:
            raise self._unavailable(partition_name(tp), error)
        raise PartitionError(tp, kafka_errors.for_code(code))

    # -- offsets for lag tools -------------------------------------------------------------

    def commit(self, group_id: str, offsets: dict[TopicPartition, int]) -> None:
        """Record `offsets` as the group's position, for lag tools; never read back. The
        commit is asynchronous, awaited up to the request timeout (a synchronous one would
        wait for a coordinator for ever)."""
        if not offsets:
            return
        if group_id not in self._committers:
            self.consumer  # noqa: B018 - reach the cluster first (SourceUnavailable if not)
            answers: list[tuple[KafkaError | None, list[ConfluentPartition]]] = []
            committer = self._new_consumer(
                {
                    **self.settings,
                    "group.id": group_id,
                    "on_commit": lambda error, parts: answers.append((error, parts)),
                }
            )
            self._committers[group_id] = (committer, answers)
        committer, answers = self._committers[group_id]
        answers.clear()
        try:
            committer.commit(
                offsets=[
                    ConfluentPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()
                ],
                asynchronous=True,
            )
        except KafkaException as error:
            raise self._unavailable("offset commit failed", error) from None
        deadline = time.monotonic() + self.request_timeout
        while not answers:
            if time.monotonic() > deadline or self._interrupted:
                raise self._unavailable(
                    f"no offset commit answer within {self.request_timeout:g} s"
                )
            committer.poll(WAIT_SECONDS)
        error, parts = answers[-1]
        failed = [p.error for p in parts or [] if p.error is not None]
        if error is not None or failed:
            raise self._unavailable("offset commit failed", error or failed[0])

    def interrupt(self) -> None:
        """From another thread: the wait in flight gives up within one consume() wait."""
        self._interrupted = True

    def close(self) -> None:
        for committer, _ in self._committers.values():
            committer.close()
        self._committers = {}
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self._admin = None  # an admin client has no close(): it goes with its last reference


class ArrowRecordColumns(RecordColumns):
    """RecordColumns whose records are already an Arrow table (built by ConfluentClient);
    the array fields stay empty."""

    arrow: pa.Table | None = None

    def table(self) -> pa.Table:
        return self.arrow if self.arrow is not None else super().table()


class _Columns:
    """Messages appended column by column, one C-level pass per field."""

    def __init__(self, keep_headers: bool) -> None:
        self.keep_headers = keep_headers
        self.ids = array("i")
        self.offsets = array("q")
        self.timestamps = array("q")
        self.kinds = bytearray()
        self.keys: list[bytes | None] = []
        self.values: list[bytes | None] = []
        self.headers: list[Any] = []

    def add(self, messages: list[Message], ids: array) -> array:
        """Append `messages` (ids: their partitions' ids); returns their offsets."""
        offsets = array("q", map(_offset, messages))
        stamps = list(map(_timestamp, messages))
        self.ids.extend(ids)
        self.offsets.extend(offsets)
        self.timestamps.extend(map(_second, stamps))
        self.kinds.extend(map(_first, stamps))
        self.keys.extend(map(_key, messages))
        self.values.extend(map(_value, messages))
        if self.keep_headers:
            self.headers.extend(map(_headers, messages))
        return offsets

    def table(self) -> pa.Table:
        count = len(self.offsets)
        kinds = pa.Array.from_buffers(pa.int8(), count, [None, pa.py_buffer(self.kinds)])
        # librdkafka: 1 CreateTime, 2 LogAppendTime (0 none) -> records.py's 0 and 1.
        kinds = pc.equal(kinds, pa.scalar(2, pa.int8())).cast(pa.int8())
        headers = (
            pa.array([h or [] for h in self.headers], HEADERS_TYPE)
            if self.keep_headers
            else pa.nulls(count, HEADERS_TYPE)
        )
        return pa.table(
            [
                _int64(self.offsets),
                _int64(self.timestamps),
                kinds,
                pa.array(self.keys, pa.binary()),
                pa.array(self.values, pa.binary()),
                headers,
                pa.Array.from_buffers(pa.int32(), count, [None, pa.py_buffer(self.ids)]),
            ],
            schema=COLUMNS.append(pa.field("__id", pa.int32())),
        )


def _take(
    consumer: Consumer, count: int, wait: float, columns: _Columns, topic_base: dict[str, int]
) -> tuple[dict[int, int], list[Message]]:
    """Up to `count` messages into `columns`: each partition id's last offset among them,
    and the events (end of partition, errors) that came with them. The messages go when
    this returns, before the collector is back on."""
    messages = consumer.consume(count, wait)
    if not messages:
        return {}, []
    events = list(filter(_error, messages))  # end of partition, errors: rare
    if events:
        messages = list(filterfalse(_error, messages))
    if len(topic_base) > 1:
        ids = array(
            "i",
            map(
                int.__add__,
                map(topic_base.__getitem__, map(_topic, messages)),
                map(_partition, messages),
            ),
        )
    else:
        ids = array("i", map(_partition, messages))
    offsets = columns.add(messages, ids)
    # Each partition's last message in the chunk: delivery is in offset order.
    return dict(zip(ids, offsets, strict=True)), events


def _int64(values: array) -> pa.Array:
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _cut(table: pa.Table, ident: int, start: int, end: int, several: bool) -> pa.Table:
    """One partition's rows in [start, end), in offset order, without the id column."""
    offsets = table["offset"]
    keep = pc.and_(pc.greater_equal(offsets, start), pc.less(offsets, end))
    if several:
        keep = pc.and_(keep, pc.equal(table["__id"], ident))
    part = table.filter(keep).drop_columns(["__id"])
    if part.num_rows > 1:
        column = part["offset"].combine_chunks()
        if not pc.all(pc.greater(column[1:], column[:-1])).as_py():
            # Delivered twice or out of order (a refetch): in offset order, each once.
            part = part.sort_by("offset")
            column = part["offset"].combine_chunks()
            once = pc.not_equal(column[1:], column[:-1])
            part = part.filter(pa.concat_arrays([pa.array([True]), once]))
    return part.combine_chunks()


_collector_lock = threading.Lock()
_collector_holders = 0
_collector_was_on = True


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    """The cyclic garbage collector off while a chunk of messages is consumed: every
    Message is a tracked object, so a fetch of 500k messages set off ~1000 collections, a
    few of them over the whole heap (a third of the fetch's time), for garbage without
    cycles. Off for one chunk at a time (a consume() wait at most), never for a whole
    fetch that waits for a broker. Concurrent fetches turn it back on when the last one
    is done, and only if it was on."""
    global _collector_holders, _collector_was_on
    with _collector_lock:
        if _collector_holders == 0:
            _collector_was_on = gc.isenabled()
            gc.disable()
        _collector_holders += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_holders -= 1
            if _collector_holders == 0 and _collector_was_on:
                gc.enable()


def _release(consumer: Consumer, paused: list[ConfluentPartition]) -> None:
    """End a call's assignment. A pause outlives the assignment in librdkafka: undo it, or
    the partition's next assignment would never fetch."""
    if paused:
        consumer.resume(paused)
    consumer.unassign()


def _text(error: Any) -> str:
    """A librdkafka error's message (KafkaException wraps a KafkaError)."""
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        error = error.args[0]
    if isinstance(error, KafkaError):
        return f"{error.name()}: {error.str()}"
    return str(error)
