"""What the runtime needs of the provider's API: the two calls, as a Protocol.

``web.client.ProviderClient`` is the one that speaks HTTP; the runtime is handed it (or any
object with these methods) and never imports aiohttp.
"""

from __future__ import annotations

from typing import Any, Protocol

from botkit.models import SendResult, StatusResult

__all__ = ["ProviderAPI"]


class ProviderAPI(Protocol):
    """Sends messages and reads statuses; raises ``ProviderError`` subclasses."""

    async def send_checked(self, payload: dict[str, Any]) -> SendResult:
        """Send a body already checked as a ``SendRequest``; returns its ``message_id``."""

    async def get_status(self, message_id: int) -> StatusResult:
        """The delivery status of a message of the last 5 days."""
