"""Static checks behind ``run.py check``: the flow graph and the templates, before any user.

Besides the declared prompts, the handlers' source is read: a verb called with a literal
(``turn.ask("rating")``, ``turn.say("survey/thanks.txt")``) is checked against the flows and
the templates, with the file and line of the call.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from botkit.cli.template_checks import relative, template_problems
from botkit.core.flows import Flow, FlowSet, Step, weighted
from botkit.core.graph import calls
from botkit.errors import DefinitionError
from botkit.runtime.templates import Renderer

__all__ = ["check", "check_template"]

TEMPLATE_VERBS = {"say", "notify", "retry", "finish", "handoff"}


def check(flows: FlowSet, renderer: Renderer, templates: str | Path | None) -> list[str]:
    """Return every problem found, each naming the file and line to fix (empty if none)."""
    problems: list[str] = []
    broken: set[str] = set()  # a template that does not compile is reported once, here
    if templates is not None and Path(templates).is_dir():
        for path in sorted(Path(templates).rglob("*.txt")):
            name = path.relative_to(templates).as_posix()
            problem = check_template(renderer, name)
            if problem:
                broken.add(name)
                problems.append(problem)
    once = _Once(renderer, broken)
    for flow in flows.values():
        for reaction in (flow.error, flow.give_up, flow.on_expire):
            if isinstance(reaction, str):
                problems += _try_template(once, reaction, f"flow {flow.name!r}")
        if flow.first.prompt is None:
            problems.append(f"flow {flow.name!r}: its first step {flow.first.name!r} has no"
                            " prompt, so the flow cannot be started")
        for step in flow.steps.values():
            for name in step.templates:
                problems += _try_template(once, name, step.where)
            problems += list(_check_calls(flows, flow, step, once))
    if templates is not None:
        problems += template_problems(flows, renderer, str(templates))
    return list(dict.fromkeys(problems))


class _Once:
    """Loads templates, saying nothing more about one already reported as broken."""

    def __init__(self, renderer: Renderer, broken: set[str]) -> None:
        self.renderer = renderer
        self.broken = broken

    def load(self, name: str) -> None:
        if name not in self.broken:
            self.renderer.load(name)


def check_template(renderer: Renderer, name: str) -> str | None:
    """Why template ``name`` cannot be used (missing, or does not compile), or None."""
    try:
        renderer.load(name)
    except DefinitionError as exc:
        return str(exc)
    return None


def _try_template(renderer: _Once, name: str, where: str) -> list[str]:
    try:
        renderer.load(name)
    except DefinitionError as exc:
        return [f"{where}: {exc}"]
    return []


def _check_calls(flows: FlowSet, flow: Flow, step: Step, renderer: _Once) -> Iterator[str]:
    for call in calls(step):
        verb, literal, keywords = call.verb, call.literal, call.keywords
        where = f"{relative(call.filename)}:{call.line}"
        if verb == "ask" and literal is not None:
            if literal not in flow.steps:
                yield f"{where}: turn.ask({literal!r}): {_unknown(flow, literal)}"
            elif "template" not in keywords and flow.steps[literal].prompt is None:
                yield f"{where}: turn.ask({literal!r}): that step has no prompt template"
        elif verb == "switch" and literal is not None and literal not in flows:
            yield f"{where}: turn.switch({literal!r}): no flow is named {literal!r}"
        named: list[tuple[str, str]] = []
        if verb in TEMPLATE_VERBS:
            named.append(("", f"turn.{verb}()"))
        if verb in TEMPLATE_VERBS | {"ask", "switch"}:
            named.append(("template", f"turn.{verb}()"))
        if verb == "notify":
            named.append(("sms", "turn.notify(sms=)"))
        for argument, what in named:
            if argument == "sms" and argument in call.tests:
                yield f"{where}: {what}: an SMS is one template, not an A/B test"
                continue
            if argument in call.tests:
                try:
                    weighted(f"{where}: {what}: an A/B test of its template", call.tests[argument])
                except DefinitionError as exc:
                    yield str(exc)
            for name in call.templates(argument):
                yield from _try_template(renderer, name, f"{where}: {what}")


def _unknown(flow: Flow, name: str) -> str:
    try:
        flow.get(name)
    except DefinitionError as exc:
        return str(exc)
    return ""
