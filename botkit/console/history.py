"""The console's search of conversations (by phone, flow, status and dates) and a phone's
page: its conversations and its whole history across them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from botkit.console.access import AGENT, Routes, refuse
from botkit.console.fields import FieldError, day_range
from botkit.console.pages import BOT, render
from botkit.core.conversation import Status
from botkit.core.records import LogEntry
from botkit.phones import PhoneError, read_phone

__all__ = ["add_history_pages"]

FOUND = 200  # conversations shown of a search
PHONE_HISTORY = 1000  # messages shown on a phone's page
PHONE_CONVERSATIONS = 200


def add_history_pages(routes: Routes) -> None:
    """Add the search and the phones' pages to ``routes`` (agents and admins)."""
    routes.add("GET", "/search", _search, AGENT, name="search")
    routes.add("GET", "/phones/{phone:\\d+}", _phone, AGENT, name="phone")


async def _search(request: web.Request) -> web.Response:
    bot = request.app[BOT]()
    query = {k: request.query.get(k, "").strip() for k in ("phone", "flow", "status", "from",
                                                             "to")}
    try:
        filters = _filters(query, bot.settings.phone_region, set(bot.flows))
    except FieldError as exc:
        return refuse(request, 400, str(exc))
    asked = any(query.values())
    found = await bot.store.conversations(limit=FOUND, **filters) if asked else []
    return await render(request, "search.html", query=query, found=found, asked=asked,
                        flows=sorted(bot.flows), statuses=[s.value for s in Status],
                        limit=FOUND)


def _filters(query: dict[str, str], region: str | None, flows: set[str]) -> dict[str, Any]:
    """The store's filters from the search form, or FieldError naming the field to fix."""
    filters: dict[str, Any] = {}
    if query["phone"]:
        try:
            filters["phone"] = read_phone(query["phone"], region)
        except PhoneError as exc:
            raise FieldError(f"phone: {query['phone']!r} is not a phone number: {exc}") from None
    if query["flow"]:
        filters["flow"] = query["flow"]  # a flow no longer loaded still has its conversations
    if query["status"]:
        if query["status"] not in {s.value for s in Status}:
            raise FieldError(f"status: {query['status']!r} is not one of "
                           + ", ".join(s.value for s in Status))
        filters["status"] = query["status"]
    filters["since"], filters["until"] = day_range(query["from"], query["to"])
    return filters


async def _phone(request: web.Request) -> web.Response:
    bot = request.app[BOT]()
    phone = request.match_info["phone"]
    convs = await bot.store.conversations(phone=phone, limit=PHONE_CONVERSATIONS)
    history = await bot.store.history(phone, PHONE_HISTORY)
    opted_out = await bot.store.suppression(phone)
    if not convs and not history and opted_out is None:
        raise web.HTTPNotFound(reason=f"nothing is kept about {phone}")
    return await render(request, "phone.html", phone=phone, conversations=convs,
                        opted_out=opted_out,
                        parts=_by_conversation(history), shown=len(history),
                        limit=PHONE_HISTORY)


def _by_conversation(history: list[LogEntry]) -> list[tuple[int | None, list[LogEntry]]]:
    """The history in runs of messages of one conversation (None: outside any), in order."""
    parts: list[tuple[int | None, list[LogEntry]]] = []
    for entry in history:
        if parts and parts[-1][0] == entry.conversation_id:
            parts[-1][1].append(entry)
        else:
            parts.append((entry.conversation_id, [entry]))
    return parts
