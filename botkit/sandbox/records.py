"""What the fake provider keeps: the messages it accepted, the callbacks it posted, and the
events the web chat streams (``EventLog``)."""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from botkit.models import MessageStatus, SendRequest

__all__ = ["EVENT_HISTORY", "CallbackRecord", "CallbackResult", "DEFAULT_TTL", "EventLog",
           "SentMessage"]

DEFAULT_TTL = 86400.0  # "Viber will try to deliver the message for up to 1 day" (provider docs)
EVENT_HISTORY = 10_000  # events kept for the web chat's history


@dataclass(kw_only=True)
class SentMessage:
    """A message the fake provider accepted, with everything it received and its statuses.

    ``history`` lists ``(status, clock time)`` pairs; the last one is the current status (a
    ``MessageStatus``, or any number a test set with ``deliver``). ``sms_message_id`` and
    ``sms_status`` are set once the SMS fallback went out.

    Example: ``assert provider.message(1000).status == MessageStatus.DELIVERED``
    """

    message_id: int
    request: SendRequest
    body: dict[str, Any]
    headers: dict[str, str]
    received_at: float
    history: list[tuple[int, float]] = field(default_factory=list)
    sms_message_id: int | None = None
    sms_status: int | None = None

    @property
    def status(self) -> int:
        """The current status (pending until the life cycle moves it)."""
        return self.history[-1][0] if self.history else MessageStatus.PENDING

    @property
    def phone(self) -> str:
        """The recipient, as validated (``destination_addr`` numbers become strings)."""
        return self.request.destination_addr

    @property
    def two_way(self) -> bool:
        """True for 206/208 messages, the ones a user can answer."""
        return self.request.message_type.two_way

    @property
    def expires_at(self) -> float:
        """Clock time after which an undelivered message becomes undelivered (4)."""
        ttl = self.request.validity_period
        return self.received_at + (DEFAULT_TTL if ttl is None else ttl)


class CallbackRecord(NamedTuple):
    """One callback POST the provider made: its URL, JSON body, and HTTP status or error."""

    url: str
    body: dict[str, Any]
    outcome: int | str


@dataclass(frozen=True, kw_only=True)
class CallbackResult:
    """What the bot server answered to a callback: HTTP status and JSON (or text) body.

    ``status`` is None and ``error`` says why when the POST itself failed.

    Example: ``assert (await provider.reply("380501112233", "Ana")).ok``
    """

    url: str
    payload: dict[str, Any]
    status: int | None
    data: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the bot server answered with a 2xx status."""
        return self.status is not None and 200 <= self.status < 300


class EventLog:
    """The provider's events, numbered, kept for a while, and told to listeners (the chat).

    Events are numbered per provider: a restarted sandbox numbers from 1 again, and the chat
    tells its events from the old ones by ``epoch``.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.epoch = secrets.token_hex(4)
        self._events: deque[dict[str, Any]] = deque(maxlen=EVENT_HISTORY)
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._seq = 0

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``listener`` with every event from now on; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def of(self, phone: str) -> list[dict[str, Any]]:
        """The recent events of one phone, oldest first."""
        return [e for e in self._events if _same_phone(e["phone"], phone)]

    def emit(self, event: dict[str, Any]) -> None:
        """Number ``event``, keep it, and tell every listener."""
        self._seq += 1
        event["seq"] = self._seq
        event["epoch"] = self.epoch
        event.setdefault("at", self.clock())  # shown as the bubble's time
        self._events.append(event)
        for listener in list(self._listeners):
            listener(event)


def bot_event(msg: SentMessage) -> dict[str, Any]:
    """The event of a message the bot sent, as the chat shows it."""
    r = msg.request
    button = {"caption": r.button_caption, "url": r.button_action} if r.button_caption else None
    return {"kind": "bot", "phone": msg.phone, "id": msg.message_id, "text": r.text,
            "type": int(r.message_type), "image": r.image, "button": button,
            "status": int(msg.status)}


def _same_phone(a: str, b: str) -> bool:
    return a.lstrip("+") == b.lstrip("+")
