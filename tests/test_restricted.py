"""Restricted mode: SQL that is not trusted reaches only the directories its sources and sinks
name, cannot change DuckDB's settings, attach, install or load anything, and calls only
callbacks registered from Python."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

import streamsql
from streamsql.cli import main
from streamsql.shell import main as shell

ESCAPES = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "COPY (SELECT 42 AS x) TO '{tmp}/pwned.csv'",
    "COPY (SELECT 42 AS x) TO '{tmp}/out/../pwned.csv'",
    "ATTACH '{tmp}/other.db' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "RESET enable_external_access",
    "SET allowed_directories = ['/']",
    "SET lock_configuration = false",
    "PRAGMA enable_profiling",
    "EXPORT DATABASE '{tmp}/exported'",
    "IMPORT DATABASE '{tmp}/exported'",
    "SELECT 1; ATTACH '{tmp}/other.db' AS other",
]


@pytest.fixture
def restricted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[streamsql.Connection]:
    """A restricted engine that may use tmp/in and tmp/out, with a memory source `ev`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    con = streamsql.connect(
        str(tmp_path / "app.db"),
        restricted=True,
        allowed_directories=[str(tmp_path / "in"), str(tmp_path / "out")],
    )
    con.execute("CREATE SOURCE ev (k VARCHAR, v BIGINT) WITH (connector = 'memory')")
    con.execute("INSERT INTO ev VALUES ('a', 1), ('b', 2)")
    yield con
    con.close()


def outside_files(tmp_path: Path) -> list[Path]:
    """Files written in tmp outside the allowed directories and the database's own files."""
    return [
        p
        for p in tmp_path.rglob("*")
        if p.is_file()
        and p.relative_to(tmp_path).parts[0] not in ("in", "out")
        and not p.name.startswith("app.db")
    ]


@pytest.mark.parametrize("escape", ESCAPES)
def test_each_escape_is_refused(
    restricted: streamsql.Connection, tmp_path: Path, escape: str
) -> None:
    with pytest.raises(streamsql.Error) as caught:
        restricted.execute(escape.format(tmp=tmp_path))
    assert str(caught.value)
    assert outside_files(tmp_path) == []
    assert restricted.execute("SELECT current_setting('enable_external_access')").fetchall() == [
        (False,)
    ]


def test_the_same_statements_run_unrestricted(tmp_path: Path) -> None:
    """What restricted mode refuses is what DuckDB does otherwise (the escapes are real)."""
    with streamsql.connect(str(tmp_path / "app.db")) as con:
        assert con.execute("SELECT count(*) > 0 FROM read_text('/etc/hostname')").fetchall()
        con.execute(f"COPY (SELECT 42 AS x) TO '{tmp_path}/pwned.csv'")
        con.execute(f"ATTACH '{tmp_path}/other.db' AS other")
    assert (tmp_path / "pwned.csv").exists() and (tmp_path / "other.db").exists()


def test_inside_the_allowed_directories_duckdb_works(
    restricted: streamsql.Connection, tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    restricted.execute(f"COPY (SELECT 42 AS x) TO '{tmp_path}/out/x.csv'")
    assert restricted.execute(f"SELECT x FROM read_csv('{tmp_path}/out/x.csv')").fetchall() == [
        (42,)
    ]
    restricted.execute("SET trigger = 'available_now'")  # streamsql's own setting still works
    restricted.execute("CREATE TABLE t AS SELECT 1 AS x")  # and the database itself


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE SOURCE f (k VARCHAR) WITH (connector = 'files', path = '/etc')",
        "CREATE SINK p WITH (connector = 'parquet', path = '{tmp}/elsewhere') AS SELECT k FROM ev",
        "CREATE SINK p WITH (connector = 'csv', path = '{tmp}/out/../x') AS SELECT k FROM ev",
        "CREATE SINK p WITH (connector = 'delta', path = '{tmp}/elsewhere') AS SELECT k FROM ev",
        "CREATE SINK p WITH (connector = 'delta', path = 's3://bucket/t') AS SELECT k FROM ev",
    ],
)
def test_sources_and_sinks_stay_in_the_allowed_directories(
    restricted: streamsql.Connection, tmp_path: Path, statement: str
) -> None:
    with pytest.raises(streamsql.ProgrammingError, match="restricted mode: path"):
        restricted.execute(statement.format(tmp=tmp_path))
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("connector", ["parquet", "delta"])
def test_file_sinks_work_inside(
    restricted: streamsql.Connection, tmp_path: Path, connector: str
) -> None:
    """The sink writes its files, and its view reads them, inside an allowed directory."""
    restricted.execute(
        f"CREATE SINK p WITH (connector = '{connector}', path = '{tmp_path}/out/p') "
        "AS SELECT k, v FROM ev"
    )
    restricted.query("p").process_all_available(timeout=30)
    assert restricted.execute("SELECT k, v FROM p ORDER BY k").fetchall() == [("a", 1), ("b", 2)]


def test_only_registered_callbacks_are_called(
    restricted: streamsql.Connection, tmp_path: Path
) -> None:
    with pytest.raises(streamsql.ProgrammingError, match="restricted mode calls only callbacks"):
        restricted.execute(
            "CREATE SINK c WITH (connector = 'callback', callback = 'os:system') "
            "AS SELECT k FROM ev"
        )
    seen: list[int] = []
    restricted.register_callback("mine", lambda batch_id, rows: seen.append(rows.num_rows))
    restricted.execute(
        "CREATE SINK c WITH (connector = 'callback', callback = 'mine') AS SELECT k FROM ev"
    )
    restricted.query("c").process_all_available(timeout=30)
    assert sum(seen) == 2


def test_a_file_cannot_write_a_module_and_import_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The escape of the issue: COPY a module into the working directory, then name it as
    a callback. Under --restricted the COPY is refused, and so is the import."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = (
        "COPY (SELECT 'def run(batch_id, rows):' || chr(10) || "
        '\'    open("pwned.txt", "w").write("pwned")\' AS line) '
        "TO 'evilmod.py' (FORMAT csv, HEADER false, QUOTE '');\n"
    )
    sink = (
        "CREATE SOURCE ev (k VARCHAR) WITH (connector = 'memory');\n"
        "INSERT INTO ev VALUES ('a');\n"
        "CREATE SINK s WITH (connector = 'callback', callback = 'evilmod:run') "
        "AS SELECT k FROM ev;\n"
    )
    (tmp_path / "writes.sql").write_text(module)
    (tmp_path / "imports.sql").write_text(sink)
    for script in ("writes.sql", "imports.sql"):
        assert main(["run", "--restricted", "--trigger", "available_now", script]) == 1
    errors = capsys.readouterr().err
    assert "Permission Error" in errors and "restricted mode calls only callbacks" in errors
    assert not (tmp_path / "evilmod.py").exists() and not (tmp_path / "pwned.txt").exists()


def test_a_reopened_database_allows_the_directories_its_catalog_names(tmp_path: Path) -> None:
    """`streamsql run --restricted` allows the paths its file declares; a database opened
    again allows those of its stored sources and sinks."""
    (tmp_path / "script.sql").write_text(
        "CREATE SOURCE ev (k VARCHAR) WITH (connector = 'files', path = 'in', format = 'csv');\n"
        "CREATE SINK s WITH (connector = 'csv', path = 'out/s') AS SELECT k FROM ev;\n"
    )
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("k\nx\n")
    db = str(tmp_path / "app.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        run = ["run", "--restricted", "--trigger", "available_now", "--db", db, "script.sql"]
        assert main(run) == 0
        with streamsql.connect(db, restricted=True) as con:
            resolved = tmp_path.resolve()
            expected = {f"{tmp_path}/in/", f"{tmp_path}/out/s/"}
            expected |= {f"{resolved}/in/", f"{resolved}/out/s/"}
            assert con.engine.allowed_directories == sorted(expected)
            assert con.execute("SELECT k FROM s").fetchall() == [("x",)]


def test_the_shell_runs_restricted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSQL_HISTORY", str(tmp_path / "history"))
    out = io.StringIO()
    with create_pipe_input() as pipe:
        pipe.send_text("SELECT * FROM read_text('/etc/hostname');\rINSTALL httpfs;\r.quit\r")
        assert shell(None, input=pipe, output=DummyOutput(), stdout=out, restricted=True) == 0
    printed = out.getvalue()
    assert "Permission Error" in printed and "Restricted mode refuses INSTALL" in printed
