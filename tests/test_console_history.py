"""The console's search (by phone, flow, status and dates) and a phone's page (every
conversation and message), over real HTTP on loopback."""

from __future__ import annotations

import datetime as dt
import re

from test_console import HTML, PHONE, console  # noqa: F401 - console is the fixture

OTHER = "380501234568"


async def _found(client, **query) -> list[str]:
    """The conversation ids a search lists, in order."""
    async with client.get("/console/search", params=query, headers=HTML) as response:
        assert response.status == 200, await response.text()
        page = await response.text()
    return re.findall(r'href="/console/conversations/(\d+)"', page)


async def test_a_search_finds_conversations_by_phone_flow_status_and_dates(console):
    handed = await console.handed_over()  # PHONE: support, with a human
    await console.bot.store.release(PHONE, console.bot.clock())  # closed: released
    await console.user_says("survey")  # PHONE: a survey, active
    await console.user_says("survey", OTHER)
    await console.sent_to(OTHER, 1)
    agent = await console.logged_in("olga")
    survey_ids = [str(c.id) for c in await console.bot.store.conversations(flow="survey")]
    assert len(survey_ids) == 2

    # A phone as people write it; the most recently active first.
    assert await _found(agent, phone="+38 050 123 4567") == [survey_ids[1], str(handed)]
    assert sorted(await _found(agent, flow="survey")) == sorted(survey_ids)
    assert await _found(agent, status="released") == [str(handed)]
    assert await _found(agent, flow="support", status="active") == []
    today = dt.date.today()
    assert len(await _found(agent, **{"from": str(today), "to": str(today)})) == 3
    assert await _found(agent, **{"from": "2001-01-01", "to": "2001-01-31"}) == []
    assert await _found(agent, to=str(today - dt.timedelta(days=1))) == []
    async with agent.get("/console/search", headers=HTML) as response:  # the empty form
        assert response.status == 200 and "Search conversations" in await response.text()


async def test_a_search_with_a_wrong_field_says_which_to_fix(console):
    agent = await console.logged_in("olga")
    for query, field in (({"phone": "not a phone"}, "phone:"), ({"status": "bogus"}, "status:"),
                         ({"from": "yesterday"}, "from:"),
                         ({"from": "2026-02-02", "to": "2026-02-01"}, "to:")):
        async with agent.get("/console/search", params=query) as response:
            assert response.status == 400, query
            assert (await response.json())["error"].startswith(field), query


async def test_a_phones_page_shows_every_conversation_and_message_as_text(console):
    first = await console.handed_over()
    await console.user_says("<script>alert(1)</script> my order")
    await console.bot.store.release(PHONE, console.bot.clock())
    await console.user_says("survey")
    await console.sent_to(PHONE, 3)
    [second] = [c.id for c in await console.bot.store.conversations(phone=PHONE, flow="survey")]
    agent = await console.logged_in("olga")

    async with agent.get(f"/console/phones/{PHONE}", headers=HTML) as response:
        assert response.status == 200
        page = await response.text()
    # Both conversations, their messages under each, in order; the user's text stays text.
    headings = re.findall(r'<h3><a href="/console/conversations/(\d+)">', page)
    assert headings == [str(first), str(second)]
    assert "&lt;script&gt;alert(1)&lt;/script&gt; my order" in page and "<script>alert" not in page
    assert page.index("my order") < page.index(f"Conversation {second}")
    for text in ("support", "agent", "survey"):  # what the user wrote, each message
        assert f'<p class="text">{text}</p>' in page
    async with agent.get(f"/console/conversations/{first}", headers=HTML) as response:
        assert f'href="/console/phones/{PHONE}"' in await response.text()  # linked from there

    async with agent.get("/console/phones/380999999999") as response:
        assert response.status == 404


async def test_what_a_search_was_asked_is_shown_as_text(console):
    agent = await console.logged_in("olga")
    async with agent.get("/console/search", params={"flow": "<script>alert(1)</script>"},
                         headers=HTML) as response:
        page = await response.text()
    assert response.status == 200 and "<script>alert" not in page
    assert "<option selected>&lt;script&gt;alert(1)&lt;/script&gt;</option>" in page
    async with agent.get("/console/search", params={"phone": "<b>1</b>"}) as response:
        assert response.status == 400 and "<b>1</b>" in (await response.json())["error"]
    async with agent.get("/console/search", params={"phone": "<b>1</b>"},
                         headers=HTML) as response:
        page = await response.text()
    assert response.status == 400 and "<b>" not in page and "&lt;b&gt;" in page
