"""The README's examples run as written.

Every fenced ```sql, ```python and ```sh block of README.md runs here, from a stand-in for
the repository root (a temporary directory with a copy of queries/), as a reader would run
it. A block that shows syntax or output rather than something to run (a template with
`...`, a synopsis with [ ], EXPLAIN's output) is marked by an HTML comment on the line
before its fence, saying why: `<!-- no-run: a synopsis; [ ] marks optional arguments -->`.
Every other block must run:

- SQL blocks run in document order through `streamsql run --trigger available_now` on one
  database, so a block may use what an earlier one created (the sinks read the `events`
  source of *Sources*).
- Python blocks run as scripts in a subprocess each.
- sh blocks run with `sh -e`; `streamsql` and `python` are this checkout's. A
  `python3 -m pip install ... &&` prefix is left out (the package under test is on
  PYTHONPATH already).
- Kafka: `localhost:9092` (in a block or in the copied queries/) becomes the test broker's
  address and every `topic = '...'` a topic of this test's own; the block that starts the
  bundled broker on port 9092 is run on a free port instead, and stopped with SIGTERM.
"""

from __future__ import annotations

import ast
import io
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from kafka import KafkaConsumer

import streamsql
from streamsql.cli import run_file
from streamsql.testing.broker import Broker, free_port

README = Path(__file__).resolve().parent.parent / "README.md"
ROOT = README.parent
FENCE = re.compile(r"^```(\S*)")
NO_RUN = re.compile(r"^<!-- no-run: (.+?) -->$")
BROKER_COMMAND = "python -m streamsql.testing.broker --port 9092"


@dataclass(frozen=True)
class Block:
    language: str
    text: str
    line: int  # of the opening fence, from 1
    no_run: str | None  # why it does not run, or None


def readme_blocks() -> list[Block]:
    """The fenced blocks of README.md, with the no-run reason of the line before each."""
    lines = README.read_text().splitlines()
    blocks, start = [], None
    for number, line in enumerate(lines):
        if start is None and (fence := FENCE.match(line)):
            start, language = number, fence.group(1)
        elif start is not None and line == "```":
            marker = NO_RUN.match(lines[start - 1]) if start else None
            text = "\n".join(lines[start + 1 : number]) + "\n"
            blocks.append(Block(language, text, start + 1, marker and marker.group(1)))
            start = None
    assert start is None, f"README.md:{start + 1}: a fence that is not closed"
    return blocks


def runnable(language: str) -> list[Block]:
    return [b for b in readme_blocks() if b.language == language and b.no_run is None]


@dataclass(frozen=True)
class Stage:
    root: Path
    env: dict[str, str]
    topic_suffix: str
    bootstrap_servers: str

    def localize(self, text: str) -> str:
        """Kafka addresses and topics of an example, made the test broker's and this test's."""
        text = text.replace("localhost:9092", self.bootstrap_servers)
        return re.sub(r"(topic\s*=\s*')([^']+)'", rf"\g<1>\g<2>-{self.topic_suffix}'", text)

    def run(self, block: Block, command: list[str]) -> str:
        """Run a block's command here; what it printed."""
        run = subprocess.run(
            command, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, f"README.md:{block.line}: {run.stderr}"
        return run.stdout


@pytest.fixture
def stage(tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch) -> Stage:
    """A stand-in for the repository root: queries/ copied (Kafka names localized), and
    `streamsql`, `python`, `python3` commands that run this checkout."""
    root = tmp_path / "root"
    stage = Stage(root, {}, uuid.uuid4().hex[:8], broker.bootstrap_servers)
    for path in (ROOT / "queries").rglob("*"):
        target = root / path.relative_to(ROOT)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(stage.localize(path.read_text()))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, command in [
        ("streamsql", f'{sys.executable} -m streamsql.cli "$@"'),
        ("python", f'{sys.executable} "$@"'),
        ("python3", f'{sys.executable} "$@"'),
    ]:
        (bin_dir / name).write_text(f"#!/bin/sh\nexec {command}\n")
        (bin_dir / name).chmod(0o755)
    stage.env.update(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=str(ROOT),
        STREAMSQL_HISTORY=str(tmp_path / "history"),
    )
    monkeypatch.chdir(root)
    return stage


def assert_ignored_by_git(stage: Stage) -> None:
    """What the examples wrote where they ran is ignored by git: run from a clone, they
    leave `git status` clean (checked where the tests run from a git checkout)."""
    if not (ROOT / ".git").exists():
        return
    written = [
        str(path.relative_to(stage.root))
        for path in stage.root.rglob("*")
        if path.is_file()
        and path.parts[len(stage.root.parts)] != "queries"
        and not path.name.startswith("readme_")  # the test's own scripts
    ]
    assert written
    check = subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "check-ignore",
            "--stdin",
            "--no-index",
            "--verbose",
            "--non-matching",
        ],
        input="\n".join(written),
        capture_output=True,
        text=True,
    )
    not_ignored = [line.split("\t")[1] for line in check.stdout.splitlines() if line[:2] == "::"]
    assert not_ignored == []


def test_every_block_runs_or_says_why_not() -> None:
    blocks = readme_blocks()
    assert {b.language for b in blocks} <= {"sql", "python", "sh", ""}
    for block in blocks:
        assert block.language or block.no_run is None, f"README.md:{block.line}"
    assert len(runnable("sql")) >= 5 and len(runnable("python")) >= 2
    assert len(runnable("sh")) >= 3
    # a marker anywhere but right before a fence would mark nothing
    lines = README.read_text().splitlines()
    for number, line in enumerate(lines):
        if NO_RUN.match(line):
            assert FENCE.match(lines[number + 1]), f"README.md:{number + 1}: no fence after it"


def test_sql_blocks_run_in_order(stage: Stage) -> None:
    db = str(stage.root / "readme.db")
    outputs = []
    for block in runnable("sql"):
        out, err = io.StringIO(), io.StringIO()
        try:
            code = run_file(stage.localize(block.text), db, "available_now", out, err, False)
        except streamsql.Error as error:  # a syntax error is raised, not printed
            pytest.fail(f"README.md:{block.line}: {error}")
        assert code == 0, f"README.md:{block.line}: {err.getvalue()}"
        outputs.append(out.getvalue())
    # the file sink's windows, the Kafka sink's messages and the push query's rows are the
    # windows the final watermark (max event time - 10 minutes) closed, as batch SQL says
    events = "read_json('queries/data/events/*.jsonl')"
    closed = f"""
        SELECT time_bucket(INTERVAL '5 minutes', to_timestamp(timestamp / 1000)) AS window_start,
               event_type, count(*) AS n
        FROM {events} GROUP BY ALL
        HAVING window_start + INTERVAL '5 minutes'
               <= (SELECT max(to_timestamp(timestamp / 1000)) FROM {events}) - INTERVAL '10 min'
    """
    expected = duckdb.sql(f"SELECT window_start, event_type, n FROM ({closed})")
    expected = sorted(expected.fetchall())
    assert len(expected) > 20
    with duckdb.connect(db, read_only=True) as engine:
        view = engine.execute("SELECT window_start, event_type, n FROM clicks_per_window")
        assert sorted(view.fetchall()) == expected
    consumer = KafkaConsumer(
        f"clicks-per-window-{stage.topic_suffix}",
        bootstrap_servers=stage.bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    with consumer:
        assert len(list(consumer)) == len(expected)
    printed = [output for output in outputs if "│" in output]  # the push query's table
    pushed = [line for line in printed[-1].splitlines() if line.startswith("│")][1:]
    assert len(pushed) == sum(1 for _, _, n in expected if n > 1)
    assert_ignored_by_git(stage)


def test_python_blocks_run(stage: Stage) -> None:
    outputs = {}
    for block in runnable("python"):
        script = stage.root / f"readme_{block.line}.py"
        script.write_text(block.text)
        outputs[block.text] = stage.run(block, [sys.executable, script.name])

    def output_of(marker: str) -> str:
        (output,) = [output for text, output in outputs.items() if marker in text]
        return output

    # the callback example: one file per batch, whose counts end at the totals of batch SQL
    assert output_of("connector = 'callback'") == "['0.parquet', '1.parquet', '2.parquet']\n"
    # the metrics example: its counter scraped over HTTP, every event read
    assert output_of("serve_metrics(") == 'streamsql_input_rows_total{query="clicks"} 240.0\n'
    # the endpoint example: windows read over the PostgreSQL protocol, a write refused
    served = output_of("--serve")
    assert "[('click', " in served and "read-only endpoint" in served
    # the Delta example: the view, deltalake and pyarrow read the same rows; a version per
    # batch with rows, after the one that created the table
    view, versions, files, history = output_of("connector = 'delta'").splitlines()
    rows = int(files)
    assert rows > 20 and view == f"[({rows},)]" and versions.split()[1] == files
    operations = ast.literal_eval(history)
    assert operations[-1] == "CREATE TABLE" and set(operations[:-1]) == {"WRITE"}
    assert int(versions.split()[0]) == len(operations) - 1
    batches = duckdb.sql("SELECT event_type, max(n) FROM 'out/batches/*.parquet' GROUP BY ALL")
    totals = "SELECT event_type, count(*) FROM 'queries/data/events/*.jsonl' GROUP BY ALL"
    assert sorted(batches.fetchall()) == sorted(duckdb.sql(totals).fetchall())
    assert_ignored_by_git(stage)


def test_sh_blocks_run(stage: Stage) -> None:
    outputs = []
    for block in runnable("sh"):
        if block.text.strip() == BROKER_COMMAND:
            continue  # the test broker is up already: test_broker_command_starts_and_stops
        text = re.sub(r"^python3 -m pip install \S+ && ", "", block.text, flags=re.M)
        outputs.append(stage.run(block, ["sh", "-e", "-c", stage.localize(text)]))
    # the quickstart: the 09:00-09:05 window of clicks, read back from the topic
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in outputs[-1].splitlines()]
    clicks = [row for row in rows if row[:1] == ["2024-01-01 09:00:00+00:00"] and "click" in row]
    assert clicks == [["2024-01-01 09:00:00+00:00", "2024-01-01 09:05:00+00:00", "click", "12"]]
    assert_ignored_by_git(stage)


def test_broker_command_starts_and_stops() -> None:
    """The quickstart's broker command serves on its port, and `kill` stops the broker with
    it (it used to leave the Tansu process running)."""
    assert any(b.text.strip() == BROKER_COMMAND for b in runnable("sh"))
    port = free_port()
    command = BROKER_COMMAND.replace("9092", str(port)).split()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, *command[1:]], stdout=subprocess.PIPE, text=True, env=env
    ) as process:
        assert process.stdout.readline().startswith(f"bootstrap_servers = '127.0.0.1:{port}'")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass


def test_contents_list_every_section() -> None:
    """The table of contents links every heading below the title, and every link lands."""
    text = README.read_text()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    headings = re.findall(r"^#{2,4} (.+)$", prose, re.M)
    anchors = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
    contents = text.split("**Contents:**", 1)[1].split("\n\n", 1)[0]
    linked = re.findall(r"\]\(#([^)]+)\)", contents)
    assert sorted(linked) == sorted(anchors)
    assert "(docs/semantics.md)" in contents and (ROOT / "docs" / "semantics.md").exists()


def test_first_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # it creates app.db where it runs
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    exec(compile(code, str(README), "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert "datetime.datetime(2024, 1, 1, 9, 0)" in printed[0] and "'click', 1)" in printed[0]
    assert printed[1] == "2024-01-01T09:10:00.000000Z 1"


def test_setup_commands_match_ci() -> None:
    text = README.read_text()
    commands = re.findall(r"```sh\n(.*?)\n```", text, re.S)[:2]
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[0].startswith("python3 -m pip install . && streamsql run queries/")
    assert commands[1] in ci


def test_first_python_example_runs_again_on_its_database(tmp_path: Path) -> None:
    """Run as a script twice in a row: the second run resumes the sink on app.db, and the
    rows it inserts into the memory source are read (no batch would leave last_progress
    None)."""
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "first.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": str(README.parent)}
    runs = [
        subprocess.run(
            [sys.executable, "first.py"], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
        printed = run.stdout.splitlines()
        # the second run's 09:00 click is late (the watermark is at 09:10): one click still
        assert printed[0].endswith("'click', 1)]")
        assert printed[1].startswith("2024-01-01T09:10:00.000000Z ")
