"""Exported jobs run in Spark (local mode): each sink's rows, batch by batch, equal streamsql's.

One Spark session serves the whole run. Both engines read the same files, one per batch
(max_files_per_trigger = 1) with trigger available_now, and both hand their batches to a
collector: Spark through foreachBatch, streamsql through a callback sink.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import inspect
import io
import itertools
import json
import math
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamsql
from streamsql.catalog.binding import sink_def
from streamsql.cli import run_file
from streamsql.export import SparkJob, export_spark
from streamsql.sql import DIALECT, parse

pyspark = pytest.importorskip("pyspark")
from pyspark.sql import DataFrame, SparkSession  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = Path(__file__).parent / "data" / "spark-examples"
QUERIES = sorted(ROOT.glob("queries/*.sql"))
Batches = dict[int, list[tuple]]
_jobs = itertools.count()


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    session = (
        SparkSession.builder.master("local[2]")
        .appName("streamsql-export-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.streaming.forceDeleteTempCheckpointLocation", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


# -- running both engines ------------------------------------------------------------------


def load_job(job: SparkJob, directory: Path) -> ModuleType:
    """The exported script, imported as a module (its main() is not run)."""
    path = directory / f"job_{next(_jobs)}.py"
    path.write_text(job.script)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.ROOT = str(directory / "spark-root")
    return module


class SparkRun:
    """A query of an exported job running in Spark, its batches collected through
    foreachBatch; many run at once, which is how the tests stay fast on two cores."""

    def __init__(self, rows: DataFrame, mode: str, checkpoint: Path) -> None:
        self.batches: Batches = {}
        self.query = (
            rows.writeStream.outputMode(mode)
            .trigger(availableNow=True)
            .option("checkpointLocation", str(checkpoint))
            .foreachBatch(self._collect)
            .start()
        )

    def _collect(self, batch: DataFrame, batch_id: int) -> None:
        self.batches[batch_id] = [tuple(row) for row in batch.collect()]

    def result(self) -> dict[int, list[tuple]]:
        """The normalized batches, once the query has run to its end."""
        self.query.awaitTermination()
        assert self.query.exception() is None
        return normalized(spark_rows_local_to_utc(self.batches))


def streamsql_batches(sql: str, sink: str, database: Path) -> Batches:
    """Every batch streamsql emits for `sink` of the file, through a callback sink."""
    batches: Batches = {}

    def collect(batch_id: int, table: Any) -> None:
        batches[batch_id] = [tuple(row.values()) for row in table.to_pylist()]

    con = streamsql.connect(str(database))
    try:
        con.register_callback("collect", collect)
        for statement in parse(sql):
            node = statement.expression
            kind = node.args.get("kind") if hasattr(node, "args") else None
            if kind == "SOURCE":
                con.cursor().execute_statement(statement)
            query = None
            if kind == "SINK" and node.this.name == sink:
                query = sink_def(node, statement.text).query.sql(DIALECT)
            elif kind is None and sink == f"query_line_{statement.line}":
                query = statement.text
            if query is not None:
                con.execute(
                    "CREATE SINK collected WITH (connector = 'callback', callback = 'collect', "
                    f"trigger = 'available_now') AS {query}"
                )
                assert con.query("collected").await_termination(60)
    finally:
        con.close()
    return batches


def normalized(batches: Batches) -> dict[int, list[tuple]]:
    """Batches that hold rows, each row's values comparable across the engines: times in
    UTC without zone, numbers as numbers, floats to 10 significant digits; rows sorted."""

    def value(v: object) -> object:
        if isinstance(v, dt.datetime):
            return (v.astimezone(dt.UTC) if v.tzinfo else v).replace(tzinfo=None)
        if isinstance(v, float):
            return "nan" if math.isnan(v) else float(f"{v:.10g}")
        if hasattr(v, "as_integer_ratio") and not isinstance(v, bool | int):
            return float(f"{float(v):.10g}")
        return v

    return {
        batch_id: sorted((tuple(value(v) for v in row) for row in rows), key=repr)
        for batch_id, rows in batches.items()
        if rows
    }


def spark_rows_local_to_utc(batches: Batches) -> Batches:
    """PySpark gives TIMESTAMP values as naive datetimes in the Python process's zone."""
    return {
        b: [
            tuple(
                v.astimezone(dt.UTC).replace(tzinfo=None) if isinstance(v, dt.datetime) else v
                for v in row
            )
            for row in rows
        ]
        for b, rows in batches.items()
    }


def copy_inputs(files: list[Path], directory: Path) -> Path:
    """The input files, their modification times in name order: Spark's file source takes
    new files oldest first, streamsql's in name order."""
    directory.mkdir(parents=True)
    for number, file in enumerate(sorted(files)):
        target = directory / file.name
        shutil.copyfile(file, target)
        os.utime(target, (1_700_000_000 + number, 1_700_000_000 + number))
    return directory


@dataclass
class Comparison:
    """One sink of an exported file: running in Spark, and what streamsql emitted."""

    label: str
    spark: SparkRun
    expected: dict[int, list[tuple]]

    def check(self) -> dict[int, list[tuple]]:
        got = self.spark.result()
        assert got == self.expected, self.label
        return got


def start(
    spark: SparkSession,
    sql: str,
    tmp: Path,
    raw: Callable[[ModuleType, str], DataFrame] | None = None,
) -> dict[str, Comparison]:
    """Export `sql`, start every sink's query in Spark and run it in streamsql; `raw` gives
    a sink's source records instead of the job's reader."""
    job = export_spark(sql, "test.sql")
    module = load_job(job, tmp)
    parse_with_spark(spark, job)
    comparisons = {}
    for number, (sink, mode) in enumerate(job.output_modes.items()):
        query, source_rows, read = module.QUERIES[sink]
        records = raw(module, sink) if raw else read(spark)
        run = SparkRun(query(source_rows(records)), mode, tmp / f"checkpoint{number}")
        expected = normalized(streamsql_batches(sql, sink, tmp / f"engine{number}.db"))
        comparisons[sink] = Comparison(f"{tmp.name}: sink {sink}", run, expected)
    return comparisons


def parse_with_spark(spark: SparkSession, job: SparkJob) -> None:
    """Every SQL text of the job is parsed by Spark's own parser (queries as plans)."""
    parser = spark._jsparkSession.sessionState().sqlParser()
    for text in job.sql:
        if text.upper().startswith("SELECT"):
            parser.parsePlan(text)
        else:
            parser.parseExpression(text)


# -- the examples ----------------------------------------------------------------------------

SPARK_SOURCE = """
CREATE SOURCE events (
    user_id BIGINT, event_type VARCHAR, ts TIMESTAMP, amount DOUBLE
    {watermark}
) WITH (connector = 'files', path = '{path}', format = 'json', max_files_per_trigger = 1);
CREATE SINK {name} WITH (connector = 'parquet', path = 'out/{name}') AS {query};
"""


def spark_example_queries() -> dict[str, tuple[bool, str]]:
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_spark_examples import QUERIES as examples
    finally:
        sys.path.pop(0)
    return examples


def test_spark_examples_match_in_spark(spark: SparkSession, tmp_path: Path) -> None:
    """The five non-dedup queries of the Spark recordings over both inputs, exported:
    Spark's batches equal streamsql's, and both equal what Spark 4.3 recorded."""
    runs = {}
    for case in ("c07_boundaries", "c09_sessions"):
        inputs = copy_inputs(list((EXAMPLES / case / "input").iterdir()), tmp_path / case)
        for name, (has_watermark, query) in spark_example_queries().items():
            if name.startswith("dedup"):  # not exported yet (tests/test_export.py)
                continue
            sql = SPARK_SOURCE.format(
                watermark=", WATERMARK FOR ts AS ts - INTERVAL '10 minutes'"
                if has_watermark
                else "",
                path=inputs,
                name=name,
                query=query,
            )
            (tmp_path / f"{case}-{name}").mkdir()
            runs[case, name] = start(spark, sql, tmp_path / f"{case}-{name}")[name]
    for (case, name), run in runs.items():
        recorded = json.loads((EXAMPLES / case / "expected" / f"{name}.json").read_text())
        rows = {
            b["batch_id"]: [recorded_row(r, recorded["columns"]) for r in b["rows"]]
            for b in recorded["batches"]
        }
        assert run.check() == normalized(rows), (case, name)


def recorded_row(row: dict, columns: list[str]) -> tuple:
    """A row of the recordings, its times (Spark's text) as datetimes."""
    return tuple(
        dt.datetime.fromisoformat(row[c])
        if isinstance(row[c], str) and c.startswith(("window_", "session_"))
        else row[c]
        for c in columns
    )


def files_example(path: Path, inputs: Path) -> str:
    """An example of queries/ reading `inputs`, one file per batch."""
    text = path.read_text().replace("'queries/data/events'", repr(str(inputs)))
    text = re.sub(r",\s*max_files_per_trigger = \d+", "", text)
    return re.sub(r"(path = '[^']*')", r"\1, max_files_per_trigger = 1", text, count=1)


# Examples whose sinks read joins, unions or views of sources, or chain operators: not
# exported yet (their refusal is tested in tests/test_export.py; tests/test_chained_spark.py
# runs chains in Spark).
NOT_EXPORTED = {
    "enrichment_join",
    "union_of_two_sources",
    "impressions_clicks_join",
    "chained_windows",
}
FILES_EXAMPLES = [
    p for p in QUERIES if "connector = 'files'" in p.read_text() and p.stem not in NOT_EXPORTED
]


def test_files_examples_match_in_spark(spark: SparkSession, tmp_path: Path) -> None:
    """Every example of queries/ reading files, exported, emits in Spark what it emits in
    streamsql, batch by batch."""
    events = sorted((ROOT / "queries" / "data" / "events").glob("*.jsonl"))
    inputs = copy_inputs(events, tmp_path / "input")
    runs = []
    for path in FILES_EXAMPLES:
        (tmp_path / path.stem).mkdir()
        runs += start(spark, files_example(path, inputs), tmp_path / path.stem).values()
    assert {run.label.split(":")[0] for run in runs} == {p.stem for p in FILES_EXAMPLES}
    assert all([run.check() for run in runs])  # every example emits rows


# -- generated queries -------------------------------------------------------------------------

# 50 at the suite's default of 64 property examples, more when it asks for more
PROPERTY_EXAMPLES = max(int(os.environ.get("STREAMSQL_PROPERTY_EXAMPLES", "64")) * 50 // 64, 50)
AT_ONCE = 16  # Spark queries running together
GENERATED_SOURCE = """
CREATE SOURCE events (
    user_id BIGINT, event_type VARCHAR, ts TIMESTAMP, amount DOUBLE,
    {computed}
    {watermark}
) WITH (connector = 'files', path = '{path}', format = 'json', max_files_per_trigger = 1);
"""
COMPUTED = {
    "bucket": "bucket AS user_id % 3",
    "doubled": "doubled AS amount * 2 + 1",
    "minute": "minute AS date_trunc('minute', ts)",
}
AGGREGATES = [
    "count(*)",
    "count(user_id)",
    "sum(amount)",
    "min(amount)",
    "max(amount)",
    "avg(amount)",
    "count(DISTINCT user_id)",
    "sum(doubled)",
    "max(bucket)",
]
FILTERS = [None, "event_type = 'a'", "amount > 1", "user_id IS NOT NULL", "bucket <> 1"]
WINDOWS = {
    None: "",
    "tumbling": "WINDOW TUMBLING (ts, INTERVAL '5 minutes')",
    "hopping": "WINDOW HOPPING (ts, INTERVAL '10 minutes', INTERVAL '5 minutes')",
    "session": "WINDOW SESSION (ts, INTERVAL '3 minutes')",
}


@st.composite
def generated_cases(draw: st.DrawFn) -> tuple[str, list[list[dict]]]:
    """A file with one source and one sink, and its input files (one per batch)."""
    minute = st.integers(0, 40)
    row = st.fixed_dictionaries(
        {
            "user_id": st.one_of(st.none(), st.integers(0, 5)),
            "event_type": st.sampled_from(["a", "b", None]),
            "ts": st.one_of(
                st.builds(
                    lambda m, s: f"2024-01-01 00:{m:02d}:{s:02d}.000000", minute, st.integers(0, 59)
                ),
                st.just(None) if draw(st.booleans()) else st.nothing(),
            ),
            "amount": st.one_of(st.none(), st.integers(-3, 9).map(float)),
        }
    )
    batches = draw(st.lists(st.lists(row, max_size=4), min_size=1, max_size=3))
    window = draw(st.sampled_from(list(WINDOWS)))
    delay = draw(st.sampled_from([None, 0, 2, 10]))
    grouped = window is not None or draw(st.booleans())
    where = draw(st.sampled_from(FILTERS))
    if not grouped:
        emit = "FINAL"
        select = "SELECT user_id, ts, amount, bucket, doubled FROM events"
        group = ""
    else:
        keys = ["event_type"] if draw(st.booleans()) else []
        if window == "session":
            keys = keys or ["user_id"]
        aggregates = draw(
            st.lists(st.sampled_from(AGGREGATES), min_size=1, max_size=3, unique=True)
        )
        bounds = ["window_start", "window_end"] if window else []
        outputs = bounds + keys + [f"{a} AS a{i}" for i, a in enumerate(aggregates)]
        select = f"SELECT {', '.join(outputs)} FROM events {WINDOWS[window]}"
        group = f" GROUP BY {', '.join(bounds + keys)}" if bounds + keys else ""
        group += draw(st.sampled_from(["", " HAVING count(*) > 1", " HAVING min(amount) < 2"]))
        modes = ["SNAPSHOT"]
        if window != "session":
            modes.append("CHANGES")
        if window and delay is not None:
            modes.append("FINAL")
        emit = draw(st.sampled_from(modes))
    if where:
        select = select.replace(" FROM events", " FROM events", 1)
        select = (
            f"{select} WHERE {where}"
            if "WINDOW" not in select
            else select.replace(" WINDOW", f" WHERE {where} WINDOW", 1)
        )
    watermark = (
        f", WATERMARK FOR ts AS ts - INTERVAL '{delay} minutes'" if delay is not None else ""
    )
    computed = ",\n    ".join(COMPUTED.values())
    source = GENERATED_SOURCE.format(computed=computed, watermark=watermark, path="{path}")
    sink = f"CREATE SINK generated WITH (connector = 'console') AS {select}{group} EMIT {emit};"
    return source + sink, batches


def test_generated_queries_match_in_spark(spark: SparkSession, tmp_path: Path) -> None:
    """Generated queries (window kinds, aggregates, filters, HAVING, computed columns, EMIT
    modes) and inputs: each exported job emits in Spark what streamsql emits, batch by
    batch. The Spark queries run AT_ONCE together, so they are checked after hypothesis
    drew them."""
    pending: list[Comparison] = []

    def check_pending() -> None:
        for comparison in pending:
            comparison.check()
        pending.clear()

    @settings(
        max_examples=PROPERTY_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(generated_cases())
    def export_and_start(case: tuple[str, list[list[dict]]]) -> None:
        sql, batches = case
        directory = tmp_path / f"case{next(_jobs)}"
        inputs = directory / "input"
        inputs.mkdir(parents=True)
        for number, rows in enumerate(batches):
            file = inputs / f"batch_{number:04d}.jsonl"
            file.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.utime(file, (1_700_000_000 + number, 1_700_000_000 + number))
        sql = sql.replace("{path}", str(inputs))
        (directory / "query.sql").write_text(sql)
        for comparison in start(spark, sql, directory).values():
            comparison.label = f"{directory}/query.sql: {sql}"
            pending.append(comparison)
        if len(pending) >= AT_ONCE:
            check_pending()

    export_and_start()
    check_pending()


# -- Kafka -------------------------------------------------------------------------------------

# The options of Spark's Kafka source, as "Structured Streaming + Kafka Integration Guide"
# (Spark 4.3) lists them; the job may also pass `kafka.`-prefixed Kafka consumer settings.
SPARK_KAFKA_SOURCE_OPTIONS = {
    "assign",
    "subscribe",
    "subscribePattern",
    "kafka.bootstrap.servers",
    "startingTimestamp",
    "startingOffsetsByTimestamp",
    "startingOffsets",
    "endingTimestamp",
    "endingOffsetsByTimestamp",
    "endingOffsets",
    "failOnDataLoss",
    "kafkaConsumer.pollTimeoutMs",
    "fetchOffset.numRetries",
    "fetchOffset.retryIntervalMs",
    "maxOffsetsPerTrigger",
    "minOffsetsPerTrigger",
    "maxTriggerDelay",
    "minPartitions",
    "maxRecordsPerPartition",
    "groupIdPrefix",
    "kafka.group.id",
    "includeHeaders",
    "startingOffsetsByTimestampStrategy",
}
# Kafka's consumer configuration names (Kafka documentation, "Consumer Configs"), a subset.
KAFKA_CONSUMER_CONFIGS = {
    "security.protocol",
    "sasl.mechanism",
    "sasl.kerberos.service.name",
    "client.id",
    "request.timeout.ms",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "metadata.max.age.ms",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.max.wait.ms",
    "receive.buffer.bytes",
    "send.buffer.bytes",
    "connections.max.idle.ms",
    "reconnect.backoff.ms",
    "retry.backoff.ms",
    "ssl.key.password",
}
KAFKA_RECORD_SCHEMA = (
    "key BINARY, value BINARY, topic STRING, partition INT, offset BIGINT, "
    "timestamp TIMESTAMP, timestampType INT"
)


def kafka_options(module: ModuleType, reader: str) -> list[str]:
    """The option names the job's Kafka reader gives readStream.format('kafka')."""
    source = inspect.getsource(getattr(module, reader))
    assert ".format('kafka')" in source
    return re.findall(r"\.option\('([^']+)'", source)


def test_kafka_reader_options_are_sparks(spark: SparkSession, tmp_path: Path) -> None:
    """Every option of a Kafka source becomes one of Spark's Kafka options; a secret is read
    from the environment, never written into the script."""
    sql = """
    CREATE SOURCE clicks (
        user_id BIGINT, k VARCHAR METADATA FROM 'key', p INT METADATA FROM 'partition',
        o BIGINT METADATA FROM 'offset', t TIMESTAMP METADATA FROM 'timestamp',
        tt INT METADATA FROM 'timestamp_type',
        h STRUCT(key VARCHAR, value BLOB)[] METADATA FROM 'headers'
    ) WITH (
        connector = 'kafka', bootstrap_servers = 'b1:9092,b2:9092', topic_pattern = 'clicks-.*',
        starting_offsets = 'earliest', max_offsets_per_trigger = 100,
        fail_on_data_loss = false, request_timeout = '20 seconds',
        kafka.security_protocol = 'SASL_SSL', kafka.sasl_mechanism = 'PLAIN',
        kafka.ssl_password = 'hunter22-secret'
    );
    CREATE SINK counts WITH (connector = 'console') AS
    SELECT k, count(*) AS n FROM clicks GROUP BY k EMIT CHANGES;
    """
    job = export_spark(sql, "clicks.sql")
    parse_with_spark(spark, job)  # the decoding of METADATA columns included
    assert any("CAST(`headers` AS ARRAY<STRUCT<key: STRING, value: BINARY>>)" in s for s in job.sql)
    assert "hunter22-secret" not in job.script
    assert "spark-sql-kafka-0-10" in job.script.split('"""')[1]  # the header says so
    module = load_job(job, tmp_path)
    options = kafka_options(module, "read_clicks")
    assert options == [
        "kafka.bootstrap.servers",
        "subscribePattern",
        "startingOffsets",
        "maxOffsetsPerTrigger",
        "failOnDataLoss",
        "kafka.request.timeout.ms",
        "kafka.security.protocol",
        "kafka.sasl.mechanism",
        "kafka.ssl.key.password",
        "includeHeaders",
    ]
    for option in options:
        assert option in SPARK_KAFKA_SOURCE_OPTIONS or (
            option.startswith("kafka.") and option.removeprefix("kafka.") in KAFKA_CONSUMER_CONFIGS
        ), option
    assert "_secret('CLICKS_KAFKA_SSL_KEY_PASSWORD'" in job.script


def kafka_records(broker: Any, topic: str, directory: Path, per_file: int) -> Path:
    """What the broker holds in `topic`, as Parquet files of Spark's Kafka record schema,
    `per_file` offsets a file (a batch of maxOffsetsPerTrigger)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=5000,
    )
    records = sorted(consumer, key=lambda r: (r.partition, r.offset))
    consumer.close()
    assert records
    directory.mkdir(parents=True)
    for number in range(0, len(records), per_file):
        chunk = records[number : number + per_file]
        table = pa.table(
            {
                "key": pa.array([r.key for r in chunk], pa.binary()),
                "value": pa.array([r.value for r in chunk], pa.binary()),
                "topic": [r.topic for r in chunk],
                "partition": pa.array([r.partition for r in chunk], pa.int32()),
                "offset": pa.array([r.offset for r in chunk], pa.int64()),
                "timestamp": pa.array(
                    [r.timestamp * 1000 for r in chunk], pa.timestamp("us", tz="UTC")
                ),
                "timestampType": pa.array([r.timestamp_type for r in chunk], pa.int32()),
            }
        )
        file = directory / f"records_{number:06d}.parquet"
        pq.write_table(table, file)
        os.utime(file, (1_700_000_000 + number, 1_700_000_000 + number))
    return directory


def test_kafka_example_matches_in_spark(
    spark: SparkSession, tmp_path: Path, broker: Any, admin: Any
) -> None:
    """queries/kafka_windows.sql, exported: the job's decoding and query, run over files that
    hold what the broker holds in Kafka's record schema (40 offsets a file: its
    max_offsets_per_trigger over one partition), emit in Spark what streamsql emits reading
    the broker."""
    from kafka import KafkaProducer
    from kafka.admin import NewTopic

    topic = f"user-events-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    rename = {"localhost:9092": broker.bootstrap_servers, "'user-events'": repr(topic)}
    load, sql = (
        functools.reduce(lambda text, pair: text.replace(*pair), rename.items(), path.read_text())
        for path in (ROOT / "queries" / "kafka_load.sql", ROOT / "queries" / "kafka_windows.sql")
    )
    load = load.replace("'queries/data/events'", repr(str(ROOT / "queries" / "data" / "events")))
    out, err = io.StringIO(), io.StringIO()
    assert run_file(load, str(tmp_path / "load.db"), "available_now", out, err) == 0, err.getvalue()
    with KafkaProducer(bootstrap_servers=broker.bootstrap_servers) as producer:
        producer.send(topic, b'{"user_id": "one"}').get(30)  # a dead letter, at offset 240
    records = kafka_records(broker, topic, tmp_path / "records", 40)

    def raw(module: ModuleType, sink: str) -> DataFrame:
        assert set(kafka_options(module, "read_user_events")) <= SPARK_KAFKA_SOURCE_OPTIONS
        return (
            spark.readStream.schema(KAFKA_RECORD_SCHEMA)
            .option("maxFilesPerTrigger", 1)
            .parquet(str(records))
        )

    (run,) = start(spark, sql, tmp_path, raw).values()
    assert len(run.check()) > 3
    module = load_job(export_spark(sql), tmp_path)
    decoded = module.decode_user_events(
        spark.read.schema(KAFKA_RECORD_SCHEMA).parquet(str(records))
    )
    dead = decoded.where("_dead_letter IS NOT NULL").select(
        "_topic", "_partition", "_offset", "_dead_letter"
    )
    assert [tuple(row) for row in dead.collect()] == [(topic, 0, 240, '{"user_id": "one"}')]


# -- sinks -------------------------------------------------------------------------------------

SINKS = """
CREATE SOURCE events (
    user_id BIGINT, event_type VARCHAR, timestamp BIGINT,
    event_time AS to_timestamp(timestamp / 1000),
    WATERMARK FOR event_time AS event_time - INTERVAL '10 minutes'
) WITH (connector = 'files', path = '{inputs}', format = 'json', max_files_per_trigger = 1);
CREATE SINK windows_parquet WITH (connector = 'parquet', path = '{out}/parquet',
    trigger = 'available_now') AS {windows};
CREATE SINK windows_table WITH (connector = 'duckdb', trigger = 'available_now') AS {windows};
CREATE SINK purchases_csv WITH (connector = 'csv', path = '{out}/csv', delimiter = ';',
    trigger = 'available_now') AS {purchases};
CREATE SINK purchases_json WITH (connector = 'json', path = '{out}/json',
    trigger = 'available_now') AS {purchases};
CREATE SINK totals_snapshot WITH (connector = 'duckdb', trigger = 'available_now') AS
    SELECT event_type, count(*) AS n FROM events GROUP BY event_type EMIT SNAPSHOT;
CREATE SINK totals_changes WITH (connector = 'duckdb', changelog = true,
    trigger = 'available_now') AS
    SELECT event_type, count(*) AS n FROM events GROUP BY event_type EMIT CHANGES;
CREATE SINK called WITH (connector = 'callback', callback = 'export_callback:collect',
    trigger = 'available_now') AS {purchases};
"""
SINK_WINDOWS = (
    "SELECT window_start, window_end, event_type, count(*) AS n FROM events "
    "WINDOW TUMBLING (event_time, INTERVAL '5 minutes') "
    "GROUP BY window_start, window_end, event_type EMIT FINAL"
)
SINK_PURCHASES = "SELECT user_id, event_type FROM events WHERE event_type = 'purchase'"
CALLBACK = """
BATCHES = []


def collect(batch_id, table):
    BATCHES.append((batch_id, table.to_pylist()))
"""


def plain(rows: Any) -> list[tuple]:
    """Rows sorted, their times naive UTC (a Parquet file of Spark's reads as TIMESTAMPTZ)."""
    return sorted(
        (
            tuple(
                v.astimezone(dt.UTC).replace(tzinfo=None)
                if isinstance(v, dt.datetime) and v.tzinfo
                else v
                for v in row
            )
            for row in rows
        ),
        key=repr,
    )


def rows_of(sql: str) -> list[tuple]:
    with duckdb.connect() as con:
        return plain(con.execute(sql).fetchall())


def test_sinks_write_what_streamsql_writes(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each sink connector's Spark writer, run by the job's own start functions: file sinks,
    duckdb tables (Parquet under ROOT, by batch id), a changelog, a snapshot, a callback;
    and the dead letters of a line that does not decode."""
    events = sorted((ROOT / "queries" / "data" / "events").glob("*.jsonl"))[:3]
    inputs = copy_inputs(events, tmp_path / "input")
    bad = inputs / "events_0009.jsonl"
    bad.write_text('{"user_id": "not a number", "event_type": "click", "timestamp": 1}\n')
    os.utime(bad, (1_800_000_000, 1_800_000_000))
    out = tmp_path / "out"
    sql = SINKS.format(inputs=inputs, out=out, windows=SINK_WINDOWS, purchases=SINK_PURCHASES)
    (tmp_path / "export_callback.py").write_text(CALLBACK)
    monkeypatch.syspath_prepend(str(tmp_path))
    import export_callback

    module = load_job(export_spark(sql, "sinks.sql"), tmp_path)
    queries = [getattr(module, name)(spark) for name in dir(module) if name.startswith("start_")]
    assert len(queries) == 8  # seven sinks, and the source's dead letters
    for query in queries:
        query.awaitTermination()
        assert query.exception() is None
    expected = {
        name: streamsql_batches(sql, name, tmp_path / f"{name}.db")
        for name in ("windows_parquet", "purchases_csv", "totals_snapshot", "totals_changes")
    }
    every = {
        name: plain(r for rows in batches.values() for r in rows)
        for name, batches in expected.items()
    }
    root = module.ROOT
    windows = every["windows_parquet"]
    assert windows and rows_of(f"SELECT * FROM read_parquet('{out}/parquet/*.parquet')") == windows
    assert (
        rows_of(
            f"SELECT window_start, window_end, event_type, n FROM "
            f"read_parquet('{root}/tables/windows_table/*/*.parquet')"
        )
        == windows
    )
    purchases = every["purchases_csv"]
    assert rows_of(f"SELECT * FROM read_csv('{out}/csv/*.csv', delim = ';')") == purchases
    assert rows_of(f"SELECT user_id, event_type FROM read_json('{out}/json/*.json')") == purchases
    called = [tuple(row.values()) for _, rows in export_callback.BATCHES for row in rows]
    assert plain(called) == purchases
    snapshot = expected["totals_snapshot"][max(expected["totals_snapshot"])]
    assert rows_of(
        f"SELECT * FROM read_parquet('{root}/tables/totals_snapshot/*.parquet')"
    ) == plain(snapshot)
    assert rows_of(
        f"SELECT _batch_id, event_type, n FROM "
        f"read_parquet('{root}/tables/totals_changes/*/*.parquet', hive_partitioning = true)"
    ) == plain((b, *r) for b, rows in expected["totals_changes"].items() for r in rows)
    assert rows_of(f"SELECT file, raw FROM read_json('{root}/dead_letters/events/*.json')") == [
        (f"file://{bad}", bad.read_text().strip())
    ]


# -- translation, checked by Spark ---------------------------------------------------------------

VALUES = [
    # id, ts, ms, list, s, x, y, g
    (1, dt.datetime(2024, 1, 1, 0, 4, 59, 999999), 1704067200123, [1, 2], "ab", 1, 3, "a"),
    (2, dt.datetime(2000, 1, 2, 23, 59), -1500, [], "", 2, None, "a"),
    (3, dt.datetime(1969, 12, 31, 23, 58, 1), 0, None, None, None, 1, "a"),
    (4, dt.datetime(2024, 2, 29, 12, 0), 1, [3], "x", 2, 2, "b"),
    (5, dt.datetime(2024, 2, 29, 12, 7), None, [4, 5, 6], "yz", None, None, "c"),
]
SCALARS = [
    "time_bucket(INTERVAL 5 minute, ts)",
    "time_bucket(INTERVAL 7 day, ts)",
    "to_timestamp(ms / 1000)",
    "epoch_ms(ts)",
    "epoch_ms(ms)",
    "len(list)",
    "len(s)",
    "CAST(x AS HUGEINT) * 3",
    "CAST(x AS UTINYINT)",
]
AGGREGATES_BY_GROUP = [
    "array_agg(x ORDER BY y)",
    "count(DISTINCT x)",
    "count_if(x > 1)",
    "count_if(y > 5)",
]


def test_spark_functions_are_spark_43s(spark: SparkSession) -> None:
    """The function list export checks names against is this Spark's."""
    from streamsql.export.translate import SPARK_FUNCTIONS

    assert {row[0] for row in spark.sql("SHOW FUNCTIONS").collect()} == SPARK_FUNCTIONS


def test_rewrites_compute_what_duckdb_computes(spark: SparkSession) -> None:
    """Each rewrite, run by Spark, gives DuckDB's values over the same rows (NULLs, empty
    lists, times before 1970 and before DuckDB's bucket origin included)."""
    from streamsql.export.translate import Typer, to_spark
    from streamsql.sql import parse_expression

    columns = "id INT, ts TIMESTAMP, ms BIGINT, list INT[], s VARCHAR, x INT, y INT, g VARCHAR"
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE TABLE t ({columns})")
    con.executemany(f"INSERT INTO t VALUES ({', '.join('?' * 8)})", VALUES)
    typer = Typer(con, "SELECT * FROM t LIMIT 0")
    spark.createDataFrame(
        VALUES,
        "id INT, ts TIMESTAMP, ms BIGINT, list ARRAY<INT>, s STRING, x INT, y INT, g STRING",
    ).createOrReplaceTempView("t")
    for expressions, key, group in ((SCALARS, "id", ""), (AGGREGATES_BY_GROUP, "g", " GROUP BY g")):
        translated = [to_spark(parse_expression(e), typer) for e in expressions]
        query = f"SELECT {key}, {{}} FROM t{group} ORDER BY {key}"
        expected = con.execute(query.format(", ".join(expressions))).fetchall()
        got = spark.sql(query.format(", ".join(translated))).collect()
        for column, pair in enumerate(zip(expressions, translated, strict=True), 1):
            assert plain((r[0], r[column]) for r in got) == plain(
                (r[0], r[column]) for r in expected
            ), pair


def test_kafka_sink_writer_builds_its_messages(spark: SparkSession, tmp_path: Path) -> None:
    """queries/kafka_load.sql's Kafka sink, exported: the job's messages have the key, value
    and headers of streamsql's Kafka sink; the write itself needs Spark's Kafka connector
    (not downloadable here: its absence is the one error)."""
    job = export_spark((ROOT / "queries" / "kafka_load.sql").read_text())
    assert "org.apache.spark:spark-sql-kafka-0-10_2.13:4.3.0" in job.script.split('"""')[1]
    module = load_job(job, tmp_path)
    writer = re.search(r"\.foreachBatch\((_kafka_writer\(.*\))\)\n", job.script).group(1)
    assert writer.endswith("'user_events', 'json', 'user_id', {})")
    batch = spark.createDataFrame(
        [(7, "click", 1704067200000)], "user_id BIGINT, event_type STRING, timestamp BIGINT"
    )
    messages = module._kafka_messages(batch, 3, "user_events", "json", "user_id").collect()
    ((key, value, headers),) = messages
    assert key == "7"
    assert json.loads(value) == {"user_id": 7, "event_type": "click", "timestamp": 1704067200000}
    assert [(h["key"], bytes(h["value"])) for h in headers] == [
        ("streamsql.query", b"user_events"),
        ("streamsql.batch_id", b"3"),
    ]
    with pytest.raises(Exception, match=r"(?i)data source.*kafka|kafka.*not found"):
        eval(writer, vars(module))(batch, 3)


def test_global_aggregate_changes_emit_as_streamsql_does(
    spark: SparkSession, tmp_path: Path
) -> None:
    """EMIT CHANGES of an aggregate without GROUP BY: streamsql emits in the batches whose
    rows reach it; Spark's update mode would emit the one row every batch (an empty batch
    and one whose rows WHERE removes too), which the job's constant key prevents."""
    inputs = tmp_path / "input"
    inputs.mkdir()
    for number, rows in enumerate([[{"amount": 0.0}], [], [{"amount": 5.0}], [{"amount": 1.0}]]):
        file = inputs / f"batch_{number}.jsonl"
        file.write_text("".join(json.dumps(row) + "\n" for row in rows))
        os.utime(file, (1_700_000_000 + number, 1_700_000_000 + number))
    sql = (
        "CREATE SOURCE events (amount DOUBLE) WITH (connector = 'files', "
        f"path = '{inputs}', format = 'json', max_files_per_trigger = 1);\n"
        "CREATE SINK total WITH (connector = 'console') AS "
        "SELECT avg(amount) AS a, count(*) AS n FROM events WHERE amount > 1 EMIT CHANGES;"
    )
    (run,) = start(spark, sql, tmp_path).values()
    assert run.check() == {2: [(5.0, 1)]}
