"""Tests of botkit.client against a scripted fake provider served over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from botkit.errors import (
    BalanceError,
    InvalidParameterError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    UnauthorizedError,
)
from botkit.models import MessageStatus, SendRequest
from botkit.web.client import ProviderClient, RetryPolicy, raise_for_answer

KEY = "secret-key"
# base64 of "secret-key", written out so the test does not mirror the code under test
KEY_B64 = "c2VjcmV0LWtleQ=="
NO_JITTER = RetryPolicy(attempts=5, base=0.5, factor=2.0, cap=30.0, jitter=0.0)

TOO_MANY = {"name": "Too Many Requests", "message": "rate limit exceeded", "code": 0, "status": 429}
BAD_PARAM = {"name": "Invalid Parameter: text", "message": "empty text", "code": 1, "status": 400}
INTERNAL = {"name": "Internal server error", "message": "oops", "code": 2, "status": 500}
TOPUP = {"name": "Topup balance is required", "message": "balance empty", "code": 3, "status": 402}
UNAUTHORIZED = {"name": "Unauthorized", "status": 401}


@dataclass
class Step:
    """One scripted answer: a JSON body, or raw text, after an optional delay."""

    status: int = 200
    body: Any = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    json: Any


class FakeProvider:
    """Records every request and replays the script; the last step repeats once it runs out."""

    def __init__(self, steps: tuple[Step, ...]) -> None:
        self.steps = list(steps) or [Step(body={"message_id": 1})]
        self.requests: list[Seen] = []

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.requests.append(
            Seen(
                request.method,
                request.path,
                dict(request.headers),
                json.loads(raw) if raw else None,
            )
        )
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if step.delay:
            await asyncio.sleep(step.delay)
        if step.text is not None:
            return web.Response(
                status=step.status, text=step.text, content_type="text/html", headers=step.headers
            )
        return web.json_response(step.body, status=step.status, headers=step.headers)


@dataclass
class Harness:
    client: ProviderClient
    provider: FakeProvider
    delays: list[float]


Connect = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def connect(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> AsyncIterator[Connect]:
    """Factory: start a fake provider with a script and a client pointed at it; close both."""
    clients: list[ProviderClient] = []

    async def make(*steps: Step, api_key: str | None = KEY, **kwargs: Any) -> Harness:
        provider = FakeProvider(steps)
        app = web.Application()
        app.router.add_post("/v1/api/{tail:.*}", provider.handle)
        server = await aiohttp_server(app)
        delays: list[float] = []

        async def sleep(delay: float) -> None:
            delays.append(delay)

        kwargs.setdefault("retry", NO_JITTER)
        client = ProviderClient(str(server.make_url("/v1/api/")), api_key, sleep=sleep, **kwargs)
        clients.append(client)
        return Harness(client, provider, delays)

    yield make
    for client in clients:
        await client.close()


def a_request(**fields: Any) -> SendRequest:
    values: dict[str, Any] = {"source_addr": "Acme", "destination_addr": "380501112233"}
    values |= {"message_type": 206, "text": "Hi"}
    return SendRequest(**(values | fields))


# --- sending -----------------------------------------------------------------------------


@pytest.mark.parametrize("message_id", [429, "429"])
async def test_send_returns_message_id(connect: Connect, message_id: int | str) -> None:
    h = await connect(Step(body={"message_id": message_id}))
    result = await h.client.send(a_request())
    assert result.message_id == 429
    assert h.delays == []


async def test_send_posts_json_without_none_fields(connect: Connect) -> None:
    h = await connect(Step(body={"message_id": 1}))
    await h.client.send(a_request())
    (seen,) = h.provider.requests
    assert (seen.method, seen.path) == ("POST", "/v1/api/send-viber")  # trailing slash stripped
    assert seen.json == {
        "source_addr": "Acme",
        "destination_addr": "380501112233",
        "message_type": 206,
        "text": "Hi",
        "source_type": 1,
    }


async def test_basic_auth_header_is_base64_of_the_key(connect: Connect) -> None:
    h = await connect(Step(body={"message_id": 1}))
    await h.client.send(a_request())
    assert h.provider.requests[0].headers["Authorization"] == f"Basic {KEY_B64}"


async def test_no_auth_header_without_a_key(connect: Connect) -> None:
    h = await connect(Step(body={"message_id": 1}), api_key=None)
    await h.client.send(a_request())
    assert "Authorization" not in h.provider.requests[0].headers


async def test_error_body_under_http_200_raises(connect: Connect) -> None:
    h = await connect(Step(status=200, body=BAD_PARAM))
    with pytest.raises(InvalidParameterError) as info:
        await h.client.send(a_request())
    assert (info.value.status, info.value.code, info.value.name) == (
        400,
        1,
        "Invalid Parameter: text",
    )
    assert len(h.provider.requests) == 1


async def test_unexpected_2xx_body_is_not_retried(connect: Connect) -> None:
    h = await connect(Step(status=200, text="<html>hello</html>"))
    with pytest.raises(ProviderError, match="unexpected answer") as info:
        await h.client.send(a_request())
    assert type(info.value) is ProviderError and not info.value.retryable
    assert len(h.provider.requests) == 1


# --- the error table ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("http_status", "body", "expected"),
    [
        (429, TOO_MANY, RateLimitedError),
        (429, None, RateLimitedError),
        (400, BAD_PARAM, InvalidParameterError),
        (400, None, InvalidParameterError),
        (500, INTERNAL, ProviderUnavailableError),
        (503, None, ProviderUnavailableError),
        (502, None, ProviderUnavailableError),  # a non-JSON proxy error page parses to None
        (402, TOPUP, BalanceError),
        (401, UNAUTHORIZED, UnauthorizedError),
        (401, None, UnauthorizedError),
        (404, None, ProviderError),
        (418, {"unrelated": True}, ProviderError),
        (200, TOO_MANY, RateLimitedError),
        (200, BAD_PARAM, InvalidParameterError),
        (200, INTERNAL, ProviderUnavailableError),
        (200, TOPUP, BalanceError),
        (200, UNAUTHORIZED, UnauthorizedError),  # no code: the body's status decides
        (200, {**BAD_PARAM, "status": 200}, InvalidParameterError),  # code wins over statuses
        (500, BAD_PARAM, InvalidParameterError),
        (503, {"name": "Nope", "code": 99}, ProviderUnavailableError),  # unknown code: status
        (200, {"name": "Weird", "status": 200}, ProviderError),
        # code 0 is the PHP framework's default, not "rate limited": the status decides
        (200, {**UNAUTHORIZED, "message": "Your request was made with invalid credentials.",
               "code": 0}, UnauthorizedError),
        (401, {**UNAUTHORIZED, "code": 0}, UnauthorizedError),
        (200, {"name": "Not Found", "message": "Page not found.", "code": 0, "status": 404},
         ProviderError),
        (404, {"name": "Not Found", "message": "Page not found.", "code": 0, "status": 404},
         ProviderError),
        (200, {"name": "Method Not Allowed", "code": 0, "status": 405}, ProviderError),
        (405, {"name": "Method Not Allowed", "code": 0}, ProviderError),  # HTTP status decides
        (200, {"name": "Bad Gateway", "code": 0, "status": 502}, ProviderUnavailableError),
        (200, {"name": "Too Many Requests", "code": 0}, RateLimitedError),  # no status at all
        (429, {"name": "Too Many Requests", "code": 0}, RateLimitedError),
        (200, {"code": 0, "status": 200}, ProviderError),
        (200, {"name": "Unauthorized", "status": "401"}, UnauthorizedError),  # a string status
        (200, {"name": "Unauthorized", "code": "0", "status": "401"}, UnauthorizedError),
        (200, {"name": "Odd", "status": "soon"}, ProviderError),  # an unreadable status
        (503, {"name": "Unauthorized", "code": 0, "status": 401}, UnauthorizedError),
        (200, {"name": "Nope", "code": 99}, ProviderError),
        (200, {"message": "something failed"}, ProviderError),
    ],
)
def test_raise_for_answer_picks_one_class(
    http_status: int, body: Any, expected: type[ProviderError]
) -> None:
    with pytest.raises(ProviderError) as info:
        raise_for_answer(http_status, body)
    assert type(info.value) is expected


@pytest.mark.parametrize(
    ("http_status", "body"),
    [(200, {"message_id": 429}), (200, {"message_id": "7", "status": 1}), (201, None), (204, None)],
)
def test_raise_for_answer_accepts_success(http_status: int, body: Any) -> None:
    raise_for_answer(http_status, body)  # returns without raising


def test_raise_for_answer_carries_what_the_provider_said() -> None:
    with pytest.raises(RateLimitedError) as info:
        raise_for_answer(200, TOO_MANY)
    err = info.value
    assert (err.status, err.code, err.name, str(err)) == (
        429,
        0,
        "Too Many Requests",
        "rate limit exceeded",
    )
    assert err.retryable

    with pytest.raises(ProviderUnavailableError) as info2:
        raise_for_answer(503, None)
    assert (info2.value.status, info2.value.code, str(info2.value)) == (
        503,
        None,
        "HTTP 503 with no JSON body",
    )

    with pytest.raises(UnauthorizedError) as info3:
        raise_for_answer(401, UNAUTHORIZED)
    assert str(info3.value) == "Unauthorized" and not info3.value.retryable


# --- retries -----------------------------------------------------------------------------


@pytest.mark.parametrize("http_status", [200, 401])
async def test_a_wrong_key_with_code_0_is_not_retried(connect: Connect, http_status: int) -> None:
    body = {"name": "Unauthorized", "message": "Your request was made with invalid credentials.",
            "code": 0, "status": 401}
    h = await connect(Step(http_status, body), Step(body={"message_id": 1}))
    with pytest.raises(UnauthorizedError) as info:
        await h.client.send(a_request())
    assert (info.value.status, info.value.code) == (401, 0)
    assert len(h.provider.requests) == 1 and h.delays == []


async def test_every_request_accepts_json(connect: Connect) -> None:
    h = await connect(Step(body={"message_id": 1}), Step(body={"message_id": 1, "status": 0}))
    await h.client.send(a_request())
    await h.client.get_status(1)
    assert [seen.headers["Accept"] for seen in h.provider.requests] == ["application/json"] * 2


async def test_429_then_500_then_success(connect: Connect) -> None:
    h = await connect(Step(429, TOO_MANY), Step(500, INTERNAL), Step(body={"message_id": 5}))
    assert (await h.client.send(a_request())).message_id == 5
    assert h.delays == [0.5, 1.0]
    assert len(h.provider.requests) == 3


async def test_retries_exhausted_raise_the_last_error(connect: Connect) -> None:
    h = await connect(Step(500, INTERNAL), retry=RetryPolicy(attempts=3, jitter=0))
    with pytest.raises(ProviderUnavailableError) as info:
        await h.client.send(a_request())
    assert info.value.status == 500 and info.value.code == 2
    assert len(h.provider.requests) == 3
    assert h.delays == [0.5, 1.0]


async def test_non_json_502_is_retried_then_raised(connect: Connect) -> None:
    h = await connect(Step(502, text="<html>Bad gateway</html>"), retry=RetryPolicy(attempts=2))
    with pytest.raises(ProviderUnavailableError, match="HTTP 502 with no JSON body"):
        await h.client.send(a_request())
    assert len(h.provider.requests) == 2


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (Step(400, BAD_PARAM), InvalidParameterError),
        (Step(401, UNAUTHORIZED), UnauthorizedError),
        (Step(401, text="Unauthorized"), UnauthorizedError),
        (Step(402, TOPUP), BalanceError),
        (Step(404, text="not found"), ProviderError),
    ],
)
async def test_final_errors_are_not_retried(
    connect: Connect, step: Step, expected: type[ProviderError]
) -> None:
    h = await connect(step, Step(body={"message_id": 1}))
    with pytest.raises(ProviderError) as info:
        await h.client.send(a_request())
    assert type(info.value) is expected
    assert info.value.status == step.status
    assert len(h.provider.requests) == 1 and h.delays == []


async def test_timeout_is_retried_then_raised(connect: Connect) -> None:
    h = await connect(
        Step(delay=0.5, body={"message_id": 1}),
        timeout=0.1,
        retry=RetryPolicy(attempts=2, jitter=0),
    )
    with pytest.raises(ProviderUnavailableError) as info:
        await h.client.send(a_request())
    assert info.value.status is None
    assert isinstance(info.value.__cause__, TimeoutError)
    assert len(h.provider.requests) == 2 and h.delays == [0.5]


async def test_connection_refused_is_retried_then_raised() -> None:
    with socket.socket() as sock:  # a port where nothing listens any more
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    async with ProviderClient(
        f"http://127.0.0.1:{port}", KEY, retry=RetryPolicy(attempts=3, jitter=0), sleep=sleep
    ) as client:
        with pytest.raises(ProviderUnavailableError) as info:
            await client.send(a_request())
    assert info.value.status is None and info.value.retryable
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectionError)
    assert delays == [0.5, 1.0]


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("7", 7.0), ("100", 30.0), ("0", 0.5), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.5)],
)
async def test_retry_after_is_honoured(connect: Connect, retry_after: str, expected: float) -> None:
    h = await connect(
        Step(429, TOO_MANY, headers={"Retry-After": retry_after}), Step(body={"message_id": 1})
    )
    await h.client.send(a_request())
    assert h.delays == [expected]


async def test_retry_warning_names_the_attempt_but_never_the_key(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    h = await connect(Step(500, INTERNAL), Step(body={"message_id": 1}))
    with caplog.at_level(logging.WARNING, logger="botkit.client"):
        await h.client.send(a_request())
    (record,) = caplog.records
    assert "attempt 1/5" in record.getMessage() and "/send-viber" in record.getMessage()
    assert KEY not in caplog.text and KEY_B64 not in caplog.text


# --- status --------------------------------------------------------------------------------


async def test_get_status(connect: Connect) -> None:
    h = await connect(Step(body={"message_id": "429", "status": 1}))
    result = await h.client.get_status(429)
    assert (result.message_id, result.status) == (429, MessageStatus.DELIVERED)
    (seen,) = h.provider.requests
    assert (seen.path, seen.json) == ("/v1/api/receive-viber", {"message_id": 429})


async def test_get_status_with_an_undocumented_number_and_sms_fields(connect: Connect) -> None:
    h = await connect(Step(body={"message_id": 429, "status": 7, "sms_message_id": 36478,
                                 "sms_message_status": "2"}))
    result = await h.client.get_status(429)
    assert (result.status, result.sms_message_id, result.sms_message_status) == (7, 36478, 2)
    update = result.update()
    assert (update.message_id, update.status, update.sms_message_status) == (429, 7, 2)


async def test_get_status_of_unknown_id(connect: Connect) -> None:
    unknown = {
        "name": "Invalid Parameter: message_id",
        "message": "not found",
        "code": 1,
        "status": 400,
    }
    h = await connect(Step(200, unknown))
    with pytest.raises(InvalidParameterError, match="not found"):
        await h.client.get_status(999)
    assert len(h.provider.requests) == 1


# --- RetryPolicy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": 2.5}, "attempts"),
        ({"base": -1}, "base"),
        ({"base": float("nan")}, "base"),
        ({"factor": 0.5}, "factor"),
        ({"cap": -0.1}, "cap"),
        ({"cap": float("inf")}, "cap"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
    ],
)
def test_retry_policy_rejects_bad_values(kwargs: dict[str, Any], field_name: str) -> None:
    with pytest.raises(ValueError, match=f"RetryPolicy.{field_name}"):
        RetryPolicy(**kwargs)


def test_delays_grow_and_are_capped() -> None:
    policy = RetryPolicy(attempts=8, base=1, factor=3, cap=20, jitter=0)
    assert list(policy.delays()) == [1, 3, 9, 20, 20, 20, 20]
    assert list(RetryPolicy(attempts=1).delays()) == []


def test_delays_jitter_stays_in_bounds() -> None:
    policy = RetryPolicy(attempts=200, base=2, factor=1, cap=2, jitter=0.25)
    delays = list(policy.delays(random.Random(42)))
    assert len(delays) == 199
    assert all(1.5 <= d <= 2.0 for d in delays)
    assert len(set(delays)) > 100  # really jittered
    assert delays == list(policy.delays(random.Random(42)))  # seeded: reproducible


def test_long_policy_does_not_overflow() -> None:
    delays = list(RetryPolicy(attempts=3000, factor=10, jitter=0).delays())
    assert delays[-1] == 30.0


# --- lifecycle -----------------------------------------------------------------------------


async def test_injected_session_is_not_closed(connect: Connect) -> None:
    async with aiohttp.ClientSession() as session:
        h = await connect(Step(body={"message_id": 1}), session=session)
        await h.client.send(a_request())
        await h.client.close()
        assert not session.closed


async def test_repr_hides_the_key() -> None:
    client = ProviderClient("http://localhost/v1/api/", KEY)
    assert KEY not in repr(client) and KEY_B64 not in repr(client)
    assert "http://localhost/v1/api" in repr(client)
    await client.close()  # never opened a session: closing is a no-op
