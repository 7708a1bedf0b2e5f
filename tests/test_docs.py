"""Docs test (Datasette style): every setting, command and public name is documented."""

from __future__ import annotations

from pathlib import Path

import pytest

import botkit
from botkit.cli import _parser
from botkit.config import ENV_VARS

ROOT = Path(__file__).parent.parent


def documentation() -> str:
    parts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(p.read_text() for p in parts if p.exists())


@pytest.mark.parametrize("var", [var for var, _ in ENV_VARS.values()])
def test_every_setting_is_documented(var):
    assert var in documentation()


def commands() -> list[str]:
    sub = next(a for a in _parser()._actions if a.dest == "command")
    return list(sub.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", commands())
def test_every_command_is_documented(command):
    assert f"run.py {command}" in documentation()


@pytest.mark.parametrize("name", botkit.__all__)
def test_every_public_name_is_documented(name):
    assert name in documentation()


def test_readme_gives_the_two_setup_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = ('python3 -m venv .venv && .venv/bin/pip install -e ".[test]"'
                    " && .venv/bin/python -m pytest")
    assert test_command in readme and test_command in ci
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python run.py" in readme
