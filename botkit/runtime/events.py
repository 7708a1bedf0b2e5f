"""Turns of the conversation's life cycle: a due timer fired, a delivery status recorded."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime

from botkit.core.conversation import Conversation, Status
from botkit.core.flows import Flow, Step
from botkit.core.lifecycle import inapplicable
from botkit.core.outcome import outcome_of
from botkit.core.records import (
    Commit,
    StatusChange,
    Timer,
)
from botkit.core.turn import Message, Turn
from botkit.errors import (
    ConcurrentUpdateError,
    TimerTakenError,
)
from botkit.models import StatusUpdate
from botkit.runtime.engine_base import EngineBase

__all__ = ["Events"]

log = logging.getLogger("botkit.engine")


class Events(EngineBase):
    """The engine's life-cycle side (``Engine`` has it)."""

    async def fire(self, timer: Timer) -> None:
        """Fire a due timer as a turn of its conversation, or skip it if it no longer applies.

        The commit marks the timer fired only if it is still pending, so a timer fires once
        even when two processes sweep the same database.

        A timer speaks first, so it is proactive: a turn that would send in the phone's
        quiet hours is not committed, and the conversation's timers (this one first) and
        expiry move to when the night ends, where it fires again; the per-phone limits
        refuse what goes beyond them, and ``turn.refused`` tells the handler beforehand.
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
            counts = (await self._counts([conv.phone], now))[conv.phone]
            allowed, limit = self.limits.allowance(counts)
            try:
                if flow is None or step is None:  # an expiry at a step a deploy removed
                    commit = Commit(inbound_id=None, route="expire", fire=timer,
                                    closes=((conv, Status.EXPIRED),))
                else:
                    commit = await self._event_turn(timer, conv, flow, step, now,
                                                    limit if allowed == 0 else None)
            except Exception as exc:  # a bot's fault: logged, kept on the timer, no reply
                log.exception("%s handler failed: conversation %s (%s.%s)", timer.kind,
                              conv.id, conv.flow, conv.step)
                if self.raise_errors:
                    self.failures.append(exc)
                commit = Commit(inbound_id=None, route=timer.kind, error=repr(exc)[:500], fire=timer)
            if commit.outbox:
                opens = self._opens_at(conv.phone, now)
                if opens is not None:
                    await self._postpone(timer, conv, opens, now)
                    return
                outbox = self.limits.apply(commit.outbox, counts)
                refused = sum(1 for item in outbox if item.refused)
                if refused:
                    log.warning("timer %s (%s of conversation %s): %d of its %d messages to %s"
                                " refused, %s", timer.id, timer.kind, conv.id, refused,
                                len(outbox), conv.phone, limit)
                commit = replace(commit, outbox=outbox)
            try:
                await self._commit(commit)
            except TimerTakenError:
                return  # another process fired it, or the user answered meanwhile
            except ConcurrentUpdateError:
                continue
            log.info("timer %s fired: %s of conversation %s (%s.%s), %d messages", timer.id,
                     timer.kind, conv.id, conv.flow, conv.step, len(commit.outbox))
            return

    async def _postpone(self, timer: Timer, conv: Conversation, opens: float, now: float) -> None:
        # By as much as brings this timer to the night's end: it fires first then.
        by = opens - min(now, timer.due_at)
        if await self.store.postpone_timers(timer.id, conv.id, by):
            self.counts["held for quiet hours"] += 1
            log.info("timer %s (%s of conversation %s) would speak in the quiet hours of %s:"
                     " the conversation's timers and expiry move %.1f h later, to %s UTC",
                     timer.id, timer.kind, conv.id, conv.phone, by / 3600,
                     datetime.fromtimestamp(opens, UTC).strftime("%Y-%m-%d %H:%M"))

    async def on_status(self, update: StatusUpdate) -> StatusChange | None:
        """Record a delivery status; an undelivered or delivered question may start a timer."""
        return await self.store.record_status(update, self.clock(), self.rules)

    async def _event_turn(
        self, timer: Timer, conv: Conversation, flow: Flow, step: Step, now: float,
        refused: str | None,
    ) -> Commit:
        reaction = {
            "remind": step.remind, "timeout": step.on_timeout, "expire": flow.on_expire,
            "unanswered": step.on_unanswered, "undelivered": step.on_undelivered,
        }.get(timer.kind)
        message = Message(text="", phone=conv.phone, time=int(now), token=f"timer:{timer.id}",
                          tracking_id=timer.message_id)
        turn = Turn(flows=self.flows, step=step, message=message, state=dict(conv.state),
                    conversation_id=conv.id, retries=conv.retries, event=timer.kind,
                    refused=refused, locale=self._speaks(conv.phone, conv))
        if isinstance(reaction, str):
            if timer.kind in ("timeout", "expire"):
                turn.finish(reaction)
            else:
                turn.say(reaction)
        elif reaction is not None:
            await reaction(turn)
        out = outcome_of(self.flows, turn, conv, step, now)
        if out.change is None:  # a nudge: answers to it still go to the waiting step
            asked: tuple[str, str] | None = (conv.flow, conv.step)
        else:  # a goodbye asks nothing
            asked = (out.change.flow, out.step) if out.step else None
        outbox = self.composer.compose(out.replies, conv.phone, asked,
                                       out.change.state if out.change else conv.state,
                                       question=out.question, locale=turn.locale)
        return Commit(inbound_id=None, route=timer.kind, conversation=out.change, outbox=outbox,
                      handled_by=(flow.name, step.name), did=out.did,
                      reset_timers=out.reset_timers, timers=out.timers, fire=timer,
                      link=conv.id)
