"""How the engine writes its database all or nothing: transactions, the catalog's DDL as one
transaction, Arrow rows as a view inside one, and the kill points crash tests stop it at."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
from collections.abc import Iterator, Sequence
from typing import Any

import duckdb

# Tests set this to n to SIGKILL the process at the n-th kill point of `atomically` (before
# each statement, before the COMMIT, after it): tests/test_crash.py kills DDL at every one.
KILL_AT = "STREAMSQL_TEST_KILL_AT"
# ... and this one at the n-th point of a batch's work: before each of its SQL steps (the
# statistics just before its transaction, the operators' steps inside it) and before each
# COMMIT of `transaction`: tests/test_crash_chained.py kills batches there.
KILL_IN_BATCH_AT = "STREAMSQL_TEST_KILL_IN_BATCH_AT"
_kill_points = {KILL_AT: itertools.count(1), KILL_IN_BATCH_AT: itertools.count(1)}

Statements = Sequence[tuple[str, Sequence[Any]]]  # SQL with its bound parameters


@contextlib.contextmanager
def transaction(cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN ... COMMIT, rolled back on any error. A COMMIT that fails (a full disk) has
    rolled back already; its error is the one raised."""
    cursor.execute("BEGIN TRANSACTION").fetchall()
    try:
        yield
        kill_point(KILL_IN_BATCH_AT)
        cursor.execute("COMMIT").fetchall()
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            cursor.execute("ROLLBACK").fetchall()
        raise


def atomically(cursor: duckdb.DuckDBPyConnection, statements: Statements) -> None:
    """Run `statements` in one transaction: after a crash all of them took effect or none
    (the catalog's DDL: DROP SINK, CREATE OR REPLACE SINK)."""
    with transaction(cursor):
        for sql, params in statements:
            kill_point()
            cursor.execute(sql, params).fetchall()
        kill_point()
    kill_point()


def kill_point(variable: str = KILL_AT) -> None:
    """Tests only: SIGKILL this process at the n-th point of its kind reached, n the value
    of the environment `variable` (KILL_AT or KILL_IN_BATCH_AT)."""
    at = os.environ.get(variable)
    if at and next(_kill_points[variable]) == int(at):
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def registered(cursor: duckdb.DuckDBPyConnection, name: str, rows: Any) -> Iterator[None]:
    """`rows` (Arrow) as the view `name` for the statements of the block. A statement that
    fails inside a transaction makes DuckDB refuse every later one, the unregister too, until
    the rollback: the statement's error is the one raised (registering the name again
    replaces the view left behind)."""
    cursor.register(name, rows)
    try:
        yield
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            cursor.unregister(name)
        raise
    cursor.unregister(name)
