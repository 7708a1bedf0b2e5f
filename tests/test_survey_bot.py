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
    assert thanks.image == "https://botkit.example/static/thanks.png"
    assert thanks.button == ("See what's new", "https://botkit.example/news")
    assert thanks.text.startswith("Thank you, Ana! You rated us 4/5.")
    assert chat.state == {"name": "Ana", "rating": 4, "comment": "Great service"}
    assert chat.conversation().status.value == "done"
