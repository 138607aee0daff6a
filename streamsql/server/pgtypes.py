"""DuckDB types as PostgreSQL sees them: the type OID announced for a result column, and
each value's text and binary encodings (and the decoding of bound parameters).

LIST, STRUCT, MAP, UNION and arrays go out as `json` text; HUGEINT, UHUGEINT and UBIGINT as
`numeric`; TIME WITH TIME ZONE, ENUM, BIT and anything else as `text` in DuckDB's spelling.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

BOOL, BYTEA, INT8, INT2, INT4, TEXT, JSON, FLOAT4, FLOAT8 = 16, 17, 20, 21, 23, 25, 114, 700, 701
DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, NUMERIC, UUID = (
    1082,
    1083,
    1114,
    1184,
    1186,
    1700,
    2950,
)
UNKNOWN = 705

# DuckDB's type name (before any parenthesis) -> the PostgreSQL type OID.
_OIDS = {
    "BOOLEAN": BOOL,
    "TINYINT": INT2,
    "UTINYINT": INT2,
    "SMALLINT": INT2,
    "USMALLINT": INT4,
    "INTEGER": INT4,
    "UINTEGER": INT8,
    "BIGINT": INT8,
    "UBIGINT": NUMERIC,
    "HUGEINT": NUMERIC,
    "UHUGEINT": NUMERIC,
    "DECIMAL": NUMERIC,
    "FLOAT": FLOAT4,
    "DOUBLE": FLOAT8,
    "VARCHAR": TEXT,
    "BLOB": BYTEA,
    "DATE": DATE,
    "TIME": TIME,
    "TIMESTAMP": TIMESTAMP,
    "TIMESTAMP_S": TIMESTAMP,
    "TIMESTAMP_MS": TIMESTAMP,
    "TIMESTAMP_NS": TIMESTAMP,
    "TIMESTAMP WITH TIME ZONE": TIMESTAMPTZ,
    "INTERVAL": INTERVAL,
    "UUID": UUID,
    "JSON": JSON,
}
_NESTED = ("STRUCT", "MAP", "UNION")
_SIZES = {BOOL: 1, INT2: 2, INT4: 4, INT8: 8, FLOAT4: 4, FLOAT8: 8, DATE: 4, TIME: 8}
_SIZES |= {TIMESTAMP: 8, TIMESTAMPTZ: 8, INTERVAL: 16, UUID: 16}

EPOCH_DATE = dt.date(2000, 1, 1)  # PostgreSQL's binary formats count from here
EPOCH = dt.datetime(2000, 1, 1)
EPOCH_UTC = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def oid_of(duckdb_type: Any) -> int:
    """The PostgreSQL type OID for a DuckDB column type (None: our statements' text)."""
    if duckdb_type is None:
        return TEXT
    name = str(duckdb_type).upper()
    if name.endswith("]") or name.startswith(_NESTED):
        return JSON
    return _OIDS.get(name.split("(", 1)[0], TEXT)


def type_size(oid: int) -> int:
    """RowDescription's typlen: the fixed width, -1 for variable-length types."""
    return _SIZES.get(oid, -1)


def _micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _interval_text(value: dt.timedelta) -> str:
    """PostgreSQL's default IntervalStyle: '3 days 04:05:06.000007' (the time part signed)."""
    micros = _micros(value)
    days, rest = divmod(abs(micros), 86_400_000_000)
    sign = "-" if micros < 0 else ""
    hours, rest = divmod(rest, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    seconds, fraction = divmod(rest, 1_000_000)
    clock = f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}" + (f".{fraction:06d}" * bool(fraction))
    return f"{sign}{days} days {clock}" if days else clock


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _json_text(value: Any) -> str:
    if isinstance(value, dict):  # a MAP's keys may be other than strings
        value = {
            k if isinstance(k, str) else json.dumps(k, default=str): v for k, v in value.items()
        }
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def _text(value: Any) -> str:
    """DuckDB's value in PostgreSQL's text output format."""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.timedelta):
        return _interval_text(value)
    if isinstance(value, list | dict | tuple):
        return _json_text(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _numeric_binary(value: Any) -> bytes:
    """PostgreSQL's binary numeric: base-10000 digits, weight, sign, display scale."""
    number = Decimal(value)
    if number.is_nan():
        return struct.pack("!hhHh", 0, 0, 0xC000, 0)
    sign, digits, exponent = number.as_tuple()
    scale = max(-int(exponent), 0)
    text = "".join(map(str, digits)) + "0" * max(int(exponent), 0)
    whole, fraction = (
        (text[: len(text) - scale] or "0"),
        text[len(text) - scale :].rjust(scale, "0"),
    )
    whole = whole.lstrip("0")
    whole = whole.rjust(-(-len(whole) // 4) * 4, "0")
    fraction = fraction.ljust(-(-len(fraction) // 4) * 4, "0")
    groups = [int(whole[i : i + 4]) for i in range(0, len(whole), 4)]
    groups += [int(fraction[i : i + 4]) for i in range(0, len(fraction), 4)]
    weight = len(whole) // 4 - 1
    while groups and groups[0] == 0:  # leading zero groups move the weight
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    header = struct.pack("!hhHh", len(groups), weight, 0x4000 if sign else 0, scale)
    return header + struct.pack(f"!{len(groups)}h", *groups)


def _numeric_from_binary(data: bytes) -> Decimal:
    count, weight, sign, scale = struct.unpack_from("!hhHh", data)
    if sign == 0xC000:
        return Decimal("NaN")
    groups = struct.unpack_from(f"!{count}h", data, 8)
    number = sum(
        (Decimal(g) * Decimal(10000) ** (weight - i) for i, g in enumerate(groups)), Decimal(0)
    )
    number = number.quantize(Decimal(1).scaleb(-scale))
    return -number if sign == 0x4000 else number


_BINARY: dict[int, Callable[[Any], bytes]] = {
    BOOL: lambda v: b"\x01" if v else b"\x00",
    INT2: lambda v: struct.pack("!h", v),
    INT4: lambda v: struct.pack("!i", v),
    INT8: lambda v: struct.pack("!q", v),
    FLOAT4: lambda v: struct.pack("!f", v),
    FLOAT8: lambda v: struct.pack("!d", v),
    NUMERIC: _numeric_binary,
    BYTEA: bytes,
    DATE: lambda v: struct.pack("!i", (v - EPOCH_DATE).days),
    TIME: lambda v: struct.pack(
        "!q", ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
    ),
    TIMESTAMP: lambda v: struct.pack("!q", _micros(v - EPOCH)),
    TIMESTAMPTZ: lambda v: struct.pack("!q", _micros(v - EPOCH_UTC)),
    INTERVAL: lambda v: struct.pack("!qii", _micros(v) - v.days * 86_400_000_000, v.days, 0),
    UUID: lambda v: v.bytes,
}


def encoder(oid: int, binary: bool) -> Callable[[Any], bytes]:
    """The function that encodes a column's values (not NULL) in the format asked for."""
    if binary and oid in _BINARY:
        return _BINARY[oid]
    return lambda value: _text(value).encode()


def _bool_text(text: str) -> bool:
    return text.strip().lower() in ("t", "true", "on", "1", "yes", "y")


_FROM_TEXT: dict[int, Callable[[str], Any]] = {
    BOOL: _bool_text,
    INT2: int,
    INT4: int,
    INT8: int,
    FLOAT4: float,
    FLOAT8: float,
    NUMERIC: Decimal,
    BYTEA: lambda t: bytes.fromhex(t[2:]) if t.startswith("\\x") else t.encode(),
    UUID: uuid.UUID,
}
_FROM_BINARY: dict[int, Callable[[bytes], Any]] = {
    BOOL: lambda b: b != b"\x00",
    INT2: lambda b: struct.unpack("!h", b)[0],
    INT4: lambda b: struct.unpack("!i", b)[0],
    INT8: lambda b: struct.unpack("!q", b)[0],
    FLOAT4: lambda b: struct.unpack("!f", b)[0],
    FLOAT8: lambda b: struct.unpack("!d", b)[0],
    NUMERIC: _numeric_from_binary,
    BYTEA: bytes,
    DATE: lambda b: EPOCH_DATE + dt.timedelta(days=struct.unpack("!i", b)[0]),
    TIME: lambda b: (EPOCH + dt.timedelta(microseconds=struct.unpack("!q", b)[0])).time(),
    TIMESTAMP: lambda b: EPOCH + dt.timedelta(microseconds=struct.unpack("!q", b)[0]),
    TIMESTAMPTZ: lambda b: EPOCH_UTC + dt.timedelta(microseconds=struct.unpack("!q", b)[0]),
    UUID: lambda b: uuid.UUID(bytes=b),
}


def decode_parameter(data: bytes | None, oid: int, binary: bool) -> Any:
    """A bound parameter as the Python value DuckDB binds (text of other types stays text,
    which DuckDB casts to the type the statement needs)."""
    if data is None:
        return None
    if binary:
        if oid in _FROM_BINARY:
            return _FROM_BINARY[oid](data)
        if oid in (TEXT, JSON, 1043, UNKNOWN, 0, 19, 18):
            return data.decode()
        raise ValueError(f"binary parameters of type OID {oid} are not supported; send text")
    text = data.decode()
    return _FROM_TEXT[oid](text) if oid in _FROM_TEXT else text
