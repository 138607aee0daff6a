"""Injection payloads in every option of every connector: each is refused with a streamsql
error when the statement runs, or is data; never SQL. The connectors and their options are
read from the engine's registries, so an option added later is covered without a change here."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

import streamsql
from streamsql.connectors.registry import SINK_CONNECTORS, SOURCE_CONNECTORS
from streamsql.testing.broker import Broker

PAYLOADS = {
    "compression": "zstd); DROP TABLE victim; COPY (SELECT 42) TO 'pwned.csv'; SELECT 1; --",
    "quote": "x'); DROP TABLE victim; COPY (SELECT 42) TO 'pwned.csv'; --",
    "double-quote": 'x"); DROP TABLE victim; COPY (SELECT 42) TO "pwned.csv"; --',
    "backslash": "x\\'); DROP TABLE victim; --\\",
    "newline": "1 second\n); DROP TABLE victim; --\n",
    "nul": "zstd\x00); DROP TABLE victim; --",
    "unicode": "zstd\u2019); DROP TABLE victim; -- \u00e9\u2603",
    "expression": "1) AS k FROM (SELECT 1) AS t; DROP TABLE victim; SELECT (1",
}
# Options of a kafka. prefix stand for every client setting (text, secret, typed).
PREFIXED = ("client_id", "sasl_plain_password", "linger_ms")


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def options_of(connector: type) -> list[str]:
    prefixed = [f"{p}{s}" for p in getattr(connector, "OPTION_PREFIXES", ()) for s in PREFIXED]
    return [*connector.OPTIONS, *prefixed]


CASES = [
    pytest.param(kind, name, option, payload, id=f"{kind}-{name}-{option}-{label}")
    for kind, registry in (("source", SOURCE_CONNECTORS), ("sink", SINK_CONNECTORS))
    for name, connector in registry.items()
    for option in options_of(connector)
    for label, payload in PAYLOADS.items()
]


@pytest.fixture(scope="module")
def topic(broker: Broker) -> str:
    """A topic holding one JSON message, for Kafka sources to read."""
    name = broker.create_topic()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    producer.send(name, json.dumps({"k": "a", "v": 1}).encode()).get(timeout=30)
    producer.close()
    return name


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[streamsql.Connection]:
    """One engine on one database file for every case: opening one per case took most of
    the case's time. Each case has a victim table, a source and a sink of its own (`con`)."""
    connection = streamsql.connect(
        str(tmp_path_factory.mktemp("injection") / "engine.db"), trigger="available_now"
    )
    connection.register_callback("collect", lambda batch_id, rows: None)
    yield connection
    connection.close()


@pytest.fixture
def con(engine: streamsql.Connection, workspace: Path) -> Iterator[streamsql.Connection]:
    """The engine with the victim table made afresh; the case's sink and source are dropped
    after it, if the case did not drop them."""
    engine.execute("CREATE OR REPLACE TABLE victim AS SELECT 1 AS x")
    yield engine
    drop(engine)


def drop(con: streamsql.Connection) -> None:
    """Stop and drop the case's sink and source, as closing its own engine did."""
    con.execute("DROP SINK IF EXISTS out")
    con.execute("DROP SOURCE IF EXISTS src")


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The working directory: what the statements write relative to it stays here."""
    (tmp_path / "work").mkdir()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.json").write_text('{"k": "a", "v": 1}\n')
    monkeypatch.chdir(tmp_path / "work")
    yield tmp_path


def base_options(kind: str, name: str, tmp_path: Path, broker: Broker, topic: str) -> dict:
    """Options under which the connector works, each to be replaced by a payload in turn."""
    kafka = {"bootstrap_servers": broker.bootstrap_servers, "topic": topic}
    if kind == "source":
        return {
            "memory": {},
            "files": {"path": str(tmp_path / "in")},
            "kafka": {
                **kafka,
                "starting_offsets": "earliest",
                "connect_timeout": "1 second",
                "request_timeout": "2 seconds",
            },
        }[name]
    return {
        "parquet": {"path": str(tmp_path / "out")},
        "csv": {"path": str(tmp_path / "out")},
        "json": {"path": str(tmp_path / "out")},
        "kafka": {**kafka, "timeout": "1 second"},
        "callback": {"callback": "collect"},
    }.get(name, {})


def with_clause(options: dict[str, str]) -> str:
    return ", ".join(f"{key} = {sql_literal(value)}" for key, value in options.items())


@pytest.mark.parametrize(("kind", "name", "option", "payload"), CASES)
def test_an_option_value_is_never_sql(
    kind: str,
    name: str,
    option: str,
    payload: str,
    workspace: Path,
    broker: Broker,
    topic: str,
    con: streamsql.Connection,
) -> None:
    options = {**base_options(kind, name, workspace, broker, topic), option: payload}
    options["connector"] = payload if option == "connector" else name
    if kind == "source":
        statement = f"CREATE SOURCE src (k VARCHAR, v BIGINT) WITH ({with_clause(options)})"
        sink = "CREATE SINK out WITH (connector = 'duckdb') AS SELECT k, v FROM src"
    else:
        con.execute("CREATE SOURCE src (k VARCHAR, v BIGINT) WITH (connector = 'memory')")
        con.execute("INSERT INTO src VALUES ('a', 1), ('b', 2)")
        statement = f"CREATE SINK out WITH ({with_clause(options)}) AS SELECT k, v FROM src"
        sink = None
    try:
        con.execute(statement)
        if sink:
            con.execute(sink)
    except streamsql.Error as error:
        assert str(error), "a refusal says why"
    else:
        query = con.engine.queries.get("out")
        with contextlib.suppress(streamsql.StreamingQueryError):  # the value is data
            query.await_termination(timeout=30)
        assert not query.is_active
    assert con.execute("SELECT x FROM victim").fetchall() == [(1,)]
    drop(con)
    written = {p.relative_to(workspace) for p in workspace.rglob("*") if p.is_file()}
    assert not [p for p in written if "pwned" in p.name]
    # A file sink given the payload as its path writes in a directory of that name.
    directory = workspace / "out"
    if kind == "sink" and option == "path" and "\0" not in payload:
        directory = (workspace / "work" / payload).resolve()
    outside = [
        p
        for p in written
        if p.parts[0] != "in" and directory not in (workspace / p).resolve().parents
    ]
    assert outside == []
