"""The console's CSV export of botkit's tables (admins).

A table is read in one snapshot on a connection of its own, a batch at a time, and streamed
as it is read (``storage.copying.read_table``): a table of millions of messages is never in
memory, and the bot goes on answering meanwhile. What would give the bot away is not
exported: ``meta`` (the callback secret and the console's key) and the users' password
hashes. A text cell that a spreadsheet would run as a formula (it starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return; users write what they like) gets a leading ``'``,
as OWASP advises.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from typing import Any

from aiohttp import web

from botkit.console.access import ADMIN, Routes, refuse, viewer
from botkit.console.pages import BOT, render
from botkit.storage.copying import TABLES, read_table

__all__ = ["EXPORTED", "add_export"]

log = logging.getLogger("botkit.console")

EXPORTED = tuple(t for t in TABLES if t != "meta")  # meta holds the secrets
HIDDEN = {"users": {"password_hash"}}  # columns never exported
FORMULA = ("=", "+", "-", "@", "\t", "\r")
BATCH = 2_000


def add_export(routes: Routes) -> None:
    """Add the export's page and its CSV downloads to ``routes`` (admins only)."""
    routes.add("GET", "/export", _page, ADMIN, name="export")
    routes.add("GET", "/export/{table}.csv", _csv, ADMIN, name="export_csv")


async def _page(request: web.Request) -> web.Response:
    return await render(request, "export.html", tables=EXPORTED)


async def _csv(request: web.Request) -> web.StreamResponse:
    table = request.match_info["table"]
    if table not in EXPORTED:
        return refuse(request, 404, f"table: {table!r} is not one botkit exports; one of"
                                    f" {', '.join(EXPORTED)}")
    bot = request.app[BOT]()
    day = time.strftime("%Y-%m-%d", time.localtime(bot.clock()))
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
        "Content-Disposition": f'attachment; filename="botkit-{table}-{day}.csv"',
        "X-Content-Type-Options": "nosniff"})
    rows = 0
    prepared = False
    async for columns, batch in read_table(bot.settings.db, table, BATCH):
        keep = [i for i, c in enumerate(columns) if c not in HIDDEN.get(table, ())]
        if not prepared:
            await response.prepare(request)
            await response.write(_lines([[columns[i] for i in keep]]))
            prepared = True
        await response.write(_lines([[_cell(row[i]) for i in keep] for row in batch]))
        rows += len(batch)
    await response.write_eof()
    log.info("%s exported table %s as CSV (%d rows)", viewer(request).name, table, rows)
    return response


def _lines(rows: list[list[Any]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode("utf-8")


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA):
        return "'" + value
    return "" if value is None else value
