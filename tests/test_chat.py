"""The sandbox web chat: page, event stream, send/start API, escaping, when it is served."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer, unused_port

from botkit import Flow, Settings, create_app
from bots.support import support
from bots.survey import survey

PHONE = "380501234567"

odd = Flow("odd", keywords=["<b>bold</b>"])


@odd.step("s", prompt="survey/ask_name.txt")
async def s(turn):
    turn.finish()


async def serve(tmp_path, flows, **settings):
    port = unused_port()
    app = create_app(Settings(db=tmp_path / "chat.db", port=port, **settings), flows)
    server = TestServer(app, port=port)
    await server.start_server()
    return server


@pytest.fixture
async def sandbox(tmp_path):
    server = await serve(tmp_path, [survey, support])
    async with ClientSession(base_url=str(server.make_url(""))) as session:
        yield session
    await server.close()


async def next_event(stream, kind: str) -> dict:
    while True:
        line = await asyncio.wait_for(stream.content.readline(), 5)
        if line.startswith(b"data: "):
            event = json.loads(line[6:])
            if event["kind"] == kind:
                return event


async def test_page_lists_flows_and_keywords(sandbox):
    async with sandbox.get("/") as response:
        html = await response.text()
    assert response.status == 200 and response.content_type == "text/html"
    assert 'data-flow="survey"' in html and 'data-flow="support"' in html
    assert "or send: survey" in html and "opening hours" in html
    for asset in ("/sandbox/static/chat.js", "/sandbox/static/chat.css"):
        async with sandbox.get(asset) as response:
            assert response.status == 200


async def test_start_send_and_stream(sandbox):
    async with sandbox.get("/sandbox/chat/events", params={"phone": PHONE}) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        async with sandbox.post("/sandbox/chat/start",
                                json={"phone": PHONE, "flow": "survey"}) as response:
            assert await response.json() == {"outcome": "started", "detail": ""}
        first = await next_event(stream, "bot")
        assert first["text"].startswith("Hi! We'd love your feedback") and first["type"] == 206
        status = await next_event(stream, "status")
        assert status["id"] == first["id"]
        async with sandbox.post("/sandbox/chat/send",
                                json={"phone": PHONE, "text": "<i>Ana</i>"}) as response:
            assert response.status == 200 and (await response.json())["ok"]
        user = await next_event(stream, "user")
        assert user["text"] == "<i>Ana</i>"
        reply = await next_event(stream, "bot")
        assert reply["text"].startswith("Thanks, <i>Ana</i>!")


async def test_history_is_replayed_to_a_new_tab(sandbox):
    await sandbox.post("/sandbox/chat/send", json={"phone": PHONE, "text": "menu"})
    async with sandbox.get("/sandbox/chat/events", params={"phone": PHONE}) as stream:
        assert (await next_event(stream, "user"))["text"] == "menu"
        assert (await next_event(stream, "bot"))["text"].startswith("Hi, this is Acme Support")


async def test_a_hand_over_shows_in_the_state_and_the_sandbox_can_be_the_agent(sandbox):
    async def state() -> dict:
        async with sandbox.get("/sandbox/chat/state", params={"phone": PHONE}) as r:
            return (await r.json())["conversation"]

    assert await state() is None
    async with sandbox.get("/sandbox/chat/events", params={"phone": PHONE}) as stream:
        await sandbox.post("/sandbox/chat/send", json={"phone": PHONE, "text": "agent"})
        handoff = await next_event(stream, "bot")
        assert handoff["text"].startswith("OK, a person from our team will answer you")
        assert (await state())["status"] == "human"

        async with sandbox.post("/sandbox/chat/agent",
                                json={"phone": PHONE, "text": "Hi, <b>Olga</b> here."}) as r:
            assert r.status == 200 and (await r.json())["ok"]
        said = await next_event(stream, "bot")
        assert (said["text"], said["type"]) == ("Hi, <b>Olga</b> here.", 206)

        async with sandbox.post("/sandbox/chat/release", json={"phone": PHONE}) as r:
            assert r.status == 200 and "released" in await r.json()
        assert await state() is None
        await sandbox.post("/sandbox/chat/send", json={"phone": PHONE, "text": "menu"})
        assert (await next_event(stream, "bot"))["text"].startswith("Hi, this is Acme Support")

    for path in ("/sandbox/chat/agent", "/sandbox/chat/release"):  # no one is with a person
        async with sandbox.post(path, json={"phone": PHONE, "text": "x"}) as r:
            assert r.status == 409
            assert (await r.json())["error"] == f"{PHONE} has no conversation with a person"


async def test_phones_are_read_as_people_write_them(sandbox):
    async with sandbox.get("/sandbox/chat/state", params={"phone": "+38 (050) 123-45-67"}) as r:
        assert (await r.json())["phone"] == PHONE
    async with sandbox.post("/sandbox/chat/send",
                            json={"phone": "+380 50 123 4567", "text": "menu"}) as r:
        assert r.status == 200
    async with sandbox.get("/sandbox/chat/state", params={"phone": PHONE}) as r:
        assert (await r.json())["conversation"]["flow"] == "support"
    async with sandbox.get("/sandbox/chat/state", params={"phone": "call me"}) as r:
        assert r.status == 400
        assert (await r.json()) == {"field": "phone", "error": "phone: 'call me': not a phone"
                                    " number (digits, spaces, +, - and brackets)"}


async def test_bad_requests_name_the_field(sandbox):
    async with sandbox.post("/sandbox/chat/send", json={"phone": "abc", "text": "x"}) as r:
        assert r.status == 400 and (await r.json())["field"] == "phone"
    async with sandbox.post("/sandbox/chat/send", json={"phone": PHONE, "text": ""}) as r:
        assert r.status == 400 and (await r.json())["field"] == "text"
    async with sandbox.post("/sandbox/chat/start", json={"phone": PHONE, "flow": "nope"}) as r:
        assert r.status == 400 and "no flow is named 'nope'" in (await r.json())["error"]
    async with sandbox.post("/sandbox/chat/send", data=b"{") as r:
        assert r.status == 400 and "not valid JSON" in (await r.json())["error"]
    async with sandbox.get("/sandbox/chat/events", params={"phone": "x"}) as r:
        assert r.status == 400


async def test_page_escapes_flow_text(tmp_path):
    server = await serve(tmp_path, [odd])
    try:
        async with ClientSession() as session:
            async with session.get(server.make_url("/")) as response:
                html = await response.text()
        assert "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold</b>" not in html
    finally:
        await server.close()


async def test_chat_is_not_served_with_a_provider_key(tmp_path):
    server = await serve(tmp_path, [survey], api_key="real-key")
    try:
        async with ClientSession() as session:
            for path in ("/", "/sandbox/static/chat.js", "/sandbox/api/send-viber"):
                async with session.get(server.make_url(path)) as response:
                    assert response.status == 404
    finally:
        await server.close()


async def test_sandbox_can_be_forced_on_with_a_key(tmp_path):
    server = await serve(tmp_path, [survey], api_key="real-key", sandbox=True)
    try:
        async with ClientSession() as session:
            async with session.get(server.make_url("/")) as response:
                assert response.status == 200
    finally:
        await server.close()
