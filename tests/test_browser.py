"""End to end in real headless Chromium: the survey through the sandbox web chat.

Runs ``python run.py`` in sandbox mode as a user would, drives Debian's Chromium with
Playwright, and checks the bubbles and the stored answers. Without Chromium this test is
skipped with the reason; CI sets REQUIRE_BROWSER_TEST=1 so it can never be skipped there.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from aiohttp.test_utils import unused_port

ROOT = Path(__file__).parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright)"
    return None


def start_server(port: int, db: Path, log: Path) -> subprocess.Popen[bytes]:
    """``python run.py`` in sandbox mode, as a user starts it; returns once it answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTKIT_")}
    env.update(BOTKIT_DB=str(db), BOTKIT_PORT=str(port))
    with log.open("a") as out:
        process = subprocess.Popen([sys.executable, "run.py"], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                process.wait()
                raise AssertionError(f"server did not start: {log.read_text()}") from None
            time.sleep(0.1)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


@pytest.fixture
def sandbox_server(tmp_path):
    port = unused_port()
    process = start_server(port, tmp_path / "browser.db", tmp_path / "server.log")
    yield f"http://127.0.0.1:{port}", tmp_path / "browser.db"
    stop_server(process)


def need_browser() -> None:
    missing = browser_missing()
    if missing:
        if os.environ.get("REQUIRE_BROWSER_TEST"):
            pytest.fail(f"browser test required here: {missing}")
        pytest.skip(missing)


@contextmanager
def chromium_page(**options: Any) -> Iterator[Any]:
    """A page of a fresh headless Chromium (the test has called ``need_browser``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser.new_page(**options)
        finally:
            browser.close()


def test_survey_in_the_web_chat(sandbox_server, tmp_path):
    need_browser()
    from playwright.sync_api import expect

    url, db = sandbox_server
    phone = "380509876543"
    with chromium_page(viewport={"width": 390, "height": 844}) as page:  # a phone
        page.goto(f"{url}/?phone={phone}")
        expect(page.locator("#phone")).to_have_value(phone)
        bots = page.locator(".bubble.bot")

        page.get_by_role("button", name="Start survey").click()
        expect(bots.nth(0)).to_contain_text("First, what's your name?")
        expect(bots.nth(0).locator(".ticks")).to_have_text("✓✓")

        def say(text: str, count: int) -> None:
            page.locator("#text").fill(text)
            page.locator("#send").click()
            expect(bots).to_have_count(count)

        say("Ana", 2)
        expect(bots.nth(1)).to_contain_text("Thanks, Ana!")
        say("ten", 3)
        expect(bots.nth(2)).to_contain_text('Please answer 1 to 5 ("ten" is not one of them)')
        say("4", 4)
        say("<b>Quick</b> & friendly", 5)
        expect(page.locator(".bubble.user .text").last).to_have_text("<b>Quick</b> & friendly")
        assert page.locator(".bubble b").count() == 0  # shown as text, never parsed
        thanks = bots.nth(4)
        expect(thanks).to_contain_text("You rated us 4/5")
        expect(thanks.locator("img.image")).to_have_attribute(
            "src", f"{url}/static/survey/thanks.png")
        page.wait_for_function(
            "() => document.querySelector('.bubble.bot:last-child img').naturalWidth > 0")
        button = thanks.locator("a.button")
        expect(button).to_have_text("See what's new")
        expect(button).to_have_attribute("href", f"{url}/static/survey/news.html")
        expect(page.locator(".bubble.user")).to_have_count(4)
        expect(thanks.locator(".ticks")).to_have_text("✓✓")
        page.evaluate("document.getElementById('messages').scrollTop = 1e9")
        # docs/img/chat.png is refreshed with UPDATE_SCREENSHOT=1.
        shot = ROOT / "docs" / "img" / "chat.png"
        if not os.environ.get("UPDATE_SCREENSHOT"):
            shot = tmp_path / "chat.png"
        page.screenshot(path=str(shot))

    conv = next(sqlite_utils.Database(db).query(
        "SELECT status, state FROM conversations WHERE phone = ?", [phone]))
    assert conv["status"] == "done"
    assert conv["state"] == (
        '{"name": "Ana", "rating": 4, "comment": "<b>Quick</b> & friendly"}')


def test_the_chat_shows_a_lost_server_and_keeps_what_was_not_sent(tmp_path):
    need_browser()
    from playwright.sync_api import expect

    port, db, log = unused_port(), tmp_path / "browser.db", tmp_path / "server.log"
    url, phone = f"http://127.0.0.1:{port}", "380509876544"
    process = start_server(port, db, log)
    try:
        with chromium_page() as page:
            page.goto(f"{url}/?phone={phone}")
            bots = page.locator(".bubble.bot")
            page.get_by_role("button", name="Start survey").click()
            expect(bots.nth(0)).to_contain_text("First, what's your name?")
            expect(page.locator("#connection")).to_be_hidden()

            stop_server(process)
            expect(page.locator("#connection")).to_be_visible()
            expect(page.locator("#connection")).to_contain_text("Connection to the server lost")
            page.locator("#text").fill("Ana")
            page.locator("#send").click()
            expect(page.locator(".notice").last).to_have_text(
                "Not sent: the server does not answer (is it running?)")
            expect(page.locator("#text")).to_have_value("Ana")  # kept, to send again

            process = start_server(port, db, log)
            expect(page.locator("#connection")).to_be_hidden(timeout=10_000)
            page.locator("#send").click()
            expect(bots.nth(1)).to_contain_text("Thanks, Ana!")
            expect(page.locator("#text")).to_have_value("")
    finally:
        stop_server(process)


def test_a_hand_over_shows_in_the_chat_and_the_sandbox_plays_the_agent(sandbox_server):
    need_browser()
    from playwright.sync_api import expect

    url, _ = sandbox_server
    with chromium_page() as page:
        page.goto(f"{url}/?phone=380509876545")
        bots, human = page.locator(".bubble.bot"), page.locator("#human")
        expect(human).to_be_hidden()

        page.locator("#text").fill("agent")
        page.locator("#send").click()
        expect(bots.nth(0)).to_contain_text("a person from our team will answer you")
        expect(human).to_be_visible()
        expect(human).to_contain_text("This conversation is with a person now")
        page.locator("#text").fill("hello?")
        page.locator("#send").click()
        expect(page.locator(".bubble.user")).to_have_count(2)
        expect(human).to_be_visible()  # the bot stays silent, and the page says why

        page.locator("#agent-text").fill("Hi, Olga here. How can I help?")
        page.locator("#agent-send").click()
        expect(bots.nth(1)).to_have_text(re.compile("Hi, Olga here. How can I help?"))
        page.get_by_role("button", name="Release to the bot").click()
        expect(page.locator(".notice.info")).to_have_text("Released: the bot answers again.")
        expect(human).to_be_hidden()
        page.locator("#text").fill("menu")
        page.locator("#send").click()
        expect(bots.nth(2)).to_contain_text("Hi, this is Acme Support")


def test_a_phone_that_is_not_a_number_is_refused_in_plain_words(sandbox_server):
    need_browser()
    from playwright.sync_api import expect

    url, _ = sandbox_server
    with chromium_page() as page:
        page.goto(f"{url}/?phone=call%20me")
        expect(page.locator(".notice")).to_have_text(
            "phone: 'call me': not a phone number (digits, spaces, +, - and brackets)")
        page.locator("#phone").fill("+38 (050) 987-65-46")  # as people write it
        page.get_by_role("button", name="Open").click()
        expect(page.locator("#phone")).to_have_value("380509876546")
        assert "phone=380509876546" in page.url


def test_the_chat_page_explains_itself(sandbox_server, tmp_path):
    need_browser()
    import json

    from playwright.sync_api import expect

    url, _ = sandbox_server
    phone = "380509876547"
    log = (tmp_path / "server.log").read_text()
    callback = next(line.split()[-1] for line in log.splitlines()
                    if line.startswith("provider callbacks go to "))
    with chromium_page() as page:
        page.goto(f"{url}/?phone={phone}")
        empty = page.evaluate("getComputedStyle(document.getElementById('messages'),"
                              " '::before').content")
        assert "No messages yet. Press a Start button above" in empty
        icon = page.locator("link[rel=icon]").get_attribute("href")
        with urllib.request.urlopen(url + icon, timeout=5) as answer:
            assert answer.status == 200 and b"<svg" in answer.read()

        page.get_by_role("button", name="Start survey").click()
        bot = page.locator(".bubble.bot").first
        expect(bot).to_contain_text("First, what's your name?")
        expect(bot.locator(".time")).to_have_text(re.compile(r"^\d\d:\d\d"))
        page.get_by_role("button", name="Start survey").click()  # again: said plainly
        expect(page.locator(".notice.info")).to_have_text(
            'You are already in the survey, at its question "name": answer it there.')

        body = json.dumps({"message_token": 91_000_000_000_001, "phone_number": phone,
                           "time": int(time.time()), "message": {"text": "Ana by curl"}})
        request = urllib.request.Request(callback, data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200
        user = page.locator(".bubble.user").last
        expect(user.locator(".text")).to_have_text("Ana by curl")
        expect(user.locator(".via")).to_have_text("posted to the callback")
        expect(page.locator(".bubble.bot").nth(1)).to_contain_text("Thanks, Ana by curl!")


def test_an_agent_takes_a_hand_over_in_the_console_and_gives_it_back(sandbox_server, tmp_path):
    """The console end to end: a user in the sandbox chat asks for a human; an agent logged
    in to the console sees it arrive live, takes it and answers; the user sees the answer
    and replies; the agent sees that live and gives the user back to the bot, which answers
    the next message. A second agent cannot answer meanwhile."""
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    url, db = sandbox_server
    phone = "380509876548"
    for name, role in (("olga", "agent"), ("ada", "admin")):
        added = subprocess.run([sys.executable, "run.py", "user", "add", name, "--role", role,
                                "--password-stdin", "--db", str(db)], cwd=ROOT,
                               input="correct horse battery\n", capture_output=True,
                               text=True, timeout=30, check=False)
        assert added.returncode == 0, added.stderr
    shots = ROOT / "docs" / "img" if os.environ.get("UPDATE_SCREENSHOT") else tmp_path

    def log_in(page: Any, name: str) -> None:
        page.goto(f"{url}/console/")
        expect(page).to_have_url(re.compile(r"/console/login\?next="))
        page.locator("input[name=name]").fill(name)
        page.locator("input[name=password]").fill("correct horse battery")
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(re.compile(r"/console/$"))

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            agent = browser.new_context(viewport={"width": 1100, "height": 900}).new_page()
            log_in(agent, "olga")
            expect(agent.locator("#empty")).to_be_visible()

            user = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
            user.goto(f"{url}/?phone={phone}")
            bots = user.locator(".bubble.bot")

            def say(text: str) -> None:
                user.locator("#text").fill(text)
                user.locator("#send").click()

            say("support")
            expect(bots.nth(0)).to_contain_text("Hi, this is Acme Support")
            say("agent")
            expect(bots.nth(1)).to_contain_text("a person from our team will answer you")

            row = agent.locator("#inbox tbody tr", has_text=phone)  # live: no reload
            expect(row).to_be_visible(timeout=5000)
            expect(agent).to_have_title(re.compile(r"^\(1\) Inbox"))
            expect(row).to_contain_text("nobody yet")
            agent.screenshot(path=str(shots / "console-inbox.png"))
            row.get_by_role("link", name=phone).click()
            agent.get_by_role("button", name="Take this conversation").click()
            expect(agent.locator("#holder")).to_have_text("olga")
            agent.locator("#canned").select_option("greeting.txt")  # a canned reply, to edit
            expect(agent.locator("textarea[name=text]")).to_have_value(
                "Hi, this is olga from Acme Support. How can I help?")
            agent.locator("textarea[name=text]").fill("Hi, Olga here. <b>Which</b> order?")
            agent.get_by_role("button", name="Send").click()
            expect(bots.nth(2)).to_contain_text("Hi, Olga here. <b>Which</b> order?")

            other = browser.new_context().new_page()  # a second agent, meanwhile
            log_in(other, "ada")
            other.goto(agent.url)
            expect(other.locator(".take")).to_contain_text("olga has this conversation")
            expect(other.locator("textarea[name=text]")).to_have_count(0)

            say("It is <script>alert(1)</script> 100200")
            transcript = agent.locator("#transcript li.in")
            expect(transcript.last).to_have_text(
                re.compile(re.escape("It is <script>alert(1)</script> 100200")))  # live, as text
            agent.screenshot(path=str(shots / "console-conversation.png"), full_page=True)
            assert agent.locator("#transcript script").count() == 0

            agent.locator("select[name=step]").select_option("menu")
            agent.get_by_role("button", name="Give back").click()
            expect(agent).to_have_url(re.compile(r"/console/$"))
            expect(agent.locator("#empty")).to_be_visible()
            expect(bots.nth(3)).to_contain_text("Hi, this is Acme Support")  # the step's prompt
            # What agents did, live on the second agent's page too.
            expect(other.locator("#actions")).to_contain_text("olga resumed at menu")
            say("1")
            expect(bots.nth(4)).to_contain_text("open")  # the bot answers the next message

            # The admin's funnel of a survey that one user finished and one left at rating.
            for n, answers in enumerate((["survey", "Ada", "5", "Quick, thanks"],
                                         ["survey", "Bob", "nine"])):
                surveyed = browser.new_context().new_page()
                surveyed.goto(f"{url}/?phone=38050987650{n}")
                for i, text in enumerate(answers):
                    surveyed.locator("#text").fill(text)
                    surveyed.locator("#send").click()
                    expect(surveyed.locator(".bubble.bot")).to_have_count(i + 1)
            other.get_by_role("link", name="Flows").click()
            other.get_by_role("link", name="survey").click()
            expect(other.locator("#summary")).to_contain_text("2 conversations started: 1 finished")
            expect(other.locator("svg.graph")).to_be_visible()
            other.set_viewport_size({"width": 1100, "height": 900})
            other.screenshot(path=str(shots / "console-funnel.png"), full_page=True)
        finally:
            browser.close()
