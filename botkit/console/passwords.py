"""Console passwords: argon2id hashes (argon2-cffi), checked off the event loop.

A hash costs about 64 MiB and tens of milliseconds on purpose (RFC 9106's second profile,
argon2-cffi's default): it runs in a worker thread, so a login never stalls the callbacks.
"""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["MIN_LENGTH", "check_password", "hash_password", "password_problem",
           "unusable_hash"]

MIN_LENGTH = 10
_HASHER = PasswordHasher()
# Checked when the name is unknown, so that a wrong name takes as long as a wrong password.
_DUMMY = _HASHER.hash(secrets.token_urlsafe(16))


def password_problem(password: str) -> str | None:
    """What is wrong with ``password`` as a new password, or None."""
    if len(password) < MIN_LENGTH:
        return f"a password needs at least {MIN_LENGTH} characters"
    if password.strip() != password:
        return "a password cannot start or end with spaces"
    return None


def hash_password(password: str) -> str:
    """The argon2id hash to store for ``password`` (blocking: tens of milliseconds)."""
    return _HASHER.hash(password)


def unusable_hash() -> str:
    """A hash no password is known for: a user who logs in only by a one-time link."""
    return _HASHER.hash(secrets.token_urlsafe(32))


async def check_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (None: an unknown user, checked anyway)."""
    return await asyncio.to_thread(_check, stored, password)


def _check(stored: str | None, password: str) -> bool:
    try:
        _HASHER.verify(stored or _DUMMY, password)
    except (VerificationError, InvalidHashError):
        return False
    return stored is not None
