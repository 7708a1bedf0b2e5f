"""One-time login links: the sandbox's way in for a newcomer, with one click.

``python run.py`` on the sandbox prints a link that logs its opener in as the local admin
``sandbox``; it works once, within ``TTL`` seconds, in the process that printed it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

__all__ = ["SANDBOX_ADMIN", "TTL", "LoginLinks"]

SANDBOX_ADMIN = "sandbox"
TTL = 3600.0


class LoginLinks:
    """Tokens that each log one user in, once."""

    def __init__(self, ttl: float = TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._tokens: dict[str, tuple[str, float]] = {}

    def issue(self, name: str) -> str:
        """A new token that logs ``name`` in (192 random bits)."""
        token = secrets.token_urlsafe(24)
        self._tokens[token] = (name, self.clock() + self.ttl)
        return token

    def take(self, token: str) -> str | None:
        """The user ``token`` logs in, once; None when it is unknown, used or too old."""
        found = self._tokens.pop(token, None)
        if found is None or self.clock() > found[1]:
            return None
        return found[0]
