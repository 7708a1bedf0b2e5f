"""Crash points: places where a test can make the process die abruptly, to prove recovery.

``BOTKIT_CRASH_AT=point:n`` kills the process (SIGKILL, no cleanup) the n-th time execution
reaches ``point``. Unset, ``hit()`` costs one comparison. The points:

- ``after_inbound_stored``: a user's message is committed, the provider not yet answered 200;
- ``after_turn_commit``: a turn's state and outbox are committed, nothing sent yet;
- ``after_send_request``: the provider accepted a message, its ``message_id`` not recorded;
- ``after_send_recorded``: the ``message_id`` is recorded.

This is a process-wide test hook, armed once at server start (the one deliberate global).
"""

from __future__ import annotations

import logging
import os
import signal

from botkit.errors import ConfigError

__all__ = ["POINTS", "arm", "hit"]

log = logging.getLogger("botkit.crash")

POINTS = ("after_inbound_stored", "after_turn_commit", "after_send_request",
          "after_send_recorded")

_armed: list[str | int] = []  # [point, hits left] when armed


def arm(spec: str | None) -> None:
    """Arm a crash point from ``"point:n"`` (None disarms)."""
    _armed.clear()
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise ConfigError(
            f"BOTKIT_CRASH_AT: {spec!r} is not POINT:N with POINT one of {', '.join(POINTS)}"
        )
    _armed.extend([point, int(count)])
    log.warning("crash point armed: the process dies at hit %s of %s", count, point)


def hit(point: str) -> None:
    """Count a pass through ``point``; die here if it is the armed hit."""
    if not _armed or _armed[0] != point:
        return
    _armed[1] = int(_armed[1]) - 1
    if _armed[1] == 0:
        log.warning("crash point %s reached: killing the process", point)
        os.kill(os.getpid(), signal.SIGKILL)
