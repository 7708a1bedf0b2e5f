"""Engine: one turn, from a stored user message to a committed state change and outbox.

Route the message (``routing``), run the step's handler with a ``Turn``, render its replies,
validate them against the provider's limits, and commit the conversation change, the closed
conversations, the outbox rows and the inbound row's outcome in one transaction. A handler
or template that fails rolls all of that back and commits only the error reply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from .conversation import Conversation, Status
from .errors import ConcurrentUpdateError, DefinitionError
from .flows import Delivery, Flow, FlowSet, Step
from .models import MessageType, SendRequest, normalize_phone, parse_tracking_id
from .routing import Route, RouteKind, route
from .store import Commit, ConversationChange, Inbound, OutboxItem, Store
from .templates import Renderer
from .turn import Message, Reply, Turn

__all__ = ["Engine", "StartResult"]

log = logging.getLogger("botkit.engine")

FALLBACK_TEMPLATE = "botkit/fallback.txt"
ERROR_TEMPLATE = "botkit/error.txt"


@dataclass(frozen=True)
class StartResult:
    """What ``Engine.start`` did for one phone."""

    phone: str
    outcome: Literal["started", "skipped", "replaced"]
    conversation_id: int | None = None
    detail: str = ""


@dataclass
class _Outcome:
    """A turn's result before it becomes a Commit."""

    change: ConversationChange | None
    replies: list[tuple[Reply, Flow | None]]
    step: str | None


class Engine:
    """Handles stored messages turn by turn.

    Args:
        sender: the default ``source_addr`` when a flow sets none.
        callback_url: set on every message, so replies and statuses come back here.
        on_outbox: called after a commit that queued messages (wakes the sender).
        raise_errors: keep handler errors in ``failures`` after committing the error reply,
            for the testing kit to re-raise in the test.
    """

    def __init__(
        self,
        store: Store,
        flows: FlowSet,
        renderer: Renderer,
        *,
        sender: str,
        callback_url: str,
        clock: Callable[[], float] = time.time,
        on_outbox: Callable[[], None] = lambda: None,
        max_attempts: int = 3,
        raise_errors: bool = False,
    ) -> None:
        self.store = store
        self.flows = flows
        self.renderer = renderer
        self.sender = sender
        self.callback_url = callback_url
        self.clock = clock
        self.on_outbox = on_outbox
        self.max_attempts = max_attempts
        self.raise_errors = raise_errors
        self.failures: list[Exception] = []

    async def handle(self, inbound: Inbound) -> None:
        """Handle one stored message; never raises for a handler's or template's fault."""
        message = Message(
            inbound.text, inbound.phone, inbound.time, inbound.token,
            parse_tracking_id(inbound.tracking_data),
        )
        if inbound.attempts > self.max_attempts:
            # ``attempts`` counts restarts that found the message unhandled: a message that
            # keeps killing the process must not keep doing so.
            reason = f"abandoned after {inbound.attempts} restarts left it unhandled"
            log.error("message %s from %s: %s", inbound.id, inbound.phone, reason)
            await self._commit(self._failure(inbound, message, None, reason, None))
            return
        for _ in range(3):
            sent, tracked, active = await self.store.routing_context(
                message.phone, message.tracking_id
            )
            decided = route(message, sent=sent, tracked=tracked, active=active,
                            flows=self.flows, now=self.clock())
            failure: Exception | None = None
            try:
                commit = await self._turn(inbound, message, decided)
            except Exception as exc:  # a bot's fault: logged, rolled back, answered
                failure = exc
                conv = decided.conversation
                log.exception("handler failed: conversation %s (%s), message %s from %s",
                              conv.id if conv else None, _where(decided), inbound.id,
                              inbound.phone)
                commit = self._failure(inbound, message, decided, repr(exc), decided.step)
            try:
                await self._commit(commit)
            except ConcurrentUpdateError as exc:
                log.info("message %s: %s; routing it again", inbound.id, exc)
                continue
            if failure is not None and self.raise_errors:
                self.failures.append(failure)
            return
        log.error("message %s from %s: conversation kept changing; recorded as failed",
                  inbound.id, inbound.phone)
        await self._commit(self._failure(inbound, message, None, "concurrent updates", None))

    async def start(
        self, flow_name: str, phone: str, state: dict[str, Any] | None = None
    ) -> StartResult:
        """Begin a conversation proactively by asking the flow's first step.

        Skipped for a phone already in an open conversation of this flow, or with a human
        agent; an expired conversation is closed as expired, one in another flow as replaced.
        """
        flow = self.flows[flow_name]
        phone = normalize_phone(phone)
        now = self.clock()
        active = await self.store.open_conversation(phone)
        closes: tuple[tuple[Conversation, Status], ...] = ()
        outcome: Literal["started", "replaced"] = "started"
        detail = ""
        if active is not None:
            if active.status is Status.HUMAN:
                return StartResult(phone, "skipped", active.id, "waiting for a human agent")
            if active.flow == flow.name and not active.expired(now):
                return StartResult(phone, "skipped", active.id, f"already at {active.step!r}")
            if active.expired(now):
                closes, detail = ((active, Status.EXPIRED),), "the previous one had expired"
            else:
                closes, outcome = ((active, Status.REPLACED),), "replaced"
                detail = f"closed an open {active.flow!r} conversation"
        first = flow.first
        change = self._new(phone, flow, first.name, dict(state or {}), now)
        reply = Reply(self._prompt_of(first), {})
        commit = Commit(None, route="start", conversation=change, closes=closes,
                        outbox=self._render([(reply, flow)], phone, (flow.name, first.name),
                                            change.state))
        try:
            conv_id, _ = await self._commit(commit)
        except ConcurrentUpdateError as exc:
            return StartResult(phone, "skipped", None, str(exc))
        return StartResult(phone, outcome, conv_id, detail)

    # -- one turn ---------------------------------------------------------------------------

    async def _turn(self, inbound: Inbound, message: Message, decided: Route) -> Commit:
        now = self.clock()
        conv, step = decided.conversation, decided.step
        kind = decided.kind
        if kind is RouteKind.FALLBACK:
            log.info("message %s from %s: no conversation, no keyword; fallback reply. To start"
                     " a flow with it, declare Flow(..., keywords=[%r])", inbound.id,
                     message.phone, " ".join(message.text.split())[:40])
            reply = Reply(FALLBACK_TEMPLATE, {"keywords": self.flows.keywords, "text": message.text})
            out = _Outcome(None, [(reply, None)], None)
        elif kind is RouteKind.HUMAN:
            assert conv is not None
            log.info("message %s from %s: conversation %s is with a human; no auto-reply",
                     inbound.id, message.phone, conv.id)
            out = _Outcome(self._touch(conv, now), [], conv.step)
        elif kind is RouteKind.STALE:
            assert conv is not None and step is not None
            reply = Reply(self._prompt_of(step), {})
            out = _Outcome(self._touch(conv, now), [(reply, self.flows[conv.flow])], conv.step)
        elif kind in (RouteKind.START, RouteKind.RESTART):
            assert step is not None
            flow = self.flows[step.flow]
            change = self._new(message.phone, flow, step.name, {}, now)
            out = _Outcome(change, [(Reply(self._prompt_of(step), {}), flow)], step.name)
        else:  # STEP, ENTRY: the handler runs
            assert step is not None
            out = await self._run_handler(message, decided, step, now)
        log.info("message %s from %s -> %s (%s): %d replies", inbound.id, message.phone,
                 _where(decided), decided.reason, len(out.replies))
        state = out.change.state if out.change else None
        asked = (out.change.flow, out.step) if out.change and out.step else None
        outbox = self._render(out.replies, message.phone, asked, state)
        return Commit(inbound.id, "handled", kind.value, None, out.change, decided.close, outbox)

    async def _run_handler(
        self, message: Message, decided: Route, step: Step, now: float
    ) -> _Outcome:
        conv = decided.conversation
        state = dict(conv.state) if conv else {}
        # A late answer's step is not the current one: its retry count starts afresh.
        retries = conv.retries if conv and not decided.late else 0
        turn = Turn(flows=self.flows, step=step, message=message, state=state,
                    conversation_id=conv.id if conv else 0, retries=retries,
                    late=decided.late)
        await step.handler(turn)
        flow = self.flows[step.flow]
        current = conv.step if conv else step.name  # a late answer leaves the current step
        t = turn.transition
        # A late turn that does not end leaves the current step's retry count as it was.
        retries = conv.retries if conv and decided.late else turn.retries
        status, target_flow, target_step = Status.ACTIVE, flow, current
        if t is not None:
            if t.kind in ("ask", "switch"):
                target_flow, target_step, retries = self.flows[t.flow], t.step or current, 0
            elif t.kind == "retry":  # re-asks the handler's step (the late one, if late)
                status = Status.GAVE_UP if turn.gave_up else Status.ACTIVE
                target_step, retries = step.name, turn.retries + 1
            elif t.kind == "finish":
                status = Status.DONE
            elif t.kind == "handoff":
                status = Status.HUMAN
        change = ConversationChange(
            phone=message.phone, flow=target_flow.name, step=target_step, status=status,
            state=state, retries=retries,
            expires_at=now + target_flow.timeout.total_seconds(),
            id=conv.id if conv else None, expected_version=conv.version if conv else 0,
        )
        asked = target_step if status.is_open else None
        return _Outcome(change, [(r, flow) for r in turn.replies], asked)

    def _failure(
        self, inbound: Inbound, message: Message, decided: Route | None, error: str,
        step: Step | None,
    ) -> Commit:
        flow = self.flows.get(step.flow) if step else None
        template = (flow.error if flow else None) or ERROR_TEMPLATE
        outbox: tuple[OutboxItem, ...] = ()
        for candidate in dict.fromkeys((template, ERROR_TEMPLATE)):
            try:
                outbox = self._render([(Reply(candidate, {}), flow)], message.phone, None)
                break
            except Exception:
                log.exception("error reply %s could not be rendered", candidate)
        outbox = tuple(replace(item, in_conversation=False) for item in outbox)
        kind = decided.kind.value if decided else "abandoned"
        return Commit(inbound.id, "failed", kind, error[:500], None, (), outbox)

    # -- helpers ----------------------------------------------------------------------------

    async def _commit(self, commit: Commit) -> tuple[int | None, list[int]]:
        result = await self.store.commit(commit, self.clock())
        if commit.outbox:
            self.on_outbox()
        return result

    def _render(
        self,
        replies: list[tuple[Reply, Flow | None]],
        phone: str,
        asked: tuple[str, str] | None,
        state: dict[str, Any] | None = None,
    ) -> tuple[OutboxItem, ...]:
        """Render and validate replies; each records the (flow, step) its answer goes to."""
        items = []
        for reply, flow in replies:
            # Every template sees the conversation's state and the phone; reply variables win.
            context = {"state": state or {}, "phone": phone, **reply.variables}
            rendered = self.renderer.render(reply.template, context)
            base = flow.delivery if flow else Delivery()
            delivery = (reply.delivery or Delivery()).over(base)
            validity = delivery.validity.total_seconds() if delivery.validity else None
            request = SendRequest.checked(
                source_addr=delivery.sender or self.sender,
                destination_addr=phone,
                message_type=MessageType.TWO_WAY_RICH if rendered.rich else MessageType.TWO_WAY_TEXT,
                text=rendered.text,
                image=rendered.image,
                button_caption=rendered.button_caption,
                button_action=rendered.button_action,
                source_type=delivery.source_type or 1,
                callback_url=self.callback_url,
                validity_period=int(validity) if validity is not None else None,
            )
            items.append(OutboxItem(
                phone, asked[0] if asked else None, asked[1] if asked else None,
                reply.template, rendered.text, int(request.message_type),
                request.model_dump(mode="json", exclude_none=True),
            ))
        return tuple(items)

    def _new(
        self, phone: str, flow: Flow, step: str, state: dict[str, Any], now: float
    ) -> ConversationChange:
        return ConversationChange(phone, flow.name, step, Status.ACTIVE, state, 0,
                                  now + flow.timeout.total_seconds())

    def _touch(self, conv: Conversation, now: float) -> ConversationChange:
        flow = self.flows[conv.flow]
        return ConversationChange(conv.phone, conv.flow, conv.step, conv.status, conv.state,
                                  conv.retries, now + flow.timeout.total_seconds(), conv.id,
                                  conv.version)

    @staticmethod
    def _prompt_of(step: Step) -> str:
        if step.prompt is None:
            raise DefinitionError(
                f"flow {step.flow!r}, step {step.name!r} is asked but has no prompt template;"
                f" declare @{step.flow}.step({step.name!r}, prompt=...)"
            )
        return step.prompt


def _where(decided: Route) -> str:
    if decided.step is not None:
        return f"{decided.step.flow}.{decided.step.name}"
    return decided.kind.value
