"""AST nodes of the streaming extensions; everything else is sqlglot's DuckDB AST."""

from __future__ import annotations

from sqlglot import exp


class StreamWindow(exp.Expression):
    """A WINDOW TUMBLING/HOPPING/SESSION clause; `this` is the event-time expression."""

    kind: str = ""

    @property
    def time_column(self) -> exp.Expr:
        return self.this


class TumblingWindow(StreamWindow):
    kind = "TUMBLING"
    arg_types = {"this": True, "size": True}


class HoppingWindow(StreamWindow):
    kind = "HOPPING"
    arg_types = {"this": True, "size": True, "slide": True}


class SessionWindow(StreamWindow):
    kind = "SESSION"
    arg_types = {"this": True, "gap": True}


class Watermark(exp.Expression):
    """`WATERMARK expr [AS name] DELAY OF interval` after a table in FROM (Databricks form)."""

    arg_types = {"this": True, "alias": False, "delay": True}


class MetadataColumnConstraint(exp.Expression, exp.ColumnConstraintKind):
    """`METADATA [FROM 'key'] [VIRTUAL]` (Flink's form): the column is filled from the
    connector's metadata (a Kafka record's partition, offset, ...), not from the value."""

    arg_types = {"this": False, "virtual": False}


class Emit(exp.Expression):
    """`EMIT CHANGES | FINAL | SNAPSHOT`; `this` is the canonical mode name."""

    arg_types = {"this": True}

    @property
    def mode(self) -> str:
        return self.name


class Explain(exp.Expression):
    """`EXPLAIN <query or CREATE SINK>`: show the per-batch SQL instead of running it."""

    arg_types = {"this": True}


class ShowStreams(exp.Expression):
    """`SHOW SOURCES | SINKS | QUERIES`."""

    arg_types = {"this": True}


class DescribeQuery(exp.Expression):
    """`DESCRIBE QUERY name`: status and last progress of a running query."""

    arg_types = {"this": True}


class StopQuery(exp.Expression):
    """`STOP QUERY name`: stop a running sink query, keeping its checkpoint."""

    arg_types = {"this": True}


class CompactSink(exp.Expression):
    """`COMPACT SINK name`: rewrite a file sink's small files into fewer, now."""

    arg_types = {"this": True}


class Deduplicate(exp.Expression):
    """`DEDUPLICATE ON (key, ...) [WITHIN WATERMARK]`: Spark's dropDuplicates(keys), or with
    WITHIN WATERMARK its dropDuplicatesWithinWatermark(keys)."""

    arg_types = {"expressions": True, "within_watermark": False}
