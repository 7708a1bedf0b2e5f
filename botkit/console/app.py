"""The operator console as an aiohttp application, mounted at ``/console``.

``create_console(bot, secure=...)`` builds it; ``web.server.create_app`` mounts it on the
bot's own server (``BOTKIT_CONSOLE=on``, the default), or serves it on an address of its own
(``BOTKIT_CONSOLE=HOST:PORT``, an internal network), or leaves it out
(``BOTKIT_CONSOLE=off``). The console reads and writes through the running bot's store and
engine: an agent's reply is a bot message like any other (the outbox, a 206, exactly once).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import warnings
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from aiohttp_session import session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet

from botkit.console.access import (
    ADMIN,
    Handler,
    SESSION_SECONDS,
    Routes,
    Throttle,
    access_middleware,
    errors_middleware,
)
from botkit.console.campaigns import add_campaign_pages
from botkit.console.links import SANDBOX_ADMIN, LoginLinks
from botkit.console.live import Feed
from botkit.console.dashboards import add_dashboards
from botkit.console.export import add_export
from botkit.console.history import add_history_pages
from botkit.console.pages import BOT, FEED, LINKS, THROTTLE, BotRef, add_pages
from botkit.console.passwords import unusable_hash
from botkit.core.records import User
from botkit.errors import UserExistsError
from botkit.runtime.assembly import Bot

__all__ = ["ANNOUNCE", "COOKIE", "KEY_NAME", "PREFIX", "create_console", "standalone"]

PREFIX = "/console"
COOKIE = "botkit_console"
KEY_NAME = "console_key"  # the meta row of the cookies' key, shared by every process
# What the server prints when it starts: the sandbox's one-time login link (a path).
ANNOUNCE = web.AppKey("botkit.console.announce", list[str])
HERE = Path(__file__).parent

# aiohttp-session keeps its session under a string key of the request, which aiohttp 3.13+
# warns about at every first request; that is the library's to change, not the operator's.
warnings.filterwarnings("ignore", category=getattr(web, "NotAppKeyWarning", Warning),
                        module="aiohttp_session")


class _Key(Fernet):
    """The cookies' key: made up until the app starts, then the one the database keeps,
    so a session made by one process is read by every other."""

    def __init__(self) -> None:
        super().__init__(Fernet.generate_key())

    def use(self, key: str) -> None:
        super().__init__(key)


def create_console(bot: Callable[[], Bot], *, secure: bool,
                   throttle: Throttle | None = None) -> web.Application:
    """The console app, to mount at ``PREFIX``.

    ``bot`` returns the running bot (the store is open when the console starts: it reads
    the cookies' key from it). ``secure``: send the session cookie over https only.
    """
    key = _Key()
    storage = EncryptedCookieStorage(key, cookie_name=COOKIE, path=PREFIX,
                                     max_age=SESSION_SECONDS, secure=secure, httponly=True,
                                     samesite="Strict")
    app = web.Application(middlewares=[session_middleware(storage), errors_middleware])
    routes = Routes(app)
    app.middlewares.append(access_middleware(routes, lambda: bot().store))
    app[BOT] = BotRef(bot)
    app[THROTTLE] = throttle or Throttle()
    app[LINKS] = LoginLinks()
    feed = app[FEED] = Feed(lambda: bot().store)

    async def stop_feed(_: web.Application) -> None:
        await feed.close()

    app.on_shutdown.append(stop_feed)
    add_pages(routes)
    add_history_pages(routes)
    add_dashboards(routes)
    add_export(routes)
    add_campaign_pages(routes)
    for route in app.router.add_static("/static", HERE / "static", name="static"):
        routes.roles[route] = None  # the stylesheet and the script: public

    app[ANNOUNCE] = []

    async def started(_: web.Application) -> None:
        running = bot()
        key.use(await running.store.secret(_new_key, key=KEY_NAME))
        if running.settings.sandbox:
            app[ANNOUNCE].append(await sandbox_link(app, running))

    app.on_startup.append(started)
    return app


async def sandbox_link(app: web.Application, running: Bot) -> str:
    """Make sure the sandbox's admin exists, and the path of a one-time link logging in as it."""
    store = running.store
    if await store.user(SANDBOX_ADMIN) is None:
        try:
            await store.add_user(User(name=SANDBOX_ADMIN, role=ADMIN,
                                      password_hash=await asyncio.to_thread(unusable_hash),
                                      created_at=running.clock()))
        except UserExistsError:
            pass  # another process made it meanwhile
    token = app[LINKS].issue(SANDBOX_ADMIN)
    return f"{PREFIX}/login/once/{token}"


def _new_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def standalone(console: web.Application, metrics: Handler | None = None) -> web.Application:
    """An app of its own around ``console`` (``BOTKIT_CONSOLE=HOST:PORT``): the console at
    ``PREFIX``, ``/`` leading to it, and ``metrics`` at ``/metrics`` (an internal address is
    where Prometheus should scrape)."""
    root = web.Application()
    if metrics is not None:
        root.router.add_get("/metrics", metrics)

    async def home(_: web.Request) -> web.Response:
        raise web.HTTPFound(PREFIX + "/")

    root.router.add_get("/", home)
    root.add_subapp(PREFIX, console)
    return root
