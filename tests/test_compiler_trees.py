"""The per-batch SQL is built as sqlglot trees and rendered once: a step's parameters are the
placeholders of its tree, so text that merely looks like a parameter (`'$late'` in a string
literal) is text, and every placeholder a step holds is bound when it runs."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlglot import exp

import streamsql
from streamsql import incremental
from streamsql.incremental.compiler import PARAMETERS, BatchProgram, Step
from streamsql.sql import parse_one

SOURCES = (
    "CREATE SOURCE ev (k VARCHAR, note VARCHAR, x BIGINT, ts TIMESTAMP, "
    "WATERMARK FOR ts AS ts - INTERVAL '1 minute') WITH (connector = 'memory')",
    "CREATE SOURCE ev2 (k VARCHAR, note VARCHAR, x BIGINT, ts TIMESTAMP, "
    "WATERMARK FOR ts AS ts - INTERVAL '5 minutes') WITH (connector = 'memory')",
    "CREATE SOURCE ms (k VARCHAR, x BIGINT, ts TIMESTAMP_MS, "
    "WATERMARK FOR ts AS ts - INTERVAL '1 minute') WITH (connector = 'memory')",
    "CREATE SOURCE imp (ad VARCHAR, ts TIMESTAMP, "
    "WATERMARK FOR ts AS ts - INTERVAL '1 minute') WITH (connector = 'memory')",
    "CREATE SOURCE clk (ad VARCHAR, ts TIMESTAMP, "
    "WATERMARK FOR ts AS ts - INTERVAL '1 minute') WITH (connector = 'memory')",
)
TUMBLING = "WINDOW TUMBLING (ts, INTERVAL '5 minutes')"
JOIN = "FROM imp AS i {} clk AS c ON i.ad = c.ad AND c.ts BETWEEN i.ts AND i.ts + INTERVAL '1 hour'"
# One query per kind of program: windows (final, changes, hopping, session), global and
# keyed aggregates, snapshots, several sources, the query's own parameters, stateless
# rows, the deduplications and the stream-stream joins.
QUERIES = (
    f"SELECT window_start, k, count(*) AS n, var_samp(x) AS v FROM ev {TUMBLING} "
    "WHERE x > ? GROUP BY window_start, window_end, k HAVING count(*) > 1",
    "SELECT window_start, k, arg_max(note, x, 2) AS top, count(DISTINCT note) AS d FROM ev "
    "WINDOW HOPPING (ts, INTERVAL '10 minutes', INTERVAL '5 minutes') "
    "GROUP BY window_start, window_end, k EMIT CHANGES",
    "SELECT window_start, window_end, k, stddev_pop(x) AS s FROM ev "
    "WINDOW SESSION (ts, INTERVAL '5 minutes') GROUP BY window_start, window_end, k",
    "SELECT sum(x) AS s, approx_count_distinct(k) AS a FROM ev",
    "SELECT k, min(x, 2) AS low FROM ev GROUP BY k EMIT SNAPSHOT ORDER BY k LIMIT 3",
    "SELECT count(*) AS n FROM ev EMIT SNAPSHOT",
    f"SELECT window_start, k, count(*) AS n FROM ms {TUMBLING} WHERE x > 2 "
    "GROUP BY window_start, window_end, k",
    "SELECT window_start, k, count(*) AS n FROM (SELECT * FROM ev UNION ALL SELECT * FROM ev2) "
    f"{TUMBLING} GROUP BY window_start, window_end, k",
    "SELECT k, x * ? AS y FROM ev WHERE note <> '$late'",
    "SELECT * FROM ev DEDUPLICATE ON (k) WITHIN WATERMARK",
    "SELECT k, x FROM ev WHERE x > 1 DEDUPLICATE ON (k, ts)",
    "SELECT DISTINCT k, note FROM ev",
    f"SELECT i.ad, i.ts, c.ts AS clicked {JOIN.format('JOIN')}",
    f"SELECT i.ad, c.ts AS clicked {JOIN.format('FULL OUTER JOIN')}",
    f"SELECT i.ad, i.ts {JOIN.format('SEMI JOIN')}",
    # a chain: a window over a window over the join, each operator's program
    "SELECT window_start, count(*) AS n FROM (SELECT window_time, i.ad, count(*) AS c "
    f"{JOIN.format('JOIN')} WHERE i.ad <> ? {TUMBLING.replace('ts', 'i.ts')} "
    "GROUP BY window_start, window_end, i.ad) "
    "WINDOW TUMBLING (window_time, INTERVAL '1 hour') GROUP BY window_start",
)


def _programs() -> Iterator[tuple[str, BatchProgram]]:
    with streamsql.connect() as con:
        for source in SOURCES:
            con.execute(source)
        for query in QUERIES:
            parameters = [1] * query.count("?")
            plan = con.engine.plan(parse_one(query).expression, parameters)
            for program in con.engine.programs("q", plan):
                yield query, program


def _steps(program: BatchProgram) -> list[Step]:
    measured = [s.sql for s in program.statistics if s.sql is not None]
    windows = [program.window_statistics] if program.window_statistics else []
    return [*program.setup, *measured, *windows, *program.steps, *program.compaction]


def test_each_step_takes_the_parameters_of_its_tree() -> None:
    seen = set()
    for query, program in _programs():
        for step in _steps(program):
            named = [p.name for p in step.statement.find_all(exp.Placeholder)]
            assert sorted(step.parameters) == sorted(set(named)), (query, step.name)
            runtime = [p for p in step.parameters if p in PARAMETERS]
            assert list(step.parameters[: len(runtime)]) == sorted(runtime, key=PARAMETERS.index)
            assert step.sql == step.statement.sql("duckdb"), (query, step.name)
            seen.update(step.parameters)
    # every runtime parameter and the query's own appear somewhere in the spread
    assert seen == {*PARAMETERS, "p1"}


@pytest.mark.parametrize(
    "query",
    [
        "SELECT k, '$late' AS tag FROM ev WHERE note <> 'costs $watermark'",
        "SELECT k, count(*) AS n FROM ev WHERE note <> '$p1 $batch_id' GROUP BY k EMIT CHANGES",
    ],
)
def test_dollar_names_in_string_literals_are_text(tmp_path: Path, query: str) -> None:
    """Parameters were found by a regex over the SQL text, so a string holding `$late`
    made the runtime bind a parameter the statement does not have (a binder error)."""
    con = streamsql.connect(str(tmp_path / "engine.db"), trigger="available_now")
    try:
        con.execute(
            "CREATE SOURCE ev (k VARCHAR, note VARCHAR) "
            "WITH (connector = 'memory', max_rows_per_trigger = 2)"
        )
        con.execute("INSERT INTO ev VALUES ('a', 'x'), ('b', 'costs $watermark'), ('a', 'y')")
        con.execute(f"CREATE SINK out WITH (connector = 'duckdb', changelog = true) AS {query}")
        assert con.query("out").await_termination(60)
        rows = sorted(con.execute("SELECT * EXCLUDE (_batch_id) FROM out").fetchall())
    finally:
        con.close()
    if "tag" in query:
        assert rows == [("a", "$late"), ("a", "$late")]
    else:
        assert rows == [("a", 1), ("a", 2), ("b", 1)]


SQL_WORDS = re.compile(
    r"\b(SELECT|FROM|WHERE|JOIN|INSERT|DELETE|MERGE|UPDATE|CREATE|DROP|UNION|GROUP BY|"
    r"ORDER BY|OVER|FILTER|CASE|CAST|EXCLUDE|RETURNING)\b"
)


def test_the_compiler_assembles_no_sql_text() -> None:
    """No f-string with SQL in it, and no str.format, in the modules that build the
    per-batch statements: SQL is made of trees (constant templates are parsed, not
    spliced)."""
    package = Path(incremental.__file__).parent
    found = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                text = "".join(part.value for part in node.values if isinstance(part, ast.Constant))
                if SQL_WORDS.search(text):
                    found.append(f"{path.name}:{node.lineno}: f-string {text!r}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "format"
            ):
                found.append(f"{path.name}:{node.lineno}: str.format")
    assert not found, "\n".join(found)
