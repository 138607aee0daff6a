"""The README's examples run as written."""

from __future__ import annotations

import re
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
