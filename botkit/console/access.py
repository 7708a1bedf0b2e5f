"""Who may use the console: sessions in encrypted cookies, a role on every route, CSRF tokens
on every change, and throttled logins.

Sessions are aiohttp-session's ``EncryptedCookieStorage`` (Fernet: AES with an HMAC, from
``cryptography``), HttpOnly and SameSite=Strict, Secure when the public URL is https, and
they end after ``SESSION_SECONDS``. A session names its user and the fingerprint of the
user's password hash: removing the user or changing the password ends its sessions at the
next request. Every route is added through ``Routes.add`` with the role it needs; the
``access`` middleware refuses a route that was added without one, so a new page cannot be
left open by forgetting it.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute
from aiohttp_session import Session, get_session, new_session

from botkit.storage.base import Store

__all__ = ["ADMIN", "AGENT", "ROLES", "SESSION_SECONDS", "Routes", "Throttle", "Viewer",
           "access_middleware", "csrf_token", "errors_middleware", "fingerprint", "log_in",
           "refuse", "viewer"]

AGENT, ADMIN = "agent", "admin"
ROLES = (AGENT, ADMIN)
_RANK = {AGENT: 1, ADMIN: 2}
SESSION_SECONDS = 12 * 3600
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
_SAFE = ("GET", "HEAD", "OPTIONS")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Viewer:
    """The logged-in user of a request."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        """Whether this user's role includes ``role`` (an admin may do what an agent may)."""
        return _RANK[self.role] >= _RANK[role]


# The request's Viewer, once access_middleware let it in (aiohttp's typed request keys from
# 3.13 on; a string before).
VIEWER: Any = (web.RequestKey("botkit.console.viewer", Viewer) if hasattr(web, "RequestKey")
               else "botkit.console.viewer")


class Routes:
    """The console's routes, each with the role it needs (None: anyone, such as the login)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.roles: dict[AbstractRoute, str | None] = {}

    def add(self, method: str, path: str, handler: Handler, role: str | None,
            name: str | None = None) -> None:
        """Add ``handler`` at ``path``; ``role`` is checked before it runs."""
        if role is not None and role not in _RANK:
            raise ValueError(f"unknown role {role!r}")
        route = self.app.router.add_route(method, path, handler, name=name)
        self.roles[route] = role


class Throttle:
    """Failed logins, counted for ``window`` seconds: at most ``per_name`` for one name from
    one address, and ``per_address`` for every name from one address.

    A name locked from one address is not locked from another (an attacker cannot lock an
    agent out from elsewhere); one address trying many names is stopped too. Kept in the
    process: with several processes, each counts its own, which the docs say.
    """

    def __init__(self, per_name: int = 5, per_address: int = 50, window: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_name, self.per_address = per_name, per_address
        self.window, self.clock = window, clock
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, name: str, address: str) -> float:
        """Seconds until ``name`` may try again from ``address`` (0: now)."""
        now, wait = self.clock(), 0.0
        for key, limit in self._keys(name, address):
            times = self._recent(key, now)
            if len(times) >= limit:
                wait = max(wait, times[0] + self.window - now)
        return wait

    def failed(self, name: str, address: str) -> None:
        now = self.clock()
        for key, _ in self._keys(name, address):
            self._recent(key, now).append(now)

    def succeeded(self, name: str, address: str) -> None:
        self._failures.pop(self._keys(name, address)[0][0], None)

    def _keys(self, name: str, address: str) -> list[tuple[str, int]]:
        return [(f"{name.lower()}\0{address}", self.per_name), (address, self.per_address)]

    def _recent(self, key: str, now: float) -> deque[float]:
        if len(self._failures) > 10_000:  # many keys: forget those with no recent failure
            for old in [k for k, v in self._failures.items()
                        if not v or v[-1] <= now - self.window]:
                del self._failures[old]
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times


def fingerprint(password_hash: str) -> str:
    """What a session keeps of its user's password hash: a new password ends the session."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


async def log_in(request: web.Request, name: str, role: str, password_hash: str) -> Session:
    """Start a new session for ``name`` (a new cookie, a new CSRF token: no fixation)."""
    session = await new_session(request)
    session.update(user=name, role=role, pw=fingerprint(password_hash),
                   csrf=secrets.token_urlsafe(32))
    return session


def viewer(request: web.Request) -> Viewer:
    """The logged-in user of a request that passed ``access_middleware``."""
    found: Viewer = request[VIEWER]
    return found


def access_middleware(routes: Routes, store: Callable[[], Store]) -> Callable[..., Awaitable[
        web.StreamResponse]]:
    """Refuse what the request's session may not do: the role, then the CSRF token."""

    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        if route not in routes.roles:
            if request.match_info.http_exception is not None:  # 404 and 405 as they are
                return await handler(request)
            return refuse(request, 403, "this page has no role: it is refused to everyone")
        role = routes.roles[route]
        session = await get_session(request)
        if request.method not in _SAFE and not _csrf_ok(request, session,
                                                        await _form_token(request)):
            return refuse(request, 403, "missing or wrong CSRF token: reload the page and try"
                                        " again")
        if role is None:
            return await handler(request)
        name = session.get("user")
        user = await store().user(name) if isinstance(name, str) else None
        if user is None or not hmac.compare_digest(
                str(session.get("pw", "")), fingerprint(user.password_hash)):
            if not session.new:
                session.invalidate()
            return refuse(request, 401, "log in first")
        if not _RANK[user.role] >= _RANK[role]:
            return refuse(request, 403, f"this needs the {role} role; you are {user.role}")
        request[VIEWER] = Viewer(user.name, user.role)
        return await handler(request)

    return access


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An HTTP error a page raised (a conversation that does not exist), answered as every
    refusal is: a page for a browser, JSON for the rest."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return refuse(request, exc.status, exc.reason)


def csrf_token(session: Session) -> str:
    """The session's CSRF token, made when first needed (the login form has one too)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def _csrf_ok(request: web.Request, session: Session, form_token: str | None) -> bool:
    expected = session.get("csrf")
    given = request.headers.get(CSRF_HEADER) or form_token
    return isinstance(expected, str) and given is not None and hmac.compare_digest(
        given.encode(), expected.encode())


async def _form_token(request: web.Request) -> str | None:
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return None
    value = (await request.post()).get(CSRF_FIELD)  # aiohttp keeps it for the handler
    return value if isinstance(value, str) else None


def refuse(request: web.Request, status: int, message: str) -> web.Response:
    """A refusal: pages get an HTML page (a 401 sends them to the login), the rest JSON."""
    wants_page = request.method in _SAFE and "text/html" in request.headers.get("Accept", "")
    if wants_page and status == 401:
        login = request.app.router["login"].url_for().with_query(next=request.path_qs)
        raise web.HTTPSeeOther(location=str(login))
    if wants_page:
        return web.Response(status=status, content_type="text/html",
                            text=f"<!doctype html><title>{status}</title><p>{html.escape(message)}</p>"
                                 '<p><a href="/console/">Back to the console</a></p>')
    return web.json_response({"error": message}, status=status)
