"""The benchmark's bot: a five-step flow, each answer stored, then a goodbye."""

from __future__ import annotations

from botkit import Flow, Turn

bench5 = Flow("bench5", keywords=["bench"], sender="Bench")
STEPS = ["s1", "s2", "s3", "s4", "s5"]


def _step(name: str, following: str | None) -> None:
    @bench5.step(name, prompt=f"bench5/{name}.txt")
    async def handler(turn: Turn) -> None:
        turn.state[name] = turn.text
        if following is None:
            turn.finish("bench5/done.txt")
        else:
            turn.ask(following)


for _name, _next in zip(STEPS, [*STEPS[1:], None], strict=True):
    _step(_name, _next)
