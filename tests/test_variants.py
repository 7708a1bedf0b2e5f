"""A/B tests of a step's prompt (``prompt={"a.txt": 50, "b.txt": 50}``): a phone always gets
the same variant, across turns, restarts and processes, and phones split by the weights.
End to end where it matters: real server, SQLite file, fake provider."""

from __future__ import annotations

from collections import Counter

import pytest

from botkit import Flow, Turn
from botkit.core.flows import FlowSet, variant
from botkit.errors import DefinitionError

A, B = "demo/ask_one.txt", "demo/ask_two.txt"


def ab_flow(weights: dict[str, int]) -> Flow:
    flow = Flow("tested", keywords=["go"])

    @flow.step("ask", prompt=weights)
    async def ask(turn: Turn) -> None:
        turn.ask("ask")  # the same step again: the same variant

    return flow


def test_phones_split_by_the_weights():
    for weights in ({A: 50, B: 50}, {A: 80, B: 20}, {A: 1, B: 1, "c.txt": 2}):
        total = sum(weights.values())
        counts = Counter(variant("survey.rating", f"38050{n:07d}", weights.items())
                         for n in range(10_000))
        for name, weight in weights.items():
            assert abs(counts[name] / 10_000 - weight / total) < 0.02, (weights, counts)


def test_a_phone_gets_one_variant_per_test_and_tests_are_independent():
    pairs = [(A, 50), (B, 50)]
    assert {variant("f.s", "380501112233", pairs) for _ in range(5)} == {
        variant("f.s", "380501112233", pairs)}
    # Another test splits the same phones afresh (not the same half every time).
    together = sum(variant("f.one", f"38050{n:07d}", pairs) == variant("f.two", f"38050{n:07d}", pairs)
                   for n in range(2_000))
    assert 900 < together < 1100


def test_an_ab_test_is_declared_with_two_templates_or_more_and_positive_weights():
    for bad in ({A: 50}, {A: 50, B: 0}, {A: 50, B: 1.5}):
        with pytest.raises(DefinitionError, match="an A/B test of the prompt"):
            ab_flow(bad)
    step = FlowSet([ab_flow({A: 50, B: 50})])["tested"].steps["ask"]
    assert step.prompt == A and step.templates[:2] == [A, B]  # check and versions see both


async def test_a_conversation_keeps_its_variant_across_turns_and_a_restart(bot_harness):
    from demo import TEMPLATES

    bot = await bot_harness(flows=[ab_flow({A: 50, B: 50})], templates=TEMPLATES)
    expected = {A: "Question one?", B: "Question two"}
    seen: dict[str, set[str]] = {}
    for n in range(12):  # both variants turn up among a dozen phones
        phone = f"38050999{n:04d}"
        chat = bot.chat(phone)
        [first] = await chat.send("go")
        [again] = await chat.answer("x")
        seen.setdefault(variant("tested.ask", phone, [(A, 50), (B, 50)]), set()).update(
            {first.text[:13], again.text[:12]})
    await bot.restart()
    after = (await bot.chat("380509990000").answer("y"))[-1]
    assert set(seen) == {A, B}
    assert all(t.startswith(expected[A][:12]) for t in seen[A])
    assert all(t.startswith(expected[B]) for t in seen[B])
    mine = variant("tested.ask", "380509990000", [(A, 50), (B, 50)])
    assert after.text.startswith(expected[mine])
    # Each row records the template it was rendered from: what the stats group by.
    templates = {r["template"] for r in bot.db().query("SELECT template FROM outbound")}
    assert templates == {A, B}
