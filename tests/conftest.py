"""Shared fixtures: engines on real DuckDB files in a temporary directory, and a real
Kafka-protocol broker on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

import streamsql
from streamsql.testing.broker import Broker


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "engine.db")


@pytest.fixture
def con(db_path: str) -> Iterator[streamsql.Connection]:
    connection = streamsql.connect(db_path)
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """One Tansu broker for the session; tests use topics of their own."""
    with Broker() as running:
        yield running


@pytest.fixture(scope="module")
def admin(broker: Broker) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    yield client
    client.close()
