"""The bare baseline: the least a hand-written aiohttp bot does for the benchmark's flow.

Parse the JSON, one SQLite upsert of the user's step, render a Jinja template, POST to the
provider over a shared session. None of botkit's guarantees: no stored inbound message, no
dedup, no transaction around state and reply, no retries, no ordering per user.
``--synchronous FULL`` is botkit's durability; ``NORMAL`` (with WAL) the fastest honest setting
a user would pick. It runs on uvloop, as botkit does (``--loop asyncio`` for the stock loop).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sqlite3

import jinja2
from aiohttp import ClientSession, web

STEPS = ["s1", "s2", "s3", "s4", "s5"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--provider", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--templates", required=True)
    parser.add_argument("--callback", required=True)
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="the event loop (default uvloop, as botkit's server runs on)")
    args = parser.parse_args()

    db = sqlite3.connect(args.db, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={args.synchronous}")
    db.execute("CREATE TABLE IF NOT EXISTS users (phone TEXT PRIMARY KEY, step INTEGER)")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(args.templates))
    templates = [env.get_template(f"bench5/{s}.txt") for s in STEPS]
    done = env.get_template("bench5/done.txt")
    auth = "Basic " + base64.b64encode(args.key.encode()).decode()
    state: dict[str, object] = {}

    async def callback(request: web.Request) -> web.Response:
        data = json.loads(await request.read())
        if "message" not in data:
            return web.json_response({"ok": True})  # a status update
        phone, text = data["phone_number"], data["message"]["text"]
        row = db.execute("SELECT step FROM users WHERE phone = ?", [phone]).fetchone()
        step = 0 if text == "bench" or row is None else row[0] + 1
        db.execute("INSERT INTO users (phone, step) VALUES (?, ?) ON CONFLICT (phone)"
                   " DO UPDATE SET step = excluded.step", [phone, step])
        if step < len(STEPS):
            body = templates[step].render(phone=phone)
        else:
            body = done.render(state={s: "x" for s in STEPS})
        payload = {"source_addr": "Bench", "destination_addr": phone, "message_type": 206,
                   "text": body, "source_type": 1, "callback_url": args.callback}
        session = state["session"]
        assert isinstance(session, ClientSession)

        async def send() -> None:
            async with session.post(args.provider + "/send-viber", json=payload,
                                    headers={"Authorization": auth}) as response:
                await response.read()

        asyncio.get_running_loop().create_task(send())
        return web.json_response({"ok": True})

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        state["session"] = ClientSession()
        yield
        await state["session"].close()  # type: ignore[attr-defined]

    app = web.Application()
    app.router.add_post("/viber/callback/{secret}", callback)
    app.router.add_get("/healthz", lambda r: web.json_response({"status": "ok"}))
    app.cleanup_ctx.append(session_ctx)
    loop = None
    if args.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()
