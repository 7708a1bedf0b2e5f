"""Small flows used by the framework's own tests (templates in tests/tpl/demo)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from botkit import Flow, Turn

TEMPLATES = Path(__file__).parent / "tpl"

demo = Flow("demo", keywords=["demo", "start demo"], timeout=timedelta(hours=1),
            error="demo/error.txt", sender="Demo")
echo = Flow("echo", sender="Echo")


@demo.step("one", prompt="demo/ask_one.txt", accept_late=True)
async def one(turn: Turn) -> None:
    if turn.text == "boom":
        raise RuntimeError("boom in step one")
    turn.state["one"] = turn.text
    if turn.late:
        turn.say("demo/said.txt", text=turn.text)
        return
    turn.ask("two")


@demo.step("two", prompt="demo/ask_two.txt", retries=2, give_up="demo/bye.txt")
async def two(turn: Turn) -> None:
    if not turn.text.isdigit():
        return turn.retry("demo/again.txt")
    turn.state["two"] = int(turn.text)
    turn.ask("three")


@demo.step("three", prompt="demo/ask_three.txt")
async def three(turn: Turn) -> None:
    if turn.text == "switch":
        turn.switch("echo")
    elif turn.text == "human":
        turn.handoff()
    else:
        turn.state["three"] = turn.text
        turn.finish("demo/done.txt")


@echo.step("echo", prompt="demo/echo_prompt.txt", keywords=["echo"])
async def echo_step(turn: Turn) -> None:
    turn.say("demo/said.txt", text=turn.text)


async def undelivered(turn: Turn) -> None:
    if turn.state.get("resent"):
        return turn.finish()
    turn.state["resent"] = True
    turn.ask("q")


async def on_stale(turn: Turn) -> None:
    turn.say("demo/stale.txt", answered=turn.answered, current=turn.step.name)


timed = Flow("timed", timeout=timedelta(hours=10), on_expire="demo/expired.txt",
             stale=on_stale)


@timed.step("q", prompt="demo/ask_one.txt", remind_after=timedelta(minutes=30),
            remind="demo/remind.txt", timeout=timedelta(hours=2), on_timeout="demo/timeout.txt",
            unanswered_after=timedelta(hours=1), on_unanswered="demo/unanswered.txt",
            on_undelivered=undelivered)
async def q(turn: Turn) -> None:
    turn.ask("r")


@timed.step("r", prompt="demo/ask_three.txt")
async def r(turn: Turn) -> None:
    if turn.text == "back":
        return turn.ask("q")
    turn.finish("demo/done.txt")
