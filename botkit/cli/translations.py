"""``run.py check``'s report of missing translations: per locale (each folder of the
templates folder named as a locale, ``templates/uk/``), the templates a flow can send that
have no version in it, with the file and line that names them (docs/languages.md).

A missing translation is not an error: the template of no locale is sent instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from babel import Locale, UnknownLocaleError

from botkit.cli.checks import TEMPLATE_VERBS
from botkit.cli.template_checks import relative
from botkit.core.flows import FlowSet
from botkit.core.graph import calls
from botkit.runtime.templates import Renderer

__all__ = ["locales_in", "missing_translations", "sendable"]


def locales_in(templates: str | Path | None) -> list[str]:
    """The locales the templates folder has a folder for (``uk``, ``pt_BR``)."""
    if templates is None or not Path(templates).is_dir():
        return []
    found = []
    for folder in sorted(p for p in Path(templates).iterdir() if p.is_dir()):
        try:
            Locale.parse(folder.name)
        except (UnknownLocaleError, ValueError):
            continue  # a bot's own folder (survey/)
        found.append(folder.name)
    return found


def sendable(flows: FlowSet) -> Iterator[tuple[str, str]]:
    """Each template a flow can send, with where it is named (each pair once)."""
    seen: set[tuple[str, str]] = set()

    def once(name: str, where: str) -> Iterator[tuple[str, str]]:
        if (name, where) not in seen:
            seen.add((name, where))
            yield name, where

    for flow in flows.values():
        for reaction in (flow.error, flow.give_up, flow.on_expire):
            if isinstance(reaction, str):
                yield from once(reaction, f"flow {flow.name!r}")
        for step in flow.steps.values():
            path, _, line = step.where.rpartition(":")
            declared = f"{relative(path)}:{line}" if path else step.where
            for name in step.templates:
                yield from once(name, declared)
            for call in calls(step):
                where = f"{relative(call.filename)}:{call.line}"
                named = [*(call.templates() if call.verb in TEMPLATE_VERBS else ()),
                         *call.templates("template"), *call.templates("sms")]
                for name in named:
                    yield from once(name, where)


def missing_translations(
    flows: FlowSet, renderer: Renderer, templates: str | Path | None
) -> dict[str, list[tuple[str, str]]]:
    """Per locale of the templates folder, the (template, where) a flow can send without a
    version in that locale."""
    named = list(sendable(flows))
    return {locale: [(name, where) for name, where in named
                     if renderer.localized(name, locale) == name]
            for locale in locales_in(templates)}
