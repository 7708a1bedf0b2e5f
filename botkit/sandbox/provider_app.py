"""The fake provider over HTTP: ``/send-viber`` and ``/receive-viber`` as aiohttp routes.

Requests are checked exactly as the provider documents (Basic auth, every field limit; what
the official SDKs send for "not set" counts as not set) and errors come back in the
provider's error body, under HTTP 200 as the SDKs expect it, or under the error's own HTTP
status when the provider's ``http_errors`` is on. ``run_fake_provider`` serves it
standalone (``python run.py fake-provider``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from botkit.models import SendRequest
from botkit.sandbox.faults import error_body
from botkit.sandbox.provider import FakeProvider

__all__ = ["PROVIDER_KEY", "create_provider_app", "run_fake_provider"]

log = logging.getLogger("botkit.sandbox")

_RICH_FIELDS = ("image", "button_caption", "button_action")


PROVIDER_KEY = web.AppKey("botkit.sandbox.provider", FakeProvider)


def create_provider_app(provider: FakeProvider, *, prefix: str = "") -> web.Application:
    """Build the aiohttp app serving ``{prefix}/send-viber`` and ``{prefix}/receive-viber``.

    The app starts the provider's background life cycle on startup and stops it on cleanup.

    Example: ``server = await aiohttp_server(create_provider_app(FakeProvider()))``
    """
    app = web.Application()
    app[PROVIDER_KEY] = provider
    prefix = prefix.rstrip("/")
    app.router.add_post(f"{prefix}/send-viber", _send_viber)
    app.router.add_post(f"{prefix}/receive-viber", _receive_viber)
    app.router.add_get(f"{prefix}/sandbox/sent", _sent_log)
    app.cleanup_ctx.append(_run_provider)
    return app


def run_fake_provider(
    host: str, port: int, api_key: str | None, *, prefix: str = "", http_errors: bool = False
) -> None:
    """Serve a fake provider until interrupted (``run.py fake-provider``).

    Example: ``run_fake_provider("127.0.0.1", 9000, api_key=None)``
    """
    provider = FakeProvider(api_key=api_key, http_errors=http_errors)
    app = create_provider_app(provider, prefix=prefix)
    auth = "Basic auth required" if api_key else "no auth"
    errors = "errors under their HTTP status" if http_errors else "errors under HTTP 200"
    print(f"fake provider listening on http://{host}:{port}{prefix} ({auth}; {errors})",
          flush=True)
    web.run_app(app, host=host, port=port, print=None, access_log=None)  # it logs each send


async def _run_provider(app: web.Application) -> AsyncIterator[None]:
    provider = app[PROVIDER_KEY]
    await provider.start()
    yield
    await provider.close()


async def _send_viber(request: web.Request) -> web.StreamResponse:
    provider = request.app[PROVIDER_KEY]
    await asyncio.sleep(provider.faults.latency)
    fault = provider.faults.next_fault()
    if fault is not None:
        log.info("fault on /send-viber: %s", fault)
    if fault is not None and fault.kind != "delay":
        return fault.answer(request, http_errors=provider.http_errors)
    response = await _accept_send(request, provider)
    if fault is not None:
        # The send has already happened; only the answer is late. A client that times out
        # and retries sends twice, which is the risk PROVIDER_API.md warns about.
        await asyncio.sleep(fault.seconds)
    return response


async def _accept_send(request: web.Request, provider: FakeProvider) -> web.Response:
    body = await _authorized_json(request, provider)
    if isinstance(body, web.Response):
        return body
    try:
        send = SendRequest.from_wire(body)
    except ValidationError as exc:
        return _invalid_parameter(provider, exc, body)
    headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
    return web.json_response({"message_id": provider.accept(send, body, headers)})


async def _sent_log(request: web.Request) -> web.Response:
    """What the fake accepted, from index ``since`` on: for drivers in another process.

    Not part of the provider's contract; the real provider has no such endpoint.
    """
    provider = request.app[PROVIDER_KEY]
    since = request.query.get("since", "0")
    start = int(since) if since.isdigit() else 0
    return web.json_response({"next": len(provider.sent), "messages": [
        {"index": i, "message_id": m.message_id, "phone": m.phone, "text": m.request.text,
         "message_type": int(m.request.message_type), "text_sms": m.request.text_sms,
         "callback_url": m.request.callback_url, "received_at": m.received_at}
        for i, m in enumerate(provider.sent[start:], start)
    ]})


async def _receive_viber(request: web.Request) -> web.StreamResponse:
    provider = request.app[PROVIDER_KEY]
    await asyncio.sleep(provider.faults.latency)
    body = await _authorized_json(request, provider)
    if isinstance(body, web.Response):
        return body
    message_id = _message_id(body.get("message_id"))
    status = None if message_id is None else provider.status_of(message_id)
    if message_id is None or status is None:
        problem = f"no message {body.get('message_id')!r} sent in the last 5 days"
        return _error(provider, 400, "Invalid Parameter: message_id", problem)
    return web.json_response(provider.status_body(provider.message(message_id)))


async def _authorized_json(
    request: web.Request, provider: FakeProvider
) -> dict[str, Any] | web.Response:
    header = request.headers.get("Authorization")
    if not provider.authorized(header):
        problem = "invalid access key" if header else "missing Authorization: Basic header"
        return _error(provider, 401, "Unauthorized", problem)
    try:
        body = json.loads(await request.read())
    except ConnectionResetError:  # the client went away mid-body (e.g. a killed campaign)
        return _error(provider, 400, "Invalid Parameter: body", "the connection closed mid-body")
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        return _error(provider, 400, "Invalid Parameter: body",
                      f"request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return _error(provider, 400, "Invalid Parameter: body",
                      "request body must be a JSON object")
    return body


def _invalid_parameter(
    provider: FakeProvider, exc: ValidationError, body: dict[str, Any]
) -> web.Response:
    first = exc.errors()[0]
    field_name = ".".join(str(p) for p in first["loc"])
    if not field_name:
        # Cross-field checks of SendRequest carry no loc: name the rich field that is present.
        field_name = next((f for f in _RICH_FIELDS if body.get(f) is not None), "message_type")
    return _error(provider, 400, f"Invalid Parameter: {field_name}", first["msg"])


def _error(provider: FakeProvider, status: int, name: str, message: str) -> web.Response:
    body = error_body(status, name=name, message=message)
    return web.json_response(body, status=status if provider.http_errors else 200)


def _message_id(value: Any) -> int | None:
    # Ids may travel as numbers or digit strings (PROVIDER_API.md).
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None
