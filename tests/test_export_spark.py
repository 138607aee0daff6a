"""Exported jobs run in Spark (local mode): each sink's rows, batch by batch, equal streamsql's.

One Spark session serves the whole run. Both engines read the same files, one per batch
(max_files_per_trigger = 1) with trigger available_now, and both hand their batches to a
collector: Spark through foreachBatch, streamsql through a callback sink.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import itertools
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import streamsql
from streamsql.export import SparkJob, export_spark
from streamsql.plan.catalog import sink_def
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


@pytest.mark.parametrize("case", ["c07_boundaries", "c09_sessions"])
def test_spark_examples_match_in_spark(spark: SparkSession, tmp_path: Path, case: str) -> None:
    """The five non-dedup queries of the Spark recordings, exported: Spark's batches equal
    streamsql's, and both equal what Spark 4.3 recorded."""
    inputs = copy_inputs(list((EXAMPLES / case / "input").iterdir()), tmp_path / "input")
    runs = {}
    for name, (has_watermark, query) in spark_example_queries().items():
        sql = SPARK_SOURCE.format(
            watermark=", WATERMARK FOR ts AS ts - INTERVAL '10 minutes'" if has_watermark else "",
            path=inputs,
            name=name,
            query=query,
        )
        (tmp_path / name).mkdir()
        runs[name] = start(spark, sql, tmp_path / name)[name]
    for name, run in runs.items():
        recorded = json.loads((EXAMPLES / case / "expected" / f"{name}.json").read_text())
        assert run.check() == normalized(
            {
                b["batch_id"]: [recorded_row(r, recorded["columns"]) for r in b["rows"]]
                for b in recorded["batches"]
            }
        ), name


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


FILES_EXAMPLES = [p for p in QUERIES if "connector = 'files'" in p.read_text()]


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
