"""The statements of the streaming dialect, each matched to its handler in one table
(`HANDLERS`, as sqlglot's Generator keeps TRANSFORMS): the first entry whose node class and
condition match a statement handles it; a statement no entry matches is DuckDB's."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Sequence
from types import UnionType
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from sqlglot import exp

from streamsql.catalog.binding import differences, sink_def, source_def
from streamsql.catalog.definitions import SinkDef, SourceDef, ViewDef
from streamsql.checkpoint import dead_letters
from streamsql.checkpoint.schema import forget_statements, state_table_name
from streamsql.checkpoint.transactions import atomically
from streamsql.connectors.collect import CollectSink
from streamsql.connectors.formats import cast_to_column
from streamsql.connectors.memory import MemorySource
from streamsql.connectors.source import Source
from streamsql.engine.explain import explain
from streamsql.engine.result import DuckCursor, Result
from streamsql.engine.show import describe_query, show
from streamsql.errors import ProgrammingError, from_duckdb
from streamsql.incremental.compiler import compile_chain
from streamsql.plan.relation import inline_views
from streamsql.quoting import quote
from streamsql.runtime.push import PushStream
from streamsql.runtime.query import StreamingQuery
from streamsql.runtime.triggers import Trigger
from streamsql.sql import DIALECT, Statement, nodes, parse_one

if TYPE_CHECKING:
    from streamsql.engine.engine import Engine

# A statement's handler: the engine, the statement, its parameters, the caller's cursor.
Handler = Callable[["Engine", Statement, Sequence[Any] | None, DuckCursor], Result]
Condition = Callable[["Engine", Any], bool]

PUSH_LABEL_WIDTH = 60  # characters of a push query's first line its errors quote


def _is_streaming(engine: Engine, node: exp.Expr | None) -> bool:
    if isinstance(node, exp.Create) and node.kind == "SINK":
        return True
    if not isinstance(node, exp.Select | exp.Union):
        return False
    if any(node.args.get(k) for k in ("stream_window", "deduplicate", "emit")):
        return True
    return any(
        t.name.lower() in engine.sources or t.name.lower() in engine.views
        for t in node.find_all(exp.Table)
        if not t.db
    )


def _names_view(engine: Engine, node: exp.Drop) -> bool:
    tables = node.args.get("tables") or [node.this]
    return any(t.name.lower() in engine.views for t in tables)


def create_view(
    engine: Engine, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
) -> Result:
    """A view over streams: kept in the catalog, read as a stream by later queries (its
    query is planned into theirs); planned now, so that a view no query could read is
    refused when it is created."""
    create = statement.expression
    name = create.this.name
    if params:
        raise ProgrammingError(f"CREATE VIEW {name}: a view over streams takes no parameters")
    taken = engine.sources.get(name.lower()) or engine.sinks.get(name.lower())
    if taken is not None or engine._relation_kind((name,)):
        raise ProgrammingError(f"CREATE VIEW {name}: the name is taken")
    with engine._lock:
        existing = engine.views.get(name.lower())
        if existing is not None and not create.args.get("replace"):
            # A script run again declares its views again: the same one is a no-op.
            if create.args.get("exists") or existing.query == create.expression:
                return Result()
            raise ProgrammingError(
                f"View {name!r} already exists with another query; CREATE OR REPLACE "
                "VIEW to change it"
            )
        users = [s.name for s in engine.sinks.values() if _reads(engine, s, name)]
        if users and name.lower() in engine.views:
            raise ProgrammingError(f"Cannot replace view {name}: sinks {', '.join(users)} read it")
        engine.plan(create.expression)
        engine._remember("VIEW", name, statement.text)
        engine.views[name.lower()] = ViewDef(name, create.expression, statement.text)
    return Result()


def _insert_target(engine: Engine, node: exp.Insert) -> Source | None:
    target = node.this.this if isinstance(node.this, exp.Schema) else node.this
    if isinstance(target, exp.Table) and target.name.lower() in engine.sources:
        return engine._instances[target.name.lower()]
    return None


def create_source(
    engine: Engine, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
) -> Result:
    create = statement.expression
    name = create.this.this.name if isinstance(create.this, exp.Schema) else create.this.name
    with engine._lock:
        existing = engine.sources.get(name.lower())
        if existing is not None and _unchanged(existing, create, statement.text):
            return Result()
        definition = source_def(create, statement.text)
        engine._check_allowed("Source", definition)
        if existing is not None and not create.args.get("replace"):
            raise ProgrammingError(
                f"Source {name} already exists with a different definition "
                f"({'; '.join(differences(existing, definition))}); use CREATE OR REPLACE "
                f"SOURCE or DROP SOURCE {name} first"
            )
        if existing is not None:
            users = [s.name for s in engine.sinks.values() if _reads(engine, s, name)]
            if users:
                raise ProgrammingError(
                    f"Cannot replace source {name}: sinks {', '.join(users)} read it"
                )
        engine._register_source(definition)
        engine._remember("SOURCE", definition.name, statement.text)
    return Result()


def _unchanged(existing: SourceDef | SinkDef, create: exp.Create, text: str) -> bool:
    """CREATE of something that exists: IF NOT EXISTS and identical re-runs are no-ops
    (as re-submitting a Spark job with the same checkpoint is)."""
    if create.args.get("replace"):
        return False
    return bool(create.args.get("exists")) or _canonical(existing.sql) == _canonical(text)


def _reads(engine: Engine, sink: SinkDef | ViewDef, relation: str) -> bool:
    """Whether the query reads the source or view `relation`, through views too."""
    query = inline_views(sink.query.copy(), {n: v.query for n, v in engine.views.items()})
    names = {t.name.lower() for t in query.find_all(exp.Table)}
    names |= {t.name.lower() for t in sink.query.find_all(exp.Table)}
    return relation.lower() in names


def create_sink(
    engine: Engine, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
) -> Result:
    create = statement.expression
    name = create.this.name
    with engine._lock:
        existing = engine.sinks.get(name.lower())
        definition = sink_def(create, statement.text, params)
        if (
            existing is not None
            and _unchanged(existing, create, statement.text)
            and (create.args.get("exists") or existing.parameters == definition.parameters)
        ):
            if not create.args.get("exists") and engine._resubmittable(name):
                engine._start(existing)
                engine._set_running(name, True)
            return Result()
        engine._check_allowed("Sink", definition)
        sink = engine._sink(definition)  # every option checked before anything runs or is stored
        engine._check_outputs(definition, existing)
        if existing is not None and not create.args.get("replace"):
            engine._restart_changed(existing, definition, sink)
            engine._remember("SINK", name, statement.text, definition.parameters)
        else:
            engine._create_sink(definition, existing, sink)
    return Result()


def drop(
    engine: Engine, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
) -> Result:
    node = statement.expression
    tables = node.args.get("tables") or [node.this]
    if len(tables) != 1:
        raise ProgrammingError(f"DROP {node.kind} takes one name")
    name = tables[0].name
    with engine._lock:
        registry = {"SOURCE": engine.sources, "VIEW": engine.views}.get(node.kind, engine.sinks)
        if name.lower() not in registry:
            if node.args.get("exists"):
                return Result()
            raise ProgrammingError(f"{node.kind.title()} {name!r} does not exist")
        if node.kind in ("SOURCE", "VIEW"):
            users = [
                f"{kind} {d.name}"
                for kind, defs in (("sink", engine.sinks), ("view", engine.views))
                for d in defs.values()
                if d.name.lower() != name.lower() and _reads(engine, d, name)
            ]
            if users:
                raise ProgrammingError(
                    f"Cannot drop {node.kind.lower()} {name}: {', '.join(users)} read it; "
                    "drop them first"
                )
            del registry[name.lower()]
            engine._instances.pop(name.lower(), None)
            engine.db.execute(*engine._forget_statement(node.kind, name)).fetchall()
        else:
            definition = engine.sinks[name.lower()]
            statements = engine._drop_statements(definition)
            engine._stop(name)
            with dead_letters.WRITE_LOCK:
                atomically(engine.db, statements)
            del engine.sinks[name.lower()]
    return Result()


def stop_query(
    engine: Engine, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
) -> Result:
    name = statement.expression.this.name
    engine.query(name).stop()
    engine._set_running(name, False)
    return Result()


def compact_sink(
    engine: Engine, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
) -> Result:
    """Compact in the sink's own query, between two batches; a stopped sink's query is
    opened (recovered) for it, without running batches."""
    name = statement.expression.this.name
    definition = engine.sinks.get(name.lower())
    if definition is None:
        raise ProgrammingError(f"Sink {name!r} does not exist")
    query = engine.queries.get(name.lower())
    if query is not None and query.is_active:
        replaced, written = query.between_batches(lambda e: e.sink.compact(e.cursor))
    else:
        execution = engine._execution(definition)
        try:
            execution.start()
            replaced, written = execution.sink.compact(execution.cursor)
        finally:
            execution.close()
    return Result(["files_replaced", "files_written"], [(replaced, written)])


def set_trigger(
    engine: Engine, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
) -> Result:
    """`SET trigger = '...'`: the trigger of queries this session starts without one."""
    value = statement.expression.expressions[0].this.expression
    engine.session_trigger = Trigger.parse(value.name)
    return Result()


def insert_into_source(
    engine: Engine, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
) -> Result:
    """Evaluate the INSERT's rows in DuckDB, cast to the source's columns, and append them."""
    node = statement.expression
    source = _insert_target(engine, node)
    if not isinstance(source, MemorySource):
        raise ProgrammingError(
            f"INSERT INTO {source.name}: only memory sources accept rows; "
            f"{source.definition.connector} sources read from their connector"
        )
    rows = _evaluate_insert(engine, node, source, params, cursor)
    return Result(rowcount=source.append(rows))


def _evaluate_insert(
    engine: Engine,
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
        f"{cast_to_column(quote(given[c.name.lower()]), c.type)} AS {quote(c.name)}"
        if c.name.lower() in given
        else f"CAST(NULL AS {c.type}) AS {quote(c.name)}"
        for c in source.definition.columns
    )
    sql = f"SELECT {casts} FROM ({values.sql('duckdb')}) AS __values({names})"
    try:
        # The caller's cursor: its registered views and parameters are in scope.
        return cursor.sql(sql, params=list(params) if params else None).to_arrow_table()
    except duckdb.Error as error:
        raise from_duckdb(error, f"INSERT INTO {source.name}") from None


def push_query(
    engine: Engine, statement: Statement, params: Sequence[Any] | None, cursor: DuckCursor
) -> Result:
    """Run a streaming SELECT for the caller: its rows arrive as batches emit them."""
    name = f"__push_{uuid.uuid4().hex[:12]}"
    plan = engine.plan(statement.expression, params)
    programs = compile_chain(
        plan, lambda operator: quote(state_table_name(name, operator)), temporary=True
    )
    sink = CollectSink(name, {})
    trigger = engine.trigger_override or engine.session_trigger
    query = StreamingQuery(
        engine._prepare(name, plan, programs, sink), trigger, label=_push_label(statement)
    )
    engine.queries[name] = query.start()

    def forget() -> None:
        engine.queries.pop(name, None)
        if engine.closed:  # nothing left to forget in: its checkpoint went with the engine
            return
        with contextlib.closing(engine.cursor()) as cursor:
            atomically(cursor, forget_statements(name))

    return Result(columns=plan.output_names, stream=PushStream(query, sink, forget))


def _push_label(statement: Statement) -> str:
    """What a push query's errors call it: its SQL's first line, and where it starts."""
    first = statement.text.strip().splitlines()[0]
    if len(first) > PUSH_LABEL_WIDTH:
        first = first[: PUSH_LABEL_WIDTH - 3] + "..."
    return f"Push query `{first}` (line {statement.line})"


def _setting(node: exp.Set) -> str | None:
    """The name a one-item `SET name = value` sets."""
    items = node.expressions
    if len(items) == 1 and isinstance(items[0].this, exp.EQ):
        return items[0].this.this.name.lower()
    return None


def _canonical(sql: str) -> str:
    node = parse_one(sql, stored=True).expression.copy()  # SQL accepted already
    node.set("exists", False)
    node.set("replace", False)
    return node.sql(DIALECT)


def _always(engine: Engine, node: exp.Expr) -> bool:
    return True


HANDLERS: tuple[tuple[type[exp.Expr] | UnionType, Condition, Handler], ...] = (
    (
        exp.Create,
        lambda engine, node: node.kind == "VIEW" and _is_streaming(engine, node.expression),
        create_view,
    ),
    (exp.Drop, lambda engine, node: node.kind == "VIEW" and _names_view(engine, node), drop),
    (exp.Create, lambda engine, node: node.kind == "SOURCE", create_source),
    (exp.Create, lambda engine, node: node.kind == "SINK", create_sink),
    (exp.Drop, lambda engine, node: node.kind in ("SOURCE", "SINK"), drop),
    (nodes.Explain, lambda engine, node: _is_streaming(engine, node.this), explain),
    (nodes.ShowStreams, _always, show),
    (nodes.DescribeQuery, _always, describe_query),
    (nodes.StopQuery, _always, stop_query),
    (nodes.CompactSink, _always, compact_sink),
    (exp.Set, lambda engine, node: _setting(node) == "trigger", set_trigger),
    (exp.Insert, lambda engine, node: _insert_target(engine, node) is not None, insert_into_source),
    (exp.Select | exp.Union, _is_streaming, push_query),
)


def handler_for(engine: Engine, statement: Statement) -> Handler | None:
    """The handler of a statement of ours, or None when DuckDB runs it."""
    node = statement.expression
    for kind, condition, handler in HANDLERS:
        if isinstance(node, kind) and condition(engine, node):
            return handler
    return None
