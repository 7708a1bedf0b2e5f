"""A flow as a graph: its steps, and the edges its handlers' verbs make, read from their
source (``turn.ask("rating")`` goes to the step ``rating``, ``turn.switch("support")`` to
another flow, ``turn.finish()`` ends the conversation, ``turn.handoff()`` gives it to a
person). ``run.py check`` reads the same calls; the console draws the graph with the
funnel's counts on it.

Only calls with a literal name are edges: ``turn.ask(next_step)`` is a path that the source
cannot tell.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from botkit.core.flows import Flow, Step

__all__ = ["FINISHED", "HANDED_OVER", "Call", "Edge", "calls", "edges", "template_names"]

FINISHED = "finished"  # where turn.finish() goes
HANDED_OVER = "a person"  # where turn.handoff() goes


@dataclass(frozen=True)
class Call:
    """A method call in a step's handler: ``turn.ask("rating", template="x.txt")``."""

    verb: str
    literal: str | None  # the first argument, when it is a string literal
    keywords: dict[str, str | None]  # keyword arguments; a value when it is a string literal
    filename: str
    line: int
    # The templates an argument names ("" for the first): a string literal's one, or each
    # key of an A/B test's literal ({"a.txt": 50, "b.txt": 50}).
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # An argument that is an A/B test's dict literal, as written (its weights to check).
    tests: dict[str, dict[Any, Any]] = field(default_factory=dict)

    def templates(self, argument: str = "") -> tuple[str, ...]:
        return self.names.get(argument, ())


@dataclass(frozen=True)
class Edge:
    """From a step to another step, another flow, the end, or a person."""

    source: str
    target: str
    kind: Literal["ask", "switch", "finish", "handoff"]


def calls(step: Step) -> Iterator[Call]:
    """The method calls of ``step``'s handler, from its source (none when it has none, as a
    handler made at run time may not)."""
    try:
        source = textwrap.dedent(inspect.getsource(step.handler))
        _, first_line = inspect.getsourcelines(step.handler)
    except (OSError, TypeError):
        return
    filename = inspect.getsourcefile(step.handler) or "?"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            arguments = [("", node.args[0])] if node.args else []
            arguments += [(k.arg, k.value) for k in node.keywords if k.arg]
            yield Call(verb=node.func.attr,
                       literal=_literal(node.args[0]) if node.args else None,
                       keywords={k.arg: _literal(k.value) for k in node.keywords if k.arg},
                       filename=filename, line=first_line + node.lineno - 1,
                       names={name: named for name, value in arguments
                              if (named := template_names(value))},
                       tests={name: test for name, value in arguments
                              if (test := _dict_literal(value)) is not None})


def edges(flow: Flow) -> list[Edge]:
    """The flow's edges, each once, in the order of its steps and their source."""
    found: list[Edge] = []
    for step in flow.steps.values():
        for call in calls(step):
            if call.verb == "ask" and call.literal in flow.steps:
                found.append(Edge(step.name, call.literal, "ask"))
            elif call.verb == "switch" and call.literal is not None:
                found.append(Edge(step.name, call.literal, "switch"))
            elif call.verb == "finish":
                found.append(Edge(step.name, FINISHED, "finish"))
            elif call.verb == "handoff":
                found.append(Edge(step.name, HANDED_OVER, "handoff"))
    return list(dict.fromkeys(found))


def template_names(node: ast.expr) -> tuple[str, ...]:
    """The templates an argument names: a string literal's one, or the string keys of a
    dict literal (an A/B test); none when the source cannot tell."""
    if isinstance(node, ast.Dict):
        return tuple(name for key in node.keys if key is not None
                     and (name := _literal(key)) is not None)
    name = _literal(node)
    return () if name is None else (name,)


def _dict_literal(node: ast.expr) -> dict[Any, Any] | None:
    if not isinstance(node, ast.Dict):
        return None
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError):  # a name or a call in it, or an unhashable key
        return None
    return value if isinstance(value, dict) else None


def _literal(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
