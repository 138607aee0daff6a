"""`streamsql shell [DB]`: an interactive SQL shell on an engine database."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

import duckdb
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output
from prompt_toolkit.patch_stdout import patch_stdout

import streamsql
from streamsql.server import read_endpoint
from streamsql.shell.repl import Shell

HISTORY_VARIABLE = "STREAMSQL_HISTORY"
DEFAULT_HISTORY = "~/.streamsql_history"


def main(
    database: str | None = None,
    *,
    input: Input | None = None,
    output: Output | None = None,
    stdout: TextIO | None = None,
    restricted: bool = False,
) -> int:
    """Open `database` (in memory if None; a file's running sinks resume), read statements
    until .quit or Ctrl-D, then close it: queries stop after the batch in flight commits.
    A database another process holds and serves (`streamsql run --serve`) is attached to:
    the statements run there.

    `input` and `output` are prompt-toolkit's (None: the terminal); results go to `stdout`.
    `restricted`: DuckDB reaches only the directories the database's sources and sinks name.
    """
    out = stdout or sys.stdout
    try:
        con = streamsql.connect(database or ":memory:", restricted=restricted)
    except (streamsql.Error, duckdb.Error) as error:
        endpoint = read_endpoint(database) if database else None
        if endpoint is None:  # not held by a process that serves it
            out.write(f"Error: {error}\n")
            return 1
        from streamsql.shell.remote import attach  # psycopg, only when attaching

        return attach(
            database, endpoint, input=input, output=output, out=out, history=_history(out)
        )
    try:
        shell = Shell(con, input=input, output=output, out=out, history=_history(out))
        shell.write(
            f"streamsql {streamsql.__version__} on {database or 'an in-memory database'}: "
            "statements end with ';', .help lists the commands, Ctrl-D leaves"
        )
        with patch_stdout():  # console sinks print above the prompt, not through it
            shell.run()
    finally:
        con.close()
    return 0


def _history(out: TextIO) -> History:
    """The history file ($STREAMSQL_HISTORY, else ~/.streamsql_history), if it can be written."""
    path = Path(os.environ.get(HISTORY_VARIABLE) or DEFAULT_HISTORY).expanduser()
    try:
        path.touch()
    except OSError as error:
        out.write(f"History not saved: cannot write {path}: {error.strerror}\n")
        return InMemoryHistory()
    return FileHistory(path)


__all__ = ["Shell", "main"]
