"""Docs test (Datasette style): every setting, command and public name is documented."""

from __future__ import annotations

from pathlib import Path

import pytest

import botkit
from botkit.cli.main import _parser
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


def reference_names(heading: str) -> set[str]:
    """The names in the first column of the table under ``heading`` in docs/reference.md."""
    text = (ROOT / "docs" / "reference.md").read_text()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.add(line.split("`")[1].split("(")[0])
    return names


def test_the_reference_lists_every_flow_and_step_parameter_and_no_other():
    import dataclasses
    import inspect

    from botkit import Delivery, Flow

    flow = {f.name for f in dataclasses.fields(Flow) if f.init}
    step = set(inspect.signature(Flow.step).parameters) - {"self"}
    delivery = {f.name for f in dataclasses.fields(Delivery)}
    assert reference_names("`Flow(name, ...)`") == flow
    assert reference_names("`@flow.step(name, ...)`") == step
    assert reference_names("`Delivery(...)`") == delivery


def test_the_reference_lists_every_turn_verb_and_attribute_and_no_other():
    import inspect

    from botkit import Turn

    public = {n for n in dir(Turn) if not n.startswith("_")}
    verbs = {n for n in public if inspect.isfunction(getattr(Turn, n))}
    # What a handler reads: the properties, and what the engine hands the Turn (kept as is;
    # ``flows`` is the engine's, for the verbs).
    given = set(inspect.signature(Turn.__init__).parameters) - {"self", "flows"}
    attributes = (public - verbs) | given
    assert reference_names("`Turn`: the verbs") == verbs
    assert reference_names("`Turn`: what a handler reads") == attributes


def test_the_docs_index_names_every_page():
    index = (ROOT / "docs" / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "README.md":
            assert f"({page.name})" in index, page.name
