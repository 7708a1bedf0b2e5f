"""The aiohttp application: the provider's callback endpoint, ``/healthz``, and its lifecycle.

``create_app(settings, flows)`` builds the app; its cleanup context opens the store, builds
the bot (``runtime.assembly.assemble``), resumes messages a previous process accepted but did
not handle, starts the sender, sweeper and poller, and on shutdown stops taking turns, lets
sends in progress finish and closes everything. Serving it as a process is ``web.serving``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, web
from pydantic import ValidationError

from botkit.config import Settings
from botkit.core.flows import Flow, FlowSet
from botkit.core.records import Inbound
from botkit.errors import StoreUnavailableError
from botkit.models import InboundReply, StatusUpdate, is_reply
from botkit.runtime import crashpoints
from botkit.runtime.assembly import Bot, assemble
from botkit.runtime.templates import Renderer
from botkit.storage.base import Store
from botkit.storage.engines import store_for
from botkit.web.client import ProviderClient, RetryPolicy
from botkit.web.guard import GUARD, SlowClientGuard
from botkit.web.metrics import metrics_handler

__all__ = ["CONSOLE", "MAX_BODY", "RUNTIME", "Running", "callback_secret", "callback_url",
           "create_app", "provider_client", "provider_url", "renderer_for"]

log = logging.getLogger("botkit.server")

MAX_BODY = 64 * 1024  # a 2Way callback is well under 5 KB; bigger bodies get 413
SANDBOX_PREFIX = "/sandbox/api"
OK = b'{"ok": true}'  # the answer to a stored reply, encoded once


@dataclass(frozen=True, kw_only=True)
class _Setup:
    """What ``create_app`` was given: the bot is assembled from it when the app starts."""

    settings: Settings
    flows: FlowSet
    renderer: Renderer
    clock: Callable[[], float]
    store: Store
    session: ClientSession | None
    retry: RetryPolicy
    raise_errors: bool
    on_inbound: Callable[[InboundReply], None] | None  # told of each stored reply


class Running:
    """The app's bot once it has started: ``app[RUNTIME].bot`` (tests read its parts)."""

    def __init__(self) -> None:
        self._bot: Bot | None = None

    @property
    def started(self) -> bool:
        """Whether the bot runs now."""
        return self._bot is not None

    def start(self, bot: Bot) -> None:
        """The app started with ``bot``."""
        self._bot = bot

    def stop(self) -> None:
        """The app stopped: its bot is gone."""
        self._bot = None

    @property
    def bot(self) -> Bot:
        """The running bot; a RuntimeError before the app started (or after it stopped)."""
        if self._bot is None:
            raise RuntimeError("the app is not running: serve it (run.py serve), or start it"
                               " in a test client first")
        return self._bot


SETUP = web.AppKey("botkit_setup", _Setup)
RUNTIME = web.AppKey("botkit_runtime", Running)
# The operator console's app (unless BOTKIT_CONSOLE=off): mounted at /console, or served
# by web.serving on an address of its own (BOTKIT_CONSOLE=HOST:PORT).
CONSOLE = web.AppKey("botkit_console", web.Application)


def create_app(
    settings: Settings,
    flows: Iterable[Flow],
    *,
    templates: str | None = "templates",
    static: str | None = "static",
    session: ClientSession | None = None,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
    retry: RetryPolicy | None = None,
    raise_errors: bool = False,
) -> web.Application:
    """Build the bot server for ``flows``.

    Every part is an argument so tests swap it: ``session`` for the provider client,
    ``store`` (default: the one ``settings.db`` names, SQLite or PostgreSQL), ``clock``, the ``retry`` policy.

    >>> app = create_app(Settings.from_env(), [survey, support])
    >>> web.run_app(app, host="127.0.0.1", port=8080)
    """
    guard = SlowClientGuard(settings.read_deadline)
    app = web.Application(client_max_size=MAX_BODY, middlewares=[guard.middleware, _json_errors])
    app[GUARD] = guard
    renderer = renderer_for(settings, templates)
    provider = None
    if settings.sandbox:
        from botkit.sandbox import FakeProvider, create_provider_app
        from botkit.sandbox.chat import add_chat_routes

        # Ids and tokens from the clock, so a restarted sandbox never reuses one.
        now_ms = int(time.time() * 1000)
        provider = FakeProvider(first_id=now_ms, first_token=now_ms * 10)
    app[SETUP] = _Setup(
        settings=settings, flows=FlowSet(flows), renderer=renderer, clock=clock,
        store=store or store_for(settings.db, pool_size=settings.db_pool,
                                lease=settings.lease), session=session,
        retry=retry or RetryPolicy(), raise_errors=raise_errors,
        # The chat shows a user's message that reached the bot some other way (curl).
        on_inbound=provider.observe_reply if provider is not None else None,
    )
    running = app[RUNTIME] = Running()
    app.router.add_post("/viber/callback/{secret}", _counted_callback)
    app.router.add_get("/healthz", _healthz)
    if settings.console_address is None:  # else on the console's address (web.serving)
        app.router.add_get("/metrics", metrics_handler(lambda: running.bot))
    if static is not None and Path(static).is_dir():
        app.router.add_static("/static", static)  # images and pages that 208s link to
    if provider is not None:
        app.add_subapp(SANDBOX_PREFIX, create_provider_app(provider))
        add_chat_routes(app, provider, lambda: running.bot)
    app.cleanup_ctx.append(_lifecycle)  # before the console's start: it reads the store
    if settings.console != "off":
        from botkit.console import PREFIX, create_console

        console = app[CONSOLE] = create_console(
            lambda: running.bot, secure=settings.public_base.startswith("https://"))
        if settings.console_address is None:
            app.add_subapp(PREFIX, console)
        # else web.serving serves it beside the bot, on an address of its own
    return app


def renderer_for(settings: Settings, templates: str | None) -> Renderer:
    """The message renderer, with the globals every template sees (``public_url``)."""
    return Renderer(templates, globals={"public_url": settings.public_base})


def callback_url(settings: Settings, secret: str) -> str:
    """The URL every message names for the provider's callbacks."""
    return f"{settings.public_base}/viber/callback/{secret}"


def provider_url(settings: Settings) -> str:
    """Where the client sends: the configured API, or this server's own sandbox."""
    if not settings.sandbox:
        return settings.api_url
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
    return f"http://{host}:{settings.port}{SANDBOX_PREFIX}"


async def callback_secret(settings: Settings, store: Store) -> str:
    """The secret in the callback path: the configured one, or the stored one (made once)."""
    if settings.callback_secret is not None:
        return settings.callback_secret.get_secret_value()
    return await store.secret(lambda: secrets.token_urlsafe(24))  # 192 bits


def provider_client(settings: Settings, **options: Any) -> ProviderClient:
    """The client for ``provider_url(settings)`` with the key and timeout of ``settings``;
    ``options`` (``session``, ``retry``) go to ``ProviderClient``."""
    key = settings.api_key.get_secret_value() if settings.api_key else None
    return ProviderClient(provider_url(settings), key, timeout=settings.api_timeout, **options)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    setup, running = app[SETUP], app[RUNTIME]
    settings, store = setup.settings, setup.store
    crashpoints.arm(settings.crash_at)
    await store.open()
    secret = await callback_secret(settings, store)
    if settings.sandbox and store.shared:
        log.warning("the sandbox runs in this process only: other processes on this database"
                    " run sandboxes of their own; set BOTKIT_API_KEY (and BOTKIT_SANDBOX=0)"
                    " to serve the real provider from many processes")
    if settings.public_url is None and settings.host in ("0.0.0.0", "::", ""):
        log.warning("listening on %s without BOTKIT_PUBLIC_URL: the provider is told to post"
                    " callbacks to %s, which it cannot reach; set BOTKIT_PUBLIC_URL",
                    settings.host, settings.public_base)
    client = provider_client(settings, session=setup.session, retry=setup.retry)
    bot = assemble(settings=settings, flows=setup.flows, store=store, client=client,
                   renderer=setup.renderer, clock=setup.clock, secret=secret,
                   callback_url=callback_url(settings, secret),
                   raise_errors=setup.raise_errors)
    running.start(bot)
    await bot.presence.take_over()  # what a process before this one accepted, not handled
    tasks = [asyncio.create_task(bot.sender.run(), name="botkit-sender"),
             asyncio.create_task(bot.presence.run(), name="botkit-presence"),
             asyncio.create_task(bot.sweeper.run(), name="botkit-sweeper"),
             asyncio.create_task(bot.poller.run(), name="botkit-poller"),
             asyncio.create_task(bot.activity.run(), name="botkit-activity")]
    masked = callback_url(settings, secret[:4] + "...")  # the log never holds the secret
    log.info("serving flows %s; provider callbacks go to %s", ", ".join(bot.flows) or "(none)",
             masked)
    try:
        yield
    finally:
        bot.sweeper.stop()
        bot.poller.stop()
        bot.presence.stop()
        bot.activity.stop()
        bot.activity.log_once()  # what happened since the last line
        await bot.dispatcher.close()
        await bot.sender.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
        try:
            await store.leave()  # the others take over what is left at once
        except Exception as exc:  # a heartbeat that ages does the same, after the lease
            log.warning("could not record this process's stop: %s", exc)
        await store.close()
        running.stop()


async def _counted_callback(request: web.Request) -> web.Response:
    """``_callback``, and a count of the callbacks it refused (botkit_callbacks)."""
    response = await _callback(request)
    if 400 <= response.status < 500:  # a 503 is counted where it is answered
        request.app[RUNTIME].bot.metrics.callback["invalid"].inc()
    return response


async def _callback(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME].bot
    given = request.match_info["secret"].encode()
    if not hmac.compare_digest(given, rt.secret.encode()):
        return _error(404, "not found")
    deadline = request.app[GUARD].deadline
    try:
        if request.content.is_eof():  # the whole body came with the headers (the usual case)
            raw = await request.read()
        else:
            async with asyncio.timeout(deadline):
                raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body is larger than {MAX_BODY} bytes")
    except web.RequestPayloadError as exc:  # e.g. a corrupt gzip body
        return _error(400, f"body could not be read: {exc}")
    except TimeoutError:  # a client trickling its body holds nothing for long
        return _error(408, f"body not received within {deadline:.0f}s")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return _error(400, f"body is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return _error(400, "body must be a JSON object")
    if is_reply(data):
        return await _reply(rt, data, request.app[SETUP].on_inbound)
    if "message_id" in data or "status" in data:
        return await _status(rt, data)
    if "message_token" in data or "message" in data:  # a broken reply: say what is wrong
        return await _reply(rt, data, request.app[SETUP].on_inbound)
    return _error(400, "neither a reply (has 'message_token' and a 'message' object) nor a"
                       " status update (has 'message_id' and 'status')")


async def _reply(
    rt: Bot, data: dict[str, Any], on_inbound: Callable[[InboundReply], None] | None
) -> web.Response:
    try:
        reply = InboundReply.model_validate(data)
    except ValidationError as exc:
        return _invalid(exc)
    phone = reply.phone_number
    if rt.dispatcher.idle(phone):  # its turn starts at once: route it in the same job
        inbound_id, context = await rt.store.record_and_route(reply, rt.clock())
    else:
        inbound_id, context = await rt.store.record_inbound(reply, rt.clock()), None
    crashpoints.hit("after_inbound_stored")
    if inbound_id is None:
        log.info("duplicate callback %s from %s ignored", reply.message_token, reply.phone_number)
        rt.metrics.callback["duplicate"].inc()
        return web.json_response({"ok": True, "duplicate": True})
    rt.metrics.callback["reply"].inc()
    if context is not None and not rt.dispatcher.idle(phone):
        context = None  # something of the phone came first: its turn reads afresh
    if on_inbound is not None:
        on_inbound(reply)
    rt.dispatcher.submit(Inbound(
        id=inbound_id, token=reply.message_token, phone=phone, time=reply.time,
        text=reply.message.text, tracking_data=reply.message.tracking_data, context=context,
    ))
    return web.Response(body=OK, content_type="application/json")


async def _status(rt: Bot, data: dict[str, Any]) -> web.Response:
    try:
        update = StatusUpdate.model_validate(data)
    except ValidationError as exc:
        return _invalid(exc)
    change = await rt.engine.on_status(update)
    rt.metrics.callback["status"].inc()
    if change is None:
        log.info("status %d for message %d kept until the message is known",
                 update.status, update.message_id)
    return web.json_response({"ok": True, "matched": change is not None})


async def _healthz(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME].bot
    body: dict[str, Any] = {"status": "ok", "sandbox": rt.settings.sandbox}
    try:
        body.update(await rt.store.health())
        body["database"] = "ok"
    except Exception as exc:  # the point of a health check is to report this, not raise
        body.update(status="error", database=f"error: {exc}")
    body["sending"] = rt.sender.status()
    if rt.sender.paused:
        body["status"] = "degraded"
    return web.json_response(body, status=503 if body["status"] == "error" else 200)


def _invalid(exc: ValidationError) -> web.Response:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return _error(400, f"{where}: {first['msg']}" if where else first["msg"], where or None)


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except StoreUnavailableError as exc:  # nothing was stored: the provider sends it again
        log.warning("%s %s answered 503: %s", request.method, request.path, exc)
        running = request.app[RUNTIME]
        if request.path.startswith("/viber/callback/") and running.started:
            running.bot.metrics.callback["unavailable"].inc()
        response = _error(503, f"the database is unavailable, try again later: {exc}")
        response.headers["Retry-After"] = "5"
        return response
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return _error(500, "internal error (logged)")
