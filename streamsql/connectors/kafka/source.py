"""Kafka topics as a source, with offsets kept in the query's checkpoint (as Spark does).

An offset is Spark's JSON form, `{"topic": {"partition": next offset}}`; a batch reads each
partition's [start, end). Partitions are assigned by the source, never through a consumer
group (whose offsets are at most a copy for lag tools, with `group_id`). Partitions added
while a query runs are read from their earliest offset, as in Spark.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from typing import Any

import kafka.errors as kafka_errors
import pyarrow as pa
import pyarrow.compute as pc
from kafka import KafkaConsumer, TopicPartition

from streamsql.connectors.formats import Decoder
from streamsql.connectors.kafka.client import (
    KafkaClient,
    PartitionError,
    Watermarks,
    partition_name,
)
from streamsql.connectors.kafka.kafka_python import KafkaPythonClient
from streamsql.connectors.kafka.settings import PREFIX, client_settings, topic_names
from streamsql.connectors.source import Offset, Source, SourceBatch
from streamsql.errors import DataError, OperationalError, ProgrammingError

FORMATS = ("json", "csv", "raw")
# In an offset, beside Spark's {"topic": {"partition": offset}}: each topic's id where the
# broker reports one, so that a topic deleted and created again under the same name is told
# from the one the offsets were read from ('@' is never in a Kafka topic name).
TOPIC_IDS = "@topic_ids"
EARLIEST, LATEST = -2, -1  # in per-partition starting_offsets, as in Spark
# kafka-python settings a `kafka.` option may not change.
OWNED = {
    "bootstrap_servers": "use the bootstrap_servers option",
    "request_timeout_ms": "use the request_timeout option",
    "group_id": "use the group_id option; offsets are kept in the checkpoint",
    "enable_auto_commit": "offsets are kept in the checkpoint",
    "allow_auto_create_topics": "a source never creates the topics it reads",
    "receive_message_max_bytes": "the source sizes its fetches itself",
}


CLIENTS = ("kafka-python", "confluent")


def _client_class(name: str) -> type[KafkaClient]:
    if name == "confluent":
        try:
            from streamsql.connectors.kafka.confluent import ConfluentClient
        except ImportError:
            raise ProgrammingError(
                "client = 'confluent' needs the confluent-kafka package "
                "(pip install 'streamsql[confluent]')"
            ) from None
        return ConfluentClient
    return KafkaPythonClient


class KafkaSource(Source):
    OPTIONS = (
        *Source.OPTIONS,
        "bootstrap_servers",
        "topic",
        "topic_pattern",
        "starting_offsets",
        "max_offsets_per_trigger",
        "format",
        "delimiter",
        "fail_on_data_loss",
        "group_id",
        "client",
        "connect_timeout",
        "request_timeout",
    )
    OPTION_PREFIXES = (PREFIX,)  # kafka.security_protocol = ... is passed to the client
    METADATA = ("key", "topic", "partition", "offset", "timestamp", "timestamp_type", "headers")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = self.options
        self.option_required("bootstrap_servers", "kafka")
        if ("topic" in options) == ("topic_pattern" in options):
            raise ProgrammingError(
                f"Source {self.name}: the kafka connector needs either topic or topic_pattern"
            )
        self.topics = topic_names(self.owner, options["topic"]) if "topic" in options else None
        self.pattern = self.option_text("topic_pattern")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error:
                raise self._invalid("topic_pattern", "a regular expression") from None
        self.format = self.option_choice("format", FORMATS, "json")
        values = [c for c in self.definition.columns if c.metadata is None]
        if self.format == "raw" and len(values) != 1:
            raise ProgrammingError(
                f"Source {self.name}: format 'raw' puts the message value in one column "
                f"(BLOB or VARCHAR); {len(values)} non-METADATA columns are declared"
            )
        self.delimiter = self.option_char("delimiter", ",")
        self.max_offsets = self.option_int("max_offsets_per_trigger")
        self.fail_on_data_loss = self.option_bool("fail_on_data_loss", True)
        self.group_id = self.option_text("group_id")
        self.starting = options.get("starting_offsets", "latest").strip()
        if self.starting.lower() not in ("earliest", "latest"):
            self._specific_offsets()  # refuse bad JSON now, not when a query starts
        self._client_class = _client_class(self.option_choice("client", CLIENTS, "kafka-python"))
        self.keep_headers = any(c.metadata == "headers" for c in self.definition.columns)
        self.decoder = Decoder(self.definition.columns, self.schema)
        self.client = self._new_client()
        self._marks: dict[TopicPartition, Watermarks] = {}  # as of the last planning
        self._planned: Offset | None = None  # the last end offset this instance planned

    def _new_client(self) -> KafkaClient:
        config = client_settings(
            f"Source {self.name}", self.options, KafkaConsumer.DEFAULT_CONFIG, OWNED
        )
        request_timeout = self.option_seconds("request_timeout", 30.0)
        config["request_timeout_ms"] = int(request_timeout * 1000)
        return self._client_class(
            self.options["bootstrap_servers"], config, self.option_seconds("connect_timeout", 30.0)
        )

    def for_query(self) -> KafkaSource:
        """A query reads through its own connection, on its own thread."""
        reader = self._reader()
        reader.client, reader._marks, reader._planned = self._new_client(), {}, None
        return reader

    def close(self) -> None:
        self.client.close()

    def interrupt(self) -> None:
        self.client.interrupt()

    # -- offsets ---------------------------------------------------------------------------

    def _partitions(self, missing_ok: bool = False) -> list[TopicPartition]:
        try:
            return self.client.partitions(self.topics, self.pattern, missing_ok)
        except PartitionError as error:
            raise DataError(
                f"Source {self.name}: topic {error.partition.topic!r} does not exist"
            ) from None

    @staticmethod
    def _positions(offset: Offset) -> dict[TopicPartition, int]:
        return {
            TopicPartition(topic, int(p)): position
            for topic, partitions in (offset or {}).items()
            if topic != TOPIC_IDS
            for p, position in partitions.items()
        }

    @staticmethod
    def _ids(offset: Offset) -> dict[str, str]:
        """The topic ids an offset was planned with (none in offsets of older versions)."""
        return (offset or {}).get(TOPIC_IDS, {})

    @staticmethod
    def _offset(positions: dict[TopicPartition, int], ids: dict[str, str]) -> Offset:
        offset: dict[str, Any] = {}
        for tp in sorted(positions):
            offset.setdefault(tp.topic, {})[str(tp.partition)] = positions[tp]
        known = {topic: ids[topic] for topic in offset if topic in ids}
        if known:
            offset[TOPIC_IDS] = known
        return offset

    def public_offset(self, offset: Offset) -> Offset:
        """Spark's form, {"topic": {"partition": offset}}: the topic ids stay in the log."""
        if not isinstance(offset, dict):
            return offset
        return {topic: positions for topic, positions in offset.items() if topic != TOPIC_IDS}

    @staticmethod
    def _recreated(before: dict[str, str], now: dict[str, str]) -> list[str]:
        """Topics whose id changed between two offsets: deleted and created again."""
        return sorted(t for t, topic_id in before.items() if now.get(t, topic_id) != topic_id)

    def _specific_offsets(self) -> dict[TopicPartition, int]:
        try:
            positions = self._positions(json.loads(self.starting))
            if not all(type(o) is int and o >= EARLIEST for o in positions.values()):
                raise ValueError
        except (ValueError, AttributeError, TypeError):
            raise ProgrammingError(
                f"Source {self.name}: starting_offsets must be earliest, latest or JSON like "
                f'{{"topic": {{"0": 23, "1": -2}}}} (-2 earliest, -1 latest)'
            ) from None
        return positions

    def initial_offset(self) -> Offset:
        partitions = self._partitions()
        marks = self.client.watermarks(partitions)
        mode = self.starting.lower()
        if mode in ("earliest", "latest"):
            pick = EARLIEST if mode == "earliest" else LATEST
            wanted = dict.fromkeys(partitions, pick)
        else:
            wanted = self._specific_offsets()
            missing = sorted(set(partitions) - set(wanted))
            if missing:
                raise ProgrammingError(
                    f"Source {self.name}: starting_offsets must give every partition; missing "
                    + ", ".join(map(partition_name, missing))
                )
            unknown = sorted(set(wanted) - set(partitions))
            if unknown:
                raise ProgrammingError(
                    f"Source {self.name}: starting_offsets names partitions the topics do not "
                    "have: " + ", ".join(map(partition_name, unknown))
                )
        return self._offset(
            {
                tp: marks[tp].log_start if o == EARLIEST else marks[tp].high if o == LATEST else o
                for tp, o in wanted.items()
                if tp in marks
            },
            self.client.topic_ids({tp.topic for tp in partitions}),
        )

    def snapshot(self) -> Offset:
        partitions = self._partitions()
        marks = self._marks = self.client.watermarks(partitions)
        return self._offset({tp: mark.high for tp, mark in marks.items()}, {})

    def plan_batch(
        self, start: Offset, bound: Offset | None, limited: bool = True
    ) -> Offset | None:
        positions = self._positions(start)
        partitions = self._partitions(missing_ok=True)  # a deleted topic is data loss
        ids = self.client.topic_ids({tp.topic for tp in partitions})
        before = self._ids(start)
        for topic in self._recreated(before, ids):
            read = sorted(tp for tp in positions if tp.topic == topic)
            self._data_loss(
                f"topic {topic} was deleted and created again (its id is {ids[topic]}, the "
                f"checkpoint's is {before[topic]}): the committed offsets "
                + ", ".join(f"{partition_name(tp)} at {positions[tp]}" for tp in read)
                + " are of the old topic; the new one is read from its earliest offsets"
            )
            for tp in read:  # read as new partitions are: from their start
                del positions[tp]
        gone = sorted(set(positions) - set(partitions))
        if gone:
            self._data_loss(
                f"partitions {', '.join(partition_name(tp) for tp in gone)} were deleted"
            )
        marks = self._marks = self.client.watermarks(partitions)
        begin: dict[TopicPartition, int] = {}
        for tp, mark in marks.items():
            position = positions.get(tp, mark.log_start)  # a new partition: from its start
            if position < mark.log_start:
                self._data_loss(
                    f"offsets {position} to {mark.log_start - 1} of {partition_name(tp)} were "
                    "deleted before they were read (retention)"
                )
                position = mark.log_start
            elif position > mark.high:
                self._data_loss(
                    f"{partition_name(tp)} ends at offset {mark.high}, before the checkpoint's "
                    f"{position} (was the topic recreated?)"
                )
                position = mark.high
            begin[tp] = position
        limits = self._positions(bound) if bound is not None else None
        until = {
            tp: max(begin[tp], min(marks[tp].high, limits.get(tp, begin[tp])))
            if limits is not None
            else marks[tp].high
            for tp in begin
        }
        if self.max_offsets and limited:
            until = self._rate_limit(begin, until)
        if not gone and all(until[tp] == positions.get(tp) for tp in until):
            return None  # (deleted partitions are dropped from the offsets by a batch)
        self._planned = self._offset(
            {**{tp: p for tp, p in positions.items() if tp not in gone}, **until}, ids
        )
        return self._planned

    def _rate_limit(
        self, begin: dict[TopicPartition, int], until: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """Spark's split of max_offsets_per_trigger: each partition gets a share in
        proportion to its lag, so a backlog advances every partition together."""
        lags = {tp: until[tp] - begin[tp] for tp in until}
        total = sum(lags.values())
        if total <= self.max_offsets:
            return until
        limited = {}
        for tp, lag in lags.items():
            share = self.max_offsets * (lag / total)  # as Spark rounds it
            step = math.ceil(share) if share < 1 else math.floor(share)
            limited[tp] = min(begin[tp] + step, until[tp])
        return limited

    def _data_loss(self, what: str) -> None:
        """An error, or with fail_on_data_loss = false a warning in the batch's progress."""
        if self.fail_on_data_loss:
            raise DataError(
                f"Source {self.name}: {what}; set fail_on_data_loss = false to go on with "
                "the offsets the broker has"
            )
        self.warn(f"data loss: {what}")

    def backlog(self, end: Offset) -> int | None:
        lag = self.lag_by_partition(end)
        return None if lag is None else sum(lag.values())

    def lag_by_partition(self, end: Offset) -> dict[str, int] | None:
        """The broker's end offset minus `end`, per partition, as of the last planning or
        snapshot (None before either: this never waits for the broker)."""
        if not self._marks:
            return None
        positions = self._positions(end)
        return {
            partition_name(tp): max(0, mark.high - positions.get(tp, mark.log_start))
            for tp, mark in sorted(self._marks.items())
        }

    def committed(self, end: Offset) -> None:
        """Copy the committed offsets to the consumer group, for external lag tools."""
        if self.group_id:
            # A copy for dashboards: if it fails, the next batch's commit brings it up to date.
            with contextlib.suppress(OperationalError):
                self.client.commit(self.group_id, self._positions(end))

    # -- reading ---------------------------------------------------------------------------

    def read(self, start: Offset, end: Offset) -> SourceBatch:
        begin, until = self._positions(start), self._positions(end)
        # A topic created again before the batch was planned is read from its start.
        switched = set(self._recreated(self._ids(start), self._ids(end)))
        begin = {tp: p for tp, p in begin.items() if tp.topic not in switched}
        if end != self._planned:  # planned by an earlier run: does the broker still have it?
            until = self._still_there(begin, until, self._ids(end))
        new = [tp for tp in until if tp not in begin]
        if new:  # partitions that appeared in this batch are read from their start
            marks = self.client.watermarks(new)
            begin.update({tp: marks[tp].log_start for tp in new if tp in marks})
        ranges = {tp: (begin[tp], e) for tp, e in until.items() if e > begin.get(tp, e)}
        if not ranges:
            return self.empty()
        while True:
            try:
                fetched = self.client.fetch(ranges, self.keep_headers)
                break
            except PartitionError as error:
                ranges = self._after_partition_error(error, ranges)
        if not fetched:  # every range was lost (fail_on_data_loss = false)
            return self.empty()
        tables = []
        for tp in sorted(fetched):
            table = fetched[tp].table()
            tables.append(
                table.append_column(
                    "__topic", pa.repeat(pa.scalar(tp.topic), table.num_rows)
                ).append_column(
                    "__partition", pa.repeat(pa.scalar(tp.partition, pa.int32()), table.num_rows)
                )
            )
        return self._decode(pa.concat_tables(tables))

    def _still_there(
        self,
        begin: dict[TopicPartition, int],
        until: dict[TopicPartition, int],
        ids: dict[str, str],
    ) -> dict[TopicPartition, int]:
        """The ranges of a batch planned before a restart that the broker still has. A topic
        created again since (its id changed) or a partition that now ends before the range
        is data loss: those ranges are dropped, and the next batch reads on from the
        partition as it is (a new topic from its start)."""
        partitions = set(self._partitions(missing_ok=True))  # fresh metadata, for the ids
        now = self.client.topic_ids(set(ids))
        recreated = self._recreated(ids, now)
        for topic in recreated:
            self._data_loss(
                f"topic {topic} was deleted and created again (its id is {now[topic]}) after "
                f"the batch planned to read "
                + ", ".join(
                    f"{partition_name(tp)} up to {o}"
                    for tp, o in sorted(until.items())
                    if tp.topic == topic
                )
                + f" from the topic with id {ids[topic]}"
            )
        kept = {tp: o for tp, o in until.items() if tp.topic not in recreated}
        started = [tp for tp in kept if tp in begin and tp in partitions and kept[tp] > begin[tp]]
        for tp, mark in self.client.watermarks(started).items():
            if begin[tp] >= mark.high:
                self._data_loss(
                    f"{partition_name(tp)} ends at offset {mark.high}, before the offsets "
                    f"{begin[tp]} to {kept[tp] - 1} the batch planned to read (was the topic "
                    "recreated?)"
                )
                del kept[tp]
        return kept

    def _after_partition_error(
        self, error: PartitionError, ranges: dict[TopicPartition, tuple[int, int]]
    ) -> dict[TopicPartition, tuple[int, int]]:
        """The ranges to fetch again once data loss is accepted (fail_on_data_loss = false)."""
        tp = error.partition
        if error.error is kafka_errors.UnknownTopicOrPartitionError:
            self._data_loss(f"{partition_name(tp)} was deleted")
            return {p: r for p, r in ranges.items() if p != tp}
        if error.error is kafka_errors.OffsetOutOfRangeError:
            start, end = ranges[tp]
            mark = self.client.watermarks([tp])[tp]
            self._data_loss(
                f"offsets {start} to {min(end, mark.log_start) - 1} of {partition_name(tp)} are "
                "no longer on the broker (retention)"
            )
            rest = {p: r for p, r in ranges.items() if p != tp}
            if mark.log_start < end:
                rest[tp] = (max(start, mark.log_start), end)
            return rest
        raise OperationalError(f"Source {self.name}: Kafka refused to fetch {error}") from None

    def _decode(self, records: pa.Table) -> SourceBatch:
        """Records -> the raw table the decoder reads: dead letters name `topic-partition`."""
        partition = pc.binary_join_element_wise(
            records["__topic"], records["__partition"].cast(pa.string()), "-"
        )
        columns = {
            "partition": partition,
            "offset": records["offset"],
            "raw": records["value"],
            "value": records["value"],
        }
        for column in self.definition.columns:
            if column.metadata is not None:
                columns[f"__meta_{column.metadata}"] = self._metadata(records, column.metadata)
        raw = pa.table(columns)
        if self.format == "json":
            return self.decoder.decode_json(raw)
        if self.format == "csv":
            return self.decoder.decode_csv(raw, self.delimiter)
        return self.decoder.decode_raw(raw)

    @staticmethod
    def _metadata(records: pa.Table, key: str) -> pa.ChunkedArray:
        if key == "topic":
            return records["__topic"]
        if key == "partition":
            return records["__partition"]
        if key == "timestamp":
            return records["timestamp"].cast(pa.timestamp("ms", "UTC"))
        return records[key]
