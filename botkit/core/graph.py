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
from dataclasses import dataclass
from typing import Literal

from botkit.core.flows import Flow, Step

__all__ = ["FINISHED", "HANDED_OVER", "Call", "Edge", "calls", "edges"]

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
            yield Call(verb=node.func.attr,
                       literal=_literal(node.args[0]) if node.args else None,
                       keywords={k.arg: _literal(k.value) for k in node.keywords if k.arg},
                       filename=filename, line=first_line + node.lineno - 1)


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


def _literal(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
