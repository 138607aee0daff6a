"""A streamsql file as a PySpark Structured Streaming job: one streaming query per sink.

The file is read as `streamsql run` reads it: sources are created in a scratch engine (their
options checked), every query is planned by the engine's planner, so the job exports only
what streamsql would run, classified as the engine classifies it. Every option value enters
the script as a Python literal (repr), never as SQL text; every SQL text in the job is an
expression translated by streamsql.export.translate.
"""

from __future__ import annotations

import contextlib
import keyword
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlglot import exp

import streamsql
from streamsql.catalog.binding import sink_def
from streamsql.catalog.definitions import INTERNAL_PREFIX, Emit, SinkDef, SourceDef
from streamsql.engine import Engine
from streamsql.engine.statements import create_view, push_query
from streamsql.errors import PlanningError, ProgrammingError
from streamsql.export.report import Difference, ExportRefused
from streamsql.export.translate import Typer, to_spark
from streamsql.format import format_duration, parse_seconds
from streamsql.plan.plan import QueryKind, Scan, StreamingPlan
from streamsql.plan.planner import WINDOW_COLUMNS, Planner
from streamsql.quoting import quote
from streamsql.runtime.triggers import Trigger, TriggerKind
from streamsql.secrets import is_secret
from streamsql.sql import Statement, parse, position_of

OUTPUT_MODES = {Emit.FINAL: "append", Emit.CHANGES: "update", Emit.SNAPSHOT: "complete"}
KAFKA_PACKAGE = "org.apache.spark:spark-sql-kafka-0-10_2.13:4.3.0"
DELTA_PACKAGE = "io.delta:delta-spark_2.13:4.0.0"
SOURCE_MARKER = f"{INTERNAL_PREFIX}source"  # the source relation in a query's SQL, for now
CORRUPT = "_corrupt_record"  # Spark's column for a record that does not decode
DEAD_LETTER = "_dead_letter"
# Aggregates Spark computes in a streaming aggregation as DuckDB does: DuckDB name -> how
# many arguments Spark takes (count(*) counts its star).
AGGREGATES = {
    "count": 1,
    "count_if": 1,
    "sum": 1,
    "min": 1,
    "max": 1,
    "avg": 1,
    "mean": 1,
    "any_value": 1,
    "bool_and": 1,
    "bool_or": 1,
    "arg_max": 2,
    "arg_min": 2,
    "max_by": 2,
    "min_by": 2,
    "stddev": 1,
    "stddev_samp": 1,
    "stddev_pop": 1,
    "variance": 1,
    "var_samp": 1,
    "var_pop": 1,
}
# Kafka source options and the Spark option each becomes.
KAFKA_OPTIONS = {
    "topic": "subscribe",
    "topic_pattern": "subscribePattern",
    "starting_offsets": "startingOffsets",
    "max_offsets_per_trigger": "maxOffsetsPerTrigger",
    "fail_on_data_loss": "failOnDataLoss",
    "request_timeout": "kafka.request.timeout.ms",
}
# kafka-python settings (`kafka.<name>`) and the Java client's name of the same setting.
KAFKA_SETTINGS = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_kerberos_service_name": "sasl.kerberos.service.name",
    "client_id": "client.id",
    "request_timeout_ms": "request.timeout.ms",
    "session_timeout_ms": "session.timeout.ms",
    "heartbeat_interval_ms": "heartbeat.interval.ms",
    "metadata_max_age_ms": "metadata.max.age.ms",
    "max_partition_fetch_bytes": "max.partition.fetch.bytes",
    "fetch_max_bytes": "fetch.max.bytes",
    "fetch_min_bytes": "fetch.min.bytes",
    "fetch_max_wait_ms": "fetch.max.wait.ms",
    "receive_buffer_bytes": "receive.buffer.bytes",
    "send_buffer_bytes": "send.buffer.bytes",
    "connections_max_idle_ms": "connections.max.idle.ms",
    "reconnect_backoff_ms": "reconnect.backoff.ms",
    "retry_backoff_ms": "retry.backoff.ms",
    "ssl_password": "ssl.key.password",
}
# Kafka METADATA keys and Spark's Kafka columns.
KAFKA_COLUMNS = {
    "key": "key",
    "topic": "topic",
    "partition": "partition",
    "offset": "offset",
    "timestamp": "timestamp",
    "timestamp_type": "timestampType",
    "headers": "headers",
}


@dataclass
class SparkJob:
    """The exported script and what it holds: every Spark SQL text in it (for checking with
    Spark's own parser), each sink's output mode, and the compatibility report."""

    script: str
    sql: list[str] = field(default_factory=list)
    output_modes: dict[str, str] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)


def spark_type(type_: str, typer: Typer) -> str:
    """A DuckDB column type as the Spark type of a schema."""
    return to_spark(exp.DataType.build(type_, dialect="duckdb"), typer)


def quoted(name: str) -> str:
    """A Spark SQL identifier, always quoted."""
    return "`" + name.replace("`", "``") + "`"


class _Names:
    """Python identifiers for the job's functions, from SQL names of any spelling."""

    def __init__(self) -> None:
        self.taken: set[str] = set()
        self.given: dict[tuple[str, str], str] = {}

    def __call__(self, prefix: str, name: str) -> str:
        if (prefix, name) not in self.given:
            base = prefix + "_" + re.sub(r"\W", "_", name.lower())
            candidate, number = base, 1
            while candidate in self.taken or keyword.iskeyword(candidate):
                number += 1
                candidate = f"{base}_{number}"
            self.taken.add(candidate)
            self.given[(prefix, name)] = candidate
        return self.given[(prefix, name)]


@dataclass
class _Sink:
    definition: SinkDef
    line: int
    plan: StreamingPlan
    push: bool = False  # a bare SELECT: `streamsql run` prints its rows


class _Exporter:
    """Reads a file's statements as `streamsql run` would, then writes the job's code."""

    def __init__(self, engine: Engine, cursor: streamsql.Cursor, root: str) -> None:
        self.engine = engine
        self.cursor = cursor
        self.root = root
        self.sources: dict[str, tuple[SourceDef, int]] = {}
        self.sinks: list[_Sink] = []
        self.differences: list[Difference] = []
        self.sql: list[str] = []
        self.names = _Names()
        self.helpers: dict[str, str] = {}
        self.packages: set[str] = set()

    # -- reading the file ----------------------------------------------------------------

    def read(self, statements: list[Statement]) -> None:
        for statement in statements:
            node = statement.expression
            kind = node.args.get("kind") if isinstance(node, exp.Create) else None
            if kind == "SOURCE":
                self.cursor.execute_statement(statement)
                name = node.this.this.name
                self.sources[name.lower()] = (self.engine.sources[name.lower()], statement.line)
            elif kind == "SINK":
                self._sink(statement)
            elif self.engine.handler(statement) is create_view:
                # A view over streams: the queries that read it are what export judges.
                self.cursor.execute_statement(statement)
            elif self.engine.handler(statement) is push_query:
                definition = SinkDef(
                    f"query_line_{statement.line}", {"connector": "console"}, node, statement.text
                )
                self._add_sink(definition, statement.line, push=True)
            else:
                self._differ(
                    "statement",
                    f"statement at line {statement.line}",
                    f"{' '.join(statement.text.split(None, 2)[:2])} runs in streamsql's DuckDB "
                    "database, which a Spark job does not have",
                    left_out=True,
                )

    def _sink(self, statement: Statement) -> None:
        create = statement.expression
        where = f"sink {create.this.name} (line {statement.line})"
        query = create.expression
        single = self._single_source(query)
        if single:
            self._differ(single[0], where, single[1], left_out=True)
            return
        definition = sink_def(create, statement.text)
        if definition.connector != "callback":
            self.engine._sink(definition)  # every option checked, as CREATE SINK checks them
        self._add_sink(definition, statement.line)

    @staticmethod
    def _single_source(query: exp.Expr | None) -> tuple[str, str] | None:
        """Why export leaves out a query over several sources or deduplicating rows; the
        engine's planner may run them, but their Spark translation is not written yet."""
        if isinstance(query, exp.SetOperation):
            return "several-sources", "UNION/INTERSECT/EXCEPT of streams is not exported yet"
        if isinstance(query, exp.Select) and query.args.get("joins"):
            return "several-sources", "joins of streams are not exported yet"
        if isinstance(query, exp.Select) and query.args.get("distinct"):
            return "deduplication", "SELECT DISTINCT (deduplication) is not exported yet"
        return None

    def _add_sink(self, definition: SinkDef, line: int, push: bool = False) -> None:
        plan = self.engine.plan(definition.query)
        where = f"sink {definition.name} (line {line})"
        if plan.upstream is not None:
            self._differ(
                "chained-operators",
                where,
                "a query over the rows of another stateful operator (chained operators) is "
                "not exported yet",
                left_out=True,
            )
            return
        if plan.relation is not None or len(plan.scans) != 1:
            self._differ(
                "several-sources",
                where,
                "a query over a subquery, CTE, view, UNION ALL or join of streams is not "
                "exported yet",
                left_out=True,
            )
            return
        if plan.kind is QueryKind.DEDUPLICATE:
            self._differ("deduplication", where, "deduplication is not exported yet", left_out=True)
            return
        source, _ = self.sources[plan.scans[0].name.lower()]
        if source.connector == "memory":
            self._differ(
                "memory-source",
                where,
                f"source {source.name} is a memory source, whose rows are inserted into this "
                "process; Spark has no such source",
                left_out=True,
            )
            return
        reference = definition.options.get("callback", "")
        if definition.connector == "callback" and ":" not in reference:
            self._differ(
                "registered-callback",
                where,
                f"callback {reference!r} is registered on a connection of this process; a "
                "Spark job can call only an importable 'package.module:function'",
                left_out=True,
            )
            return
        self.sinks.append(_Sink(definition, line, plan, push))

    def _differ(self, feature: str, where: str, why: str, left_out: bool = False) -> None:
        self.differences.append(Difference(feature, where, why, left_out))

    # -- writing the job -----------------------------------------------------------------

    def typer(self, scan: Scan, window: str | None) -> Typer:
        """Types of the columns a query over `scan`'s source sees, for the type-led
        rewrites."""
        return Typer(self.engine.db, Planner.empty_query([(scan.view, scan)], window))

    def spark_sql(self, node: exp.Expr, typer: Typer) -> str:
        text = to_spark(node, typer)
        self.sql.append(text)
        return text

    def script(self, file_name: str, job_file: str) -> str:
        used = {s.plan.scans[0].name.lower() for s in self.sinks}
        sources = [self.sources[name] for name in self.sources if name in used]
        parts = [self._source_code(source, line) for source, line in sources]
        parts += [self._sink_code(sink) for sink in self.sinks]
        starts = [self.names("start", s.definition.name) for s in self.sinks]
        starts += [
            self.names("start", f"{source.name}_dead_letters")
            for source, _ in sources
            if self._keeps_dead_letters(source)
        ]
        modes = {s.definition.name: OUTPUT_MODES[s.plan.emit] for s in self.sinks}
        body = "\n\n\n".join([*self.helpers.values(), *parts])
        queries = ", ".join(
            f"{s.definition.name!r}: ({self.names('query', s.definition.name)}, "
            f"{self.names('rows', s.plan.scans[0].name)}, "
            f"{self.names('read', s.plan.scans[0].name)})"
            for s in self.sinks
        )
        return "\n".join(
            [
                self._header(file_name, job_file),
                "",
                "from __future__ import annotations",
                "",
                "import os",
                "",
                "from pyspark.sql import DataFrame, SparkSession",
                "from pyspark.sql import functions as F",
                "from pyspark.sql.streaming import StreamingQuery",
                "",
                f"ROOT = os.environ.get('STREAMSQL_ROOT', {self.root!r})",
                f"OUTPUT_MODES = {modes!r}",
                "",
                "",
                body,
                "",
                "",
                "# Each sink's query, the rows of the source it reads, and that source's reader.",
                f"QUERIES = {{{queries}}}",
                "",
                "",
                "def main() -> None:",
                '    """Start every query of the file and wait for them, as `streamsql run`."""',
                "    spark = (",
                "        SparkSession.builder.appName(" + repr(file_name) + ")",
                "        # streamsql's TIMESTAMP values are UTC: so are Spark's in this job",
                "        .config('spark.sql.session.timeZone', 'UTC')",
                "        # Parquet timestamps as DuckDB, pyarrow and Delta read them",
                "        .config('spark.sql.parquet.outputTimestampType', 'TIMESTAMP_MICROS')",
                "        .getOrCreate()",
                "    )",
                *(f"    {start}(spark)" for start in starts),
                "    spark.streams.awaitAnyTermination()",
                "    for query in spark.streams.active:",
                "        query.awaitTermination()",
                "",
                "",
                "if __name__ == '__main__':",
                "    main()",
                "",
            ]
        )

    def _header(self, file_name: str, job_file: str) -> str:
        packages = sorted(self.packages)
        submit = " ".join(
            ["spark-submit", *(["--packages", ",".join(packages)] if packages else []), job_file]
        )
        lines = [
            f"PySpark Structured Streaming job exported by streamsql {streamsql.__version__} "
            f"from {file_name}.",
            "",
            "One streaming query per sink of the file, computing the rows streamsql computes.",
            f"Run it with:  {submit}",
            "Needs: Spark 4.3 (pyspark)"
            + (f" and the packages {', '.join(packages)}" if packages else "")
            + ".",
            f"Checkpoints, tables and dead letters live under ROOT ({self.root!r}; the",
            "environment variable STREAMSQL_ROOT overrides it).",
            "Secret options are read from the environment or the Spark conf when the job",
            "starts (see _secret); none is written here.",
            "Spark's file source picks up new files in modification-time order, streamsql in",
            "name order: the batches are the same when files arrive in name order.",
        ]
        if self.differences:
            lines += ["", "COMPATIBILITY REPORT (exported with --allow-differences):"]
            lines += [f"- {difference}" for difference in self.differences]
        text = "\n".join(lines).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
        return f'"""{text}\n"""'

    def _helper(self, name: str, code: str) -> str:
        self.helpers.setdefault(name, code)
        return name

    def _secret(self, owner: str, option: str) -> str:
        """Python code that reads a secret option's value when the job starts."""
        self._helper("_secret", SECRET_HELPER)
        variable = re.sub(r"\W", "_", f"{owner}_{option}").upper()
        return f"_secret({variable!r}, {f'spark.streamsql.{owner}.{option}'!r}, spark)"

    # -- sources -------------------------------------------------------------------------

    @staticmethod
    def _keeps_dead_letters(source: SourceDef) -> bool:
        return source.options.get("on_error", "dead_letter") == "dead_letter" and (
            source.connector == "kafka" or source.options.get("format", "json") != "parquet"
        )

    def _source_code(self, source: SourceDef, line: int) -> str:
        typer = self.typer(Scan(source, "__source", []), None)
        where = f"source {source.name} (line {line})"
        if "dead_letter_retention" in source.options:
            self._differ(
                "dead-letter-retention",
                where,
                "dead letters are written to ROOT/dead_letters and kept until deleted; Spark "
                "has no retention for them",
            )
        read = self.names("read", source.name)
        decode = self.names("decode", source.name)
        rows = self.names("rows", source.name)
        if source.connector == "kafka":
            reader, parse_step, columns = self._kafka_source(source, typer, where)
        else:
            reader, parse_step, columns = self._files_source(source, typer)
        computed = [
            f"{self.spark_sql(c.expression, typer)} AS {quoted(c.name)}" for c in source.computed
        ]
        self.sql.append(f"SELECT {', '.join(columns)}")
        decoder = [
            *parse_step,
            f"    columns = records.selectExpr({', '.join(map(repr, columns))})",
            f"    return columns.selectExpr('*', {', '.join(map(repr, computed))})"
            if computed
            else "    return columns",
        ]
        computed_names = [quoted(c.name) for c in source.computed]
        declared = [quoted(c.name) for c in source.columns]
        mode = source.options.get("on_error", "dead_letter")
        code = [
            f"def {read}(spark: SparkSession) -> DataFrame:",
            f'    """The records of source {source.name} (line {line}), as Spark reads them."""',
            *reader,
            "",
            "",
            f"def {decode}(records: DataFrame) -> DataFrame:",
            f'    """Source {source.name}\'s columns, computed columns included, and',
            f"    {DEAD_LETTER}: the raw record when it does not decode to the declared types",
            '    (NULL when it does)."""',
            *decoder,
            "",
            "",
            f"def {rows}(records: DataFrame) -> DataFrame:",
            f'    """The rows of source {source.name}: the records that decode',
            f'    (on_error = {mode})."""',
            f"    decoded = {decode}(records).where({DEAD_LETTER + ' IS NULL'!r})",
            f"    return decoded.selectExpr({', '.join(map(repr, declared + computed_names))})",
        ]
        if self._keeps_dead_letters(source):
            code += self._dead_letters(source, read, decode)
        return "\n".join(code)

    def _files_source(
        self, source: SourceDef, typer: Typer
    ) -> tuple[list[str], list[str], list[str]]:
        """The reader of a files source, and the columns of its records (no parsing step:
        Spark's file reader decodes)."""
        options = source.options
        fmt = options.get("format", "json")
        schema = [f"{quoted(c.name)} {spark_type(c.type, typer)}" for c in source.columns]
        reader_options: dict[str, object] = {}
        if fmt != "parquet":
            schema.append(f"{quoted(CORRUPT)} STRING")
            reader_options["columnNameOfCorruptRecord"] = CORRUPT
            failing = options.get("on_error") == "fail"
            reader_options["mode"] = "FAILFAST" if failing else "PERMISSIVE"
        if fmt == "csv":
            reader_options["header"] = options.get("header", "true").lower()
            reader_options["sep"] = options.get("delimiter", ",")
            reader_options["nanValue"] = options.get("nan_value", "NaN")
            if "null_value" in options:
                reader_options["nullValue"] = options["null_value"]
        if "pattern" in options:
            reader_options["pathGlobFilter"] = options["pattern"]
        if "max_files_per_trigger" in options:
            reader_options["maxFilesPerTrigger"] = int(options["max_files_per_trigger"])
        reader = [
            "    return (",
            f"        spark.readStream.format({fmt!r})",
            f"        .schema({', '.join(schema)!r})",
            *(f"        .option({key!r}, {value!r})" for key, value in reader_options.items()),
            f"        .load({options['path']!r})",
            "    )",
        ]
        names = [quoted(c.name) for c in source.columns]
        raw = (
            _dead_letter(names, f"{quoted(CORRUPT)} IS NOT NULL", quoted(CORRUPT))
            if fmt != "parquet"
            else f"CAST(NULL AS STRING) AS {DEAD_LETTER}"
        )
        columns = [*names, raw, "input_file_name() AS _file"]
        return reader, [], columns

    def _kafka_source(
        self, source: SourceDef, typer: Typer, where: str
    ) -> tuple[list[str], list[str], list[str]]:
        self.packages.add(KAFKA_PACKAGE)
        options = source.options
        spark_options: list[tuple[str, str]] = [
            ("kafka.bootstrap.servers", repr(options["bootstrap_servers"]))
        ]
        for key, value in options.items():
            if key in KAFKA_OPTIONS:
                text = value
                if key == "request_timeout":
                    text = str(int(parse_seconds(value) * 1000))
                spark_options.append((KAFKA_OPTIONS[key], repr(text)))
            elif key.startswith("kafka."):
                setting = key.removeprefix("kafka.").replace(".", "_")
                if setting not in KAFKA_SETTINGS:
                    self._differ(
                        "kafka-setting",
                        where,
                        f"{key} has no setting of Kafka's Java client that Spark passes on; "
                        "it is left out of the job",
                    )
                    continue
                name = f"kafka.{KAFKA_SETTINGS[setting]}"
                value_code = self._secret(source.name, name) if is_secret(key) else repr(value)
                spark_options.append((name, value_code))
        if "group_id" in options:
            self._differ(
                "consumer-group",
                where,
                "group_id commits the read offsets to a consumer group; Spark keeps offsets in "
                "its checkpoint and commits none (lag dashboards see no progress)",
            )
        if "starting_offsets" not in options:
            spark_options.append(("startingOffsets", repr("latest")))
        headers = any(c.metadata == "headers" for c in source.columns)
        if headers:
            spark_options.append(("includeHeaders", repr("true")))
        reader = [
            "    return (",
            "        spark.readStream.format('kafka')",
            *(f"        .option({key!r}, {value})" for key, value in spark_options),
            "        .load()",
            "    )",
        ]
        values = [c for c in source.columns if c.metadata is None]
        fmt = options.get("format", "json")
        columns = [
            f"CAST({quoted(KAFKA_COLUMNS[c.metadata])} AS {spark_type(c.type, typer)}) "
            f"AS {quoted(c.name)}"
            for c in source.columns
            if c.metadata is not None
        ]
        if fmt == "raw":
            value = values[0]
            columns.append(
                f"CAST(value AS {spark_type(value.type, typer)}) AS {quoted(value.name)}"
            )
            columns.append(f"CAST(NULL AS STRING) AS {DEAD_LETTER}")
            parse_step: list[str] = []
        else:
            ddl = ", ".join(
                [f"{quoted(c.name)} {spark_type(c.type, typer)}" for c in values]
                + [f"{quoted(CORRUPT)} STRING"]
            )
            failing = options.get("on_error") == "fail"
            parse_options = {
                "mode": "FAILFAST" if failing else "PERMISSIVE",
                "columnNameOfCorruptRecord": CORRUPT,
            }
            if fmt == "csv":
                parse_options["sep"] = options.get("delimiter", ",")
            option_map = ", ".join(
                f"{_sql_string(k)}, {_sql_string(v)}" for k, v in parse_options.items()
            )
            function = "from_csv" if fmt == "csv" else "from_json"
            decoded = (
                f"{function}(CAST(value AS STRING), {_sql_string(ddl)}, map({option_map})) "
                "AS _decoded"
            )
            parse_step = [f"    records = records.selectExpr('*', {decoded!r})"]
            self.sql.append(decoded.removesuffix(" AS _decoded"))
            columns += [f"_decoded.{quoted(c.name)} AS {quoted(c.name)}" for c in values]
            fields = [f"_decoded.{quoted(c.name)}" for c in values]
            failed = f"value IS NULL OR _decoded.{quoted(CORRUPT)} IS NOT NULL"
            columns.append(_dead_letter(fields, failed, "CAST(value AS STRING)"))
        columns += ["topic AS _topic", "partition AS _partition", "offset AS _offset"]
        return reader, parse_step, columns

    def _dead_letters(self, source: SourceDef, read: str, decode: str) -> list[str]:
        name = f"{source.name}_dead_letters"
        start = self.names("start", name)
        origin = (
            ["_topic AS topic", "_partition AS partition", "_offset AS offset"]
            if source.connector == "kafka"
            else ["_file AS file"]
        )
        columns = [repr(c) for c in [*origin, f"{DEAD_LETTER} AS raw"]]
        trigger = self._trigger_code(self._source_trigger(source))
        return [
            "",
            "",
            f"def {start}(spark: SparkSession) -> StreamingQuery:",
            f'    """Records of source {source.name} that do not decode, with where they came',
            '    from (streamsql\'s dead letters), as JSON files under ROOT/dead_letters."""',
            "    return (",
            f"        {decode}({read}(spark))",
            f"        .where({DEAD_LETTER + ' IS NOT NULL'!r})",
            f"        .selectExpr({', '.join(columns)})",
            f"        .writeStream.queryName({name!r})",
            *(f"        {line}" for line in trigger),
            f"        .option('checkpointLocation', f'{{ROOT}}/checkpoints/{name}')",
            f"        .format('json').option('path', f'{{ROOT}}/dead_letters/{source.name}')",
            "        .start()",
            "    )",
        ]

    def _source_trigger(self, source: SourceDef) -> Trigger:
        """The dead-letter query runs as the first sink reading the source does."""
        sink = next(s for s in self.sinks if s.plan.scans[0].name.lower() == source.name.lower())
        return Trigger.parse(sink.definition.options.get("trigger"))

    # -- queries -------------------------------------------------------------------------

    def _query_sql(self, sink: _Sink, typer: Typer) -> str:
        plan = sink.plan
        select = plan.select.copy()
        for key in ("stream_window", "emit"):
            select.set(key, None)
        alias = exp.TableAlias(this=exp.to_identifier(plan.alias))
        marker = exp.Table(this=exp.to_identifier(SOURCE_MARKER), alias=alias)
        select.args["from_"].set("this", marker)
        self._check_aggregates(plan)
        window = plan.window
        bound = "session_window" if window and window.kind == "SESSION" else "window"
        if window:
            where_clause = select.args.get("where")
            if where_clause is not None:
                above, below = _split_on_bounds(where_clause.this)
                if above is not None:
                    having = select.args.get("having")
                    condition = exp.and_(above, having.this) if having else above
                    select.set("having", exp.Having(this=condition))
                select.set("where", exp.Where(this=below) if below is not None else None)
            call = self._window_call(plan)
            select.set("group", exp.Group(expressions=[call, *(k.copy() for k in plan.keys)]))
        elif plan.keys or plan.aggregates:
            keys = [k.copy() for k in plan.keys]
            if not keys and plan.emit is Emit.CHANGES:
                # Spark's update mode emits a keyless aggregate's one row every batch, empty
                # ones too; streamsql only when rows arrived: under a constant key, so does
                # Spark (its optimizer keeps one literal key for this very difference)
                keys = [exp.true()]
            select.set("group", exp.Group(expressions=keys) if keys else None)

        def bounds(node: exp.Expr) -> exp.Expr:
            if (
                window
                and isinstance(node, exp.Column)
                and node.name.lower() in WINDOW_COLUMNS
                and not isinstance(node.parent, exp.Dot)
            ):
                part = node.name.lower().removeprefix("window_")
                return exp.Dot(this=exp.column(bound), expression=exp.to_identifier(part))
            return node

        items = []
        for name, item in zip(plan.output_names, select.expressions, strict=False):
            if isinstance(item, exp.Star) or (
                isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
            ):
                items.append(item)
            else:
                items.append(exp.alias_(item.unalias(), exp.to_identifier(name, quoted=True)))
        select.set("expressions", items)
        for part in ("expressions", "having", "order"):
            value = select.args.get(part)
            if isinstance(value, list):
                select.set(part, [v.transform(bounds) for v in value])
            elif value is not None:
                select.set(part, value.transform(bounds))
        text = self.spark_sql(select, typer)
        marker = quoted(SOURCE_MARKER)
        if marker not in text:
            marker = SOURCE_MARKER
        return text.replace("{", "{{").replace("}", "}}").replace(marker, "{source}")

    def _window_call(self, plan: StreamingPlan) -> exp.Expr:
        window = plan.window
        column = exp.column(window.time_column)
        if window.kind == "SESSION":
            gap = exp.Literal.string(format_duration(window.gap_us))
            return exp.Anonymous(this="session_window", expressions=[column, gap])
        sizes = [exp.Literal.string(format_duration(window.size_us))]
        if window.kind == "HOPPING":
            sizes.append(exp.Literal.string(format_duration(window.slide_us)))
        return exp.Anonymous(this="window", expressions=[column, *sizes])

    @staticmethod
    def _check_aggregates(plan: StreamingPlan) -> None:
        for call in plan.aggregates:
            node = call.node.this if isinstance(call.node, exp.Filter) else call.node
            node = node.this if isinstance(node, exp.IgnoreNulls) else node
            name = node.sql("duckdb").split("(", 1)[0].strip().lower()
            arguments = [a for a in node.iter_expressions() if not isinstance(a, exp.Order)]
            if isinstance(node, exp.Count) and isinstance(node.this, exp.Distinct):
                arguments = [node.this]
            if AGGREGATES.get(name) != len(arguments):
                reason = (
                    f"{name} with {len(arguments)} arguments"
                    if name in AGGREGATES
                    else f"aggregate {name}"
                )
                raise PlanningError(
                    f"Cannot translate {call.node.sql('duckdb')} to Spark SQL: {reason} has no "
                    "equivalent that Spark computes in a streaming aggregation",
                    rule="untranslatable-expression",
                    position=position_of(call.node),
                )

    def _sink_code(self, sink: _Sink) -> str:
        plan = sink.plan
        definition = sink.definition
        name = definition.name
        scan = plan.scans[0]
        source = scan.source
        query = self.names("query", name)
        start = self.names("start", name)
        rows = self.names("rows", source.name)
        read = self.names("read", source.name)
        derived = scan.derived[len(source.computed) :]
        typer = self.typer(scan, plan.window and plan.window.bound_type)
        body = []
        for column, expression in derived:
            text = self.spark_sql(expression, typer)
            body.append(f"    rows = rows.withColumn({column!r}, F.expr({text!r}))")
        if plan.has_watermark:
            delay = (
                format_duration(scan.watermark_delay_us)
                if scan.watermark_delay_us
                else ("0 seconds")
            )
            body.append(f"    rows = rows.withWatermark({plan.event_time!r}, {delay!r})")
        sql = self._query_sql(sink, typer)
        body.append(f"    return rows.sparkSession.sql({sql!r}, source=rows)")
        what = "the rows of the bare SELECT" if sink.push else f"CREATE SINK {name}"
        mode = OUTPUT_MODES[plan.emit]
        trigger = Trigger.parse(definition.options.get("trigger"))
        writer = self._writer(sink, mode)
        return "\n".join(
            [
                f"def {query}(rows: DataFrame) -> DataFrame:",
                f'    """{what} (line {sink.line}): a {plan.kind.value}, EMIT {plan.emit.value}'
                f" ({mode}),",
                f'    over the rows of source {source.name}."""',
                *body,
                "",
                "",
                f"def {start}(spark: SparkSession) -> StreamingQuery:",
                "    return (",
                f"        {query}({rows}({read}(spark)))",
                f"        .writeStream.queryName({name!r})",
                f"        .outputMode({mode!r})",
                *(f"        {line}" for line in self._trigger_code(trigger)),
                f"        .option('checkpointLocation', f'{{ROOT}}/checkpoints/{name}')",
                *(f"        {line}" for line in writer),
                "        .start()",
                "    )",
            ]
        )

    @staticmethod
    def _trigger_code(trigger: Trigger) -> list[str]:
        if trigger.kind is TriggerKind.AVAILABLE_NOW:
            return [".trigger(availableNow=True)"]
        if trigger.kind is TriggerKind.ONCE:
            return [".trigger(once=True)"]
        if trigger.interval:
            return [f".trigger(processingTime={f'{trigger.interval:g} seconds'!r})"]
        return []

    def _writer(self, sink: _Sink, mode: str) -> list[str]:
        definition = sink.definition
        options = definition.options
        connector = definition.connector
        where = f"sink {definition.name} (line {sink.line})"
        changelog = options.get("changelog", "false").lower() == "true"
        if connector == "console":
            return [
                ".format('console')",
                ".option('truncate', 'false').option('numRows', 2147483647)",
            ]
        if connector == "callback":
            self._helper("_callback", CALLBACK_HELPER)
            return [f".foreachBatch(_callback({options['callback']!r}))"]
        if connector == "kafka":
            return self._kafka_writer(sink, where)
        if connector == "duckdb":
            table = options.get("table", definition.name)
            if mode == "update" and not changelog:
                self._differ(
                    "upsert-table",
                    where,
                    "EMIT CHANGES into a duckdb table upserts on the group key; Spark's files "
                    "cannot upsert, so the job writes every change with its _batch_id (as "
                    "changelog = true does): read the latest _batch_id of each key",
                )
            path = f"{{ROOT}}/tables/{table}"
            return [self._batch_writer("parquet", path, {}, mode == "complete" and not changelog)]
        fmt = "delta" if connector == "delta" else connector
        if fmt == "delta":
            self.packages.add(DELTA_PACKAGE)
        writer_options = {}
        if fmt == "csv":
            writer_options = {"header": "true", "sep": options.get("delimiter", ",")}
        if fmt == "parquet" and "compression" in options:
            writer_options = {"compression": options["compression"].lower()}
        path = options["path"].replace("{", "{{").replace("}", "}}")
        if mode == "append" and not changelog:
            return [
                f".format({fmt!r}).option('path', f{path!r})",
                *(f".option({k!r}, {v!r})" for k, v in writer_options.items()),
            ]
        return [self._batch_writer(fmt, path, writer_options, mode == "complete")]

    def _batch_writer(self, fmt: str, path: str, options: dict[str, str], replace: bool) -> str:
        self._helper("_batch_writer", BATCH_WRITER_HELPER)
        return f".foreachBatch(_batch_writer({fmt!r}, f{path!r}, {options!r}, replace={replace}))"

    def _kafka_writer(self, sink: _Sink, where: str) -> list[str]:
        self.packages.add(KAFKA_PACKAGE)
        options = sink.definition.options
        self._helper("_kafka_writer", KAFKA_WRITER_HELPER)
        typer = self.typer(sink.plan.scans[0], None)
        key = options.get("key")
        key_sql = None
        if key is not None:
            names = ", ".join(
                f"CAST(NULL AS VARCHAR) AS {quote(n)}" for n in sink.plan.output_names
            )
            typer = Typer(self.engine.db, f"SELECT {names} LIMIT 0")
            key_sql = self.spark_sql(exp.maybe_parse(key, dialect="duckdb"), typer)
        settings = {}
        for option, value in options.items():
            if option.startswith("kafka."):
                setting = option.removeprefix("kafka.").replace(".", "_")
                if setting in KAFKA_SETTINGS and not is_secret(option):
                    settings[f"kafka.{KAFKA_SETTINGS[setting]}"] = value
                else:
                    self._differ(
                        "kafka-setting",
                        where,
                        f"{option} is left out of the job: Spark's Kafka sink takes the Java "
                        "client's settings, and secrets are not written into the script",
                    )
        fmt = options.get("format", "json")
        return [
            f".foreachBatch(_kafka_writer({options['bootstrap_servers']!r}, "
            f"{options['topic']!r}, {sink.definition.name!r}, {fmt!r}, {key_sql!r}, "
            f"{settings!r}))"
        ]


def _dead_letter(fields: list[str], failed: str, raw: str) -> str:
    """The raw record where `failed` holds (it did not decode). Every declared field
    is referenced, so that Spark decodes them all: it decodes only the fields a query uses,
    and streamsql makes a record a dead letter when any declared field fails."""
    every = f"length(to_json(struct({', '.join(fields)}))) >= 0"
    return f"CASE WHEN ({failed}) AND {every} THEN {raw} END AS {DEAD_LETTER}"


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _split_on_bounds(condition: exp.Expr) -> tuple[exp.Expr | None, exp.Expr | None]:
    """WHERE conjuncts over the window bounds alone (Spark knows them only after grouping,
    so they become HAVING: a window is kept or not as a whole), and the others. A conjunct
    mixing bounds with row columns has no such translation."""
    above, below = [], []
    for conjunct in condition.flatten() if isinstance(condition, exp.And) else [condition]:
        names = {c.name.lower() for c in conjunct.find_all(exp.Column)}
        if names & set(WINDOW_COLUMNS):
            if not names <= set(WINDOW_COLUMNS):
                raise PlanningError(
                    f"Cannot translate WHERE {conjunct.sql('duckdb')} to Spark SQL: it mixes "
                    "window bounds with row columns, and Spark knows a window's bounds only "
                    "after grouping",
                    rule="untranslatable-expression",
                    position=position_of(conjunct),
                )
            above.append(conjunct.copy())
        else:
            below.append(conjunct.copy())
    return (exp.and_(*above) if above else None), (exp.and_(*below) if below else None)


SECRET_HELPER = '''def _secret(variable: str, conf: str, spark: SparkSession) -> str:
    """A secret option's value: from the environment, else from the Spark conf."""
    value = os.environ.get(variable) or spark.conf.get(conf, None)
    if value is None:
        raise RuntimeError(f"Set the environment variable {variable} or the Spark conf {conf}")
    return value'''

CALLBACK_HELPER = '''def _callback(reference: str):
    """foreachBatch calling streamsql's callback 'package.module:function' with the batch id
    and the batch's rows as a pyarrow table, as the callback sink does."""
    import importlib

    module, _, name = reference.partition(":")
    function = getattr(importlib.import_module(module), name)

    def write(batch: DataFrame, batch_id: int) -> None:
        function(batch_id, batch.toArrow())

    return write'''

BATCH_WRITER_HELPER = '''def _batch_writer(fmt: str, path: str, options: dict, replace: bool):
    """foreachBatch writing each batch's rows under `path`, idempotently by batch id: a batch
    Spark runs again after a failure overwrites what it wrote before. `replace`: each batch
    is the whole result (EMIT SNAPSHOT) and replaces the previous one; otherwise each batch
    is a partition _batch_id=N."""

    def write(batch: DataFrame, batch_id: int) -> None:
        if replace:
            batch.write.format(fmt).options(**options).mode("overwrite").save(path)
            return
        (
            batch.withColumn("_batch_id", F.lit(batch_id))
            .write.format(fmt)
            .options(**options)
            .option("partitionOverwriteMode", "dynamic")
            .partitionBy("_batch_id")
            .mode("overwrite")
            .save(path)
        )

    return write'''

KAFKA_WRITER_HELPER = '''def _kafka_messages(
    batch: DataFrame, batch_id: int, query: str, fmt: str, key: str | None
) -> DataFrame:
    """A batch's rows as messages, as streamsql's Kafka sink makes them: the value is the
    row as JSON (or CSV), the key the `key` expression, and the headers name the query and
    the batch id."""
    value = "to_csv(struct(*))" if fmt == "csv" else "to_json(struct(*))"
    key_sql = f"CAST({key} AS STRING)" if key else "CAST(NULL AS STRING)"
    headers = F.array(
        F.struct(F.lit("streamsql.query").alias("key"), F.lit(query).cast("binary").alias("value")),
        F.struct(
            F.lit("streamsql.batch_id").alias("key"),
            F.lit(str(batch_id)).cast("binary").alias("value"),
        ),
    )
    return batch.selectExpr(f"{key_sql} AS key", f"{value} AS value").withColumn("headers", headers)


def _kafka_writer(
    servers: str, topic: str, query: str, fmt: str, key: str | None, settings: dict
):
    """foreachBatch writing each batch's messages with Spark's Kafka sink."""

    def write(batch: DataFrame, batch_id: int) -> None:
        (
            _kafka_messages(batch, batch_id, query, fmt, key)
            .write.format("kafka")
            .option("kafka.bootstrap.servers", servers)
            .option("topic", topic)
            .option("includeHeaders", "true")
            .options(**settings)
            .save()
        )

    return write'''


@contextlib.contextmanager
def _scratch_engine() -> Iterator[tuple[Engine, streamsql.Cursor]]:
    engine = Engine(":memory:")
    con = streamsql.Connection(engine)
    try:
        yield engine, con.cursor()
    finally:
        con.close()


def export_spark(
    sql: str,
    file_name: str = "query.sql",
    root: str | None = None,
    allow_differences: bool = False,
    job_file: str = "job.py",
) -> SparkJob:
    """The PySpark job for a streamsql file. Refuses (ExportRefused, with the compatibility
    report) when Spark would not compute what streamsql computes, unless
    `allow_differences`; an expression Spark cannot run is an error naming it and where."""
    root = root or f"{re.sub(r'[.]sql$', '', file_name.rsplit('/', 1)[-1])}-spark"
    with _scratch_engine() as (engine, cursor):
        exporter = _Exporter(engine, cursor, root)
        exporter.read(parse(sql))
        script = exporter.script(file_name, job_file)
    if exporter.differences and not allow_differences:
        raise ExportRefused(exporter.differences)
    if not exporter.sinks:
        raise ExportNothing("The file has no query that can be exported (no CREATE SINK or SELECT)")
    return SparkJob(
        script,
        exporter.sql,
        {s.definition.name: OUTPUT_MODES[s.plan.emit] for s in exporter.sinks},
        exporter.differences,
    )


class ExportNothing(ProgrammingError):
    """A file without anything to export."""
