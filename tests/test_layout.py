"""The layout the design names (DESIGN section 6): connectors import nothing from the SQL
dialect or the planner, every connector is found through the one registry, the two Kafka
clients implement the one client interface, and the checkpoint's logs are named after their
role."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import streamsql
from streamsql.connectors.kafka.client import KafkaClient
from streamsql.connectors.kafka.confluent import ConfluentClient
from streamsql.connectors.kafka.kafka_python import KafkaPythonClient
from streamsql.connectors.registry import SINK_CONNECTORS, SOURCE_CONNECTORS
from streamsql.engine.statements import HANDLERS

PACKAGE = Path(streamsql.__file__).parent
FORBIDDEN = ("streamsql.sql", "streamsql.plan")
ROLES = {  # Spark's OffsetSeqLog, CommitLog and StreamMetadata
    "streamsql.checkpoint.offset_log": "OffsetLog",
    "streamsql.checkpoint.commit_log": "CommitLog",
    "streamsql.checkpoint.metadata": "QueryMetadata",
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def imported_names(path: Path) -> set[str]:
    """Every `module.name` a file imports with `from module import name`."""
    return {
        f"{node.module}.{alias.name}"
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }


def test_connectors_import_nothing_from_the_dialect_or_the_planner() -> None:
    files = sorted((PACKAGE / "connectors").rglob("*.py"))
    assert len(files) >= 15  # the sources, sinks, formats and the Kafka package
    found = {
        f"{path.relative_to(PACKAGE)}: {module}"
        for path in files
        for module in imported_modules(path)
        if any(module == m or module.startswith(f"{m}.") for m in FORBIDDEN)
    }
    assert found == set()


def test_every_registered_connector_lives_in_the_connectors_package() -> None:
    for registry in (SOURCE_CONNECTORS, SINK_CONNECTORS):
        for name, connector in registry.items():
            assert connector.__module__.startswith("streamsql.connectors."), name
    assert set(SOURCE_CONNECTORS) == {"memory", "files", "kafka"}
    assert set(SINK_CONNECTORS) == {
        "duckdb",
        "parquet",
        "csv",
        "json",
        "delta",
        "kafka",
        "callback",
        "console",
    }


def test_both_kafka_clients_implement_the_client_interface() -> None:
    for client in (KafkaPythonClient, ConfluentClient):
        assert issubclass(client, KafkaClient)
        assert not client.__abstractmethods__, client.__name__


def test_statement_handlers_are_one_table_of_functions() -> None:
    """Each entry: a node class (or union of classes), its condition, its handler."""
    handlers = [handler for _, _, handler in HANDLERS]
    assert all(callable(h) and h.__module__.startswith("streamsql.engine.") for h in handlers)
    names = {h.__name__ for h in handlers}
    assert {"create_source", "create_sink", "drop", "explain", "show", "push_query"} <= names


def test_the_checkpoint_logs_are_modules_named_after_their_role() -> None:
    """Spark's OffsetSeqLog, CommitLog and StreamMetadata each have their module; no catch-all
    log module holds them, and the runtime uses each under its role."""
    checkpoint = {path.stem for path in (PACKAGE / "checkpoint").glob("*.py")}
    assert checkpoint == {
        "__init__",
        "offset_log",
        "commit_log",
        "metadata",
        "schema",
        "transactions",
        "fingerprint",
        "dead_letters",
    }
    runtime = imported_names(PACKAGE / "runtime" / "microbatch.py")
    for module, role in ROLES.items():
        assert getattr(importlib.import_module(module), role).__module__ == module
        assert f"{module}.{role}" in runtime
