"""Opt-out and opt-in keywords: which message asks to stop, or to start again. Pure.

A message is compared as flow keywords are (``flows.normalize``: case and spacing do not
count), whatever the conversation's state: ``STOP`` in a survey's step, with a human, or
with no conversation at all. The defaults cover English, Ukrainian and Russian.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from botkit.config import OPT_IN_KEYWORDS, OPT_OUT_KEYWORDS
from botkit.core.flows import FlowSet, normalize
from botkit.errors import DefinitionError

__all__ = ["Consent", "OPTED_IN_TEMPLATE", "OPTED_OUT_TEMPLATE"]
OPTED_OUT_TEMPLATE = "botkit/opted_out.txt"  # the one confirmation an opt-out gets
OPTED_IN_TEMPLATE = "botkit/opted_in.txt"


@dataclass(frozen=True)
class Consent:
    """The opt-out and opt-in keywords; ``flow_keyword_opts_in``: a flow's keyword from a
    phone that opted out starts the flow and takes the phone off the list (off by default:
    only an opt-in keyword does)."""

    opt_out: tuple[str, ...] = OPT_OUT_KEYWORDS
    opt_in: tuple[str, ...] = OPT_IN_KEYWORDS
    flow_keyword_opts_in: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "opt_out", _normalized(self.opt_out))
        object.__setattr__(self, "opt_in", _normalized(self.opt_in))
        both = set(self.opt_out) & set(self.opt_in)
        if both:
            raise DefinitionError(f"{sorted(both)[0]!r} is both an opt-out and an opt-in"
                                  " keyword")

    def match(self, text: str) -> tuple[Literal["opt_out", "opt_in"], str] | None:
        """``("opt_out", word)`` or ``("opt_in", word)`` for a consent keyword, else None."""
        word = normalize(text)
        if word in self.opt_out:
            return "opt_out", word
        if word in self.opt_in:
            return "opt_in", word
        return None

    def check(self, flows: FlowSet) -> None:
        """Refuse a flow keyword that is also an opt-out keyword: it could never start its
        flow. (An opt-in keyword may be a flow's: it opts in only a phone on the list, and
        starts the flow for every other one.)"""
        for keyword in flows.keywords:
            if keyword in self.opt_out:
                raise DefinitionError(
                    f"keyword {keyword!r} of a flow is also an opt-out keyword"
                    " (BOTKIT_OPT_OUT_KEYWORDS): choose another, or leave it out of the"
                    " setting")


def _normalized(words: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(w for w in (normalize(w) for w in words) if w))
