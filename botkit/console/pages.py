"""The console's pages: log in and out, the inbox of conversations with a human, a
conversation's transcript, an agent's reply, closing a conversation, and the users.

Every page is rendered from ``console/templates`` with autoescaping on, so what a user wrote
(and flow names, and agents' replies) is shown as text. Every change is a form POST carrying
the session's CSRF token and is answered with a redirect (a reload never posts again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import jinja2
from aiohttp import web
from aiohttp_session import get_session

from botkit.console.access import (
    ADMIN,
    AGENT,
    Routes,
    VIEWER,
    Throttle,
    csrf_token,
    log_in,
    refuse,
    viewer,
)
from botkit.console.links import LoginLinks
from botkit.console.live import Feed
from botkit.console.passwords import check_password
from botkit.core.conversation import Conversation, Status
from botkit.core.records import AgentAction, Suppression
from botkit.errors import BotkitError, ConcurrentUpdateError, UnknownStepError
from botkit.runtime.assembly import Bot

__all__ = ["BOT", "FEED", "LINKS", "THROTTLE", "BotRef", "add_pages", "ago", "clock", "find", "opted_out_since",
           "render",
           "url"]

log = logging.getLogger("botkit.console")

MAX_REPLY = 1000  # characters: the provider's limit on a message's text
TRANSCRIPT = 200  # messages shown of a phone's history
INBOX = 200  # conversations shown in the inbox
CANNED = "agent/"  # the templates folder's canned replies


class BotRef:
    """The running bot, once the server has started (``BOT``)."""

    def __init__(self, get: Any) -> None:
        self.get = get

    def __call__(self) -> Bot:
        bot: Bot = self.get()
        return bot


BOT = web.AppKey("botkit.console.bot", BotRef)
THROTTLE = web.AppKey("botkit.console.throttle", Throttle)
LINKS = web.AppKey("botkit.console.links", LoginLinks)
FEED = web.AppKey("botkit.console.feed", Feed)
HEARTBEAT = 15.0  # seconds between comments on an idle event stream

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("botkit.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
# Pages are strict: a script of their own only (console.js), no inline code, no framing.
HEADERS = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none';"
                                      " form-action 'self'; base-uri 'none'",
           "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}


def add_pages(routes: Routes) -> None:
    """Add the console's pages to ``routes``, each with the role it needs."""
    routes.add("GET", "/login", _login_page, None, name="login")
    routes.add("POST", "/login", _login, None)
    routes.add("GET", "/login/once/{token}", _login_once, None)
    routes.add("POST", "/logout", _logout, AGENT, name="logout")
    routes.add("GET", "/", _inbox, AGENT, name="inbox")
    routes.add("GET", "/api/inbox", _inbox_json, AGENT, name="inbox_feed")
    routes.add("GET", "/api/events", _events, AGENT, name="events")
    routes.add("GET", "/api/conversations/{id:\\d+}", _conversation_json, AGENT,
               name="conversation_feed")
    routes.add("GET", "/conversations/{id:\\d+}", _conversation, AGENT, name="conversation")
    routes.add("POST", "/conversations/{id:\\d+}/reply", _reply, AGENT, name="reply")
    routes.add("POST", "/conversations/{id:\\d+}/close", _close, AGENT, name="close")
    routes.add("POST", "/conversations/{id:\\d+}/take", _take, AGENT, name="take")
    routes.add("POST", "/conversations/{id:\\d+}/resume", _resume, AGENT, name="resume")
    routes.add("GET", "/users", _users, ADMIN, name="users")


async def render(request: web.Request, template: str, status: int = 200,
                  **values: Any) -> web.Response:
    session = await get_session(request)
    me = request.get(VIEWER)
    html = _templates.get_template(template).render(
        csrf=csrf_token(session), me=me, url=lambda name, **parts: url(request, name, **parts),
        clock=clock, ago=ago, opted_out_since=opted_out_since,
        **values)
    return web.Response(text=html, content_type="text/html", status=status, headers=HEADERS)


def url(request: web.Request, name: str, **parts: Any) -> str:
    return str(request.app.router[name].url_for(**{k: str(v) for k, v in parts.items()}))


def _back(request: web.Request, name: str, **parts: Any) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location=url(request, name, **parts))


# -- logging in and out ----------------------------------------------------------------------


async def _login_page(request: web.Request) -> web.Response:
    return await render(request, "login.html", next=_next(request.query.get("next")),
                         error=None, name="")


async def _login(request: web.Request) -> web.Response:
    form = await request.post()
    name, password = str(form.get("name", "")).strip(), str(form.get("password", ""))
    nxt = _next(str(form.get("next", "")))
    throttle = request.app[THROTTLE]
    address = request.remote or "?"
    wait = throttle.retry_after(name, address)
    if wait > 0:
        log.warning("console login for %r from %s refused: too many failed attempts",
                    name, request.remote)
        response = await render(
            request, "login.html", status=429, next=nxt, name=name,
            error=f"Too many failed attempts: try again in {int(wait) + 1} seconds.")
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    user = await request.app[BOT]().store.user(name) if name else None
    if not await check_password(user.password_hash if user else None, password) or user is None:
        throttle.failed(name, address)
        log.warning("failed console login for %r from %s", name, request.remote)
        return await render(request, "login.html", status=401, next=nxt, name=name,
                             error="Wrong name or password.")
    throttle.succeeded(name, address)
    await log_in(request, user.name, user.role, user.password_hash)
    log.info("%s logged in to the console (%s) from %s", user.name, user.role, request.remote)
    raise web.HTTPSeeOther(location=nxt or url(request, "inbox"))


async def _login_once(request: web.Request) -> web.Response:
    name = request.app[LINKS].take(request.match_info["token"])
    user = await request.app[BOT]().store.user(name) if name else None
    if user is None:
        return await render(request, "login.html", status=410, next="", name="",
                             error="That login link was used already, or has expired: log in,"
                                   " or restart python run.py for a new one.")
    await log_in(request, user.name, user.role, user.password_hash)
    log.info("%s logged in to the console by a one-time link from %s", user.name,
             request.remote)
    raise _back(request, "inbox")


async def _logout(request: web.Request) -> web.Response:
    session = await get_session(request)
    log.info("%s logged out of the console", viewer(request).name)
    session.invalidate()
    raise _back(request, "login")


def _next(value: str | None) -> str:
    """Where to go after the login: a path of the console only (never another site)."""
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/console/") or "\\" in value:
        return ""
    return value


# -- the inbox and a conversation ------------------------------------------------------------


async def _waiting(request: web.Request) -> list[dict[str, Any]]:
    bot = request.app[BOT]()
    now = bot.clock()
    waiting = await bot.store.human_conversations(INBOX)
    holders = await bot.store.holders([c.id for c, _ in waiting])
    return [{"id": c.id, "phone": c.phone, "flow": c.flow, "step": c.step,
             "waited": max(0.0, now - since), "since": since,
             "agent": holders.get(c.id), "url": url(request, "conversation", id=c.id)}
            for c, since in waiting]


async def _inbox(request: web.Request) -> web.Response:
    return await render(request, "inbox.html", waiting=await _waiting(request))


async def _inbox_json(request: web.Request) -> web.Response:
    return web.json_response({"waiting": await _waiting(request)})


async def _conversation(request: web.Request) -> web.Response:
    bot = request.app[BOT]()
    conv = await find(request)
    history = await bot.store.history(conv.phone, TRANSCRIPT)
    holder = (await bot.store.holders([conv.id])).get(conv.id)
    flow = bot.flows.get(conv.flow)
    steps = [s.name for s in flow.steps.values() if s.prompt] if flow is not None else []
    return await render(request, "conversation.html", conv=conv, history=history,
                        opted_out=await bot.store.suppression(conv.phone),
                         human=conv.status is Status.HUMAN, max_reply=MAX_REPLY,
                         holder=holder, mine=holder == viewer(request).name, steps=steps,
                         actions=await bot.store.actions(conv.id),
                         canned=_canned(bot, conv, viewer(request).name))


async def _conversation_json(request: web.Request) -> web.Response:
    bot = request.app[BOT]()
    conv = await find(request)
    holder = (await bot.store.holders([conv.id])).get(conv.id)
    return web.json_response({
        "id": conv.id, "status": conv.status.value, "flow": conv.flow, "step": conv.step,
        "locale": conv.locale, "agent": holder,
        "history": [{"direction": m.direction, "at": m.at, "text": m.text, "detail": m.detail}
                    for m in await bot.store.history(conv.phone, TRANSCRIPT)],
        "actions": [{"agent": a.agent, "action": a.action, "detail": a.detail, "at": a.at}
                    for a in await bot.store.actions(conv.id)]})


async def _events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``changed`` whenever the database has something new to show."""
    feed = request.app[FEED]
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})
    await response.prepare(request)
    await response.write(b"retry: 1000\n\n")  # after a restart, back within a second
    with feed.subscribe() as changes:
        while not feed.closed:
            try:
                await asyncio.wait_for(changes.get(), HEARTBEAT)
            except TimeoutError:
                await response.write(b": still here\n\n")  # proxies keep the stream open
                continue
            if not feed.closed:
                await response.write(b"data: changed\n\n")
    return response


async def _reply(request: web.Request) -> web.Response:
    bot, me = request.app[BOT](), viewer(request)
    conv = await find(request)
    text = str((await request.post()).get("text", "")).strip()
    if not text:
        return refuse(request, 400, "text: write the reply first")
    if len(text) > MAX_REPLY:
        return refuse(request, 400, f"text: at most {MAX_REPLY} characters (this is"
                                    f" {len(text)})")
    refused = await _hold(request, conv)
    if refused is not None:
        return refused
    opted_out = await bot.store.suppression(conv.phone)
    if opted_out is not None:
        return refuse(request, 409, f"{conv.phone} {opted_out_since(opted_out)}: nothing is"
                                    " sent to them until they write an opt-in keyword")
    try:
        sent = await bot.engine.say_as_agent(conv.phone, text)
    except BotkitError as exc:  # the text breaks a provider limit
        return refuse(request, 400, f"text: {exc}")
    if sent is None or sent.id != conv.id:
        return refuse(request, 409, f"conversation {conv.id} is no longer with a human")
    await bot.store.record_action(AgentAction(conversation_id=conv.id, agent=me.name,
                                              action="replied", at=bot.clock()))
    log.info("%s replied in conversation %d (%s)", me.name, conv.id, conv.phone)
    raise _back(request, "conversation", id=conv.id)


async def _close(request: web.Request) -> web.Response:
    bot, me = request.app[BOT](), viewer(request)
    conv = await find(request)
    refused = await _hold(request, conv)
    if refused is not None:
        return refused
    closed = await bot.store.release(conv.phone, bot.clock())
    if closed is None or closed.id != conv.id:
        return refuse(request, 409, f"conversation {conv.id} is no longer with a human")
    await bot.store.record_action(AgentAction(conversation_id=conv.id, agent=me.name,
                                              action="closed", at=bot.clock()), drop=True)
    log.info("%s closed conversation %d (%s): the bot answers again", me.name, conv.id,
             conv.phone)
    raise _back(request, "inbox")


async def _take(request: web.Request) -> web.Response:
    """Take a conversation nobody has, or (``over=1``) one another agent has."""
    bot, me = request.app[BOT](), viewer(request)
    conv = await find(request)
    if conv.status is not Status.HUMAN:
        return _not_human(request, conv)
    over = (await request.post()).get("over") == "1"
    holder = await bot.store.take(conv.id, me.name, bot.clock(), over=over)
    if holder is not None:
        return refuse(request, 409, f"{holder} has conversation {conv.id}; take it over to"
                                    " answer in it")
    log.info("%s %s conversation %d (%s)", me.name, "took over" if over else "took", conv.id,
             conv.phone)
    raise _back(request, "conversation", id=conv.id)


async def _resume(request: web.Request) -> web.Response:
    """Give the conversation back to the bot at a step of its flow (its prompt is sent)."""
    bot, me = request.app[BOT](), viewer(request)
    conv = await find(request)
    step = str((await request.post()).get("step", ""))
    refused = await _hold(request, conv)
    if refused is not None:
        return refused
    try:
        resumed = await bot.engine.resume_at(conv.id, step)
    except UnknownStepError as exc:
        return refuse(request, 400, f"step: {exc}")
    except ConcurrentUpdateError:
        return refuse(request, 409, "the user wrote meanwhile: read it, then try again")
    if resumed is None:
        return _not_human(request, conv)
    await bot.store.record_action(AgentAction(conversation_id=conv.id, agent=me.name,
                                              action="resumed", detail=step, at=bot.clock()),
                                  drop=True)
    log.info("%s gave conversation %d (%s) back to the bot at %s.%s", me.name, conv.id,
             conv.phone, conv.flow, step)
    raise _back(request, "inbox")


async def _hold(request: web.Request, conv: Conversation) -> web.Response | None:
    """None when the viewer has the conversation (taking it when nobody has), else why not."""
    bot = request.app[BOT]()
    if conv.status is not Status.HUMAN:
        return _not_human(request, conv)
    holder = await bot.store.take(conv.id, viewer(request).name, bot.clock())
    if holder is not None:
        return refuse(request, 409, f"{holder} has conversation {conv.id}; take it over"
                                    " first to answer in it")
    return None


def _not_human(request: web.Request, conv: Conversation) -> web.Response:
    return refuse(request, 409, f"conversation {conv.id} is not with a human"
                                f" ({conv.status.value}): the bot answers this user")


def _canned(bot: Bot, conv: Conversation, agent: str) -> list[dict[str, str]]:
    """The canned replies (``templates/agent/*.txt``), rendered for this conversation: its
    ``state``, ``phone``, and the ``agent``'s name. One that cannot be rendered for it says
    why instead of a text."""
    names = bot.renderer.env.list_templates(
        filter_func=lambda name: name.startswith(CANNED) and name.endswith(".txt"))
    replies = []
    for name in sorted(names):
        try:
            text = bot.renderer.render(name, {"state": conv.state, "phone": conv.phone,
                                              "agent": agent}).text
        except BotkitError as exc:
            replies.append({"name": name.removeprefix(CANNED), "text": "", "problem": str(exc)})
            continue
        replies.append({"name": name.removeprefix(CANNED), "text": text, "problem": ""})
    return replies


async def find(request: web.Request) -> Conversation:
    conv_id = int(request.match_info["id"])
    conv = await request.app[BOT]().store.conversation(conv_id)
    if conv is None:
        raise web.HTTPNotFound(reason=f"conversation {conv_id} does not exist")
    return conv


# -- users (admins) --------------------------------------------------------------------------


async def _users(request: web.Request) -> web.Response:
    users = await request.app[BOT]().store.users()
    return await render(request, "users.html", users=users)


def ago(seconds: float) -> str:
    """``seconds`` as people say it: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def opted_out_since(entry: Suppression) -> str:
    """How a phone got on the suppression list, as people say it."""
    how = f"wrote {entry.keyword!r}" if entry.keyword else f"was added by {entry.source}"
    return f"opted out ({how}, {clock(entry.at)})"


def clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
