"""What templates read against what the bot gives them, for ``run.py check``.

Two mistakes pass a compile and fail only when a user is waiting for the message:

- a variable (``{{ nme }}``) that no reply passes: every call that names the template is
  read from the handlers' source (``turn.say("x.txt", name=...)``, ``turn.ask("step",
  ...)`` for a step's prompt), and what the template reads beyond ``state``, ``phone``,
  ``public_url`` and what those calls pass is reported;
- a state key (``{{ state.topik }}``) that no handler writes (``turn.state["topic"] = ...``,
  ``setdefault``, ``update``).

Both come with "did you mean". A name guarded in the template (``{% if nme is defined %}``,
``{% if "topik" in state %}``, ``state.get("topik")``) is not reported, and neither is
anything when a handler passes ``**variables`` or writes a state key that is not a literal.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import meta, nodes

from botkit.core.flows import Flow, FlowSet, Step
from botkit.core.graph import template_names
from botkit.runtime.templates import Renderer

__all__ = ["relative", "template_problems"]

GLOBALS = frozenset({"state", "phone", "public_url"})
# What the engine passes to its own templates (and to a bot's copy of them).
BUILT_IN = {"botkit/fallback.txt": {"keywords", "text"}, "botkit/agent.txt": {"text"}}
_NOT_VARIABLES = {"delivery", "template", "remind_after", "timeout", "step", "sms"}
_STATE_METHODS = {"get", "items", "keys", "values"}
_ANY = None  # a call passes ``**variables``: anything may be passed


@dataclass
class _Given:
    """What the bot's code gives templates: variables per template, and the state keys."""

    variables: dict[str, set[str] | None] = field(default_factory=dict)
    state_keys: set[str] = field(default_factory=set)
    dynamic_state: bool = False  # a state key not written as a literal: keys can't be known

    def all_variables(self) -> set[str]:
        """Every variable some reply passes to some template (for "did you mean")."""
        return {n for names in self.variables.values() if names for n in names}

    def passes(self, template: str | None, names: set[str] | None) -> None:
        if template is None:
            return
        known = self.variables.setdefault(template, set())
        if names is None or known is None:
            self.variables[template] = _ANY
        else:
            known |= names


def template_problems(flows: FlowSet, renderer: Renderer, folder: str) -> list[str]:
    """Variables and state keys the templates of ``flows`` read but are never given."""
    given = _Given()
    for name, names in BUILT_IN.items():
        given.passes(name, set(names))
    for flow in flows.values():
        for step in flow.steps.values():
            for name in step.templates:  # sent with no variables (start, re-ask, reactions)
                given.passes(name, set())
        for reaction in (flow.error, flow.give_up, flow.on_expire):
            if isinstance(reaction, str):
                given.passes(reaction, set())
        for handler in _handlers(flow):
            _read_handler(handler, flow, flows, given)
    problems: list[str] = []
    for name, passed in sorted(given.variables.items(), key=lambda kv: kv[0]):
        problems += _check_template(renderer, folder, name, passed, given)
    return problems


def _handlers(flow: Flow) -> Iterator[Any]:
    for step in flow.steps.values():
        yield step.handler
        for reaction in (step.remind, step.on_timeout, step.on_unanswered, step.on_undelivered):
            if callable(reaction):
                yield reaction
    for reaction in (flow.on_expire, flow.stale):
        if callable(reaction):
            yield reaction


def _read_handler(handler: Any, flow: Flow, flows: FlowSet, given: _Given) -> None:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(handler)))
    except (OSError, TypeError, SyntaxError):
        given.dynamic_state = True  # unreadable source: assume it may write anything
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _is_state(node.value):
            if isinstance(node.ctx, ast.Store):
                key = _literal(node.slice)
                if key is None:
                    given.dynamic_state = True
                else:
                    given.state_keys.add(key)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if _is_state(node.func.value):
                _state_call(node, given)
            else:
                _verb_call(node, flow, flows, given)


def _is_state(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "state"


def _state_call(node: ast.Call, given: _Given) -> None:
    assert isinstance(node.func, ast.Attribute)
    method = node.func.attr
    if method == "setdefault":
        key = _literal(node.args[0]) if node.args else None
        if key is None:
            given.dynamic_state = True
        else:
            given.state_keys.add(key)
    elif method == "update":
        for kw in node.keywords:
            if kw.arg is None:
                given.dynamic_state = True
            else:
                given.state_keys.add(kw.arg)
        for arg in node.args:
            keys = [_literal(k) if k is not None else None for k in arg.keys] if isinstance(
                arg, ast.Dict) else [None]
            if None in keys:
                given.dynamic_state = True
            given.state_keys.update(k for k in keys if k is not None)


def _verb_call(node: ast.Call, flow: Flow, flows: FlowSet, given: _Given) -> None:
    assert isinstance(node.func, ast.Attribute)
    verb = node.func.attr
    first = _literal(node.args[0]) if node.args else None
    named = template_names(node.args[0]) if node.args else ()  # a template, or an A/B test's
    keywords = {kw.arg: kw.value for kw in node.keywords}
    names: set[str] | None = {k for k in keywords if k is not None} - _NOT_VARIABLES
    if None in keywords:
        names = None  # ``**variables``
    explicit = template_names(keywords["template"]) if "template" in keywords else ()
    # retry() without a template sends the step's prompt, which another check covers.
    if verb in ("say", "finish", "handoff", "retry"):
        for template in named:
            given.passes(template, names)
    elif verb == "notify":
        for template in (*named, *(template_names(keywords["sms"]) if "sms" in keywords else ())):
            given.passes(template, names)
    elif verb == "ask" and first is not None:
        step = flow.steps.get(first)
        for prompt in list(explicit) or _prompts(step):
            given.passes(prompt, names)
    elif verb == "switch" and first is not None and first in flows:
        target = flows[first]
        name = _literal(keywords["step"]) if "step" in keywords else None
        step = target.steps.get(name) if name else (target.first if target.steps else None)
        for prompt in _prompts(step):
            given.passes(prompt, names)


def _prompts(step: Step | None) -> list[str | None]:
    """The templates asking ``step`` may send: its prompt, or each variant of its A/B test."""
    if step is None:
        return [None]
    return [name for name, _ in step.variants] or [step.prompt]


def _literal(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _check_template(
    renderer: Renderer, folder: str, name: str, passed: set[str] | None, given: _Given
) -> Iterable[str]:
    try:
        loader = renderer.env.loader
        assert loader is not None  # the Renderer always sets one
        source, filename, _ = loader.get_source(renderer.env, name)
        tree = renderer.env.parse(source)
    except Exception:  # missing or broken: the compile check reports it once
        return []
    where = _shown(filename, folder, name)
    guarded = _guarded(tree)
    problems = []
    if passed is not None:
        known = set(GLOBALS) | set(renderer.env.globals) | passed
        for variable in sorted(meta.find_undeclared_variables(tree) - known - guarded):
            line = next((n.lineno for n in tree.find_all(nodes.Name) if n.name == variable), 1)
            hint = _did_you_mean(variable, known | given.all_variables())
            problems.append(f"{where}:{line}: reads {{{{ {variable} }}}}, which no reply"
                            f" passes{hint}: pass it, as in turn.say({name!r}, {variable}=...)")
    if not given.dynamic_state:
        for key, line in _state_reads(tree, guarded):
            if key not in given.state_keys:
                hint = _did_you_mean(key, given.state_keys)
                problems.append(f"{where}:{line}: reads state.{key}, which no handler"
                                f" writes{hint}: set turn.state[{key!r}] in a handler")
    return problems


def _guarded(tree: nodes.Template) -> set[str]:
    """Names tested with ``is defined``/``is undefined``, and state keys tested with ``in``."""
    names = set()
    for test in tree.find_all(nodes.Test):
        if test.name in ("defined", "undefined") and isinstance(test.node, nodes.Name):
            names.add(test.node.name)
    for compare in tree.find_all(nodes.Compare):
        for op in compare.ops:
            if op.op in ("in", "notin") and isinstance(op.expr, nodes.Name) and (
                    op.expr.name == "state") and isinstance(compare.expr, nodes.Const):
                names.add(f"state.{compare.expr.value}")
    return names


def _state_reads(tree: nodes.Template, guarded: set[str]) -> Iterator[tuple[str, int]]:
    reads: list[tuple[int, str]] = []
    for attr in tree.find_all(nodes.Getattr):
        if _is_state_name(attr.node) and attr.attr not in _STATE_METHODS:
            reads.append((attr.lineno, attr.attr))
    for item in tree.find_all(nodes.Getitem):
        if _is_state_name(item.node) and isinstance(item.arg, nodes.Const) and isinstance(
                item.arg.value, str):
            reads.append((item.lineno, item.arg.value))
    seen = set()
    for line, key in sorted(reads):
        if key not in seen and f"state.{key}" not in guarded:
            seen.add(key)
            yield key, line


def _is_state_name(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "state"


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _shown(filename: str | None, folder: str, name: str) -> str:
    return relative(filename) if filename else f"{folder}/{name}"


def relative(path: str) -> str:
    """``path`` relative to the working directory when it is under it, as a user types it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path
