"""Routing policy: which step (if any) handles a user's message. Pure, no I/O.

The rules, in order (docs/routing.md explains them with examples):

1. The reply's ``tracking_data`` names a message this bot sent in an open conversation:
   - it asked the conversation's current step: that step handles it (``STEP``);
   - it asked an earlier step (a *stale* answer): the earlier step handles it if it was
     declared ``accept_late=True`` (``STEP``, ``late``), else the current step is asked
     again (``STALE``);
   - the conversation is with a human agent: the message is only recorded (``HUMAN``).
2. No tracking data, an id this bot never sent, or a closed conversation: the phone's open
   conversation gets it at its current step (``STEP``) or, when handed off, ``HUMAN``.
3. No open conversation: a keyword starts a flow (``START`` asks its first step; a step's
   own keyword hands it the message, ``ENTRY``); anything else starts the default flow
   (``Flow(default="ask")``: ``START``; ``default="handle"``: ``ENTRY``), or gets the
   fallback reply when no flow is the default.
4. A conversation idle for longer than its flow's ``timeout`` is closed as expired, and the
   message starts fresh: a keyword starts its flow, anything else restarts the expired
   conversation's flow from its first step (``RESTART``); the late text is not applied.

Before all of these, consent (``core.consent``, docs/consent.md): an opt-out keyword closes
the phone's open conversation as ``opted_out`` and puts the phone on the suppression list,
whatever its state (``OPT_OUT``). From a phone on the list, an opt-in keyword takes it off
(``OPT_IN``); anything else is only recorded (``SUPPRESSED``), unless the consent setting
lets a flow's keyword opt the phone in (then it routes as usual, ``opts_in``).

After a deploy, a conversation whose step no longer exists moves to the step its flow's
``migrate`` maps it to (and the message goes there); without a mapping it is closed as
orphaned, the user is told (``botkit/restarted.txt``) and the flow starts again
(``RESTART``). A conversation whose flow no longer exists is closed as orphaned and the
message is routed as if it had none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from botkit.core.consent import Consent
from botkit.core.conversation import Conversation, SentRef, Status
from botkit.core.flows import FlowSet, Step
from botkit.core.records import Suppression
from botkit.core.turn import Message

__all__ = ["RESTARTED_TEMPLATE", "Route", "RouteKind", "route"]

RESTARTED_TEMPLATE = "botkit/restarted.txt"


class RouteKind(str, Enum):
    """What the engine does with a message."""

    STEP = "step"
    STALE = "stale"
    RESTART = "restart"
    START = "start"
    ENTRY = "entry"
    HUMAN = "human"
    FALLBACK = "fallback"
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    SUPPRESSED = "suppressed"


@dataclass(frozen=True, kw_only=True)
class Route:
    """The decision for one message, with the conversations it closes on the way."""

    kind: RouteKind
    reason: str
    conversation: Conversation | None = None
    step: Step | None = None
    late: bool = False
    close: tuple[tuple[Conversation, Status], ...] = ()
    notice: str | None = None  # a template sent before the step's prompt (RESTART)
    answered: str | None = None  # the earlier step a STALE answer answers
    keyword: str | None = None  # the consent keyword of OPT_OUT and OPT_IN
    opts_in: bool = False  # the phone comes off the suppression list with this turn
    repeated: bool = False  # an OPT_OUT from a phone already on the list: no confirmation


def route(
    message: Message,
    *,
    sent: SentRef | None,
    tracked: Conversation | None,
    active: Conversation | None,
    flows: FlowSet,
    now: float,
    suppressed: Suppression | None = None,
    consent: Consent | None = None,
) -> Route:
    """Decide where ``message`` goes.

    ``sent`` is the bot's message named by the tracking data (None if unknown), ``tracked``
    its conversation, ``active`` the phone's open conversation, ``suppressed`` the phone's
    entry on the suppression list, ``consent`` the opt-out and opt-in keywords (None: none).
    """
    asked = consent.match(message.text) if consent is not None else None
    if asked is not None and asked[0] == "opt_out":
        closing = tuple((c, Status.OPTED_OUT) for c in _unique(tracked, active)
                        if c.status.is_open)
        return Route(kind=RouteKind.OPT_OUT, reason=f"opt-out keyword {asked[1]!r}",
                     close=closing, keyword=asked[1], repeated=suppressed is not None)
    if suppressed is not None:
        if asked is not None:  # an opt-in keyword
            return Route(kind=RouteKind.OPT_IN, reason=f"opt-in keyword {asked[1]!r}",
                         keyword=asked[1])
        if consent is not None and consent.flow_keyword_opts_in and flows.entry(message.text):
            return replace(route(message, sent=sent, tracked=tracked, active=active,
                                 flows=flows, now=now), opts_in=True)
        return Route(kind=RouteKind.SUPPRESSED, reason="the phone opted out"
                     f" ({suppressed.keyword or suppressed.source}); only recorded")
    tracked, active = _migrated(tracked, flows), _migrated(active, flows)
    close: list[tuple[Conversation, Status]] = []
    restart: Step | None = None
    for candidate in _unique(tracked, active):
        if candidate.status.is_open and _step_of(candidate, flows) is None:
            close.append((candidate, Status.ORPHANED))
            flow = flows.get(candidate.flow)
            restart = flow.first if flow is not None else restart
    closed_ids = {c.id for c, _ in close}
    keyword = flows.entry(message.text) is not None  # a keyword wins, as after expiry
    if restart is not None and not keyword and not (active and active.id not in closed_ids):
        removed = next(c.step for c, _ in close)
        return _with(Route(kind=RouteKind.RESTART, reason=f"step {removed!r} was removed by a"
                           " deploy", step=restart, notice=RESTARTED_TEMPLATE), close)

    if sent is not None and tracked is not None and tracked.status.is_open:
        if tracked.id not in closed_ids:
            answer = _tracked(sent, tracked, flows, now)
            if answer is not None:
                return _with(answer, close)
    if active is not None and active.id not in closed_ids:
        if active.status is Status.HUMAN:
            return _with(Route(kind=RouteKind.HUMAN, reason="conversation is with a human", conversation=active), close)
        if active.expired(now):
            close.append((active, Status.EXPIRED))
            return _fresh(message, flows, close, restart=active.flow)
        step = _step_of(active, flows)
        assert step is not None  # orphans were closed above
        return _with(Route(kind=RouteKind.STEP, reason="open conversation", conversation=active, step=step), close)
    return _fresh(message, flows, close, restart=None)


def _tracked(sent: SentRef, conv: Conversation, flows: FlowSet, now: float) -> Route | None:
    if conv.status is Status.HUMAN:
        return Route(kind=RouteKind.HUMAN, reason="conversation is with a human", conversation=conv)
    if conv.expired(now):
        return None  # rule 4 is applied to the phone's open conversation, which this is
    current = _step_of(conv, flows)
    assert current is not None
    # A step renamed by a deploy (``migrate``) still matches the questions it asked before.
    asked = flows[conv.flow].migrate.get(sent.step or "", sent.step)
    if sent.flow == conv.flow and asked == conv.step:
        return Route(kind=RouteKind.STEP, reason="answer to the current question",
                     conversation=conv, step=current)
    answered = flows[conv.flow].steps.get(asked or "") if sent.flow == conv.flow else None
    if answered is not None and answered.accept_late:
        return Route(kind=RouteKind.STEP, reason=f"late answer to {answered.name!r}",
                     conversation=conv, step=answered, late=True)
    return Route(kind=RouteKind.STALE, reason=f"stale answer to {sent.flow}.{asked}",
                 conversation=conv, step=current, answered=asked)


def _fresh(
    message: Message,
    flows: FlowSet,
    close: list[tuple[Conversation, Status]],
    restart: str | None,
) -> Route:
    entry = flows.entry(message.text)
    if entry is not None:
        step, handles = entry
        kind = RouteKind.ENTRY if handles else RouteKind.START
        return _with(Route(kind=kind, reason=f"keyword {message.text.strip()!r}", step=step), close)
    if restart is not None and restart in flows:
        first = flows[restart].first
        return _with(Route(kind=RouteKind.RESTART, reason="conversation expired", step=first), close)
    default = flows.default_entry()
    if default is not None:
        step, handles = default
        kind = RouteKind.ENTRY if handles else RouteKind.START
        return _with(Route(kind=kind, reason=f"no keyword: the default flow {step.flow!r}",
                           step=step), close)
    return _with(Route(kind=RouteKind.FALLBACK, reason="no conversation and no keyword"), close)


def _migrated(conv: Conversation | None, flows: FlowSet) -> Conversation | None:
    """The conversation at the step its flow's ``migrate`` maps a removed step to."""
    if conv is None or not conv.status.is_open:
        return conv
    flow = flows.get(conv.flow)
    if flow is None or conv.step in flow.steps or conv.step not in flow.migrate:
        return conv
    return replace(conv, step=flow.migrate[conv.step])


def _step_of(conv: Conversation, flows: FlowSet) -> Step | None:
    flow = flows.get(conv.flow)
    return flow.steps.get(conv.step) if flow is not None else None


def _unique(*convs: Conversation | None) -> list[Conversation]:
    seen: dict[int, Conversation] = {}
    for conv in convs:
        if conv is not None:
            seen.setdefault(conv.id, conv)
    return list(seen.values())


def _with(decided: Route, close: list[tuple[Conversation, Status]]) -> Route:
    return replace(decided, close=tuple(close)) if close else decided
