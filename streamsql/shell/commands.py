"""Dot-commands: the shell's own commands, one line each and without ';'."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamsql.format import format_table

if TYPE_CHECKING:
    from streamsql.shell.repl import Shell


class CommandError(Exception):
    """A dot-command used wrongly; its message is all the user needs."""


@dataclass(frozen=True)
class DotCommand:
    name: str
    argument: str  # its name in the help ("" for none)
    help: str
    run: Callable[[Shell, str], None]

    @property
    def usage(self) -> str:
        return f"{self.name} {self.argument}".strip()


def show_help(shell: Shell, _: str) -> None:
    width = max(len(command.usage) for command in COMMANDS.values())
    lines = [f"  {c.usage.ljust(width)}  {c.help}" for c in COMMANDS.values()]
    lines.append("SQL statements end with ';'. Ctrl-C stops a push query; sinks keep running.")
    shell.write("\n".join(lines))


def show_progress(shell: Shell, name: str) -> None:
    query = shell.con.query(name)
    progress = query.last_progress
    if progress is None:
        shell.write(f"{query.name}: {query.status['message']}, no batch yet")
    else:
        shell.write(format_table(["property", "value"], list(_flatten(progress.to_dict()))))


def _flatten(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Nested dicts and lists as one row per leaf: duration_ms.total, sources[0].lag, ..."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _flatten(item, f"{key}.{name}" if key else name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{key}[{index}]")
    else:
        yield key, value


def read_file(shell: Shell, path: str) -> None:
    try:
        sql = Path(path).expanduser().read_text()
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror}") from None
    shell.run_sql(sql)


def quit_shell(shell: Shell, _: str) -> None:
    shell.done = True


def statement(sql: str) -> Callable[[Shell, str], None]:
    """A command that is short for a statement."""
    return lambda shell, _: shell.run_sql(sql)


COMMANDS = {
    command.name: command
    for command in (
        DotCommand(".help", "", "this list", show_help),
        DotCommand(".sources", "", "sources, their columns, watermarks", statement("SHOW SOURCES")),
        DotCommand(".sinks", "", "sinks and their queries", statement("SHOW SINKS")),
        DotCommand(".queries", "", "queries and where they stand", statement("SHOW QUERIES")),
        DotCommand(".progress", "NAME", "the last progress of query NAME", show_progress),
        DotCommand(".read", "FILE", "run every statement of a .sql file", read_file),
        DotCommand(".quit", "", "leave the shell (also .exit, Ctrl-D)", quit_shell),
    )
}
ALIASES = {".exit": ".quit"}


def run_command(shell: Shell, line: str) -> None:
    name, _, argument = line.strip().partition(" ")
    name = ALIASES.get(name.lower(), name.lower())
    command = COMMANDS.get(name)
    if command is None:
        raise CommandError(f"unknown command {name}; .help lists the commands")
    argument = argument.strip()
    if bool(argument) != bool(command.argument):
        raise CommandError(f"usage: {command.usage}")
    command.run(shell, argument)
