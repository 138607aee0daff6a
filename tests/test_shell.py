"""The interactive shell, driven headless: keys through a prompt-toolkit pipe, results in a
StringIO. A push query is interrupted the way a terminal does it, with a real SIGINT, sent
only once the rows it must show have been printed (the shell is then waiting for the next
batch, which is where Ctrl-C lands).

The `terminal` tests run `streamsql shell` in a real terminal (a tmux pane of its own tmux
server) and assert what appears on its screen."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput
from pygments.token import Keyword

import streamsql
from streamsql.catalog.definitions import Emit
from streamsql.connectors.files.sink import ParquetSink
from streamsql.connectors.registry import SINK_CONNECTORS
from streamsql.connectors.sink import OutputSchema
from streamsql.shell import Shell, main
from streamsql.shell.answers import Changelog
from streamsql.shell.completion import SQLCompleter
from streamsql.shell.highlight import StreamSQLLexer
from streamsql.shell.render import Settings, render
from streamsql.shell.repl import PROMPT, is_complete

WAIT_SECONDS = 10
TERMINAL_SECONDS = 30  # a terminal test's wait for the screen: the shell starts a Python first

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


def test_a_push_query_that_ends_says_so_and_unmarked_updates_are_explained(
    memory_con: streamsql.Connection, pipe: PipeInput
) -> None:
    memory_con.execute("INSERT INTO events VALUES (1, 'a'), (2, 'b'), (1, 'c')")
    text = run_shell(
        memory_con,
        pipe,
        "SET trigger = 'available_now';",
        "SELECT count(*) AS n FROM events GROUP BY user_id EMIT CHANGES;",  # no key shown
    )
    lines = text.splitlines()
    assert lines[0] == (
        "Push query running: each batch prints as it is emitted (updates unmarked: the SELECT "
        "list lacks a GROUP BY key or the window); Ctrl-C stops it"
    )
    assert lines[1] == "Batch 0"
    assert tables(text)[0][0] == ("n",) and sorted(tables(text)[0][1:]) == [("1",), ("2",)]
    assert lines[-1] == "Push query finished after 2 rows"


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
    assert offered == {"connector": ", ".join(f"{name} sink" for name in SINK_CONNECTORS)}
    assert completions(completer, create + "connect_") == {}  # connect_timeout: a source's
    # Once the connector is named, only its options, and not the ones already written.
    offered = completions(completer, create + "connector = 'parquet', ")
    assert offered == dict.fromkeys(set(ParquetSink.OPTIONS) - {"connector"}, "parquet sink")
    assert {"path", "compression"} <= set(offered) and not {"table", "topic"} & set(offered)
    assert completions(completer, create + "connector = 'parquet', path = 'x', T") == {
        "trigger": "parquet sink",
        "target_file_size": "parquet sink",
    }
    assert completions(completer, create + "connector = 'csv', path = 'x', d") == {
        "delimiter": "csv sink"
    }
    assert completions(completer, create + "path = 'x', connector = 'duckdb', ") == {
        "trigger": "duckdb sink",
        "multiple_watermark_policy": "duckdb sink",
        "table": "duckdb sink",
        "changelog": "duckdb sink",
    }
    # After `connector =`: the connectors of the statement's kind, quoted as they must be.
    assert list(completions(completer, create + "connector = ")) == [
        f"'{name}'" for name in SINK_CONNECTORS
    ]
    assert completions(completer, create + "connector = 'k") == {"kafka": "sink connector"}
    assert completions(completer, create + "path = ") == {}
    source = "CREATE OR REPLACE SOURCE s (a INT) WITH (connector = 'files', path = 'x', max_f"
    assert completions(completer, source) == {"max_files_per_trigger": "files source"}
    offered = completions(completer, "CREATE SOURCE s (a INT) WITH (connector = 'kafka', ")
    assert "topic_pattern" in offered and "path" not in offered and "key" not in offered
    assert set(offered.values()) == {"kafka source"}


def test_a_clause_keyword_completes_after_the_relation_in_from(
    memory_con: streamsql.Connection,
) -> None:
    completer = SQLCompleter(memory_con.engine)
    assert completions(completer, "SELECT * FROM events WIN") == {"WINDOW": "keyword"}
    assert completions(completer, "SELECT user_id FROM events e win") == {"window": "keyword"}
    memory_con.execute("CREATE TABLE Visits (n INT)")
    completer.refresh()
    assert completions(completer, "SELECT n FROM visits WH") == {"WHERE": "keyword"}
    assert list(completions(completer, "SELECT * FROM events AS e W")) == [
        "WATERMARK",
        "WINDOW",
        "WHERE",
    ]
    # Elsewhere a word may be a column: window_start comes with the WINDOW clause.
    assert "window_start" in completions(completer, "SELECT * FROM events WHERE win")
    assert completions(completer, "SELECT * FROM events DED") == {"DEDUPLICATE ON": "keyword"}
    assert list(completions(completer, "SELECT * FROM events DEDUPLICATE ")) == ["ON"]


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


def totals_after_one_batch(con: streamsql.Connection) -> None:
    """The sink `totals` (TOTALS) with batch 0 (three rows, two users) committed."""
    con.execute(TOTALS)
    con.execute("INSERT INTO events VALUES (1, 'a'), (2, 'b'), (1, 'c')")
    con.query("totals").process_all_available()


def test_progress_shows_a_sinks_last_batch_as_properties(
    memory_con: streamsql.Connection, pipe: PipeInput
) -> None:
    totals_after_one_batch(memory_con)
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


def test_ddl_statements_say_what_they_did(
    memory_con: streamsql.Connection, pipe: PipeInput
) -> None:
    query = "SELECT user_id, count(*) AS n FROM events GROUP BY user_id"
    text = run_shell(
        memory_con,
        pipe,
        EVENTS + ";",
        "CREATE OR REPLACE SOURCE clicks (page VARCHAR) WITH (connector = 'memory');",
        "CREATE OR REPLACE SOURCE clicks (page VARCHAR) WITH (connector = 'memory');",
        f"CREATE SINK totals AS {query};",
        f"CREATE SINK IF NOT EXISTS totals AS {query};",
        f"CREATE SINK totals WITH (trigger = '1 hour') AS {query};",
        f"CREATE OR REPLACE SINK totals AS {query};",
        "STOP QUERY totals;",
        f"CREATE OR REPLACE SINK totals AS {query};",
        "DROP SINK totals;",
        "DROP SOURCE IF EXISTS nothing;",
        "DROP SOURCE clicks;",
    )
    assert text.splitlines() == [
        "Source events exists: unchanged",
        "Source clicks created",
        "Source clicks replaced",
        "Sink totals started",
        "Sink totals exists: unchanged",
        "Sink totals restarted with its new definition",
        "Sink totals replaced",
        "Query totals stopped",
        "Sink totals replaced",
        "Sink totals dropped",
        "Source nothing does not exist: nothing dropped",
        "Source clicks dropped",
    ]


def test_schema_hides_the_values_of_secret_options(
    memory_con: streamsql.Connection, pipe: PipeInput
) -> None:
    source = (
        "CREATE SOURCE ks (k VARCHAR) WITH (connector = 'kafka', bootstrap_servers = "
        "'127.0.0.1:1', topic = 't', kafka.sasl_plain_password = 'hunter2-s3cr3t')"
    )
    memory_con.execute(source)
    text = run_shell(memory_con, pipe, ".schema ks", ".schema nothing")
    assert text.splitlines() == [
        source.replace("'hunter2-s3cr3t'", "'***'") + ";",
        "Error: no source, sink, table or view is named nothing",
    ]


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


# -- output modes, cut tables, op marks: the pure functions -----------------------------------

NAMES, TYPES = ["k", "amount", "note"], ["VARCHAR", "DECIMAL(10,2)", "VARCHAR"]
ROWS = [("a", Decimal("1.50"), 'say "hi", | ok'), ("b", None, "x" * 50)]


def test_each_mode_prints_rows_its_own_way() -> None:
    settings = Settings()
    settings.mode = "csv"
    assert render(NAMES, TYPES, ROWS, settings) == (
        'k,amount,note\na,1.50,"say ""hi"", | ok"\n' + "b,," + "x" * 50
    )
    settings.mode = "json"
    assert json.loads(render(NAMES, TYPES, ROWS, settings)) == [
        {"k": "a", "amount": 1.5, "note": 'say "hi", | ok'},
        {"k": "b", "amount": None, "note": "x" * 50},
    ]
    assert render(NAMES, TYPES, ROWS, settings).splitlines()[1].startswith('{"k": "b"')
    settings.mode = "markdown"
    assert render(NAMES, TYPES, ROWS, settings).splitlines() == [
        "| k | amount | note |",
        "|---|---:|---|",
        '| a | 1.50 | say "hi", \\| ok |',
        "| b | NULL | " + "x" * 39 + "… |",
    ]
    settings.mode, settings.types = "line", True
    assert render(NAMES, TYPES, ROWS, settings).splitlines() == [
        "           k (VARCHAR) = a",
        "amount (DECIMAL(10,2)) = 1.50",
        '        note (VARCHAR) = say "hi", | ok',
        "",
        "           k (VARCHAR) = b",
        "amount (DECIMAL(10,2)) = NULL",
        "        note (VARCHAR) = " + "x" * 50,
    ]


def test_a_table_shows_types_on_request_and_wide_values_up_to_maxwidth() -> None:
    settings = Settings()
    plain = render(NAMES, TYPES, ROWS, settings).splitlines()
    assert plain[1] == "│ k │ amount │ note                                     │"
    assert plain[4] == "│ b │ NULL   │ " + "x" * 39 + "… │"
    settings.types, settings.max_width = True, 0
    typed = render(NAMES, TYPES, ROWS, settings).splitlines()
    assert typed[1:3] == [
        "│ k       │ amount        │ note" + " " * 47 + "│",
        "│ VARCHAR │ DECIMAL(10,2) │ VARCHAR" + " " * 44 + "│",
    ]
    assert typed[5] == "│ b       │ NULL          │ " + "x" * 50 + " │"
    assert typed[-1] == "2 rows"


def test_a_long_table_shows_its_first_and_last_rows_and_says_how_many_it_cut() -> None:
    settings = Settings()
    rows = [(i,) for i in range(100)]
    lines = render(["i"], ["BIGINT"], rows, settings).splitlines()
    values = [line.strip("│ ") for line in lines if line.startswith("│")][1:]
    assert values == [*map(str, range(20)), "·", "·", "·", *map(str, range(80, 100))]
    assert lines[-1] == "100 rows (40 shown)"
    settings.max_rows = 5
    values = [line.strip("│ ") for line in render(["i"], [], rows, settings).splitlines()]
    assert values[3:12] == ["0", "1", "2", "·", "·", "·", "98", "99", "└────┘"]
    settings.max_rows = 0
    assert render(["i"], [], rows, settings).splitlines()[-1] == "100 rows"
    assert render(["i"], [], rows[:40], Settings()).splitlines()[-1] == "40 rows"


def test_changes_rows_are_marked_insert_then_update_per_group_key() -> None:
    schema = OutputSchema(
        ("window_start", "k", "n"),
        ("TIMESTAMP", "VARCHAR", "BIGINT"),
        Emit.CHANGES,
        True,
        ("window_start", "k"),
        True,
    )
    changes = Changelog.of(schema)
    assert changes is not None
    assert changes.mark([(0, "a", 1), (0, "b", 1)]) == [("+I", 0, "a", 1), ("+I", 0, "b", 1)]
    assert changes.mark([(0, "a", 2), (5, "a", 1)]) == [("+U", 0, "a", 2), ("+I", 5, "a", 1)]
    whole = OutputSchema(("n",), ("BIGINT",), Emit.CHANGES, True, (), True)  # global: one group
    assert Changelog.of(whole).mark([(1,), (2,)]) == [("+I", 1), ("+U", 2)]
    for unmarked in (
        OutputSchema(("n",), ("BIGINT",), Emit.CHANGES, True, (), False),  # a key not shown
        OutputSchema(("n",), ("BIGINT",), Emit.FINAL, True, (), True),
        OutputSchema(("k",), ("VARCHAR",), Emit.CHANGES, False, (), False),  # stateless
    ):
        assert Changelog.of(unmarked) is None
    assert Changelog.unmarked(OutputSchema(("n",), ("BIGINT",), Emit.CHANGES, True, (), False))


# -- in a real terminal -----------------------------------------------------------------------


class Terminal:
    """`streamsql shell` in a 120x50 tmux pane, on a tmux server of the test's own."""

    def __init__(self, tmp_path: Path, *arguments: str) -> None:
        self.socket = f"streamsql-test-{uuid.uuid4().hex[:8]}"
        root = Path(__file__).resolve().parent.parent
        environment = {"PYTHONPATH": str(root), "STREAMSQL_HISTORY": str(tmp_path / "history")}
        command = [sys.executable, "-m", "streamsql.cli", "shell", *arguments]
        self.tmux(
            "new-session",
            "-d",
            "-x",
            "120",
            "-y",
            "50",
            "-c",
            str(tmp_path),
            *(f"-e{name}={value}" for name, value in environment.items()),
            shlex.join(command),
        )
        self.wait_for_prompt(1)

    def tmux(self, *arguments: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *arguments], check=True, capture_output=True, text=True
        ).stdout

    def type(self, text: str) -> None:
        """Keys as typed (Enter is \\r); a trailing ';' escaped, or tmux takes it for its own."""
        self.tmux("send-keys", "-l", text[:-1] + "\\;" if text.endswith(";") else text)

    def keys(self, *names: str) -> None:
        self.tmux("send-keys", *names)

    def screen(self) -> str:
        """Everything the pane printed, its scrollback too, lines joined where they wrapped."""
        return self.tmux("capture-pane", "-p", "-J", "-S", "-")

    def wait_for(self, text: str, count: int = 1) -> str:
        """The screen, once `text` is on it `count` times."""
        return self.wait_until(lambda screen: screen.count(text) >= count, repr(text))

    def wait_for_prompt(self, count: int) -> str:
        """The screen, once `count` prompts are on it and the last one waits, empty."""

        def ready(screen: str) -> bool:
            prompts = [line for line in screen.splitlines() if line.startswith(PROMPT.strip())]
            return len(prompts) >= count and screen.rstrip().endswith(PROMPT.strip())

        return self.wait_until(ready, f"prompt {count}")

    def wait_until(self, condition: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + TERMINAL_SECONDS
        while not condition(screen := self.screen()):
            assert time.monotonic() < deadline, f"{what} not on the screen:\n{screen.rstrip()}"
            time.sleep(0.05)
        return screen

    def run(self, line: str) -> str:
        """Type a line and Enter; the screen once the next prompt waits."""
        return self._then_prompt(lambda: self.type(line + "\r"), 1)

    def interrupt(self) -> str:
        """Ctrl-C; the screen once the next prompt waits."""
        return self._then_prompt(lambda: self.keys("C-c"), 1)

    def _then_prompt(self, action: Callable[[], None], prompts: int) -> str:
        shown = sum(line.startswith(PROMPT.strip()) for line in self.screen().splitlines())
        action()
        return self.wait_for_prompt(shown + prompts)

    def close(self) -> None:
        self.tmux("kill-server")


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Callable[..., Terminal]]:
    if shutil.which("tmux") is None:
        pytest.fail("the terminal tests need tmux")
    opened: list[Terminal] = []

    def open_terminal(*arguments: str) -> Terminal:
        opened.append(Terminal(tmp_path, *arguments))
        return opened[-1]

    yield open_terminal
    for each in opened:
        each.close()


def after(screen: str, command: str) -> list[str]:
    """The screen's lines from the last prompt line that ends with `command` on."""
    lines = screen.rstrip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.rstrip().endswith(command))
    return [line.rstrip() for line in lines[start + 1 :]]


def test_terminal_results_in_every_mode_cut_typed_timed_and_whole(
    terminal: Callable[..., Terminal],
) -> None:
    shell = terminal()
    screen = shell.run("SELECT range AS i, 'v' || range AS v FROM range(100);")
    printed = after(screen, "FROM range(100);")
    assert printed[:2] == ["┌────┬─────┐", "│ i  │ v   │"]
    assert printed[22:28] == [
        "│ 19 │ v19 │",
        "│  · │ ·   │",
        "│  · │ ·   │",
        "│  · │ ·   │",
        "│ 80 │ v80 │",
        "│ 81 │ v81 │",
    ]
    assert "100 rows (40 shown)" in printed

    shell.run(".types on")
    shell.run(".timer on")
    printed = after(shell.run("SELECT 7 AS n, DATE '2024-01-02' AS d;"), "AS d;")
    assert printed[:5] == [
        "┌─────────┬────────────┐",
        "│ n       │ d          │",
        "│ INTEGER │ DATE       │",
        "├─────────┼────────────┤",
        "│       7 │ 2024-01-02 │",
    ]
    assert printed[7].startswith("Run Time (s): real 0.")
    shell.run(".timer off")
    shell.run(".types off")

    wide = "w" * 70
    printed = after(shell.run(f"SELECT '{wide}' AS wide;"), "AS wide;")
    assert printed[3] == "│ " + "w" * 39 + "… │"
    shell.run(".maxwidth 0")
    printed = after(shell.run(f"SELECT '{wide}' AS wide;"), "AS wide;")
    assert printed[3] == f"│ {wide} │"

    expected = {
        "line": ["k = a", "n = 1", "", "k = b", "n = 2"],
        "csv": ["k,n", "a,1", "b,2"],
        "json": ['[{"k": "a", "n": 1},', '{"k": "b", "n": 2}]'],
        "markdown": ["| k | n |", "|---|---:|", "| a | 1 |", "| b | 2 |"],
    }
    for mode, lines in expected.items():
        shell.run(f".mode {mode}")
        query = f"SELECT * FROM (VALUES ('a', 1), ('b', 2)) t(k, n) ORDER BY k; -- {mode}"
        assert after(shell.run(query), f"-- {mode}")[: len(lines)] == lines
    assert after(shell.run(".mode"), ".mode")[0] == "current mode: markdown"
    assert after(shell.run(".mode xml"), ".mode xml")[0] == (
        "Error: unknown mode xml; the modes are table, line, csv, json, markdown"
    )


def write_json_lines(directory: Path, name: str, rows: list[dict[str, object]]) -> None:
    """A file the files source picks up whole: written aside, then renamed in."""
    staged = directory / f".{name}"
    staged.write_text("".join(json.dumps(row) + "\n" for row in rows))
    staged.rename(directory / name)


def test_terminal_ddl_answers_push_batches_and_tables_and_schema(
    terminal: Callable[..., Terminal], tmp_path: Path
) -> None:
    clicks = tmp_path / "clicks"
    clicks.mkdir()
    write_json_lines(clicks, "1.json", [{"page": "home"}, {"page": "cart"}])
    shell = terminal(str(tmp_path / "app.db"))
    source = (
        "CREATE SOURCE clicks (page VARCHAR) "
        f"WITH (connector = 'files', path = '{clicks}', format = 'json');"
    )
    assert after(shell.run(source), "format = 'json');")[0] == "Source clicks created"
    assert after(shell.run(source), "format = 'json');")[0] == "Source clicks exists: unchanged"
    sink = "CREATE SINK per_page AS SELECT page, count(*) AS n FROM clicks GROUP BY page;"
    assert after(shell.run(sink), "GROUP BY page;")[0] == "Sink per_page started"
    shell.run("CREATE VIEW pages AS SELECT DISTINCT page FROM per_page;")

    screen = shell.run(".tables")
    assert after(screen, ".tables")[:8] == [
        "┌──────────┬───────────────┐",
        "│ name     │ kind          │",
        "├──────────┼───────────────┤",
        "│ clicks   │ source        │",
        "│ pages    │ view          │",
        "│ per_page │ sink (duckdb) │",
        "│ per_page │ table         │",
        "└──────────┴───────────────┘",
    ]
    printed = after(shell.run(".schema per_page"), ".schema per_page")
    assert printed[0] == sink
    assert printed[1].startswith("CREATE TABLE per_page(page VARCHAR")
    assert printed[2:] == [PROMPT.strip()]
    printed = after(shell.run(".schema"), ".schema")
    assert printed[:3] == [source, sink, "CREATE VIEW pages AS SELECT DISTINCT page FROM per_page;"]

    shell.type("SELECT page, count(*) AS n FROM clicks GROUP BY page EMIT CHANGES;\r")
    shell.wait_for("Batch 0")
    shell.wait_for("2 rows")
    write_json_lines(clicks, "2.json", [{"page": "home"}, {"page": "faq"}])
    shell.wait_for("Batch 1")
    shell.wait_for("2 rows", 2)
    screen = shell.interrupt()
    printed = after(screen, "EMIT CHANGES;")
    assert printed[-2:] == ["^CPush query stopped after 4 rows", PROMPT.strip()]
    assert printed[0] == "Push query running: each batch prints as it is emitted; Ctrl-C stops it"
    batch_0, batch_1 = printed.index("Batch 0"), printed.index("Batch 1")
    assert printed[batch_0 + 1 : batch_0 + 4] == [
        "┌────┬──────┬───┐",
        "│ op │ page │ n │",
        "├────┼──────┼───┤",
    ]
    assert sorted(printed[batch_0 + 4 : batch_0 + 6]) == ["│ +I │ cart │ 1 │", "│ +I │ home │ 1 │"]
    assert sorted(printed[batch_1 + 4 : batch_1 + 6]) == ["│ +I │ faq  │ 1 │", "│ +U │ home │ 2 │"]

    shell.run(".mode csv")  # a push query prints its batches in the mode chosen
    shell.type("SELECT count(*) AS n FROM clicks EMIT CHANGES;\r")
    shell.wait_for("+I,4")
    write_json_lines(clicks, "3.json", [{"page": "faq"}])
    shell.wait_for("+U,5")
    printed = after(shell.interrupt(), "FROM clicks EMIT CHANGES;")
    assert printed[1:] == [
        "Batch 0",
        "op,n",
        "+I,4",
        "Batch 1",
        "op,n",
        "+U,5",
        "^CPush query stopped after 2 rows",
        PROMPT.strip(),
    ]
    shell.run(".mode table")

    assert after(shell.run("STOP QUERY per_page;"), "QUERY per_page;")[0] == (
        "Query per_page stopped"
    )
    assert after(shell.run(sink), "GROUP BY page;")[0] == "Sink per_page started"
    shell.run("DROP VIEW pages;")
    assert after(shell.run("DROP SINK per_page;"), "SINK per_page;")[0] == "Sink per_page dropped"
    assert after(shell.run("DROP SINK IF EXISTS per_page;"), "EXISTS per_page;")[0] == (
        "Sink per_page does not exist: nothing dropped"
    )
    assert after(shell.run("DROP SOURCE clicks;"), "SOURCE clicks;")[0] == "Source clicks dropped"


def test_terminal_completes_in_context_and_keeps_indentation(
    terminal: Callable[..., Terminal],
) -> None:
    shell = terminal()
    shell.run(EVENTS + ";")
    shell.type("SELECT * FROM events WIN")
    shell.wait_for("WINDOW  keyword")  # completion runs as one types: Tab picks from it
    shell.keys("Tab")
    shell.wait_for("streamsql> SELECT * FROM events WINDOW")
    shell.interrupt()  # drops the line

    shell.type("CREATE SINK s WITH (connector = 'parquet', ")
    shell.keys("Tab")
    screen = shell.wait_for("parquet sink", 5)
    assert "compression" in screen and "target_file_size" in screen
    assert "kafka sink" not in screen and "duckdb sink" not in screen and "bootstrap" not in screen
    shell.interrupt()

    # Typed line by line: Enter indents the next line as the one before.
    shell.type("SELECT 1 AS a,\r")
    shell.wait_for("SELECT 1 AS a,\n      ...>")
    shell.type("    2 AS b,\r")
    shell.wait_for("...>     2 AS b,")
    screen = shell.run("3 AS c;")
    assert after(screen, "SELECT 1 AS a,")[:2] == [
        "      ...>     2 AS b,",
        "      ...>     3 AS c;",
    ]
    # Typed ahead (or pasted) in one go: the lines keep the indentation they came with.
    screen = shell.run("SELECT 4 AS d,\r    5 AS e,\r    6 AS f;")
    assert after(screen, "SELECT 4 AS d,")[:2] == [
        "      ...>     5 AS e,",
        "      ...>     6 AS f;",
    ]
    assert "│ 4 │ 5 │ 6 │" in screen


def test_describe_query_shows_each_property_once_and_whole(
    memory_con: streamsql.Connection, pipe: PipeInput
) -> None:
    """Issue 11 item 20: no value of DESCRIBE QUERY ends in '…', whatever `.maxwidth`."""
    totals_after_one_batch(memory_con)
    (described,) = tables(run_shell(memory_con, pipe, "DESCRIBE QUERY totals;"))
    names = [name for name, _ in described[1:]]
    assert len(names) == len(set(names))
    properties = dict(described[1:])
    assert properties["status"] == "waiting for data" and properties["last_batch"] == "0"
    (source,) = json.loads(properties["sources"])  # whole, so it parses
    assert (source["source"], source["end_offset"]["rows"]) == ("events", 3)
