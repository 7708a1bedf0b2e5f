"""The reliability suite's bot: three questions, answers kept in state.

An answer "slow" makes its turn take 0.3 s; an answer "fail" makes the handler raise.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from botkit import Flow, Turn

chain = Flow("chain", keywords=["go"], timeout=timedelta(days=7), sender="Chain")


async def _answer(turn: Turn, key: str) -> None:
    if turn.text == "fail":
        raise RuntimeError(f"scripted failure at {key}")
    if turn.text == "slow":
        await asyncio.sleep(0.3)
    turn.state[key] = turn.text


@chain.step("s1", prompt="chain/q1.txt")
async def s1(turn: Turn) -> None:
    await _answer(turn, "a1")
    turn.ask("s2")


@chain.step("s2", prompt="chain/q2.txt")
async def s2(turn: Turn) -> None:
    await _answer(turn, "a2")
    turn.ask("s3")


@chain.step("s3", prompt="chain/q3.txt")
async def s3(turn: Turn) -> None:
    await _answer(turn, "a3")
    turn.finish("chain/done.txt")
