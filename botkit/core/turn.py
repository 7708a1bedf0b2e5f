"""Turn: the single argument of a step handler, and the records its verbs leave.

Verbs only record what should happen (plain methods, no ``await``, so none can be
forgotten); the engine renders the replies and commits the state change and the
outgoing messages in one transaction afterwards.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from botkit.core.flows import Delivery, Flow, Step, variant, weighted
from botkit.errors import FlowError

if TYPE_CHECKING:
    from botkit.core.flows import FlowSet

__all__ = ["Message", "Reply", "Template", "Transition", "Turn"]

Ending = Literal["ask", "retry", "switch", "finish", "handoff"]
# What a verb sends: a template's name, or an A/B test of templates with their weights
# ({"a.txt": 50, "b.txt": 50}), of which the phone gets one (docs/routing.md).
Template = str | Mapping[str, int]


@dataclass(frozen=True, kw_only=True)
class Message:
    """The user's message being handled: text, phone, provider time and token."""

    text: str
    phone: str
    time: int
    token: str
    tracking_id: int | None = None


@dataclass(frozen=True, kw_only=True)
class Reply:
    """A message to send: a template and its variables, with optional delivery overrides.

    ``one_way`` makes it a notice (type 106 or 108, which no one can answer); ``sms`` names
    the template of its SMS fallback text.
    """

    template: str
    variables: dict[str, Any] = field(default_factory=dict)
    delivery: Delivery | None = None
    one_way: bool = False
    sms: str | None = None


@dataclass(frozen=True, kw_only=True)
class Transition:
    """How a turn ended: which verb, where it leads, and where in the handler it was called.

    ``remind_after`` and ``timeout`` override the asked step's timer delays (``ask`` only).
    """

    kind: Ending
    flow: str
    step: str | None
    call: str
    remind_after: timedelta | None = None
    timeout: timedelta | None = None


class Turn:
    """One user message being handled by one step.

    Read ``turn.text``, ``turn.phone`` and ``turn.state`` (the conversation's persistent
    JSON-serialisable dict); answer with ``say`` or ``notify`` (a one-way notice), any number
    of times, and end with at most one of ``ask``, ``retry``, ``switch``, ``finish`` or
    ``handoff``. A turn that ends with
    none of them stays on its step.

    A turn started by the conversation's life cycle rather than a user message has
    ``turn.event`` set ("remind", "timeout", "unanswered", "undelivered", "expire", or "stale"
    for an answer to an earlier question, whose step is ``turn.answered``) and, except for
    "stale", an empty ``turn.text``. Such a turn speaks first, so the per-phone limits apply
    to it: ``turn.refused`` then says why what it says will not be sent (None: it will).

    >>> async def name(turn: Turn) -> None:
    ...     turn.state["name"] = turn.text.strip()
    ...     turn.ask("rating", name=turn.state["name"])
    """

    def __init__(
        self,
        *,
        flows: FlowSet,
        step: Step,
        message: Message,
        state: dict[str, Any],
        conversation_id: int,
        retries: int = 0,
        late: bool = False,
        event: str | None = None,
        answered: str | None = None,
        refused: str | None = None,
        locale: str | None = None,
    ) -> None:
        self.flows = flows
        self.step = step
        self.message = message
        self.state = state
        self.conversation_id = conversation_id
        self.retries = retries
        self.late = late
        self.event = event
        self.answered = answered
        self.refused = refused
        # The language the conversation speaks: set it (turn.locale = "uk") to switch; the
        # turn's own replies and every later message use it (docs/languages.md).
        self.locale = locale
        self._locale_given = locale
        self.replies: list[Reply] = []
        self.transition: Transition | None = None

    @property
    def switched_locale(self) -> bool:
        """Whether the handler set ``locale`` to another language."""
        return self.locale != self._locale_given

    @property
    def flow(self) -> Flow:
        """The flow this turn runs in."""
        return self.flows[self.step.flow]

    @property
    def text(self) -> str:
        """The user's message text."""
        return self.message.text

    @property
    def phone(self) -> str:
        """The user's phone number."""
        return self.message.phone

    def say(self, template: Template, /, *, delivery: Delivery | None = None,
            **variables: Any) -> None:
        """Send a message rendered from ``template``; the turn goes on.

        >>> turn.say("support/hours.txt", today="Monday")
        """
        self.replies.append(Reply(template=self._variant("say", template), variables=variables,
                                  delivery=delivery))

    def notify(
        self,
        template: Template,
        /,
        *,
        sms: str | None = None,
        delivery: Delivery | None = None,
        **variables: Any,
    ) -> None:
        """Send a one-way notice rendered from ``template``; the turn goes on.

        A notice expects no answer: it goes as type 106 (or 108 when the template sets an
        image or a button), transactional (``source_type`` 2) unless ``delivery`` or the
        flow says otherwise, and the user's next message is routed as if it had not been
        sent (the provider tracks only 2Way messages). ``sms`` names the template of an SMS
        sent instead when Viber cannot deliver the notice (one SMS: at most 160 GSM-7
        characters, or 70 when the text needs UCS-2); it needs a transactional text notice.

        >>> turn.notify("support/order_shipped.txt", sms="support/order_shipped_sms.txt")
        """
        self.replies.append(Reply(template=self._variant("notify", template),
                                  variables=variables, delivery=delivery, one_way=True, sms=sms))

    def ask(
        self,
        step: str,
        /,
        *,
        template: Template | None = None,
        delivery: Delivery | None = None,
        remind_after: timedelta | None = None,
        timeout: timedelta | None = None,
        **variables: Any,
    ) -> None:
        """Move to ``step`` and send its prompt (or ``template``); its answer goes to ``step``.

        ``remind_after`` and ``timeout`` override the step's timer delays for this question.

        >>> turn.ask("rating", name="Ana")
        """
        target = self.flow.get(step)
        self._end("ask", self.flow.name, step, remind_after, timeout)
        self.replies.append(Reply(template=self._prompt("ask", target, template),
                                  variables=variables, delivery=delivery))

    def retry(
        self,
        template: Template | None = None,
        /,
        *,
        delivery: Delivery | None = None,
        **variables: Any,
    ) -> None:
        """Re-ask this step after an invalid answer, sending ``template`` (default: the prompt).

        After the step's ``retries`` are used up, its ``give_up`` template is sent instead
        and the conversation ends.

        >>> return turn.retry("survey/rating_invalid.txt")
        """
        self._end("retry", self.flow.name, self.step.name)
        if self.retries >= self.step.retries:
            give_up = self.step.give_up or self.flow.give_up
            if give_up:
                self.replies.append(Reply(template=give_up, variables=variables,
                                          delivery=delivery))
            return
        self.replies.append(Reply(template=self._prompt("retry", self.step, template),
                                  variables=variables, delivery=delivery))

    def switch(
        self,
        flow: str,
        /,
        *,
        step: str | None = None,
        delivery: Delivery | None = None,
        **variables: Any,
    ) -> None:
        """Hand the conversation (and its state) to another flow, asking its first step.

        >>> turn.switch("support")
        """
        target_flow = self.flows[flow]
        target = target_flow.get(step) if step else target_flow.first
        self._end("switch", flow, target.name)
        # The new flow's first message goes out with the new flow's sending defaults.
        chosen = (delivery or Delivery()).over(target_flow.delivery)
        self.replies.append(Reply(template=self._prompt("switch", target, None),
                                  variables=variables, delivery=chosen))

    def finish(
        self,
        template: Template | None = None,
        /,
        *,
        delivery: Delivery | None = None,
        **variables: Any,
    ) -> None:
        """End the conversation, optionally sending a last message.

        >>> turn.finish("survey/thanks.txt", name="Ana")
        """
        self._end("finish", self.flow.name, None)
        if template:
            self.replies.append(Reply(template=self._variant("finish", template),
                                      variables=variables, delivery=delivery))

    def handoff(
        self,
        template: Template | None = None,
        /,
        *,
        delivery: Delivery | None = None,
        **variables: Any,
    ) -> None:
        """Hand the conversation to a human: auto-replies stop until it is released.

        Release it with ``python run.py release PHONE``.

        >>> turn.handoff("support/agent.txt")
        """
        self._end("handoff", self.flow.name, self.step.name)
        if template:
            self.replies.append(Reply(template=self._variant("handoff", template),
                                      variables=variables, delivery=delivery))

    @property
    def gave_up(self) -> bool:
        """True when this turn's ``retry()`` ran out of retries."""
        return (
            self.transition is not None
            and self.transition.kind == "retry"
            and self.retries >= self.step.retries
        )

    def _variant(self, verb: str, template: Template, step: Step | None = None) -> str:
        """The template to send: ``template``, or the phone's variant of it when it is an
        A/B test. The test is the one of the step the message asks (``step``), else of the
        turn's step, as a prompt's: at one step a phone is at one point of the split."""
        if isinstance(template, str):
            return template
        at = step or self.step
        pairs = weighted(f"turn.{verb}() in flow {at.flow!r}, step {at.name!r}: an A/B test"
                         " of its template", template)
        return variant(f"{at.flow}.{at.name}", self.phone, pairs)

    def _prompt(self, verb: Ending, step: Step, template: Template | None) -> str:
        chosen = (self._variant(verb, template, step) if template
                  else step.prompt_for(self.phone))
        if chosen is None:
            raise FlowError(
                f"flow {step.flow!r}, step {step.name!r} has no prompt: declare"
                f" @{step.flow}.step({step.name!r}, prompt=...) or pass template="
            )
        return chosen

    def _end(
        self,
        kind: Ending,
        flow: str,
        step: str | None,
        remind_after: timedelta | None = None,
        timeout: timedelta | None = None,
    ) -> None:
        call = f"{kind}() at {_caller()}"
        if self.transition is not None:
            raise FlowError(
                f"this turn already ended with {self.transition.call}; cannot also {call}"
            )
        self.transition = Transition(kind=kind, flow=flow, step=step, call=call,
                                     remind_after=remind_after, timeout=timeout)


def _caller() -> str:
    frame = inspect.currentframe()
    # _caller <- _end <- verb <- handler
    for _ in range(3):
        frame = frame.f_back if frame else None
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}"
