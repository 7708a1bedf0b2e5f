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


def verbs_flow() -> Flow:
    flow = Flow("verbs", keywords=["go"])

    @flow.step("ask", prompt={A: 50, B: 50})
    async def ask(turn: Turn) -> None:
        if turn.text == "bad":
            return turn.say({"demo/bye.txt": 50})  # one variant is no test
        turn.say({"demo/remind.txt": 50, "demo/unanswered.txt": 50})
        turn.finish({"demo/bye.txt": 1, "demo/timeout.txt": 1})

    return flow


async def test_a_verbs_template_can_be_an_ab_test_split_with_the_steps_prompt(bot_harness):
    from demo import TEMPLATES

    bot = await bot_harness(flows=[verbs_flow()], templates=TEMPLATES)
    said = {"demo/remind.txt": "Reminder", "demo/unanswered.txt": "Delivered"}
    pairs = [(A, 50), (B, 50)]
    for n in range(8):
        phone = f"38050777{n:04d}"
        chat = bot.chat(phone)
        [question] = await chat.send("go")
        say, bye = await chat.answer("fine")
        # One point per phone and step: the say's 50/50 follows the prompt's 50/50.
        first = variant("verbs.ask", phone, pairs) == A
        assert question.text.startswith("Question one" if first else "Question two")
        assert say.text.startswith(said["demo/remind.txt" if first else "demo/unanswered.txt"])
        assert bye.text == ("Gave up." if first else "Timed out, bye.")
    templates = {r["template"] for r in bot.db().query(
        "SELECT template FROM outbound WHERE role IS NULL")}
    assert templates == {*said, "demo/bye.txt", "demo/timeout.txt"}


async def test_a_bad_ab_test_of_a_verbs_template_is_an_error_naming_the_call(bot_harness):
    from demo import TEMPLATES

    bot = await bot_harness(flows=[verbs_flow()], templates=TEMPLATES)
    chat = bot.chat("380507770100")
    await chat.send("go")
    # The harness raises a handler's error in the test (a server logs it, and answers with
    # the flow's error reply); `run.py check` finds it before (the next test).
    with pytest.raises(DefinitionError, match=r"turn\.say\(\) in flow 'verbs', step 'ask': an"
                       r" A/B test of its template names two templates or more"):
        await chat.answer("bad")


def test_check_reads_the_templates_of_a_verbs_ab_test(tmp_path):
    from demo import TEMPLATES

    from botkit.cli.checks import check
    from botkit.runtime.templates import Renderer

    flow = verbs_flow()
    problems = check(FlowSet([flow]), Renderer(TEMPLATES), TEMPLATES)
    assert len(problems) == 1 and problems[0].endswith(
        "turn.say(): an A/B test of its template names two templates or more, each with a"
        " positive whole weight, such as {'a.txt': 50, 'b.txt': 50}; got {'demo/bye.txt': 50}")
    assert "test_variants.py:" in problems[0]
    empty = tmp_path / "tpl"
    (empty / "demo").mkdir(parents=True)
    for name in (A, B, "demo/bye.txt"):
        (tmp_path / "tpl" / name).write_text((TEMPLATES / name).read_text())
    missing = check(FlowSet([verbs_flow()]), Renderer(empty), empty)
    for name in ("demo/remind.txt", "demo/unanswered.txt", "demo/timeout.txt"):
        assert any(name in p and "turn." in p for p in missing), (name, missing)
