"""The console's campaigns page (admins): each run of ``run.py start`` and ``run.py notify``,
the newest first, with how far its messages got, its rate and the time it has left.

A run records itself (``runtime.campaign``, ``CampaignStore``); its messages carry its id,
and their counts are read from the index of campaigns' messages alone. The page redraws
from ``/console/api/campaigns`` at each event of the console's stream, and every few
seconds while a run is running (a send changes no id that the stream watches).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from botkit.console.access import ADMIN, Routes
from botkit.console.pages import BOT, render
from botkit.core.records import CampaignCounts, CampaignRun

__all__ = ["CAMPAIGNS", "QUIET", "WINDOW", "add_campaign_pages", "campaign_view"]

CAMPAIGNS = 50  # runs shown, the newest first
WINDOW = 60.0  # seconds the rate of a running campaign is measured over
# An unfinished run whose process has said nothing for this long (it says how far it got
# about once a second): its process was killed, or lost the database.
QUIET = 30.0
# The parts of a run's bar, in order, and what each counts.
PARTS = ("delivered", "sent", "failed", "uncertain", "refused", "queued")


def add_campaign_pages(routes: Routes) -> None:
    """Add the campaigns page and its JSON to ``routes``, for admins."""
    routes.add("GET", "/campaigns", _page, ADMIN, name="campaigns")
    routes.add("GET", "/api/campaigns", _json, ADMIN, name="campaigns_feed")


def campaign_view(run: CampaignRun, counts: CampaignCounts, now: float) -> dict[str, Any]:
    """What the page shows of one run: its record, its messages by status, the rate
    (messages a second: over the last ``WINDOW`` seconds while it runs, over its sends once
    it ended), the seconds it has left (its messages not sent yet at that rate), its state,
    and its bar."""
    running = run.finished_at is None and (run.seen_at or run.started_at) >= now - QUIET
    if run.finished_at is not None:
        state = run.outcome or "ended"  # done, stopped or failed
    elif running:
        state = "running"
    else:
        state = "not finished (its process stopped?)"
    queued = counts.queued + counts.sending
    # Phones the run has not begun yet: each begun phone has a message (the record's count
    # of them is up to a second old).
    messages = queued + counts.sent + counts.failed + counts.uncertain + counts.refused
    not_begun = max(0, run.total - run.skipped - max(run.begun, messages)) if running else 0
    rate = None
    if counts.first_sent_at is not None and counts.last_sent_at is not None:
        if running:
            window = min(WINDOW, now - counts.first_sent_at)
            rate = counts.recent / window if window > 0 else None
        elif counts.last_sent_at > counts.first_sent_at:
            rate = counts.sent / (counts.last_sent_at - counts.first_sent_at)
    left = queued + not_begun
    remaining = left / rate if running and rate and left else None
    values = {"delivered": counts.delivered, "sent": counts.sent - counts.delivered,
              "failed": counts.failed, "uncertain": counts.uncertain,
              "refused": counts.refused, "queued": queued}
    whole = sum(values.values()) + not_begun
    bar, x = [], 0.0
    for part in PARTS:
        width = 100.0 * values[part] / whole if whole else 0.0
        if width:
            bar.append({"part": part, "x": round(x, 3), "width": round(width, 3)})
        x += width
    return {"id": run.id, "kind": run.kind, "name": run.name, "total": run.total,
            "begun": run.begun, "skipped": run.skipped, "started_at": run.started_at,
            "finished_at": run.finished_at, "outcome": run.outcome, "state": state,
            "running": running, "queued": queued, "sending": counts.sending,
            "sent": counts.sent, "delivered": counts.delivered, "failed": counts.failed,
            "uncertain": counts.uncertain, "refused": counts.refused,
            "not_begun": not_begun, "rate": rate,
            "remaining": remaining, "bar": bar}


async def _runs(request: web.Request) -> list[dict[str, Any]]:
    bot = request.app[BOT]()
    now = bot.clock()
    runs = await bot.store.campaigns(CAMPAIGNS)
    counts = await bot.store.campaign_progress([r.id for r in runs], now - WINDOW)
    return [campaign_view(r, counts.get(r.id, CampaignCounts()), now) for r in runs]


async def _page(request: web.Request) -> web.Response:
    return await render(request, "campaigns.html", campaigns=await _runs(request))


async def _json(request: web.Request) -> web.Response:
    runs = await _runs(request)
    return web.json_response({"campaigns": runs, "running": any(r["running"] for r in runs)})
