"""The records the store hands out: a conversation and a message the bot sent.

Plain frozen dataclasses, so routing and the engine never see SQL rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["Conversation", "Status", "SentRef"]


class Status(str, Enum):
    """Where a conversation is in its life.

    ``active`` and ``human`` are open (at most one open conversation per phone); the
    others are closed for good.
    """

    ACTIVE = "active"
    HUMAN = "human"  # handed to a person: no auto-replies until released
    DONE = "done"
    GAVE_UP = "gave_up"  # a step's retries ran out
    EXPIRED = "expired"  # no activity for the flow's timeout
    TIMED_OUT = "timed_out"  # a step's timeout ran out
    UNREACHABLE = "unreachable"  # its question could not be delivered
    RELEASED = "released"  # a human conversation released by the operator
    REPLACED = "replaced"  # another flow was started for the phone
    ORPHANED = "orphaned"  # its flow or step no longer exists after a deploy
    OPTED_OUT = "opted_out"  # the user wrote an opt-out keyword (docs/consent.md)

    @property
    def is_open(self) -> bool:
        """True for conversations that still receive the user's messages."""
        return self in (Status.ACTIVE, Status.HUMAN)


@dataclass(frozen=True, kw_only=True)
class Conversation:
    """A conversation as stored: who, which flow and step, its state, and its clock."""

    id: int
    phone: str
    flow: str
    step: str
    status: Status
    state: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    version: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    expires_at: float = 0.0
    locale: str | None = None  # the language it speaks (docs/languages.md); None: the default

    def expired(self, now: float) -> bool:
        """True when the flow's inactivity timeout has run out (human conversations never do)."""
        return self.status is Status.ACTIVE and now >= self.expires_at


@dataclass(frozen=True)
class SentRef:
    """A message the bot sent, found by the provider ``message_id`` in a reply's tracking data."""

    message_id: int
    conversation_id: int | None
    flow: str | None
    step: str | None
