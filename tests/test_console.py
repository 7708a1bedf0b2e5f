"""The operator console over real HTTP on loopback: logging in, who may see and do what, the
inbox, a transcript, an agent's reply through the outbox, closing, and user text as text."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from aiohttp import ClientSession, CookieJar
from aiohttp.test_utils import TestServer, unused_port

from botkit import Settings, create_app
from botkit.console.app import ANNOUNCE
from botkit.console.links import SANDBOX_ADMIN
from botkit.console.pages import FEED
from botkit.console.passwords import hash_password
from botkit.core.records import User
from botkit.sandbox.chat import CHAT_PROVIDER
from botkit.web.server import CONSOLE, RUNTIME
from bots.support import support
from bots.survey import survey

PHONE = "380501234567"
PASSWORD = "correct horse battery"
HTML = {"Accept": "text/html"}


class Console:
    """A sandbox server with the console, and a browser-like client per user."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.app = server.app
        self.url = str(server.make_url(""))
        self.clients: list[ClientSession] = []

    @property
    def bot(self):
        return self.app[RUNTIME].bot

    @property
    def provider(self):
        return self.app[CHAT_PROVIDER]

    def client(self) -> ClientSession:
        # unsafe: keep cookies for an IP address (127.0.0.1), as a browser does
        client = ClientSession(base_url=self.url, cookie_jar=CookieJar(unsafe=True))
        self.clients.append(client)
        return client

    async def add_user(self, name: str, role: str = "agent") -> None:
        await self.bot.store.add_user(User(name=name, role=role,
                                           password_hash=hash_password(PASSWORD),
                                           created_at=time.time()))

    async def logged_in(self, name: str, role: str = "agent") -> ClientSession:
        await self.add_user(name, role)
        client = self.client()
        async with client.post("/console/login", data={
                "name": name, "password": PASSWORD, "csrf": await csrf(client, "/console/login")},
                allow_redirects=False) as response:
            assert response.status == 303, await response.text()
        return client

    async def user_says(self, text: str, phone: str = PHONE) -> None:
        async with self.client().post("/sandbox/chat/send",
                                      json={"phone": phone, "text": text}) as response:
            assert response.status == 200, await response.text()

    async def handed_over(self, phone: str = PHONE) -> int:
        await self.user_says("support", phone)
        await self.user_says("agent", phone)
        for _ in range(100):
            waiting = [c for c, _ in await self.bot.store.human_conversations()]
            if any(c.phone == phone for c in waiting):
                return next(c.id for c in waiting if c.phone == phone)
            await asyncio.sleep(0.05)
        raise AssertionError(f"{phone} was not handed over")

    async def sent_to(self, phone: str, count: int) -> list:
        for _ in range(100):
            messages = self.provider.messages_to(phone)
            if len(messages) >= count:
                return messages
            await asyncio.sleep(0.05)
        raise AssertionError(f"{phone} got {len(self.provider.messages_to(phone))} messages,"
                             f" not {count}")


async def csrf(client: ClientSession, page: str) -> str:
    async with client.get(page, headers=HTML) as response:
        html = await response.text()
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


@pytest.fixture
async def console(tmp_path):
    port = unused_port()
    app = create_app(Settings(db=tmp_path / "console.db", port=port), [survey, support])
    server = TestServer(app, port=port)
    await server.start_server()
    made = Console(server)
    yield made
    for client in made.clients:
        await client.close()
    await server.close()


# -- access ------------------------------------------------------------------------------------


async def test_every_console_route_is_refused_without_a_session(console):
    client = console.client()
    checked = 0
    for resource in console.app[CONSOLE].router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter") or ""
        if "/static" in str(info.get("prefix", "")) or "{filename" in path:
            continue
        for name, value in (("{id}", "1"), ("{token}", "x"), ("{phone}", PHONE),
                            ("{flow}", "survey"), ("{table}", "inbound")):
            path = path.replace(name, value)
        for route in resource:
            method = route.method
            if path in ("/console/login", "/console/login/once/x"):
                continue  # anyone may see the login (the link refuses an unknown token)
            async with client.request(method, path, headers=HTML,
                                      allow_redirects=False) as response:
                if method == "GET":
                    assert response.status == 303, (method, path, response.status)
                    assert response.headers["Location"].startswith("/console/login?next=")
                else:  # no session, so no CSRF token either
                    assert response.status in (401, 403), (method, path, response.status)
            async with client.request(method, path, allow_redirects=False) as response:
                assert response.status in (401, 403), (method, path, response.status)
                assert "error" in await response.json()
            checked += 1
    assert checked >= 7  # inbox, its feed, a conversation, reply, close, logout, users


async def test_an_agent_is_refused_what_needs_an_admin(console):
    agent = await console.logged_in("olga")
    async with agent.get("/console/users") as response:
        assert response.status == 403
        assert "admin" in (await response.json())["error"]
    admin = await console.logged_in("ada", "admin")
    async with admin.get("/console/users", headers=HTML) as response:
        page = await response.text()
    assert response.status == 200 and "olga" in page and "ada" in page


async def test_a_change_without_its_csrf_token_is_refused_and_sends_nothing(console):
    conv_id = await console.handed_over()
    before = len(await console.sent_to(PHONE, 2))
    agent = await console.logged_in("olga")
    for data, headers in (({"text": "hi"}, {}),
                          ({"text": "hi", "csrf": "forged"}, {}),
                          ({"text": "hi"}, {"X-CSRF-Token": "forged"})):
        async with agent.post(f"/console/conversations/{conv_id}/reply", data=data,
                              headers=headers, allow_redirects=False) as response:
            assert response.status == 403
            assert "CSRF" in (await response.json())["error"]
    await asyncio.sleep(0.3)
    assert len(console.provider.messages_to(PHONE)) == before
    # Another user's token is not this session's either.
    other = await console.logged_in("ada")
    token = await csrf(other, "/console/")
    async with agent.post(f"/console/conversations/{conv_id}/close", data={"csrf": token},
                          allow_redirects=False) as response:
        assert response.status == 403
    assert (await console.bot.store.conversation(conv_id)).status.value == "human"


async def test_failed_logins_are_throttled(console):
    await console.add_user("olga")
    client = console.client()
    token = await csrf(client, "/console/login")
    for _ in range(5):
        async with client.post("/console/login", data={
                "name": "olga", "password": "wrong password", "csrf": token}) as response:
            assert response.status == 401
            assert "Wrong name or password" in await response.text()
    async with client.post("/console/login", data={
            "name": "olga", "password": PASSWORD, "csrf": token},
            allow_redirects=False) as response:
        assert response.status == 429
        assert int(response.headers["Retry-After"]) > 0
        assert "Too many failed attempts" in await response.text()
    await console.logged_in("ada")  # another name from the same address is not locked out


async def test_an_unknown_name_is_refused_like_a_wrong_password(console):
    client = console.client()
    token = await csrf(client, "/console/login")
    async with client.post("/console/login", data={
            "name": "nobody", "password": PASSWORD, "csrf": token}) as response:
        assert response.status == 401
        assert "Wrong name or password" in await response.text()


async def test_a_session_ends_when_its_user_is_removed_or_the_password_changes(console):
    olga = await console.logged_in("olga")
    async with olga.get("/console/api/inbox") as response:
        assert response.status == 200
    await console.bot.store.set_password("olga", hash_password("another password"))
    async with olga.get("/console/api/inbox") as response:
        assert response.status == 401
    ada = await console.logged_in("ada")
    await console.bot.store.remove_user("ada")
    async with ada.get("/console/api/inbox") as response:
        assert response.status == 401


async def test_the_session_cookie_is_httponly_strict_and_encrypted(console):
    await console.add_user("olga")
    client = console.client()
    async with client.post("/console/login", data={
            "name": "olga", "password": PASSWORD,
            "csrf": await csrf(client, "/console/login")}, allow_redirects=False) as response:
        cookie = response.cookies["botkit_console"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert cookie["path"] == "/console"
    assert "olga" not in cookie.value  # encrypted, not just signed


async def test_after_a_login_the_console_goes_where_it_was_asked_but_never_off_site(console):
    await console.add_user("olga")
    for asked, landed in (("/console/users", "/console/users"),
                          ("https://evil.example/", "/console/"),
                          ("//evil.example/console/", "/console/")):
        client = console.client()
        async with client.post("/console/login", data={
                "name": "olga", "password": PASSWORD, "next": asked,
                "csrf": await csrf(client, "/console/login")},
                allow_redirects=False) as response:
            assert response.headers["Location"] == landed


async def test_the_sandbox_prints_a_one_time_link_that_logs_in_once(console):
    [path] = console.app[CONSOLE][ANNOUNCE]
    client = console.client()
    async with client.get(path, headers=HTML, allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "/console/"
    async with client.get("/console/users", headers=HTML) as response:
        assert response.status == 200 and SANDBOX_ADMIN in await response.text()
    async with console.client().get(path, headers=HTML) as response:
        assert response.status == 410


# -- the inbox, a transcript, a reply ----------------------------------------------------------


async def test_an_agent_answers_a_handed_over_user_through_the_outbox(console):
    conv_id = await console.handed_over()
    agent = await console.logged_in("olga")
    async with agent.get("/console/api/inbox") as response:
        [waiting] = (await response.json())["waiting"]
    assert waiting["id"] == conv_id and waiting["phone"] == PHONE
    assert (waiting["flow"], waiting["step"]) == ("support", "menu")
    async with agent.get("/console/", headers=HTML) as response:
        page = await response.text()
    assert "<title>(1) Inbox" in page and PHONE in page
    before = len(await console.sent_to(PHONE, 2))

    token = await csrf(agent, f"/console/conversations/{conv_id}")
    async with agent.post(f"/console/conversations/{conv_id}/reply",
                          data={"text": "Hi, Olga here. Which order?", "csrf": token},
                          allow_redirects=False) as response:
        assert response.status == 303
    sent = (await console.sent_to(PHONE, before + 1))[-1]
    assert sent.request.message_type == 206
    assert "Hi, Olga here. Which order?" in sent.request.text

    await console.user_says("It is 100200")  # it names the agent's message: routed here
    await asyncio.sleep(0.3)
    assert len(console.provider.messages_to(PHONE)) == before + 1  # no auto-reply
    async with agent.get(f"/console/conversations/{conv_id}", headers=HTML) as response:
        page = await response.text()
    assert "It is 100200" in page and "Hi, Olga here. Which order?" in page
    assert '<dd id="locale">en</dd>' in page  # the language it speaks (+380 guesses none)

    async with agent.post(f"/console/conversations/{conv_id}/close", data={"csrf": token},
                          allow_redirects=False) as response:
        assert response.status == 303
    assert (await console.bot.store.conversation(conv_id)).status.value == "released"
    async with agent.get("/console/api/inbox") as response:
        assert (await response.json())["waiting"] == []
    await console.user_says("support")  # the bot answers again
    await console.sent_to(PHONE, before + 2)


async def test_a_reply_is_refused_when_the_conversation_is_no_longer_with_a_human(console):
    conv_id = await console.handed_over()
    agent = await console.logged_in("olga")
    token = await csrf(agent, f"/console/conversations/{conv_id}")
    await console.bot.store.release(PHONE, time.time())
    async with agent.post(f"/console/conversations/{conv_id}/reply",
                          data={"text": "hello?", "csrf": token}) as response:
        assert response.status == 409
        assert "not with a human" in (await response.json())["error"]
    async with agent.post(f"/console/conversations/{conv_id}/reply",
                          data={"text": "   ", "csrf": token}) as response:
        assert response.status == 400
    async with agent.get("/console/conversations/999999") as response:
        assert response.status == 404
        assert "999999" in (await response.json())["error"]


async def test_user_text_and_agent_replies_are_shown_as_text(console):
    conv_id = await console.handed_over()
    await console.user_says("<script>alert('user')</script>")
    agent = await console.logged_in("olga")
    token = await csrf(agent, f"/console/conversations/{conv_id}")
    async with agent.post(f"/console/conversations/{conv_id}/reply",
                          data={"text": "<img src=x onerror=alert('agent')>", "csrf": token},
                          allow_redirects=False) as response:
        assert response.status == 303
    await asyncio.sleep(0.3)
    async with agent.get(f"/console/conversations/{conv_id}", headers=HTML) as response:
        page = await response.text()
        policy = response.headers["Content-Security-Policy"]
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#39;user&#39;)" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(&#39;agent&#39;)&gt;" in page
    assert "default-src 'self'" in policy  # and no inline script could run anyway
    async with agent.get("/console/api/inbox") as response:
        assert response.content_type == "application/json"



# -- where the console is served ---------------------------------------------------------------


def _serve(tmp_path, **env_vars: str):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    port = unused_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTKIT_")}
    env.update(BOTKIT_DB=str(tmp_path / "served.db"), BOTKIT_PORT=str(port), **env_vars)
    log = tmp_path / "served.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "run.py"], cwd=root, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while "provider callbacks go to" not in log.read_text() or (
            "operator console at" not in log.read_text() and env_vars.get(
                "BOTKIT_CONSOLE") != "off"):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"server did not start: {log.read_text()}")
        time.sleep(0.1)
    return proc, port, log


def _status(url: str, opener=None) -> int:
    import urllib.error
    import urllib.request

    try:
        with (opener or urllib.request.build_opener()).open(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _stop(proc) -> None:
    import signal

    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)


def test_the_console_can_listen_on_an_address_of_its_own(tmp_path):
    console_port = unused_port()
    proc, port, log = _serve(tmp_path, BOTKIT_CONSOLE=f"127.0.0.1:{console_port}")
    try:
        assert _status(f"http://127.0.0.1:{console_port}/console/login") == 200
        assert _status(f"http://127.0.0.1:{port}/console/login") == 404
        assert _status(f"http://127.0.0.1:{port}/healthz") == 200
        assert _status(f"http://127.0.0.1:{port}/metrics") == 404  # inside, beside the console
        assert _status(f"http://127.0.0.1:{console_port}/metrics") == 200
        printed = log.read_text()
        assert f"operator console at http://127.0.0.1:{console_port}/console/" in printed
        link = re.search(r"\(once\): (\S+)", printed).group(1)
        assert link.startswith(f"http://127.0.0.1:{console_port}/console/login/once/")
        import http.cookiejar
        import urllib.request

        browser = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        assert _status(link, browser) == 200  # logged in: the inbox, after the redirect
        assert _status(f"http://127.0.0.1:{console_port}/console/api/inbox", browser) == 200
        assert _status(link) == 410  # once
    finally:
        _stop(proc)


def test_the_console_can_be_turned_off(tmp_path):
    proc, port, log = _serve(tmp_path, BOTKIT_CONSOLE="off")
    try:
        assert _status(f"http://127.0.0.1:{port}/console/login") == 404
        assert "operator console" not in log.read_text()
    finally:
        _stop(proc)


# -- run.py user ---------------------------------------------------------------------------


def _cli(capsys, monkeypatch, db, *words: str, stdin: str = ""):
    import io

    from botkit.cli.main import main

    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main([*words, "--db", str(db)])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_py_user_adds_lists_changes_and_removes_users(tmp_path, capsys, monkeypatch):
    import asyncio as aio

    from botkit.console.passwords import check_password
    from botkit.storage.engines import store_for

    db = tmp_path / "users.db"
    code, out, _ = _cli(capsys, monkeypatch, db, "user", "add", "olga", "--password-stdin",
                        stdin=PASSWORD + "\n")
    assert code == 0 and "added agent olga" in out
    code, out, _ = _cli(capsys, monkeypatch, db, "user", "add", "ada", "--role", "admin",
                        "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0
    code, out, _ = _cli(capsys, monkeypatch, db, "user", "list")
    assert [line.split()[:2] for line in out.splitlines()] == [["ada", "admin"],
                                                               ["olga", "agent"]]
    code, _, err = _cli(capsys, monkeypatch, db, "user", "add", "olga", "--password-stdin",
                        stdin=PASSWORD + "\n")
    assert code == 2 and "exists already" in err
    code, _, err = _cli(capsys, monkeypatch, db, "user", "passwd", "olga", "--password-stdin",
                        stdin="short\n")
    assert code == 2 and "at least 10 characters" in err
    code, out, _ = _cli(capsys, monkeypatch, db, "user", "passwd", "olga", "--password-stdin",
                        stdin="a new long password\n")
    assert code == 0

    async def stored() -> str:
        store = store_for(db)
        await store.open()
        try:
            user = await store.user("olga")
            assert user is not None
            return user.password_hash
        finally:
            await store.close()

    stored_hash = aio.run(stored())
    assert stored_hash.startswith("$argon2id$") and "a new long password" not in stored_hash
    assert aio.run(check_password(stored_hash, "a new long password"))
    assert not aio.run(check_password(stored_hash, PASSWORD))
    code, out, _ = _cli(capsys, monkeypatch, db, "user", "remove", "olga")
    assert code == 0 and "removed olga" in out
    code, _, err = _cli(capsys, monkeypatch, db, "user", "remove", "olga")
    assert code == 1 and "no user 'olga'" in err


def test_run_py_user_says_what_to_fix(tmp_path, capsys, monkeypatch):
    db = tmp_path / "users.db"
    code, _, err = _cli(capsys, monkeypatch, db, "user", "add", "olga")  # stdin: no terminal
    assert code == 2 and "--password-stdin" in err
    code, _, err = _cli(capsys, monkeypatch, db, "user", "add", "bad name!", "--password-stdin",
                        stdin=PASSWORD + "\n")
    assert code == 2 and "not a user name" in err
    code, out, _ = _cli(capsys, monkeypatch, db, "user", "list")
    assert code == 0 and "no users yet" in out


def test_the_throttle_counts_a_name_per_address_and_an_address_for_every_name():
    from botkit.console.access import Throttle

    now = [0.0]
    throttle = Throttle(per_name=2, per_address=3, window=60.0, clock=lambda: now[0])
    throttle.failed("Olga", "10.0.0.1")
    assert throttle.retry_after("olga", "10.0.0.1") == 0
    throttle.failed("olga", "10.0.0.1")
    assert throttle.retry_after("OLGA", "10.0.0.1") == 60.0  # names compare without case
    assert throttle.retry_after("olga", "10.0.0.2") == 0  # not from elsewhere
    throttle.failed("ada", "10.0.0.1")
    assert throttle.retry_after("bo", "10.0.0.1") == 60.0  # the address tried 3 names
    now[0] = 61.0
    assert throttle.retry_after("olga", "10.0.0.1") == 0  # the window passed
    throttle.failed("olga", "10.0.0.2")
    throttle.succeeded("olga", "10.0.0.2")
    throttle.failed("olga", "10.0.0.2")
    assert throttle.retry_after("olga", "10.0.0.2") == 0  # a success starts the count again


# -- one agent at a time, and giving a conversation back ----------------------------------


async def _post(client: ClientSession, path: str, page: str, **data: str):
    data["csrf"] = await csrf(client, page)
    response = await client.post(path, data=data, allow_redirects=False)
    body = await response.text()
    response.release()
    return response.status, body


async def test_one_agent_at_a_time_and_a_take_over_is_explicit_and_recorded(console):
    conv_id = await console.handed_over()
    page = f"/console/conversations/{conv_id}"
    olga, ada = await console.logged_in("olga"), await console.logged_in("ada")
    assert (await _post(olga, f"{page}/take", page))[0] == 303
    async with ada.get("/console/api/inbox") as response:
        assert (await response.json())["waiting"][0]["agent"] == "olga"
    async with ada.get(page, headers=HTML) as response:
        html = await response.text()
    assert "olga has this conversation" in html and "Take it over from olga" in html
    assert 'name="text"' not in html  # no reply box for ada
    before = len(await console.sent_to(PHONE, 2))

    status, body = await _post(ada, f"{page}/reply", page, text="Ada here")
    assert status == 409 and "olga has conversation" in body
    status, body = await _post(ada, f"{page}/take", page)  # a take without over: refused
    assert status == 409
    status, _ = await _post(ada, f"{page}/close", page)
    assert status == 409
    await asyncio.sleep(0.3)
    assert len(console.provider.messages_to(PHONE)) == before  # nothing went out

    assert (await _post(ada, f"{page}/take", page, over="1"))[0] == 303
    status, body = await _post(olga, f"{page}/reply", page, text="Olga again")
    assert status == 409 and "ada has conversation" in body
    assert (await _post(ada, f"{page}/reply", page, text="Ada here"))[0] == 303
    await console.sent_to(PHONE, before + 1)
    actions = [(a.agent, a.action, a.detail)
               for a in await console.bot.store.actions(conv_id)]
    assert actions == [("olga", "took", None), ("ada", "took_over", "olga"),
                       ("ada", "replied", None)]
    async with olga.get(page, headers=HTML) as response:
        assert "ada took over from olga" in await response.text()


async def test_an_agent_gives_the_user_back_to_the_bot_at_a_step(console):
    conv_id = await console.handed_over()
    page = f"/console/conversations/{conv_id}"
    olga = await console.logged_in("olga")
    before = len(await console.sent_to(PHONE, 2))
    async with olga.get(page, headers=HTML) as response:
        html = await response.text()
    assert "<option>order_number</option>" in html  # the flow's steps to give it back at
    status, body = await _post(olga, f"{page}/resume", page, step="nowhere")
    assert status == 400 and "no step 'nowhere'" in body
    assert (await _post(olga, f"{page}/resume", page, step="order_number"))[0] == 303

    asked = (await console.sent_to(PHONE, before + 1))[-1]
    assert "order number" in asked.request.text.lower()  # the step's prompt
    conv = await console.bot.store.conversation(conv_id)
    assert (conv.status.value, conv.step) == ("active", "order_number")
    assert await console.bot.store.holders([conv_id]) == {}
    assert [a.action for a in await console.bot.store.actions(conv_id)] == ["took", "resumed"]
    await console.user_says("100200")  # the bot answers the next message, at that step
    answer = (await console.sent_to(PHONE, before + 2))[-1]
    assert "shipped on Monday" in answer.request.text
    async with olga.get("/console/api/inbox") as response:
        assert (await response.json())["waiting"] == []


# -- live pages ------------------------------------------------------------------------------


async def _next_change(stream, timeout: float) -> None:
    while await asyncio.wait_for(stream.content.readline(), timeout) != b"data: changed\n":
        pass


async def test_a_users_new_message_reaches_an_open_page_as_an_event(console):
    conv_id = await console.handed_over()
    agent = await console.logged_in("olga")
    feed = console.app[CONSOLE][FEED]
    assert feed.reads == 0  # nobody watched yet: the database was not read for it
    async with agent.get("/console/api/events") as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        assert await stream.content.readline() == b"retry: 1000\n"
        await asyncio.sleep(1.2)  # the feed has read what is there now
        await console.user_says("Are you there?")
        await _next_change(stream, 5)  # it reads every 0.5 s (console.live.INTERVAL)
        async with agent.get(f"/console/api/conversations/{conv_id}") as response:
            conversation = await response.json()
        assert conversation["locale"] == "en"
        assert conversation["history"][-1] == {
            "direction": "in", "at": conversation["history"][-1]["at"],
            "text": "Are you there?", "detail": "handled (human)"}
        other = await console.logged_in("ada")  # another agent acts: the page hears it
        await _post(other, f"/console/conversations/{conv_id}/take",
                    f"/console/conversations/{conv_id}")
        await _next_change(stream, 5)
    reads = feed.reads
    await asyncio.sleep(1.2)
    assert feed.reads <= reads + 1  # the page closed: the feed stops reading


async def test_the_event_stream_needs_a_session(console):
    async with console.client().get("/console/api/events") as response:
        assert response.status == 401


def test_the_server_logs_json_lines_when_asked(tmp_path):
    import json

    proc, port, log = _serve(tmp_path, BOTKIT_CONSOLE="off", BOTKIT_LOG_FORMAT="json")
    try:
        assert _status(f"http://127.0.0.1:{port}/metrics") == 200  # console off: on the bot's
    finally:
        _stop(proc)
    entries = [json.loads(line) for line in log.read_text().splitlines()
               if line.startswith("{")]
    assert {"botkit.store", "botkit.server"} <= {e["logger"] for e in entries}
    assert any("serving flows" in e["message"] for e in entries)


async def test_canned_replies_are_rendered_for_the_conversation_and_the_agent(console):
    conv_id = await console.handed_over()
    agent = await console.logged_in("olga")
    async with agent.get(f"/console/conversations/{conv_id}", headers=HTML) as response:
        html = await response.text()
    options = dict(re.findall(r'<option data-text="([^"]*)"[^>]*>([^<]+)</option>', html))
    names = {name: text for text, name in options.items()}
    assert set(names) >= {"greeting.txt", "order_delay.txt", "goodbye.txt"}
    assert names["greeting.txt"] == "Hi, this is olga from Acme Support. How can I help?"
    assert names["order_delay.txt"].startswith("Sorry for the wait! Your order is delayed")


async def test_a_canned_reply_that_cannot_be_rendered_says_why_and_cannot_be_picked(tmp_path):
    import shutil
    from pathlib import Path

    templates = tmp_path / "templates"
    shutil.copytree(Path(__file__).resolve().parents[1] / "templates", templates)
    (templates / "agent" / "broken.txt").write_text("Your order {{ state.order }} is late.")
    port = unused_port()
    app = create_app(Settings(db=tmp_path / "console.db", port=port), [survey, support],
                     templates=str(templates))
    server = TestServer(app, port=port)
    await server.start_server()
    made = Console(server)
    try:
        conv_id = await made.handed_over()
        agent = await made.logged_in("olga")
        async with agent.get(f"/console/conversations/{conv_id}", headers=HTML) as response:
            html = await response.text()
        [broken] = re.findall(r'<option data-text="" disabled title="([^"]+)">broken.txt', html)
        assert "order" in broken  # what the state lacks
        assert "(cannot be used here)" in html and "greeting.txt" in html
    finally:
        for client in made.clients:
            await client.close()
        await server.close()
