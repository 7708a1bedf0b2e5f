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
