"""The sandbox web chat: talk to your bots in a browser, through the fake provider.

``GET /`` serves a Viber-like chat page. What the user types goes to ``/sandbox/chat/send``,
which makes the fake provider post a real 2Way callback to the bot, so it runs through the
same routing, storage and sender as production. The bot's messages, their delivery ticks
and the user's own messages stream back as server-sent events from ``/sandbox/chat/events``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import jinja2
from aiohttp import web
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator

from botkit.errors import BotkitError
from botkit.phones import PhoneError, read_phone
from botkit.runtime.assembly import Bot
from botkit.sandbox.provider import FakeProvider

__all__ = ["add_chat_routes"]

_M = TypeVar("_M", bound=BaseModel)

log = logging.getLogger("botkit.sandbox")

HERE = Path(__file__).parent
CHAT_PROVIDER = web.AppKey("botkit.sandbox.chat_provider", FakeProvider)


@dataclass(frozen=True)
class _Running:
    bot: Callable[[], Bot]


RUNNING = web.AppKey("botkit.sandbox.running_bot", _Running)


class _Streams(set["asyncio.Queue[dict[str, Any] | None]"]):
    """The open event streams' queues: shutdown puts None in each, and the stream ends."""


STREAMS = web.AppKey("botkit.sandbox.streams", _Streams)
HEARTBEAT = 15.0  # seconds between SSE comments, so proxies keep the stream open

# The page is HTML: unlike message templates, it is autoescaped.
_pages = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(HERE / "templates")),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


class _Phone(BaseModel):
    """A phone as a person types it (``+38 050 124 0002``), read into E.164 digits; national
    numbers are read in the ``region`` of the validation context (BOTKIT_PHONE_REGION)."""

    phone: str

    @field_validator("phone")
    @classmethod
    def _read(cls, value: str, info: ValidationInfo) -> str:
        try:
            return read_phone(value, (info.context or {}).get("region"))
        except PhoneError as exc:
            raise ValueError(f"{value!r}: {exc}") from None


class _Send(_Phone):
    text: str = Field(min_length=1, max_length=4096)


class _Start(_Phone):
    flow: str = Field(min_length=1, max_length=40)


def add_chat_routes(
    app: web.Application, provider: FakeProvider, bot: Callable[[], Bot]
) -> None:
    """Serve the chat page and its API on ``app``, talking through ``provider`` to the bot
    that ``bot()`` returns once the server runs."""
    app[CHAT_PROVIDER] = provider
    app[RUNNING] = _Running(bot)
    app[STREAMS] = _Streams()
    app.on_shutdown.append(_close_streams)
    app.router.add_get("/", _page)
    app.router.add_get("/sandbox/chat/events", _events)
    app.router.add_post("/sandbox/chat/send", _send)
    app.router.add_post("/sandbox/chat/start", _start)
    app.router.add_get("/sandbox/chat/state", _state)
    app.router.add_post("/sandbox/chat/agent", _agent)
    app.router.add_post("/sandbox/chat/release", _release)
    app.router.add_static("/sandbox/static", HERE / "static")


async def _page(request: web.Request) -> web.Response:
    rt = request.app[RUNNING].bot()
    flows = [
        {"name": f.name, "keywords": list(f.keywords),
         "entries": [k for s in f.steps.values() for k in s.keywords]}
        for f in rt.flows.values()
    ]
    html = _pages.get_template("chat.html").render(flows=flows)
    return web.Response(text=html, content_type="text/html")


async def _events(request: web.Request) -> web.StreamResponse:
    provider = request.app[CHAT_PROVIDER]
    phone = _query_phone(request)
    if isinstance(phone, web.Response):
        return phone
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    await response.write(b"retry: 1000\n\n")  # after a restart, the page is back within 1 s
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    streams = request.app[STREAMS]
    streams.add(queue)
    stop = provider.subscribe(lambda e: queue.put_nowait(e) if _mine(e, phone) else None)
    try:
        for past in provider.events_for(phone):
            await response.write(_sse(past))
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), HEARTBEAT)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if event is None:  # the server is stopping: the page shows it lost the server
                break
            await response.write(_sse(event))
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the tab was closed
    finally:
        stop()
        streams.discard(queue)
    return response


async def _close_streams(app: web.Application) -> None:
    """End every open event stream, so that a shutdown does not wait for them."""
    streams: _Streams = app[STREAMS]
    for queue in list(streams):
        queue.put_nowait(None)


async def _send(request: web.Request) -> web.Response:
    body = await _body(request, _Send)
    if isinstance(body, web.Response):
        return body
    provider, rt = request.app[CHAT_PROVIDER], request.app[RUNNING].bot()
    # Tracking data names the phone's last 2Way message (none if the user writes first).
    result = await provider.reply(body.phone, body.text, callback_url=rt.callback_url)
    answer: dict[str, Any] = {"ok": result.ok, "status": result.status, "answer": result.data}
    if not result.ok:
        said = result.data.get("error") if isinstance(result.data, dict) else result.error
        answer["error"] = f"the bot answered HTTP {result.status}: {said}" if result.status \
            else f"the bot could not be reached: {said}"
    return web.json_response(answer, status=200 if result.ok else 502)


async def _start(request: web.Request) -> web.Response:
    body = await _body(request, _Start)
    if isinstance(body, web.Response):
        return body
    rt = request.app[RUNNING].bot()
    if body.flow not in rt.flows:
        return web.json_response({"error": f"no flow is named {body.flow!r}", "field": "flow"},
                                 status=400)
    # The developer at the chat is the user, and awake: quiet hours are not for this start.
    result = await rt.engine.start(body.flow, body.phone, quiet_hours=False)
    return web.json_response({"outcome": result.outcome, "detail": result.detail})


async def _state(request: web.Request) -> web.Response:
    """The phone's open conversation (flow, step, status), so the page can show a hand-over."""
    rt = request.app[RUNNING].bot()
    phone = _query_phone(request)
    if isinstance(phone, web.Response):
        return phone
    conv = (await rt.store.open_conversations([phone])).get(phone)
    found = None if conv is None else {
        "id": conv.id, "flow": conv.flow, "step": conv.step, "status": conv.status.value}
    return web.json_response({"phone": phone, "conversation": found})


async def _agent(request: web.Request) -> web.Response:
    """Answer as the human agent in a conversation handed over to a person."""
    body = await _body(request, _Send)
    if isinstance(body, web.Response):
        return body
    rt = request.app[RUNNING].bot()
    try:
        conv = await rt.engine.say_as_agent(body.phone, body.text)
    except BotkitError as exc:  # the text breaks a provider limit
        return web.json_response({"error": str(exc), "field": "text"}, status=400)
    if conv is None:
        return _no_human(body.phone)
    return web.json_response({"ok": True, "conversation": conv.id})


async def _release(request: web.Request) -> web.Response:
    """Give a conversation with a person back to the bot, as ``run.py release`` does."""
    body = await _body(request, _Phone)
    if isinstance(body, web.Response):
        return body
    rt = request.app[RUNNING].bot()
    conv = await rt.store.release(body.phone, rt.clock())
    if conv is None:
        return _no_human(body.phone)
    return web.json_response({"released": conv.id})


def _no_human(phone: str) -> web.Response:
    return web.json_response({"error": f"{phone} has no conversation with a person"},
                             status=409)


def _query_phone(request: web.Request) -> str | web.Response:
    """The ``?phone=`` of a request, read as a person writes it, or a 400 saying why."""
    try:
        return _Phone.model_validate({"phone": request.query.get("phone", "")},
                                     context=_context(request)).phone
    except ValidationError as exc:
        return _invalid(exc)


def _context(request: web.Request) -> dict[str, Any]:
    return {"region": request.app[RUNNING].bot().settings.phone_region}


def _invalid(exc: ValidationError) -> web.Response:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return web.json_response({"error": f"{where}: {message}", "field": where}, status=400)


async def _body(request: web.Request, model: type[_M]) -> _M | web.Response:
    try:
        return model.model_validate(json.loads(await request.read()), context=_context(request))
    except ValidationError as exc:
        return _invalid(exc)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        return web.json_response({"error": f"body is not valid JSON: {exc}"}, status=400)


def _mine(event: dict[str, Any], phone: str) -> bool:
    return str(event.get("phone", "")).lstrip("+") == phone.lstrip("+")


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()
