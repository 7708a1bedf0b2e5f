"""Turns that no user message started: a flow begun for many phones (a campaign), a
one-way notice, a human agent's words."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Literal

from botkit.core.conversation import Conversation, Status
from botkit.core.flows import Delivery, Flow
from botkit.core.lifecycle import plan_timers
from botkit.core.records import (
    Commit,
    PhoneCounts,
)
from botkit.core.turn import Reply
from botkit.errors import (
    ConcurrentUpdateError,
    UnknownStepError,
)
from botkit.models import normalize_phone
from botkit.runtime import crashpoints
from botkit.runtime.engine_base import AGENT_TEMPLATE, EngineBase

__all__ = ["OPTED_OUT", "Proactive", "StartResult"]

log = logging.getLogger("botkit.engine")


# Why a campaign skips a phone on the suppression list (docs/consent.md).
OPTED_OUT = "opted out (on the suppression list)"


@dataclass(frozen=True)
class StartResult:
    """What ``Engine.start`` (or ``notify_many``: "queued") did for one phone."""

    phone: str
    outcome: Literal["started", "skipped", "replaced", "queued"]
    conversation_id: int | None = None
    detail: str = ""
    # When its messages go: the end of the phone's quiet hours; None: now.
    held_until: float | None = None


class Proactive(EngineBase):
    """The engine's proactive side (``Engine`` has it)."""

    async def start(
        self, flow_name: str, phone: str, state: dict[str, Any] | None = None, *,
        quiet_hours: bool = True,
    ) -> StartResult:
        """Begin a conversation proactively by asking the flow's first step.

        Skipped for a phone already in an open conversation of this flow, or with a human
        agent; an expired conversation is closed as expired, one in another flow as replaced.
        Quiet hours and the per-phone limits apply as in ``start_many``.
        """
        [result] = await self.start_many(flow_name, [phone], state, quiet_hours=quiet_hours)
        return result

    async def start_many(
        self, flow_name: str, phones: list[str], state: dict[str, Any] | None = None, *,
        campaign_id: int | None = None, quiet_hours: bool = True,
    ) -> list[StartResult]:
        """``start`` for many phones at once: one read and one commit for all of them.

        Each phone's conversation still commits atomically on its own (a phone that got a
        conversation meanwhile is skipped, the others start). Returns one result per
        distinct phone, in the order given. ``campaign_id``: the campaign run whose
        messages these are (``CampaignStore.begin_campaign``), kept on each outbox row.

        A phone in its quiet hours starts now, its question held until they end (its
        timers count from then; ``quiet_hours=False``: sent now, for an urgent campaign);
        one on the suppression list or at a per-phone limit is skipped.
        """
        flow = self.flows[flow_name]
        now = self.clock()
        phones = list(dict.fromkeys(normalize_phone(p) for p in phones))
        active = await self.store.open_conversations(phones)
        results, counts = await self._screen(phones, now)
        planned: list[tuple[str, Commit, Literal["started", "replaced"], str]] = []
        for phone in phones:
            if phone in results:
                continue
            plan = self._plan_start(flow, phone, active.get(phone), state, now)
            if isinstance(plan, StartResult):
                results[phone] = plan
            else:
                commit, outcome, detail = plan
                commit = self._paced(commit, phone, counts[phone], now, quiet_hours)
                if campaign_id is not None:
                    commit = replace(commit, campaign_id=campaign_id)
                planned.append((phone, commit, outcome, detail))
        outcomes = await self.store.commit_many([commit for _, commit, _, _ in planned], now)
        crashpoints.hit("after_turn_commit")
        for (phone, commit, outcome, detail), done in zip(planned, outcomes, strict=True):
            if isinstance(done, ConcurrentUpdateError):
                results[phone] = StartResult(phone, "skipped", None, str(done))
            else:
                results[phone] = StartResult(phone, outcome, done.conversation_id, detail,
                                             commit.outbox[0].held_until)
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
        campaign_id: int | None = None,
        quiet_hours: bool = True,
    ) -> list[StartResult]:
        """Queue a one-way notice (``Turn.notify``) to each phone, outside any conversation.

        No conversation starts or changes, and the user's next message is routed as before.
        A phone's notice is committed atomically on its own; a template that breaks a
        provider limit (an SMS fallback too long) raises before anything is committed. With
        ``key``, a phone that already has a notice under that key is skipped, so a re-run
        sends nothing twice. ``campaign_id``, ``quiet_hours`` and the per-phone limits: as
        in ``start_many``.

        >>> await engine.notify_many(["380501112233"], "support/order_shipped.txt",
        ...                          variables={"order": 42})
        """
        now = self.clock()
        phones = list(dict.fromkeys(normalize_phone(p) for p in phones))
        results, counts = await self._screen(phones, now)
        sending = [p for p in phones if p not in results]
        reply = Reply(template=template, variables=dict(variables or {}), delivery=delivery,
                      one_way=True, sms=sms)
        commits = [self._paced(
            Commit(inbound_id=None, route="notice", campaign_id=campaign_id,
                   outbox=tuple(replace(item, notice_key=key) for item
                                in self.composer.compose([(reply, None)], phone, None,
                                                         locale=self._speaks(phone)))),
            phone, counts[phone], now, quiet_hours) for phone in sending]
        outcomes = await self.store.commit_many(commits, now) if commits else []
        crashpoints.hit("after_turn_commit")
        for phone, commit, done in zip(sending, commits, outcomes, strict=True):
            if isinstance(done, ConcurrentUpdateError):  # the phone has this key's notice
                results[phone] = StartResult(phone, "skipped", None, f"already has notice {key!r}")
                continue
            results[phone] = StartResult(phone, "queued", held_until=commit.outbox[0].held_until)
            self.outlet.deliver(done.claimed, reserved=False, phone=phone,
                                queued=len(commit.outbox) - len(done.claimed))
        return [results[phone] for phone in phones]  # in the order given

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
                                       (conv.flow, conv.step), conv.state,
                                       locale=self._speaks(phone, conv))
        await self._commit(Commit(inbound_id=None, route="agent", outbox=outbox, link=conv.id))
        return conv

    async def resume_at(self, conversation_id: int, step_name: str) -> Conversation | None:
        """Give a conversation with a human back to the bot at ``step_name`` of its flow.

        The step's prompt is sent and its timers start, as when the flow asks it; the state
        is kept. Returns the conversation as it was, or None when it is not with a human.
        UnknownStepError when the flow has no such step; ConcurrentUpdateError when the
        conversation changed meanwhile (a message of the user: try again).

        >>> await engine.resume_at(12, "order_number")
        """
        conv = await self.store.conversation(conversation_id)
        if conv is None or conv.status is not Status.HUMAN:
            return None
        flow = self.flows[conv.flow]
        step = flow.steps.get(step_name)
        if step is None:
            raise UnknownStepError(f"flow {flow.name!r} has no step {step_name!r}; its steps:"
                                   f" {', '.join(flow.steps)}")
        now = self.clock()
        change = replace(self._new(conv.phone, flow, step.name, conv.state, now, conv.locale),
                         id=conv.id, expected_version=conv.version)
        reply = Reply(template=self._prompt_of(step, conv.phone))
        await self._commit(Commit(
            inbound_id=None, route="resume", conversation=change, reset_timers=True,
            outbox=self.composer.compose([(reply, flow)], conv.phone, (flow.name, step.name),
                                         change.state, question=True, locale=change.locale),
            timers=plan_timers(flow, step, now)))
        return conv

    async def _screen(
        self, phones: list[str], now: float
    ) -> tuple[dict[str, StartResult], dict[str, PhoneCounts]]:
        """The phones a proactive send skips (on the suppression list, or at a per-phone
        limit), with why; and what the limits counted for the others."""
        suppressed = await self.store.suppressed_among(phones)
        skipped = {phone: StartResult(phone, "skipped", None, OPTED_OUT) for phone in suppressed}
        counts = await self._counts([p for p in phones if p not in suppressed], now)
        for phone, count in counts.items():
            allowed, limit = self.limits.allowance(count)
            if allowed == 0:
                skipped[phone] = StartResult(phone, "skipped", None, limit or "")
        return skipped, counts

    def _paced(
        self, commit: Commit, phone: str, counts: PhoneCounts, now: float, quiet_hours: bool
    ) -> Commit:
        """A proactive commit as the per-phone limits and quiet hours let it go: messages
        beyond the allowance refused, and the rest held until the phone's night ends, with
        the timers and expiry of its new conversation counting from then."""
        outbox = self.limits.apply(commit.outbox, counts)
        opens = self._opens_at(phone, now) if quiet_hours else None
        if opens is None:
            return replace(commit, outbox=outbox)
        by = opens - now
        change = commit.conversation
        return replace(
            commit, outbox=tuple(replace(item, held_until=opens) for item in outbox),
            timers=tuple(replace(t, due_at=t.due_at + by) for t in commit.timers),
            conversation=replace(change, expires_at=change.expires_at + by) if change else None)

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
        reply = Reply(template=self._prompt_of(first, phone))
        commit = Commit(inbound_id=None, route="start", conversation=change, closes=closes,
                        outbox=self.composer.compose([(reply, flow)], phone,
                                                     (flow.name, first.name), change.state,
                                                     question=True, locale=change.locale),
                        timers=plan_timers(flow, first, now))
        return commit, outcome, detail
