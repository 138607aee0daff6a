"""The read-eval-print loop: statements end with ';', dot-commands with the line."""

from __future__ import annotations

import contextlib
import sys
from typing import TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.filters import Condition
from prompt_toolkit.history import History
from prompt_toolkit.input import Input
from prompt_toolkit.lexers import PygmentsLexer
from prompt_toolkit.output import Output
from sqlglot.errors import TokenError
from sqlglot.tokens import TokenType

from streamsql.dbapi import Connection
from streamsql.errors import Error
from streamsql.format import format_table
from streamsql.shell.commands import CommandError, run_command
from streamsql.shell.completion import SQLCompleter
from streamsql.shell.highlight import StreamSQLLexer
from streamsql.sql import DIALECT, parse

PROMPT = "streamsql> "
CONTINUATION = "      ...> "
PUSH_ROWS = 1000  # rows per printed table at most
PLAN_COLUMNS = ("explain", "explain_value")  # plans are text: printed as they are


def is_complete(text: str) -> bool:
    """Whether Enter runs the buffer: it is empty, a dot-command, or ends with a ';' outside
    quotes and comments (the engine's own tokenizer decides)."""
    stripped = text.strip()
    if not stripped or stripped.startswith("."):
        return True
    try:
        tokens = DIALECT.tokenize(text)
    except TokenError:  # a quote or comment still open
        return False
    return bool(tokens) and tokens[-1].token_type == TokenType.SEMICOLON


def rows_text(count: int) -> str:
    return f"{count} row{'' if count == 1 else 's'}"


class Shell:
    """Reads statements and dot-commands from a prompt and prints their results to `out`.

    The connection stays the caller's: the shell neither opens nor closes it.
    """

    def __init__(
        self,
        con: Connection,
        *,
        input: Input | None = None,
        output: Output | None = None,
        out: TextIO | None = None,
        history: History | None = None,
    ) -> None:
        self.con = con
        self.out = out or sys.stdout
        self.cursor = con.cursor()  # one session: temporary tables and SET last across lines
        self.completer = SQLCompleter(con.engine)
        self.done = False
        self.session: PromptSession[str] = PromptSession(
            PROMPT,
            multiline=Condition(lambda: not is_complete(self.session.default_buffer.text)),
            prompt_continuation=CONTINUATION,
            lexer=PygmentsLexer(StreamSQLLexer),
            completer=self.completer,
            history=history,
            input=input,
            output=output,
        )

    def run(self) -> None:
        """Until .quit, or Ctrl-D on an empty line."""
        while not self.done:
            try:
                text = self.session.prompt()
            except KeyboardInterrupt:  # Ctrl-C at the prompt drops the line, as shells do
                continue
            except EOFError:
                return
            self.execute(text)

    def execute(self, text: str) -> None:
        """Run a dot-command or SQL; an error is printed and the shell goes on."""
        try:
            if text.lstrip().startswith("."):
                run_command(self, text)
            else:
                self.run_sql(text)
            self.completer.refresh()  # the statement may have created or dropped tables
        except KeyboardInterrupt:
            self.write("Interrupted")
        except (Error, CommandError) as error:
            self.write(f"Error: {error}")
        except Exception as error:  # a bug should not cost the user the session
            self.write(f"Error: {type(error).__name__}: {error}")

    def run_sql(self, sql: str) -> None:
        """Every statement of `sql` in turn, printing each one's result."""
        engine = self.con.engine
        for statement in parse(sql):
            if engine.handler(statement) == engine.push_query:
                self._push(statement.text)
            else:
                self.cursor.execute(statement.text)
                self._show_result()

    def _show_result(self) -> None:
        cursor = self.cursor
        if cursor.description is None:  # no result set: DDL, DML, SET, CREATE SOURCE, ...
            if cursor.rowcount >= 0:
                self.write(f"{rows_text(cursor.rowcount)} affected")
            return
        names = [column[0] for column in cursor.description]
        rows = cursor.fetchall()
        if names[-1] in PLAN_COLUMNS:
            self.write("\n".join(str(row[-1]) for row in rows))
        else:
            self.write(format_table(names, rows))

    def _push(self, sql: str) -> None:
        """Print a push query's rows as its batches emit them, until it ends or Ctrl-C.

        It runs on a cursor of its own, whose closing stops it without touching the session.
        """
        with contextlib.closing(self.con.cursor()) as cursor:
            cursor.execute(sql)
            names = [column[0] for column in cursor.description]
            shown = 0
            try:
                while cursor.streaming:
                    rows = cursor.fetchmany(PUSH_ROWS)
                    if rows:
                        shown += len(rows)
                        self.write(format_table(names, rows))
            except KeyboardInterrupt:
                self.write(f"Push query stopped after {rows_text(shown)}")

    def write(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()
