"""The read-eval-print loop: statements end with ';', dot-commands with the line."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.filters import Condition, Filter
from prompt_toolkit.history import History
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.lexers import PygmentsLexer
from prompt_toolkit.output import Output
from sqlglot.errors import TokenError
from sqlglot.tokens import TokenType

from streamsql.dbapi import Connection
from streamsql.engine.statements import push_query
from streamsql.errors import Error
from streamsql.format import rows_text
from streamsql.shell.answers import OP_COLUMN, Catalog, Changelog
from streamsql.shell.commands import CommandError, run_command
from streamsql.shell.completion import SQLCompleter
from streamsql.shell.highlight import StreamSQLLexer
from streamsql.shell.render import Settings, render
from streamsql.sql import DIALECT, Statement, nodes, parse

PROMPT = "streamsql> "
CONTINUATION = "      ...> "
UNMARKED = " (updates unmarked: the SELECT list lacks a GROUP BY key or the window)"
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


def continuation_bindings(continued: Filter) -> KeyBindings:
    """Enter inside a statement starts a line indented as the one before, as an editor's
    auto-indent does; but not while more keys are already waiting (text typed ahead or pasted
    without bracketed paste), which brings its own indentation."""
    bindings = KeyBindings()

    @bindings.add("enter", filter=continued)
    def _(event: KeyPressEvent) -> None:
        typed_ahead = bool(event.key_processor.input_queue)
        event.current_buffer.newline(copy_margin=not typed_ahead and not event.app.paste_mode())

    return bindings


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
        self.settings = Settings()
        continued = Condition(lambda: not is_complete(self.session.default_buffer.text))
        self.session: PromptSession[str] = PromptSession(
            PROMPT,
            multiline=continued,
            key_bindings=continuation_bindings(continued),
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
        """Every statement of `sql` in turn, printing each one's result (and, with `.timer
        on`, how long it took)."""
        engine = self.con.engine
        for statement in parse(sql):
            started = time.perf_counter()
            if engine.handler(statement) is push_query:
                self._push(statement)
            else:
                before = Catalog.of(engine)
                self.cursor.execute(statement.text)
                self._show_result(statement, before)
            if self.settings.timer:
                self.write(f"Run Time (s): real {time.perf_counter() - started:.3f}")

    def _show_result(self, statement: Statement, before: Catalog) -> None:
        cursor = self.cursor
        if cursor.description is None:  # no result set: DDL, DML, SET, CREATE SOURCE, ...
            answer = before.answer(statement.expression, self.con.engine)
            if answer:
                self.write(answer)
            elif cursor.rowcount >= 0:
                self.write(f"{rows_text(cursor.rowcount)} affected")
            return
        names = [column[0] for column in cursor.description]
        rows = cursor.fetchall()
        if names[-1] in PLAN_COLUMNS:
            self.write("\n".join(str(row[-1]) for row in rows))
        elif isinstance(statement.expression, nodes.DescribeQuery):  # values whole: no `…`
            self.write(render(names, [""] * 2, rows, replace(self.settings, max_width=0)))
        else:
            types = ["" if column[1] is None else str(column[1]) for column in cursor.description]
            self.show(names, types, rows)

    def show(self, names: Sequence[str], types: Sequence[str], rows: Sequence[Any]) -> None:
        """Rows in the mode `.mode` chose."""
        self.write(render(names, types, rows, self.settings))

    def _push(self, statement: Statement) -> None:
        """Print a push query's batches as they are emitted, each under its batch id, until
        the query ends or Ctrl-C stops it. For EMIT CHANGES an `op` column says whether a
        row is a group's first (+I) or an update of a group shown before (+U)."""
        engine = self.con.engine
        with contextlib.closing(engine.cursor()) as duck:
            stream = push_query(engine, statement, None, duck).stream
        schema = stream.sink.schema
        names, types = list(schema.names), list(schema.types)
        changes = Changelog.of(schema)
        if changes:
            names, types = [OP_COLUMN, *names], ["VARCHAR", *types]
        self.write(
            "Push query running: each batch prints as it is emitted"
            + (UNMARKED if Changelog.unmarked(schema) else "")
            + "; Ctrl-C stops it"
        )
        shown = 0
        try:
            while (batch := stream.fetch_batch(None)) is not None:
                batch_id, rows = batch
                shown += len(rows)
                self.write(f"Batch {batch_id}")
                self.show(names, types, changes.mark(rows) if changes else rows)
            self.write(f"Push query finished after {rows_text(shown)}")
        except KeyboardInterrupt:
            self.write(f"Push query stopped after {rows_text(shown)}")
        finally:
            stream.close()

    def write(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()
