"""grammar/streamsql.ebnf is the single source of truth for the SQL extension: keep it honest.

Every production must carry examples (see the convention at the top of the .ebnf file) and
every example must parse; the productions must only refer to each other and to the declared
duckdb_* names; and a few near-misses of the grammar must be syntax errors with a position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlglot import exp

from streamsql.errors import SQLSyntaxError
from streamsql.sql import parse

GRAMMAR = Path(__file__).resolve().parent.parent / "grammar" / "streamsql.ebnf"

COMMENT = re.compile(r"\(\*(.*?)\*\)", re.S)
TERMINAL = re.compile(r"\"[^\"]*\"|'[^']*'")
NAME = re.compile(r"[a-z_][a-z0-9_]*")
PRODUCTION_START = re.compile(r"^([a-z_][a-z0-9_]*)\s*=", re.M)
# A whole line `(* example: SQL *)`, `(* example NAME: SQL *)` or `(* template NAME: SQL *)`.
DIRECTIVE = re.compile(r"^\(\* (example|template)(?: ([a-z_]+))?: (.+) \*\)$")
EXTERNAL = re.compile(r"^\s+(duckdb_[a-z_]+)\s", re.M)


@dataclass
class Grammar:
    rules: dict[str, str] = field(default_factory=dict)  # name -> right-hand side
    examples: dict[str, list[str]] = field(default_factory=dict)  # name -> SQL to parse
    templates: dict[str, str] = field(default_factory=dict)
    externals: set[str] = field(default_factory=set)


def load(path: Path = GRAMMAR) -> Grammar:
    text = path.read_text()
    grammar = Grammar()

    # Productions: outside comments and terminals, the text is `name = body ;` repeated.
    comments = COMMENT.findall(text)
    for comment in comments:
        assert "(*" not in comment, f"a comment contains another comment: {comment[:60]!r}"
    code = TERMINAL.sub(" ", COMMENT.sub(" ", text))
    *chunks, tail = code.split(";")
    assert not tail.strip(), f"text after the last production: {tail.strip()[:60]!r}"
    for chunk in chunks:
        match = re.fullmatch(r"\s*([a-z_][a-z0-9_]*)\s*=(.*)", chunk, re.S)
        assert match, f"not a production: {chunk.strip()[:60]!r}"
        name, body = match.groups()
        assert name not in grammar.rules, f"{name} is defined twice"
        grammar.rules[name] = body

    # Examples and templates: whole lines, attributed to the production started above them.
    current: str | None = None
    for line in text.splitlines():
        if start := PRODUCTION_START.match(line):
            current = start.group(1)
            grammar.examples[current] = []
            continue
        if not line.startswith(("(* example", "(* template")):
            continue
        directive = DIRECTIVE.match(line)
        assert directive, f"malformed example or template line: {line!r}"
        kind, template, sql = directive.groups()
        if kind == "template":
            assert current is None, f"template {template} declared after the first production"
            assert template, f"template without a name: {line!r}"
            grammar.templates[template] = sql
        else:
            assert current is not None, f"example before the first production: {line!r}"
            if template is not None:
                assert template in grammar.templates, f"unknown template in {line!r}"
                sql = grammar.templates[template].replace("{}", sql)
            grammar.examples[current].append(sql)
    assert grammar.examples.keys() == grammar.rules.keys(), "a production not in column 1?"
    assert all(t.count("{}") == 1 for t in grammar.templates.values())

    declared = [c for c in comments if c.strip().startswith("DUCKDB'S GRAMMAR")]
    assert len(declared) == 1, "one comment declares the duckdb_* names"
    grammar.externals = set(EXTERNAL.findall(declared[0]))
    return grammar


GRAMMAR_DATA = load()
EXAMPLES = [
    pytest.param(sql, id=f"{name}-{i}")
    for name, examples in GRAMMAR_DATA.examples.items()
    for i, sql in enumerate(examples)
]


def test_every_production_has_an_example() -> None:
    missing = [name for name, examples in GRAMMAR_DATA.examples.items() if not examples]
    assert len(GRAMMAR_DATA.rules) > 20
    assert not missing, f"productions without an example: {missing}"


def test_productions_refer_only_to_productions_and_declared_duckdb_names() -> None:
    rules, externals = GRAMMAR_DATA.rules, GRAMMAR_DATA.externals
    used = {ref for body in rules.values() for ref in NAME.findall(body)}
    assert used - rules.keys() - externals == set(), "undefined names"
    assert externals - used == set(), "declared duckdb_* names that no production uses"
    assert all(name.startswith("duckdb_") for name in externals)
    start, *others = rules
    unreachable = [name for name in others if name not in used]
    assert not unreachable, f"productions nothing refers to (only {start} may be): {unreachable}"


@pytest.mark.parametrize("sql", EXAMPLES)
def test_example_parses(sql: str) -> None:
    statements = parse(sql)
    assert statements
    for statement in statements:
        # sqlglot keeps a statement it does not understand as an opaque Command.
        assert not isinstance(statement.expression, exp.Command), statement.text


# Near-misses of the grammar: (statement, line, column of the token the error points at).
INVALID = [
    ("SELECT count(1)\nFROM events\nEMIT NEVER", 3, 6),
    ("SELECT * FROM events EMIT ON WINDOW", 1, 27),
    ("SELECT window_start, count(1)\nFROM events\nWINDOW TUMBLING (ts)\nGROUP BY 1", 3, 20),
    ("SELECT * FROM events WINDOW HOPPING (ts, INTERVAL '5 minutes')", 1, 62),
    ("SELECT * FROM events WINDOW SESSION (ts, INTERVAL '1 minute', INTERVAL '1 minute')", 1, 61),
    ("SELECT *\nFROM events WATERMARK ts DELAY INTERVAL '1 minute'", 2, 26),
    ("SELECT * FROM events WATERMARK ts", 1, 32),
    ("CREATE SOURCE s (ts TIMESTAMP,\n  WATERMARK ts AS ts) WITH (connector = 'memory')", 2, 13),
    ("CREATE SOURCE s (ts TIMESTAMP) WITH (connector = 'a' topic = 'b')", 1, 54),
    ("DROP SOURCE a, b", 1, 14),
    ("STOP my_query", 1, 6),
]


@pytest.mark.parametrize(("sql", "line", "col"), INVALID)
def test_near_miss_is_a_syntax_error_with_a_position(sql: str, line: int, col: int) -> None:
    with pytest.raises(SQLSyntaxError) as caught:
        parse(sql)
    assert (caught.value.line, caught.value.col) == (line, col), str(caught.value)
