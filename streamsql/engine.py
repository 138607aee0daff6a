"""The engine behind a connection: catalog, sources, running queries, statement dispatch.

Statements of the streaming dialect are handled here; every other statement is handed to
DuckDB verbatim, in its own text, so DuckDB behaves exactly as DuckDB.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from sqlglot import exp

from streamsql.checkpoint import dead_letters
from streamsql.checkpoint.fingerprint import fingerprint
from streamsql.checkpoint.log import SCHEMA, Checkpoint, state_table
from streamsql.errors import Error, ProgrammingError, from_duckdb
from streamsql.format import format_duration
from streamsql.incremental.aggregates import MACROS
from streamsql.incremental.compiler import BatchProgram, compile_plan
from streamsql.plan.catalog import SinkDef, SourceDef, differences, sink_def, source_def
from streamsql.plan.plan import StreamingPlan
from streamsql.plan.planner import Planner
from streamsql.runtime.microbatch import MicroBatchExecution
from streamsql.runtime.progress import timestamp_of
from streamsql.runtime.push import PushStream
from streamsql.runtime.query import StreamingQuery
from streamsql.runtime.triggers import Trigger
from streamsql.sinks.base import Sink
from streamsql.sinks.callback import BatchCallback, CallbackSink
from streamsql.sinks.collect import CollectSink
from streamsql.sinks.console import ConsoleSink
from streamsql.sinks.duckdb import DuckDBSink
from streamsql.sinks.files import CSVSink, JSONSink, ParquetSink
from streamsql.sinks.kafka import KafkaSink
from streamsql.sources.base import Source
from streamsql.sources.files import FileSource
from streamsql.sources.kafka import KafkaSource
from streamsql.sources.memory import MemorySource
from streamsql.sql import DIALECT, Statement, nesting_room, nodes, parse_one, quote

DuckCursor = duckdb.DuckDBPyConnection

SOURCE_CONNECTORS: dict[str, type[Source]] = {
    "memory": MemorySource,
    "files": FileSource,
    "kafka": KafkaSource,
}
SINK_CONNECTORS: dict[str, type[Sink]] = {
    "duckdb": DuckDBSink,
    "parquet": ParquetSink,
    "csv": CSVSink,
    "json": JSONSink,
    "kafka": KafkaSink,
    "callback": CallbackSink,
    "console": ConsoleSink,
}

STATUS_SECONDS = 1.0  # how often a running process publishes its status, at most

CATALOG = f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.catalog (
    kind VARCHAR NOT NULL,          -- SOURCE | SINK
    name VARCHAR NOT NULL,
    sql VARCHAR NOT NULL,           -- the CREATE statement, as written
    running BOOLEAN DEFAULT true,   -- sinks: resumed when the database is opened again
    PRIMARY KEY (kind, name))"""


# Engines left open when the interpreter exits are closed, so that their queries stop
# between batches rather than being killed in the middle of one.
_OPEN_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_open_engines() -> None:
    for engine in list(_OPEN_ENGINES):
        engine.close()


@dataclass
class Result:
    """Rows our own statements return (DuckDB statements return DuckDB's result)."""

    columns: list[str] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    rowcount: int = -1
    stream: PushStream | None = None  # a push query's rows, fetched as they are emitted


def source_instance(con: DuckCursor, definition: SourceDef) -> Source:
    """The connector's reader of a source, its declared columns typed by DuckDB."""
    connector = _connector("Source", definition, SOURCE_CONNECTORS)
    try:
        schema = con.sql(Planner.empty_relation(definition, [])).to_arrow_table().schema
    except duckdb.Error as error:
        raise ProgrammingError(f"Source {definition.name}: {str(error).splitlines()[0]}") from None
    return connector(definition, schema)


def _connector(kind: str, definition: SourceDef | SinkDef, registry: dict[str, type]) -> Any:
    """The class of a definition's connector, which must know every option it is given (a
    misspelt option is an error, not a setting silently ignored)."""
    connector = registry.get(definition.connector.lower())
    if connector is None:
        raise ProgrammingError(
            f"Unknown {kind.lower()} connector {definition.connector!r}; available: "
            f"{', '.join(registry)}"
        )
    unknown = sorted(
        key
        for key in set(definition.options) - set(connector.OPTIONS)
        if not key.startswith(getattr(connector, "OPTION_PREFIXES", ()))
    )
    if unknown:
        raise ProgrammingError(
            f"{kind} {definition.name}: unknown option {unknown[0]!r} for connector "
            f"{definition.connector!r}; its options are {', '.join(connector.OPTIONS)}"
        )
    return connector


def status_file(database: str) -> Path:
    """Where a process running an engine database publishes where its queries stand."""
    return Path(f"{database}.status.json")


class Engine:
    def __init__(
        self,
        database: str = ":memory:",
        trigger: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.database = database
        self.trigger_override = Trigger.parse(trigger) if trigger else None  # CLI --trigger
        self.session_trigger = Trigger.parse(None)  # SET trigger = ...: sinks without one
        try:
            self.db = duckdb.connect(database, config=config or {})
        except duckdb.Error as error:  # a directory, a file another process holds, ...
            raise from_duckdb(error, f"Cannot open {database}") from None
        self.db.execute("SET TimeZone = 'UTC'").fetchall()
        Checkpoint.create_tables(self.db)
        dead_letters.create_tables(self.db)
        for statement in (*MACROS, CATALOG):
            self.db.execute(statement).fetchall()
        self.sources: dict[str, SourceDef] = {}
        self.sinks: dict[str, SinkDef] = {}
        self.queries: dict[str, StreamingQuery] = {}
        self._instances: dict[str, Source] = {}
        self.callbacks: dict[str, BatchCallback] = {}  # functions callback sinks name
        self._lock = threading.RLock()
        self._cursors: weakref.WeakSet[DuckCursor] = weakref.WeakSet()
        self._status_lock = threading.Lock()
        self._status_published = float("-inf")
        self.closed = False
        _OPEN_ENGINES.add(self)
        self._load_catalog()

    # -- catalog ---------------------------------------------------------------------------------

    def _load_catalog(self) -> None:
        rows = self.db.execute(
            f"SELECT kind, sql, running FROM {SCHEMA}.catalog ORDER BY kind DESC, name"
        ).fetchall()
        for kind, sql, running in rows:
            create = parse_one(sql).expression
            if kind == "SOURCE":
                self._register_source(source_def(create, sql))
            else:
                definition = sink_def(create, sql)
                self.sinks[definition.name.lower()] = definition
                if running:
                    try:
                        with nesting_room(1):  # planned again, as deep as when created
                            self._start(definition)
                    except Error as error:  # the database opens; this sink waits to be fixed
                        warnings.warn(
                            f"Sink {definition.name} did not resume: {error}", stacklevel=4
                        )

    def _remember(self, kind: str, name: str, sql: str) -> None:
        self.db.execute(
            f"INSERT OR REPLACE INTO {SCHEMA}.catalog (kind, name, sql, running) "
            "VALUES (?, ?, ?, true)",
            [kind, name, sql],
        ).fetchall()

    def _forget(self, kind: str, name: str) -> None:
        self.db.execute(
            f"DELETE FROM {SCHEMA}.catalog WHERE kind = ? AND lower(name) = lower(?)", [kind, name]
        ).fetchall()

    def source(self, name: str) -> Source:
        try:
            return self._instances[name.lower()]
        except KeyError:
            raise ProgrammingError(f"Unknown source {name!r}") from None

    def _register_source(self, definition: SourceDef) -> None:
        self._instances[definition.name.lower()] = source_instance(self.db, definition)
        self.sources[definition.name.lower()] = definition

    # -- statements ------------------------------------------------------------------------------

    def handler(self, statement: Statement) -> Callable[..., Result] | None:
        """Our handler for a statement, or None when DuckDB should run it."""
        node = statement.expression
        if isinstance(node, exp.Create) and node.kind in ("SOURCE", "SINK"):
            return self.create_source if node.kind == "SOURCE" else self.create_sink
        if isinstance(node, exp.Drop) and node.kind in ("SOURCE", "SINK"):
            return self.drop
        if isinstance(node, nodes.Explain) and self._is_streaming(node.this):
            return self.explain
        if isinstance(node, nodes.ShowStreams):
            return self.show
        if isinstance(node, nodes.DescribeQuery):
            return self.describe_query
        if isinstance(node, nodes.StopQuery):
            return self.stop_query
        if isinstance(node, nodes.CompactSink):
            return self.compact_sink
        if isinstance(node, exp.Set) and _setting(node) == "trigger":
            return self.set_trigger
        if isinstance(node, exp.Insert) and self._insert_target(node) is not None:
            return self.insert_into_source
        if isinstance(node, exp.Select) and self._is_streaming(node):
            return self.push_query
        return None

    def _is_streaming(self, node: exp.Expr | None) -> bool:
        if isinstance(node, exp.Create) and node.kind == "SINK":
            return True
        if not isinstance(node, exp.Select):
            return False
        if any(node.args.get(k) for k in ("stream_window", "emit")):
            return True
        return any(t.name.lower() in self.sources for t in node.find_all(exp.Table))

    def _insert_target(self, node: exp.Insert) -> Source | None:
        target = node.this.this if isinstance(node.this, exp.Schema) else node.this
        if isinstance(target, exp.Table) and target.name.lower() in self.sources:
            return self._instances[target.name.lower()]
        return None

    def create_source(
        self, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
    ) -> Result:
        create = statement.expression
        name = create.this.this.name if isinstance(create.this, exp.Schema) else create.this.name
        with self._lock:
            existing = self.sources.get(name.lower())
            if existing is not None and self._unchanged(existing, create, statement.text):
                return Result()
            definition = source_def(create, statement.text)
            if existing is not None and not create.args.get("replace"):
                raise ProgrammingError(
                    f"Source {name} already exists with a different definition "
                    f"({'; '.join(differences(existing, definition))}); use CREATE OR REPLACE "
                    f"SOURCE or DROP SOURCE {name} first"
                )
            if existing is not None:
                users = [s.name for s in self.sinks.values() if self._reads(s, name)]
                if users:
                    raise ProgrammingError(
                        f"Cannot replace source {name}: sinks {', '.join(users)} read it"
                    )
            self._register_source(definition)
            self._remember("SOURCE", definition.name, statement.text)
        return Result()

    @staticmethod
    def _unchanged(existing: SourceDef | SinkDef, create: exp.Create, text: str) -> bool:
        """CREATE of something that exists: IF NOT EXISTS and identical re-runs are no-ops
        (as re-submitting a Spark job with the same checkpoint is)."""
        if create.args.get("replace"):
            return False
        return bool(create.args.get("exists")) or _canonical(existing.sql) == _canonical(text)

    def _reads(self, sink: SinkDef, source: str) -> bool:
        return any(t.name.lower() == source.lower() for t in sink.query.find_all(exp.Table))

    def create_sink(
        self, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
    ) -> Result:
        create = statement.expression
        name = create.this.name
        with self._lock:
            existing = self.sinks.get(name.lower())
            if existing is not None and self._unchanged(existing, create, statement.text):
                if not create.args.get("exists") and self._resubmittable(name):
                    self._start(existing)
                    self._set_running(name, True)
                return Result()
            definition = sink_def(create, statement.text)
            self._check_path(definition)
            if existing is not None and not create.args.get("replace"):
                self._restart_changed(existing, definition)
            else:
                if existing is not None:
                    self._drop_sink(name)
                self._start(definition)
            self.sinks[name.lower()] = definition
            self._remember("SINK", name, statement.text)
        return Result()

    def _resubmittable(self, name: str) -> bool:
        """A sink submitted again starts again if it was stopped or failed (one that ran to
        its end, as `available_now` does, or that still runs is left as it is)."""
        query = self.queries.get(name.lower())
        if query is None or query.exception is not None:
            return True
        (running,) = self.db.execute(
            f"SELECT running FROM {SCHEMA}.catalog WHERE kind = 'SINK' AND lower(name) = ?",
            [name.lower()],
        ).fetchall()[0]
        return not query.is_active and not running

    def _check_path(self, definition: SinkDef) -> None:
        """Each sink writes to a directory of its own."""
        path = definition.options.get("path")
        for other in self.sinks.values():
            theirs = other.options.get("path")
            if (
                path
                and theirs
                and other.name.lower() != definition.name.lower()
                and Path(theirs).resolve() == Path(path).resolve()
            ):
                raise ProgrammingError(
                    f"Sink {definition.name}: path {path!r} is where sink {other.name} writes; "
                    "each sink needs a directory of its own"
                )

    def _restart_changed(self, existing: SinkDef, definition: SinkDef) -> None:
        """Resume a sink's checkpoint under a new definition, if its state is unaffected
        (sink options, the trigger, projections and filters may change; Spark's rules)."""
        name = definition.name
        changed = Checkpoint(self.db, name).mismatch(fingerprint(self.plan(definition.query)))
        if changed:
            raise ProgrammingError(
                f"Sink {name} already exists, and its checkpoint holds the state of a "
                f"different query ({'; '.join(changed)}). CREATE OR REPLACE SINK {name} or "
                f"DROP SINK {name} first to start over without that state"
            )
        previous = self.queries.pop(name.lower(), None)
        if previous is not None:
            previous.stop()
        try:
            self._start(definition)
        except Exception:
            if previous is not None:
                self._start(existing)
            raise

    def plan(self, select: exp.Select, parameters: Sequence[Any] | None = None) -> StreamingPlan:
        with contextlib.closing(self.cursor()) as cursor:
            return Planner(cursor, self.sources).plan(select, parameters)

    def cursor(self) -> DuckCursor:
        """A DuckDB cursor on the engine database, in UTC, closed with the engine."""
        cursor = self.db.cursor()
        cursor.execute("SET TimeZone = 'UTC'").fetchall()
        self._cursors.add(cursor)
        return cursor

    def program(self, name: str, plan: StreamingPlan) -> BatchProgram:
        return compile_plan(plan, state_table(name))

    def _start(self, definition: SinkDef) -> StreamingQuery:
        execution = self._execution(definition)
        given = definition.options.get("trigger")
        trigger = self.trigger_override or (Trigger.parse(given) if given else self.session_trigger)
        query = StreamingQuery(execution, trigger, self._publish_status)
        self.queries[definition.name.lower()] = query.start()
        return query

    def _execution(self, definition: SinkDef) -> MicroBatchExecution:
        plan = self.plan(definition.query)
        connector = _connector("Sink", definition, SINK_CONNECTORS)
        if connector is CallbackSink:
            sink = CallbackSink(definition.name, definition.options, self.callbacks)
        else:
            sink = connector(definition.name, definition.options)
        return self._prepare(definition.name, plan, self.program(definition.name, plan), sink)

    def _prepare(
        self, name: str, plan: StreamingPlan, program: BatchProgram, sink: Sink
    ) -> MicroBatchExecution:
        source = self.source(plan.source.name).for_query()
        return MicroBatchExecution(name, self.cursor(), plan, program, source, sink)

    def _publish_status(self, query: StreamingQuery) -> None:
        """Publish where the sinks stand for `streamsql status`, which cannot open the
        database while this process holds it: after a batch (at most once a second) and
        whenever a query terminates."""
        if self.database == ":memory:" or self.closed:
            return
        with self._status_lock:
            now = time.monotonic()
            if query.is_active and now - self._status_published < STATUS_SECONDS:
                return
            self._status_published = now
            sinks = [
                {**q.execution.position(), "running": q.is_active}
                for name, q in sorted(list(self.queries.items()))
                if name in self.sinks
            ]
            target = status_file(self.database)
            staged = target.with_name(f".{target.name}.tmp")
            snapshot = {"pid": os.getpid(), "written_at": time.time(), "sinks": sinks}
            with contextlib.suppress(OSError):  # a status not written never stops a query
                staged.write_text(json.dumps(snapshot, default=str))
                os.replace(staged, target)

    def register_callback(self, name: str, function: BatchCallback) -> None:
        """Name a function for callback sinks: `WITH (connector = 'callback', callback = name)`."""
        self.callbacks[name] = function

    def query(self, name: str) -> StreamingQuery:
        try:
            return self.queries[name.lower()]
        except KeyError:
            raise ProgrammingError(f"No running query named {name!r}") from None

    def drop(
        self, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
    ) -> Result:
        node = statement.expression
        tables = node.args.get("tables") or [node.this]
        if len(tables) != 1:
            raise ProgrammingError(f"DROP {node.kind} takes one name")
        name = tables[0].name
        with self._lock:
            registry = self.sources if node.kind == "SOURCE" else self.sinks
            if name.lower() not in registry:
                if node.args.get("exists"):
                    return Result()
                raise ProgrammingError(f"{node.kind.title()} {name!r} does not exist")
            if node.kind == "SOURCE":
                users = [s.name for s in self.sinks.values() if self._reads(s, name)]
                if users:
                    raise ProgrammingError(
                        f"Cannot drop source {name}: sinks {', '.join(users)} read it; "
                        "drop them first"
                    )
                del self.sources[name.lower()]
                del self._instances[name.lower()]
                self._forget("SOURCE", name)
            else:
                self._drop_sink(name)
        return Result()

    def _drop_sink(self, name: str) -> None:
        query = self.queries.pop(name.lower(), None)
        if query is not None:
            query.stop()
        self.sinks.pop(name.lower(), None)
        self._forget("SINK", name)
        Checkpoint(self.db, name).forget()
        self.db.execute(f"DROP TABLE IF EXISTS {state_table(name)}").fetchall()

    def explain(
        self, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
    ) -> Result:
        target = statement.expression.this
        # a sink's query, checked as CREATE SINK checks it (one without AS SELECT, say)
        select = (
            sink_def(target, statement.text).query if isinstance(target, exp.Create) else target
        )
        name = target.this.name if isinstance(target, exp.Create) else "query"
        plan = self.plan(select)
        program = self.program(name, plan)
        header = [
            f"-- {plan.kind.value} over source {plan.source.name}, EMIT {plan.emit.value}",
        ]
        if plan.has_watermark:
            delay = format_duration(plan.watermark_delay_us)
            header.append(f"-- watermark: max({plan.event_time}) - {delay}")
        if plan.window:
            window = plan.window
            sizes = (
                f"gap {format_duration(window.gap_us)}"
                if window.kind == "SESSION"
                else f"size {format_duration(window.size_us)}, "
                f"slide {format_duration(window.slide_us)}"
            )
            header.append(f"-- window: {window.kind} on {window.time_column}, {sizes}")
        text = "\n".join(header) + "\n" + program.explain()
        return Result(["explain"], [(line,) for line in text.splitlines()])

    def show(
        self, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
    ) -> Result:
        what = statement.expression.name.upper()
        if what == "SOURCES":
            return Result(
                ["name", "connector", "columns", "watermark"],
                [
                    (
                        s.name,
                        s.connector,
                        ", ".join(s.column_names),
                        f"{s.watermark.column} - {s.watermark.delay.sql('duckdb')}"
                        if s.watermark
                        else None,
                    )
                    for s in self.sources.values()
                ],
            )
        if what == "SINKS":
            return Result(
                ["name", "connector", "query"],
                [(s.name, s.connector, s.query.sql(DIALECT)) for s in self.sinks.values()],
            )
        return Result(
            ["name", "status", "trigger", "last_batch", "watermark", "state_rows"],
            [self._query_row(q) for q in self.queries.values()],
        )

    def _query_row(self, query: StreamingQuery) -> tuple[Any, ...]:
        """Where the query stands: from its checkpoint, so also right after a restart."""
        execution = query.execution
        return (
            query.name,
            query.status["message"],
            str(query.trigger),
            execution.last_committed,
            timestamp_of(execution.watermark),
            execution.state_rows,
        )

    def describe_query(
        self, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
    ) -> Result:
        query = self.query(statement.expression.this.name)
        progress = query.last_progress
        rows = [
            ("status", str(query.status)),
            ("id", query.id),
            ("run_id", query.run_id),
            ("last_committed_batch", str(query.execution.last_committed)),
            ("watermark", str(timestamp_of(query.execution.watermark))),
        ]
        position = query.execution.position()
        rows += [(key, json.dumps(position[key])) for key in ("committed_offsets", "lag")]
        if progress is not None:
            rows += [(key, str(value)) for key, value in progress.to_dict().items()]
        return Result(["property", "value"], rows)

    def stop_query(
        self, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
    ) -> Result:
        name = statement.expression.this.name
        self.query(name).stop()
        self._set_running(name, False)
        return Result()

    def compact_sink(
        self, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
    ) -> Result:
        """Compact in the sink's own query, between two batches; a stopped sink's query is
        opened (recovered) for it, without running batches."""
        name = statement.expression.this.name
        definition = self.sinks.get(name.lower())
        if definition is None:
            raise ProgrammingError(f"Sink {name!r} does not exist")
        query = self.queries.get(name.lower())
        if query is not None and query.is_active:
            replaced, written = query.between_batches(lambda e: e.sink.compact(e.cursor))
        else:
            execution = self._execution(definition)
            try:
                execution.start()
                replaced, written = execution.sink.compact(execution.cursor)
            finally:
                execution.close()
        return Result(["files_replaced", "files_written"], [(replaced, written)])

    def set_trigger(
        self, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
    ) -> Result:
        """`SET trigger = '...'`: the trigger of queries this session starts without one."""
        value = statement.expression.expressions[0].this.expression
        self.session_trigger = Trigger.parse(value.name)
        return Result()

    def _set_running(self, name: str, running: bool) -> None:
        """Whether the sink resumes when the database is opened again."""
        self.db.execute(
            f"UPDATE {SCHEMA}.catalog SET running = ? "
            "WHERE kind = 'SINK' AND lower(name) = lower(?)",
            [running, name],
        ).fetchall()

    def insert_into_source(
        self, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
    ) -> Result:
        """Evaluate the INSERT's rows in DuckDB, cast to the source's columns, and append them."""
        node = statement.expression
        source = self._insert_target(node)
        if not isinstance(source, MemorySource):
            raise ProgrammingError(
                f"INSERT INTO {source.name}: only memory sources accept rows; "
                f"{source.definition.connector} sources read from their connector"
            )
        rows = self._evaluate_insert(node, source, params, cursor)
        return Result(rowcount=source.append(rows))

    def _evaluate_insert(
        self,
        node: exp.Insert,
        source: MemorySource,
        params: Sequence[Any] | None,
        cursor: DuckCursor,
    ) -> pa.Table:
        declared = {c.name.lower(): c for c in source.definition.columns}
        if isinstance(node.this, exp.Schema):
            targets = [c.name for c in node.this.expressions]
        else:
            targets = [c.name for c in source.definition.columns]
        unknown = [t for t in targets if t.lower() not in declared]
        if unknown:
            raise ProgrammingError(
                f"INSERT INTO {source.name}: no column {unknown[0]!r} (computed columns are "
                "derived, not inserted)"
            )
        values = node.expression
        if values is None:
            raise ProgrammingError(f"INSERT INTO {source.name} needs VALUES or a query")
        names = ", ".join(quote(f"c{i}") for i in range(len(targets)))
        given = {t.lower(): f"c{i}" for i, t in enumerate(targets)}
        casts = ", ".join(
            f"CAST({quote(given[c.name.lower()]) if c.name.lower() in given else 'NULL'} "
            f"AS {c.type}) AS {quote(c.name)}"
            for c in source.definition.columns
        )
        sql = f"SELECT {casts} FROM ({values.sql('duckdb')}) AS __values({names})"
        try:
            # The caller's cursor: its registered views and parameters are in scope.
            return cursor.sql(sql, params=list(params) if params else None).to_arrow_table()
        except duckdb.Error as error:
            raise from_duckdb(error, f"INSERT INTO {source.name}") from None

    def push_query(
        self, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
    ) -> Result:
        """Run a streaming SELECT for the caller: its rows arrive as batches emit them."""
        name = f"__push_{uuid.uuid4().hex[:12]}"
        plan = self.plan(statement.expression, params)
        program = compile_plan(plan, quote(f"state_{name}"), temporary=True)
        sink = CollectSink(name, {})
        trigger = self.trigger_override or self.session_trigger
        query = StreamingQuery(self._prepare(name, plan, program, sink), trigger)
        self.queries[name] = query.start()

        def forget() -> None:
            self.queries.pop(name, None)
            if self.closed:  # nothing left to forget in: its checkpoint went with the engine
                return
            with contextlib.closing(self.cursor()) as cursor:
                Checkpoint(cursor, name).forget()

        return Result(columns=plan.output_names, stream=PushStream(query, sink, forget))

    def close(self) -> None:
        """Stop every query (each after its batch in flight commits) and close the database."""
        if self.closed:
            return
        self.closed = True
        for query in list(self.queries.values()):
            query.stop()
        self.queries.clear()
        for cursor in list(self._cursors):
            cursor.close()
        self.db.close()
        if self.database != ":memory:":
            status_file(self.database).unlink(missing_ok=True)  # the database says it now
        _OPEN_ENGINES.discard(self)


def _setting(node: exp.Set) -> str | None:
    """The name a one-item `SET name = value` sets."""
    items = node.expressions
    if len(items) == 1 and isinstance(items[0].this, exp.EQ):
        return items[0].this.this.name.lower()
    return None


def _canonical(sql: str) -> str:
    node = parse_one(sql).expression.copy()
    node.set("exists", False)
    node.set("replace", False)
    return node.sql(DIALECT)
