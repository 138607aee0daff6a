"""The kafka source against a real broker (Tansu, the session fixture `broker`): JSON, CSV and
raw values, METADATA columns, dead letters, starting offsets, max_offsets_per_trigger, topic
lists and patterns, lag, checkpointed offsets across restarts, consumer-group copies, data
loss, an unreachable or paused broker, option checks, and a windowed aggregation property.

Every test writes to topics of its own (uuid names) with a real KafkaProducer, partitions
named explicitly, so each record's partition and offset are known; nothing is mocked.
Tansu has no CreatePartitions (that test is skipped on it) and no DeleteRecords: partitions
that appear while a query runs are also exercised through a topic_pattern that a topic
created meanwhile comes to match.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import reference_model as model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaAdminClient, KafkaProducer

import streamsql
from streamsql.runtime.query import StreamingQuery
from streamsql.status import database_status
from streamsql.testing.broker import Broker, free_port

EPOCH = dt.datetime(1970, 1, 1)
T0_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z in epoch milliseconds
DEAD_LETTERS = (
    'SELECT query, batch_id, source, "partition", "offset", raw, error '
    'FROM _streamsql.dead_letters ORDER BY "partition", "offset"'
)


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def producer(broker: Broker) -> Iterator[KafkaProducer]:
    client = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    yield client
    client.close()


@dataclass(frozen=True)
class Sent:
    """A record as produced, and where the broker put it."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


def produce(
    producer: KafkaProducer,
    topic: str,
    records: Sequence[tuple[int, bytes | None]] | Sequence[dict[str, Any]],
) -> list[Sent]:
    """Send records (partition, value) or dicts of send() arguments; wait for every ack."""
    futures = []
    for record in records:
        args = record if isinstance(record, dict) else {"partition": record[0], "value": record[1]}
        futures.append((args, producer.send(topic, **args)))
    producer.flush()
    sent = []
    for args, future in futures:
        meta = future.get(timeout=10)
        sent.append(
            Sent(
                meta.partition,
                meta.offset,
                args.get("key"),
                args.get("value"),
                args.get("timestamp_ms"),
                tuple(args.get("headers") or ()),
            )
        )
    return sent


CLIENT = "kafka-python"  # the client kafka_source() asks for; every test runs with both


@pytest.fixture(autouse=True, params=["kafka-python", "confluent"])
def client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both clients give the same results: each test runs once per client."""
    monkeypatch.setattr(sys.modules[__name__], "CLIENT", request.param)
    return request.param


def kafka_source(
    broker: Broker | str,
    topic: str | None,
    columns: str = "user_id BIGINT, name VARCHAR",
    name: str = "ev",
    **options: object,
) -> str:
    servers = broker if isinstance(broker, str) else broker.bootstrap_servers
    options = {"starting_offsets": "earliest", "client": CLIENT, **options}
    if topic is not None:
        options = {"topic": topic, **options}
    extra = "".join(f", {key} = '{value}'" for key, value in options.items())
    return (
        f"CREATE SOURCE {name} ({columns}) WITH (connector = 'kafka', "
        f"bootstrap_servers = '{servers}'{extra})"
    )


def copy_sink(source: str = "ev", name: str = "out", trigger: str | None = "available_now") -> str:
    option = f", trigger = '{trigger}'" if trigger else ""
    return f"CREATE SINK {name} WITH (connector = 'duckdb'{option}) AS SELECT * FROM {source}"


def run_to_end(con: streamsql.Connection, sql: str, name: str = "out") -> StreamingQuery:
    """Create a sink (trigger available_now) and wait until its query has stopped."""
    con.execute(sql)
    query = con.query(name)
    assert query.await_termination(30) is True
    return query


def caught_up(con: streamsql.Connection, name: str = "out") -> StreamingQuery:
    query = con.query(name)
    query.process_all_available(timeout=30)
    return query


def rows(con: streamsql.Connection, sql: str, params: list[Any] | None = None) -> list[tuple]:
    return con.execute(sql, params).fetchall()


def offsets(progress: Any) -> tuple[dict, dict]:
    (source,) = progress.sources
    return source["start_offset"], source["end_offset"]


def topic_id(admin: KafkaAdminClient, topic: str) -> str:
    """The topic's id as Kafka's tools print it: URL-safe base64 of its 16 bytes, unpadded."""
    (described,) = admin.describe_topics([topic])
    raw = uuid.UUID(described["topic_id"]).bytes
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def spark_form(logged: str, ids: dict[str, str]) -> dict[str, Any]:
    """An offset from the offset log in Spark's form, after checking the topic ids logged
    beside it."""
    offset = json.loads(logged)
    assert offset.pop("@topic_ids") == ids
    return offset


def wait_until(condition: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- values and metadata -----------------------------------------------------------------------

METADATA_COLUMNS = (
    "user_id BIGINT, name VARCHAR, "
    "k VARCHAR METADATA FROM 'key', part INT METADATA FROM 'partition', "
    "off BIGINT METADATA FROM 'offset', ts TIMESTAMP METADATA FROM 'timestamp', "
    "topic VARCHAR METADATA, hdrs STRUCT(key VARCHAR, value BLOB)[] METADATA FROM 'headers', "
    "tt INT METADATA FROM 'timestamp_type', raw_key BLOB METADATA FROM 'key' VIRTUAL"
)


def test_json_values_and_every_metadata_column_across_four_partitions(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(4)
    records = []
    for i in range(240):
        headers = [("trace", b"t%d" % i)] if i % 3 else []
        if i % 7 == 0:
            headers += [("empty", b""), ("trace", b"\x00\xff")]
        records.append(
            {
                "partition": i % 4,
                "key": None if i % 5 == 0 else b"user-%d" % (i % 11),
                "value": json.dumps({"user_id": i * 1_000_003, "name": f"n\u00e9{i}"}).encode(),
                "timestamp_ms": T0_MS + 997 * i - (i % 4) * 50_000,
                "headers": headers,
            }
        )
    sent = produce(producer, topic, records)
    con.execute(kafka_source(broker, topic, METADATA_COLUMNS))
    query = run_to_end(con, copy_sink())

    expected = [
        (
            json.loads(s.value)["user_id"],
            json.loads(s.value)["name"],
            None if s.key is None else s.key.decode(),
            s.partition,
            s.offset,
            EPOCH + dt.timedelta(milliseconds=s.timestamp_ms),
            topic,
            [{"key": k, "value": v} for k, v in s.headers],
            0,
            s.key,
        )
        for s in sent
    ]
    got = rows(con, "SELECT * FROM out")
    assert len(got) == 240
    assert Counter(map(repr, got)) == Counter(map(repr, expected))  # lists are not hashable
    # offsets run 0..59 in every partition, in produce order
    assert rows(
        con, "SELECT part, min(off), max(off), count(*) FROM out GROUP BY part ORDER BY part"
    ) == [(p, 0, 59, 60) for p in range(4)]
    assert [d[1] for d in con.execute("SELECT * FROM out").description] == [
        "BIGINT", "VARCHAR", "VARCHAR", "INTEGER", "BIGINT", "TIMESTAMP", "VARCHAR",
        "STRUCT(\"key\" VARCHAR, \"value\" BLOB)[]", "INTEGER", "BLOB",
    ]  # fmt: skip
    (progress,) = query.recent_progress
    assert progress.num_input_rows == 240
    assert progress.num_dead_letters == 0
    assert offsets(progress) == (
        {topic: {"0": 0, "1": 0, "2": 0, "3": 0}},
        {topic: {"0": 60, "1": 60, "2": 60, "3": 60}},
    )
    assert progress.sources[0]["lag"] == 0
    assert progress.sources[0]["lag_by_partition"] == {f"{topic}-{p}": 0 for p in range(4)}


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_records_in_compressed_batches_are_decoded(
    broker: Broker, con: streamsql.Connection, codec: str
) -> None:
    topic = broker.create_topic(2)
    compressing = KafkaProducer(
        bootstrap_servers=broker.bootstrap_servers, compression_type=codec, linger_ms=20
    )
    try:
        sent = produce(
            compressing,
            topic,
            [
                {
                    "partition": i % 2,
                    "value": json.dumps({"user_id": i, "name": "x" * (i % 50)}).encode(),
                    "headers": [("i", str(i).encode())],
                }
                for i in range(300)
            ],
        )
    finally:
        compressing.close()
    con.execute(
        kafka_source(
            broker,
            topic,
            "user_id BIGINT, name VARCHAR, off BIGINT METADATA FROM 'offset', "
            "h STRUCT(key VARCHAR, value BLOB)[] METADATA FROM 'headers'",
        )
    )
    run_to_end(con, copy_sink())
    got = rows(con, "SELECT user_id, name, off, h FROM out ORDER BY user_id")
    assert got == [
        (i, "x" * (i % 50), s.offset, [{"key": "i", "value": str(i).encode()}])
        for i, s in enumerate(sent)
    ]


def test_transaction_markers_are_not_rows_but_count_in_the_offsets(
    broker: Broker, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(1)
    transactional = KafkaProducer(
        bootstrap_servers=broker.bootstrap_servers, transactional_id=f"tx-{uuid.uuid4().hex}"
    )
    try:
        transactional.init_transactions()
        for batch in ([1, 2, 3], [4]):
            transactional.begin_transaction()
            for n in batch:
                transactional.send(topic, json.dumps({"user_id": n}).encode())
            transactional.commit_transaction()
    finally:
        transactional.close()
    con.execute(kafka_source(broker, topic, "user_id BIGINT, off BIGINT METADATA FROM 'offset'"))
    query = run_to_end(con, copy_sink())
    # offsets 3 and 5 are commit markers: the batch ends after the last one
    assert rows(con, "SELECT user_id, off FROM out ORDER BY off") == [
        (1, 0),
        (2, 1),
        (3, 2),
        (4, 4),
    ]
    assert offsets(query.last_progress)[1] == {topic: {"0": 6}}
    assert query.last_progress.sources[0]["lag"] == 0


def test_values_larger_than_one_fetch_are_read_across_fetches(
    broker: Broker, con: streamsql.Connection
) -> None:
    """20 MB of records take several fetches (the source asks for 16 MB a partition; Tansu
    answers with about 8 MB whatever is asked)."""
    topic = broker.create_topic(1)
    big = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, max_request_size=8 << 20)
    try:
        pad = "p" * (4 << 20)
        sent = produce(
            big,
            topic,
            [
                {"partition": 0, "value": json.dumps({"user_id": i, "name": pad}).encode()}
                for i in range(5)
            ],
        )
    finally:
        big.close()
    con.execute(kafka_source(broker, topic))
    run_to_end(con, copy_sink())
    assert rows(con, "SELECT user_id, length(name) FROM out ORDER BY user_id") == [
        (i, 4 << 20) for i in range(5)
    ]
    assert [s.offset for s in sent] == list(range(5))


# -- CSV and raw values ------------------------------------------------------------------------


def test_csv_values_with_quoting_and_wrong_field_counts(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(2)
    values = [
        (0, b'1;"a; b";x'),  # 0: the delimiter inside quotes
        (0, b'2;"say ""hi""";y'),  # 1: doubled quotes
        (0, b"3;z"),  # 2: too few fields
        (0, b"4;a;b;c"),  # 3: too many
        (1, b"5;;"),  # 0: empty fields are NULL
        (1, b"x;a;b"),  # 1: not an INT
        (1, b'6;"open;b'),  # 2: an unterminated quote
        (1, b"7.5;a;b"),  # 3: fractional for INT
        (1, "8;\u00fcn\u00ef;\U0001f642".encode()),  # 4
    ]
    produce(producer, topic, values)
    con.execute(
        kafka_source(
            broker,
            topic,
            "n INT, s VARCHAR, t VARCHAR, off BIGINT METADATA FROM 'offset'",
            format="csv",
            delimiter=";",
        )
    )
    query = run_to_end(con, copy_sink())
    assert rows(con, "SELECT n, s, t, off FROM out ORDER BY n") == [
        (1, "a; b", "x", 0),
        (2, 'say "hi"', "y", 1),
        (5, None, None, 0),
        (8, "\u00fcn\u00ef", "\U0001f642", 4),
    ]
    assert rows(con, DEAD_LETTERS) == [
        ("out", 0, "ev", f"{topic}-0", 2, b"3;z", "expected 3 fields, got 2"),
        ("out", 0, "ev", f"{topic}-0", 3, b"4;a;b;c", "expected 3 fields, got 4"),
        ("out", 0, "ev", f"{topic}-1", 1, b"x;a;b", "column n: cannot read x as INT"),
        ("out", 0, "ev", f"{topic}-1", 2, b'6;"open;b', "malformed CSV record"),
        ("out", 0, "ev", f"{topic}-1", 3, b"7.5;a;b", "column n: cannot read 7.5 as INT"),
    ]
    assert (query.last_progress.num_input_rows, query.last_progress.num_dead_letters) == (4, 5)


def test_raw_values_as_blob_and_as_varchar(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(1)
    values = [b"hello", b"\xff\x00binary", None, b"", "\u00fcn\u00ef \U0001f642".encode()]
    produce(producer, topic, [{"partition": 0, "key": b"k", "value": v} for v in values])
    for kind in ("BLOB", "VARCHAR"):
        con.execute(
            kafka_source(
                broker,
                topic,
                f"v {kind}, off BIGINT METADATA FROM 'offset'",
                name=f"raw_{kind}",
                format="raw",
            )
        )
        run_to_end(con, copy_sink(f"raw_{kind}", f"out_{kind}"), f"out_{kind}")
    # a tombstone's value is NULL, as Spark's value column is
    assert rows(con, "SELECT v, off FROM out_BLOB ORDER BY off") == [
        (v, i) for i, v in enumerate(values)
    ]
    assert rows(con, "SELECT v, off FROM out_VARCHAR ORDER BY off") == [
        ("hello", 0),
        (None, 2),
        ("", 3),
        ("\u00fcn\u00ef \U0001f642", 4),
    ]
    assert rows(con, DEAD_LETTERS) == [
        ("out_VARCHAR", 0, "raw_VARCHAR", f"{topic}-0", 1, b"\xff\x00binary",
         "value is not valid UTF-8"),
    ]  # fmt: skip


# -- dead letters --------------------------------------------------------------------------

BAD_JSON = [
    (0, b'{"user_id": 1, "name": "ok"}'),  # p0 0
    (0, b'{"user_id": '),  # p0 1: malformed
    (1, b'{"user_id": "abc"}'),  # p1 0: wrong type
    (1, b'{"user_id": 1.5}'),  # p1 1: fractional
    (2, b"[1, 2]"),  # p2 0: not an object
    (2, b'{"user_id": 2.0, "name": "two"}'),  # p2 1: 2.0 is not an integer either (Spark)
    (0, b'{"user_id": 3, "name": null, "extra": [1]}'),  # p0 2: fine
    (1, b"\xff\xfe{}"),  # p1 2: not UTF-8
    (2, b'{"user_id": 9223372036854775808}'),  # p2 2: beyond BIGINT
    (0, b""),  # p0 3: empty value
    (1, b'{"name": 5}'),  # p1 3: a number for VARCHAR is its text
]
BAD_JSON_ERRORS = [
    (0, 1, b'{"user_id": ', "malformed JSON"),
    (0, 3, b"", "malformed JSON"),
    (0, 4, None, "empty message"),
    (1, 0, b'{"user_id": "abc"}', 'column user_id: cannot read "abc" as BIGINT'),
    (1, 1, b'{"user_id": 1.5}', "column user_id: cannot read 1.5 as BIGINT"),
    (1, 2, b"\xff\xfe{}", "value is not valid UTF-8"),
    (2, 0, b"[1, 2]", "JSON value is not an object"),
    (2, 1, b'{"user_id": 2.0, "name": "two"}', "column user_id: cannot read 2.0 as BIGINT"),
    (2, 2, b'{"user_id": 9223372036854775808}',
     "column user_id: cannot read 9223372036854775808 as BIGINT"),
]  # fmt: skip


def produce_bad_json(producer: KafkaProducer, topic: str) -> None:
    produce(producer, topic, [{"partition": p, "key": b"k", "value": v} for p, v in BAD_JSON])
    produce(producer, topic, [{"partition": 0, "key": b"gone", "value": None}])  # p0 4


def test_bad_json_values_are_dead_letters_at_their_partition_and_offset(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(3)
    produce_bad_json(producer, topic)
    con.execute(kafka_source(broker, topic, "user_id BIGINT, name VARCHAR"))
    query = run_to_end(con, copy_sink())
    assert sorted(rows(con, "SELECT user_id, name FROM out"), key=repr) == sorted(
        [(1, "ok"), (3, None), (None, "5")], key=repr
    )
    assert rows(con, DEAD_LETTERS) == [
        ("out", 0, "ev", f"{topic}-{p}", offset, raw, error)
        for p, offset, raw, error in BAD_JSON_ERRORS
    ]
    assert (query.last_progress.num_input_rows, query.last_progress.num_dead_letters) == (3, 9)


def test_json_boolean_for_an_integer_column_is_a_dead_letter(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(1)
    produce(producer, topic, [(0, b'{"user_id": true}'), (0, b'{"user_id": 4}')])
    con.execute(kafka_source(broker, topic, "user_id BIGINT"))
    run_to_end(con, copy_sink())
    assert rows(con, "SELECT user_id FROM out") == [(4,)]
    assert [(r[3], r[4]) for r in rows(con, DEAD_LETTERS)] == [(f"{topic}-0", 0)]


def test_event_time_out_of_range_is_a_dead_letter_at_its_partition_and_offset(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    """Issue 10: `infinity` used to become the watermark (near int64 max) for good."""
    topic = broker.create_topic(2)
    values = [
        (0, b'{"ts": "2024-01-01 00:00:00"}'),
        (1, b'{"ts": "infinity"}'),
        (0, b'{"ts": "294247-01-10 04:00:54"}'),
        (1, b'{"ts": "2024-01-01 00:10:00"}'),
    ]
    produce(producer, topic, values)
    con.execute(kafka_source(broker, topic, "ts TIMESTAMP"))
    query = run_to_end(
        con,
        "CREATE SINK out WITH (connector = 'duckdb', trigger = 'available_now') AS "
        "SELECT window_start, count(*) AS n FROM ev WATERMARK ts DELAY OF INTERVAL '1 minute' "
        "WINDOW TUMBLING (ts, INTERVAL '5 minutes') GROUP BY window_start, window_end EMIT FINAL",
    )
    assert query.exception is None
    assert rows(con, "SELECT window_start, n FROM out") == [(dt.datetime(2024, 1, 1), 1)]
    assert query.recent_progress[0].next_watermark == "2024-01-01T00:09:00.000000Z"
    dead = rows(con, DEAD_LETTERS)
    assert [(r[3], r[4], r[5]) for r in dead] == [
        (f"{topic}-0", 1, values[2][1]),
        (f"{topic}-1", 0, values[1][1]),
    ]
    assert all("is outside 0001-01-01 .. 9999-12-31" in r[6] for r in dead)


def test_metadata_that_does_not_fit_its_column_is_a_dead_letter(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(1)
    produce(
        producer,
        topic,
        [
            {"partition": 0, "key": b"\xff", "value": b'{"user_id": 1}'},
            {"partition": 0, "key": None, "value": b'{"user_id": 2}'},
            {"partition": 0, "key": b"ok", "value": b'{"user_id": 3}'},
        ],
    )
    con.execute(kafka_source(broker, topic, "user_id BIGINT, k VARCHAR METADATA FROM 'key'"))
    run_to_end(con, copy_sink())
    assert rows(con, "SELECT user_id, k FROM out ORDER BY user_id") == [(2, None), (3, "ok")]
    ((partition, offset, raw, error),) = [r[3:] for r in rows(con, DEAD_LETTERS)]
    assert (partition, offset, raw) == (f"{topic}-0", 0, b'{"user_id": 1}')
    assert error.startswith("column k (metadata key): cannot read \\xFF as ")


def test_on_error_skip_counts_bad_records_but_stores_none(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(3)
    produce_bad_json(producer, topic)
    con.execute(kafka_source(broker, topic, on_error="skip"))
    query = run_to_end(con, copy_sink())
    assert rows(con, "SELECT count(*) FROM out") == [(3,)]
    assert rows(con, DEAD_LETTERS) == []
    assert (query.last_progress.num_input_rows, query.last_progress.num_dead_letters) == (3, 9)


def test_on_error_fail_fails_the_query_naming_partition_and_offset(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(2)
    produce(
        producer,
        topic,
        [(0, b'{"user_id": 1}'), (1, b'{"user_id": 2}'), (0, b'{"user_id": 3}'), (1, b"{oops")],
    )
    # two records a batch: shares of 2 over lags 2 and 2 take offset 0, then offset 1, of each
    con.execute(kafka_source(broker, topic, on_error="fail", max_offsets_per_trigger=2))
    con.execute(copy_sink())
    query = con.query("out")
    with pytest.raises(streamsql.StreamingQueryError) as caught:
        query.await_termination(30)
    message = str(caught.value)
    assert f"bad record at {topic}-1 offset 1: malformed JSON (on_error = 'fail')" in message
    assert query.status["message"] == "failed"
    assert rows(con, "SELECT user_id FROM out ORDER BY 1") == [(1,), (2,)]  # batch 1 rolled back
    assert rows(con, DEAD_LETTERS) == []
    assert [offsets(p)[1] for p in query.recent_progress] == [{topic: {"0": 1, "1": 1}}]


# -- starting offsets --------------------------------------------------------------------------


def test_starting_offsets_earliest_latest_and_the_default(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(2)
    produce(producer, topic, [(i % 2, b'{"user_id": %d}' % i) for i in range(6)])
    columns = "user_id BIGINT"
    con.execute(kafka_source(broker, topic, columns, name="e", starting_offsets="earliest"))
    con.execute(kafka_source(broker, topic, columns, name="l", starting_offsets="latest"))
    con.execute(
        "CREATE SOURCE d (user_id BIGINT) WITH (connector = 'kafka', "
        f"bootstrap_servers = '{broker.bootstrap_servers}', topic = '{topic}')"
    )
    for name in ("e", "l", "d"):
        con.execute(copy_sink(name, f"out_{name}", trigger=None))
        caught_up(con, f"out_{name}")
    produce(producer, topic, [(i % 2, b'{"user_id": %d}' % i) for i in range(6, 9)])
    for name in ("e", "l", "d"):
        caught_up(con, f"out_{name}")
    assert rows(con, "SELECT user_id FROM out_e ORDER BY 1") == [(i,) for i in range(9)]
    assert rows(con, "SELECT user_id FROM out_l ORDER BY 1") == [(6,), (7,), (8,)]
    assert rows(con, "SELECT user_id FROM out_d ORDER BY 1") == [(6,), (7,), (8,)]
    progress = con.query("out_l").recent_progress
    assert offsets(progress[0])[0] == {topic: {"0": 3, "1": 3}}
    assert offsets(progress[-1])[1] == {topic: {"0": 5, "1": 4}}


def test_latest_is_resolved_when_the_query_starts_and_kept_across_a_stop_before_any_batch(
    broker: Broker, admin: KafkaAdminClient, producer: KafkaProducer, db_path: str
) -> None:
    topic = broker.create_topic(2)
    produce(producer, topic, [(0, b'{"user_id": -1}')])  # before the query: not read
    with streamsql.connect(db_path) as con:
        con.execute(kafka_source(broker, topic, "user_id BIGINT", starting_offsets="latest"))
        con.execute(copy_sink(trigger=None))  # the query starts; stopped before any batch
        assert con.query("out").last_progress is None
        recorded = rows(
            con, "SELECT end_offset FROM _streamsql.offsets WHERE query = 'out' AND batch_id = -1"
        )
        ids = {topic: topic_id(admin, topic)}
        assert [spark_form(end, ids) for (end,) in recorded] == [{topic: {"0": 1, "1": 0}}]
    produce(producer, topic, [(i % 2, b'{"user_id": %d}' % i) for i in range(50)])
    with streamsql.connect(db_path) as con:
        query = caught_up(con)
        produce(producer, topic, [(i % 2, b'{"user_id": %d}' % i) for i in range(50, 70)])
        caught_up(con)
        assert rows(con, "SELECT user_id FROM out ORDER BY 1") == [(i,) for i in range(70)]
        assert offsets(query.recent_progress[0])[0] == {topic: {"0": 1, "1": 0}}
    assert database_status(db_path)[1][0]["committed_offsets"] == {topic: {"0": 36, "1": 35}}


def test_starting_offsets_per_partition_json(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(3)
    produce(producer, topic, [(i % 3, b'{"user_id": %d}' % i) for i in range(30)])
    start = json.dumps({topic: {"0": 7, "1": -2, "2": -1}})
    con.execute(
        kafka_source(
            broker, topic, "user_id BIGINT, part INT METADATA FROM 'partition'",
            starting_offsets=start,
        )
    )  # fmt: skip
    con.execute(copy_sink(trigger=None))
    caught_up(con)
    produce(producer, topic, [(2, b'{"user_id": 100}')])
    query = caught_up(con)
    assert rows(con, "SELECT part, user_id FROM out ORDER BY part, user_id") == [
        (0, 21),
        (0, 24),
        (0, 27),
        *((1, i) for i in range(1, 30, 3)),
        (2, 100),
    ]
    assert offsets(query.recent_progress[0])[0] == {topic: {"0": 7, "1": 0, "2": 10}}


@pytest.mark.parametrize(
    "value",
    ["nonsense", '{"t": 1}', "[1, 2]", '{"t": {"zero": 1}}', "{'t': {'0': 1}}"],
)
def test_starting_offsets_that_are_not_offsets_are_refused_at_create_source(
    broker: Broker, con: streamsql.Connection, value: str
) -> None:
    with pytest.raises(streamsql.ProgrammingError) as caught:
        con.execute(kafka_source(broker, "t", starting_offsets=value.replace("'", "''")))
    assert str(caught.value) == (
        "Source ev: starting_offsets must be earliest, latest or JSON like "
        '{"topic": {"0": 23, "1": -2}} (-2 earliest, -1 latest)'
    )
    assert rows(con, "SHOW SOURCES") == []


def test_starting_offsets_must_name_every_partition(
    broker: Broker, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(3)
    con.execute(kafka_source(broker, topic, starting_offsets=json.dumps({topic: {"1": 0}})))
    with pytest.raises(streamsql.ProgrammingError) as caught:
        con.execute(copy_sink())
    assert str(caught.value) == (
        f"Source ev: starting_offsets must give every partition; missing {topic}-0, {topic}-2"
    )
    assert [r[0] for r in rows(con, "SHOW SINKS")] == []


def test_starting_offsets_naming_a_partition_the_topic_lacks_is_refused(
    broker: Broker, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(1)
    con.execute(kafka_source(broker, topic, starting_offsets=json.dumps({topic: {"0": 0, "5": 0}})))
    with pytest.raises(streamsql.ProgrammingError, match=f"{topic}-5"):
        con.execute(copy_sink())


def test_starting_offsets_with_a_non_integer_offset_are_refused_at_create_source(
    broker: Broker, con: streamsql.Connection
) -> None:
    with pytest.raises(streamsql.ProgrammingError, match="starting_offsets"):
        con.execute(kafka_source(broker, "t", starting_offsets='{"t": {"0": "x"}}'))


# -- max_offsets_per_trigger -------------------------------------------------------------------


def spark_rate_limit(limit: int, begin: dict[int, int], until: dict[int, int]) -> dict[int, int]:
    """KafkaMicroBatchStream.rateLimit, arithmetic included: prorate = limit * (size / total)."""
    sizes = {p: until[p] - begin[p] for p in until if until[p] - begin[p] > 0}
    total = float(sum(sizes.values()))
    if total < 1:
        return dict(until)
    limited = {}
    for p, end in until.items():
        if p not in sizes:
            limited[p] = end
            continue
        prorate = limit * (sizes[p] / total)
        step = math.ceil(prorate) if prorate < 1 else math.floor(prorate)
        limited[p] = min(end, begin[p] + step)
    return limited


def spark_batches(limit: int, begin: dict[int, int], until: dict[int, int]) -> list[dict]:
    batches = []
    while begin != until:
        end = spark_rate_limit(limit, begin, until)
        batches.append(end)
        begin = end
    return batches


def test_max_offsets_per_trigger_advances_every_partition_in_proportion_to_its_lag(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(4)
    counts = {0: 37, 1: 12, 2: 1, 3: 0}
    produce(
        producer,
        topic,
        [(p, b'{"user_id": %d}' % (p * 1000 + i)) for p, n in counts.items() for i in range(n)],
    )
    con.execute(
        kafka_source(
            broker, topic, "user_id BIGINT, part INT METADATA FROM 'partition', "
            "off BIGINT METADATA FROM 'offset'", max_offsets_per_trigger=10,
        )
    )  # fmt: skip
    query = run_to_end(con, copy_sink())
    expected = spark_batches(10, dict.fromkeys(counts, 0), counts)
    assert len(expected) == 6
    ends = [offsets(p)[1][topic] for p in query.recent_progress]
    assert ends == [{str(p): o for p, o in end.items()} for end in expected]
    starts = [offsets(p)[0][topic] for p in query.recent_progress]
    assert starts[1:] == ends[:-1]
    sizes = [p.num_input_rows for p in query.recent_progress]
    assert all(size <= 10 for size in sizes)
    assert sizes == [
        sum(end[p] - previous[p] for p in counts)
        for previous, end in zip([dict.fromkeys(counts, 0), *expected], expected, strict=False)
    ]
    # every record, once
    assert sorted(rows(con, "SELECT part, off, user_id FROM out")) == [
        (p, i, p * 1000 + i) for p, n in counts.items() for i in range(n)
    ]
    lags = [p.sources[0]["lag_by_partition"] for p in query.recent_progress]
    assert lags == [{f"{topic}-{p}": counts[p] - end[p] for p in counts} for end in expected]


def test_max_offsets_per_trigger_shares_round_as_in_spark(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(2)
    counts = {0: 45, 1: 21}
    produce(producer, topic, [(p, b'{"user_id": 1}') for p, n in counts.items() for _ in range(n)])
    con.execute(kafka_source(broker, topic, "user_id BIGINT", max_offsets_per_trigger=22))
    query = run_to_end(con, copy_sink())
    expected = spark_batches(22, dict.fromkeys(counts, 0), counts)
    assert expected[0] == {0: 14, 1: 7}
    assert [offsets(p)[1][topic] for p in query.recent_progress] == [
        {str(p): o for p, o in end.items()} for end in expected
    ]


# -- continuous queries, topic lists and patterns ----------------------------------------------


def test_a_running_query_reads_records_as_they_are_produced(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(3)
    con.execute(kafka_source(broker, topic, "user_id BIGINT, off BIGINT METADATA FROM 'offset'"))
    con.execute(
        "CREATE SINK out WITH (connector = 'duckdb') AS "
        "SELECT user_id % 3 AS g, count(*) AS n, sum(user_id) AS s FROM ev GROUP BY 1 EMIT CHANGES"
    )
    query = caught_up(con)
    assert list(query.recent_progress) == []  # nothing there: no batch
    produced = []
    for round_ in range(4):
        values = [round_ * 100 + i for i in range(7)]
        produced += values
        produce(producer, topic, [(v % 3, b'{"user_id": %d}' % v) for v in values])
        caught_up(con)
        assert rows(con, "SELECT g, n, s FROM out ORDER BY g") == [
            (g, sum(1 for v in produced if v % 3 == g), sum(v for v in produced if v % 3 == g))
            for g in range(3)
            if any(v % 3 == g for v in produced)
        ]
    assert query.is_active
    assert sum(p.num_input_rows for p in query.recent_progress) == 28
    assert query.status["message"] == "waiting for data"


def test_two_queries_over_one_source_each_read_every_record(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(2)
    con.execute(kafka_source(broker, topic, "user_id BIGINT"))
    con.execute(copy_sink(name="a", trigger=None))
    con.execute(
        "CREATE SINK b WITH (connector = 'duckdb') AS "
        "SELECT count(*) AS n, sum(user_id) AS s FROM ev EMIT SNAPSHOT"
    )
    for name in ("a", "b"):
        caught_up(con, name)
    produce(producer, topic, [(i % 2, b'{"user_id": %d}' % i) for i in range(10)])
    for name in ("a", "b"):
        caught_up(con, name)
    produce(producer, topic, [(1, b'{"user_id": 100}')])
    for name in ("a", "b"):
        caught_up(con, name)
    assert rows(con, "SELECT user_id FROM a ORDER BY 1") == [(i,) for i in [*range(10), 100]]
    assert rows(con, "SELECT n, s FROM b") == [(11, 145)]
    assert offsets(con.query("a").last_progress) == offsets(con.query("b").last_progress)


def test_a_topic_list_reads_each_topic(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    first, second = broker.create_topic(2), broker.create_topic(1)
    produce(producer, first, [(i % 2, b'{"user_id": %d}' % i) for i in range(4)])
    produce(producer, second, [(0, b'{"user_id": 10}')])
    con.execute(
        kafka_source(broker, f"{first}, {second}", "user_id BIGINT, topic VARCHAR METADATA")
    )
    query = run_to_end(con, copy_sink())
    assert sorted(rows(con, "SELECT topic, user_id FROM out")) == sorted(
        [(first, i) for i in range(4)] + [(second, 10)]
    )
    assert offsets(query.last_progress)[1] == {first: {"0": 2, "1": 2}, second: {"0": 1}}


def test_a_topic_pattern_reads_every_matching_topic_and_new_ones_from_their_start(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    prefix = f"pat{uuid.uuid4().hex[:8]}"
    a, b = broker.create_topic(2, f"{prefix}.a"), broker.create_topic(1, f"{prefix}.b")
    # matched in part only: a pattern matches whole names
    other = broker.create_topic(1, f"x{prefix}.c")
    produce(producer, a, [(0, b'{"user_id": 1}'), (1, b'{"user_id": 2}')])
    produce(producer, b, [(0, b'{"user_id": 3}')])
    produce(producer, other, [(0, b'{"user_id": 99}')])
    con.execute(
        kafka_source(
            broker, None,
            "user_id BIGINT, topic VARCHAR METADATA, off BIGINT METADATA FROM 'offset'",
            topic_pattern=f"{prefix}\\.[a-z]", starting_offsets="latest",
        )
    )  # fmt: skip
    con.execute(copy_sink(trigger=None))
    query = caught_up(con)
    assert rows(con, "SELECT count(*) FROM out") == [(0,)]
    produce(producer, a, [(1, b'{"user_id": 4}')])
    caught_up(con)
    # a topic created while the query runs: its records from offset 0, although the query
    # started at 'latest' (new partitions are read from their start, as in Spark)
    c = broker.create_topic(2, f"{prefix}.c")
    produce(producer, c, [(0, b'{"user_id": 5}'), (1, b'{"user_id": 6}'), (1, b'{"user_id": 7}')])
    caught_up(con)
    assert sorted(rows(con, "SELECT topic, off, user_id FROM out")) == [
        (a, 1, 4),
        (c, 0, 5),
        (c, 0, 6),
        (c, 1, 7),
    ]
    assert offsets(query.last_progress)[1] == {
        a: {"0": 1, "1": 2},
        b: {"0": 1},
        c: {"0": 1, "1": 2},
    }


# -- lag, SHOW / DESCRIBE, status ---------------------------------------------------------------


def test_lag_per_partition_while_limited_in_progress_describe_and_status(
    broker: Broker,
    producer: KafkaProducer,
    db_path: str,
) -> None:
    topic = broker.create_topic(2)
    produce(producer, topic, [(0, b'{"user_id": 0}')] * 30 + [(1, b'{"user_id": 1}')] * 10)
    with streamsql.connect(db_path) as con:
        con.execute(kafka_source(broker, topic, "user_id BIGINT", max_offsets_per_trigger=8))
        # One limited batch, then the next trigger is an hour away (trigger once would read
        # everything: it ignores max_offsets_per_trigger, as Spark's Trigger.Once does).
        con.execute(copy_sink(trigger="1 hour"))
        query = con.query("out")
        deadline = time.monotonic() + 30
        while not query.recent_progress and time.monotonic() < deadline:
            time.sleep(0.02)
        query.stop()
        (progress,) = query.recent_progress
        # shares of 8: 30/40 -> 6, 10/40 -> 2
        assert offsets(progress) == ({topic: {"0": 0, "1": 0}}, {topic: {"0": 6, "1": 2}})
        source = progress.sources[0]
        assert source["lag_by_partition"] == {f"{topic}-0": 24, f"{topic}-1": 8}
        assert source["lag"] == 32
        described = dict(rows(con, "DESCRIBE QUERY out"))
        (shown,) = json.loads(described["sources"])
        assert shown["lag"] == 32
        assert shown["lag_by_partition"] == {f"{topic}-0": 24, f"{topic}-1": 8}
        assert shown["end_offset"] == {topic: {"0": 6, "1": 2}}
        assert described["num_input_rows"] == "8"
        assert described["status"] == "stopped"
        (show,) = rows(con, "SHOW QUERIES")
        assert show[:4] == ("out", "stopped", "3600 seconds", 0)
        # another process (`streamsql status`) reads what this one published
        script = (
            "import json; from streamsql.status import database_status; "
            f"print(json.dumps(database_status({db_path!r})))"
        )
        found = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        origin, (live,) = json.loads(found.stdout)
        assert origin.startswith(f"live, published by process {os.getpid()} ")
        assert (live["running"], live["last_batch"]) == (False, 0)
        assert live["committed_offsets"] == {topic: {"0": 6, "1": 2}}
        assert live["lag"] == {f"{topic}-0": 24, f"{topic}-1": 8}
    produce(producer, topic, [(1, b'{"user_id": 1}')] * 5)
    origin, (sink,) = database_status(db_path)
    assert origin == "from the checkpoint: no process has it open"
    assert sink["sink"] == "out"
    assert sink["last_batch"] == 0
    assert sink["committed_offsets"] == {topic: {"0": 6, "1": 2}}
    assert sink["lag"] == {f"{topic}-0": 24, f"{topic}-1": 13}  # asked of the broker now
    assert sink["dead_letters"] == 0


# -- checkpoint and restarts -------------------------------------------------------------------


def test_offsets_are_checkpointed_in_spark_form_and_a_restart_goes_on_without_loss(
    broker: Broker, admin: KafkaAdminClient, producer: KafkaProducer, db_path: str
) -> None:
    topic = broker.create_topic(4)
    ids = {topic: topic_id(admin, topic)}  # logged beside each offset
    values = iter(range(1_000))
    high = dict.fromkeys("0123", 0)  # each partition's end offset, as produced

    def produce_some(count: int) -> dict[str, dict[str, int]]:
        produce(producer, topic, [(i % 4, b'{"user_id": %d}' % next(values)) for i in range(count)])
        for i in range(count):
            high[str(i % 4)] += 1
        return {topic: dict(high)}

    def logged_offsets(con: streamsql.Connection) -> list[tuple[int, Any, Any]]:
        logged = rows(
            con,
            "SELECT batch_id, start_offset, end_offset FROM _streamsql.offsets "
            "WHERE query = 'out' AND batch_id >= 0 ORDER BY batch_id",
        )
        return [(b, spark_form(start, ids), spark_form(end, ids)) for b, start, end in logged]

    def chained(batches: list[tuple[int, Any, Any]]) -> bool:
        return all(
            (b, start) == (previous_b + 1, previous_end)
            for (previous_b, _, previous_end), (b, start, _) in itertools.pairwise(batches)
        )

    before = produce_some(20)
    with streamsql.connect(db_path) as con:
        con.execute(
            kafka_source(
                broker, topic, "user_id BIGINT, part INT METADATA FROM 'partition', "
                "off BIGINT METADATA FROM 'offset'",
            )
        )  # fmt: skip
        con.execute(copy_sink(trigger=None))
        caught_up(con)
        running = produce_some(6)
        caught_up(con)
        first_id = con.query("out").id
        first_run = logged_offsets(con)
    # Spark's offset JSON, {"topic": {"partition": next offset}}, for every batch
    assert first_run[0] == (0, {topic: {"0": 0, "1": 0, "2": 0, "3": 0}}, before)
    assert before == {topic: {"0": 5, "1": 5, "2": 5, "3": 5}}
    assert first_run[-1][2] == running == {topic: {"0": 7, "1": 7, "2": 6, "3": 6}}
    assert chained(first_run)
    while_closed = produce_some(10)
    with streamsql.connect(db_path) as con:
        query = caught_up(con)
        assert query.id == first_id
        resumed = query.recent_progress[0]
        assert (resumed.batch_id, offsets(resumed)) == (len(first_run), (running, while_closed))
        last = produce_some(3)
        caught_up(con)
        assert offsets(query.last_progress)[1] == last
        assert rows(con, "SELECT user_id FROM out ORDER BY 1") == [(i,) for i in range(39)]
        assert rows(con, "SELECT count(DISTINCT (part, off)) FROM out") == [(39,)]
        everything = logged_offsets(con)
        assert everything[: len(first_run)] == first_run
        assert chained(everything)
        assert everything[-1][2] == last == {topic: {"0": 11, "1": 11, "2": 9, "3": 8}}


DELIVERED: list[tuple[int, list[int]]] = []
FAIL_AT: set[int] = set()


def flaky_delivery(batch_id: int, batch: pa.Table) -> None:
    """A callback sink function, named as 'module:function' in CREATE SINK."""
    DELIVERED.append((batch_id, sorted(batch.column("user_id").to_pylist())))
    if batch_id in FAIL_AT:
        raise ConnectionError(f"could not deliver batch {batch_id}")


FLAKY_SINK = (
    f"CREATE SINK out WITH (connector = 'callback', callback = '{__name__}:flaky_delivery') "
    "AS SELECT user_id FROM ev"
)


def start_flaky(con: streamsql.Connection, source_sql: str) -> None:
    """Source `ev` and sink `out` through flaky_delivery, caught up; batch 1 will fail."""
    DELIVERED.clear()
    FAIL_AT.clear()
    con.execute(source_sql)
    con.execute(FLAKY_SINK)
    caught_up(con)
    FAIL_AT.add(1)


def test_a_failed_batch_is_replayed_over_exactly_its_logged_offsets(
    broker: Broker, admin: KafkaAdminClient, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(2)
    produce(producer, topic, [(i % 2, b'{"user_id": %d}' % i) for i in range(4)])
    start_flaky(con, kafka_source(broker, topic, "user_id BIGINT"))
    # one record batch, appended at once: the running query sees all of it or none
    lingering = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=1_000)
    try:
        produce(lingering, topic, [(0, b'{"user_id": %d}' % i) for i in range(4, 7)])
    finally:
        lingering.close()
    with pytest.raises(streamsql.StreamingQueryError, match="could not deliver batch 1"):
        caught_up(con)
    logged = rows(
        con,
        "SELECT end_offset FROM _streamsql.offsets WHERE query = 'out' AND batch_id >= 0 "
        "ORDER BY batch_id",
    )
    assert [spark_form(end, {topic: topic_id(admin, topic)}) for (end,) in logged] == [
        {topic: {"0": 2, "1": 2}},
        {topic: {"0": 5, "1": 2}},
    ]
    # more records arrive while the query is down; then the sink is fixed and submitted again
    produce(producer, topic, [(i % 2, b'{"user_id": %d}' % i) for i in range(7, 12)])
    FAIL_AT.clear()
    con.execute(FLAKY_SINK)
    query = caught_up(con)
    replayed, following = query.recent_progress
    assert (replayed.batch_id, offsets(replayed)) == (
        1,
        ({topic: {"0": 2, "1": 2}}, {topic: {"0": 5, "1": 2}}),
    )
    assert (following.batch_id, offsets(following)[1]) == (2, {topic: {"0": 7, "1": 5}})
    assert DELIVERED == [(0, [0, 1, 2, 3]), (1, [4, 5, 6]), (1, [4, 5, 6]), (2, [7, 8, 9, 10, 11])]


@pytest.mark.parametrize("fail_on_data_loss", ["true", "false"])
def test_a_topic_recreated_under_a_logged_batch_is_data_loss_when_it_is_replayed(
    broker: Broker,
    admin: KafkaAdminClient,
    producer: KafkaProducer,
    con: streamsql.Connection,
    fail_on_data_loss: str,
) -> None:
    topic = broker.create_topic(1)
    produce(producer, topic, [(0, b'{"user_id": %d}' % i) for i in range(2)])
    start_flaky(
        con, kafka_source(broker, topic, "user_id BIGINT", fail_on_data_loss=fail_on_data_loss)
    )
    produce(producer, topic, [(0, b'{"user_id": %d}' % i) for i in range(2, 4)])
    with pytest.raises(streamsql.StreamingQueryError, match="could not deliver batch 1"):
        caught_up(con)  # batch 1, offsets 2 to 4, is logged and not committed
    old_id = topic_id(admin, topic)
    admin.delete_topics([topic])
    broker.create_topic(1, topic)
    produce(producer, topic, [(0, b'{"user_id": %d}' % i) for i in range(100, 106)])
    FAIL_AT.clear()
    con.execute(FLAKY_SINK)  # replays batch 1: offsets 2 to 4 of a topic that is gone
    query = con.query("out")
    if fail_on_data_loss == "true":
        with pytest.raises(streamsql.StreamingQueryError) as caught:
            query.await_termination(30)
        assert (
            f"topic {topic} was deleted and created again (its id is {topic_id(admin, topic)}) "
            f"after the batch planned to read {topic}-0 up to 4 from the topic with id {old_id}"
        ) in str(caught.value)
        assert DELIVERED == [(0, [0, 1]), (1, [2, 3])]  # the failed attempt only
        return
    query.process_all_available(timeout=30)
    replayed, following = query.recent_progress
    assert replayed.batch_id == 1 and replayed.num_input_rows == 0
    assert replayed.sources[0]["warnings"][0].startswith(f"data loss: topic {topic} was")
    assert following.sources[0]["warnings"][0].startswith(f"data loss: topic {topic} was")
    new_topic = list(range(100, 106))  # read from its start in the batch after
    assert list(DELIVERED) == [(0, [0, 1]), (1, [2, 3]), (1, []), (2, new_topic)]


@pytest.mark.parametrize("fail_on_data_loss", ["true", "false"])
def test_a_logged_batch_beyond_the_end_of_its_partition_is_data_loss_when_it_is_replayed(
    broker: Broker,
    admin: KafkaAdminClient,
    producer: KafkaProducer,
    db_path: str,
    fail_on_data_loss: str,
) -> None:
    """No topic id to tell by (an offset log of an older version): the replayed range 2 to 3
    lies past the end of the recreated partition."""
    topic = broker.create_topic(1)
    produce(producer, topic, [(0, b'{"user_id": %d}' % i) for i in range(2)])
    with streamsql.connect(db_path) as con:
        source = kafka_source(broker, topic, "user_id BIGINT", fail_on_data_loss=fail_on_data_loss)
        start_flaky(con, source)
        produce(producer, topic, [(0, b'{"user_id": %d}' % i) for i in range(2, 4)])
        with pytest.raises(streamsql.StreamingQueryError, match="could not deliver batch 1"):
            caught_up(con)
    strip_topic_ids(db_path)
    admin.delete_topics([topic])
    broker.create_topic(1, topic)
    produce(producer, topic, [(0, b'{"user_id": 100}')])
    FAIL_AT.clear()
    with streamsql.connect(db_path) as con:
        con.execute(FLAKY_SINK)  # replays batch 1
        query = con.query("out")
        loss = (
            f"{topic}-0 ends at offset 1, before the offsets 2 to 3 the batch planned to read "
            "(was the topic recreated?)"
        )
        if fail_on_data_loss == "true":
            with pytest.raises(streamsql.StreamingQueryError) as caught:
                query.await_termination(30)
            assert f"Source ev: {loss}" in str(caught.value)
            return
        query.process_all_available(timeout=30)
        replayed, following = query.recent_progress
        assert (replayed.batch_id, replayed.num_input_rows) == (1, 0)
        assert replayed.sources[0]["warnings"] == [f"data loss: {loss}"]
        # then Spark's rule, with no id to tell by: reading goes on from the partition's end
        assert following.sources[0]["warnings"] == [
            f"data loss: {topic}-0 ends at offset 1, before the checkpoint's 4 "
            "(was the topic recreated?)"
        ]
    assert DELIVERED[-2:] == [(1, []), (2, [])]


def test_group_id_gets_a_copy_of_the_committed_offsets(
    broker: Broker, admin: KafkaAdminClient, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(2)
    group = f"lag-{uuid.uuid4().hex[:8]}"
    produce(producer, topic, [(0, b'{"user_id": 1}')] * 3 + [(1, b'{"user_id": 2}')] * 2)
    con.execute(kafka_source(broker, topic, "user_id BIGINT", group_id=group))
    con.execute(copy_sink(trigger=None))
    caught_up(con)

    def committed() -> dict[int, int]:
        found = admin.list_group_offsets({group: None})[group]
        return {tp.partition: meta.offset for tp, meta in found.items() if tp.topic == topic}

    assert committed() == {0: 3, 1: 2}
    produce(producer, topic, [(1, b'{"user_id": 2}')] * 4)
    caught_up(con)
    assert committed() == {0: 3, 1: 6}
    assert rows(con, "SELECT count(*) FROM out") == [(9,)]


# -- broker trouble ------------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["closed port", "plaintext listener, SSL client"])
def test_an_unreachable_broker_fails_create_sink_quickly_naming_the_address(
    broker: Broker, con: streamsql.Connection, listener: str
) -> None:
    if listener == "closed port":
        address, security = f"127.0.0.1:{free_port()}", {}
    else:  # the TLS handshake is never answered: kafka-python alone would wait forever
        address, security = broker.bootstrap_servers, {"kafka.security_protocol": "SSL"}
    con.execute(kafka_source(address, "t", connect_timeout="1 second", **security))
    began = time.monotonic()
    with pytest.raises(streamsql.OperationalError) as caught:
        con.execute(copy_sink(trigger=None))
    assert time.monotonic() - began < 5
    assert f"cannot reach Kafka at {address} within 1 s" in str(caught.value)
    assert rows(con, "SHOW SINKS") == []
    assert con.engine.queries == {}


def test_a_topic_that_does_not_exist_is_a_clear_error_and_is_not_created(
    broker: Broker, admin: KafkaAdminClient, con: streamsql.Connection
) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    con.execute(kafka_source(broker, missing))
    with pytest.raises(streamsql.DataError) as caught:
        con.execute(copy_sink())
    assert str(caught.value) == f"Source ev: topic '{missing}' does not exist"
    assert missing not in admin.list_topics()
    assert rows(con, "SHOW SINKS") == []


def test_a_paused_broker_makes_the_source_unavailable_and_the_query_goes_on_after(
    con: streamsql.Connection,
) -> None:
    with Broker() as own:
        admin = KafkaAdminClient(bootstrap_servers=own.bootstrap_servers)
        writer = KafkaProducer(bootstrap_servers=own.bootstrap_servers)
        try:
            topic = own.create_topic(2)
            produce(writer, topic, [(i % 2, b'{"user_id": %d}' % i) for i in range(4)])
            con.execute(kafka_source(own, topic, "user_id BIGINT", request_timeout="1 second"))
            con.execute(copy_sink(trigger=None))
            query = caught_up(con)
            own.pause()
            try:
                wait_until(lambda: not query.status["source_available"], 10, "unavailable")
                assert query.is_active
                assert query.status["message"].startswith("source ev unavailable: Kafka at ")
            finally:
                own.resume()
            produce(writer, topic, [(i % 2, b'{"user_id": %d}' % i) for i in range(4, 8)])
            query.process_all_available(timeout=30)
            assert query.status["source_available"] is True
            assert rows(con, "SELECT user_id FROM out ORDER BY 1") == [(i,) for i in range(8)]
        finally:
            writer.close()
            admin.close()
            con.close()


def test_a_query_resumed_while_the_broker_is_down_waits_for_it(db_path: str) -> None:
    with Broker() as own:
        admin = KafkaAdminClient(bootstrap_servers=own.bootstrap_servers)
        writer = KafkaProducer(bootstrap_servers=own.bootstrap_servers)
        try:
            topic = own.create_topic(1)
            produce(writer, topic, [(0, b'{"user_id": 1}')])
            source = kafka_source(
                own, topic, "user_id BIGINT", connect_timeout="1 second", request_timeout="1 second"
            )
            with streamsql.connect(db_path) as con:
                con.execute(source)
                con.execute(copy_sink(trigger=None))
                caught_up(con)
            own.pause()
            try:
                with streamsql.connect(db_path) as con:
                    query = con.query("out")
                    wait_until(
                        lambda: not (query.status["source_available"] and query.is_active),
                        10,
                        "the source to be reported unavailable",
                    )
                    assert query.is_active, query.status["error"]
                    own.resume()
                    produce(writer, topic, [(0, b'{"user_id": 2}')])
                    query.process_all_available(timeout=30)
                    assert rows(con, "SELECT user_id FROM out ORDER BY 1") == [(1,), (2,)]
            finally:
                own.resume()
        finally:
            writer.close()
            admin.close()


# -- data loss -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fail_on_data_loss", ["true", "false"])
def test_a_deleted_topic_of_a_pattern_is_data_loss(
    broker: Broker,
    admin: KafkaAdminClient,
    producer: KafkaProducer,
    con: streamsql.Connection,
    fail_on_data_loss: str,
) -> None:
    prefix = f"loss{uuid.uuid4().hex[:8]}"
    doomed, kept = broker.create_topic(2, f"{prefix}-a"), broker.create_topic(1, f"{prefix}-b")
    produce(producer, doomed, [(0, b'{"user_id": 1}'), (1, b'{"user_id": 2}')])
    produce(producer, kept, [(0, b'{"user_id": 3}')])
    con.execute(
        kafka_source(
            broker, None, "user_id BIGINT", topic_pattern=f"{prefix}-.*",
            fail_on_data_loss=fail_on_data_loss,
        )
    )  # fmt: skip
    con.execute(copy_sink(trigger=None))
    query = caught_up(con)
    admin.delete_topics([doomed])
    produce(producer, kept, [(0, b'{"user_id": 4}')])
    if fail_on_data_loss == "true":
        with pytest.raises(streamsql.StreamingQueryError) as caught:
            query.await_termination(30)
        assert f"partitions {doomed}-0, {doomed}-1 were deleted" in str(caught.value)
        assert rows(con, "SELECT user_id FROM out ORDER BY 1") == [(1,), (2,), (3,)]
    else:
        query.process_all_available(timeout=30)
        assert query.is_active
        assert rows(con, "SELECT user_id FROM out ORDER BY 1") == [(1,), (2,), (3,), (4,)]
        assert offsets(query.last_progress)[1] == {kept: {"0": 2}}


@pytest.mark.parametrize(
    "fail_on_data_loss",
    [
        "true",
        "false",
    ],
)
def test_a_deleted_topic_of_a_topic_list_is_data_loss(
    broker: Broker,
    admin: KafkaAdminClient,
    producer: KafkaProducer,
    con: streamsql.Connection,
    fail_on_data_loss: str,
) -> None:
    doomed, kept = broker.create_topic(2), broker.create_topic(1)
    produce(producer, doomed, [(0, b'{"user_id": 1}'), (1, b'{"user_id": 2}')])
    produce(producer, kept, [(0, b'{"user_id": 3}')])
    con.execute(
        kafka_source(
            broker, f"{doomed},{kept}", "user_id BIGINT", fail_on_data_loss=fail_on_data_loss
        )
    )
    con.execute(copy_sink(trigger=None))
    query = caught_up(con)
    admin.delete_topics([doomed])
    produce(producer, kept, [(0, b'{"user_id": 4}')])
    if fail_on_data_loss == "true":
        with pytest.raises(streamsql.StreamingQueryError) as caught:
            query.await_termination(30)
        assert f"{doomed}-0" in str(caught.value)
    else:
        query.process_all_available(timeout=30)
        assert rows(con, "SELECT user_id FROM out ORDER BY 1") == [(1,), (2,), (3,), (4,)]


def strip_topic_ids(db_path: str) -> None:
    """Make the offset log one of an older version, which logged no topic ids."""
    con = duckdb.connect(db_path)
    try:
        for batch, start, end in con.execute(
            "SELECT batch_id, start_offset, end_offset FROM _streamsql.offsets"
        ).fetchall():
            offsets = [json.loads(o) if o is not None else None for o in (start, end)]
            for offset in filter(None, offsets):
                offset.pop("@topic_ids")
            con.execute(
                "UPDATE _streamsql.offsets SET start_offset = ?, end_offset = ? WHERE batch_id = ?",
                [*(json.dumps(o) if o is not None else None for o in offsets), batch],
            )
    finally:
        con.close()


@pytest.mark.parametrize("fail_on_data_loss", ["true", "false"])
@pytest.mark.parametrize("logged_ids", [True, False], ids=["topic-ids", "no-topic-ids"])
def test_a_topic_recreated_while_stopped_is_data_loss(
    broker: Broker,
    admin: KafkaAdminClient,
    producer: KafkaProducer,
    db_path: str,
    fail_on_data_loss: str,
    logged_ids: bool,
) -> None:
    topic = broker.create_topic(1)
    produce(producer, topic, [(0, b'{"user_id": %d}' % i) for i in range(3)])
    with streamsql.connect(db_path) as con:
        con.execute(
            kafka_source(broker, topic, "user_id BIGINT", fail_on_data_loss=fail_on_data_loss)
        )
        con.execute(copy_sink(trigger=None))
        caught_up(con)
    old_id = topic_id(admin, topic)
    if not logged_ids:
        strip_topic_ids(db_path)
    admin.delete_topics([topic])
    broker.create_topic(1, topic)
    new_id = topic_id(admin, topic)
    produce(producer, topic, [(0, b'{"user_id": 50}'), (0, b'{"user_id": 51}')])
    with streamsql.connect(db_path) as con:
        query = con.query("out")
        if fail_on_data_loss == "true":
            with pytest.raises(streamsql.StreamingQueryError) as caught:
                query.await_termination(30)
            expected = (
                f"Source ev: topic {topic} was deleted and created again (its id is {new_id}, "
                f"the checkpoint's is {old_id}): the committed offsets {topic}-0 at 3 are of "
                "the old topic"
                if logged_ids
                else f"Source ev: {topic}-0 ends at offset 2, before the checkpoint's 3 "
                "(was the topic recreated?)"
            )
            assert expected in str(caught.value)
            assert rows(con, "SELECT user_id FROM out ORDER BY 1") == [(0,), (1,), (2,)]
            return
        query.process_all_available(timeout=30)
        produce(producer, topic, [(0, b'{"user_id": 52}')])
        query.process_all_available(timeout=30)
        read = [p for p in query.recent_progress if p.num_input_rows]
        (warning,) = query.recent_progress[0].sources[0]["warnings"]
        if logged_ids:
            # a new topic id: none of its records were read, all of them are
            assert rows(con, "SELECT user_id FROM out ORDER BY 1") == [
                (0,), (1,), (2,), (50,), (51,), (52,)
            ]  # fmt: skip
            assert [offsets(p) for p in read] == [
                ({topic: {"0": 3}}, {topic: {"0": 2}}),
                ({topic: {"0": 2}}, {topic: {"0": 3}}),
            ]
            assert warning.startswith(f"data loss: topic {topic} was deleted and created again")
        else:
            # no id to tell by, as Spark: the range 3 -> 2 is dropped, reading goes on from
            # the new end
            assert rows(con, "SELECT user_id FROM out ORDER BY 1") == [(0,), (1,), (2,), (52,)]
            assert [offsets(p) for p in read] == [({topic: {"0": 2}}, {topic: {"0": 3}})]
            assert warning == (
                f"data loss: {topic}-0 ends at offset 2, before the checkpoint's 3 "
                "(was the topic recreated?)"
            )


@pytest.mark.parametrize("fail_on_data_loss", ["true", "false"])
def test_a_broker_replaced_by_an_empty_one_on_the_same_port_is_data_loss(
    db_path: str, fail_on_data_loss: str
) -> None:
    """The issue's case: the query committed offset 25 of both partitions of evB; the broker
    is replaced by an empty one on the same port, and a new evB gets 40 messages per
    partition, more than were read of the old one: the offsets alone cannot tell."""
    old = Broker().start()
    try:
        topic = old.create_topic(2, f"evB-{uuid.uuid4().hex[:6]}")
        sender = KafkaProducer(bootstrap_servers=old.bootstrap_servers)
        produce(sender, topic, [(i % 2, b'{"user_id": %d}' % i) for i in range(50)])
        sender.close()
        with streamsql.connect(db_path) as con:
            con.execute(
                kafka_source(old, topic, "user_id BIGINT", fail_on_data_loss=fail_on_data_loss)
            )
            con.execute(copy_sink(trigger=None))
            caught_up(con)
            assert database_status(db_path)[1][0]["committed_offsets"] == {
                topic: {"0": 25, "1": 25}
            }
    finally:
        old.stop()
    with Broker(old.port) as new:
        new.create_topic(2, topic)
        sender = KafkaProducer(bootstrap_servers=new.bootstrap_servers)
        produce(sender, topic, [(i % 2, b'{"user_id": %d}' % i) for i in range(100, 180)])
        sender.close()
        with streamsql.connect(db_path) as con:
            query = con.query("out")
            if fail_on_data_loss == "true":
                with pytest.raises(streamsql.StreamingQueryError) as caught:
                    query.await_termination(30)
                message = str(caught.value)
                assert f"topic {topic} was deleted and created again" in message
                assert f"the committed offsets {topic}-0 at 25, {topic}-1 at 25" in message
                assert rows(con, "SELECT count(*) FROM out") == [(50,)]
            else:
                query.process_all_available(timeout=30)
                assert rows(con, "SELECT user_id FROM out ORDER BY 1") == [
                    (i,) for i in [*range(50), *range(100, 180)]
                ]
                first = query.recent_progress[0]
                assert offsets(first)[1] == {topic: {"0": 40, "1": 40}}
                assert "data loss: topic" in first.sources[0]["warnings"][0]


# -- refused definitions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "options", "message"),
    [
        ("a INT", "topic = 't', colour = 'red'",
         "Source ev: unknown option 'colour' for connector 'kafka'"),
        ("a INT", "topic = 't', kafka.no_such_setting = '1'",
         "Source ev: kafka.no_such_setting is not a setting of kafka-python"),
        ("a INT", "topic = 't', kafka.bootstrap_servers = 'x:1'",
         "Source ev: kafka.bootstrap_servers cannot be set: use the bootstrap_servers option"),
        ("a INT", "topic = 't', kafka.group.id = 'g'",
         "Source ev: kafka.group.id cannot be set: use the group_id option"),
        ("a INT", "topic = 't', kafka.max_in_flight_requests_per_connection = 'many'",
         "Source ev: kafka.max_in_flight_requests_per_connection = 'many' is not an integer"),
        ("a INT", "topic = 't', format = 'xml'",
         "Source ev: format = 'xml' is not one of json, csv, raw"),
        ("a BLOB, b VARCHAR", "topic = 't', format = 'raw'",
         "Source ev: format 'raw' puts the message value in one column (BLOB or VARCHAR); "
         "2 non-METADATA columns are declared"),
        ("a INT, x VARCHAR METADATA FROM 'colour'", "topic = 't'",
         "Source ev: column x: connector 'kafka' has no metadata 'colour'; it offers key, "
         "topic, partition, offset, timestamp, timestamp_type, headers"),
        ("a INT, leader INT METADATA", "topic = 't'",
         "Source ev: column leader: connector 'kafka' has no metadata 'leader'"),
        ("a INT", "", "Source ev: the kafka connector needs either topic or topic_pattern"),
        ("a INT", "topic = 't', topic_pattern = 't.*'",
         "Source ev: the kafka connector needs either topic or topic_pattern"),
        ("a INT", "topic = 't', on_error = 'ignore'",
         "Source ev: on_error = 'ignore' is not one of dead_letter, skip, fail"),
        ("a INT", "topic = 't', fail_on_data_loss = 'maybe'",
         "Source ev: fail_on_data_loss = 'maybe' is not true or false"),
        ("a INT", "topic = 't', max_offsets_per_trigger = '0'",
         "Source ev: max_offsets_per_trigger = '0' is not an integer of at least 1"),
        ("a INT", "topic = 't', max_offsets_per_trigger = 'lots'",
         "Source ev: max_offsets_per_trigger = 'lots' is not an integer of at least 1"),
        ("a INT", "topic = 't', connect_timeout = 'soon'",
         "Source ev: connect_timeout = 'soon' is not a duration like '10 seconds'"),
        ("a INT", "topic = 't', request_timeout = '0 seconds'",
         "Source ev: request_timeout = '0 seconds' is not a duration like '10 seconds'"),
        ("a INT", "topic = 't', client = 'librdkafka'",
         "Source ev: client = 'librdkafka' is not one of kafka-python, confluent"),
    ],
)  # fmt: skip
def test_invalid_kafka_source_definitions_are_refused(
    broker: Broker, con: streamsql.Connection, columns: str, options: str, message: str
) -> None:
    extra = f", {options}" if options else ""
    with pytest.raises(streamsql.ProgrammingError) as caught:
        con.execute(
            f"CREATE SOURCE ev ({columns}) WITH (connector = 'kafka', "
            f"bootstrap_servers = '{broker.bootstrap_servers}'{extra})"
        )
    assert str(caught.value).startswith(message)
    assert rows(con, "SHOW SOURCES") == []


def test_bootstrap_servers_are_required(con: streamsql.Connection) -> None:
    with pytest.raises(streamsql.ProgrammingError) as caught:
        con.execute("CREATE SOURCE ev (a INT) WITH (connector = 'kafka', topic = 't')")
    assert str(caught.value) == "Source ev: the kafka connector needs bootstrap_servers"


def test_metadata_columns_are_refused_on_a_memory_source(con: streamsql.Connection) -> None:
    with pytest.raises(streamsql.ProgrammingError) as caught:
        con.execute(
            "CREATE SOURCE m (a INT, k VARCHAR METADATA FROM 'key') WITH (connector = 'memory')"
        )
    assert str(caught.value) == "Source m: column k: connector 'memory' has no metadata 'key'"


def test_kafka_settings_are_passed_to_the_client_typed(
    broker: Broker, producer: KafkaProducer, con: streamsql.Connection
) -> None:
    topic = broker.create_topic(1)
    produce(producer, topic, [(0, b'{"user_id": 1}')])
    con.execute(
        kafka_source(
            broker, topic, "user_id BIGINT", client="kafka-python",
            **{"kafka.client.id": "streamsql-test", "kafka.reconnect_backoff_ms": "75",
               "kafka.check_crcs": "false"},
        )
    )  # fmt: skip
    con.execute(copy_sink(trigger=None))
    query = caught_up(con)
    config = query.execution.sources["ev"].client.config
    assert (config["client_id"], config["reconnect_backoff_ms"], config["check_crcs"]) == (
        "streamsql-test",
        75,
        False,
    )
    assert rows(con, "SELECT user_id FROM out") == [(1,)]


# -- property: a windowed count over Kafka equals one batch query over the rows not late --------

WINDOW_MS = (1_000, 2_000, 5_000)
DELAY_MS = (0, 1_000, 3_000)


@dataclass(frozen=True)
class Record:
    row_id: int
    partition: int
    key: str
    v: int
    ts_ms: int


@st.composite
def produce_rounds(draw: st.DrawFn) -> tuple[int, int, int, list[list[Record]]]:
    """Rounds of records whose event time drifts forward with some lagging behind."""
    partitions = draw(st.integers(1, 3))
    size, delay = draw(st.sampled_from(WINDOW_MS)), draw(st.sampled_from(DELAY_MS))
    rounds: list[list[Record]] = []
    clock, row_id = 0, 0
    for _ in range(draw(st.integers(1, 6))):
        clock += draw(st.integers(0, 16)) * 250
        records = []
        for _ in range(draw(st.integers(0, 8))):
            lag = draw(st.integers(-2, 40)) * 250
            records.append(
                Record(
                    row_id,
                    draw(st.integers(0, partitions - 1)),
                    draw(st.sampled_from("abc")),
                    draw(st.integers(-5, 5)),
                    T0_MS + max(clock - lag, 0),
                )
            )
            row_id += 1
        rounds.append(records)
    return partitions, size, delay, rounds


def micros(value: dt.datetime) -> int:
    return (value - EPOCH) // dt.timedelta(microseconds=1)


def iso_micros(text: str) -> int:
    return micros(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None))


@settings(
    max_examples=int(os.environ.get("STREAMSQL_KAFKA_EXAMPLES", "10")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=produce_rounds())
def test_windowed_counts_over_kafka_equal_a_batch_query_over_the_rows_not_late(
    broker: Broker, producer: KafkaProducer, case: tuple
) -> None:
    partitions, size, delay, rounds = case
    topic = broker.create_topic(partitions)
    records = [r for batch in rounds for r in batch]
    closer_ms = max((r.ts_ms for r in records), default=T0_MS) + size + delay + 1_000
    closer = Record(len(records), 0, "closer", 0, closer_ms)
    con = streamsql.connect(":memory:")
    try:
        con.execute(
            kafka_source(
                broker, topic,
                "k VARCHAR, v BIGINT, ts TIMESTAMP METADATA FROM 'timestamp', "
                "part INT METADATA FROM 'partition', off BIGINT METADATA FROM 'offset', "
                f"WATERMARK FOR ts AS ts - INTERVAL '{delay} milliseconds'",
            )
        )  # fmt: skip
        con.execute(
            "CREATE SINK out WITH (connector = 'duckdb', changelog = true) AS "
            "SELECT window_start, window_end, k, count(*) AS n, sum(v) AS s FROM ev "
            f"WINDOW TUMBLING (ts, INTERVAL '{size} milliseconds') "
            "GROUP BY window_start, window_end, k EMIT FINAL"
        )
        query = caught_up(con)
        where: dict[tuple[int, int], Record] = {}
        round_ends = []  # how many progress records there were after each round
        for batch in [*rounds, [closer]]:
            sent = produce(
                producer,
                topic,
                [
                    {
                        "partition": r.partition,
                        "value": json.dumps({"k": r.key, "v": r.v}).encode(),
                        "timestamp_ms": r.ts_ms,
                    }
                    for r in batch
                ],
            )
            where.update({(s.partition, s.offset): r for s, r in zip(sent, batch, strict=True)})
            query.process_all_available(timeout=30)
            round_ends.append(len(query.recent_progress))
        progress = list(query.recent_progress)
        assert progress[0].batch_id == 0 and len(progress) < 100
        output = rows(con, "SELECT _batch_id, window_start, window_end, k, n, s FROM out")
    finally:
        con.close()

    # The micro-batches the engine ran, as the model's input: each data batch holds the
    # records in its offset ranges (a round may span batches if a poll saw part of it).
    data_batches: list[list[model.Event]] = []
    stops = set()
    for number, p in enumerate(progress):
        if p.no_data_batch:
            assert number and not progress[number - 1].no_data_batch
            stops.add(len(data_batches) - 1)
            continue
        start, end = offsets(p)
        batch = [
            where[(int(part), o)]
            for part, e in end[topic].items()
            for o in range(start.get(topic, {}).get(part, 0), e)
        ]
        assert len(batch) == p.num_input_rows
        data_batches.append([model.Event(r.row_id, r.ts_ms * 1_000, (r.key,)) for r in batch])
        if number + 1 in round_ends:
            stops.add(len(data_batches) - 1)
    outcome = model.run(data_batches, model.Tumbling(size * 1_000), delay * 1_000, "final", stops)
    assert [(p.batch_id, p.no_data_batch, p.num_input_rows, p.num_late_rows) for p in progress] == [
        (b.batch_id, b.no_data, b.num_input_rows, b.num_late_rows) for b in outcome.batches
    ]
    assert [(iso_micros(p.watermark), iso_micros(p.late_threshold)) for p in progress] == [
        (b.watermark, b.late_threshold) for b in outcome.batches
    ]

    # Every window the closer's watermark closed, valued by one DuckDB query over the
    # accepted rows, emitted once, in the batch the model says.
    by_id = {r.row_id: r for r in [*records, closer]}
    accepted = [by_id[i] for i in outcome.accepted]
    db = duckdb.connect()
    try:
        db.execute("CREATE TABLE accepted (k VARCHAR, v BIGINT, ts_ms BIGINT)")
        for r in accepted:
            db.execute("INSERT INTO accepted VALUES (?, ?, ?)", [r.key, r.v, r.ts_ms])
        expected_values = db.execute(
            "SELECT make_timestamp(ws * 1000), make_timestamp((ws + $size) * 1000), k, "
            "count(*), sum(v) FROM (SELECT *, ts_ms // $size * $size AS ws FROM accepted) "
            "GROUP BY ws, k HAVING (ws + $size) * 1000 <= $watermark ORDER BY ALL",
            {"size": size, "watermark": outcome.batches[-1].watermark},
        ).fetchall()
    finally:
        db.close()
    assert sorted(row[1:] for row in output) == expected_values
    emitted_in = {(start, key[0]): batch_id for batch_id, (start, _, key), _ in outcome.emitted}
    assert sorted((micros(row[1]), row[3], row[0]) for row in output) == sorted(
        (start, key, batch_id) for (start, key), batch_id in emitted_in.items()
    )
    late = sum(1 for r in records if r.row_id not in outcome.accepted)
    assert sum(p.num_late_rows for p in progress) == late
    if os.environ.get("KAFKA_PROPERTY_STATS"):
        print(
            "STATS",
            len(records),
            late,
            len(output),
            sum(p.no_data_batch for p in progress),
            len(progress),
            len(rounds) + 1,
        )
