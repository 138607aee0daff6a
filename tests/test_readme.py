"""The README's examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


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
