"""Dot-commands: the shell's own commands, one line each and without ';'."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamsql.checkpoint.schema import SCHEMA
from streamsql.secrets import redact
from streamsql.shell.render import MODES

if TYPE_CHECKING:
    from streamsql.shell.repl import Shell


class CommandError(Exception):
    """A dot-command used wrongly; its message is all the user needs."""


@dataclass(frozen=True)
class DotCommand:
    name: str
    argument: str  # its name in the help ("" for none; "[NAME]" when it may be left out)
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
        rows = list(_flatten(progress.to_dict()))
        shell.show(["property", "value"], ["VARCHAR", ""], rows)  # values of every type


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


def set_mode(shell: Shell, mode: str) -> None:
    if not mode:
        shell.write(f"current mode: {shell.settings.mode}")
    elif mode.lower() in MODES:
        shell.settings.mode = mode.lower()
    else:
        raise CommandError(f"unknown mode {mode}; the modes are {', '.join(MODES)}")


def switch(setting: str) -> Callable[[Shell, str], None]:
    """A command that turns `setting` on or off."""

    def run(shell: Shell, value: str) -> None:
        if value.lower() not in ("on", "off"):
            raise CommandError(f"usage: .{setting} on|off")
        setattr(shell.settings, setting, value.lower() == "on")

    return run


def limit(setting: str, command: str) -> Callable[[Shell, str], None]:
    """A command that sets a count setting (0: no limit)."""

    def run(shell: Shell, value: str) -> None:
        if not value.isdigit():
            raise CommandError(f"usage: {command} N (0: no limit), not {value}")
        setattr(shell.settings, setting, int(value))

    return run


def list_tables(shell: Shell, _: str) -> None:
    """Sources, sinks, tables and views by name, as DuckDB's .tables lists tables and views."""
    engine = shell.con.engine
    rows = [
        *((source.name, "source") for source in engine.sources.values()),
        *((sink.name, f"sink ({sink.connector})") for sink in engine.sinks.values()),
        *((name, kind) for name, kind, _ in _relations(shell)),
    ]
    shell.show(["name", "kind"], ["VARCHAR", "VARCHAR"], sorted(rows, key=lambda r: r[0].lower()))


def show_schema(shell: Shell, name: str) -> None:
    """The CREATE statements of everything `.tables` lists, or of what is called NAME; the
    values of secret options hidden."""
    engine = shell.con.engine
    statements = [
        *((s.name, s.sql) for s in engine.sources.values()),
        *((s.name, s.sql) for s in engine.sinks.values()),
        *((relation, sql) for relation, _, sql in _relations(shell)),
    ]
    found = [sql for relation, sql in statements if not name or relation.lower() == name.lower()]
    if not found:
        raise CommandError(f"no source, sink, table or view is named {name}")
    shell.write("\n".join(redact(sql.strip().rstrip(";")) + ";" for sql in found))


def _relations(shell: Shell) -> list[tuple[str, str, str]]:
    """DuckDB's tables and views (not the engine's own): name (qualified outside the main
    schema), kind, and the CREATE statement."""
    return shell.cursor.execute(
        "SELECT CASE WHEN schema_name = 'main' THEN name ELSE schema_name || '.' || name END, "
        "kind, sql FROM ("
        "SELECT schema_name, table_name AS name, 'table' AS kind, sql FROM duckdb_tables() "
        "WHERE schema_name <> ? UNION ALL "
        "SELECT schema_name, view_name, 'view', sql FROM duckdb_views() "
        "WHERE NOT internal AND schema_name <> ?) ORDER BY lower(name)",
        [SCHEMA, SCHEMA],
    ).fetchall()


def quit_shell(shell: Shell, _: str) -> None:
    shell.done = True


def statement(sql: str) -> Callable[[Shell, str], None]:
    """A command that is short for a statement."""
    return lambda shell, _: shell.run_sql(sql)


COMMANDS = {
    command.name: command
    for command in (
        DotCommand(".help", "", "this list", show_help),
        DotCommand(".tables", "", "sources, sinks, tables and views", list_tables),
        DotCommand(".schema", "[NAME]", "the CREATE statements (of NAME)", show_schema),
        DotCommand(".sources", "", "sources, their columns, watermarks", statement("SHOW SOURCES")),
        DotCommand(".sinks", "", "sinks and their queries", statement("SHOW SINKS")),
        DotCommand(".queries", "", "queries and where they stand", statement("SHOW QUERIES")),
        DotCommand(".progress", "NAME", "the last progress of query NAME", show_progress),
        DotCommand(".read", "FILE", "run every statement of a .sql file", read_file),
        DotCommand(".mode", "[MODE]", f"results as {', '.join(MODES)}", set_mode),
        DotCommand(".types", "on|off", "column types under the names", switch("types")),
        DotCommand(".timer", "on|off", "how long each statement took", switch("timer")),
        DotCommand(
            ".maxrows", "N", "rows a table shows before it is cut", limit("max_rows", ".maxrows")
        ),
        DotCommand(
            ".maxwidth", "N", "characters a value shows before '…'", limit("max_width", ".maxwidth")
        ),
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
    optional = command.argument.startswith("[")
    if bool(argument) != bool(command.argument) and not (optional and not argument):
        raise CommandError(f"usage: {command.usage}")
    command.run(shell, argument)
