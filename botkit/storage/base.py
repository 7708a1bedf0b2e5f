"""The store's interfaces: everything botkit keeps, in eight roles, behind one small async API.

``Admin``, ``TurnStore``, ``OutboxStore``, ``TimerStore``, ``StatusStore``,
``ReportStore``, ``ConsoleStore`` (the operator console's) and ``CampaignStore`` (the
record of campaign runs) each hold one concern;
``Store`` is all of them. The runtime only sees these ABCs and the records of ``core.records``. ``storage.sqlite.SQLiteStore`` and
``storage.postgres.PostgresStore`` implement them, a module per role, reusing
``storage.rows`` for what every engine writes the same way; ``storage.engines.store_for``
picks one from ``BOTKIT_DB``.

A store is ``shared`` when several processes serve callbacks on it (PostgreSQL): a turn then
holds its phone's lock (``phone_turns``) and first handles the phone's earlier messages that
other processes accepted (``pending_of``); processes beat (``beat``) so that the others know
which are alive (``live``) and take over only the work of those that are gone.

Durability contract every implementation keeps:
- ``record_inbound`` has committed before the server answers 2xx, and it refuses a
  ``message_token`` it has seen (the duplicate is acknowledged, never handled twice);
- ``commit`` applies a turn atomically: the inbound row's outcome (only while the row is
  pending: a message is handled once, else DuplicateMessageError), the conversation change,
  conversations closed on the way and the outbox rows, all or nothing (the outbox pattern);
  an update whose ``expected_version`` is stale raises ConcurrentUpdateError, and so does an
  outbox row whose ``notice_key`` the phone already has (a notice goes once per key);
- ``claim_outbox`` moves rows from ``queued`` to ``sending`` atomically, so two senders never
  take the same row (a ``commit`` with ``claim_for`` may insert its first message already
  claimed, under the same one-message-per-phone rule); ``reset_sending`` returns rows a
  crashed sender left behind (and only those: another live process's claims are kept).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar

from botkit.core.conversation import Conversation
from botkit.core.lifecycle import DeliveryRules
from botkit.core.records import (
    AgentAction,
    CampaignCounts,
    CampaignRun,
    Commit,
    Committed,
    ConsentChange,
    Inbound,
    LogEntry,
    Outgoing,
    PhoneCounts,
    QueueSize,
    RoutingContext,
    StatusChange,
    Suppression,
    Timer,
    User,
)
from botkit.errors import ConcurrentUpdateError
from botkit.models import InboundReply, StatusUpdate

__all__ = ["Admin", "CampaignStore", "ConsentStore", "ConsoleStore", "OutboxStore", "ReportStore", "StatusStore", "Store",
           "TimerStore", "TurnStore"]


class Admin(ABC):
    """Opening and closing, and the small settings every process shares."""

    @abstractmethod
    async def open(self) -> None:
        """Connect, check the settings and migrate the schema (refusing a newer one)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and threads."""

    @abstractmethod
    async def secret(self, generate: Callable[[], str], key: str = "callback_secret") -> str:
        """The secret stored under ``key`` (the callback secret by default), storing
        ``generate()`` the first time; every process of one database gets the same one."""

    @abstractmethod
    async def meta(self, key: str) -> str | None:
        """A small operator setting (e.g. ``resume_sending``), or None."""

    @abstractmethod
    async def set_meta(self, key: str, value: str) -> None:
        """Store a small operator setting, visible to every process on the store."""

    @abstractmethod
    async def beat(self, now: float) -> None:
        """Record that this process (``botkit.process.process_name()``) is alive, and forget
        processes not seen for a day."""

    @abstractmethod
    async def leave(self) -> None:
        """Record that this process stopped cleanly: the others take over what it left at
        their next round, without waiting for its heartbeat to age."""

    @abstractmethod
    async def live(self, lease: float) -> set[str]:
        """``host/pid`` of the processes that beat within the last ``lease`` seconds."""


class TurnStore(ABC):
    """The hot path: a user's message stored, its routing read, a turn committed."""

    #: Several processes serve callbacks on this store: see the module's docstring.
    shared: ClassVar[bool] = False

    @asynccontextmanager
    async def phone_turns(
        self, phone: str, tracking_id: int | None = None
    ) -> AsyncIterator[None]:
        """Hold ``phone``'s turn lock across processes (a shared store); else nothing, as
        one process's dispatcher already handles a phone's messages one at a time.

        ``tracking_id``: of the message the turn is for; a store may read its routing with
        the lock, and ``routing_context`` then answers from that read once.
        """
        yield

    @abstractmethod
    async def record_inbound(self, reply: InboundReply, now: float) -> int | None:
        """Store a user's message; None if its token was seen before."""

    @abstractmethod
    async def record_and_route(
        self, reply: InboundReply, now: float
    ) -> tuple[int | None, RoutingContext | None]:
        """``record_inbound``, and in the same call the message's ``routing_context``."""

    @abstractmethod
    async def pending_inbound(
        self, gone: Callable[[str | None, float], bool] | None = None,
        skip: Collection[int] = (),
    ) -> list[Inbound]:
        """Messages accepted but not yet handled, oldest first, each one's ``attempts``
        counted up (a take-over, or a restart); with ``gone(received_by, received_at)``,
        only those it says were left behind; never those in ``skip`` (in hand already)."""

    @abstractmethod
    async def pending_of(self, phone: str, up_to: int) -> list[Inbound]:
        """``phone``'s messages not yet handled, up to inbound id ``up_to``, oldest first.

        Called first thing in a turn (``phone_turns``): a shared store may answer with what
        it read as it took the phone's lock, in the same round trip.
        """

    @abstractmethod
    async def routing_context(
        self, phone: str, tracking_id: int | None
    ) -> RoutingContext:
        """The sent message named by ``tracking_id``, its conversation, and the phone's open one.

        It sees every commit that finished before the call (the engine handles a phone's
        messages one after another, so a turn sees the one before it).
        """

    @abstractmethod
    async def commit(self, change: Commit, now: float) -> Committed:
        """Apply a turn atomically; returns the conversation id, the new outbox ids and the
        rows claimed for ``change.claim_for``."""

    @abstractmethod
    async def commit_many(
        self, changes: list[Commit], now: float
    ) -> list[Committed | ConcurrentUpdateError]:
        """``commit`` each change atomically on its own, in one call; a change that conflicts
        gives its ConcurrentUpdateError in its place instead of raising."""

    @abstractmethod
    async def open_conversations(self, phones: list[str]) -> dict[str, Conversation]:
        """The open conversations of ``phones``, by phone (those with none are left out)."""

    @abstractmethod
    async def conversation(self, conversation_id: int) -> Conversation | None:
        """One conversation by id."""


class OutboxStore(ABC):
    """The outbox queue: claims, sends recorded, retries, what a crash left."""

    @abstractmethod
    async def claim_outbox(self, limit: int, now: float, claimer: str = "") -> list[Outgoing]:
        """Take up to ``limit`` due messages for sending, oldest first, one per phone.

        A message is never taken while an earlier one to the same phone is queued or being
        sent, so each phone's messages leave in order.
        """

    @abstractmethod
    async def mark_sent(
        self,
        outbox_id: int,
        message_id: int,
        now: float,
        rules: DeliveryRules,
        *,
        claimer: str | None = None,
    ) -> None:
        """Record the provider's ``message_id`` for a sent message.

        Statuses that arrived before it are applied now, by ``rules`` as in
        ``record_status``, and a question that went late has its timers moved as
        ``rules.late_shift`` says. With ``claimer`` (here and in ``mark_failed`` and
        ``requeue``), only while the row is still ``sending`` under that claim: a sender
        whose claim another process took over (its heartbeat had stopped) changes nothing.
        """

    @abstractmethod
    async def mark_failed(
        self, outbox_id: int, reason: str, now: float, *, claimer: str | None = None
    ) -> None:
        """Record that a message will not be sent, and why."""

    @abstractmethod
    async def requeue(
        self, outbox_ids: Iterable[int], reason: str, due_at: float = 0.0, *, tried: bool = True,
        claimer: str | None = None,
    ) -> None:
        """Put claimed messages back in the queue, to be sent again from ``due_at``.

        ``tried=False`` (sending paused or stopping) does not count the claim as an attempt.
        """

    @abstractmethod
    async def reset_sending(
        self, abandoned: Callable[[str | None, float], bool]
    ) -> tuple[int, int]:
        """Deal with messages claimed by senders that are gone; returns (requeued, held).

        ``abandoned(claimed_by, claimed_at)`` says whether a claim's sender is gone; a live
        sender in another process keeps its rows. A row claimed under a name ending in
        ``/hold`` (a campaign's sender) is not sent again but marked ``uncertain``: the
        request may have reached the provider before the process died.
        """

    @abstractmethod
    async def queue_size(self, now: float) -> QueueSize:
        """Queued messages: due by ``now``, waiting for a later try, and of those the ones
        waiting for the end of their phone's quiet hours."""

    @abstractmethod
    async def send_slots(self, count: int, rate: float) -> float:
        """Take ``count`` send starts, ``1/rate`` apart, from the account's rate shared by
        every process on the store; returns the seconds from the return until the first may
        start (below 0 when it passed while the call was finishing)."""

    @abstractmethod
    async def resend_uncertain(
        self, flow: str | None = None, *, template: str | None = None
    ) -> int:
        """Queue ``uncertain`` messages (of ``flow``, of ``template``) again, on the
        operator's word."""


class TimerStore(ABC):
    """Durable timers: the due ones, and the ones that no longer apply."""

    @abstractmethod
    async def due_timers(self, now: float, limit: int) -> list[Timer]:
        """Pending timers due by ``now``, earliest first."""

    @abstractmethod
    async def skip_timer(self, timer_id: int, reason: str, now: float) -> bool:
        """Mark a pending timer skipped (it no longer applies); False if it was not pending."""

    @abstractmethod
    async def postpone_timers(self, timer_id: int, conversation_id: int, by: float) -> bool:
        """Move every pending timer of the conversation, and its expiry, ``by`` seconds later,
        in one transaction (a timer that would speak in the phone's quiet hours: the
        conversation's clock stops for the night); False if ``timer_id`` was not pending."""


class StatusStore(ABC):
    """Delivery statuses: kept as they come, and the messages to poll."""

    @abstractmethod
    async def record_status(
        self,
        update: StatusUpdate,
        now: float,
        rules: DeliveryRules,
    ) -> StatusChange | None:
        """Store a delivery status; returns what it changed, or None if no message matched.

        ``rules`` say whether the status moves the message on and which timers the change
        starts; they are created in the same transaction (e.g. "undelivered" at once,
        "unanswered" later).
        """

    @abstractmethod
    async def unconfirmed(self, sent_before: float, sent_after: float, limit: int,
                          now: float | None = None) -> list[tuple[int, int]]:
        """(outbox id, message_id) of sent messages without a final status, least polled
        first. A shared store marks them polled at ``now`` as it picks them, so that another
        process does not ask for them too."""

    @abstractmethod
    async def mark_polled(self, outbox_ids: Iterable[int], now: float) -> None:
        """Record that these messages' statuses were just asked for."""


class ReportStore(ABC):
    """What the command line (and later the console) reads, and the operator's release of a conversation with a human."""

    @abstractmethod
    async def versions(self) -> list[dict[str, Any]]:
        """Conversations per flow and flow version: ``flow``, ``version``, ``open``, ``total``."""

    @abstractmethod
    async def funnel(self, flow: str, since: float | None = None, until: float | None = None,
                     variants: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
        """The counts behind ``run.py stats FLOW`` and the console's funnel: of the
        conversations started in ``[since, until)`` (all when not given), and of their
        messages and timers (the shape: ``storage.rows.funnel_report``). With ``variants``
        (the variant templates of each A/B-tested step) the report has ``variants`` too:
        the step's figures split by variant (``storage.rows.variant_report``)."""

    @abstractmethod
    async def health(self) -> dict[str, Any]:
        """Counts for ``/healthz``: queued and failed outbox rows, pending inbound rows."""

    @abstractmethod
    async def backlog(self, now: float) -> dict[str, float]:
        """What waits longer than it should, for ``/metrics``, each from an index:
        ``outbox_oldest`` (when the oldest message still queued or being sent was queued;
        0 when none is) and ``timers_due`` (timers due by ``now`` and not fired yet)."""

    @abstractmethod
    async def conversations(
        self, *, phone: str | None = None, flow: str | None = None, status: str | None = None,
        since: float | None = None, until: float | None = None, limit: int = 100,
    ) -> list[Conversation]:
        """Conversations, most recently active first: of ``phone``, of ``flow``, in
        ``status``, active in ``[since, until)`` (changed since ``since``, started before
        ``until``), each filter when given."""

    @abstractmethod
    async def history(self, phone: str, limit: int = 50) -> list[LogEntry]:
        """The phone's last messages in and out across its conversations, oldest first (read
        from the ``inbound_phone`` and ``outbound_phone`` indexes)."""

    @abstractmethod
    async def release(self, phone: str, now: float) -> Conversation | None:
        """Close the phone's conversation with a human agent; returns it, or None."""

    @abstractmethod
    async def activity_mark(self) -> tuple[Any, ...]:
        """A value that changes when a message comes in or goes out, a status arrives, an
        agent acts or a conversation is handed to a human or back (the console's live
        pages): the newest ids of those tables and the count of conversations with a
        human, each read from an index."""

    @abstractmethod
    async def human_conversations(self, limit: int = 200) -> list[tuple[Conversation, float]]:
        """Conversations with a human agent and since when each waits (the time of the
        message its flow handed it over at), the longest waiting first (the console's
        inbox)."""


class ConsoleStore(ABC):
    """The operator console's: its users, who has which conversation, what agents did."""

    @abstractmethod
    async def add_user(self, user: User) -> None:
        """Add ``user``; UserExistsError when the name is taken."""

    @abstractmethod
    async def user(self, name: str) -> User | None:
        """The user called ``name``, or None."""

    @abstractmethod
    async def users(self) -> list[User]:
        """Every user, by name."""

    @abstractmethod
    async def remove_user(self, name: str) -> bool:
        """Remove the user called ``name``; False when there is none."""

    @abstractmethod
    async def set_password(self, name: str, password_hash: str) -> bool:
        """Store a new password hash for ``name``; False when there is no such user."""

    @abstractmethod
    async def take(self, conversation_id: int, agent: str, now: float, *,
                   over: bool = False) -> str | None:
        """Give the conversation to ``agent``: None when it is theirs now, else the name of
        the agent who has it (it stays theirs unless ``over``). A take is recorded as an
        action (``took``, or ``took_over`` naming whom it was taken from)."""

    @abstractmethod
    async def holders(self, conversation_ids: Collection[int]) -> dict[int, str]:
        """Who has each of the conversations that someone has."""

    @abstractmethod
    async def record_action(self, action: AgentAction, *, drop: bool = False) -> None:
        """Record what an agent did; ``drop``: the conversation is nobody's any more."""

    @abstractmethod
    async def actions(self, conversation_id: int) -> list[AgentAction]:
        """What agents did to the conversation, in order."""


class CampaignStore(ABC):
    """The record of campaign runs (``run.py start``, ``run.py notify``) and how far each
    got: its messages are the outbox rows committed with its id (``Commit.campaign_id``)."""

    @abstractmethod
    async def begin_campaign(self, kind: str, name: str, total: int, now: float) -> int:
        """Record that a run of ``kind`` ("start" or "notify") of ``name`` (the flow or the
        template) for ``total`` phones begins in this process; its id. A re-run is a new
        record."""

    @abstractmethod
    async def campaign_seen(self, campaign_id: int, begun: int, skipped: int,
                            now: float) -> None:
        """Record how many phones the run has begun and skipped so far, and that its process
        was alive at ``now``."""

    @abstractmethod
    async def end_campaign(self, campaign_id: int, outcome: str, now: float, *,
                           begun: int, skipped: int) -> None:
        """Record that the run ended at ``now``, and how: "done", "stopped" or "failed"."""

    @abstractmethod
    async def campaigns(self, limit: int = 50) -> list[CampaignRun]:
        """The latest runs, the newest first."""

    @abstractmethod
    async def campaign_progress(self, campaign_ids: Collection[int],
                                since: float) -> dict[int, CampaignCounts]:
        """The messages of each run by status (runs with none yet are left out); ``recent``
        counts those sent at ``since`` or later. Read from the index of campaigns' messages
        alone."""


class ConsentStore(ABC):
    """The suppression list (docs/consent.md): the phones that opted out, to which nothing is
    sent (the ``outbound_opted_out`` trigger refuses their messages as they are queued), and
    opting in and out outside a turn. A turn's own change comes with its commit
    (``Commit.consent``)."""

    @abstractmethod
    async def suppression(self, phone: str) -> Suppression | None:
        """The phone's entry on the list, or None."""

    @abstractmethod
    async def suppressions(self, limit: int | None = None) -> list[Suppression]:
        """The list, the latest first (all of it without ``limit``)."""

    @abstractmethod
    async def suppressed_among(self, phones: Collection[str]) -> set[str]:
        """Which of ``phones`` are on the list (a campaign skips them)."""

    @abstractmethod
    async def phone_counts(
        self, phones: Collection[str], now: float, unanswered: int, proactive: int
    ) -> dict[str, PhoneCounts]:
        """What the per-phone limits count for each of ``phones`` (``PhoneCounts``), each
        count read up to its limit only (0: not read)."""

    @abstractmethod
    async def phone_data(self, phone: str) -> dict[str, list[dict[str, Any]]]:
        """Every row kept about ``phone``, by table (``storage.rows.PHONE_DATA``), read in
        one snapshot: a subject-access request's answer (``run.py export-phone``)."""

    @abstractmethod
    async def forget(self, phone: str, now: float) -> dict[str, int]:
        """Erase what is kept about ``phone`` in one transaction (``storage.rows.FORGET_SQL``):
        its conversations, messages, their statuses, timers and the agents' records of
        them; rows removed by table. Kept: its suppression entry, and keyed hashes of its
        message tokens, so a late duplicate callback is still recognised."""

    @abstractmethod
    async def set_consent(self, change: ConsentChange, now: float) -> bool:
        """Put the phone on the list (its open conversation closes as ``opted_out``, its
        timers are cancelled) or take it off, recorded in ``consent_events``; False when
        nothing changed."""


class Store(Admin, TurnStore, OutboxStore, TimerStore, StatusStore, ReportStore, ConsoleStore,
            CampaignStore, ConsentStore):
    """Everything botkit keeps: all the roles, as one engine (``SQLiteStore``) implements them.

    A part of the runtime asks for the role it uses (the sender an ``OutboxStore``, the
    sweeper a ``TimerStore``), so a second engine can be built and tested one role at a time.
    """
