"""The fake provider as the official DecisionTelecom SDKs see it, over real HTTP on loopback.

``SdkShapedClient`` sends what the official Python SDK (IT-DecisionTelecom/DecisionTelecom-
Python) sends and reads answers the way it does, written from its documented behaviour (no
SDK code is copied):

- every field of the message, in its order, with ``null`` for one left unset; headers
  ``Authorization: Basic base64(key)``, ``Content-Type`` and ``Accept: application/json``;
- a non-2xx answer raises at once, without reading the body (``requests``'
  ``raise_for_status``);
- a body whose text holds the words ``name``, ``message``, ``code`` and ``status`` is an
  error (``ViberError(**body)``); otherwise ``message_id`` is read, and a status receipt is
  built from the body's keys, so an extra key would break it.

If the fake answered an error under a non-2xx status, or added a key to a plain status
receipt, these tests fail: the SDKs' users would see a different provider than ours.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from botkit.models import MessageStatus, SmsStatus
from botkit.sandbox import FakeProvider, Fault, create_provider_app

KEY = "sdk-test-key"
PHONE = "380501112233"
CALLBACK = "https://bot.example.com/viber/callback/s3cret"


class HTTPError(Exception):
    """What the SDK raises for a non-2xx answer (``requests.HTTPError``)."""


@dataclass
class ViberError(Exception):
    """What the SDK raises for an error body: exactly these four fields."""

    name: str
    message: str
    code: int
    status: int


@dataclass
class SdkShapedClient:
    session: aiohttp.ClientSession
    base_url: str
    api_key: str

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        headers = {
            "Authorization": "Basic " + base64.b64encode(self.api_key.encode()).decode(),
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        async with self.session.post(self.base_url + path, data=json.dumps(body),
                                     headers=headers) as resp:
            if resp.status >= 400:
                raise HTTPError(resp.status)
            text = await resp.text()
        if all(word in text for word in ("name", "message", "code", "status")):
            raise ViberError(**json.loads(text))
        return json.loads(text)

    async def send_message(self, **message: Any) -> int:
        # The SDK's message object: every key present, null when not given.
        body = {key: message.get(key) for key in (
            "source_addr", "destination_addr", "message_type", "text", "image",
            "button_caption", "button_action", "source_type", "callback_url",
            "validity_period")}
        if "text_sms" in message:
            body["text_sms"] = message["text_sms"]
        answer = await self._post("/send-viber", body)
        return int(answer["message_id"])

    async def get_message_status(self, message_id: int) -> dict[str, Any]:
        answer: dict[str, Any] = await self._post("/receive-viber", {"message_id": message_id})
        allowed = {"message_id", "status", "sms_message_id", "sms_message_status"}
        if not set(answer) <= allowed:  # the receipt is built with **answer
            raise TypeError(f"unexpected keys {sorted(set(answer) - allowed)}")
        return answer


@dataclass
class World:
    provider: FakeProvider
    sdk: SdkShapedClient
    base_url: str


@pytest.fixture
async def world(aiohttp_server: AiohttpServer) -> AsyncIterator[World]:
    provider = FakeProvider(api_key=KEY, auto_deliver=False)
    server = await aiohttp_server(create_provider_app(provider, prefix="/v1/api"))
    base = str(server.make_url("/v1/api"))
    async with aiohttp.ClientSession() as session:
        yield World(provider, SdkShapedClient(session, base, KEY), base)


def message(**fields: Any) -> dict[str, Any]:
    return {"source_addr": "Acme", "destination_addr": PHONE, "message_type": 206,
            "text": "What is your name?", "source_type": 1, "callback_url": CALLBACK} | fields


async def test_a_206_with_nulls_for_the_fields_left_unset(world: World) -> None:
    message_id = await world.sdk.send_message(**message())
    sent = world.provider.message(message_id)
    assert sent.request.message_type == 206 and sent.request.image is None
    assert sent.body["validity_period"] is None  # received as the SDK sent it
    assert sent.headers["Accept"] == "application/json"


async def test_a_208_with_image_and_button(world: World) -> None:
    message_id = await world.sdk.send_message(**message(
        message_type=208, image="https://example.com/thanks.png", button_caption="Shop",
        button_action="https://example.com/shop", validity_period=3600))
    sent = world.provider.message(message_id).request
    assert (sent.image, sent.button_caption, sent.validity_period) == (
        "https://example.com/thanks.png", "Shop", 3600)


async def test_the_go_sdks_blank_strings_and_zero_ttl_mean_not_set(world: World) -> None:
    message_id = await world.sdk.send_message(**message(
        image="", button_caption="", button_action="", validity_period=0))
    sent = world.provider.message(message_id)
    assert (sent.request.image, sent.request.button_caption) == (None, None)
    assert sent.request.validity_period is None and sent.expires_at > sent.received_at


async def test_the_java_sdks_enums_as_digit_strings_are_numbers(world: World) -> None:
    # Gson writes an enum by its @SerializedName: "message_type": "106"
    message_id = await world.sdk.send_message(**message(
        message_type="106", source_type="2", text="Your order shipped."))
    sent = world.provider.message(message_id).request
    assert (sent.message_type, sent.source_type) == (106, 2)


async def test_a_106_with_an_sms_fallback_reports_the_sms_once_viber_fails(world: World) -> None:
    message_id = await world.sdk.send_message(**message(
        message_type=106, source_type=2, text="Your order 42 has shipped.",
        text_sms="Order 42 shipped."))
    assert await world.sdk.get_message_status(message_id) == {
        "message_id": message_id, "status": MessageStatus.PENDING}  # no SMS keys yet

    await world.provider.deliver(message_id, MessageStatus.UNDELIVERED)

    receipt = await world.sdk.get_message_status(message_id)
    assert receipt["status"] == MessageStatus.UNDELIVERED
    assert receipt["sms_message_status"] == SmsStatus.DELIVERED
    assert isinstance(receipt["sms_message_id"], int)


async def test_an_sms_fallback_on_a_2way_message_is_an_invalid_parameter(world: World) -> None:
    with pytest.raises(ViberError) as info:
        await world.sdk.send_message(**message(text_sms="Hi"))
    assert (info.value.name, info.value.code, info.value.status) == (
        "Invalid Parameter: text_sms", 1, 400)
    assert "type 106" in info.value.message and world.provider.sent == []


async def test_a_status_query(world: World) -> None:
    message_id = await world.sdk.send_message(**message())
    await world.provider.deliver(message_id)
    assert await world.sdk.get_message_status(message_id) == {
        "message_id": message_id, "status": 1}


async def test_an_unknown_id_is_an_error_body_the_sdk_reads(world: World) -> None:
    with pytest.raises(ViberError) as info:
        await world.sdk.get_message_status(4242)
    assert (info.value.name, info.value.code, info.value.status) == (
        "Invalid Parameter: message_id", 1, 400)


async def test_a_bad_key_is_an_error_body_the_sdk_reads(world: World) -> None:
    wrong = SdkShapedClient(world.sdk.session, world.base_url, "not-the-key")
    with pytest.raises(ViberError) as info:
        await wrong.send_message(**message())
    assert (info.value.name, info.value.code, info.value.status) == ("Unauthorized", 0, 401)
    assert world.provider.sent == []


async def test_an_empty_balance_is_an_error_body_the_sdk_reads(world: World) -> None:
    world.provider.faults.script(Fault.status(402))
    with pytest.raises(ViberError) as info:
        await world.sdk.send_message(**message())
    assert (info.value.name, info.value.code, info.value.status) == (
        "Topup balance is required", 3, 402)


async def test_with_http_errors_the_sdk_sees_only_the_http_status(world: World) -> None:
    world.provider.http_errors = True
    wrong = SdkShapedClient(world.sdk.session, world.base_url, "not-the-key")
    with pytest.raises(HTTPError) as info:
        await wrong.send_message(**message())
    assert info.value.args == (401,)

