"""The scale-out suite's timer bot: one question, a reminder after 1 s, closed after 2 s."""

from __future__ import annotations

from datetime import timedelta

from botkit import Flow, Turn

nudge = Flow("nudge", keywords=["nudge"], sender="Nudge")


@nudge.step("wait", prompt="nudge/q.txt", remind_after=timedelta(seconds=1),
            remind="nudge/remind.txt", timeout=timedelta(seconds=2),
            on_timeout="nudge/closed.txt")
async def wait(turn: Turn) -> None:
    turn.finish("nudge/closed.txt")
