"""The workload of the Kafka acceptance tests, and what a query must make of it.

- `generate`: user events as JSON messages, with event times out of order (up to
  `jitter_minutes` behind the stream's progress), a share that is well behind the 10-minute
  watermark (`late`: late under nearly any split into micro-batches), a share hours behind
  (`far_late`: late under every split a small `max_offsets_per_trigger` allows) and a share
  of malformed messages (bad JSON, a string or a fraction for a BIGINT, an empty value, a
  tombstone), spread unevenly over the partitions.
- `produce`: the messages to a topic, fast (large producer batches, no wait per message);
  each message learns its partition offset from the broker's acknowledgement.
- `expect`: what the seed's 5-minute tumbling `EMIT FINAL` count must hold, by Spark's rules:
  the engine's own batch boundaries (the per-partition offset ranges in
  `_streamsql.offsets`) replayed through the reference model (tests/reference_model.py),
  which says which rows are late, which windows close in which batch and which stay open;
  the counts come from one batch DuckDB query over the accepted rows.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import reference_model as model
from kafka import KafkaProducer

START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z, epoch milliseconds
MINUTE_MS = 60_000
WINDOW_US = 5 * 60 * 1_000_000  # the tumbling window of WINDOWS_SQL
DELAY_US = 10 * 60 * 1_000_000  # the source's watermark delay
EVENT_TYPES = ("click", "view", "purchase", "signup")
MALFORMED = ("bad_json", "string_bigint", "fractional", "empty", "tombstone")
VALID = ("event", "late", "far_late")

SOURCE_SQL = """CREATE SOURCE events (
    user_id    BIGINT,
    event_type VARCHAR,
    timestamp  BIGINT,
    event_time AS to_timestamp(timestamp / 1000),
    WATERMARK FOR event_time AS event_time - INTERVAL '10 minutes'
) WITH (connector = 'kafka', bootstrap_servers = '{bootstrap}', topic = '{topic}',
        starting_offsets = 'earliest', format = 'json'{options})"""

WINDOWS_SELECT = """SELECT window_start, window_end, event_type, count(*) AS n
FROM events
WINDOW TUMBLING (event_time, INTERVAL '5 minutes')
GROUP BY window_start, window_end, event_type
EMIT FINAL"""

TOTALS_SELECT = """SELECT event_type, count(*) AS n, sum(user_id) AS user_sum,
       min(timestamp) AS first_ms, max(timestamp) AS last_ms
FROM events
GROUP BY event_type
EMIT CHANGES"""


def source_sql(bootstrap: str, topic: str, **options: Any) -> str:
    extra = "".join(f", {name} = '{value}'" for name, value in options.items())
    return SOURCE_SQL.format(bootstrap=bootstrap, topic=topic, options=extra)


def sink_sql(name: str, select: str, **options: Any) -> str:
    given = ", ".join(
        f"{key} = '{value}'" for key, value in {"connector": "duckdb", **options}.items()
    )
    return f"CREATE SINK {name} WITH ({given}) AS\n{select}"


# -- the messages -------------------------------------------------------------------------------


@dataclass
class Message:
    row_id: int
    kind: str  # one of VALID or MALFORMED
    partition: int
    key: bytes | None
    value: bytes | None
    user_id: int | None = None  # the event, for VALID kinds
    event_type: str | None = None
    timestamp: int | None = None  # epoch milliseconds
    broken: str | None = None  # the column given a wrong type, for those malformed kinds
    offset: int = -1  # filled in by produce()

    @property
    def valid(self) -> bool:
        return self.kind in VALID


def generate(
    count: int,
    *,
    seed: int,
    partitions: int = 4,
    span_hours: float = 12,
    jitter_minutes: float = 15,
    late_share: float = 0.01,
    far_late_share: float = 0.002,
    bad_share: float = 0.0,
    first_row: int = 0,
    start_ms: int = START_MS,
) -> list[Message]:
    """`count` messages whose event times advance over `span_hours` from `start_ms`.

    Partition i gets a weight of partitions - i, so partitions lag unevenly and
    `max_offsets_per_trigger` splits a trigger among them in unequal shares. Far-late
    events are only drawn in the second half, where hours behind is still after the start.
    Malformed kinds take turns, so every kind is there once bad_share * count >= 5.
    """
    rng = random.Random(seed)
    weights = [partitions - i for i in range(partitions)]
    step = span_hours * 3_600_000 / count
    messages = []
    bad = 0
    for i in range(count):
        base = start_ms + round(i * step)
        partition = rng.choices(range(partitions), weights)[0]
        user_id = rng.randrange(1, 5000)
        event_type = rng.choice(EVENT_TYPES)
        key = str(user_id).encode()
        draw = rng.random()
        if draw < bad_share:
            kind = MALFORMED[bad % len(MALFORMED)]
            bad += 1
            value, broken = _malformed(kind, rng, base)
            messages.append(Message(first_row + i, kind, partition, key, value, broken=broken))
            continue
        draw -= bad_share
        if draw < far_late_share and i >= count // 2:
            kind, behind = "far_late", rng.randrange(180 * MINUTE_MS, 300 * MINUTE_MS)
        elif draw < far_late_share + late_share:
            kind, behind = "late", rng.randrange(25 * MINUTE_MS, 90 * MINUTE_MS)
        else:
            kind, behind = "event", rng.randrange(round(jitter_minutes * MINUTE_MS) + 1)
        timestamp = base - behind
        value = json.dumps(
            {"user_id": user_id, "event_type": event_type, "timestamp": timestamp}
        ).encode()
        messages.append(
            Message(first_row + i, kind, partition, key, value, user_id, event_type, timestamp)
        )
    return messages


def _malformed(kind: str, rng: random.Random, base: int) -> tuple[bytes | None, str | None]:
    """A malformed value of `kind`, and the column it gives a wrong type, if any."""
    good = {"user_id": rng.randrange(1, 5000), "event_type": "click", "timestamp": base}
    if kind == "bad_json":  # any strict prefix of a JSON object is not JSON
        text = json.dumps(good)
        return text[: rng.randrange(1, len(text) - 1)].encode(), None
    if kind == "string_bigint":
        column = rng.choice(("user_id", "timestamp"))
        return json.dumps({**good, column: f"x{rng.randrange(100)}"}).encode(), column
    if kind == "fractional":
        column = rng.choice(("user_id", "timestamp"))
        return json.dumps({**good, column: good[column] + 0.5}).encode(), column
    if kind == "empty":
        return b"", None
    assert kind == "tombstone"  # a key and no value
    return None, None


def produce(bootstrap: str, topic: str, messages: Sequence[Message]) -> None:
    """Send every message to its partition without waiting for each, then wait for all and
    note each message's offset."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        batch_size=1 << 20,
        max_request_size=16 << 20,
    )
    try:
        sent = [
            (m, producer.send(topic, key=m.key, value=m.value, partition=m.partition))
            for m in messages
        ]
        producer.flush(timeout=120)
        for message, future in sent:
            metadata = future.get(timeout=30)
            assert metadata.partition == message.partition
            message.offset = metadata.offset
    finally:
        producer.close()


# -- what the engine logged ---------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedBatch:
    batch_id: int
    start: dict[int, int]  # partition -> first offset of the batch
    end: dict[int, int]  # partition -> the offset after its last record
    watermark_us: int | None  # W_N
    late_threshold_us: int | None  # L_N

    @property
    def no_data(self) -> bool:
        return self.start == self.end


def _partition_offsets(text: str | None, topic: str) -> dict[int, int]:
    offsets = json.loads(text) if text else {}
    ids = offsets.pop("@topic_ids", {})  # the topic's id, logged beside its offsets
    assert set(offsets) <= {topic} and set(ids) <= {topic}, offsets
    return {int(p): o for p, o in offsets.get(topic, {}).items()}


def logged_batches(con: Any, query: str, topic: str) -> list[LoggedBatch]:
    """The batches `query` committed, from its offset log (`con`: a streamsql or DuckDB
    connection on the engine database)."""
    rows = con.execute(
        "SELECT o.batch_id, o.start_offset, o.end_offset, o.watermark_us, o.late_threshold_us "
        "FROM _streamsql.offsets o JOIN _streamsql.commits c USING (query, batch_id) "
        "WHERE o.query = ? ORDER BY o.batch_id",
        [query],
    ).fetchall()
    return [
        LoggedBatch(b, _partition_offsets(s, topic), _partition_offsets(e, topic), w, late)
        for b, s, e, w, late in rows
    ]


def windows_rows(con: Any, table: str) -> list[tuple[int, int, str, int]]:
    """The window sink's rows, bounds in epoch microseconds (whatever their time zone)."""
    return sorted(
        con.execute(
            f"SELECT epoch_us(window_start), epoch_us(window_end), event_type, n FROM {table}"
        ).fetchall()
    )


def dead_letters(con: Any, query: str) -> list[tuple[Any, ...]]:
    return sorted(
        con.execute(
            'SELECT "partition", "offset", raw, error, batch_id, source '
            "FROM _streamsql.dead_letters WHERE query = ?",
            [query],
        ).fetchall()
    )


# -- the expectation --------------------------------------------------------------------------


@dataclass
class Expectation:
    """What a window sink must hold after its batches, by Spark's rules."""

    outcome: model.Outcome  # batch by batch, from the reference model
    windows: list[tuple[int, int, str, int]]  # the sink's rows: (start us, end us, type, n)
    batch_query: list[tuple[int, int, str, int]]  # the same from one DuckDB query
    emitted_windows: dict[tuple[int, int], tuple[int, int]]  # window -> (batch, groups)
    late: set[int] = field(default_factory=set)  # row ids dropped as late
    open_groups: int = 0  # (window, type) groups still in state
    final_watermark: int = 0
    events_by_batch: list[int] = field(default_factory=list)  # valid events read per batch


def event_times(messages: Iterable[Message]) -> dict[int, int]:
    """Each valid message's event time in microseconds, computed as the source declares it
    (`to_timestamp(timestamp / 1000)`), by DuckDB."""
    valid = [m for m in messages if m.valid]
    table = pa.table(
        {
            "row_id": pa.array([m.row_id for m in valid], pa.int64()),
            "timestamp": pa.array([m.timestamp for m in valid], pa.int64()),
        }
    )
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("events", table)
        rows = con.execute(
            "SELECT row_id, epoch_us(to_timestamp(timestamp / 1000)) FROM events"
        ).fetchall()
    finally:
        con.close()
    return dict(rows)


def check_coverage(messages: Sequence[Message], batches: Sequence[LoggedBatch]) -> list[str]:
    """The batches' ranges must tile every partition from offset 0 to its end: no message
    skipped, none read twice."""
    problems = []
    ends: dict[int, int] = defaultdict(int)
    for m in messages:
        ends[m.partition] = max(ends[m.partition], m.offset + 1)
    position: dict[int, int] = {}
    for batch in batches:
        for partition, start in batch.start.items():
            expected = position.get(partition, 0)
            if start != expected:
                problems.append(
                    f"batch {batch.batch_id} starts {partition} at {start}, not {expected}"
                )
        for partition, end in batch.end.items():
            if end < batch.start.get(partition, 0):
                problems.append(f"batch {batch.batch_id} ends {partition} before its start")
            position[partition] = end
    for partition, end in ends.items():
        if position.get(partition) != end:
            problems.append(f"partition {partition} read to {position.get(partition)}, not {end}")
    return problems


def expect(messages: Sequence[Message], batches: Sequence[LoggedBatch]) -> Expectation:
    """Replay the logged batch boundaries through the reference model."""
    problems = check_coverage(messages, batches)
    assert problems == [], problems
    times = event_times(messages)
    by_position = {(m.partition, m.offset): m for m in messages}
    inputs: list[list[model.Event]] = []
    stops: set[int] = set()
    for batch in batches:
        if batch.no_data:
            assert inputs, "a no-data batch before any data"
            stops.add(len(inputs) - 1)
            continue
        events = []
        for partition, end in batch.end.items():
            for offset in range(batch.start.get(partition, 0), end):
                m = by_position[(partition, offset)]
                if m.valid:
                    events.append(model.Event(m.row_id, times[m.row_id], m.event_type))
        inputs.append(events)
    outcome = model.run(inputs, model.Tumbling(WINDOW_US), DELAY_US, "final", stops)
    windows = sorted((start, end, key, len(rows)) for _, (start, end, key), rows in outcome.emitted)
    valid = {m.row_id: m for m in messages if m.valid}
    late = set(valid) - set(outcome.accepted)
    final_watermark = outcome.batches[-1].watermark if outcome.batches else 0
    emitted: dict[tuple[int, int], tuple[int, int]] = {}
    for batch_id, (start, end, _), _ in outcome.emitted:
        previous = emitted.get((start, end), (batch_id, 0))
        assert previous[0] == batch_id, "a window's groups close in one batch"
        emitted[(start, end)] = (batch_id, previous[1] + 1)
    return Expectation(
        outcome=outcome,
        windows=windows,
        batch_query=batch_query([valid[r] for r in outcome.accepted], times, final_watermark),
        emitted_windows=emitted,
        late=late,
        open_groups=len(outcome.open_groups),
        final_watermark=final_watermark,
        events_by_batch=[len(events) for events in inputs],
    )


def batch_query(
    accepted: Sequence[Message], times: dict[int, int], watermark: int
) -> list[tuple[int, int, str, int]]:
    """The seed's window count as one batch DuckDB query over the accepted events, windows
    the final watermark has closed."""
    table = pa.table(
        {
            "event_type": pa.array([m.event_type for m in accepted], pa.string()),
            "us": pa.array([times[m.row_id] for m in accepted], pa.int64()),
        }
    )
    con = duckdb.connect()
    try:
        con.register("accepted", table)
        rows = con.execute(
            "SELECT ws, ws + $size AS we, event_type, count(*) AS n "
            "FROM (SELECT *, us // $size * $size AS ws FROM accepted) "
            "GROUP BY ALL HAVING ws + $size <= $watermark",
            {"size": WINDOW_US, "watermark": watermark},
        ).fetchall()
    finally:
        con.close()
    return sorted(rows)


def totals(messages: Iterable[Message]) -> list[tuple[str, int, int, int, int]]:
    """The TOTALS_SELECT result over every valid event (a global aggregation drops none)."""
    groups: dict[str, list[int]] = {}
    for m in messages:
        if m.valid:
            n, total, first, last = groups.get(m.event_type, [0, 0, m.timestamp, m.timestamp])
            groups[m.event_type] = [
                n + 1,
                total + m.user_id,
                min(first, m.timestamp),
                max(last, m.timestamp),
            ]
    return sorted((k, *v) for k, v in groups.items())
