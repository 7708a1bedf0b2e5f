"""The records the layers exchange: a stored message, a turn's commit, outbox rows, timers,
status changes. Plain frozen dataclasses, no behaviour: the core builds them, storage writes
and reads them, the runtime passes them along."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from botkit.core.conversation import Conversation, SentRef, Status

__all__ = [
    "AgentAction",
    "CampaignCounts",
    "CampaignRun",
    "Commit",
    "ConsentChange",
    "Committed",
    "ConversationChange",
    "Inbound",
    "LogEntry",
    "OutboxItem",
    "Outgoing",
    "RoutingContext",
    "SentQuestion",
    "StatusChange",
    "Suppression",
    "TimerShift",
    "Timer",
    "TimerSpec",
    "User",
]


@dataclass(frozen=True, kw_only=True)
class Suppression:
    """A phone on the suppression list: it said stop (or was put there), and nothing is sent
    to it until it says start (``docs/consent.md``)."""

    phone: str
    at: float
    keyword: str | None  # the word it wrote; None when added by run.py optouts add
    source: str  # "keyword" (the user wrote it), "cli" or "console"
    inbound_id: int | None = None  # the message that did it


@dataclass(frozen=True, kw_only=True)
class ConsentChange:
    """A turn's change to the suppression list: the phone opts out or back in."""

    phone: str
    kind: Literal["opt_out", "opt_in"]
    keyword: str | None
    source: str = "keyword"
    inbound_id: int | None = None


# What routing needs to know: the sent message a reply names (by its tracking_data), that
# message's conversation, the phone's open conversation, and whether the phone opted out.
RoutingContext = tuple[SentRef | None, Conversation | None, Conversation | None,
                       Suppression | None]


@dataclass(frozen=True, kw_only=True)
class Inbound:
    """A stored user message waiting to be (or already) handled."""

    id: int
    token: str
    phone: str
    time: int
    text: str
    tracking_data: str | None
    attempts: int = 0
    # The routing context, when it was read with the message's insert (``record_and_route``)
    # and nothing of the phone ran in between; the engine reads it itself otherwise.
    context: RoutingContext | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, kw_only=True)
class ConversationChange:
    """A conversation to create (``id`` None) or update (checked against ``expected_version``)."""

    phone: str
    flow: str
    step: str
    status: Status
    state: dict[str, Any]
    retries: int
    expires_at: float
    id: int | None = None
    expected_version: int = 0
    flow_version: str | None = None
    locale: str | None = None  # the language it speaks (docs/languages.md); None: the default


@dataclass(frozen=True, kw_only=True)
class OutboxItem:
    """A message to send, rendered and validated, linked to the turn's conversation or not."""

    phone: str
    flow: str | None
    step: str | None
    template: str
    text: str
    message_type: int
    payload: dict[str, Any]
    in_conversation: bool = True
    flow_version: str | None = None
    question: bool = False  # the message that asks its step (not a say, nudge or goodbye)
    notice_key: str | None = None  # a proactive notice sent at most once per phone and key
    # The answer to an opt-out or opt-in keyword: the one message the suppression list lets
    # through to a phone that opted out (outbound.role = 'consent').
    consent: bool = False
    # A message the bot started (a campaign's, a timer's, a notice): the per-phone limits
    # count it, and quiet hours hold it (``held_until``: when the phone's night ends).
    proactive: bool = False
    held_until: float | None = None
    # Why it is stored refused and never sent (a per-phone limit), or None.
    refused: str | None = None


class QueueSize(NamedTuple):
    """Queued messages: due now, and waiting for a later time (a retry's, or the end of the
    phone's quiet hours: ``held``, of the later ones)."""

    due: int
    later: int
    held: int = 0


class PhoneCounts(NamedTuple):
    """What the per-phone limits count (``core.limits``): the bot's messages since the
    phone last wrote, and the messages the bot started to it in the last 24 hours. Refused
    messages and the answers to opt-out and opt-in keywords count in neither."""

    unanswered: int
    proactive: int


@dataclass(frozen=True, kw_only=True)
class TimerSpec:
    """A timer to create: ``kind`` is remind, timeout, unanswered, undelivered or expire."""

    kind: str
    flow: str
    step: str
    due_at: float
    message_id: int | None = None


@dataclass(frozen=True, kw_only=True)
class Timer:
    """A stored timer, due or pending, of one conversation at one step."""

    id: int
    conversation_id: int
    phone: str
    kind: str
    flow: str
    step: str
    due_at: float
    message_id: int | None = None


@dataclass(frozen=True, kw_only=True)
class StatusChange:
    """What a delivery status did to the message it names (``old`` is None if it was unset)."""

    message_id: int
    phone: str
    flow: str | None
    step: str | None
    old: int | None
    new: int
    conversation: Conversation | None
    question: bool = False


@dataclass(frozen=True, kw_only=True)
class Commit:
    """Everything one turn changes, applied in one transaction.

    ``handled_by`` and ``did`` record which (flow, step) handled the message and what the
    turn did, for ``run.py stats``. ``reset_timers`` cancels the conversation's pending
    timers before ``timers`` are created (they belong to its new version); ``fire`` is the
    timer this turn fires: the commit fails with TimerTakenError if another process fired
    or cancelled it first, so a timer fires once (``error`` is kept on the timer).
    """

    inbound_id: int | None
    outcome: Literal["handled", "failed"] = "handled"
    route: str = ""
    error: str | None = None
    conversation: ConversationChange | None = None
    closes: tuple[tuple[Conversation, Status], ...] = ()
    outbox: tuple[OutboxItem, ...] = ()
    handled_by: tuple[str, str] | None = None
    did: str | None = None
    reset_timers: bool = False
    timers: tuple[TimerSpec, ...] = ()
    fire: Timer | None = None
    link: int | None = None  # the conversation the outbox rows belong to, if not changed
    # A sender with a free slot: the first new message is inserted already claimed by it
    # (when no earlier message of its phone waits), which saves the sender a claim.
    claim_for: str | None = None
    # The campaign run (``CampaignRun.id``) whose messages these are: kept on each outbox
    # row (``outbound.campaign_id``); None for every other turn.
    campaign_id: int | None = None
    # The phone opts out (onto the suppression list) or back in, with this turn.
    consent: ConsentChange | None = None


@dataclass(frozen=True, kw_only=True)
class Outgoing:
    """An outbox row claimed for sending."""

    id: int
    phone: str
    payload: dict[str, Any]
    attempts: int
    conversation_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Committed(NamedTuple):
    """What ``Store.commit`` did: the conversation, the new outbox rows, those claimed."""

    conversation_id: int | None
    outbox_ids: list[int]
    claimed: list[Outgoing]


@dataclass(frozen=True)
class LogEntry:
    """One message of a phone's history: ``direction`` "in" (the user) or "out" (the bot)."""

    direction: Literal["in", "out"]
    at: float
    text: str
    detail: str
    conversation_id: int | None = None  # None: a message outside any conversation


@dataclass(frozen=True, kw_only=True)
class SentQuestion:
    """What the store read back as it recorded a send: enough for the rules to tell whether
    a question went late (``DeliveryRules.late_shift``)."""

    conversation_id: int | None
    flow: str | None
    step: str | None
    question: bool
    created_at: float
    held_until: float | None = None  # when quiet hours let it go, if it waited for them


@dataclass(frozen=True, kw_only=True)
class TimerShift:
    """Timers to move later: a conversation's pending ``kinds`` at (flow, step), and its
    expiry while it waits there, by ``by`` seconds."""

    conversation_id: int
    flow: str
    step: str
    kinds: tuple[str, ...]
    by: float


@dataclass(frozen=True, kw_only=True)
class User:
    """Someone who may log in to the operator console: ``role`` is "agent" or "admin"; the
    password is kept only as its argon2 hash."""

    name: str
    role: str
    password_hash: str
    created_at: float


@dataclass(frozen=True, kw_only=True)
class AgentAction:
    """What an agent did in the console to a conversation: ``took`` it, ``took_over`` from
    the agent named in ``detail``, ``replied``, ``closed`` it, or ``resumed`` it at the step
    named in ``detail``."""

    conversation_id: int
    agent: str
    action: str
    detail: str | None = None
    at: float


@dataclass(frozen=True, kw_only=True)
class CampaignRun:
    """One run of ``run.py start`` (``kind`` "start", ``name`` the flow) or ``run.py
    notify`` ("notify", the template). ``begun`` and ``skipped`` count its phones so far
    (started or queued, and skipped), ``seen_at`` is when its process last said so (about
    once a second), ``process`` which process runs it; ``finished_at`` and ``outcome``
    ("done", "stopped" or "failed") stay None until it ends (for ever, if its process was
    killed)."""

    id: int
    kind: str
    name: str
    total: int
    started_at: float
    finished_at: float | None = None
    outcome: str | None = None
    begun: int = 0
    skipped: int = 0
    seen_at: float | None = None
    process: str | None = None


@dataclass(frozen=True, kw_only=True)
class CampaignCounts:
    """A campaign's messages by where they are: ``queued`` and ``sending`` (not sent yet),
    ``sent`` (accepted by the provider; ``delivered`` those with delivery status 1),
    ``failed``, ``uncertain``, ``refused`` (stored refused: the phone opted out after the
    run began, or a per-phone limit); ``recent`` were sent since the time asked about, and
    ``first_sent_at`` and ``last_sent_at`` bound every send (None before the first)."""

    queued: int = 0
    sending: int = 0
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    uncertain: int = 0
    refused: int = 0
    recent: int = 0
    first_sent_at: float | None = None
    last_sent_at: float | None = None
