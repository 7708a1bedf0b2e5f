"""Engine: one turn, from a stored user message (or a due timer) to a committed change.

Route the message (``core.routing``), run the step's handler with a ``Turn``, work out what
it does (``core.outcome``), render its replies (``composer.Composer``), and commit the
conversation change, the closed conversations, the outbox rows, the timers the new step
starts and the inbound row's outcome in one transaction. A handler or template that fails
rolls all of that back and commits only the error reply. Timers and delivery statuses
become turns too (``events``); flows started for many phones and notices are ``proactive``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from botkit.core.consent import OPTED_IN_TEMPLATE, OPTED_OUT_TEMPLATE
from botkit.core.conversation import Conversation
from botkit.core.flows import Flow, Step
from botkit.core.lifecycle import plan_timers
from botkit.core.outcome import Outcome, outcome_of
from botkit.core.records import (
    Commit,
    ConsentChange,
    Inbound,
    OutboxItem,
    Timer,
)
from botkit.core.routing import Route, RouteKind, route
from botkit.core.turn import Message, Reply, Turn
from botkit.errors import (
    ConcurrentUpdateError,
    DuplicateMessageError,
)
from botkit.models import parse_tracking_id
from botkit.runtime.engine_base import ERROR_TEMPLATE, FALLBACK_TEMPLATE, Outlet
from botkit.runtime.events import Events
from botkit.runtime.proactive import Proactive, StartResult

__all__ = ["Engine", "Outlet", "StartResult"]

log = logging.getLogger("botkit.engine")


class Engine(Proactive, Events):
    """Handles stored messages turn by turn; starts flows and sends notices (``Proactive``);
    fires timers and records statuses (``Events``). Built by ``runtime.assembly``.

    >>> engine = Engine(store, flows, renderer, sender="Acme", callback_url=url)
    """

    async def handle(self, item: Inbound | Timer) -> None:
        """Handle one stored message or due timer; never raises for a bot's fault.

        On a shared store (several processes) the turn holds its phone's lock, and the
        phone's earlier messages that other processes accepted are handled first, in order;
        the message itself may have been handled by one of them already.
        """
        if not self.store.shared:
            return await (self.fire(item) if isinstance(item, Timer) else self._once(item))
        if isinstance(item, Timer):
            async with self.store.phone_turns(item.phone):
                return await self.fire(item)
        async with self.store.phone_turns(item.phone, parse_tracking_id(item.tracking_data)):
            for inbound in await self.store.pending_of(item.phone, item.id):
                await self._once(inbound)

    async def _once(self, inbound: Inbound) -> None:
        started = time.perf_counter()
        try:
            await self._handle(inbound)
        except DuplicateMessageError as exc:  # another process handled it first
            log.info("message %s from %s: %s; its turn is dropped", inbound.id, inbound.phone,
                     exc)
            return
        self.metrics.turn_seconds.observe(time.perf_counter() - started)

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
            (sent, tracked, active, suppressed), context = context, None
            if message.tracking_id is not None and sent is None:
                log.info("message %s from %s answers message %s, which this bot never sent;"
                         " treated as having no tracking data", inbound.id, inbound.phone,
                         message.tracking_id)
            decided = route(message, sent=sent, tracked=tracked, active=active,
                            flows=self.flows, now=self.clock(), suppressed=suppressed,
                            consent=self.consent)
            failure: Exception | None = None
            try:
                commit = await self._turn(inbound, message, decided)
            except Exception as exc:  # a bot's fault: logged, rolled back, answered
                failure = exc
                self.counts["handler errors"] += 1
                self.metrics.handler_errors.inc()
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

    async def _turn(self, inbound: Inbound, message: Message, decided: Route) -> Commit:
        now = self.clock()
        conv, step = decided.conversation, decided.step
        kind = decided.kind
        if kind in (RouteKind.OPT_OUT, RouteKind.OPT_IN, RouteKind.SUPPRESSED):
            return self._consent_turn(inbound, message, decided)
        if kind is RouteKind.FALLBACK:
            log.info("message %s from %s: no conversation, no keyword; fallback reply. To start"
                     " a flow with it, declare Flow(..., keywords=[%r]), or make a flow the"
                     " default (Flow(..., default='ask'))", inbound.id,
                     message.phone, " ".join(message.text.split())[:40])
            variables = {"keywords": self.flows.keywords, "text": message.text}
            reply = Reply(template=FALLBACK_TEMPLATE, variables=variables)
            out = Outcome(change=None, replies=[(reply, None)], step=None)
        elif kind is RouteKind.HUMAN:
            assert conv is not None
            log.info("message %s from %s: conversation %s is with a human; no auto-reply",
                     inbound.id, message.phone, conv.id)
            out = Outcome(change=self._touch(conv, now), replies=[], step=conv.step)
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
            replies.append((Reply(template=self._prompt_of(step, message.phone)), flow))
            out = Outcome(change=change, replies=replies, step=step.name,
                           timers=plan_timers(flow, step, now), question=True)
        else:  # STEP, ENTRY: the handler runs
            assert step is not None
            state = dict(conv.state) if conv else {}
            # A late answer's step is not the current one: its retry count starts afresh.
            turn = Turn(flows=self.flows, step=step, message=message, state=state,
                        conversation_id=conv.id if conv else 0,
                        retries=conv.retries if conv and not decided.late else 0,
                        late=decided.late, locale=self._speaks(message.phone, conv))
            await step.handler(turn)
            out = outcome_of(self.flows, turn, conv, step, now)
        self._counted(kind)
        log.debug("message %s from %s -> %s (%s): %d replies", inbound.id, message.phone,
                 _where(decided), decided.reason, len(out.replies))
        asked = (out.change.flow, out.step) if out.change and out.step else None
        speaks = out.change.locale if out.change and out.change.locale else self._speaks(
            message.phone, conv)
        outbox = self.composer.compose(out.replies, message.phone, asked,
                                       out.change.state if out.change else None,
                                       question=out.question, locale=speaks)
        handled_by = (step.flow, step.name) if step else None
        consent = ConsentChange(phone=message.phone, kind="opt_in", keyword=None,
                                source="flow keyword", inbound_id=inbound.id) \
            if decided.opts_in else None
        if consent is not None:
            log.info("message %s from %s: a flow's keyword; the phone comes off the"
                     " suppression list (BOTKIT_OPT_IN_BY_FLOW_KEYWORD)", inbound.id,
                     message.phone)
        return Commit(inbound_id=inbound.id, route=kind.value, conversation=out.change,
                      closes=decided.close, outbox=outbox, handled_by=handled_by, did=out.did,
                      reset_timers=out.reset_timers, timers=out.timers, consent=consent)

    def _counted(self, kind: RouteKind) -> None:
        """Count a message routed as ``kind`` (the activity log, ``/metrics``)."""
        self.counts[f"route:{kind.value}"] += 1
        self.metrics.route[kind.value].inc()

    def _consent_turn(self, inbound: Inbound, message: Message, decided: Route) -> Commit:
        """An opt-out (the phone goes on the suppression list, its open conversation closes,
        one confirmation), an opt-in (off the list, one confirmation), or a message from a
        phone on the list (only recorded)."""
        kind = decided.kind
        self._counted(kind)
        consent = None
        template = None
        if kind is RouteKind.OPT_OUT:
            consent = ConsentChange(phone=message.phone, kind="opt_out", keyword=decided.keyword,
                                    inbound_id=inbound.id)
            template = None if decided.repeated else OPTED_OUT_TEMPLATE
            log.info("message %s from %s: opt-out keyword %r; on the suppression list%s%s",
                     inbound.id, message.phone, decided.keyword,
                     "".join(f", conversation {c.id} closed" for c, _ in decided.close),
                     " (already was: no confirmation)" if decided.repeated else "")
        elif kind is RouteKind.OPT_IN:
            consent = ConsentChange(phone=message.phone, kind="opt_in", keyword=decided.keyword,
                                    inbound_id=inbound.id)
            template = OPTED_IN_TEMPLATE
            log.info("message %s from %s: opt-in keyword %r; off the suppression list",
                     inbound.id, message.phone, decided.keyword)
        else:
            log.info("message %s from %s: the phone opted out; recorded, not answered",
                     inbound.id, message.phone)
        outbox: tuple[OutboxItem, ...] = ()
        if template is not None:
            outbox = tuple(replace(item, consent=True, in_conversation=False)
                           for item in self.composer.compose(
                               [(Reply(template=template), None)], message.phone, None,
                               locale=self._speaks(message.phone, decided.conversation)))
        return Commit(inbound_id=inbound.id, route=kind.value, closes=decided.close,
                      outbox=outbox, consent=consent)

    async def _stale(
        self, message: Message, decided: Route, conv: Conversation, step: Step, now: float
    ) -> Outcome:
        flow = self.flows[conv.flow]
        if flow.stale is None:  # the core policy: ask the current question again
            reply = Reply(template=self._prompt_of(step, message.phone))
            return Outcome(change=self._touch(conv, now), replies=[(reply, flow)],
                            step=conv.step, timers=plan_timers(flow, step, now), did="stale",
                            question=True)
        turn = Turn(flows=self.flows, step=step, message=message, state=dict(conv.state),
                    conversation_id=conv.id, retries=conv.retries, event="stale",
                    answered=decided.answered, locale=self._speaks(conv.phone, conv))
        await flow.stale(turn)
        return outcome_of(self.flows, turn, conv, step, now)

    def _failure(
        self, inbound: Inbound, message: Message, decided: Route | None, error: str,
        step: Step | None,
    ) -> Commit:
        flow = self.flows.get(step.flow) if step else None
        template = (flow.error if flow else None) or ERROR_TEMPLATE
        outbox: tuple[OutboxItem, ...] = ()
        for candidate in dict.fromkeys((template, ERROR_TEMPLATE)):
            try:
                outbox = self.composer.compose(
                    [(Reply(template=candidate), flow)], message.phone, None,
                    locale=self._speaks(message.phone, decided.conversation if decided else None))
                break
            except Exception:
                log.exception("error reply %s could not be rendered", candidate)
        outbox = tuple(replace(item, in_conversation=False) for item in outbox)
        kind = decided.kind.value if decided else "abandoned"
        return Commit(inbound_id=inbound.id, outcome="failed", route=kind, error=error[:500],
                      outbox=outbox)


def _where(decided: Route) -> str:
    if decided.step is not None:
        return f"{decided.step.flow}.{decided.step.name}"
    return decided.kind.value
