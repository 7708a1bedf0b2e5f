"""Flows: named sets of steps, declared with a decorator. Pure declarations, no I/O.

``@flow.step`` only records a Step and returns the handler unchanged (like aiohttp's
RouteTableDef); the app receives flows explicitly through ``create_app(flows=[...])``.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, TypeVar, cast

from botkit.errors import DefinitionError, UnknownStepError

__all__ = ["Delivery", "Flow", "FlowSet", "Step", "normalize", "variant", "weighted"]

# ``async def handler(turn: Turn) -> None``. Typed without naming Turn: a Turn is built from
# flows and steps (core.turn imports this module), so this module does not import it back.
Handler = Callable[[Any], Awaitable[Any]]
Reaction = str | Handler  # a template name, or a handler to run
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


@dataclass(frozen=True, kw_only=True)
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
    remind_after: timedelta | None = None
    remind: Reaction | None = None
    timeout: timedelta | None = None
    on_timeout: Reaction | None = None
    unanswered_after: timedelta | None = None
    on_unanswered: Reaction | None = None
    on_undelivered: Reaction | None = None
    # An A/B test of the prompt: each template and its weight (``prompt`` is the first).
    variants: tuple[tuple[str, int], ...] = ()

    @property
    def templates(self) -> list[str]:
        """Every template this step names (prompt and its variants, give-up and reaction
        templates)."""
        named = [self.prompt, *(name for name, _ in self.variants), self.give_up, self.remind,
                 self.on_timeout, self.on_unanswered, self.on_undelivered]
        return list(dict.fromkeys(t for t in named if isinstance(t, str)))

    def prompt_for(self, phone: str) -> str | None:
        """The prompt ``phone`` is sent: ``prompt``, or its variant of the A/B test, the same
        one for the phone at every turn, in every process (``variant``)."""
        if not self.variants:
            return self.prompt
        return variant(f"{self.flow}.{self.name}", phone, self.variants)

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
        default: makes this the **default flow**: a message from a phone with no open
            conversation that is no keyword starts it at ``start``. ``"ask"`` sends the
            step's prompt (as a flow keyword does); ``"handle"`` hands the message to the
            step's handler (as a step keyword does). At most one flow of an app is the
            default; without one, such a message gets the fallback reply.
        source_type: 1 promotional or 2 transactional; unset, 2Way messages go as 1 and
            text notices (``turn.notify``) as 2, the type that can carry an SMS fallback.
        timeout: inactivity after which the conversation expires (a durable timer).
        on_expire: template sent, or handler run, when it expires.
        error: template sent when a handler fails (default: the global error reply).
        give_up: template sent when a step's retries run out and the step names none.
        stale: handler for answers to a question the conversation has moved past
            (default: the current question is asked again).
        version: the flow's version (default: a hash of its steps and their templates).
        migrate: after a deploy, where a conversation at a removed step goes:
            ``{"old_step": "new_step"}``; unmapped ones are told and restarted.
    """

    name: str
    start: str | None = None
    keywords: Iterable[str] = ()
    default: Literal["ask", "handle"] | None = None
    sender: str | None = None
    source_type: Literal[1, 2] | None = None
    validity: timedelta | None = None
    timeout: timedelta = timedelta(hours=24)
    error: str | None = None
    give_up: str | None = None
    on_expire: Reaction | None = None
    stale: Handler | None = None
    version: str | None = None
    migrate: Mapping[str, str] = field(default_factory=dict)
    steps: dict[str, Step] = field(default_factory=dict, init=False, repr=False)
    _frozen: bool = field(default=False, init=False, repr=False)
    _version_id: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise DefinitionError(
                f"flow name {self.name!r} must be lowercase letters, digits and _ (max 40)"
            )
        self.keywords = tuple(normalize(k) for k in self.keywords)
        if self.default not in (None, "ask", "handle"):
            raise DefinitionError(f"flow {self.name!r}: default must be 'ask' or 'handle',"
                                  f" got {self.default!r}")
        if self.timeout <= timedelta(0):
            raise DefinitionError(f"flow {self.name!r}: timeout must be positive")
        _check_reaction(f"flow {self.name!r}", "on_expire", self.on_expire)
        _check_reaction(f"flow {self.name!r}", "stale", self.stale, template_ok=False)

    @property
    def delivery(self) -> Delivery:
        """The flow's sending defaults."""
        return Delivery(self.sender, self.source_type, self.validity)

    @property
    def variants(self) -> dict[str, tuple[str, ...]]:
        """The A/B-tested steps: each one's variant templates, the control first."""
        return {name: tuple(template for template, _ in step.variants)
                for name, step in self.steps.items() if step.variants}

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
        prompt: str | Mapping[str, int] | None = None,
        retries: int = 3,
        give_up: str | None = None,
        keywords: Iterable[str] = (),
        accept_late: bool = False,
        remind_after: timedelta | None = None,
        remind: Reaction | None = None,
        timeout: timedelta | None = None,
        on_timeout: Reaction | None = None,
        unanswered_after: timedelta | None = None,
        on_unanswered: Reaction | None = None,
        on_undelivered: Reaction | None = None,
    ) -> Callable[[H], H]:
        """Register an async handler for the answers to step ``name``.

        ``prompt`` is the template sent when the step is asked, or an A/B test of several
        with their weights (``{"survey/rate_a.txt": 50, "survey/rate_b.txt": 50}``: each
        phone always gets the same one, ``Step.prompt_for``); ``retries`` is how many
        times ``turn.retry()`` may re-ask before ``give_up`` is sent and the conversation
        ends. ``keywords`` start a conversation right at this step, handing it the message.
        ``accept_late`` lets the step handle answers to it after the conversation moved on.

        Timers (durable, counted from when the step is asked): ``remind`` (a template sent
        once, or a handler) after ``remind_after``; ``on_timeout`` after ``timeout`` (a
        template that closes the conversation as timed out, or a handler; without one the
        conversation just closes). ``on_unanswered`` runs ``unanswered_after`` the question
        was *delivered*. ``on_undelivered`` reacts when the question could not be delivered.

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
        where = f"flow {self.name!r}, step {name!r}"
        for option, reaction, after in (
            ("remind", remind, remind_after), ("on_timeout", on_timeout, timeout),
            ("on_unanswered", on_unanswered, unanswered_after),
        ):
            _check_reaction(where, option, reaction)
            if after is not None and after <= timedelta(0):
                raise DefinitionError(f"{where}: the delay of {option} must be positive")
        if remind is not None and remind_after is None:
            raise DefinitionError(f"{where}: remind needs remind_after")
        if on_unanswered is not None and unanswered_after is None:
            raise DefinitionError(f"{where}: on_unanswered needs unanswered_after")
        _check_reaction(where, "on_undelivered", on_undelivered)
        variants: tuple[tuple[str, int], ...] = ()
        if isinstance(prompt, Mapping):
            variants = weighted(f"{where}: an A/B test of the prompt", prompt)
            prompt = variants[0][0]

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
                flow=self.name, name=name, handler=handler, prompt=prompt, variants=variants,
                retries=retries,
                give_up=give_up, keywords=tuple(normalize(k) for k in keywords),
                accept_late=accept_late, remind_after=remind_after, remind=remind,
                timeout=timeout, on_timeout=on_timeout, unanswered_after=unanswered_after,
                on_unanswered=on_unanswered, on_undelivered=on_undelivered,
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
        for old, new in self.migrate.items():
            if old in self.steps or new not in self.steps:
                raise DefinitionError(
                    f"flow {self.name!r}: migrate {old!r} -> {new!r} must map a removed step"
                    f" to an existing one{_suggest(new, self.steps)}"
                )
        self._frozen = True

    @property
    def version_id(self) -> str:
        """``version``, or a hash of the step names and the templates they name.

        Conversations remember it, so ``run.py conversations --by-version`` shows who runs
        on what after a deploy.
        """
        if self.version:
            return self.version
        if self._frozen and self._version_id:
            return self._version_id  # steps can't change once frozen: hash once
        shape = sorted((s.name, s.templates) for s in self.steps.values())
        version = hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:12]
        if self._frozen:
            self._version_id = version
        return version

    def __hash__(self) -> int:
        return hash(self.name)


class FlowSet(Mapping[str, Flow]):
    """The flows an app runs, by name, with the keyword index used for routing."""

    def __init__(self, flows: Iterable[Flow]) -> None:
        self._flows: dict[str, Flow] = {}
        self._keywords: dict[str, tuple[Step, bool]] = {}
        self.default: Flow | None = None  # the flow a message that is no keyword starts
        for flow in flows:
            if flow.name in self._flows:
                raise DefinitionError(f"two flows are named {flow.name!r}")
            flow.freeze()
            self._flows[flow.name] = flow
            if flow.default is not None:
                if self.default is not None:
                    raise DefinitionError(
                        f"flows {self.default.name!r} and {flow.name!r} are both the default"
                        " flow (default=...): at most one may be")
                if flow.default == "ask" and flow.first.prompt is None:
                    raise DefinitionError(
                        f"flow {flow.name!r} is the default flow with default='ask', but its"
                        f" first step {flow.first.name!r} has no prompt to ask; give it one"
                        " or use default='handle'")
                self.default = flow
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

    def default_entry(self) -> tuple[Step, bool] | None:
        """Where a message that is no keyword starts, as ``entry`` says it: the default
        flow's first step, handed the message when the flow says ``default="handle"``."""
        if self.default is None:
            return None
        return self.default.first, self.default.default == "handle"

    @property
    def keywords(self) -> list[str]:
        """Every entry keyword, in declaration order."""
        return list(self._keywords)


def weighted(what: str, weights: Mapping[Any, Any]) -> tuple[tuple[str, int], ...]:
    """An A/B test's variants as (template, weight) pairs, in their order; a DefinitionError
    that starts with ``what`` unless there are two or more, each with a positive whole
    weight."""
    pairs = tuple((k, w) for k, w in weights.items())
    if len(pairs) < 2 or any(not isinstance(k, str) or not isinstance(w, int)
                             or isinstance(w, bool) or w <= 0 for k, w in pairs):
        raise DefinitionError(
            f"{what} names two templates or more, each with a positive whole weight, such as"
            f" {{'a.txt': 50, 'b.txt': 50}}; got {dict(weights)!r}")
    return pairs


def variant(test: str, phone: str, variants: Iterable[tuple[str, int]]) -> str:
    """The variant of A/B test ``test`` that ``phone`` gets: a SHA-256 of the two picks the
    phone's place in the weights, so a phone keeps its variant across turns, restarts and
    processes, and phones split by the weights (changing the weights moves some phones).

    >>> variant("survey.rating", "380501112233", [("a.txt", 50), ("b.txt", 50)])
    'b.txt'
    """
    pairs = list(variants)
    total = sum(weight for _, weight in pairs)
    digest = hashlib.sha256(f"{test}:{phone}".encode()).digest()
    # The phone's place in [0, 1) scaled to the total, exactly: the same place whatever the
    # weights, so 1:1 and 50:50 split alike, and a phone in the first 50% of one split is in
    # the first 80% of another.
    point = int.from_bytes(digest[:8], "big") * total >> 64
    for name, weight in pairs:
        if point < weight:
            return name
        point -= weight
    raise AssertionError("unreachable: the point is below the total")


def _check_reaction(where: str, option: str, value: object, template_ok: bool = True) -> None:
    if value is None or (template_ok and isinstance(value, str)):
        return
    if not inspect.iscoroutinefunction(value):
        form = "a template name or an 'async def' handler" if template_ok else "an 'async def'"
        raise DefinitionError(f"{where}: {option} must be {form}, got {value!r}")


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _where(handler: Callable[..., Any]) -> str:
    code = getattr(handler, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else repr(handler)
