"""What CREATE SOURCE and CREATE SINK declare, bound into plain definitions the engine stores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlglot import exp

from streamsql.catalog.definitions import (
    INTERNAL_PREFIX,
    Column,
    ComputedColumn,
    SinkDef,
    SourceDef,
    WatermarkSpec,
)
from streamsql.errors import PlanningError
from streamsql.secrets import shown
from streamsql.sql import DIALECT, position_of
from streamsql.sql.nodes import MetadataColumnConstraint


def options_of(create: exp.Create) -> dict[str, str]:
    """`WITH (key = value, ...)` as a dict of lower-case keys and string values."""
    options: dict[str, str] = {}
    properties = create.args.get("properties")
    for prop in properties.expressions if properties else []:
        if isinstance(prop, exp.FileFormatProperty):  # sqlglot's node for `format = ...`
            key, value = "format", prop.this
        elif isinstance(prop, exp.Property):
            # Dotted keys (kafka.security.protocol) arrive as Dot nodes: keep them whole.
            key, value = prop.this.sql("duckdb").replace('"', ""), prop.args.get("value")
        else:
            raise PlanningError(f"Unsupported option {prop.sql(DIALECT)!r} in {create.kind}")
        options[key.lower()] = _option_value(key, value)
    return options


def _option_value(key: str, value: exp.Expr | None) -> str:
    if isinstance(value, exp.Literal):
        return value.name
    if isinstance(value, exp.Boolean):
        return "true" if value.this else "false"
    if isinstance(value, (exp.Var, exp.Identifier, exp.Column)):
        return value.name
    raise PlanningError(f"Option {key!r} needs a literal value, got {value.sql(DIALECT)!r}")


def check_column_name(name: str, where: str) -> None:
    """Refuse a user column name that an internal column could take."""
    if name.lower().startswith(INTERNAL_PREFIX):
        raise PlanningError(
            f"{where}: column name {name!r} starts with {INTERNAL_PREFIX!r}, which streamsql "
            "keeps for the columns it adds; choose another name"
        )


def source_def(create: exp.Create, sql: str) -> SourceDef:
    schema = create.this
    if not isinstance(schema, exp.Schema):
        raise PlanningError(f"CREATE SOURCE {create.this.name} needs a column list")
    columns: list[Column] = []
    computed: list[ComputedColumn] = []
    watermark: WatermarkSpec | None = None
    if create.expression is not None:
        raise PlanningError(
            f"CREATE SOURCE {schema.this.name} takes columns and WITH (...) options, not AS <query>"
        )
    for item in schema.expressions:
        if isinstance(item, exp.WatermarkColumnConstraint):
            if watermark is not None:
                raise PlanningError(f"CREATE SOURCE {schema.this.name} declares two watermarks")
            watermark = _watermark_of(item)
        elif isinstance(item, exp.ColumnDef) and (expression := _computed_expression(item)):
            computed.append(ComputedColumn(item.name, expression))
        elif isinstance(item, exp.ColumnDef) and item.args.get("kind"):
            columns.append(Column(item.name, item.args["kind"].sql("duckdb"), _metadata_key(item)))
        else:
            raise PlanningError(f"Cannot read column definition {item.sql(DIALECT)!r}")
    name = schema.this.name
    options = options_of(create)
    if "connector" not in options:
        raise PlanningError(f"CREATE SOURCE {name} needs WITH (connector = '...')")
    names = [c.name.lower() for c in columns] + [c.name.lower() for c in computed]
    for column_name in names:
        check_column_name(column_name, f"CREATE SOURCE {name}")
    if len(set(names)) != len(names):
        raise PlanningError(f"CREATE SOURCE {name} declares a column twice")
    if watermark and watermark.column.lower() not in names:
        raise PlanningError(
            f"WATERMARK FOR {watermark.column}: no column {watermark.column!r} in source {name}"
        )
    return SourceDef(name, tuple(columns), tuple(computed), watermark, options, sql)


def _computed_expression(column: exp.ColumnDef) -> exp.Expr | None:
    for constraint in column.args.get("constraints") or []:
        if isinstance(constraint.args.get("kind"), exp.ComputedColumnConstraint):
            return constraint.args["kind"].this
    return None


def _metadata_key(column: exp.ColumnDef) -> str | None:
    for constraint in column.args.get("constraints") or []:
        if isinstance(kind := constraint.args.get("kind"), MetadataColumnConstraint):
            return kind.name.lower() if kind.this else column.name.lower()
    return None


def _watermark_of(item: exp.WatermarkColumnConstraint) -> WatermarkSpec:
    column, expression = item.this, item.expression
    if isinstance(expression, exp.Column) and expression.name == column.name:
        return WatermarkSpec(column.name, exp.Interval(this=exp.Literal.string("0 seconds")))
    if (
        isinstance(expression, exp.Sub)
        and isinstance(expression.this, exp.Column)
        and expression.this.name == column.name
    ):
        return WatermarkSpec(column.name, expression.expression)
    raise PlanningError(
        f"WATERMARK FOR {column.name} AS {expression.sql(DIALECT)}: the watermark must be "
        f"'{column.name} - INTERVAL ...' (or just '{column.name}' for no delay)"
    )


def sink_def(create: exp.Create, sql: str, parameters: Sequence[Any] | None = None) -> SinkDef:
    query = create.expression
    if isinstance(query, exp.SetOperation):
        query = union_as_select(query, f"CREATE SINK {create.this.name}")
    if not isinstance(query, exp.Select):
        raise PlanningError(f"CREATE SINK {create.this.name} needs AS SELECT ...")
    return SinkDef(create.this.name, options_of(create), query, sql, tuple(parameters or ()))


def check_union_all(node: exp.SetOperation, where: str | None = None) -> None:
    """Refuse a set operation over streams other than UNION ALL: the others keep state
    (UNION deduplicates, INTERSECT and EXCEPT remember both sides)."""
    if not isinstance(node, exp.Union) or node.args.get("distinct"):
        raise PlanningError(
            f"{where + ': ' if where else ''}{node.key.upper()} over streams is not supported: "
            "only UNION ALL is stateless (for UNION, deduplicate the UNION ALL)",
            rule="union-all-only",
            position=position_of(node),
        )


def union_as_select(query: exp.SetOperation, where: str) -> exp.Select:
    """`q1 UNION ALL q2 [EMIT ...]` as `SELECT * FROM (q1 UNION ALL q2) [EMIT ...]`: a query
    that reads a relation, as every streaming query does."""
    check_union_all(query, where)
    union = query.copy()
    select = exp.select("*").from_(union.subquery("__union"))
    for key in ("order", "limit"):
        select.set(key, union.args.get(key))
        union.set(key, None)
    last = union
    while isinstance(last, exp.SetOperation):
        last = last.expression
    select.set("emit", last.args.get("emit"))
    last.set("emit", None)
    return select


def differences(old: SourceDef | SinkDef, new: SourceDef | SinkDef) -> list[str]:
    """What a new definition changes, one phrase each: "option topic: 'a' -> 'b'"."""
    changed = [
        f"option {key}: {shown(key, old.options.get(key))} -> {shown(key, new.options.get(key))}"
        for key in dict.fromkeys([*old.options, *new.options])
        if old.options.get(key) != new.options.get(key)
    ]
    if isinstance(old, SinkDef) and isinstance(new, SinkDef):
        if old.query.sql(DIALECT) != new.query.sql(DIALECT):
            changed.insert(0, "query")
        elif old.parameters != new.parameters:
            changed.insert(0, "query parameters")
        return changed
    parts = {
        "columns": lambda d: ", ".join(f"{c.name} {c.type}" for c in d.columns),
        "computed columns": lambda d: ", ".join(
            f"{c.name} AS {c.expression.sql(DIALECT)}" for c in d.computed
        ),
        "watermark": lambda d: (
            f"{d.watermark.column} - {d.watermark.delay.sql(DIALECT)}" if d.watermark else "none"
        ),
    }
    return [
        f"{part}: ({describe(old)}) -> ({describe(new)})"
        for part, describe in parts.items()
        if describe(old) != describe(new)
    ] + changed
