"""The shell attached to a database another process holds and serves: its statements run
there, through the PostgreSQL protocol (psycopg), with what that endpoint allows."""

from __future__ import annotations

from typing import Any, TextIO

import psycopg
from prompt_toolkit import PromptSession
from prompt_toolkit.filters import Condition
from prompt_toolkit.history import History
from prompt_toolkit.input import Input
from prompt_toolkit.lexers import PygmentsLexer
from prompt_toolkit.output import Output

from streamsql.errors import Error
from streamsql.format import format_table
from streamsql.shell.highlight import StreamSQLLexer
from streamsql.shell.repl import CONTINUATION, PROMPT, continuation_bindings, is_complete
from streamsql.sql import parse

QUIT = (".quit", ".exit")


def attach(
    database: str,
    endpoint: dict[str, Any],
    *,
    input: Input | None,
    output: Output | None,
    out: TextIO,
    history: History,
) -> int:
    """Read statements until .quit or Ctrl-D and run each on the serving process (the
    password, when the endpoint asks for one, comes from PGPASSWORD as for psql)."""
    address = f"{endpoint['host']}:{endpoint['port']}"
    try:
        conn = psycopg.connect(
            host=endpoint["host"], port=endpoint["port"], dbname="streamsql", autocommit=True
        )
    except psycopg.Error as error:
        out.write(f"Error: cannot attach to process {endpoint['pid']} at {address}: {error}\n")
        return 1
    access = "read-write" if endpoint.get("allow_writes") else "read-only"
    out.write(
        f"Attached to {database}, held by process {endpoint['pid']} and served at {address} "
        f"({access}): statements end with ';', .quit or Ctrl-D leaves\n"
    )
    continued = Condition(lambda: not is_complete(session.default_buffer.text))
    session: PromptSession[str] = PromptSession(
        PROMPT,
        multiline=continued,
        key_bindings=continuation_bindings(continued),
        prompt_continuation=CONTINUATION,
        lexer=PygmentsLexer(StreamSQLLexer),
        history=history,
        input=input,
        output=output,
    )
    with conn:
        while True:
            try:
                text = session.prompt()
            except KeyboardInterrupt:
                continue
            except EOFError:
                return 0
            if text.strip().lower() in QUIT:
                return 0
            if text.lstrip().startswith("."):
                out.write("Error: an attached shell runs SQL only (and .quit)\n")
                continue
            _run(conn, text, out)


def _run(conn: psycopg.Connection, text: str, out: TextIO) -> None:
    """Each statement in turn; an error is printed and the shell goes on."""
    try:
        for statement in parse(text):
            with conn.cursor() as cursor:
                cursor.execute(statement.text)
                if cursor.description:
                    rows = cursor.fetchall()
                    names = [column.name for column in cursor.description]
                    out.write(format_table(names, rows) + "\n")
                else:
                    out.write(f"{cursor.statusmessage}\n")
    except (psycopg.Error, Error) as error:
        out.write(f"Error: {error}\n")
