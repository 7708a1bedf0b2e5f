"""What a handler's Turn does to its conversation: the change, the replies, the timers.

Pure: the engine hands it the turn and the conversation as read, and commits what it says.
"""

from __future__ import annotations

from dataclasses import dataclass

from botkit.core.conversation import Conversation, Status
from botkit.core.flows import Flow, FlowSet, Step
from botkit.core.lifecycle import closing_status, plan_timers
from botkit.core.records import ConversationChange, TimerSpec
from botkit.core.turn import Reply, Turn

__all__ = ["Outcome", "outcome_of"]


@dataclass(kw_only=True)
class Outcome:
    """A turn's result before it becomes a Commit."""

    change: ConversationChange | None
    replies: list[tuple[Reply, Flow | None]]
    step: str | None
    timers: tuple[TimerSpec, ...] = ()
    reset_timers: bool = True
    did: str | None = None
    question: bool = False  # the last reply asks ``step`` (its statuses can start timers)


def outcome_of(
    flows: FlowSet, turn: Turn, conv: Conversation | None, step: Step, now: float
) -> Outcome:
    """What a handler's Turn does to its conversation, and the timers that follow."""
    flow = flows[step.flow]
    current = conv.step if conv else step.name  # a late answer leaves the current step
    t, event = turn.transition, turn.event
    # Events and late turns that do not end leave the current step's retry count alone.
    keep_retries = conv is not None and (turn.late or (event not in (None, "stale")))
    retries = conv.retries if conv is not None and keep_retries else turn.retries
    status, target_flow, target_step = Status.ACTIVE, flow, current
    if t is not None:
        if t.kind in ("ask", "switch"):
            target_flow, target_step, retries = flows[t.flow], t.step or current, 0
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
    unchanged = (conv is not None and not reset and turn.state == conv.state
                 and not turn.switched_locale)
    if unchanged:
        assert conv is not None
        return Outcome(change=None, replies=[(r, flow) for r in turn.replies],
                        step=conv.step, reset_timers=False, did="stay")
    expires = (now + target_flow.timeout.total_seconds()) if reset or conv is None else (
        conv.expires_at)
    change = ConversationChange(
        phone=turn.phone, flow=target_flow.name, step=target_step, status=status,
        state=turn.state, retries=retries, expires_at=expires,
        id=conv.id if conv else None, expected_version=conv.version if conv else 0,
        flow_version=target_flow.version_id, locale=turn.locale,
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
    return Outcome(change=change, replies=[(r, flow) for r in turn.replies], step=asked,
                    timers=timers, reset_timers=reset, did=did, question=question)
