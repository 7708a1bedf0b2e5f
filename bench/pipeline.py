"""botkit's own work per message, without HTTP: CPU microseconds per message, in-process.

    python bench/pipeline.py            # about 5 s; run it pinned (taskset -c 0) to compare
    python bench/pipeline.py --profile  # and print cProfile's top functions (event loop only)

200 users play the benchmark's 5-step flow as the server would handle them: store the
callback and read its routing context (one database job), run the turn, commit it (the reply claimed in the commit), record the
send's ``message_id``. The provider and HTTP are left out, so the figure moves only with
botkit's own code. Back to back it repeats within a few percent, but a shared machine's
speed drifts over minutes: compare two versions by alternating them. Real SQLite file (WAL,
synchronous=FULL), real database thread.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bots.bench5 import bench5  # noqa: E402

from botkit.core.flows import FlowSet  # noqa: E402
from botkit.core.records import Inbound
from botkit.models import InboundReply  # noqa: E402
from botkit.runtime.engine import Engine  # noqa: E402
from botkit.runtime.templates import Renderer  # noqa: E402
from botkit.storage.base import Outgoing  # noqa: E402
from botkit.storage.sqlite import SQLiteStore  # noqa: E402

ANSWERS = ["bench", "a1", "a2", "a3", "a4", "a5"]


class Outlet:
    """Takes every reply a commit claims, as a sender with free slots would."""

    def __init__(self) -> None:
        self.claimed: dict[str, list[Outgoing]] = {}

    def reserve(self) -> str | None:
        return f"pipeline/{os.getpid()}/x"

    def deliver(self, claimed: list[Outgoing], *, reserved: bool, phone: str = "",
                queued: int = 0) -> None:
        for row in claimed:
            self.claimed.setdefault(row.phone, []).append(row)


async def run(rounds: int, profile: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "pipeline.db")
        await store.open()
        outlet = Outlet()
        engine = Engine(store, FlowSet([bench5]), Renderer(ROOT / "bench" / "templates"),
                        sender="Bench", callback_url="http://127.0.0.1:9/cb", outlet=outlet)
        users = [f"38050{n:07d}" for n in range(200)]
        last: dict[str, int] = {}
        counter = {"token": 0, "message_id": 10**9}

        async def one(phone: str, text: str) -> None:
            counter["token"] += 1
            body: dict[str, object] = {"message_token": counter["token"], "phone_number": phone,
                                       "time": 1, "message": {"text": text}}
            if phone in last:
                body["message"] = {"text": text, "tracking_data": f"tracking_id:{last[phone]}"}
            reply = InboundReply.model_validate(body)
            # As the server does for a phone with nothing else in progress.
            inbound_id, context = await store.record_and_route(reply, time.time())
            assert inbound_id is not None
            await engine.handle(Inbound(id=inbound_id, token=reply.message_token, phone=phone,
                                        time=reply.time, text=reply.message.text,
                                        tracking_data=reply.message.tracking_data,
                                        context=context))
            for row in outlet.claimed.pop(phone, []):
                counter["message_id"] += 1
                await store.mark_sent(row.id, counter["message_id"], time.time(), engine.rules)
                last[phone] = counter["message_id"]

        await asyncio.gather(*(one(p, "bench") for p in users))  # warm-up
        profiler = cProfile.Profile() if profile else None
        messages = 0
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        for _ in range(rounds):
            for text in ANSWERS:
                await asyncio.gather(*(one(p, text) for p in users))
                messages += len(users)
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"{messages} messages: {cpu / messages * 1e6:.0f} us of CPU per message"
              f" (both threads), {wall / messages * 1e6:.0f} us of wall time;"
              f" {store.thread.groups} commits")
        await store.close()
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.profile))


if __name__ == "__main__":
    main()
