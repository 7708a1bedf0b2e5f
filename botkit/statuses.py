"""The provider's numbers: message types, delivery statuses and SMS fallback statuses, and how
they read to people (``delivered (1)``, ``unknown (7)``).
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["MessageStatus", "MessageType", "SmsStatus", "is_final_status", "sms_status_label",
           "status_label"]


class MessageType(IntEnum):
    """The provider's message types: 2Way (206, 208) for questions, one-way (106, 108) for
    notices."""

    TEXT = 106
    RICH = 108
    TWO_WAY_TEXT = 206
    TWO_WAY_RICH = 208

    @property
    def two_way(self) -> bool:
        """True for the types a user can answer (the provider tracks the last of them)."""
        return self in (MessageType.TWO_WAY_TEXT, MessageType.TWO_WAY_RICH)


class MessageStatus(IntEnum):
    """The documented delivery statuses of ``/receive-viber`` and status callbacks.

    Other numbers may come (Viber itself knows "seen"): botkit stores them as they came
    (``DeliveryStatus`` is any int) and shows them as ``unknown (N)``.
    """

    SENT = 0
    DELIVERED = 1
    ERROR = 2
    REJECTED = 3
    UNDELIVERED = 4
    PENDING = 5
    UNKNOWN = 20

    @property
    def is_final(self) -> bool:
        """Delivered, error, rejected and undelivered never change again."""
        return self in _FINAL


_FINAL = frozenset({MessageStatus.DELIVERED, MessageStatus.ERROR, MessageStatus.REJECTED,
                    MessageStatus.UNDELIVERED})


def is_final_status(status: int | None) -> bool:
    """Whether a status number is final (delivered, error, rejected, undelivered).

    >>> is_final_status(4), is_final_status(7)
    (True, False)
    """
    return status in _FINAL


def status_label(status: int | None) -> str:
    """A delivery status for people: ``delivered (1)``, ``unknown (7)``, ``none``.

    >>> status_label(4), status_label(7)
    ('undelivered (4)', 'unknown (7)')
    """
    if status is None:
        return "none"
    try:
        return f"{MessageStatus(status).name.lower()} ({status})"
    except ValueError:
        return f"unknown ({status})"


class SmsStatus(IntEnum):
    """The status of the SMS fallback of a Viber + SMS message (``sms_message_status``)."""

    DELIVERED = 2
    EXPIRED = 3
    UNDELIVERABLE = 5


def sms_status_label(status: int | None) -> str:
    """An SMS fallback status for people: ``delivered (2)``, ``unknown (9)``.

    >>> sms_status_label(5)
    'undeliverable (5)'
    """
    if status is None:
        return "none"
    try:
        return f"{SmsStatus(status).name.lower()} ({status})"
    except ValueError:
        return f"unknown ({status})"
