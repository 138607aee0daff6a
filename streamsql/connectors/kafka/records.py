"""Kafka record batches (message format v2) straight into Arrow columns.

kafka-python's consumer builds a Python record object per message (~10 us each); here a
fetch response's bytes are walked once, appending each record's fields to flat columns,
so a partition's records become one Arrow table without a record object in between. The
layout is Kafka's (KIP-98): a 61-byte batch header, then records of zigzag varints.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, field

import crc32c
import pyarrow as pa
from kafka import codec

BATCH_HEADER = 61  # baseOffset .. recordCount
LOG_OVERHEAD = 12  # baseOffset int64 + batchLength int32
CONTROL_BATCH = 0x20
LOG_APPEND_TIME = 0x08
CODECS = {
    1: codec.gzip_decode,
    2: codec.snappy_decode,
    3: codec.lz4_decode,
    4: codec.zstd_decode,
}

HEADERS_TYPE = pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))
COLUMNS = pa.schema(
    [
        ("offset", pa.int64()),
        ("timestamp", pa.int64()),  # epoch milliseconds
        ("timestamp_type", pa.int8()),  # 0 create time, 1 log append time
        ("key", pa.binary()),
        ("value", pa.binary()),
        ("headers", HEADERS_TYPE),
    ]
)

_batch_header = struct.Struct(">qiibIhiqqqhii").unpack_from


class CorruptRecordError(ValueError):
    """A record batch whose checksum or layout is wrong: the bytes cannot be trusted."""


@dataclass
class RecordColumns:
    """One partition's records in [start, end), column by column, and how far they reach."""

    start: int
    end: int
    next_offset: int  # the offset after the last batch seen (control batches included)
    offsets: array = field(default_factory=lambda: array("q"))
    timestamps: array = field(default_factory=lambda: array("q"))
    timestamp_types: array = field(default_factory=lambda: array("b"))
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    headers: list[list[tuple[str, bytes | None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.next_offset = max(self.next_offset, self.start)

    @property
    def done(self) -> bool:
        return self.next_offset >= self.end

    def add(self, data: bytes, keep_headers: bool = True) -> None:
        """Append the records of a fetch response's record set that fall in [start, end)."""
        size, position = len(data), 0
        while position + BATCH_HEADER <= size:
            (base_offset, length, _epoch, magic, crc, attributes, last_delta, base_time,
             max_time, _pid, _pepoch, _seq, count) = _batch_header(data, position)  # fmt: skip
            end = position + LOG_OVERHEAD + length
            if end > size:
                break  # a batch cut short by the fetch size: the next fetch starts with it
            if magic != 2:
                raise CorruptRecordError(
                    f"message format v{magic} at offset {base_offset} is not supported "
                    "(Kafka 0.11+ brokers write v2)"
                )
            if crc32c.crc32c(data[position + 21 : end]) != crc:
                raise CorruptRecordError(f"record batch at offset {base_offset} fails its CRC")
            self.next_offset = max(self.next_offset, base_offset + last_delta + 1)
            first, last = base_offset, base_offset + last_delta
            if attributes & CONTROL_BATCH or last < self.start or first >= self.end:
                position = end
                continue
            records = data[position + BATCH_HEADER : end]
            if attributes & 0x07:
                records = CODECS[attributes & 0x07](records)
            log_append = max_time if attributes & LOG_APPEND_TIME else None
            self._records(records, count, base_offset, base_time, log_append, keep_headers)
            position = end

    def _records(
        self,
        data: bytes,
        count: int,
        base_offset: int,
        base_time: int,
        log_append: int | None,
        keep_headers: bool,
    ) -> None:
        """The hot loop: varints decoded inline (a call per field would double its cost)."""
        start, end = self.start, self.end
        offsets, timestamps, keys, values = self.offsets, self.timestamps, self.keys, self.values
        headers, types = self.headers, self.timestamp_types
        kind = 0 if log_append is None else 1
        p = 0
        for _ in range(count):
            # record length
            b = data[p]
            p += 1
            if b & 0x80:
                r, s = b & 0x7F, 7
                while True:
                    b = data[p]
                    p += 1
                    r |= (b & 0x7F) << s
                    s += 7
                    if not b & 0x80:
                        break
                b = r
            record_end = p + ((b >> 1) ^ -(b & 1))
            p += 1  # attributes
            # timestamp delta
            b = data[p]
            p += 1
            if b & 0x80:
                r, s = b & 0x7F, 7
                while True:
                    b = data[p]
                    p += 1
                    r |= (b & 0x7F) << s
                    s += 7
                    if not b & 0x80:
                        break
                b = r
            time_delta = (b >> 1) ^ -(b & 1)
            # offset delta
            b = data[p]
            p += 1
            if b & 0x80:
                r, s = b & 0x7F, 7
                while True:
                    b = data[p]
                    p += 1
                    r |= (b & 0x7F) << s
                    s += 7
                    if not b & 0x80:
                        break
                b = r
            offset = base_offset + ((b >> 1) ^ -(b & 1))
            if offset < start or offset >= end:
                p = record_end
                continue
            # key
            b = data[p]
            p += 1
            if b & 0x80:
                r, s = b & 0x7F, 7
                while True:
                    b = data[p]
                    p += 1
                    r |= (b & 0x7F) << s
                    s += 7
                    if not b & 0x80:
                        break
                b = r
            n = (b >> 1) ^ -(b & 1)
            if n >= 0:
                keys.append(data[p : p + n])
                p += n
            else:
                keys.append(None)
            # value
            b = data[p]
            p += 1
            if b & 0x80:
                r, s = b & 0x7F, 7
                while True:
                    b = data[p]
                    p += 1
                    r |= (b & 0x7F) << s
                    s += 7
                    if not b & 0x80:
                        break
                b = r
            n = (b >> 1) ^ -(b & 1)
            if n >= 0:
                values.append(data[p : p + n])
                p += n
            else:
                values.append(None)
            offsets.append(offset)
            timestamps.append(base_time + time_delta if log_append is None else log_append)
            types.append(kind)
            if keep_headers:
                headers.append(_headers(data, p) if data[p] else [])
            p = record_end

    def table(self) -> pa.Table:
        count = len(self.offsets)
        return pa.table(
            [
                pa.array(self.offsets, pa.int64()),
                pa.array(self.timestamps, pa.int64()),
                pa.array(self.timestamp_types, pa.int8()),
                pa.array(self.keys, pa.binary()),
                pa.array(self.values, pa.binary()),
                pa.array(self.headers, HEADERS_TYPE)
                if self.headers
                else pa.nulls(count, HEADERS_TYPE),
            ],
            schema=COLUMNS,
        )


def _varint(data: bytes, p: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        b = data[p]
        p += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), p


def _headers(data: bytes, p: int) -> list[tuple[str, bytes | None]]:
    """A record's headers (rare enough to decode with a plain helper)."""
    count, p = _varint(data, p)
    pairs = []
    for _ in range(count):
        n, p = _varint(data, p)
        key = data[p : p + n].decode("utf-8", errors="replace")
        p += n
        n, p = _varint(data, p)
        value = data[p : p + n] if n >= 0 else None
        p += max(n, 0)
        pairs.append((key, value))
    return pairs
