"""Each emitted row as one Kafka message, as Spark's Kafka sink writes them.

The value is the row as a JSON object (`format = 'json'`) or one CSV record without a
header (`format = 'csv'`); the key is the `key` expression over the output columns, if
given. DuckDB turns the whole batch into keys and values in one statement. Every message
carries the headers `streamsql.query`, `streamsql.query_id` and `streamsql.batch_id`.

A batch commits only once the broker has acknowledged all its messages (acks = all, from
an idempotent producer, so the client's own retries add no duplicates). The sink is
at-least-once: a crash between the acknowledgement and the commit replays the batch,
which produces its messages again with the same batch id; consumers that need each row
once skip batch ids of a query id they have seen.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, ClassVar

import duckdb
import pyarrow as pa
from kafka import KafkaProducer
from kafka.errors import KafkaConfigurationError, KafkaError
from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.errors import ParseError, TokenError

from streamsql.checkpoint.transactions import registered
from streamsql.connectors.kafka.net import NetworkClients, within
from streamsql.connectors.kafka.settings import client_settings, topic_names
from streamsql.connectors.sink import OutputSchema, Sink
from streamsql.errors import OperationalError, ProgrammingError, from_duckdb
from streamsql.quoting import literal, one_statement, quote

ROWS_VIEW = "__kafka_rows"
FORMATS = ("json", "csv")

# kafka-python settings a `kafka.` option may not change.
OWNED = {
    "bootstrap_servers": "use the bootstrap_servers option",
    "key_serializer": "the sink serializes keys itself",
    "value_serializer": "the sink serializes values itself",
    "acks": "a batch commits only when all in-sync replicas have its messages (acks = all)",
    "transactional_id": "the sink does not write in Kafka transactions",
}
FORCE_CLOSE_SECONDS = 5.0  # for the producer's I/O thread to stop once told to


class KafkaSink(Sink):
    OPTIONS = (*Sink.OPTIONS, "bootstrap_servers", "topic", "format", "key", "timeout")
    OPTION_PREFIXES: ClassVar[tuple[str, ...]] = ("kafka.",)  # passed to KafkaProducer
    TARGET = "Kafka"

    def __init__(self, name: str, options: dict[str, str]) -> None:
        super().__init__(name, options)
        self.servers = self.option_required("bootstrap_servers", "kafka")
        topics = topic_names(self.owner, self.option_required("topic", "kafka"))
        if len(topics) != 1:
            raise self._invalid("topic", "one topic: a sink writes to one")
        self.topic = topics[0]
        self.format = self.option_choice("format", FORMATS, "json")
        self.key = _key_expression(self, options.get("key"))
        self.timeout = self.option_seconds("timeout", 30.0)
        self._timeout_text = options.get("timeout", "30 seconds")
        self.client_options = client_settings(
            f"Sink {name}", options, KafkaProducer.DEFAULT_CONFIG, OWNED
        )
        self.query_id = ""
        self._select = ""
        self._producer: KafkaProducer | None = None

    def open(self, cursor: duckdb.DuckDBPyConnection, schema: OutputSchema, query_id: str) -> None:
        """Compile the statement that makes a batch's messages, and try it on no rows, so that
        a bad key is refused now (the broker is reached at the first batch with rows, so a
        database opens while Kafka is down)."""
        self.query_id = query_id
        nulls = ", ".join(
            f"CAST(NULL AS {t}) AS {quote(n)}"
            for n, t in zip(schema.names, schema.types, strict=True)
        )
        empty = f"(SELECT {nulls} WHERE false) AS {ROWS_VIEW}"
        key_type, what = "BLOB", f"key = {self.key!r}"
        try:
            if self.key:
                describe = one_statement(f"DESCRIBE SELECT ({self.key}) FROM {empty}")
                described = cursor.execute(describe).fetchall()
                key_type = described[0][1]
            what = "the message value"
            columns = f"encode({self._value(schema)}) AS value, {_key(self.key, key_type)} AS key"
            cursor.execute(f"DESCRIBE SELECT {columns} FROM {empty}").fetchall()
        except duckdb.Error as error:
            raise ProgrammingError(
                f"Sink {self.name}: {what} is not an expression over the output columns "
                f"({', '.join(schema.names)}): {str(error).splitlines()[0]}"
            ) from None
        self._select = one_statement(f"SELECT {columns} FROM {ROWS_VIEW}")

    def _value(self, schema: OutputSchema) -> str:
        """The VARCHAR expression of a row's message value."""
        columns = list(zip(schema.names, schema.types, strict=True))
        if self.format == "csv":
            return "concat_ws(',', " + ", ".join(_csv_field(quote(n)) for n, _ in columns) + ")"
        fields = ", ".join(f"{literal(n)}: {_json_field(quote(n), t)}" for n, t in columns)
        return f"CAST(to_json({{{fields}}}) AS VARCHAR)"

    def write(self, cursor: duckdb.DuckDBPyConnection, batch_id: int, rows: pa.Table) -> None:
        if rows.num_rows == 0:
            return
        try:
            with registered(cursor, ROWS_VIEW, rows):
                messages = cursor.execute(self._select).fetchall()
        except duckdb.Error as error:
            raise from_duckdb(
                error, f"Sink {self.name}: the messages of batch {batch_id}"
            ) from None
        headers = [
            ("streamsql.query", self.name.encode()),
            ("streamsql.query_id", self.query_id.encode()),
            ("streamsql.batch_id", str(batch_id).encode()),
        ]
        deadline = time.monotonic() + self.timeout
        try:
            producer = self._producer or self._connect()
            futures = [
                producer.send(self.topic, value=value, key=key, headers=headers)
                for value, key in messages
            ]
            producer.flush(timeout=max(deadline - time.monotonic(), 0))
            for future in futures:
                future.get(timeout=max(deadline - time.monotonic(), 0))
        except KafkaError as error:
            self._abandon()
            raise OperationalError(
                f"Sink {self.name}: batch {batch_id} was not written to Kafka topic "
                f"{self.topic!r} at {self.servers} (timeout {self._timeout_text}): {error}"
            ) from None

    def _connect(self) -> KafkaProducer:
        """A producer connected within `timeout`: KafkaProducer() bootstraps on the calling
        thread, where kafka-python does not bound every wait (net.py)."""
        millis = max(int(self.timeout * 1000), 1)
        clients = NetworkClients()
        config: dict[str, Any] = {
            "bootstrap_servers": self.servers,
            "client_id": f"streamsql-{self.name}",
            "acks": "all",
            "enable_idempotence": True,
            "bootstrap_timeout_ms": millis,
            "max_block_ms": millis,
            "request_timeout_ms": min(millis, KafkaProducer.DEFAULT_CONFIG["request_timeout_ms"]),
            **self.client_options,
            "kafka_client": clients,
        }
        try:
            self._producer = within(
                self.timeout, lambda: KafkaProducer(**config), clients, lambda p: _close(p, 0)
            )
        except (KafkaConfigurationError, ValueError) as error:
            raise ProgrammingError(f"Sink {self.name}: Kafka client options: {error}") from None
        except KafkaError:
            for client in clients:
                client.close()
            raise
        return self._producer

    def _abandon(self) -> None:
        """Drop the producer with whatever it has not delivered: the batch failed, and runs
        again with a producer of its own."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            _close(producer, 0)

    def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            _close(producer, self.timeout)


def _json_field(column: str, type_: str) -> str:
    """A column in the JSON object: as DuckDB's to_json writes it, except that NaN and the
    infinities of a FLOAT or DOUBLE column (not valid JSON) become strings, as Spark's to_json
    writes them."""
    if type_.upper() not in ("DOUBLE", "FLOAT", "REAL", "FLOAT4", "FLOAT8"):
        return column
    return (
        f"CASE WHEN isnan({column}) THEN '\"NaN\"'::JSON "
        f"WHEN isinf({column}) AND {column} > 0 THEN '\"Infinity\"'::JSON "
        f"WHEN isinf({column}) THEN '\"-Infinity\"'::JSON ELSE to_json({column}) END"
    )


def _csv_field(column: str) -> str:
    """A column as a CSV field, as DuckDB's COPY writes one: NULL is empty, '' is "", and a
    value with a comma, quote or line break is quoted with its quotes doubled."""
    text = f"CAST({column} AS VARCHAR)"
    return (
        f"CASE WHEN {column} IS NULL THEN '' "
        f"WHEN {text} = '' OR regexp_matches({text}, '[\",\\r\\n]') "
        f"THEN '\"' || replace({text}, '\"', '\"\"') || '\"' ELSE {text} END"
    )


def _key_expression(sink: KafkaSink, text: str | None) -> str | None:
    """The `key` option as the one SQL expression it must be, rendered by sqlglot: an
    expression over the output columns, never a query or a second statement."""
    if text is None:
        return None
    try:
        parsed = DuckDB().parse_into(exp.Expr, text)
    except (ParseError, TokenError):
        parsed = []
    if len(parsed) != 1 or parsed[0] is None or parsed[0].find(exp.Query, exp.Table):
        raise sink._invalid("key", "an expression over the output columns")
    return parsed[0].sql("duckdb")


def _key(key: str | None, type_: str) -> str:
    """The message key: a BLOB as it is, anything else as its text in UTF-8; NULL, no key."""
    if not key:
        return "NULL::BLOB"
    if type_.upper() == "BLOB":
        return f"CAST(({key}) AS BLOB)"
    return f"encode(CAST(({key}) AS VARCHAR))"


def _close(producer: KafkaProducer, timeout: float) -> None:
    """Close a producer within `timeout`, dropping what it could not deliver by then.
    kafka-python's close() raises when its flush times out, leaving its I/O thread running
    and retrying, so the thread is then stopped forcefully."""
    try:
        producer.close(timeout)
    except KafkaError:
        producer._sender.force_close()  # kafka-python has no public call for this
        producer._sender.join(FORCE_CLOSE_SECONDS)
        with contextlib.suppress(KafkaError):
            producer.close(0)
