"""The fake provider speaks the contract of PROVIDER_API.md over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient, AiohttpServer

from botkit.models import MessageStatus
from botkit.sandbox import FakeProvider, Fault, create_provider_app

PHONE = "380501112233"
START = 1_700_000_000.0


@dataclass
class FakeClock:
    now: float = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Bot:
    """The bot side: records every callback the provider posts and answers 200."""

    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)

    async def wait_for(self, count: int, timeout: float = 2.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.posts) < count:
                await asyncio.sleep(0.005)
        return self.posts

    def statuses(self, message_id: int) -> list[int]:
        return [p["status"] for p in self.posts if p.get("message_id") == message_id]


Client = TestClient[web.Request, web.Application]
StartProvider = Callable[..., Awaitable[tuple[FakeProvider, Client]]]


@pytest.fixture
async def bot(aiohttp_server: AiohttpServer) -> Bot:
    recorder = Bot(url="")

    async def callback(request: web.Request) -> web.Response:
        recorder.posts.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/callback", callback)
    server = await aiohttp_server(app)
    recorder.url = str(server.make_url("/callback"))
    return recorder


@pytest.fixture
def start_provider(aiohttp_client: AiohttpClient) -> StartProvider:
    async def start(prefix: str = "", **kwargs: Any) -> tuple[FakeProvider, Client]:
        kwargs.setdefault("auto_deliver", False)
        provider = FakeProvider(**kwargs)
        return provider, await aiohttp_client(create_provider_app(provider, prefix=prefix))

    return start


def send_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source_addr": "Acme",
        "destination_addr": PHONE,
        "message_type": 206,
        "text": "What is your name?",
        "source_type": 1,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def rich_body(**overrides: Any) -> dict[str, Any]:
    rich = {
        "message_type": 208,
        "image": "https://example.com/cat.png",
        "button_caption": "Join us",
        "button_action": "https://example.com/join",
    }
    return send_body(**{**rich, **overrides})


def under(status: int, http_errors: bool) -> int:
    """The HTTP status an error is answered with: 200 (as the SDKs expect), or its own."""
    return status if http_errors else 200


MODES = pytest.mark.parametrize("http_errors", [False, True], ids=["errors-200", "errors-http"])


async def send(client: Client, body: Any, **kwargs: Any) -> tuple[int, Any]:
    resp = await client.post("/send-viber", json=body, **kwargs)
    return resp.status, await resp.json()


# --- /send-viber ------------------------------------------------------------------------


async def test_send_accepts_number_and_string_destinations_with_sequential_ids(
    start_provider: StartProvider,
) -> None:
    provider, client = await start_provider(first_id=429)

    assert await send(client, send_body(destination_addr=int(PHONE))) == (200, {"message_id": 429})
    assert await send(client, rich_body()) == (200, {"message_id": 430})

    first, second = provider.sent
    assert first.phone == PHONE and first.body["destination_addr"] == int(PHONE)
    assert second.request.button_caption == "Join us"
    assert provider.message(430) is second
    assert provider.messages_to(PHONE) == [first, second]
    assert provider.last_message("+" + PHONE) is second
    assert first.status == MessageStatus.PENDING


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        (send_body(text="x" * 1001), "text"),
        (send_body(text=None), "text"),
        (send_body(source_addr="A" * 21), "source_addr"),
        (rich_body(button_caption="B" * 31), "button_caption"),
        (send_body(validity_period=39), "validity_period"),
        (send_body(validity_period=21601), "validity_period"),
        (send_body(image="https://example.com/cat.png"), "image"),
        (rich_body(image="https://example.com/cat.gif"), "image"),
        (send_body(destination_addr="not a phone"), "destination_addr"),
        (send_body(message_type=107), "message_type"),
    ],
)
@MODES
async def test_send_rejects_each_invalid_field_naming_it(
    start_provider: StartProvider, body: dict[str, Any], field_name: str, http_errors: bool
) -> None:
    provider, client = await start_provider(http_errors=http_errors)

    status, answer = await send(client, body)

    assert status == under(400, http_errors)
    assert answer["name"] == f"Invalid Parameter: {field_name}"
    assert answer["code"] == 1 and answer["status"] == 400 and answer["message"]
    assert provider.sent == []


@MODES
async def test_send_rejects_a_body_that_is_not_json(
    start_provider: StartProvider, http_errors: bool
) -> None:
    provider, client = await start_provider(http_errors=http_errors)

    resp = await client.post("/send-viber", data=b"source_addr=Acme")
    answer = await resp.json()

    assert resp.status == under(400, http_errors)
    assert answer["name"] == "Invalid Parameter: body" and answer["code"] == 1
    assert "not valid JSON" in answer["message"]
    assert (await send(client, [1, 2]))[1]["message"] == "request body must be a JSON object"
    assert provider.sent == []


@MODES
async def test_basic_auth_is_required_when_a_key_is_set(
    start_provider: StartProvider, http_errors: bool
) -> None:
    provider, client = await start_provider(api_key="s3cret", http_errors=http_errors)
    good = "Basic " + base64.b64encode(b"s3cret").decode()

    missing = await send(client, send_body())
    wrong = await send(client, send_body(), headers={"Authorization": "Basic c2VjcmV0"})
    raw_key = await send(client, send_body(), headers={"Authorization": "Basic s3cret"})
    ok = await send(client, send_body(), headers={"Authorization": good, "X-Trace": "1"})

    assert missing[0] == wrong[0] == raw_key[0] == under(401, http_errors)
    assert missing[1]["name"] == "Unauthorized" and missing[1]["status"] == 401
    assert missing[1]["code"] == 0  # the PHP framework's default: code 0 is no rate limit
    assert "missing" in missing[1]["message"] and "invalid" in wrong[1]["message"]
    assert ok == (200, {"message_id": 1000})
    assert provider.sent[0].headers["X-Trace"] == "1"
    assert "authorization" not in {k.lower() for k in provider.sent[0].headers}


async def test_routes_live_under_the_prefix(start_provider: StartProvider) -> None:
    _, client = await start_provider(prefix="/v1/api")

    resp = await client.post("/v1/api/send-viber", json=send_body())

    assert resp.status == 200 and await resp.json() == {"message_id": 1000}


# --- /receive-viber -----------------------------------------------------------------------


@MODES
async def test_receive_reports_status_for_five_days_only(
    start_provider: StartProvider, http_errors: bool
) -> None:
    clock = FakeClock()
    provider, client = await start_provider(clock=clock, http_errors=http_errors)
    await send(client, send_body())

    async def status_of(message_id: Any) -> tuple[int, Any]:
        resp = await client.post("/receive-viber", json={"message_id": message_id})
        return resp.status, await resp.json()

    assert await status_of(1000) == (200, {"message_id": 1000, "status": 5})
    await provider.deliver(1000)
    assert await status_of("1000") == (200, {"message_id": 1000, "status": 1})

    unknown = await status_of(4242)
    assert unknown[0] == under(400, http_errors)
    assert unknown[1]["name"] == "Invalid Parameter: message_id"
    assert unknown[1]["code"] == 1 and unknown[1]["status"] == 400

    clock.now += 5 * 86400 + 1
    old = await status_of(1000)
    assert old[0] == under(400, http_errors)
    assert old[1]["name"] == "Invalid Parameter: message_id"


# --- delivery life cycle ------------------------------------------------------------------


async def test_auto_delivery_posts_pending_sent_delivered(
    start_provider: StartProvider, bot: Bot
) -> None:
    provider, client = await start_provider(auto_deliver=True)

    await send(client, send_body(callback_url=bot.url))
    await bot.wait_for(3)

    assert bot.posts == [
        {"message_id": 1000, "status": 5},
        {"message_id": 1000, "status": 0},
        {"message_id": 1000, "status": 1},
    ]
    assert [status for status, _ in provider.message(1000).history] == [5, 0, 1]


async def test_offline_phone_expires_to_undelivered_after_validity_period(
    start_provider: StartProvider, bot: Bot
) -> None:
    clock = FakeClock()
    provider, client = await start_provider(auto_deliver=True, clock=clock)
    await provider.set_online(PHONE, False)

    await send(client, send_body(callback_url=bot.url, validity_period=60))
    await bot.wait_for(2)
    await asyncio.sleep(0.02)
    assert bot.statuses(1000) == [5, 0]

    clock.now += 59
    assert await provider.expire_due() == []
    clock.now += 1
    assert await provider.expire_due() == [1000]

    assert bot.statuses(1000) == [5, 0, 4]
    await provider.set_online(PHONE, True)  # too late: undelivered is final
    assert provider.message(1000).status == MessageStatus.UNDELIVERED


async def test_phone_back_online_gets_its_waiting_messages(
    start_provider: StartProvider, bot: Bot
) -> None:
    provider, client = await start_provider(auto_deliver=True, clock=FakeClock())
    await provider.set_online(PHONE, False)

    await send(client, send_body(callback_url=bot.url))
    await bot.wait_for(2)
    await provider.set_online(PHONE)

    assert bot.statuses(1000) == [5, 0, 1]


async def test_manual_deliver_posts_any_status(start_provider: StartProvider, bot: Bot) -> None:
    provider, client = await start_provider()
    await send(client, send_body(callback_url=bot.url))

    await provider.deliver(1000, status=MessageStatus.REJECTED)

    assert bot.posts == [{"message_id": 1000, "status": 3}]
    with pytest.raises(KeyError, match="no message 999"):
        provider.message(999)


async def test_closing_cancels_slow_life_cycles(start_provider: StartProvider, bot: Bot) -> None:
    provider, client = await start_provider(auto_deliver=True, delivery_delay=30)

    await send(client, send_body(callback_url=bot.url))
    await bot.wait_for(1)
    await client.close()  # runs the app's cleanup: must not wait 30 s

    assert provider.message(1000).status == MessageStatus.PENDING


async def test_callback_failures_are_recorded_not_raised(start_provider: StartProvider) -> None:
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{sock.getsockname()[1]}/callback"
    provider, client = await start_provider()
    await send(client, send_body(callback_url=dead_url))

    await provider.deliver(1000)

    [(url, body, outcome)] = provider.callback_log
    assert (url, body) == (dead_url, {"message_id": 1000, "status": 1})
    assert isinstance(outcome, str) and "Connect" in outcome


# --- simulated users ----------------------------------------------------------------------


async def test_reply_posts_the_providers_2way_shape(
    start_provider: StartProvider, bot: Bot
) -> None:
    clock = FakeClock()
    provider, client = await start_provider(clock=clock)
    await send(client, send_body(callback_url=bot.url))  # 1000
    await send(client, send_body(callback_url=bot.url))  # 1001
    await send(client, send_body(message_type=106, callback_url=bot.url))  # one-way: 1002

    first = await provider.reply(PHONE, "Ana")
    clock.now += 5
    second = await provider.reply(PHONE, "again", tracking=None)
    third = await provider.reply(PHONE, "old", tracking=1000, token=7, time=12)

    assert first.ok and first.data == {"ok": True} and first.url == bot.url
    token = bot.posts[0]["message_token"]
    assert bot.posts == [
        {
            "message_token": token,
            "phone_number": PHONE,
            "time": int(START),
            "message": {"text": "Ana", "tracking_data": "tracking_id:1001"},
        },
        {
            "message_token": token + 1,
            "phone_number": PHONE,
            "time": int(START) + 5,
            "message": {"text": "again"},
        },
        {
            "message_token": 7,
            "phone_number": PHONE,
            "time": 12,
            "message": {"text": "old", "tracking_data": "tracking_id:1000"},
        },
    ]
    assert isinstance(token, int) and second.payload == bot.posts[1] and third.status == 200


async def test_reply_tracks_the_last_message_that_did_not_fail(
    start_provider: StartProvider, bot: Bot
) -> None:
    provider, client = await start_provider()
    await send(client, send_body(callback_url=bot.url))  # 1000
    await send(client, send_body(callback_url=bot.url))  # 1001
    await provider.deliver(1001, status=MessageStatus.UNDELIVERED)

    await provider.reply(PHONE, "hi")

    assert bot.posts[-1]["message"]["tracking_data"] == "tracking_id:1000"


async def test_reply_needs_a_callback_url(start_provider: StartProvider, bot: Bot) -> None:
    provider, client = await start_provider()
    await send(client, send_body())

    with pytest.raises(LookupError, match="no callback URL known for 380509998877"):
        await provider.reply("380509998877", "hi")
    with pytest.raises(LookupError):
        await provider.reply(PHONE, "hi")
    result = await provider.reply(PHONE, "hi", callback_url=bot.url)

    assert result.ok and bot.posts[0]["message"]["tracking_data"] == "tracking_id:1000"


# --- faults -------------------------------------------------------------------------------


async def test_scripted_faults_are_seen_by_a_plain_client(start_provider: StartProvider) -> None:
    provider, client = await start_provider()
    provider.faults.script(
        Fault.status(429, http=True),
        Fault.status(500, http=True),
        Fault.error_body_200(code=2),
        Fault.status(503, body=""),
        Fault.reset(),
        Fault.delay(0.3),
    )
    url = client.make_url("/send-viber")

    async with aiohttp.ClientSession() as session:

        async def post() -> tuple[int, Any]:
            async with session.post(url, json=send_body()) as resp:
                return resp.status, await resp.text()

        assert (await post())[0] == 429
        assert (await post())[0] == 500
        status, text = await post()
        assert status == 200 and '"code": 2' in text and "message_id" not in text
        assert await post() == (503, "")
        with pytest.raises(aiohttp.ClientConnectionError):
            await post()
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(url, json=send_body(), timeout=aiohttp.ClientTimeout(0.05)):
                pass
        # The delayed send still happens after the client gave up, as on the real provider.
        async with asyncio.timeout(2):
            while not provider.sent:
                await asyncio.sleep(0.01)
        assert await post() == (200, '{"message_id": 1001}')

    assert [m.message_id for m in provider.sent] == [1000, 1001]
    assert provider.faults.pending == 0


async def test_error_bodies_follow_the_providers_table(start_provider: StartProvider) -> None:
    provider, client = await start_provider()
    provider.faults.script(Fault.status(429), Fault.status(402, http=True),
                           Fault.error_body_200(code=0), Fault.status(405))

    assert await send(client, send_body()) == (
        200,  # as every SDK's tests answer errors
        {"name": "Too Many Requests", "message": "Rate limit exceeded", "code": 0, "status": 429},
    )
    status, answer = await send(client, send_body())
    assert (status, answer["code"], answer["status"]) == (402, 3, 402)
    assert await send(client, send_body()) == (
        200,
        {"name": "Too Many Requests", "message": "Rate limit exceeded", "code": 0, "status": 429},
    )
    assert await send(client, send_body()) == (
        200,
        {"name": "Method Not Allowed", "message": "Method Not Allowed", "code": 0, "status": 405},
    )
    assert provider.sent == []


async def test_http_errors_answer_under_the_errors_own_status(
    start_provider: StartProvider,
) -> None:
    provider, client = await start_provider(http_errors=True)
    provider.faults.script(Fault.status(401), Fault.status(401, http=False))

    status, answer = await send(client, send_body())
    assert (status, answer["name"], answer["code"]) == (401, "Unauthorized", 0)
    assert (await send(client, send_body()))[0] == 200
    assert (await send(client, send_body(text="")))[0] == 400


async def test_random_faults_are_deterministic_with_a_seed(start_provider: StartProvider) -> None:
    provider, client = await start_provider(http_errors=True)

    async def run() -> list[int]:
        provider.faults.rate(0.5, statuses=(429, 500), seed=7)
        return [(await send(client, send_body()))[0] for _ in range(20)]

    first, second = await run(), await run()

    assert first == second
    assert set(first) == {200, 429, 500}
    assert len(provider.sent) == 2 * first.count(200)
    provider.faults.clear()
    assert (await send(client, send_body()))[0] == 200


async def test_latency_delays_every_request(start_provider: StartProvider) -> None:
    provider, client = await start_provider()
    provider.faults.latency = 0.05
    loop = asyncio.get_running_loop()

    started = loop.time()
    await send(client, send_body())

    assert loop.time() - started >= 0.05


async def test_duplicate_callbacks_post_extra_copies(
    start_provider: StartProvider, bot: Bot
) -> None:
    provider, client = await start_provider()
    provider.faults.duplicate_callbacks = 2
    await send(client, send_body(callback_url=bot.url))

    await provider.deliver(1000)
    await provider.reply(PHONE, "hi")

    status, reply = {"message_id": 1000, "status": 1}, bot.posts[3]
    assert bot.posts == [status] * 3 + [reply] * 3
    assert len(provider.callback_log) == 6 and all(r.outcome == 200 for r in provider.callback_log)


async def test_a_client_gone_mid_body_is_dropped_quietly(
    caplog: pytest.LogCaptureFixture, unused_tcp_port: int
) -> None:
    # A campaign killed mid-request: the body never arrives whole. Nothing is recorded and
    # no traceback is logged ("Error handling request" for each of them, before). Served as
    # `run.py sandbox` serves it (web.run_app: handlers are not cancelled when the client
    # goes; the test server's default cancels them and would hide this).
    provider = FakeProvider(auto_deliver=False)
    runner = web.AppRunner(create_provider_app(provider), handler_cancellation=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        writer.write(b"POST /send-viber HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 500\r\n\r\n" + b'{"source_addr": "Acme"')
        await writer.drain()
        await asyncio.sleep(0.05)  # the handler is reading the body
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as session:  # and it goes on serving
            url = f"http://127.0.0.1:{unused_tcp_port}/send-viber"
            async with session.post(url, json=send_body()) as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()
    assert [m.phone for m in provider.sent] == [PHONE]
    assert "Error handling request" not in caplog.text
