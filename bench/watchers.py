"""Console pages open on live views, for bench/run.py's ``botkit-watched`` runs.

    python bench/watchers.py --server URL --db FILE --pages 5

Adds a console user to the server's database (``run.py user add``), logs in, and keeps
``--pages`` pages open as a browser does: each holds the event stream
(``/console/api/events``) and, at each event, reads what it shows (the inbox's JSON) again.
Runs until SIGTERM, then prints one JSON line: the events received and the reads made.
Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "bench console password"


async def page(session: aiohttp.ClientSession, server: str, counts: dict[str, int],
               stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            async with session.get(server + "/console/api/events",
                                   timeout=aiohttp.ClientTimeout(total=None)) as stream:
                async for line in stream.content:
                    if stop.is_set():
                        return
                    if line == b"data: changed\n":
                        counts["events"] += 1
                        async with session.get(server + "/console/api/inbox") as answer:
                            await answer.read()
                            counts["reads"] += 1 if answer.status == 200 else 0
        except (aiohttp.ClientError, asyncio.TimeoutError):
            await asyncio.sleep(0.2)  # the server restarts: as the page's EventSource does


async def run(args: argparse.Namespace) -> dict[str, int]:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    counts = {"events": 0, "reads": 0, "pages": args.pages}
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1, as a browser keeps them
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        for _ in range(300):  # the server is starting: ask again until it has opened the db
            try:
                async with session.get(args.server + "/healthz") as answer:
                    if answer.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
        else:
            raise SystemExit(f"{args.server} did not answer")
        added = await asyncio.to_thread(
            subprocess.run, [sys.executable, "run.py", "user", "add", "bench",
                             "--password-stdin", "--db", args.db],
            cwd=ROOT, input=PASSWORD + "\n", text=True, capture_output=True, check=False)
        if added.returncode != 0 and "exists already" not in added.stderr:
            raise SystemExit(f"could not add the console user: {added.stderr}")
        async with session.get(args.server + "/console/login",
                               headers={"Accept": "text/html"}) as answer:
            token = re.search(r'name="csrf" value="([^"]+)"', await answer.text())
        assert token, "no login form"
        async with session.post(args.server + "/console/login", allow_redirects=False,
                                data={"name": "bench", "password": PASSWORD,
                                      "csrf": token.group(1)}) as answer:
            assert answer.status == 303, await answer.text()
        print(f"WATCHING {time.monotonic()}", flush=True)  # the same clock as bench/run.py
        pages = [asyncio.create_task(page(session, args.server, counts, stop))
                 for _ in range(args.pages)]
        await stop.wait()
        for task in pages:
            task.cancel()
        await asyncio.gather(*pages, return_exceptions=True)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--pages", type=int, default=5)
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
