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
