"""The conversation life cycle as pure rules: which timers a turn starts, whether a due timer
still applies, and which statuses start timers. No I/O; the engine applies them.

Timer kinds (docs/conversations.md has the diagram):

- ``remind``: ``remind_after`` the step was asked, its ``remind`` template is sent (or handler
  run) once; the conversation stays at the step.
- ``timeout``: ``timeout`` after the step was asked, ``on_timeout`` runs, or the conversation
  closes as ``timed_out`` (with the template, if one is named).

  A question the provider took more than ``LATE_SEND`` seconds after its turn (a rate
  limit, an outage) moves its step's ``ASKED`` timers and the conversation's expiry later by
  that delay when the send is recorded (``DeliveryRules.late_shift``, which the store
  applies): they count from when it was sent.
- ``expire``: the flow's ``timeout`` of inactivity; the conversation closes as ``expired``
  (``on_expire`` is sent or run first).
- ``unanswered``: ``unanswered_after`` the question was *delivered* (status 1), if the step
  is still waiting.
- ``undelivered``: the question came back undelivered, rejected or in error (status 4, 3,
  2) while the step was still waiting; ``on_undelivered`` reacts.

Any answer from the user cancels the conversation's pending timers, and the step the turn
leaves the conversation at starts its own. A timer whose conversation has since closed or
moved to another step is skipped, never fired. Timers that came due while the server was
down fire when it is back, except that of several due timers of one conversation only the
latest fires (a due timeout makes its reminder pointless; an expiry, both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

from botkit.core.conversation import Conversation, Status
from botkit.core.flows import Flow, FlowSet, Step
from botkit.core.records import SentQuestion, StatusChange, Timer, TimerShift, TimerSpec
from botkit.models import MessageStatus, is_final_status

__all__ = ["ASKED", "LATE_SEND", "DeliveryRules", "closing_status", "inapplicable",
           "latest_per_conversation", "plan_timers", "status_rank", "status_timers"]

FAILED = {MessageStatus.ERROR, MessageStatus.REJECTED, MessageStatus.UNDELIVERED}
# The timers ``plan_timers`` starts when a step is asked.
ASKED = ("expire", "remind", "timeout")
# A question sent this many seconds after its turn asked it moves its step's ASKED timers.
# Not less: a campaign without a rate limit keeps each message waiting for up to its length
# divided by the send rate (25 s for 100,000 at 4,000/s), a step's timers run minutes to
# hours, and moving them costs the send two more statements.
LATE_SEND = 60.0


def plan_timers(
    flow: Flow,
    step: Step,
    now: float,
    remind_after: timedelta | None = None,
    timeout: timedelta | None = None,
) -> tuple[TimerSpec, ...]:
    """The timers a conversation starts when it is left waiting at ``step``.

    ``remind_after`` and ``timeout`` override the step's own delays (``turn.ask(...)``).
    """
    timers = [TimerSpec(kind="expire", flow=flow.name, step=step.name,
                        due_at=now + flow.timeout.total_seconds())]
    remind_after = remind_after or step.remind_after
    if step.remind is not None and remind_after is not None:
        timers.append(TimerSpec(kind="remind", flow=flow.name, step=step.name,
                                due_at=now + remind_after.total_seconds()))
    timeout = timeout or step.timeout
    if timeout is not None:
        timers.append(TimerSpec(kind="timeout", flow=flow.name, step=step.name,
                                due_at=now + timeout.total_seconds()))
    return tuple(timers)


def status_timers(flows: FlowSet, change: StatusChange, now: float) -> list[TimerSpec]:
    """Timers a delivery status starts for the question it is about, if still waiting."""
    conv = change.conversation
    if conv is None or conv.status is not Status.ACTIVE or not change.question:
        return []  # only the message that asks a step (not a reminder or a goodbye) counts
    if (change.flow, change.step) != (conv.flow, conv.step):
        return []  # not the question the conversation waits on
    flow = flows.get(conv.flow)
    step = flow.steps.get(conv.step) if flow else None
    if step is None:
        return []
    if change.new in FAILED and step.on_undelivered is not None:
        return [TimerSpec(kind="undelivered", flow=conv.flow, step=conv.step, due_at=now,
                          message_id=change.message_id)]
    if change.new == MessageStatus.DELIVERED and step.unanswered_after is not None:
        due = now + step.unanswered_after.total_seconds()
        return [TimerSpec(kind="unanswered", flow=conv.flow, step=conv.step, due_at=due,
                          message_id=change.message_id)]
    return []


_RANK: dict[int, int] = {MessageStatus.PENDING: 1, MessageStatus.SENT: 2}


def status_rank(status: int | None) -> int:
    """How far a delivery status is: none < unknown (20 or any undocumented number) <
    pending < sent < final. A message's status only ever moves to a higher rank.

    >>> status_rank(1) > status_rank(0) > status_rank(5) > status_rank(7) > status_rank(None)
    True
    """
    if status is None:
        return -1
    if is_final_status(status):
        return 3
    return _RANK.get(status, 0)


@dataclass(frozen=True)
class DeliveryRules:
    """The rules the store applies as it records sends and statuses, without importing them.

    Whoever records those needs them: the server for status callbacks and polls, and every
    sender, for the statuses that reached the store before its send was recorded.

    >>> Sender(store, client, rules=DeliveryRules(flows, clock))
    """

    flows: FlowSet
    clock: Callable[[], float]

    def timers_for(self, change: StatusChange) -> list[TimerSpec]:
        """The timers a status change starts (``status_timers``)."""
        return status_timers(self.flows, change, self.clock())

    @staticmethod
    def advances(current: int | None, new: int) -> bool:
        """Whether ``new`` replaces a message's ``current`` status: it never moves back."""
        return status_rank(new) > status_rank(current)

    @staticmethod
    def furthest(statuses: Iterable[int]) -> int | None:
        """Of statuses that arrived before the send was recorded, the one that stands (the
        first of the highest rank, as if each had been applied on arrival)."""
        best: int | None = None
        for status in statuses:
            if status_rank(status) > status_rank(best):
                best = status
        return best

    @staticmethod
    def late_shift(sent: SentQuestion, now: float) -> TimerShift | None:
        """A question sent more than ``LATE_SEND`` seconds after its turn asked it (a rate
        limit, an outage): its step's ``ASKED`` timers and the expiry count from the send.

        A question that waited for quiet hours to end had its timers planned from then: it
        is late only by what it took after that."""
        late = now - max(sent.created_at, sent.held_until or 0.0)
        if not sent.question or sent.conversation_id is None or late <= LATE_SEND:
            return None
        if sent.flow is None or sent.step is None:
            return None
        return TimerShift(conversation_id=sent.conversation_id, flow=sent.flow,
                          step=sent.step, kinds=ASKED, by=late)


def inapplicable(timer: Timer, conv: Conversation | None, flows: FlowSet) -> str | None:
    """Why a due timer must be skipped, or None if it fires.

    An expiry still fires when a deploy removed the step (the conversation closes); other
    timers of a removed step are skipped.
    """
    if conv is None or conv.status is not Status.ACTIVE:
        return "the conversation is closed"
    if (conv.flow, conv.step) != (timer.flow, timer.step):
        return f"the conversation moved on to {conv.flow}.{conv.step}"
    flow = flows.get(conv.flow)
    if timer.kind != "expire" and (flow is None or conv.step not in flow.steps):
        return "the flow no longer has this step"
    return None


def latest_per_conversation(timers: Iterable[Timer]) -> tuple[list[Timer], list[Timer]]:
    """Split due timers into those that fire (the latest-due of each conversation) and the
    ones they supersede."""
    latest: dict[int, Timer] = {}
    superseded: list[Timer] = []
    for timer in timers:
        other = latest.get(timer.conversation_id)
        if other is None:
            latest[timer.conversation_id] = timer
        elif (timer.due_at, timer.id) > (other.due_at, other.id):
            superseded.append(other)
            latest[timer.conversation_id] = timer
        else:
            superseded.append(timer)
    return list(latest.values()), superseded


def closing_status(kind: str) -> Status:
    """How a conversation closes when an event turn finishes it (or by default)."""
    return {
        "timeout": Status.TIMED_OUT,
        "expire": Status.EXPIRED,
        "undelivered": Status.UNREACHABLE,
    }.get(kind, Status.DONE)
