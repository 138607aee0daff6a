"""SQL text -> statements: split a script, parse each one, report errors by line and column."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from streamsql.errors import SQLSyntaxError
from streamsql.secrets import redact
from streamsql.sql import nodes
from streamsql.sql.dialect import Edit, StreamSQL, StreamSQLParser

# sqlglot logs a warning whenever it keeps a statement as an opaque command; for us that is
# the normal path of DuckDB statements we pass through untouched.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

DIALECT = StreamSQL()
WORD_STATEMENTS = set(StreamSQLParser.WORD_STATEMENT_PARSERS)
# Statements only we run: DuckDB's parser has no say in them.
OUR_STATEMENTS = (
    exp.Command,
    nodes.ShowStreams,
    nodes.DescribeQuery,
    nodes.StopQuery,
    nodes.CompactSink,
)

# Levels of parentheses (calls, subqueries, brackets) a statement may nest: DuckDB's own
# max_expression_depth. sqlglot's recursive descent takes some 26 Python frames a level
# (parsing, planning and generating alike), so while a statement is handled Python's
# recursion limit is raised to leave room for this many levels.
MAX_NESTING = 1000
FRAMES_PER_LEVEL = 40
NESTING = {
    TokenType.L_PAREN: 1,
    TokenType.L_BRACKET: 1,
    TokenType.L_BRACE: 1,
    TokenType.R_PAREN: -1,
    TokenType.R_BRACKET: -1,
    TokenType.R_BRACE: -1,
}
_room_lock = threading.Lock()
_room_holders = 0
_limit_before = 0


@dataclass(frozen=True)
class Statement:
    """One parsed statement and its own text, which DuckDB statements are run from verbatim."""

    expression: exp.Expr
    text: str
    line: int


def parse(sql: str, stored: bool = False) -> list[Statement]:
    """Split a script on semicolons and parse every statement; positions are script-relative.
    `stored`: SQL the catalog kept, accepted when it was created; DuckDB's parser, which may
    judge more strictly than an older streamsql did, does not judge it again, so a database
    always opens."""
    try:
        tokens = DIALECT.tokenize(sql)
    except TokenError:
        raise _token_error(sql) from None
    return [_parse_chunk(sql, chunk, stored) for chunk in _split(tokens)]


def parse_one(sql: str, stored: bool = False) -> Statement:
    statements = parse(sql, stored)
    if len(statements) != 1:
        raise SQLSyntaxError(f"Expected one SQL statement, found {len(statements)}")
    return statements[0]


def parse_expression(sql: str) -> exp.Expr:
    """Parse a single expression, e.g. an interval given in a connector option."""
    try:
        with nesting_room(1):
            return DIALECT.parse_into(exp.Expr, sql)[0]
    except (ParseError, TokenError) as error:
        raise SQLSyntaxError(f"Invalid expression {sql!r}: {error}") from None


def _split(tokens: list[Token]) -> list[list[Token]]:
    chunks: list[list[Token]] = [[]]
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            chunks.append([])
        else:
            chunks[-1].append(token)
    return [chunk for chunk in chunks if chunk]


@contextlib.contextmanager
def nesting_room(line: int) -> Iterator[None]:
    """Python's recursion limit raised (in every thread: it is the interpreter's) while a
    statement of script line `line` is parsed or planned, back to what it was when the last
    holder leaves; a statement that recurses deeper still is an error, not a RecursionError."""
    global _room_holders, _limit_before
    with _room_lock:
        if _room_holders == 0:
            _limit_before = sys.getrecursionlimit()
            sys.setrecursionlimit(_limit_before + MAX_NESTING * FRAMES_PER_LEVEL)
        _room_holders += 1
    try:
        yield
    except RecursionError:
        raise SQLSyntaxError(
            f"The statement at line {line} is nested too deeply to be parsed or planned",
            line=line,
        ) from None
    finally:
        with _room_lock:
            _room_holders -= 1
            if _room_holders == 0:
                sys.setrecursionlimit(_limit_before)


def _check_nesting(sql: str, tokens: list[Token]) -> None:
    depth = 0
    for token in tokens:
        depth += NESTING.get(token.token_type, 0)
        if depth > MAX_NESTING:
            col = token.col  # sqlglot's column is the token's last character: it is 1 long
            raise SQLSyntaxError(
                f"Syntax error at line {token.line}, column {col}: the statement nests more "
                f"than {MAX_NESTING} levels of parentheses\n{_pointer(sql, token.line, col)}",
                line=token.line,
                col=col,
            )


def _parse_chunk(sql: str, tokens: list[Token], stored: bool) -> Statement:
    _check_nesting(sql, tokens)
    parser = DIALECT.parser()
    first = tokens[0]
    try:
        with nesting_room(first.line):
            expressions = parser.parse(tokens, sql)
    except ParseError as error:
        if first.token_type == TokenType.VAR and first.text.upper() not in WORD_STATEMENTS:
            raise _error_at(sql, tokens, first.start, f"unknown statement {first.text}") from None
        raise _syntax_error(sql, tokens, error) from None
    expression = expressions[0]
    if not (stored or isinstance(expression, OUR_STATEMENTS) or _drops_ours(expression)):
        _duckdb_judges(sql, tokens, expression, parser.duckdb_edits)
    text = sql[first.start : tokens[-1].end + 1]
    return Statement(expression=expression, text=text, line=first.line)


def _drops_ours(expression: exp.Expr) -> bool:
    return isinstance(expression, exp.Drop) and expression.kind in ("SOURCE", "SINK")


def _duckdb_judges(sql: str, tokens: list[Token], expression: exp.Expr, edits: list[Edit]) -> None:
    """DuckDB's parser reads the statement as DuckDB would run it (our clauses edited out or
    into DuckDB's words), so what sqlglot's lenient parser lets through (an empty list item,
    `> >`, an alias without its expression) is a syntax error here too, where DuckDB says."""
    create = expression.this if isinstance(expression, nodes.Explain) else expression
    if isinstance(create, exp.Create) and create.kind in ("SOURCE", "SINK"):
        if create.kind == "SINK" and create.expression is None:
            return  # the engine says what is missing: AS SELECT ...
        # CREATE TABLE takes DuckDB's reading of the columns, options and query; the name is
        # ours (a sink may be called `show`), not a DuckDB table's
        kind = TokenType[create.kind]
        at = next(i for i, token in enumerate(tokens) if token.token_type == kind)
        name = next(t for t in tokens[at + 1 :] if t.text.upper() not in ("IF", "NOT", "EXISTS"))
        edits = [
            *edits,
            (tokens[at].start, tokens[at].end + 1, "TABLE"),
            (name.start, name.end + 1, "t"),
        ]
    start, end = tokens[0].start, tokens[-1].end + 1
    # (offset in the text DuckDB reads, offset in the script, text)
    pieces: list[tuple[int, int, str]] = []
    text_offset, position = 0, start
    for edit_start, edit_end, replacement in sorted(set(edits)):
        if edit_start < position:
            continue  # inside a part already edited out
        for piece in ((position, sql[position:edit_start]), (edit_start, replacement)):
            pieces.append((text_offset, *piece))
            text_offset += len(piece[1])
        position = edit_end
    pieces.append((text_offset, position, sql[position:end]))
    text = "".join(piece for _, _, piece in pieces)
    try:
        duckdb.extract_statements(text)
    except duckdb.ParserException as error:
        offset, message = _duckdb_error_position(text, error)
        at, origin, piece = next(p for p in reversed(pieces) if p[0] <= offset)
        script_offset = origin + min(offset - at, len(piece)) if piece else origin
        raise _error_at(sql, tokens, min(script_offset, end - 1), message) from None


@functools.cache
def _serializer() -> duckdb.DuckDBPyConnection:
    """The in-memory database whose cursors serialize statements that fail to parse: opening
    one (and loading its JSON extension) for each took 15-50 ms."""
    return duckdb.connect()


def _duckdb_error_position(text: str, error: duckdb.Error) -> tuple[int, str]:
    """Where in `text` DuckDB's parser stopped, and its message: the Python client gives the
    offset only through json_serialize_sql."""
    with contextlib.closing(_serializer().cursor()) as con:
        answer = json.loads(con.execute("SELECT json_serialize_sql(?)", [text]).fetchone()[0])
    if "position" not in answer:
        return 0, str(error).split("\n", 1)[0].removeprefix("Parser Error: ")
    # DuckDB counts bytes of UTF-8
    offset = len(text.encode()[: int(answer["position"])].decode(errors="ignore"))
    return offset, answer["error_message"]


def _error_at(sql: str, tokens: list[Token], offset: int, description: str) -> SQLSyntaxError:
    line = sql.count("\n", 0, offset) + 1
    col = offset - (sql.rfind("\n", 0, offset) + 1) + 1
    return _located(sql, tokens, line, col, description)


def _syntax_error(sql: str, tokens: list[Token], error: ParseError) -> SQLSyntaxError:
    detail = error.errors[0] if error.errors else {}
    # sqlglot points at the last character of the offending token; point at its first.
    line = detail.get("line") or 1
    col = max((detail.get("col") or 1) - len(detail.get("highlight") or " ") + 1, 1)
    description = _readable(detail.get("description") or str(error))
    if description.startswith("Required keyword") and detail.get("highlight"):
        # sqlglot built a node without an operand: DuckDB's words for it
        description = f'syntax error at or near "{detail["highlight"]}"'
    return _located(sql, tokens, line, col, description)


def _located(
    sql: str, tokens: list[Token], line: int, col: int, description: str
) -> SQLSyntaxError:
    """A syntax error at a script position, naming the statement it is in."""
    return SQLSyntaxError(
        redact(
            f"Syntax error at line {line}, column {col}{_statement_name(tokens)}: "
            f"{description}\n{_pointer(sql, line, col)}",
            sql,
        ),
        line=line,
        col=col,
    )


def _statement_name(tokens: list[Token]) -> str:
    """` in CREATE SINK clicks` for a CREATE of a named object, so the error says which."""
    words = [token.text for token in tokens[:8]]
    head = [word.upper() for word in words]
    if not head or head[0] != "CREATE":
        return ""
    for index, word in enumerate(head[1:-1], start=1):
        if word in ("SOURCE", "SINK", "TABLE", "VIEW"):
            rest = [w for w in words[index + 1 :] if w.upper() not in ("IF", "NOT", "EXISTS")]
            return f" in CREATE {word} {rest[0]}" if rest else ""
    return ""


def _token_error(sql: str) -> SQLSyntaxError:
    offset = _unterminated(sql)
    line = sql.count("\n", 0, offset) + 1
    col = offset - (sql.rfind("\n", 0, offset) + 1) + 1
    return SQLSyntaxError(
        redact(
            f"Syntax error at line {line}, column {col}: unterminated string, identifier or "
            f"comment\n{_pointer(sql, line, col)}",
            sql,
        ),
        line=line,
        col=col,
    )


def _unterminated(sql: str) -> int:
    """Offset of the quote or comment that is never closed (the tokenizer only says that)."""
    closers = {"'": "'", '"': '"', "/*": "*/", "--": "\n"}
    position = 0
    while position < len(sql):
        opener = next((o for o in closers if sql.startswith(o, position)), None)
        if opener is None:
            position += 1
            continue
        end = sql.find(closers[opener], position + len(opener))
        if end < 0:
            return position if opener != "--" else len(sql)
        position = end + len(closers[opener])
    return len(sql)


def _readable(description: str) -> str:
    description = re.sub(
        r"<Token token_type: [\w.]+, text: (.*?), line: .*?>", r"'\1'", description
    )
    description = re.sub(r"<class 'sqlglot\.[\w.]+\.(\w+)'>", r"\1", description)
    return description.replace("Invalid expression / Unexpected token", "unexpected token")


def _pointer(sql: str, line: int, col: int) -> str:
    """The offending line with a caret under the column, as psql and duckdb show it."""
    lines = sql.splitlines() or [""]
    text = lines[min(line, len(lines)) - 1]
    return f"  {text}\n  {' ' * max(col - 1, 0)}^"


def position_of(node: exp.Expr | None) -> tuple[int, int] | None:
    """(line, column) where `node` starts in the text it was parsed from, if known."""
    for candidate in node.walk() if node is not None else ():
        meta = candidate.meta
        if "line" in meta and "col" in meta:
            width = meta.get("end", 0) - meta.get("start", 0)
            return meta["line"], max(meta["col"] - width, 1)
    return None
