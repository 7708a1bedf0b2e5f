"""Engine: one turn, from a stored user message (or a due timer) to a committed change.

Route the message (``routing``), run the step's handler with a ``Turn``, render its replies
(``outbox.Composer``), and commit the conversation change, the closed conversations, the
outbox rows, the timers the new step starts and the inbound row's outcome in one
transaction. A handler or template that fails rolls all of that back and commits only the
error reply. Timers and delivery statuses become turns too (``fire``, ``on_status``), by the
rules of ``lifecycle``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from botkit.core.conversation import Conversation, Status
from botkit.core.flows import Delivery, Flow, FlowSet, Step
from botkit.core.lifecycle import DeliveryRules, closing_status, inapplicable, plan_timers
from botkit.core.records import (
    Commit,
    Committed,
    ConversationChange,
    Inbound,
    OutboxItem,
    Outgoing,
    StatusChange,
    Timer,
    TimerSpec,
)
from botkit.core.routing import Route, RouteKind, route
from botkit.core.turn import Message, Reply, Turn
from botkit.errors import (
    ConcurrentUpdateError,
    DefinitionError,
    DuplicateMessageError,
    TimerTakenError,
)
from botkit.models import StatusUpdate, normalize_phone, parse_tracking_id
from botkit.runtime import crashpoints
from botkit.runtime.composer import Composer
from botkit.runtime.templates import Renderer
from botkit.storage.base import Store

__all__ = ["Engine", "Outlet", "StartResult"]

log = logging.getLogger("botkit.engine")

FALLBACK_TEMPLATE = "botkit/fallback.txt"
ERROR_TEMPLATE = "botkit/error.txt"
AGENT_TEMPLATE = "botkit/agent.txt"  # a human agent's own words


@dataclass(frozen=True)
class StartResult:
    """What ``Engine.start`` (or ``notify_many``: "queued") did for one phone."""

    phone: str
    outcome: Literal["started", "skipped", "replaced", "queued"]
    conversation_id: int | None = None
    detail: str = ""


@dataclass(kw_only=True)
class _Outcome:
    """A turn's result before it becomes a Commit."""

    change: ConversationChange | None
    replies: list[tuple[Reply, Flow | None]]
    step: str | None
    timers: tuple[TimerSpec, ...] = ()
    reset_timers: bool = True
    did: str | None = None
    question: bool = False  # the last reply asks ``step`` (its statuses can start timers)


class Outlet(Protocol):
    """Where committed messages go: the Sender in a server."""

    def reserve(self) -> str | None:
        """A claim name if a send slot is free (the commit then claims a message for it)."""

    def deliver(
        self, claimed: list[Outgoing], *, reserved: bool, phone: str = "", queued: int = 0
    ) -> None:
        """After a commit that queued messages: send ``claimed`` (releasing the reserved
        slot); ``queued`` more messages of ``phone`` wait in the queue."""


class _NoOutlet:
    def reserve(self) -> str | None:
        return None

    def deliver(
        self, claimed: list[Outgoing], *, reserved: bool, phone: str = "", queued: int = 0
    ) -> None:
        pass


class Engine:
    """Handles stored messages turn by turn.

    Args:
        sender: the default ``source_addr`` when a flow sets none.
        callback_url: set on every message, so replies and statuses come back here.
        outlet: the sender the turns' messages go to (``Outlet``); without one they stay
            queued for whichever sender polls the store (``run.py start``).
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
        outlet: Outlet | None = None,
        max_attempts: int = 3,
        raise_errors: bool = False,
        rules: DeliveryRules | None = None,
    ) -> None:
        self.store = store
        self.flows = flows
        self.composer = Composer(renderer, flows, sender=sender, callback_url=callback_url)
        self.clock = clock
        self.outlet = outlet or _NoOutlet()
        self.max_attempts = max_attempts
        self.raise_errors = raise_errors
        self.failures: list[Exception] = []
        self.counts: Counter[str] = Counter()  # messages by route, for the activity log
        self.rules = rules or DeliveryRules(flows, clock)  # what a status does to its message

    async def handle(self, item: Inbound | Timer) -> None:
        """Handle one stored message or due timer; never raises for a bot's fault."""
        if isinstance(item, Timer):
            return await self.fire(item)
        try:
            await self._handle(item)
        except DuplicateMessageError as exc:  # another process handled it first
            log.info("message %s from %s: %s; its turn is dropped", item.id, item.phone, exc)

    async def _handle(self, inbound: Inbound) -> None:
        message = Message(
            text=inbound.text, phone=inbound.phone, time=inbound.time, token=inbound.token,
            tracking_id=parse_tracking_id(inbound.tracking_data),
        )
        if inbound.attempts > self.max_attempts:
            # ``attempts`` counts restarts that found the message unhandled: a message that
            # keeps killing the process must not keep doing so.
            reason = f"abandoned after {inbound.attempts} restarts left it unhandled"
            log.error("message %s from %s: %s", inbound.id, inbound.phone, reason)
            await self._commit(self._failure(inbound, message, None, reason, None))
            return
        context = inbound.context  # read with the insert, when the phone was idle
        for _ in range(3):
            if context is None:
                context = await self.store.routing_context(message.phone, message.tracking_id)
            (sent, tracked, active), context = context, None
            if message.tracking_id is not None and sent is None:
                log.info("message %s from %s answers message %s, which this bot never sent;"
                         " treated as having no tracking data", inbound.id, inbound.phone,
                         message.tracking_id)
            decided = route(message, sent=sent, tracked=tracked, active=active,
                            flows=self.flows, now=self.clock())
            failure: Exception | None = None
            try:
                commit = await self._turn(inbound, message, decided)
            except Exception as exc:  # a bot's fault: logged, rolled back, answered
                failure = exc
                self.counts["handler errors"] += 1
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
        [result] = await self.start_many(flow_name, [phone], state)
        return result

    async def start_many(
        self, flow_name: str, phones: list[str], state: dict[str, Any] | None = None
    ) -> list[StartResult]:
        """``start`` for many phones at once: one read and one commit for all of them.

        Each phone's conversation still commits atomically on its own (a phone that got a
        conversation meanwhile is skipped, the others start). Returns one result per
        distinct phone, in the order given.
        """
        flow = self.flows[flow_name]
        now = self.clock()
        phones = list(dict.fromkeys(normalize_phone(p) for p in phones))
        active = await self.store.open_conversations(phones)
        results: dict[str, StartResult] = {}
        planned: list[tuple[str, Commit, Literal["started", "replaced"], str]] = []
        for phone in phones:
            plan = self._plan_start(flow, phone, active.get(phone), state, now)
            if isinstance(plan, StartResult):
                results[phone] = plan
            else:
                planned.append((phone, *plan))
        outcomes = await self.store.commit_many([commit for _, commit, _, _ in planned], now)
        crashpoints.hit("after_turn_commit")
        for (phone, commit, outcome, detail), done in zip(planned, outcomes, strict=True):
            if isinstance(done, ConcurrentUpdateError):
                results[phone] = StartResult(phone, "skipped", None, str(done))
            else:
                results[phone] = StartResult(phone, outcome, done.conversation_id, detail)
                self.outlet.deliver(done.claimed, reserved=False, phone=phone,
                                    queued=len(commit.outbox) - len(done.claimed))
        return [results[phone] for phone in phones]

    async def notify_many(
        self,
        phones: list[str],
        template: str,
        *,
        sms: str | None = None,
        variables: dict[str, Any] | None = None,
        delivery: Delivery | None = None,
        key: str | None = None,
    ) -> list[StartResult]:
        """Queue a one-way notice (``Turn.notify``) to each phone, outside any conversation.

        No conversation starts or changes, and the user's next message is routed as before.
        A phone's notice is committed atomically on its own; a template that breaks a
        provider limit (an SMS fallback too long) raises before anything is committed. With
        ``key``, a phone that already has a notice under that key is skipped, so a re-run
        sends nothing twice.

        >>> await engine.notify_many(["380501112233"], "support/order_shipped.txt",
        ...                          variables={"order": 42})
        """
        phones = list(dict.fromkeys(normalize_phone(p) for p in phones))
        reply = Reply(template=template, variables=dict(variables or {}), delivery=delivery,
                      one_way=True, sms=sms)
        commits = [Commit(inbound_id=None, route="notice", outbox=tuple(
            replace(item, notice_key=key)
            for item in self.composer.compose([(reply, None)], phone, None)))
            for phone in phones]
        outcomes = await self.store.commit_many(commits, self.clock())
        crashpoints.hit("after_turn_commit")
        results = []
        for phone, commit, done in zip(phones, commits, outcomes, strict=True):
            if isinstance(done, ConcurrentUpdateError):  # the phone has this key's notice
                results.append(StartResult(phone, "skipped", None, f"already has notice {key!r}"))
                continue
            results.append(StartResult(phone, "queued"))
            self.outlet.deliver(done.claimed, reserved=False, phone=phone,
                                queued=len(commit.outbox) - len(done.claimed))
        return results

    async def say_as_agent(self, phone: str, text: str) -> Conversation | None:
        """Send ``text`` from a human agent in the phone's conversation with a human.

        It goes like any bot message: a 206 through the outbox, and the user's answer comes
        back to the same conversation (still with the human). Returns the conversation, or
        None when the phone has none with a human. The sandbox chat's agent box uses it.

        >>> await engine.say_as_agent("380501112233", "Hi, this is Olga from Acme.")
        """
        phone = normalize_phone(phone)
        conv = (await self.store.open_conversations([phone])).get(phone)
        if conv is None or conv.status is not Status.HUMAN:
            return None
        reply = Reply(template=AGENT_TEMPLATE, variables={"text": text})
        outbox = self.composer.compose([(reply, self.flows.get(conv.flow))], phone,
                                       (conv.flow, conv.step), conv.state)
        await self._commit(Commit(inbound_id=None, route="agent", outbox=outbox, link=conv.id))
        return conv

    def _plan_start(
        self, flow: Flow, phone: str, active: Conversation | None,
        state: dict[str, Any] | None, now: float,
    ) -> StartResult | tuple[Commit, Literal["started", "replaced"], str]:
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
        reply = Reply(template=self._prompt_of(first))
        commit = Commit(inbound_id=None, route="start", conversation=change, closes=closes,
                        outbox=self.composer.compose([(reply, flow)], phone,
                                                     (flow.name, first.name), change.state,
                                                     question=True),
                        timers=plan_timers(flow, first, now))
        return commit, outcome, detail

    # -- life-cycle events ------------------------------------------------------------------

    async def fire(self, timer: Timer) -> None:
        """Fire a due timer as a turn of its conversation, or skip it if it no longer applies.

        The commit marks the timer fired only if it is still pending, so a timer fires once
        even when two processes sweep the same database.
        """
        for _ in range(3):
            now = self.clock()
            conv = await self.store.conversation(timer.conversation_id)
            reason = inapplicable(timer, conv, self.flows)
            if reason is not None or conv is None:
                if await self.store.skip_timer(timer.id, reason or "no conversation", now):
                    log.info("timer %s (%s of %s.%s) skipped: %s", timer.id, timer.kind,
                             timer.flow, timer.step, reason)
                return
            flow = self.flows.get(conv.flow)
            step = flow.steps.get(conv.step) if flow else None
            try:
                if flow is None or step is None:  # an expiry at a step a deploy removed
                    commit = Commit(inbound_id=None, route="expire", fire=timer,
                                    closes=((conv, Status.EXPIRED),))
                else:
                    commit = await self._event_turn(timer, conv, flow, step, now)
            except Exception as exc:  # a bot's fault: logged, kept on the timer, no reply
                log.exception("%s handler failed: conversation %s (%s.%s)", timer.kind,
                              conv.id, conv.flow, conv.step)
                if self.raise_errors:
                    self.failures.append(exc)
                commit = Commit(inbound_id=None, route=timer.kind, error=repr(exc)[:500], fire=timer)
            try:
                await self._commit(commit)
            except TimerTakenError:
                return  # another process fired it, or the user answered meanwhile
            except ConcurrentUpdateError:
                continue
            log.info("timer %s fired: %s of conversation %s (%s.%s), %d messages", timer.id,
                     timer.kind, conv.id, conv.flow, conv.step, len(commit.outbox))
            return

    async def on_status(self, update: StatusUpdate) -> StatusChange | None:
        """Record a delivery status; an undelivered or delivered question may start a timer."""
        return await self.store.record_status(update, self.clock(), self.rules)

    async def _event_turn(
        self, timer: Timer, conv: Conversation, flow: Flow, step: Step, now: float
    ) -> Commit:
        reaction = {
            "remind": step.remind, "timeout": step.on_timeout, "expire": flow.on_expire,
            "unanswered": step.on_unanswered, "undelivered": step.on_undelivered,
        }.get(timer.kind)
        message = Message(text="", phone=conv.phone, time=int(now), token=f"timer:{timer.id}",
                          tracking_id=timer.message_id)
        turn = Turn(flows=self.flows, step=step, message=message, state=dict(conv.state),
                    conversation_id=conv.id, retries=conv.retries, event=timer.kind)
        if isinstance(reaction, str):
            if timer.kind in ("timeout", "expire"):
                turn.finish(reaction)
            else:
                turn.say(reaction)
        elif reaction is not None:
            await reaction(turn)
        out = self._outcome(turn, conv, step, now)
        if out.change is None:  # a nudge: answers to it still go to the waiting step
            asked: tuple[str, str] | None = (conv.flow, conv.step)
        else:  # a goodbye asks nothing
            asked = (out.change.flow, out.step) if out.step else None
        outbox = self.composer.compose(out.replies, conv.phone, asked,
                                       out.change.state if out.change else conv.state,
                                       question=out.question)
        return Commit(inbound_id=None, route=timer.kind, conversation=out.change, outbox=outbox,
                      handled_by=(flow.name, step.name), did=out.did,
                      reset_timers=out.reset_timers, timers=out.timers, fire=timer,
                      link=conv.id)

    # -- one turn ---------------------------------------------------------------------------

    async def _turn(self, inbound: Inbound, message: Message, decided: Route) -> Commit:
        now = self.clock()
        conv, step = decided.conversation, decided.step
        kind = decided.kind
        if kind is RouteKind.FALLBACK:
            log.info("message %s from %s: no conversation, no keyword; fallback reply. To start"
                     " a flow with it, declare Flow(..., keywords=[%r])", inbound.id,
                     message.phone, " ".join(message.text.split())[:40])
            variables = {"keywords": self.flows.keywords, "text": message.text}
            reply = Reply(template=FALLBACK_TEMPLATE, variables=variables)
            out = _Outcome(change=None, replies=[(reply, None)], step=None)
        elif kind is RouteKind.HUMAN:
            assert conv is not None
            log.info("message %s from %s: conversation %s is with a human; no auto-reply",
                     inbound.id, message.phone, conv.id)
            out = _Outcome(change=self._touch(conv, now), replies=[], step=conv.step)
        elif kind is RouteKind.STALE:
            assert conv is not None and step is not None
            out = await self._stale(message, decided, conv, step, now)
        elif kind in (RouteKind.START, RouteKind.RESTART):
            assert step is not None
            flow = self.flows[step.flow]
            change = self._new(message.phone, flow, step.name, {}, now)
            replies: list[tuple[Reply, Flow | None]] = []
            if decided.notice:
                replies.append((Reply(template=decided.notice), flow))
            replies.append((Reply(template=self._prompt_of(step)), flow))
            out = _Outcome(change=change, replies=replies, step=step.name,
                           timers=plan_timers(flow, step, now), question=True)
        else:  # STEP, ENTRY: the handler runs
            assert step is not None
            state = dict(conv.state) if conv else {}
            # A late answer's step is not the current one: its retry count starts afresh.
            turn = Turn(flows=self.flows, step=step, message=message, state=state,
                        conversation_id=conv.id if conv else 0,
                        retries=conv.retries if conv and not decided.late else 0,
                        late=decided.late)
            await step.handler(turn)
            out = self._outcome(turn, conv, step, now)
        self.counts[f"route:{kind.value}"] += 1
        log.debug("message %s from %s -> %s (%s): %d replies", inbound.id, message.phone,
                 _where(decided), decided.reason, len(out.replies))
        asked = (out.change.flow, out.step) if out.change and out.step else None
        outbox = self.composer.compose(out.replies, message.phone, asked,
                                       out.change.state if out.change else None,
                                       question=out.question)
        handled_by = (step.flow, step.name) if step else None
        return Commit(inbound_id=inbound.id, route=kind.value, conversation=out.change,
                      closes=decided.close, outbox=outbox, handled_by=handled_by, did=out.did,
                      reset_timers=out.reset_timers, timers=out.timers)

    async def _stale(
        self, message: Message, decided: Route, conv: Conversation, step: Step, now: float
    ) -> _Outcome:
        flow = self.flows[conv.flow]
        if flow.stale is None:  # the core policy: ask the current question again
            reply = Reply(template=self._prompt_of(step))
            return _Outcome(change=self._touch(conv, now), replies=[(reply, flow)],
                            step=conv.step, timers=plan_timers(flow, step, now), did="stale",
                            question=True)
        turn = Turn(flows=self.flows, step=step, message=message, state=dict(conv.state),
                    conversation_id=conv.id, retries=conv.retries, event="stale",
                    answered=decided.answered)
        await flow.stale(turn)
        return self._outcome(turn, conv, step, now)

    def _outcome(
        self, turn: Turn, conv: Conversation | None, step: Step, now: float
    ) -> _Outcome:
        """What a handler's Turn does to its conversation, and the timers that follow."""
        flow = self.flows[step.flow]
        current = conv.step if conv else step.name  # a late answer leaves the current step
        t, event = turn.transition, turn.event
        # Events and late turns that do not end leave the current step's retry count alone.
        keep_retries = conv is not None and (turn.late or (event not in (None, "stale")))
        retries = conv.retries if conv is not None and keep_retries else turn.retries
        status, target_flow, target_step = Status.ACTIVE, flow, current
        if t is not None:
            if t.kind in ("ask", "switch"):
                target_flow, target_step, retries = self.flows[t.flow], t.step or current, 0
            elif t.kind == "retry":  # re-asks the handler's step (the late one, if late)
                status = Status.GAVE_UP if turn.gave_up else Status.ACTIVE
                target_step, retries = step.name, turn.retries + 1
            elif t.kind == "finish":
                status = closing_status(event) if event not in (None, "stale") else Status.DONE
            elif t.kind == "handoff":
                status = Status.HUMAN
        elif event in ("timeout", "expire"):
            status = closing_status(event)
        # A user's message (or an event turn that ends) restarts the clock of the step it
        # leaves the conversation at; a reminder that only speaks leaves the timers running.
        reset = event in (None, "stale") or t is not None or status is not Status.ACTIVE
        unchanged = conv is not None and not reset and turn.state == conv.state
        if unchanged:
            assert conv is not None
            return _Outcome(change=None, replies=[(r, flow) for r in turn.replies],
                            step=conv.step, reset_timers=False, did="stay")
        expires = (now + target_flow.timeout.total_seconds()) if reset or conv is None else (
            conv.expires_at)
        change = ConversationChange(
            phone=turn.phone, flow=target_flow.name, step=target_step, status=status,
            state=turn.state, retries=retries, expires_at=expires,
            id=conv.id if conv else None, expected_version=conv.version if conv else 0,
            flow_version=target_flow.version_id,
        )
        timers: tuple[TimerSpec, ...] = ()
        if status is Status.ACTIVE and reset:
            target = target_flow.steps[target_step]
            timers = plan_timers(target_flow, target, now, t.remind_after if t else None,
                                 t.timeout if t else None)
        asked = target_step if status.is_open else None
        did = "gave_up" if turn.gave_up else (t.kind if t else "stay")
        question = t is not None and t.kind in ("ask", "retry", "switch") and (
            status is Status.ACTIVE)
        return _Outcome(change=change, replies=[(r, flow) for r in turn.replies], step=asked,
                        timers=timers, reset_timers=reset, did=did, question=question)

    def _failure(
        self, inbound: Inbound, message: Message, decided: Route | None, error: str,
        step: Step | None,
    ) -> Commit:
        flow = self.flows.get(step.flow) if step else None
        template = (flow.error if flow else None) or ERROR_TEMPLATE
        outbox: tuple[OutboxItem, ...] = ()
        for candidate in dict.fromkeys((template, ERROR_TEMPLATE)):
            try:
                outbox = self.composer.compose([(Reply(template=candidate), flow)], message.phone,
                                                None)
                break
            except Exception:
                log.exception("error reply %s could not be rendered", candidate)
        outbox = tuple(replace(item, in_conversation=False) for item in outbox)
        kind = decided.kind.value if decided else "abandoned"
        return Commit(inbound_id=inbound.id, outcome="failed", route=kind, error=error[:500],
                      outbox=outbox)

    # -- helpers ----------------------------------------------------------------------------

    async def _commit(self, commit: Commit) -> Committed:
        # A sender with a free slot takes the turn's first message in the same commit.
        claimer = self.outlet.reserve() if commit.outbox else None
        if claimer is not None:
            commit = replace(commit, claim_for=claimer)
        try:
            result = await self.store.commit(commit, self.clock())
        except BaseException:
            if claimer is not None:
                self.outlet.deliver([], reserved=True)
            raise
        crashpoints.hit("after_turn_commit")
        if commit.outbox:
            self.outlet.deliver(result.claimed, reserved=claimer is not None,
                                phone=commit.outbox[0].phone,
                                queued=len(commit.outbox) - len(result.claimed))
        return result

    def _new(
        self, phone: str, flow: Flow, step: str, state: dict[str, Any], now: float
    ) -> ConversationChange:
        return ConversationChange(phone=phone, flow=flow.name, step=step, status=Status.ACTIVE,
                                  state=state, retries=0,
                                  expires_at=now + flow.timeout.total_seconds(),
                                  flow_version=flow.version_id)

    def _touch(self, conv: Conversation, now: float) -> ConversationChange:
        flow = self.flows[conv.flow]
        return ConversationChange(phone=conv.phone, flow=conv.flow, step=conv.step,
                                  status=conv.status, state=conv.state, retries=conv.retries,
                                  expires_at=now + flow.timeout.total_seconds(), id=conv.id,
                                  expected_version=conv.version, flow_version=flow.version_id)

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
