"""Kafka record batches -> Arrow columns (streamsql/connectors/kafka/records.py), on batches
built by kafka-python's own encoder: the layout is the library's, not a copy of ours."""

from __future__ import annotations

import struct

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatchBuilder

from streamsql.connectors.kafka.records import CorruptRecordError, RecordColumns

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def batch(base_offset: int, records: list[tuple], codec: int = 0) -> bytes:
    """A v2 record batch of (offset delta, timestamp ms, key, value, headers)."""
    builder = DefaultRecordBatchBuilder(2, codec, False, -1, -1, -1, 1 << 20)
    for delta, timestamp, key, value, headers in records:
        builder.append(delta, timestamp, key, value, headers)
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base_offset)
    return bytes(data)


def rows(columns: RecordColumns) -> list[dict]:
    return columns.table().to_pylist()


@pytest.mark.parametrize("codec", CODECS, ids=str)
def test_every_codec_decodes_to_the_same_columns(codec: str) -> None:
    records = [
        (i, 1_700_000_000_000 + i, b"k%d" % i if i % 3 else None, b'{"n": %d}' % i, [])
        for i in range(200)
    ]
    columns = RecordColumns(0, 1000, 0)
    columns.add(batch(0, records, CODECS[codec]))
    assert [r["offset"] for r in rows(columns)] == list(range(200))
    assert [r["value"] for r in rows(columns)] == [r[3] for r in records]
    assert [r["key"] for r in rows(columns)] == [r[2] for r in records]
    assert [r["timestamp"] for r in rows(columns)] == [r[1] for r in records]
    assert columns.next_offset == 200


def test_headers_null_values_and_wide_varints_survive() -> None:
    big = b"x" * 70_000  # a length that needs a three-byte varint
    records = [
        (0, 5, None, None, [("h", b"v"), ("empty", None)]),
        (1, -1, b"", big, []),
        (300, 2**40, b"k", b"", [("\u00e9", b"\x00\xff")]),
    ]
    columns = RecordColumns(100, 1000, 100)
    columns.add(batch(100, records))
    assert rows(columns) == [
        {"offset": 100, "timestamp": 5, "timestamp_type": 0, "key": None, "value": None,
         "headers": [{"key": "h", "value": b"v"}, {"key": "empty", "value": None}]},
        {"offset": 101, "timestamp": -1, "timestamp_type": 0, "key": b"", "value": big,
         "headers": []},
        {"offset": 400, "timestamp": 2**40, "timestamp_type": 0, "key": b"k", "value": b"",
         "headers": [{"key": "\u00e9", "value": b"\x00\xff"}]},
    ]  # fmt: skip
    assert columns.next_offset == 401


def test_only_the_range_is_kept_though_whole_batches_arrive() -> None:
    """A broker answers with whole batches: records before `start` or from `end` on are
    dropped, and the position still moves past the batch."""
    data = batch(10, [(i, i, None, b"%d" % i, []) for i in range(10)]) + batch(
        20, [(i, i, None, b"%d" % (20 + i), []) for i in range(5)]
    )
    columns = RecordColumns(13, 22, 13)
    columns.add(data)
    assert [r["offset"] for r in rows(columns)] == [13, 14, 15, 16, 17, 18, 19, 20, 21]
    assert columns.next_offset == 25 and columns.done


def test_a_batch_cut_short_by_the_fetch_size_waits_for_the_next_fetch() -> None:
    whole = batch(0, [(i, i, None, b"v", []) for i in range(3)])
    columns = RecordColumns(0, 10, 0)
    columns.add(whole + whole[:40])
    assert columns.next_offset == 3 and len(columns.offsets) == 3


def test_control_batches_move_the_position_but_hold_no_rows() -> None:
    data = bytearray(batch(0, [(0, 0, b"\x00\x00\x00\x01", b"\x00\x00\x00\x00", [])]))
    attributes = struct.unpack_from(">h", data, 21)[0] | 0x20
    struct.pack_into(">h", data, 21, attributes)
    struct.pack_into(">I", data, 17, crc32c.crc32c(bytes(data[21:])))
    columns = RecordColumns(0, 5, 0)
    columns.add(bytes(data))
    assert rows(columns) == [] and columns.next_offset == 1


def test_a_corrupt_batch_is_refused_by_its_crc() -> None:
    data = bytearray(batch(0, [(0, 0, None, b"hello", [])]))
    data[-2] ^= 0xFF
    with pytest.raises(CorruptRecordError, match="offset 0 fails its CRC"):
        RecordColumns(0, 5, 0).add(bytes(data))


def test_log_append_time_batches_stamp_every_record_with_the_broker_time() -> None:
    data = bytearray(batch(0, [(0, 7, None, b"a", []), (1, 8, None, b"b", [])]))
    attributes = struct.unpack_from(">h", data, 21)[0] | 0x08
    struct.pack_into(">h", data, 21, attributes)
    struct.pack_into(">q", data, 35, 99)  # maxTimestamp: the log append time
    struct.pack_into(">I", data, 17, crc32c.crc32c(bytes(data[21:])))
    columns = RecordColumns(0, 5, 0)
    columns.add(bytes(data))
    assert [(r["timestamp"], r["timestamp_type"]) for r in rows(columns)] == [(99, 1), (99, 1)]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(max_size=300) | st.none(), st.binary(max_size=20) | st.none()),
        min_size=1,
        max_size=60,
    ),
    st.integers(0, 70),
    st.integers(0, 70),
    st.sampled_from(sorted(CODECS.values())),
)
def test_any_records_in_any_range_decode_exactly(
    records: list[tuple[bytes | None, bytes | None]], a: int, b: int, codec: int
) -> None:
    start, end = min(a, b), max(a, b)
    data = b"".join(
        batch(i, [(0, 1000 + i, key, value, [])], codec)
        if i % 2
        else batch(i, [(0, i, key, value, [])])
        for i, (value, key) in enumerate(records)
    )
    columns = RecordColumns(start, end, start)
    columns.add(data)
    expected = [(i, key, value) for i, (value, key) in enumerate(records) if start <= i < end]
    assert [(r["offset"], r["key"], r["value"]) for r in rows(columns)] == expected
