"""The survey example bot, whole conversations through the testing kit."""

from __future__ import annotations

from bots.survey import survey


async def test_complete_survey(bot_harness):
    harness = await bot_harness(flows=[survey])
    chat = harness.chat("380501112233")
    [first] = await chat.start("survey")
    assert "what's your name" in first.text and first.type == 206 and first.step == "name"
    [ask_rating] = await chat.answer("  Ana  ")
    assert ask_rating.text.startswith("Thanks, Ana!") and ask_rating.step == "rating"
    await chat.answer("4")
    [thanks] = await chat.answer("Great service")
    assert thanks.type == 208 and thanks.rich
    assert thanks.image == harness.url + "/static/survey/thanks.png"
    assert thanks.button == ("See what's new", harness.url + "/static/survey/news.html")
    assert thanks.text.startswith("Thank you, Ana! You rated us 4/5.")
    assert chat.state == {"name": "Ana", "rating": 4, "comment": "Great service"}
    assert chat.conversation().status.value == "done"


async def test_rating_reasked_then_give_up(bot_harness):
    chat = (await bot_harness(flows=[survey])).chat("380501112233")
    await chat.start("survey")
    await chat.answer("Ana")
    [again] = await chat.answer("ten")
    assert again.text.startswith('Please answer 1 to 5 ("ten" is not one of them)')
    assert again.step == "rating"
    await chat.answer("0")
    [bye] = await chat.answer("6")  # the third invalid try gives up
    assert bye.text.startswith("No problem, let's leave it there. Thanks for your time, Ana!")
    assert chat.conversation().status.value == "gave_up"
    assert chat.state == {"name": "Ana"}


async def test_skip_comment_and_keyword_start(bot_harness):
    chat = (await bot_harness(flows=[survey])).chat("380501112244")
    [first] = await chat.send("SURVEY")
    assert first.step == "name"
    await chat.answer("Bo")
    await chat.answer("5")
    [thanks] = await chat.answer("skip")
    assert thanks.text == "Thank you, Bo! You rated us 5/5."
    assert chat.state == {"name": "Bo", "rating": 5, "comment": None}


async def test_whole_transcript(bot_harness):
    chat = (await bot_harness(flows=[survey])).chat("380501112255")
    await chat.start("survey")
    for answer in ("Cy", "3", "ok"):
        await chat.answer(answer)
    assert [who for who, _ in chat.transcript] == ["bot", "user", "bot", "user", "bot",
                                                     "user", "bot"]
    assert chat.transcript[-1][1].startswith("Thank you, Cy! You rated us 3/5.")


async def test_reminder_then_polite_close(bot_harness):
    from botkit.testing import Clock

    clock = Clock()
    chat = (await bot_harness(flows=[survey], clock=clock)).chat("380501112299")
    harness = chat.harness
    await chat.start("survey")
    await chat.answer("Ana")
    clock.advance(hours=2, seconds=1)
    await harness.sweep()
    [nudge] = chat.unread()
    assert nudge.text == "Still there, Ana? Your answer to the question above would help us a lot."
    clock.advance(hours=10)
    await harness.sweep()
    [closed] = chat.unread()
    assert closed.text.startswith("We haven't heard back, so we've closed this survey.")
    assert chat.conversation().status.value == "timed_out"


async def test_undelivered_first_question_is_resent_once_then_unreachable(bot_harness):
    harness = await bot_harness(flows=[survey])
    harness.provider.auto_deliver = False
    chat = harness.chat("380501112200")
    [first] = await chat.start("survey")
    for n in (1, 2):
        await harness.provider.deliver(chat.replies[-1].message_id, status=4)
        await harness.wait_until(
            lambda n=n: harness.db().execute(
                "SELECT count(*) FROM timers WHERE kind = 'undelivered'").fetchone() == (n,),
            "the undelivered event")
        await harness.sweep()
    assert [m.text for m in chat.replies] == [first.text, first.text]
    assert chat.conversation().status.value == "unreachable"


async def test_stats_show_the_funnel(bot_harness, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    db = tmp_path / "funnel.db"
    harness = await bot_harness(flows=[survey], db=db)
    done, quitter = harness.chat("380501110001"), harness.chat("380501110002")
    await done.start("survey")
    for answer in ("Ana", "x", "4", "skip"):
        await done.answer(answer)
    await quitter.start("survey")
    await quitter.answer("Bo")
    await harness.delivered(done.replies[0].message_id)
    await harness.stop()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTKIT_")}
    env["BOTKIT_DB"] = str(db)
    root = Path(__file__).parent.parent
    out = subprocess.run([sys.executable, "run.py", "stats", "survey"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "survey: 2 conversations started, 1 completed (50%)"
    assert lines[1].split() == ["step", "sent", "delivered", "answered", "reasked", "timed",
                                "out", "dropped", "median", "answer"]
    name, rating, comment = (line.split() for line in lines[2:5])
    assert name[:2] == ["name", "2"] and name[3:5] == ["2", "0"]
    assert rating[:2] == ["rating", "3"] and rating[3:5] == ["2", "1"]  # "x" was re-asked
    assert comment[:4] == ["comment", "1", comment[2], "1"]
    assert name[-1].endswith("s")  # a median time to answer
    versions = subprocess.run([sys.executable, "run.py", "conversations", "--by-version"],
                              cwd=root, env=env, capture_output=True, text=True, timeout=30)
    assert f"survey       {survey.version_id}" in versions.stdout
    assert "(current)" in versions.stdout
