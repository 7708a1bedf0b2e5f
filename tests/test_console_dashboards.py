"""The console's dashboards and CSV export (admins), over real HTTP on loopback: a flow's
funnel for a date range, per step drop-off and time to answer, the flow as a graph, and
every table as CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import re

from test_console import HTML, console  # noqa: F401 - console is the fixture

from botkit.core.flows import variant
from bots.survey import RATING_PROMPTS

DONE, GAVE_UP, WAITING = "380500000101", "380500000102", "380500000103"


async def _survey(console, phone: str, *answers: str) -> None:
    """``phone`` starts the survey and answers, each after the bot's question."""
    sent = 1
    await console.user_says("survey", phone)
    await console.sent_to(phone, sent)
    for answer in answers:
        await console.user_says(answer, phone)
        sent += 1
        await console.sent_to(phone, sent)


async def _three_surveys(console) -> None:
    await _survey(console, DONE, "Ada", "5", "=HYPERLINK(\"http://x\")")
    await _survey(console, GAVE_UP, "Bob", "nine", "ten", "eleven")
    await _survey(console, WAITING)
    for _ in range(100):  # the last answers' turns are committed
        convs = await console.bot.store.conversations(flow="survey")
        if sorted(c.status.value for c in convs) == ["active", "done", "gave_up"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError([c.status for c in convs])


async def test_a_flows_funnel_counts_each_step_and_how_conversations_ended(console):
    await _three_surveys(console)
    admin = await console.logged_in("ada", "admin")
    async with admin.get("/console/api/flows/survey") as response:
        assert response.status == 200, await response.text()
        report = await response.json()
    assert (report["started"], report["finished"], report["open"]) == (3, 1, 1)
    assert report["ended"] == {"gave_up": 1}
    steps = {s["step"]: s for s in report["steps"]}
    assert [s["step"] for s in report["steps"]] == ["name", "rating", "comment"]  # flow order
    assert (steps["name"]["reached"], steps["name"]["answered"]) == (3, 2)
    assert (steps["rating"]["reached"], steps["rating"]["reasked"]) == (2, 2)
    assert steps["rating"]["ended"] == {"gave_up": 1} and steps["rating"]["drop_off"] == 0.5
    assert steps["comment"]["reached"] == 1 and steps["comment"]["drop_off"] == 0
    assert steps["name"]["answers_timed"] == 2 and steps["name"]["median_answer"] >= 0
    assert sum(steps["name"]["delivery"].values()) == 3  # each question's delivery status
    # The survey's rating question is an A/B test, but both phones asked it got the first
    # variant: no flow version asked another, so nothing is split yet (as before a test).
    [test] = report["ab_tests"]
    assert test["step"] == "rating"
    assert [v["template"] for v in test["variants"]] == list(RATING_PROMPTS)  # control first
    assert {variant("survey.rating", p, RATING_PROMPTS.items()) for p in (DONE, GAVE_UP)} == {
        "survey/ask_rating.txt"}
    assert [v["reached"] for v in test["variants"]] == [0, 0]

    async with admin.get("/console/api/flows/survey",
                         params={"from": "2001-01-01", "to": "2001-01-31"}) as response:
        assert (await response.json())["started"] == 0  # nobody started then
    async with admin.get("/console/api/flows/survey", params={"to": "soon"}) as response:
        assert response.status == 400 and (await response.json())["error"].startswith("to:")
    async with admin.get("/console/api/flows/nosuchflow") as response:
        assert response.status == 404


async def test_an_ab_test_is_split_by_variant_in_the_report_and_on_the_page(console):
    control, tested = "survey/ask_rating.txt", "survey/ask_rating_b.txt"
    runs = {"380500000104": ("Ada", "5", "ok"), "380500000108": ("Bob", "x", "y", "z"),
            "380500000105": ("Cy", "4", "ok"), "380500000106": ("Di", "3", "ok")}
    for phone, answers in runs.items():
        await _survey(console, phone, *answers)
    for _ in range(100):  # the last answers' turns are committed
        convs = await console.bot.store.conversations(flow="survey")
        if sorted(c.status.value for c in convs) == ["done", "done", "done", "gave_up"]:
            break
        await asyncio.sleep(0.05)
    assert [variant("survey.rating", p, RATING_PROMPTS.items()) for p in runs] == [
        control, control, tested, tested]
    admin = await console.logged_in("ada", "admin")
    async with admin.get("/console/api/flows/survey") as response:
        [test] = (await response.json())["ab_tests"]
    a, b = test["variants"]
    assert (a["template"], a["reached"], a["answered"], a["completed"], a["gave_up"]) == (
        control, 2, 2, 1, 1)
    assert (b["template"], b["reached"], b["went_on"], b["completed"]) == (tested, 2, 2, 2)
    assert a["comparison"] is None and b["comparison"]["difference"] == 0.5
    assert b["comparison"]["verdict"] == "too few to tell"  # 2 against 2 proves nothing
    async with admin.get("/console/flows/survey", headers=HTML) as response:
        page = await response.text()
    table = page[page.index('id="variants-rating"'):]
    table = table[:table.index("</table>")]
    assert re.findall(r'<tr data-template="([^"]+)">', table) == [control, tested]
    assert re.findall(r'<td class="verdict">([^<]+)</td>', table) == [
        "control", "+50.0 points, p = 0.248: too few to tell"]


async def test_a_flows_page_draws_its_funnel_and_its_graph(console):
    await _three_surveys(console)
    admin = await console.logged_in("ada", "admin")
    async with admin.get("/console/flows", headers=HTML) as response:
        page = await response.text()
    assert 'href="/console/flows/survey"' in page and 'href="/console/flows/support"' in page
    async with admin.get("/console/flows/survey", headers=HTML) as response:
        assert response.status == 200
        page = await response.text()
    funnel = page[page.index('<svg class="funnel"'):page.index("</svg>")]
    bars = re.findall(r'<title>([\w ]+): (\d+)</title>', funnel)
    assert bars == [("started", "3"), ("name", "3"), ("rating", "2"), ("comment", "1"),
                    ("finished", "1"), ("gave up", "1")]  # and how the others ended
    assert funnel.count('class="bar end"') == 2 and funnel.count('class="bar lost"') == 1
    graph = page[page.index('<svg class="graph"'):]
    names = re.findall(r'<text [^>]*class="name">([^<]+)</text>', graph)
    assert names == ["name", "rating", "comment", "finished"]
    edges = re.findall(r"<title>(\w+) → (\w+) \(turn\.(\w+)\(\)\)</title>", graph)
    assert edges == [("name", "rating", "ask"), ("rating", "comment", "ask"),
                     ("comment", "finished", "finish")]
    assert "reached 2 · answered 2 · ended here 1" in graph  # the rating step's counts
    ab = page[page.index('<table class="steps variants" id="variants-rating">'):]
    ab = ab[:ab.index("</table>")]
    rows = re.findall(r'<tr data-template="([^"]+)">', ab)
    assert rows == list(RATING_PROMPTS)
    assert re.search(r'<td class="verdict">control</td>', ab)


async def test_dashboards_and_exports_are_for_admins_only(console):
    agent = await console.logged_in("olga")
    for path in ("/console/flows", "/console/flows/survey", "/console/api/flows/survey",
                 "/console/export", "/console/export/inbound.csv"):
        async with agent.get(path) as response:
            assert response.status == 403, path
            assert "admin" in (await response.json())["error"]
    async with agent.get("/console/", headers=HTML) as response:
        assert "/console/flows" not in await response.text()  # not offered either


async def test_every_table_exports_as_csv_without_secrets_or_formulas(console):
    await _three_surveys(console)
    admin = await console.logged_in("ada", "admin")
    async with admin.get("/console/export", headers=HTML) as response:
        page = await response.text()
    assert 'href="/console/export/inbound.csv"' in page and "meta.csv" not in page

    async with admin.get("/console/export/inbound.csv") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/csv")
        assert re.match(r'attachment; filename="botkit-inbound-\d{4}-\d\d-\d\d\.csv"',
                        response.headers["Content-Disposition"])
        rows = list(csv.DictReader(io.StringIO(await response.text())))
    texts = [r["text"] for r in rows if r["phone"] == DONE]
    assert texts == ["survey", "Ada", "5", "'=HYPERLINK(\"http://x\")"]  # never a formula
    assert len(rows) == 4 + 5 + 1  # every message of the three users

    async with admin.get("/console/export/users.csv") as response:
        users = list(csv.DictReader(io.StringIO(await response.text())))
    assert "ada" in [u["name"] for u in users] and "role" in users[0]
    assert "password_hash" not in users[0]
    async with admin.get("/console/export/meta.csv") as response:
        assert response.status == 404
        assert "meta" in (await response.json())["error"]
