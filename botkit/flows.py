"""Flows: named sets of steps, declared with a decorator. Pure declarations, no I/O.

``@flow.step`` only records a Step and returns the handler unchanged (like aiohttp's
RouteTableDef); the app receives flows explicitly through ``create_app(flows=[...])``.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from .errors import DefinitionError, UnknownStepError

if TYPE_CHECKING:
    from .turn import Turn

__all__ = ["Delivery", "Flow", "FlowSet", "Step", "normalize"]

Handler = Callable[["Turn"], Awaitable[Any]]
H = TypeVar("H", bound=Handler)

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def normalize(text: str) -> str:
    """Fold case and collapse whitespace, the way keywords are compared.

    >>> normalize("  Opening   HOURS ")
    'opening hours'
    """
    return " ".join(text.casefold().split())


@dataclass(frozen=True)
class Delivery:
    """How a message is sent: sender name, source type and time to live.

    A flow sets the defaults; a reply may override any of them:
    ``turn.say("promo.txt", delivery=Delivery(sender="Acme Sales"))``.
    """

    sender: str | None = None
    source_type: Literal[1, 2] | None = None
    validity: timedelta | None = None

    def over(self, base: Delivery) -> Delivery:
        """Return ``base`` with the fields set here taking precedence."""
        return Delivery(
            sender=self.sender or base.sender,
            source_type=self.source_type or base.source_type,
            validity=self.validity or base.validity,
        )


@dataclass(frozen=True)
class Step:
    """One step of a flow: the handler that receives the answer to the step's question."""

    flow: str
    name: str
    handler: Handler
    prompt: str | None = None
    retries: int = 3
    give_up: str | None = None
    keywords: tuple[str, ...] = ()
    accept_late: bool = False

    @property
    def where(self) -> str:
        """File and line of the handler, for error messages."""
        return _where(self.handler)


@dataclass
class Flow:
    """A conversation: steps, the keywords that start it, and its sending defaults.

    >>> survey = Flow("survey", start="name", keywords=["survey"], sender="Acme")
    >>> @survey.step("name", prompt="survey/ask_name.txt")
    ... async def name(turn): turn.finish("survey/thanks.txt")

    Args:
        start: the first step (asked when the flow starts); defaults to the first declared.
        keywords: messages (case- and space-insensitive) that start the flow at ``start``.
        timeout: inactivity after which the conversation expires.
        error: template sent when a handler fails (default: the global error reply).
        give_up: template sent when a step's retries run out and the step names none.
    """

    name: str
    start: str | None = None
    keywords: Iterable[str] = ()
    sender: str | None = None
    source_type: Literal[1, 2] = 1
    validity: timedelta | None = None
    timeout: timedelta = timedelta(hours=24)
    error: str | None = None
    give_up: str | None = None
    steps: dict[str, Step] = field(default_factory=dict, init=False, repr=False)
    _frozen: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise DefinitionError(
                f"flow name {self.name!r} must be lowercase letters, digits and _ (max 40)"
            )
        self.keywords = tuple(normalize(k) for k in self.keywords)
        if self.timeout <= timedelta(0):
            raise DefinitionError(f"flow {self.name!r}: timeout must be positive")

    @property
    def delivery(self) -> Delivery:
        """The flow's sending defaults."""
        return Delivery(self.sender, self.source_type, self.validity)

    @property
    def first(self) -> Step:
        """The step a new conversation begins at."""
        if not self.steps:
            raise DefinitionError(f"flow {self.name!r} has no steps")
        return self.get(self.start) if self.start else next(iter(self.steps.values()))

    def step(
        self,
        name: str,
        *,
        prompt: str | None = None,
        retries: int = 3,
        give_up: str | None = None,
        keywords: Iterable[str] = (),
        accept_late: bool = False,
    ) -> Callable[[H], H]:
        """Register an async handler for the answers to step ``name``.

        ``prompt`` is the template sent when the step is asked; ``retries`` is how many
        times ``turn.retry()`` may re-ask before ``give_up`` is sent and the conversation
        ends. ``keywords`` start a conversation right at this step, handing it the message.
        ``accept_late`` lets the step handle answers to it after the conversation moved on.

        >>> @survey.step("rating", prompt="survey/ask_rating.txt", retries=3)
        ... async def rating(turn): ...
        """
        if self._frozen:
            raise DefinitionError(
                f"flow {self.name!r} is already running; declare step {name!r} at import time"
            )
        if not _NAME.match(name):
            raise DefinitionError(
                f"flow {self.name!r}: step name {name!r} must be lowercase letters, digits and _"
            )
        if retries < 0:
            raise DefinitionError(f"flow {self.name!r}, step {name!r}: retries must be >= 0")

        def register(handler: H) -> H:
            if not inspect.iscoroutinefunction(cast(Any, handler)):
                raise DefinitionError(
                    f"flow {self.name!r}, step {name!r}: handler {handler.__qualname__} must be"
                    " 'async def'"
                )
            if name in self.steps:
                raise DefinitionError(
                    f"flow {self.name!r} declares step {name!r} twice"
                    f" ({self.steps[name].where} and {_where(handler)})"
                )
            self.steps[name] = Step(
                self.name, name, handler, prompt, retries, give_up,
                tuple(normalize(k) for k in keywords), accept_late,
            )
            return handler

        return register

    def get(self, name: str) -> Step:
        """Return step ``name``, or raise UnknownStepError suggesting the closest name."""
        try:
            return self.steps[name]
        except KeyError:
            hint = _suggest(name, self.steps)
            raise UnknownStepError(f"flow {self.name!r} has no step {name!r}{hint}") from None

    def freeze(self) -> None:
        """Refuse further steps; called when an app starts with this flow."""
        self.first  # noqa: B018 - validates that the start step exists
        self._frozen = True

    def __hash__(self) -> int:
        return hash(self.name)


class FlowSet(Mapping[str, Flow]):
    """The flows an app runs, by name, with the keyword index used for routing."""

    def __init__(self, flows: Iterable[Flow]) -> None:
        self._flows: dict[str, Flow] = {}
        self._keywords: dict[str, tuple[Step, bool]] = {}
        for flow in flows:
            if flow.name in self._flows:
                raise DefinitionError(f"two flows are named {flow.name!r}")
            flow.freeze()
            self._flows[flow.name] = flow
        for flow in self._flows.values():
            entries = [(k, flow.first, False) for k in flow.keywords]
            entries += [(k, s, True) for s in flow.steps.values() for k in s.keywords]
            for keyword, step, handles in entries:
                if keyword in self._keywords:
                    other = self._keywords[keyword][0]
                    raise DefinitionError(
                        f"keyword {keyword!r} starts both {other.flow}.{other.name}"
                        f" and {step.flow}.{step.name}"
                    )
                self._keywords[keyword] = (step, handles)

    def __getitem__(self, name: str) -> Flow:
        try:
            return self._flows[name]
        except KeyError:
            hint = _suggest(name, self._flows)
            raise UnknownStepError(f"no flow is named {name!r}{hint}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._flows)

    def __contains__(self, name: object) -> bool:
        return name in self._flows

    def get(self, name: str, default: Flow | None = None) -> Flow | None:  # type: ignore[override]
        """The flow named ``name``, or ``default``."""
        return self._flows.get(name, default)

    def __len__(self) -> int:
        return len(self._flows)

    def entry(self, text: str) -> tuple[Step, bool] | None:
        """The step a keyword message starts, and whether the step handles the message itself.

        A flow keyword asks the flow's first step (False); a step keyword hands the message
        to that step's handler (True).
        """
        return self._keywords.get(normalize(text))

    @property
    def keywords(self) -> list[str]:
        """Every entry keyword, in declaration order."""
        return list(self._keywords)


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _where(handler: Callable[..., Any]) -> str:
    code = getattr(handler, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else repr(handler)
