"""Mutated statements never escape as raw Python exceptions, and never hang.

The corpus is every statement of queries/*.sql and every example of grammar/streamsql.ebnf
(extracted as tests/test_grammar.py does). Each case applies one to three mutations to a
corpus statement: a token deleted, duplicated or swapped with its neighbour, the statement
cut short, punctuation put in at random, a literal replaced by an odd value, or a token
nested in hundreds of parentheses or function calls. Every case runs through a
`streamsql.connect(':memory:')` engine (trigger available_now, so sinks and push queries
finish) on which the sources the corpus reads exist, with rows. It must succeed or raise a
streamsql.Error with a message, within CASE_SECONDS; a query it started must not fail with
anything but a streamsql.Error either.

The random generator is seeded: CI runs the same cases every time (STREAMSQL_FUZZ_SEED and
STREAMSQL_FUZZ_CASES choose others). Statements naming Kafka are left out: there is no
broker here, and a sink over a source with no broker waits for one, as it should.
"""

from __future__ import annotations

import os
import random
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlglot.tokens import TokenType
from test_grammar import load

import streamsql
from streamsql.sql import DIALECT, MAX_NESTING, parse

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("STREAMSQL_FUZZ_SEED", "20261206"))
CASES = int(os.environ.get("STREAMSQL_FUZZ_CASES", "2000"))
CASES_PER_ENGINE = 100
CASE_SECONDS = 20.0

SETUP = (
    "CREATE SOURCE events (user_id BIGINT, event_type VARCHAR, timestamp BIGINT, ts TIMESTAMP, "
    "event_time AS to_timestamp(timestamp / 1000), "
    "WATERMARK FOR event_time AS event_time - INTERVAL '10 minutes') "
    "WITH (connector = 'memory')",
    "INSERT INTO events VALUES (1, 'click', 1704067200000, TIMESTAMP '2024-01-01 00:00:00'), "
    "(2, 'view', 1704067500000, TIMESTAMP '2024-01-01 00:05:00'), "
    "(NULL, NULL, NULL, NULL), (3, 'click', 1704070800000, TIMESTAMP '2024-01-01 01:00:00')",
    "CREATE SOURCE s (a INT, ts TIMESTAMP, k VARCHAR) WITH (connector = 'memory')",
    "INSERT INTO s VALUES (1, TIMESTAMP '2024-01-01', 'x'), (2, NULL, NULL)",
    "CREATE TABLE items (item_id BIGINT, name VARCHAR)",
    "INSERT INTO items VALUES (1, 'one'), (2, 'two')",
)

OPERANDS = {TokenType.VAR, TokenType.NUMBER, TokenType.STRING, TokenType.IDENTIFIER}
PUNCTUATION = ("(", ")", ",", ";", "=", "'", '"', ".", "*", "+", "-", "::", "[", "]", "?", "$1")
ODD_VALUES = (
    "''",
    "NULL",
    "-1",
    "0",
    "99999999999999999999999",
    "'infinity'",
    "'0 seconds'",
    "INTERVAL '-1 minute'",
    "'bogus'); DROP TABLE items; --'",
    "TIMESTAMP '294247-01-10 04:00:54'",
    "'\\x00'",
)


def corpus() -> list[str]:
    """The statements mutations start from."""
    statements = [
        statement.text
        for path in sorted((ROOT / "queries").glob("*.sql"))
        for statement in parse(path.read_text())
    ]
    grammar = load()
    statements += [sql for examples in grammar.examples.values() for sql in examples]
    return sorted({s for s in statements if "kafka" not in s.lower()})


def mutate(sql: str, rng: random.Random) -> str:
    """One mutation of `sql` (a statement that tokenizes)."""
    tokens = DIALECT.tokenize(sql)
    if not tokens:
        return sql
    kind = rng.choice(
        ("delete", "duplicate", "swap", "truncate", "punctuation", "value", "nest", "nest")
    )
    if kind in ("value", "nest"):  # in place of, or around, an operand
        operands = [t for t in tokens if t.token_type in OPERANDS] or tokens
        token = rng.choice(operands)
        i = tokens.index(token)
    else:
        i = rng.randrange(len(tokens))
    start, end = tokens[i].start, tokens[i].end + 1
    if kind == "delete":
        return sql[:start] + sql[end:]
    if kind == "duplicate":
        return sql[:end] + " " + sql[start:end] + sql[end:]
    if kind == "swap" and i + 1 < len(tokens):
        after_start, after_end = tokens[i + 1].start, tokens[i + 1].end + 1
        return sql[:start] + sql[after_start:after_end] + " " + sql[start:end] + sql[after_end:]
    if kind == "truncate":
        return sql[: rng.choice((start, end, rng.randrange(len(sql) + 1)))]
    if kind == "punctuation":
        at = rng.choice((start, end))
        return sql[:at] + rng.choice(PUNCTUATION) + sql[at:]
    if kind == "value":
        return sql[:start] + rng.choice(ODD_VALUES) + sql[end:]
    depth = rng.choice((40, 50, 200, MAX_NESTING, MAX_NESTING + 5))
    opener = rng.choice(("(", "abs(", "coalesce(", "["))
    closer = "]" if opener == "[" else ")"
    return sql[:start] + opener * depth + sql[start:end] + closer * depth + sql[end:]


def cases() -> Iterator[str]:
    rng = random.Random(SEED)
    statements = corpus()
    for _ in range(CASES):
        sql = rng.choice(statements)
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            try:
                sql = mutate(sql, rng)
            except Exception:  # a mutant that no longer tokenizes stays as it is
                break
        yield sql


def run_case(con: streamsql.Connection, sql: str) -> str | None:
    """None if `sql` ran or failed as it should; otherwise what went wrong."""
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            cursor = con.cursor()
            cursor.execute(sql)
            if cursor.description:
                cursor.fetchall()
            outcome.append(None)
        except streamsql.Error as error:
            cause = error.__cause__
            if not str(error).strip():
                outcome.append(f"{type(error).__name__} without a message")
            elif isinstance(error, streamsql.StreamingQueryError) and not isinstance(
                cause, streamsql.Error
            ):  # a push query's thread failed with a raw exception
                outcome.append("".join(traceback.format_exception(cause, limit=-6)))
            else:
                outcome.append(None)
        except BaseException:  # what the test is looking for
            outcome.append(traceback.format_exc(limit=-6))

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(CASE_SECONDS)
    if worker.is_alive():
        return f"no answer within {CASE_SECONDS} s"
    return outcome[0]


def failed_queries(con: streamsql.Connection) -> list[str]:
    """Queries that stopped with something other than a streamsql error."""
    return [
        f"query {query.name}: {query.error}"
        for query in list(con.engine.queries.values())
        if query.exception is not None and not isinstance(query.exception, streamsql.Error)
    ]


def engine() -> streamsql.Connection:
    con = streamsql.connect(":memory:", trigger="available_now")
    for statement in SETUP:
        con.execute(statement)
    return con


def test_mutated_statements_fail_only_with_streamsql_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # file sinks and COPY write here
    problems: list[str] = []
    all_cases = list(cases())
    for first in range(0, len(all_cases), CASES_PER_ENGINE):
        con = engine()
        try:
            for sql in all_cases[first : first + CASES_PER_ENGINE]:
                problem = run_case(con, sql)
                if problem is not None:
                    problems.append(f"{sql[:300]!r}\n{problem}")
                if problem and problem.startswith("no answer"):
                    break  # the engine is stuck: the next cases get a new one
            for query in con.engine.queries.values():
                query.await_termination(CASE_SECONDS) if query.is_active else None
            problems += failed_queries(con)
        finally:
            con.close()
    assert not problems, f"{len(problems)} of {len(all_cases)} cases:\n\n" + "\n\n".join(
        problems[:20]
    )
