"""The results of an A/B test: a step's figures by variant, and the two-proportion z-test of
completion (``core.experiments``). The test is checked against the textbook figures, then
against simulated experiments (a null difference is called significant about as often as
the 5% level says; a real one is found), then end to end: real conversations, a SQLite file,
``run.py stats`` in a subprocess and the console's report."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from botkit.cli.loader import load_flows
from botkit.core.experiments import ALPHA, by_variant, two_proportions
from botkit.core.flows import variant

ROOT = Path(__file__).resolve().parents[1]
A, B = "demo/ask_one.txt", "demo/ask_three.txt"


def test_the_z_test_gives_the_textbook_figures():
    # 50/100 against 70/100: pooled 0.6, z = 0.2 / sqrt(0.6 * 0.4 * 0.02) = 2.8868
    result = two_proportions(50, 100, 70, 100)
    assert result is not None
    assert math.isclose(result.z, 2.886751, rel_tol=1e-6)
    assert math.isclose(result.p_value, 0.0038924, rel_tol=1e-4)
    assert result.significant and result.verdict == "significant"
    mirrored = two_proportions(70, 100, 50, 100)
    assert mirrored is not None and mirrored.z == -result.z and mirrored.p_value == result.p_value
    same = two_proportions(30, 100, 30, 100)
    assert same is not None and (same.z, same.p_value, same.significant) == (0.0, 1.0, False)
    everyone = two_proportions(20, 20, 30, 30)  # all completed: nothing to tell apart
    assert everyone is not None and everyone.p_value == 1.0 and not everyone.enough
    assert two_proportions(0, 0, 3, 10) is None
    with pytest.raises(ValueError, match="within their groups"):
        two_proportions(11, 10, 3, 10)


def test_too_few_conversations_are_never_called_significant():
    small = two_proportions(0, 4, 4, 4)  # 0% against 100%, but 4 conversations each
    assert small is not None and small.p_value < ALPHA
    assert not small.enough and not small.significant and small.verdict == "too few to tell"


def simulated(rate_a: float, rate_b: float, n: int, rng: random.Random) -> bool:
    """One experiment of ``n`` conversations per variant: whether the test calls it."""
    done_a = sum(rng.random() < rate_a for _ in range(n))
    done_b = sum(rng.random() < rate_b for _ in range(n))
    result = two_proportions(done_a, n, done_b, n)
    return result is not None and result.significant


def test_a_null_difference_is_called_significant_at_the_level_and_a_real_one_is_found():
    rng = random.Random(19)
    runs = 400
    false_alarms = sum(simulated(0.30, 0.30, 500, rng) for _ in range(runs))
    # About 5% of null experiments cross the 5% level: 20 of 400 expected, and 2%-9% holds
    # with room (the binomial's standard deviation is 4.4).
    assert 0.02 * runs <= false_alarms <= 0.09 * runs, false_alarms
    # 30% against 40% with 500 each: the test's power is about 0.94.
    found = sum(simulated(0.30, 0.40, 500, rng) for _ in range(runs))
    assert found >= 0.85 * runs, found


def test_variants_keep_their_declared_order_and_a_missing_one_has_zeros():
    rows = by_variant([A, B, "c.txt"], {
        B: {"reached": 40, "completed": 30, "delays": [9.0, 1.0, 5.0]},
        A: {"reached": 40, "completed": 10}})
    assert [r.template for r in rows] == [A, B, "c.txt"]
    control, b, c = rows
    assert control.comparison is None and control.completion == 0.25
    assert b.median_answer == 5.0 and b.comparison is not None and b.comparison.significant
    assert c.reached == 0 and c.completion is None and c.comparison is None


# The bots of the end-to-end test, in a folder of their own so that ``run.py stats`` loads
# them (the variants it splits by are the ones the loaded flow declares).
AB_BOTS = f"""\
from botkit import Flow, Turn

known, null = Flow("known"), Flow("null")
for flow in (known, null):
    @flow.step("ask", prompt={{{A!r}: 50, {B!r}: 50}})
    async def ask(turn: Turn) -> None:
        turn.finish("demo/done.txt")
"""


def phones_of(test: str, operator: int, count: int) -> dict[str, list[str]]:
    """``count`` phones of an operator code, by the variant they get in ``test``."""
    split: dict[str, list[str]] = {A: [], B: []}
    for n in range(count):
        phone = f"380{operator}{n:07d}"
        split[variant(test, phone, [(A, 50), (B, 50)])].append(phone)
    return split


async def test_stats_split_by_variant_and_find_a_known_difference_but_not_a_null_one(
        bot_harness, tmp_path):
    from demo import TEMPLATES

    db, bots = tmp_path / "ab.db", tmp_path / "abbots"
    bots.mkdir()
    (bots / "__init__.py").write_text("")
    (bots / "tests.py").write_text(AB_BOTS)
    bot = await bot_harness(flows=load_flows(bots), templates=TEMPLATES, db=db)
    answers = {  # who answers: in "known", B's phones five times as often as A's
        "known": {A: lambda n: n % 6 == 0, B: lambda n: n % 6 != 0},
        "null": {A: lambda n: n % 2 == 0, B: lambda n: n % 2 == 0},
    }
    for name, operator in (("known", 67), ("null", 68)):  # phones of their own
        for template, phones in phones_of(f"{name}.ask", operator, 72).items():
            for n, phone in enumerate(phones):
                chat = bot.chat(phone)
                [question] = await chat.start(name)
                assert question.text.startswith("Question one" if template == A else
                                                "Question three")
                if answers[name][template](n):
                    await chat.answer("yes")
    await bot.stop()

    for name, operator, verdict in (("known", 67, ["p", "<", "0.001:", "significant"]),
                                    ("null", 68, ["not", "significant"])):
        out = _stats(name, bots, db)
        assert out.returncode == 0, out.stderr
        table = out.stdout[out.stdout.index("ask: A/B test"):].splitlines()
        assert table[1].split()[:6] == ["variant", "reached", "answered", "went", "on", "gave"]
        control, tested = table[2].split(), table[3].split()
        for line, (template, phones) in zip((control, tested),
                                            phones_of(f"{name}.ask", operator, 72).items()):
            done = sum(map(answers[name][template], range(len(phones))))
            assert line[:4] == [template, str(len(phones)), str(done), str(done)], line
        assert control[-1] == "control" and tested[-len(verdict):] == verdict, out.stdout


def _stats(flow: str, bots: Path, db: Path) -> subprocess.CompletedProcess[str]:
    """``run.py stats FLOW`` on the test's bots and database (after the harness stopped)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTKIT_")}
    env["BOTKIT_DB"] = str(db)
    return subprocess.run([sys.executable, "run.py", "stats", flow, "--bots", str(bots)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
                          check=False)
