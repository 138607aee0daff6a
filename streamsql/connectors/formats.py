"""Decode raw records (JSON values, CSV fields, Parquet columns) into the declared columns.

Decoding is set-based, in a private in-memory DuckDB: JSON is parsed by json_transform,
fields are cast with try_cast, and every record that does not fit gets an error message
naming the column, so it goes to the dead-letter table instead of being lost. As in
Spark, a fractional number is not an integer: it is a bad record, not a rounded value.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from streamsql.catalog.definitions import INTERNAL_PREFIX, Column
from streamsql.connectors.source import DEAD_LETTER_SCHEMA, Origins, SourceBatch
from streamsql.quoting import literal, quote

FORMATS = ("json", "csv", "parquet")  # of files; Kafka values are json, csv or raw
INTEGER_TYPES = {
    "TINYINT", "SMALLINT", "INTEGER", "INT", "BIGINT", "HUGEINT",
    "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT",
}  # fmt: skip
NUMBER_TYPES = {"FLOAT", "REAL", "DOUBLE", "DECIMAL", "NUMERIC"}
FLOAT_TYPES = {"FLOAT", "REAL", "DOUBLE", "FLOAT4", "FLOAT8"}
TEXT_TYPES = {"VARCHAR", "TEXT", "STRING"}
BOOLEAN_TYPES = {"BOOLEAN", "BOOL", "LOGICAL"}
# JSON texts Spark reads into FLOAT and DOUBLE besides numbers (allowNonNumericNumbers).
_NON_NUMERIC = (
    "('\"NaN\"', '\"Infinity\"', '\"+Infinity\"', '\"+INF\"', '\"-Infinity\"', '\"-INF\"')"
)
_INTEGER = "-?[0-9]+"
_DECIMAL = "[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?"  # Java's BigDecimal
# Timestamps without time zone of microsecond precision or coarser: their text is read
# through TIMESTAMPTZ so that a UTC offset is applied, not dropped.
UTC_TYPES = {"TIMESTAMP", "DATETIME", "TIMESTAMP_US", "TIMESTAMP_MS", "TIMESTAMP_S"}
AS_IS = "SELECT *, NULL::VARCHAR AS __error FROM __raw"  # the raw records, no error yet
# One in-memory database decodes for every source of the process: opening one takes longer
# than decoding a small batch, and each source opens when an engine does. Each decoder has
# a cursor (connection) of its own per thread, where its temporary tables live.
_DECODING = duckdb.connect()
_DECODING_LOCK = threading.Lock()


class Decoder:
    """Turns a table of raw records into a SourceBatch of typed rows and dead letters.

    The raw table carries `partition` (string), `offset` (int64) and `raw` (the record as
    written, bytes, kept for dead letters; absent for Parquet, whose rows are written as
    JSON), and either a `value` column (JSON, CSV or raw bytes; string or binary) or one
    column per declared column, named `field(column)` (Parquet values).
    Columns declared METADATA are read from `__meta_<key>` columns the source adds.

    A declared column is never a column of the SQL that decodes: its value is in
    `field(column)` (`__streamsql_c<i>`) until the rows leave DuckDB, so a column named
    `offset`, `raw` or `__error` cannot shadow the decoder's own.
    """

    def __init__(self, columns: tuple[Column, ...], schema: pa.Schema) -> None:
        self.names = [c.name for c in columns]
        self.columns = tuple(c for c in columns if c.metadata is None)  # from the value
        self.metadata = tuple(c for c in columns if c.metadata is not None)
        self._fields = {c.name: f"{INTERNAL_PREFIX}c{i}" for i, c in enumerate(self.columns)}
        self.schema = schema
        self._local = threading.local()

    def field(self, column: Column) -> str:
        """The name a declared (value) column has inside the decoder's SQL."""
        return self._fields[column.name]

    @property
    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            with _DECODING_LOCK:
                cursor = self._local.cursor = _DECODING.cursor()
            cursor.execute("SET TimeZone = 'UTC'").fetchall()
        return cursor

    def decode_json(self, raw: pa.Table) -> SourceBatch:
        """Each value is parsed twice in all: into the typed fields, and into each field's
        JSON text, which the checks read. Which JSON values a column takes is Spark's rule
        (JacksonParser.makeConverter), the same for every type: see _json_shape. A key
        that appears twice in an object takes its last value, as in Spark (DuckDB's JSON
        functions take the first)."""
        typed = json.dumps({c.name: _read_as(c.type) for c in self.columns})
        texts = json.dumps(dict.fromkeys((c.name for c in self.columns), "JSON"))
        shape = (
            f"CASE WHEN value IS NULL THEN {_EMPTY} WHEN NOT json_valid(value) THEN "
            "'malformed JSON' WHEN ltrim(value)[1] <> '{' THEN 'JSON value is not an object' END"
        )
        values = {c.name: _json_value(c.type, c.name) for c in self.columns}
        checks = []
        for c in self.columns:
            text = f"__j.{quote(c.name)}"
            checks.append(
                f"CASE WHEN {text} IS NOT NULL AND {text} <> 'null' AND ({values[c.name]} IS "
                f"NULL OR NOT {_json_shape(c.type, text)}) THEN {_cannot_read(c, text)} END"
            )
        # Keys in order, for objects only (a duplicate key makes the object be rewritten).
        objects = (
            f"SELECT *, CASE WHEN __shape IS NULL THEN json_keys(value) END AS __keys "
            f"FROM (SELECT *, coalesce(__error, {shape}) AS __shape FROM ({_text(raw)}))"
        )
        parsed = (
            f"SELECT *, json_transform(__object, {literal(typed)}) AS __v, "
            f"json_transform(__object, {literal(texts)}) AS __j "
            f"FROM (SELECT *, {_LAST_KEYS} AS __object FROM ({objects}))"
        )
        structured = "".join(
            f"{cast_to_column(values[c.name], c.type)} AS {self.field(c)}, "
            if _read_as(c.type) != c.type or values[c.name] != f"__v.{quote(c.name)}"
            else f"{values[c.name]} AS {self.field(c)}, "
            for c in self.columns
        )
        sql = (
            f"SELECT * EXCLUDE (__v, __j, __shape, __keys, __object, value, __error), "
            f"{structured}coalesce(__shape, {', '.join(checks) or 'NULL'}) AS __error "
            f"FROM ({parsed})"
        )
        return self._split(raw, sql)

    def decode_csv(
        self,
        raw: pa.Table,
        delimiter: str,
        fields: CsvFields | None = None,
    ) -> SourceBatch:
        """One CSV record per value: fields split on the delimiter (by a regular expression
        that knows quoting where there are quotes), then cast as in decode_fields. `fields`
        says where each column is (default: one field per column, in order).

        As in Spark, an unquoted empty field is NULL and a quoted one (`""`) the empty
        string; a field equal to `fields.null_value` is NULL, and one equal to
        `fields.nan_value` is NaN in a FLOAT or DOUBLE column. The option values are bound
        as parameters, never written into the SQL.
        """
        fields = fields or CsvFields(tuple(range(1, len(self.columns) + 1)))
        d = re.escape(delimiter)
        field = f'("(?:[^"]|"")*"|[^{d}"\\n]*)'
        # A record without quotes (or line ends) is split on the delimiter, as fast as
        # DuckDB splits; others by a pattern that knows quoting, where each field follows a
        # delimiter (one is put before the first: a pattern that could match empty at the
        # start would skip the delimiter after an empty first field).
        quoted = "(contains(value, '\"') OR contains(value, chr(10)))"
        split_fields = (
            f"CASE WHEN {quoted} THEN regexp_extract_all({literal(delimiter)} || value, "
            f"{literal(f'{d}{field}')}, 1) ELSE string_split(value, {literal(delimiter)}) END"
        )
        # The fields, joined again, must give back the whole value: anything else (a stray
        # quote, a broken quoted field) is not CSV.
        whole = f"array_to_string(__f, {literal(delimiter)}) = value"
        count = fields.width
        split = (
            f"SELECT *, coalesce(__error, CASE WHEN value IS NULL THEN {_EMPTY} WHEN {quoted} "
            f"AND NOT {whole} THEN 'malformed CSV record' WHEN len(__f) <> {count} THEN "
            f"'expected {count} fields, got ' || len(__f) END) AS __structure "
            f"FROM (SELECT *, {split_fields} AS __f FROM ({_text(raw)}))"
        )
        unquoted = ", ".join(
            f"{_csv_field(f'__f[{i}]', c.type)} AS {self.field(c)}"
            if i is not None
            else f"NULL::VARCHAR AS {self.field(c)}"
            for i, c in zip(fields.positions, self.columns, strict=True)
        )
        fields_sql = (
            f"SELECT * EXCLUDE (__f, value, __error), __structure AS __error"
            f"{', ' if unquoted else ''}{unquoted} FROM ({split})"
        )
        params = {"null_value": fields.null_value, "nan_value": fields.nan_value}
        return self.decode_fields(raw, fields_sql, params, text=True)

    def decode_raw(self, raw: pa.Table) -> SourceBatch:
        """The value itself is the one value column (BLOB, or VARCHAR when valid UTF-8)."""
        (column,) = self.columns
        sql = (
            f"SELECT * EXCLUDE (value), value AS {self.field(column)} FROM "
            f"({_text(raw) if column.type.upper() in TEXT_TYPES else AS_IS})"
        )
        return self._split(raw, sql)

    def decode_fields(
        self,
        raw: pa.Table,
        fields_sql: str = AS_IS,
        params: dict[str, object] | None = None,
        text: bool = False,
    ) -> SourceBatch:
        """Cast per-column fields (strings from CSV, typed values from Parquet); `params`
        are the values `fields_sql` binds. `text`: the fields are CSV text, which Spark
        does not trim (ignoreLeadingWhiteSpace and ignoreTrailingWhiteSpace are false when
        reading): an integer, DECIMAL or BOOLEAN field with a space around it (` 7 `) is
        a bad record, as its parser refuses it; FLOAT, DOUBLE and time fields are trimmed
        by their parsers there as here."""
        casts = [
            f"{cast_to_column(self.field(c), c.type, 'try_cast')} AS {self.field(c)}"
            for c in self.columns
        ]
        checks = []
        for c in self.columns:
            field = self.field(c)
            cast = cast_to_column(field, c.type, "try_cast")
            fractional = (
                f"try_cast({field} AS DOUBLE) <> {cast}" if _is_integer(c.type) else "FALSE"
            )
            padded = (
                f" OR regexp_matches({field}, '^\\s|\\s$')" if text and _untrimmed(c.type) else ""
            )
            checks.append(
                f"CASE WHEN {field} IS NOT NULL AND ({cast} IS NULL OR {fractional}{padded}) "
                f"THEN {_cannot_read(c, f'{field}::VARCHAR')} END"
            )
        record = ", ".join(f"{literal(c.name)}: {self.field(c)}" for c in self.columns)
        written = "raw" if "raw" in raw.column_names else f"encode(to_json({{{record}}})::VARCHAR)"
        metadata = "".join(f", {quote(_meta(c))}" for c in self.metadata)
        sql = (
            f'SELECT partition, "offset", {written} AS raw{metadata}, '
            f"coalesce(__error, {', '.join(checks) or 'NULL'}) AS __error"
            f"{', ' if casts else ''}{', '.join(casts)} FROM ({fields_sql})"
        )
        return self._split(raw, sql, params)

    def _split(
        self, raw: pa.Table, sql: str, params: dict[str, object] | None = None
    ) -> SourceBatch:
        cursor = self._cursor
        cursor.register("__raw", raw)
        metadata = {c.name: _cast(raw, _meta(c), c.type) for c in self.metadata}
        checks = [
            f"CASE WHEN {quote(_meta(c))} IS NOT NULL AND {metadata[c.name]} IS NULL THEN "
            f"{_cannot_read(c, f'{quote(_meta(c))}::VARCHAR', c.metadata)} END"
            for c in self.metadata
        ]
        error = f"coalesce(__error, {', '.join(checks)})" if checks else "__error"
        # DuckDB refuses a value for a parameter the statement does not use
        params = {k: v for k, v in (params or {}).items() if re.search(rf"\${k}\b", sql)}
        try:
            # DuckDB keeps insertion order, so rows stay in the order they arrived.
            cursor.execute(
                f"CREATE OR REPLACE TEMP TABLE __decoded AS SELECT * EXCLUDE (__error), "
                f"{error} AS __error FROM ({sql})",
                params or None,
            ).fetchall()
            names = ", ".join(
                f"{metadata[name] if name in metadata else self._fields[name]} "
                f"AS {INTERNAL_PREFIX}o{index}"
                for index, name in enumerate(self.names)
            )
            # A row's position among the raw records is its rowid in __decoded.
            decoded = cursor.sql(
                f"SELECT {names}, rowid AS __position FROM __decoded WHERE __error IS NULL"
            ).to_arrow_table()
            dead = cursor.sql(
                'SELECT partition, "offset", raw, __error AS error '
                "FROM __decoded WHERE __error IS NOT NULL"
            ).to_arrow_table()
        finally:
            cursor.unregister("__raw")
        return SourceBatch(
            decoded.drop_columns("__position").rename_columns(self.names).cast(self.schema),
            dead.cast(DEAD_LETTER_SCHEMA),
            Origins.of_records(raw, decoded["__position"].combine_chunks()),
        )


_EMPTY = "'empty message'"
# The object with each key once, at its last value (Spark keeps the last of duplicate keys):
# the value itself when no key repeats, else rebuilt from the keys and values in order;
# NULL for a record that is not a JSON object.
_LAST_KEYS = (
    "CASE WHEN __shape IS NOT NULL THEN NULL "
    "WHEN len(__keys) = len(list_distinct(__keys)) THEN value ELSE "
    "'{' || array_to_string([to_json(__keys[i])::VARCHAR || ':' || json_extract(value, '$.*')[i] "
    "FOR i IN range(1, len(__keys) + 1) IF NOT list_contains(__keys[i + 1:], __keys[i])], ',') "
    "|| '}' END"
)


@dataclass(frozen=True)
class CsvFields:
    """Where each declared column is in a CSV record, and which field texts mean NULL or
    NaN (Spark's nullValue and nanValue)."""

    positions: tuple[int | None, ...]  # 1-based field of each value column; None: absent
    width: int | None = None  # fields per record (the header's); default: one per column
    null_value: str | None = None
    nan_value: str = "NaN"

    def __post_init__(self) -> None:
        if self.width is None:
            object.__setattr__(self, "width", len(self.positions))


def _csv_field(field: str, type_: str) -> str:
    """A CSV field's text: unquoted, NULL when empty and unquoted or when it is the
    null value, 'NaN' when it is the NaN value of a FLOAT or DOUBLE column."""
    text = (
        f"CASE WHEN {field} LIKE '\"%' THEN replace({field}[2:-2], '\"\"', '\"') "
        f"ELSE nullif({field}, '') END"
    )
    text = f"nullif({text}, $null_value)"
    if type_.upper() in FLOAT_TYPES:
        text = f"CASE WHEN {text} = $nan_value THEN 'NaN' ELSE {text} END"
    return text


def cast_to_column(value: str, type_: str, function: str = "CAST") -> str:
    """SQL casting `value` to a column's type. Spark converts a timestamp string with a UTC
    offset (`2024-01-01T02:00:00+02:00`) to UTC (00:00); DuckDB's cast to TIMESTAMP drops
    the offset (02:00), so the value goes through TIMESTAMPTZ, on a cursor in UTC (a
    string without an offset is read as UTC, a TIMESTAMP is unchanged, infinity stays)."""
    if type_.upper() in UTC_TYPES:
        return f"{function}({function}({value} AS TIMESTAMPTZ) AS {type_})"
    return f"{function}({value} AS {type_})"


def _read_as(type_: str) -> str:
    """The type json_transform reads a column's JSON value as (see cast_to_column)."""
    return "TIMESTAMPTZ" if type_.upper() in UTC_TYPES else type_


def _meta(column: Column) -> str:
    return f"__meta_{column.metadata}"


def _text(raw: pa.Table) -> str:
    """The raw records with `value` as text and `__error` set where it is not UTF-8."""
    if not pa.types.is_binary(raw.schema.field("value").type):
        return AS_IS
    return (
        "SELECT * EXCLUDE (value, __text), __text AS value, CASE WHEN value IS NOT NULL AND "
        "__text IS NULL THEN 'value is not valid UTF-8' END AS __error "
        "FROM (SELECT *, try(decode(value)) AS __text FROM __raw)"
    )


def _cast(raw: pa.Table, name: str, type_: str) -> str:
    """A cast that reads bytes as UTF-8 text (DuckDB's BLOB -> VARCHAR cast escapes them)."""
    if pa.types.is_binary(raw.schema.field(name).type) and type_.upper() in TEXT_TYPES:
        return f"try(decode({quote(name)}))"
    return cast_to_column(quote(name), type_, "try_cast")


def _json_shape(type_: str, text: str) -> str:
    """SQL that is true when a field's JSON text can be the column's type, by Spark's rule
    for each type (JacksonParser.makeConverter): BOOLEAN takes only `true` and `false`
    (not `"true"`, not `1`); an integer column only whole JSON numbers (not `"7"`, not
    `1.5`, not `1e3`); FLOAT and DOUBLE JSON numbers and the strings `"NaN"`,
    `"Infinity"`, `"+Infinity"`, `"+INF"`, `"-Infinity"`, `"-INF"`; DECIMAL JSON numbers
    and strings holding a decimal number; dates and times only strings, and timestamps also
    whole numbers (seconds since the epoch); text columns any value (its JSON text)."""
    base = type_.upper().split("(")[0].strip()
    number = f"regexp_full_match({text}, '-?[0-9][0-9.eE+-]*')"
    if base in BOOLEAN_TYPES:
        return f"{text} IN ('true', 'false')"
    if _is_integer(type_):
        return f"regexp_full_match({text}, '{_INTEGER}')"
    if base in FLOAT_TYPES:
        return f"({number} OR {text} IN {_NON_NUMERIC})"
    if base in NUMBER_TYPES:
        return f"({number} OR regexp_full_match({text}, '\"{_DECIMAL}\"'))"
    if _is_timestamp(type_):
        return f"({text} LIKE '\"%' OR regexp_full_match({text}, '{_INTEGER}'))"
    if base.startswith(("DATE", "TIME")):
        return f"{text} LIKE '\"%'"
    return "TRUE"


def _json_value(type_: str, name: str) -> str:
    """The field's value: as json_transform read it, and for a timestamp given as a whole
    JSON number, that many seconds since the epoch (Spark's TimestampType)."""
    value = f"__v.{quote(name)}"
    if not _is_timestamp(type_):
        return value
    text = f"__j.{quote(name)}"
    seconds = f"try(to_timestamp(CAST({text} AS BIGINT)))"
    return (
        f"coalesce({value}, CASE WHEN regexp_full_match({text}, '{_INTEGER}') THEN "
        f"CAST({seconds} AS {_read_as(type_)}) END)"
    )


def _is_timestamp(type_: str) -> bool:
    return type_.upper().startswith(("TIMESTAMP", "DATETIME"))


def _untrimmed(type_: str) -> bool:
    """Types whose text Spark's CSV parser reads without trimming it (toInt, toLong,
    BigDecimal, toBoolean refuse surrounding spaces)."""
    base = type_.upper().split("(")[0].strip()
    return _is_integer(type_) or base in BOOLEAN_TYPES or base in ("DECIMAL", "NUMERIC")


def _is_integer(type_: str) -> bool:
    return type_.upper() in INTEGER_TYPES


def _cannot_read(column: Column, given: str, metadata: str | None = None) -> str:
    """SQL for the message `column c: cannot read <value> as <type>`."""
    source = f" (metadata {metadata})" if metadata else ""
    return (
        f"{literal(f'column {column.name}{source}: cannot read ')} || {given} || "
        f"{literal(f' as {column.type}')}"
    )
