"""Shared fixtures: engines on real DuckDB files in a temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import streamsql


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "engine.db")


@pytest.fixture
def con(db_path: str) -> Iterator[streamsql.Connection]:
    connection = streamsql.connect(db_path)
    yield connection
    connection.close()
