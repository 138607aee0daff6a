"""The interactive shell, driven headless: keys through a prompt-toolkit pipe, results in a
StringIO. A push query is interrupted the way a terminal does it, with a real SIGINT, sent
only once the rows it must show have been printed (the shell is then waiting for the next
batch, which is where Ctrl-C lands)."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput
from pygments.token import Keyword

import streamsql
from streamsql.shell import Shell, main
from streamsql.shell.completion import SQLCompleter
from streamsql.shell.highlight import StreamSQLLexer
from streamsql.shell.repl import is_complete

WAIT_SECONDS = 10

EVENTS = "CREATE SOURCE events (user_id BIGINT, page VARCHAR) WITH (connector = 'memory')"
TOTALS = (
    "CREATE SINK totals WITH (connector = 'duckdb') AS "
    "SELECT user_id, count(*) AS n FROM events GROUP BY user_id EMIT CHANGES"
)


@pytest.fixture
def pipe() -> Iterator[PipeInput]:
    with create_pipe_input() as pipe_input:
        yield pipe_input


@pytest.fixture
def memory_con() -> Iterator[streamsql.Connection]:
    con = streamsql.connect()
    con.execute(EVENTS)
    yield con
    con.close()


def run_shell(con: streamsql.Connection, pipe: PipeInput, *lines: str) -> str:
    """Type each line and Enter, then .quit; what the shell printed."""
    out = io.StringIO()
    shell = Shell(con, input=pipe, output=DummyOutput(), out=out)
    pipe.send_text("".join(line + "\r" for line in (*lines, ".quit")))
    shell.run()
    return out.getvalue()


def tables(text: str) -> list[list[tuple[str, ...]]]:
    """The printed tables, each as its header row and data rows of cell texts."""
    found: list[list[tuple[str, ...]]] = []
    for line in text.splitlines():
        if line.startswith("┌"):
            found.append([])
        elif line.startswith("│"):
            found[-1].append(tuple(cell.strip() for cell in line.strip("│").split("│")))
    return found


def wait_until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def completions(completer: SQLCompleter, text: str) -> dict[str, str]:
    """What the completer offers at the end of `text`: completion text -> meta."""
    offered = completer.get_completions(Document(text), CompleteEvent(completion_requested=True))
    return {c.text: c.display_meta_text for c in offered}


# -- push queries ----------------------------------------------------------------------------


def test_a_push_query_prints_batches_until_ctrl_c_and_sinks_keep_running(
    con: streamsql.Connection, pipe: PipeInput
) -> None:
    con.execute(EVENTS)
    con.execute(TOTALS)
    con.execute("INSERT INTO events VALUES (1, 'a'), (2, 'b')")
    out = io.StringIO()
    shell = Shell(con, input=pipe, output=DummyOutput(), out=out)

    def second_batch_then_ctrl_c() -> None:
        if wait_until(lambda: len(tables(out.getvalue())) == 1):
            con.cursor().execute("INSERT INTO events VALUES (1, 'c')")
        if wait_until(lambda: len(tables(out.getvalue())) == 2):
            os.kill(os.getpid(), signal.SIGINT)
        else:  # let the test fail on what was printed, rather than hang
            for query in list(con.engine.queries.values()):
                query.stop()

    pipe.send_text(
        "SELECT user_id, count(*) AS n FROM events GROUP BY user_id EMIT CHANGES;\r"
        "SELECT 'back at the prompt' AS note;\r.quit\r"
    )
    interrupter = threading.Thread(target=second_batch_then_ctrl_c)
    interrupter.start()
    shell.run()
    interrupter.join()

    first, second, note = tables(out.getvalue())
    assert first[0] == ("op", "user_id", "n")
    assert sorted(first[1:]) == [("+I", "1", "1"), ("+I", "2", "1")]
    assert second == [("op", "user_id", "n"), ("+U", "1", "2")]  # group 1 again: an update
    lines = out.getvalue().splitlines()
    assert lines[0] == "Push query running: each batch prints as it is emitted; Ctrl-C stops it"
    assert [line for line in lines if line.startswith("Batch ")] == ["Batch 0", "Batch 1"]
    assert "Push query stopped after 3 rows" in lines
    assert note == [("note",), ("back at the prompt",)]
    assert not [name for name in con.engine.queries if name.startswith("__push_")]
    totals = con.query("totals")
    con.execute("INSERT INTO events VALUES (3, 'd')")
    totals.process_all_available()
    assert totals.is_active
    assert con.execute("SELECT user_id, n FROM totals ORDER BY user_id").fetchall() == [
        (1, 2),
        (2, 1),
        (3, 1),
    ]


# -- completion ------------------------------------------------------------------------------


def test_tab_completes_a_keyword_and_a_column_at_the_prompt(
    memory_con: streamsql.Connection, pipe: PipeInput
) -> None:
    out = io.StringIO()
    shell = Shell(memory_con, input=pipe, output=DummyOutput(), out=out)
    buffer = shell.session.default_buffer

    def type_with_tabs() -> None:
        pipe.send_text("CREATE TABLE visits AS SELECT 7 AS visit_count;\r")  # known from now on
        # Tab completes asynchronously: wait for each completion before typing on.
        for keys, typed in (
            ("sel", "sel"),
            ("\t", "select"),
            (" visit_c", "select visit_c"),
            ("\t", "select visit_count"),
        ):
            pipe.send_text(keys)
            wait_until(lambda typed=typed: buffer.text == typed)
        pipe.send_text(" FROM visits;\r.quit\r")

    typist = threading.Thread(target=type_with_tabs)
    typist.start()
    shell.run()
    typist.join()
    assert out.getvalue().startswith("1 row affected\n")
    assert tables(out.getvalue()) == [[("visit_count",), ("7",)]]


def test_keywords_complete_case_insensitively_in_the_case_typed(
    memory_con: streamsql.Connection,
) -> None:
    completer = SQLCompleter(memory_con.engine)
    assert completions(completer, "sel")["select"] == "keyword"
    assert "SELECT" in completions(completer, "SeL")
    assert "WATERMARK" in completions(completer, "SELECT * FROM events WATER")
    assert list(completions(completer, "SELECT * FROM events EMIT ")) == [
        "CHANGES",
        "FINAL",
        "SNAPSHOT",
        "ON WINDOW CLOSE",
    ]
    assert list(completions(completer, "SELECT * FROM events EMIT c")) == ["changes"]
    assert list(completions(completer, "GROUP BY 1 WINDOW ")) == ["TUMBLING", "HOPPING", "SESSION"]
    assert list(completions(completer, "show s")) == ["sources", "sinks"]
    assert completions(completer, "SELECT ") == {}  # nothing until a letter is typed


def test_names_and_columns_complete_from_the_engine_and_duckdb(
    memory_con: streamsql.Connection,
) -> None:
    memory_con.execute("CREATE TABLE payments (amount DECIMAL(10, 2), user_ref BIGINT)")
    memory_con.execute(TOTALS)
    completer = SQLCompleter(memory_con.engine)
    offered = completions(completer, "SELECT us")
    assert offered["user_id"] == "column of events, totals"
    assert offered["user_ref"] == "column of payments"
    assert offered["using"] == "keyword"
    assert completions(completer, "select AM") == {"amount": "column of payments"}
    assert completions(completer, "SELECT * FROM ") == {
        "events": "source",
        "payments": "table",
        "totals": "table",
    }
    assert completions(completer, "STOP QUERY t") == {"totals": "query"}
    assert completions(completer, "compact sink ") == {"totals": "sink"}

    memory_con.execute("CREATE TABLE later (late_column INT)")
    assert "late_column" not in completions(completer, "SELECT late")
    completer.refresh()
    assert "late_column" in completions(completer, "SELECT late")


def test_connector_options_complete_inside_with(memory_con: streamsql.Connection) -> None:
    completer = SQLCompleter(memory_con.engine)
    create = "CREATE SINK s WITH ("
    offered = completions(completer, create + "conn")
    assert "files source" in offered["connector"]
    assert offered["connect_timeout"] == "kafka source"
    offered = completions(completer, create + "connector = 'parquet', ")
    assert {"path", "compact_every", "target_file_size", "retention", "trigger"} <= set(offered)
    assert offered["path"] == "files source, parquet sink, csv sink, json sink"
    assert completions(completer, create + "connector = 'parquet', TARGET") == {
        "target_file_size": "parquet sink, csv sink, json sink"
    }
    assert completions(completer, create + "connector = ") == {}
    source = "CREATE SOURCE s (a INT) WITH (connector = 'files', path = 'x', max_f"
    assert list(completions(completer, source)) == ["max_files_per_trigger"]


# -- input, errors and commands --------------------------------------------------------------


def test_a_statement_split_over_lines_runs_once_its_semicolon_is_typed(
    memory_con: streamsql.Connection, pipe: PipeInput
) -> None:
    text = run_shell(memory_con, pipe, "SELECT 1 AS a,", "  'x;y' AS b -- not the end;", "", ";")
    assert "Error" not in text
    assert tables(text) == [[("a", "b"), ("1", "x;y")]]


def test_the_buffer_is_complete_at_a_semicolon_outside_quotes_and_comments() -> None:
    assert is_complete("SELECT 1;")
    assert is_complete("SELECT 1;\n  -- trailing remark")
    assert is_complete(".sources")
    assert is_complete("")
    assert not is_complete("SELECT 1")
    assert not is_complete("SELECT ';'")
    assert not is_complete("SELECT 'a;")
    assert not is_complete("SELECT 1 /* ; */")
    assert not is_complete("SELECT 1 -- ;")


def test_an_error_is_printed_with_its_position_and_the_shell_goes_on(
    memory_con: streamsql.Connection, pipe: PipeInput
) -> None:
    text = run_shell(
        memory_con,
        pipe,
        "SELECT 1 AS x",
        "EMIT NOW;",
        "SELECT * FROM no_such_table;",
        ".bogus",
        ".progress",
        "SELECT 42 AS answer;",
    )
    lines = text.splitlines()
    syntax = next(i for i, line in enumerate(lines) if line.startswith("Error: Syntax error"))
    assert lines[syntax].startswith("Error: Syntax error at line 2, column 6: Expected CHANGES")
    assert lines[syntax + 1 : syntax + 3] == ["  EMIT NOW;", "       ^"]
    assert any(line.startswith("Error: ") and "no_such_table" in line for line in lines)
    assert "Error: unknown command .bogus; .help lists the commands" in lines
    assert "Error: usage: .progress NAME" in lines
    assert tables(text) == [[("answer",), ("42",)]]


def test_read_runs_every_statement_of_a_file(
    memory_con: streamsql.Connection, pipe: PipeInput, tmp_path: Path
) -> None:
    script = tmp_path / "script.sql"
    script.write_text(
        "CREATE TABLE pages (page VARCHAR);\n"
        "INSERT INTO pages VALUES ('home'), ('cart');\n"
        "INSERT INTO events SELECT 1, page FROM pages;\n"
        "SELECT page FROM pages ORDER BY page;\n"
    )
    text = run_shell(memory_con, pipe, f".read {script}", f".read {tmp_path / 'missing.sql'}")
    assert text.count("2 rows affected") == 2
    assert tables(text) == [[("page",), ("cart",), ("home",)]]
    assert f"Error: cannot read {tmp_path / 'missing.sql'}: No such file or directory" in text
    assert memory_con.engine.source("events").total == 2


def test_progress_shows_a_sinks_last_batch_as_properties(
    memory_con: streamsql.Connection, pipe: PipeInput
) -> None:
    memory_con.execute(TOTALS)
    memory_con.execute("INSERT INTO events VALUES (1, 'a'), (2, 'b'), (1, 'c')")
    memory_con.query("totals").process_all_available()
    text = run_shell(memory_con, pipe, ".progress TOTALS", ".progress nothing", ".queries")
    progress, queries = tables(text)
    properties = dict(progress[1:])
    assert progress[0] == ("property", "value")
    assert properties["name"] == "totals"
    assert properties["batch_id"] == "0"
    assert properties["num_input_rows"] == "3"
    assert properties["num_output_rows"] == "2"
    assert properties["sources[0].source"] == "events"
    assert properties["sources[0].end_offset.rows"] == "3"
    assert float(properties["duration_ms.total"]) > 0
    assert "Error: No running query named 'nothing'" in text
    assert queries[0][:2] == ("name", "status") and queries[1][0] == "totals"


def test_sources_sinks_and_help(memory_con: streamsql.Connection, pipe: PipeInput) -> None:
    memory_con.execute(TOTALS)
    text = run_shell(memory_con, pipe, ".sources", ".sinks", ".help", ".exit", "SELECT 1;")
    sources, sinks = tables(text)  # and no third: .exit left before SELECT 1
    assert sources[1][:3] == ("events", "memory", "user_id, page")
    assert sinks[1][:2] == ("totals", "duckdb")
    assert "  .progress NAME  the last progress of query NAME" in text.splitlines()


def test_statements_without_rows_say_what_they_changed(
    memory_con: streamsql.Connection, pipe: PipeInput
) -> None:
    text = run_shell(
        memory_con,
        pipe,
        "CREATE TABLE t (a INT);",
        "INSERT INTO t VALUES (1), (2), (3);",
        "INSERT INTO events VALUES (1, 'a');",
        "EXPLAIN SELECT user_id, count(*) AS n FROM events GROUP BY user_id;",
    )
    lines = text.splitlines()
    assert lines[:2] == ["3 rows affected", "1 row affected"]
    assert lines[2] == "-- global aggregation over source events, EMIT CHANGES"
    assert tables(text) == []


def test_highlighting_knows_the_streaming_keywords() -> None:
    tokens = list(StreamSQLLexer().get_tokens("SELECT a FROM s WINDOW TUMBLING (t, i) EMIT final"))
    kinds = {text: kind for kind, text in tokens}
    assert kinds["WINDOW"] in Keyword and kinds["TUMBLING"] in Keyword
    assert kinds["final"] in Keyword and kinds["EMIT"] in Keyword
    assert kinds["a"] not in Keyword


# -- main ------------------------------------------------------------------------------------


def test_main_opens_a_database_keeps_history_and_closes_on_ctrl_d(
    tmp_path: Path, pipe: PipeInput, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = tmp_path / "history"
    monkeypatch.setenv("STREAMSQL_HISTORY", str(history))
    database = str(tmp_path / "app.db")
    out = io.StringIO()
    pipe.send_text(f"{EVENTS};\r{TOTALS};\r\x04")
    assert main(database, input=pipe, output=DummyOutput(), stdout=out) == 0
    assert f"on {database}" in out.getvalue().splitlines()[0]
    assert list(FileHistory(history).load_history_strings()) == [f"{TOTALS};", f"{EVENTS};"]

    with streamsql.connect(database) as con:  # closed by the shell: it opens, the sink resumes
        assert con.query("totals").is_active

    out = io.StringIO()
    with create_pipe_input() as again:
        again.send_text(".queries\r.quit\r")
        assert main(database, input=again, output=DummyOutput(), stdout=out) == 0
    (queries,) = tables(out.getvalue())
    assert [row[0] for row in queries[1:]] == ["totals"]


def test_main_reports_a_database_it_cannot_open(tmp_path: Path, pipe: PipeInput) -> None:
    out = io.StringIO()
    assert main(str(tmp_path), input=pipe, output=DummyOutput(), stdout=out) == 1
    assert out.getvalue().startswith("Error: ")


def test_main_runs_without_a_history_file_it_cannot_write(
    tmp_path: Path, pipe: PipeInput, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMSQL_HISTORY", str(tmp_path / "no" / "such" / "history"))
    out = io.StringIO()
    pipe.send_text("SELECT 'still here' AS status;\r.quit\r")
    assert main(None, input=pipe, output=DummyOutput(), stdout=out) == 0
    assert out.getvalue().startswith(f"History not saved: cannot write {tmp_path / 'no'}")
    assert tables(out.getvalue()) == [[("status",), ("still here",)]]
