"""The engine's common ground: its collaborators, where committed messages go (``Outlet``),
and the helpers every kind of turn uses (committing, new and touched conversations)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from botkit.core.consent import Consent
from botkit.core.conversation import Conversation, Status
from botkit.core.flows import Flow, FlowSet, Step
from botkit.core.lifecycle import DeliveryRules
from botkit.core.limits import Limits
from botkit.core.locales import Locales
from botkit.core.quiet import QuietHours
from botkit.core.records import (
    Commit,
    Committed,
    ConversationChange,
    Outgoing,
    PhoneCounts,
)
from botkit.errors import (
    DefinitionError,
    StoreUnavailableError,
)
from botkit.runtime import crashpoints
from botkit.runtime.composer import Composer
from botkit.runtime.metrics import Metrics
from botkit.runtime.templates import Renderer
from botkit.storage.base import Store

__all__ = ["AGENT_TEMPLATE", "ERROR_TEMPLATE", "FALLBACK_TEMPLATE", "EngineBase", "Outlet"]

log = logging.getLogger("botkit.engine")

FALLBACK_TEMPLATE = "botkit/fallback.txt"
ERROR_TEMPLATE = "botkit/error.txt"
AGENT_TEMPLATE = "botkit/agent.txt"  # a human agent's own words


class Outlet(Protocol):
    """Where committed messages go: the Sender in a server."""

    def reserve(self) -> str | None:
        """A claim name if a send slot is free (the commit then claims a message for it)."""

    def deliver(
        self, claimed: list[Outgoing], *, reserved: bool, phone: str = "", queued: int = 0,
        unknown: bool = False,
    ) -> None:
        """After a commit that queued messages: send ``claimed`` (releasing the reserved
        slot); ``queued`` more messages of ``phone`` wait in the queue. ``unknown``: the
        commit failed on the way to the database and may have stored its claim anyway."""


class _NoOutlet:
    def reserve(self) -> str | None:
        return None

    def deliver(
        self, claimed: list[Outgoing], *, reserved: bool, phone: str = "", queued: int = 0,
        unknown: bool = False,
    ) -> None:
        pass

class EngineBase:
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
        metrics: Metrics | None = None,
        consent: Consent | None = Consent(),
        quiet: QuietHours | None = QuietHours(),
        limits: Limits = Limits(),
        locales: Locales = Locales(),
    ) -> None:
        self.store = store
        self.consent = consent  # the opt-out and opt-in keywords; None: none are honoured
        self.quiet = quiet  # when proactive messages wait (None: never)
        self.limits = limits  # how many proactive messages a phone may get
        self.locales = locales  # the language a new conversation speaks
        self.metrics = metrics or Metrics()
        self.flows = flows
        self.composer = Composer(renderer, flows, sender=sender, callback_url=callback_url)
        self.clock = clock
        self.outlet = outlet or _NoOutlet()
        self.max_attempts = max_attempts
        self.raise_errors = raise_errors
        self.failures: list[Exception] = []
        self.counts: Counter[str] = Counter()  # messages by route, for the activity log
        self.rules = rules or DeliveryRules(flows, clock)  # what a status does to its message

    async def _commit(self, commit: Commit) -> Committed:
        # A sender with a free slot takes the turn's first message in the same commit.
        claimer = self.outlet.reserve() if commit.outbox else None
        if claimer is not None:
            commit = replace(commit, claim_for=claimer)
        started = time.perf_counter()
        try:
            result = await self.store.commit(commit, self.clock())
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
        except StoreUnavailableError:
            if claimer is not None:  # the commit may have reached the database, claimed
                self.outlet.deliver([], reserved=True, unknown=True)
            raise
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

    async def _counts(self, phones: list[str], now: float) -> dict[str, PhoneCounts]:
        """What the per-phone limits count for ``phones`` (no read when both are off)."""
        unanswered, per_day = self.limits.unanswered, self.limits.per_day
        if not phones or not (unanswered or per_day):
            return {phone: PhoneCounts(0, 0) for phone in phones}
        return await self.store.phone_counts(phones, now, unanswered, per_day)

    def _opens_at(self, phone: str, now: float) -> float | None:
        """When the phone's quiet hours end, if a proactive message must wait for that."""
        return self.quiet.opens_at(phone, now) if self.quiet is not None else None

    def _speaks(self, phone: str, conv: Conversation | None = None) -> str:
        """The locale of ``conv``, or the one a new conversation with ``phone`` would get."""
        return conv.locale if conv is not None and conv.locale else self.locales.guess(phone)

    def _new(
        self, phone: str, flow: Flow, step: str, state: dict[str, Any], now: float,
        locale: str | None = None,
    ) -> ConversationChange:
        return ConversationChange(phone=phone, flow=flow.name, step=step, status=Status.ACTIVE,
                                  state=state, retries=0,
                                  expires_at=now + flow.timeout.total_seconds(),
                                  flow_version=flow.version_id,
                                  locale=locale or self.locales.guess(phone))

    def _touch(self, conv: Conversation, now: float) -> ConversationChange:
        flow = self.flows[conv.flow]
        return ConversationChange(phone=conv.phone, flow=conv.flow, step=conv.step,
                                  status=conv.status, state=conv.state, retries=conv.retries,
                                  expires_at=now + flow.timeout.total_seconds(), id=conv.id,
                                  expected_version=conv.version, flow_version=flow.version_id,
                                  locale=conv.locale)

    @staticmethod
    def _prompt_of(step: Step, phone: str) -> str:
        """The prompt ``phone`` is sent when ``step`` is asked (its variant, in an A/B test)."""
        prompt = step.prompt_for(phone)
        if prompt is None:
            raise DefinitionError(
                f"flow {step.flow!r}, step {step.name!r} is asked but has no prompt template;"
                f" declare @{step.flow}.step({step.name!r}, prompt=...)"
            )
        return prompt
