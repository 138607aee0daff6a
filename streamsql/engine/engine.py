"""The engine behind a connection: the database and its catalog, the sources, and the
lifecycle of the sinks' queries (start, restart, stop, drop, the status they publish).

Statements of the streaming dialect are handled by the table in `statements`; every other
statement is handed to DuckDB verbatim, in its own text, so DuckDB behaves exactly as DuckDB.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
from sqlglot import exp

from streamsql.catalog.binding import options_of, sink_def, source_def, union_as_select
from streamsql.catalog.definitions import SinkDef, SourceDef, ViewDef
from streamsql.checkpoint import dead_letters
from streamsql.checkpoint.fingerprint import fingerprint
from streamsql.checkpoint.metadata import QueryMetadata
from streamsql.checkpoint.schema import (
    CHECKPOINT_TABLES,
    OPERATOR_STATE,
    SCHEMA,
    create_tables,
    forget_statements,
    state_table,
    state_tables,
)
from streamsql.checkpoint.transactions import Statements, atomically, transaction
from streamsql.connectors.callback import BatchCallback, CallbackSink
from streamsql.connectors.registry import SINK_CONNECTORS, SOURCE_CONNECTORS, connector_class
from streamsql.connectors.sink import Sink
from streamsql.connectors.source import Source
from streamsql.engine.result import DuckCursor
from streamsql.engine.statements import Handler, handler_for
from streamsql.errors import (
    Error,
    OperationalError,
    PlanningError,
    ProgrammingError,
    from_duckdb,
)
from streamsql.incremental.aggregates import MACROS
from streamsql.incremental.compiler import BatchProgram, compile_chain
from streamsql.metrics import EngineMetrics
from streamsql.plan.plan import StreamingPlan, WatermarkPolicy
from streamsql.plan.planner import Planner
from streamsql.quoting import literal, quote
from streamsql.runtime.microbatch import MicroBatchExecution
from streamsql.runtime.query import StreamingQuery
from streamsql.runtime.triggers import Trigger
from streamsql.sql import Statement, nesting_room, parse_one, position_of

# DuckDB statement types restricted mode refuses (INSTALL and LOAD are LOAD; IMPORT DATABASE
# and COPY FROM DATABASE are PRAGMA; SET, RESET and USE are SET).
RESTRICTED_STATEMENTS = ("ATTACH", "DETACH", "LOAD", "EXTENSION", "PRAGMA", "EXPORT", "SET")

STATUS_SECONDS = 1.0  # how often a running process publishes its status, at most
STATUS_HEARTBEAT_SECONDS = 10.0  # and how often at least, while a query of a sink runs

CATALOG = f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.catalog (
    kind VARCHAR NOT NULL,          -- SOURCE | VIEW (over streams) | SINK
    name VARCHAR NOT NULL,
    sql VARCHAR NOT NULL,           -- the CREATE statement, as written
    running BOOLEAN DEFAULT true,   -- sinks: resumed when the database is opened again
    PRIMARY KEY (kind, name))"""
# Sinks: the values of the query's `?` placeholders, typed as given (a catalog of an
# earlier version gets the column when opened).
CATALOG_PARAMETERS = f"ALTER TABLE {SCHEMA}.catalog ADD COLUMN IF NOT EXISTS parameters VARIANT[]"


# Engines left open when the interpreter exits are closed, so that their queries stop
# between batches rather than being killed in the middle of one.
_OPEN_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()

# Database files open in this process, by resolved path: a second engine on one file would
# resume its sinks a second time.
_OPEN_FILES: dict[Path, Engine] = {}
_OPEN_FILES_LOCK = threading.Lock()


@atexit.register
def _close_open_engines() -> None:
    for engine in list(_OPEN_ENGINES):
        engine.close()


def source_instance(con: DuckCursor, definition: SourceDef) -> Source:
    """The connector's reader of a source, its declared columns typed by DuckDB."""
    connector = connector_class("Source", definition, SOURCE_CONNECTORS)
    try:
        schema = con.sql(Planner.empty_relation(definition, [])).to_arrow_table().schema
    except duckdb.Error as error:
        raise ProgrammingError(f"Source {definition.name}: {str(error).splitlines()[0]}") from None
    return connector(definition, schema)


def status_file(database: str) -> Path:
    """Where a process running an engine database publishes where its queries stand."""
    return Path(f"{database}.status.json")


def declared_paths(statements: Iterable[Statement]) -> list[str]:
    """The `path` options of the CREATE SOURCE and CREATE SINK statements among
    `statements`: the directories restricted mode lets DuckDB reach."""
    return [
        path
        for statement in statements
        if isinstance(statement.expression, exp.Create)
        and statement.expression.kind in ("SOURCE", "SINK")
        and (path := options_of(statement.expression).get("path"))
    ]


def _directory(path: str) -> str:
    """A directory as DuckDB's allowed_directories takes it: absolute, ending in a separator
    (symbolic links are not resolved: DuckDB compares the paths it is given)."""
    return os.path.join(os.path.abspath(path), "")


def _spellings(path: str) -> set[str]:
    """A directory as given and with symbolic links resolved: DuckDB is asked for both."""
    return {_directory(path), _directory(os.path.realpath(path))}


class Engine:
    def __init__(
        self,
        database: str = ":memory:",
        trigger: str | None = None,
        config: dict[str, Any] | None = None,
        restricted: bool = False,
        allowed_directories: Iterable[str] = (),
        read_only: bool = False,
    ) -> None:
        self.database = database
        self.read_only = read_only
        self.restricted = restricted
        self.allowed_directories: list[str] = []  # restricted mode: all DuckDB may reach
        self.trigger_override = Trigger.parse(trigger) if trigger else None  # CLI --trigger
        self.session_trigger = Trigger.parse(None)  # SET trigger = ...: sinks without one
        self._file = None if database == ":memory:" else Path(database).resolve()
        with _OPEN_FILES_LOCK:
            if self._file in _OPEN_FILES:
                raise OperationalError(
                    f"Cannot open {database}: it is already open in this process (by another "
                    "streamsql.connect); use that connection (its cursor() in another thread), "
                    "or close it first"
                )
            try:
                self.db = duckdb.connect(database, read_only=read_only, config=config or {})
            except duckdb.Error as error:  # a directory, a file another process holds, ...
                raise from_duckdb(error, f"Cannot open {database}") from None
            if self._file is not None:
                _OPEN_FILES[self._file] = self
        try:
            self.db.execute("SET GLOBAL TimeZone = 'UTC'").fetchall()
            if not read_only:
                with transaction(self.db):  # one commit: each statement alone commits and syncs
                    create_tables(self.db)
                    dead_letters.create_tables(self.db)
                    for statement in (*MACROS, CATALOG, CATALOG_PARAMETERS):
                        self.db.execute(statement).fetchall()
                self._clear_leftovers()
            elif not self.db.execute(
                "SELECT 1 FROM duckdb_tables() WHERE schema_name = ? AND table_name = 'catalog'",
                [SCHEMA],
            ).fetchall():
                raise OperationalError(
                    f"{database} is not a streamsql database: it has no {SCHEMA}.catalog"
                )
            if restricted:
                self._restrict(allowed_directories)
        except BaseException:  # not an engine database we can write: not open after all
            self.db.close()
            self._release_file()
            raise
        self.sources: dict[str, SourceDef] = {}
        self.sinks: dict[str, SinkDef] = {}
        self.views: dict[str, ViewDef] = {}  # over streams: DuckDB does not know them
        self.queries: dict[str, StreamingQuery] = {}
        self._instances: dict[str, Source] = {}
        self.callbacks: dict[str, BatchCallback] = {}  # functions callback sinks name
        self._lock = threading.RLock()
        self._cursors: weakref.WeakSet[DuckCursor] = weakref.WeakSet()
        self._status_lock = threading.Lock()
        self._status_published = float("-inf")
        # Counted from the start, so that metrics served later include the resumed sinks.
        self.metrics = EngineMetrics(
            lambda: [q for name, q in list(self.queries.items()) if name in self.sinks]
        )
        self._status_timer: threading.Timer | None = None  # the next publish, and when
        self._status_due = float("inf")
        self.closed = False
        _OPEN_ENGINES.add(self)
        self._load_catalog()

    # -- restricted mode -------------------------------------------------------------------------

    def _restrict(self, allowed_directories: Iterable[str]) -> None:
        """Lock DuckDB out of everything but the directories the catalog's sources and sinks
        name and `allowed_directories`, before any statement of the catalog runs. DuckDB
        cannot widen the list once external access is off, so it is complete now; sources
        and sinks declared later must name a directory in it."""
        stored = [
            Statement(parse_one(sql, stored=True).expression, sql, 1)
            for (sql,) in self.db.execute(f"SELECT sql FROM {SCHEMA}.catalog").fetchall()
        ]
        paths = [*declared_paths(stored), *allowed_directories]
        self.allowed_directories = sorted(set().union(*map(_spellings, paths)))
        listed = ", ".join(literal(directory) for directory in self.allowed_directories)
        for setting in (
            f"SET allowed_directories = [{listed}]",
            "SET enable_external_access = false",
            "SET lock_configuration = true",
        ):
            self.db.execute(setting).fetchall()

    def _check_allowed(self, kind: str, definition: SourceDef | SinkDef) -> None:
        """Restricted mode: a source or sink reads and writes only where DuckDB may."""
        path = definition.options.get("path")
        if not self.restricted or path is None:
            return
        if not any(_directory(path).startswith(d) for d in self.allowed_directories):
            allowed = ", ".join(self.allowed_directories) or "none"
            raise ProgrammingError(
                f"{kind} {definition.name}: restricted mode: path {path!r} is not in a "
                f"directory allowed when the database was opened ({allowed}); `streamsql run "
                "--restricted` allows the paths its file declares, connect() the "
                "allowed_directories it is given"
            )

    def admit(self, statement: Statement) -> None:
        """Refuse what DuckDB would misreport: a statement that reads a stream outside a
        streaming query or a sink with no table. Restricted mode: refuse the DuckDB statements
        that reach outside the database or change its settings (DuckDB itself refuses files
        outside the allowed directories)."""
        self._refuse_streams(statement.expression)
        if not self.restricted:
            return
        try:
            parsed = duckdb.extract_statements(statement.text)
            kinds = [p.type.name for p in parsed]
        except duckdb.Error as error:
            raise from_duckdb(error) from None
        except ValueError:  # a statement type the Python client does not name (UPDATE EXTENSIONS)
            kinds = ["UNKNOWN"]
        if len(kinds) != 1 or kinds[0] in RESTRICTED_STATEMENTS or kinds[0] == "UNKNOWN":
            first = statement.text.split(None, 1)[0].upper() if statement.text.strip() else ""
            raise ProgrammingError(
                f"Restricted mode refuses {first} statements (line {statement.line}): "
                "ATTACH, DETACH, INSTALL, LOAD, PRAGMA, EXPORT/IMPORT DATABASE, SET and RESET "
                "reach outside the database or change its settings"
            )

    def _refuse_streams(self, node: exp.Expr) -> None:
        """A source or an output-less sink named in a statement DuckDB runs: DuckDB knows no
        table of that name and would say so, which is true and no help."""
        for table in node.find_all(exp.Table):
            name = table.name.lower()
            sink = self.sinks.get(name)
            if sink is not None and not table.db and _output(sink) is None:
                target = getattr(_sink_class(sink), "TARGET", None) or sink.connector
                raise PlanningError(
                    f"Sink {sink.name} writes to {target} and has no table to select from; "
                    "sinks with connector = 'duckdb' (a table) or a file connector (a view) "
                    "can be selected from",
                    position=position_of(table),
                )
            if name in self.sources and not table.db:
                raise _stream_outside_a_query(node, self.sources[name].name, table)
            if name in self.views and not table.db:
                raise _stream_outside_a_query(node, self.views[name].name, table)

    # -- catalog ---------------------------------------------------------------------------------

    def _load_catalog(self) -> None:
        # A catalog of an earlier version opened read-only has no parameters column yet.
        (has_parameters,) = self.db.execute(
            "SELECT count(*) > 0 FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name = ? AND table_name = 'catalog' AND column_name = 'parameters'",
            [SCHEMA],
        ).fetchall()[0]
        stored = "parameters" if has_parameters else "NULL AS parameters"
        rows = self.db.execute(
            f"SELECT kind, sql, running, {stored} FROM {SCHEMA}.catalog "
            "ORDER BY list_position(['SOURCE', 'VIEW', 'SINK'], kind), name"
        ).fetchall()
        for kind, sql, running, parameters in rows:
            create = parse_one(sql, stored=True).expression
            if kind == "SOURCE":
                self._register_source(source_def(create, sql))
            elif kind == "VIEW":
                self.views[create.this.name.lower()] = ViewDef(
                    create.this.name, create.expression, sql
                )
            else:
                definition = sink_def(create, sql, parameters)
                self.sinks[definition.name.lower()] = definition
                if running and not self.read_only:
                    try:
                        with nesting_room(1):  # planned again, as deep as when created
                            self._start(definition)
                    except Error as error:  # the database opens; this sink waits to be fixed
                        warnings.warn(
                            f"Sink {definition.name} did not resume: {error}", stacklevel=4
                        )

    def _clear_leftovers(self) -> None:
        """Remove checkpoints and state tables that no sink in the catalog owns: what a push
        query killed with its process left, or a DROP SINK or CREATE OR REPLACE SINK of a
        version before they were atomic that was interrupted. A sink created under the name
        later starts over instead of resuming them."""
        (names, tables) = self.db.execute(
            f"""SELECT
                (SELECT list(DISTINCT query) FROM ({
                " UNION ALL ".join(f"SELECT query FROM {t}" for t in CHECKPOINT_TABLES)
            }) WHERE lower(query) NOT IN (SELECT lower(name) FROM {SCHEMA}.catalog
                                           WHERE kind = 'SINK')),
                (SELECT list(table_name) FROM duckdb_tables()
                 WHERE database_name = current_database() AND schema_name = ?
                   AND starts_with(table_name, 'state_')
                   AND lower(regexp_replace(table_name[7:], ?, ''))  -- its sink
                       NOT IN (SELECT lower(name) FROM {SCHEMA}.catalog WHERE kind = 'SINK'))""",
            [SCHEMA, OPERATOR_STATE.pattern],
        ).fetchall()[0]
        names, tables = names or [], tables or []
        statements: list[tuple[str, list[str]]] = []
        for name in names:
            statements += forget_statements(name)
        statements += [(f"DROP TABLE {SCHEMA}.{quote(table)}", []) for table in tables]
        if not statements:
            return
        atomically(self.db, statements)
        dropped = sorted(
            {n.lower() for n in names if not n.startswith("__push_")}
            | {OPERATOR_STATE.sub("", t[len("state_") :]).lower() for t in tables}
        )
        if dropped:
            warnings.warn(
                f"{self.database}: removed the checkpoint and state of sinks {', '.join(dropped)}, "
                "which are no longer in the catalog (left by an interrupted DROP SINK or CREATE "
                "OR REPLACE SINK of an earlier version); a sink created under one of these "
                "names starts over",
                stacklevel=4,
            )

    def _remember(self, kind: str, name: str, sql: str, parameters: Sequence[Any] = ()) -> None:
        self.db.execute(*self._remember_statement(kind, name, sql, parameters)).fetchall()

    @staticmethod
    def _remember_statement(
        kind: str, name: str, sql: str, parameters: Sequence[Any] = ()
    ) -> tuple[str, list[Any]]:
        """The catalog row; a sink's parameter values are bound into a VARIANT list, which
        gives each back with the type it was given."""
        values = ", ".join("?::VARIANT" for _ in parameters)
        return (
            f"INSERT OR REPLACE INTO {SCHEMA}.catalog (kind, name, sql, running, parameters) "
            f"VALUES (?, ?, ?, true, [{values}])",
            [kind, name, sql, *parameters],
        )

    @staticmethod
    def _forget_statement(kind: str, name: str) -> tuple[str, list[str]]:
        return (
            f"DELETE FROM {SCHEMA}.catalog WHERE kind = ? AND lower(name) = lower(?)",
            [kind, name],
        )

    def source(self, name: str) -> Source:
        try:
            return self._instances[name.lower()]
        except KeyError:
            raise ProgrammingError(f"Unknown source {name!r}") from None

    def _register_source(self, definition: SourceDef) -> None:
        self._instances[definition.name.lower()] = source_instance(self.db, definition)
        self.sources[definition.name.lower()] = definition

    # -- statements and queries ------------------------------------------------------------------

    def handler(self, statement: Statement) -> Handler | None:
        """Our handler for a statement, or None when DuckDB should run it."""
        return handler_for(self, statement)

    def _create_sink(self, definition: SinkDef, replaced: SinkDef | None, sink: Sink) -> None:
        """Record the sink (replacing one: drop the old sink's checkpoint, state, dead letters
        and table or view in the same transaction), then start it. A sink that fails to
        start is not recorded; a crash after the record resumes it on the next open."""
        # refuses a bad definition before any change
        execution = self._execution(definition, sink)
        statements = [
            self._remember_statement("SINK", definition.name, definition.sql, definition.parameters)
        ]
        try:
            if replaced is not None:
                statements[:0] = self._drop_statements(replaced)
                self._stop(replaced.name)
            with dead_letters.WRITE_LOCK:
                atomically(self.db, statements)
        except BaseException:
            execution.close()
            raise
        self.sinks.pop(definition.name.lower(), None)
        try:
            self._start(definition, execution)
        except BaseException:
            self.db.execute(*self._forget_statement("SINK", definition.name)).fetchall()
            raise
        self.sinks[definition.name.lower()] = definition

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

    def _check_outputs(self, definition: SinkDef, existing: SinkDef | None) -> None:
        """Each sink writes to a directory of its own, and to a table or view of its own that
        nothing else in the database has taken (names compare as DuckDB identifiers do)."""
        path = definition.options.get("path")
        output = _output(definition)
        for other in self.sinks.values():
            if other.name.lower() == definition.name.lower():
                continue
            theirs = other.options.get("path")
            if path and theirs and Path(theirs).resolve() == Path(path).resolve():
                raise ProgrammingError(
                    f"Sink {definition.name}: path {path!r} is where sink {other.name} writes; "
                    "each sink needs a directory of its own"
                )
            theirs = _output(other)
            if output and theirs and _same_relation(output[1], theirs[1]):
                raise ProgrammingError(
                    f"Sink {definition.name}: {output[0].lower()} {'.'.join(output[1])!r} is "
                    f"the {theirs[0].lower()} of sink {other.name}; each sink needs a "
                    f"{output[0].lower()} of its own: name another with "
                    f"{_output_option(definition)} = '...'"
                )
        before = _output(existing) if existing is not None else None
        if output and not (before and _same_relation(before[1], output[1])):
            found = self._relation_kind(output[1])
            if found:
                raise ProgrammingError(
                    f"Sink {definition.name}: a {found} {'.'.join(output[1])!r} exists "
                    f"already, and the sink's {output[0].lower()} would take its place (a sink "
                    "owns its table or view: DROP SINK drops it); drop it, or name another "
                    f"with {_output_option(definition)} = '...'"
                )

    def _relation_kind(self, parts: tuple[str, ...]) -> str | None:
        """'table' or 'view' if the (catalog, schema,) name exists in the database."""
        name, schema, database = (*reversed(parts), None, None)[:3]
        rows = self.db.execute(
            """SELECT kind FROM (
                   SELECT 'table' AS kind, database_name, schema_name, table_name AS name
                   FROM duckdb_tables()
                   UNION ALL
                   SELECT 'view', database_name, schema_name, view_name FROM duckdb_views()
                   WHERE NOT internal)
               WHERE lower(name) = lower($name)
                 AND lower(schema_name) = lower(coalesce($schema, current_schema()))
                 AND lower(database_name) = lower(coalesce($database, current_database()))""",
            {"name": name, "schema": schema, "database": database},
        ).fetchall()
        return rows[0][0] if rows else None

    def _restart_changed(self, existing: SinkDef, definition: SinkDef, sink: Sink) -> None:
        """Resume a sink's checkpoint under a new definition, if its state is unaffected
        (sink options, the trigger, projections and filters may change; Spark's rules)."""
        name = definition.name
        plan = self.plan(definition.query, definition.parameters, definition.options)
        changed = QueryMetadata(self.db, name).mismatch(fingerprint(plan))
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
            self._start(definition, self._execution(definition, sink, plan))
        except Exception:
            if previous is not None:
                self._start(existing)
            raise
        self.sinks[name.lower()] = definition

    def plan(
        self,
        select: exp.Query,
        parameters: Sequence[Any] | None = None,
        options: Mapping[str, str] | None = None,
    ) -> StreamingPlan:
        """`options`: the sink's, which choose how several sources' watermarks combine."""
        policy = (options or {}).get("multiple_watermark_policy", "min").lower()
        if policy not in tuple(WatermarkPolicy):
            raise ProgrammingError(
                f"multiple_watermark_policy = {policy!r}: expected 'min' or 'max'"
            )
        if isinstance(select, exp.SetOperation):
            select = union_as_select(select, "A streaming query")
        with contextlib.closing(self.cursor()) as cursor:
            views = {name: view.query for name, view in self.views.items()}
            planner = Planner(cursor, self.sources, views)
            return planner.plan(select, parameters, WatermarkPolicy(policy))

    def cursor(self) -> DuckCursor:
        """A DuckDB cursor on the engine database, in UTC, closed with the engine."""
        cursor = self.db.cursor()
        if not self.restricted:  # else the configuration is locked, in UTC
            cursor.execute("SET TimeZone = 'UTC'").fetchall()
        self._cursors.add(cursor)
        return cursor

    def programs(self, name: str, plan: StreamingPlan) -> list[BatchProgram]:
        """The programs of the operators of a sink's query."""
        return compile_chain(plan, functools.partial(state_table, name))

    def _start(
        self, definition: SinkDef, execution: MicroBatchExecution | None = None
    ) -> StreamingQuery:
        if self.read_only:
            raise OperationalError(
                f"Sink {definition.name} cannot run: {self.database} is open read-only "
                "(connect(read_only=True) inspects a database without resuming its sinks)"
            )
        execution = execution or self._execution(definition)
        given = definition.options.get("trigger")
        trigger = self.trigger_override or (Trigger.parse(given) if given else self.session_trigger)
        query = StreamingQuery(execution, trigger, self._progressed)
        key = definition.name.lower()
        previous = self.queries.get(key)
        self.queries[key] = query  # before it runs: its first status is published with it
        try:
            query.start()
        except BaseException:
            if previous is None:
                del self.queries[key]
            else:
                self.queries[key] = previous
            raise
        return query

    def _execution(
        self, definition: SinkDef, sink: Sink | None = None, plan: StreamingPlan | None = None
    ) -> MicroBatchExecution:
        """The sink's query, ready to start (from the sink and plan already made, if given)."""
        plan = plan or self.plan(definition.query, definition.parameters, definition.options)
        sink = sink or self._sink(definition)
        return self._prepare(definition.name, plan, self.programs(definition.name, plan), sink)

    def _sink(self, definition: SinkDef) -> Sink:
        """The connector's sink, its options checked (it connects to nothing yet)."""
        connector = connector_class("Sink", definition, SINK_CONNECTORS)
        if connector is CallbackSink:
            return CallbackSink(
                definition.name, definition.options, self.callbacks, not self.restricted
            )
        return connector(definition.name, definition.options)

    def _prepare(
        self, name: str, plan: StreamingPlan, programs: list[BatchProgram], sink: Sink
    ) -> MicroBatchExecution:
        sources = [self.source(scan.name).for_query() for scan in plan.sources_plan.scans]
        return MicroBatchExecution(name, self.cursor(), plan, programs, sources, sink)

    def _progressed(self, query: StreamingQuery) -> None:
        """After each batch of a sink's query (and when it waits for its source or ends)."""
        self.metrics.observe(query)
        self._publish_status(query)

    def _publish_status(self, query: StreamingQuery) -> None:
        """Publish where the sinks stand for `streamsql status`, which cannot open the
        database while this process holds it. While a query is processing (a batch starts
        or commits), at most once a second, what comes within the second published at its
        end; at once when it leaves processing (waits for data or the next trigger, stops,
        fails), so the file is never behind a query gone idle; and every
        STATUS_HEARTBEAT_SECONDS while a query runs, so a reader can tell a file kept fresh
        from one left behind."""
        if self.database == ":memory:" or self.closed:
            return
        with self._status_lock:
            wait = STATUS_SECONDS - (time.monotonic() - self._status_published)
            if query.is_active and query.status["message"] == "processing" and wait > 0:
                self._schedule_status(wait)
            else:
                self._write_status()

    def _schedule_status(self, delay: float) -> None:
        """A publish in `delay` seconds, unless one is due sooner (under `_status_lock`)."""
        due = time.monotonic() + delay
        if self._status_timer is not None:
            if self._status_due <= due:
                return
            self._status_timer.cancel()
        timer = threading.Timer(delay, lambda: self._publish_pending(timer))
        timer.daemon = True
        self._status_timer, self._status_due = timer, due
        timer.start()

    def _publish_pending(self, timer: threading.Timer) -> None:
        with self._status_lock:
            if self._status_timer is timer and not self.closed:  # not one cancelled since
                self._status_timer = None
                self._write_status()

    def _write_status(self) -> None:
        """The status file, replaced whole (under `_status_lock`)."""
        self._status_published = time.monotonic()
        sinks = [
            {**q.execution.position(), "running": q.is_active, "status": q.status}
            for _, q in sorted(list(self.queries.items()))
            # a sink's (push queries publish nothing), once started: it knows its position
            if q.on_progress is not None and q.status["message"] != "initializing"
        ]
        target = status_file(self.database)
        staged = target.with_name(f".{target.name}.tmp")
        snapshot = {"pid": os.getpid(), "written_at": time.time(), "sinks": sinks}
        with contextlib.suppress(OSError):  # a status not written never stops a query
            staged.write_text(json.dumps(snapshot, default=str))
            os.replace(staged, target)
        if any(sink["running"] for sink in sinks):
            self._schedule_status(STATUS_HEARTBEAT_SECONDS)

    def register_callback(self, name: str, function: BatchCallback) -> None:
        """Name a function for callback sinks: `WITH (connector = 'callback', callback = name)`."""
        self.callbacks[name] = function

    def query(self, name: str) -> StreamingQuery:
        try:
            return self.queries[name.lower()]
        except KeyError:
            raise ProgrammingError(f"No running query named {name!r}") from None

    def _stop(self, name: str) -> None:
        query = self.queries.pop(name.lower(), None)
        if query is not None:
            query.stop()

    def _drop_statements(self, definition: SinkDef) -> Statements:
        """What DROP SINK removes, in one transaction: the catalog row, the checkpoint, the
        state, the dead letters, and the table or view the sink keeps in the database (its
        files and Kafka topics stay where they are)."""
        name = definition.name
        statements = [
            self._forget_statement("SINK", name),
            *forget_statements(name),
            *dead_letters.forget_statements(name),
            *((f"DROP TABLE IF EXISTS {table}", []) for table in state_tables(self.db, name)),
        ]
        output = _output(definition)
        if output:
            kind, parts = output
            statements.append((f"DROP {kind} IF EXISTS {'.'.join(map(quote, parts))}", []))
        return statements

    def _set_running(self, name: str, running: bool) -> None:
        """Whether the sink resumes when the database is opened again."""
        self.db.execute(
            f"UPDATE {SCHEMA}.catalog SET running = ? "
            "WHERE kind = 'SINK' AND lower(name) = lower(?)",
            [running, name],
        ).fetchall()

    def close(self) -> None:
        """Stop every query (each after its batch in flight commits) and close the database."""
        if self.closed:
            return
        self.closed = True
        for query in list(self.queries.values()):
            query.stop()
        self.queries.clear()
        self.metrics.close()
        with self._status_lock:
            if self._status_timer is not None:
                self._status_timer.cancel()
        for cursor in list(self._cursors):
            cursor.close()
        self.db.close()
        if self.database != ":memory:" and not self.read_only:
            status_file(self.database).unlink(missing_ok=True)  # the database says it now
        _OPEN_ENGINES.discard(self)
        self._release_file()

    def _release_file(self) -> None:
        with _OPEN_FILES_LOCK:
            if _OPEN_FILES.get(self._file) is self:
                del _OPEN_FILES[self._file]


def _stream_outside_a_query(node: exp.Expr, source: str, table: exp.Table) -> PlanningError:
    """Why a statement DuckDB would run cannot read `source`, and what to write instead."""
    where = position_of(table)
    if isinstance(node, exp.SetOperation):
        return PlanningError(
            f"Source {source} is a stream: {node.key.upper()} over streams is not supported: "
            "only UNION ALL is stateless",
            rule="union-all-only",
            position=where,
        )
    if isinstance(node, exp.Insert) or (isinstance(node, exp.Create) and node.kind == "TABLE"):
        target = node.this.this if isinstance(node.this, exp.Schema) else node.this
        return PlanningError(
            f"Source {source} is a stream: to write it into table {target.name}, use "
            f"CREATE SINK name WITH (connector = 'duckdb', table = '{target.name}') AS SELECT ...",
            position=where,
        )
    return PlanningError(
        f"Source {source} is a stream: read it in a SELECT or a CREATE SINK ... AS SELECT",
        position=where,
    )


def _output(definition: SinkDef) -> tuple[str, tuple[str, ...]] | None:
    """(TABLE or VIEW, its identifier parts) that a sink keeps in the database."""
    connector = _sink_class(definition)
    if connector is None or connector.OUTPUT is None:
        return None
    return connector.OUTPUT[0], connector.output(definition.name, definition.options)


def _sink_class(definition: SinkDef) -> type[Sink] | None:
    """A stored sink's connector class (None for a connector this version does not know)."""
    return SINK_CONNECTORS.get(definition.connector.lower())


def _same_relation(one: tuple[str, ...], other: tuple[str, ...]) -> bool:
    """Whether two names are one relation for DuckDB: case-insensitive, 'x' = 'main.x'."""

    def key(parts: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(p.lower() for p in (("main", *parts) if len(parts) == 1 else parts))

    return key(one) == key(other)


def _output_option(definition: SinkDef) -> str:
    return SINK_CONNECTORS[definition.connector.lower()].OUTPUT[1]
