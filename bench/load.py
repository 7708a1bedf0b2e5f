"""The benchmark's load: the fake provider and the simulated users, in one process.

Each user answers the bot's last message (with its ``tracking_data``) as soon as that reply
reaches the provider. Three phases:

- saturation: every user always has a callback in flight (no think time): callbacks/s;
- fixed rate: callbacks are started at exactly ``rate``/s, each by a user whose last reply has
  arrived: end-to-end latency (callback sent -> reply received by the provider) and ack
  latency (callback sent -> HTTP 200);
- think time: every user answers 1-3 s after its reply arrived (200 users: about 100
  callbacks/s, in the bursts real users make): the same latencies.

Runs on uvloop when it is installed, and posts callbacks over raw keep-alive connections
(``Poster``: aiohttp's client would cost as much as the server under test). Each phase
reports the share of one core this process used (``load_cpu_share``): near 1.0 the load,
not the server, set the pace, and the runner flags the phase. Prints ``PHASE <name>
start|end`` lines (the runner samples the server's CPU time there) and finally one JSON
line of results. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from botkit.models import SendRequest  # noqa: E402
from botkit.sandbox import FakeProvider, create_provider_app  # noqa: E402

ANSWERS = ["bench", "a1", "a2", "a3", "a4", "a5"]


class User:
    def __init__(self, phone: str) -> None:
        self.phone = phone
        self.step = 0  # index into ANSWERS of the next callback
        self.last_id: int | None = None
        self.sent_at = 0.0
        self.waiting = False  # a callback is in flight and its reply has not arrived


class Load(FakeProvider):
    """The fake provider, told when a reply arrives, and the users who answer it."""

    def __init__(self, key: str, users: int) -> None:
        super().__init__(api_key=key, auto_deliver=False, first_id=10**9)
        self.users = {f"38050{n:07d}": User(f"38050{n:07d}") for n in range(users)}
        self.ready: deque[User] = deque(self.users.values())
        self.e2e: list[float] = []
        self.acks: list[float] = []
        self.replies = 0
        self.callbacks = 0
        self.errors = 0
        self.unexpected = 0  # replies with no callback waiting for them: doubled or lost
        self.measuring = False
        self.saturate = False
        self.think: tuple[float, float] | None = None  # answer this long after each reply
        self.rng = random.Random(2)
        self.thinking: dict[str, asyncio.TimerHandle] = {}  # users about to answer
        self.posters: list[Poster] = []  # one per server

    def accept(self, request: SendRequest, body: dict[str, Any], headers: dict[str, str]) -> int:
        message_id = super().accept(request, body, headers)
        user = self.users.get(request.destination_addr)
        if user is None or not user.waiting:
            self.unexpected += 1
            return message_id
        user.waiting, user.last_id = False, message_id
        self.replies += 1
        if self.measuring:
            self.e2e.append(time.perf_counter() - user.sent_at)
        loop = asyncio.get_running_loop()
        if self.saturate:
            loop.create_task(self.post(user))
        elif self.think is not None:
            self.answer_later(user, self.rng.uniform(*self.think))
        else:
            self.ready.append(user)
        return message_id

    def answer_later(self, user: User, delay: float) -> None:
        def answer() -> None:
            self.thinking.pop(user.phone, None)
            asyncio.get_running_loop().create_task(self.post(user))
        self.thinking[user.phone] = asyncio.get_running_loop().call_later(delay, answer)

    def stop_thinking(self) -> None:
        for phone, handle in list(self.thinking.items()):
            handle.cancel()
            self.ready.append(self.users[phone])
        self.thinking.clear()

    async def post(self, user: User) -> None:
        assert self.posters
        text = ANSWERS[user.step]
        user.step = (user.step + 1) % len(ANSWERS)
        message: dict[str, Any] = {"text": text}
        if user.last_id is not None and text != "bench":
            message["tracking_data"] = f"tracking_id:{user.last_id}"
        self.callbacks += 1
        body = {"message_token": self.callbacks + 10**12, "phone_number": user.phone,
                "time": int(time.time()), "message": message}
        user.waiting, user.sent_at = True, time.perf_counter()
        try:
            # Several servers: consecutive callbacks (a phone's too) go to different ones.
            poster = self.posters[self.callbacks % len(self.posters)]
            ok = await poster.post(json.dumps(body).encode()) == 200
        except OSError:
            ok = False
        if self.measuring:
            self.acks.append(time.perf_counter() - user.sent_at)
        if not ok:
            self.errors += 1


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that carries one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[int] | None = None
        self.buffer = b""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].decode("latin-1").split("\r\n")
        length = next((int(line.split(":", 1)[1]) for line in head[1:]
                       if line.lower().startswith("content-length:")), 0)
        if len(self.buffer) < end + 4 + length:
            return  # the body is still coming
        self.buffer = self.buffer[end + 4 + length:]
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(int(head[0].split()[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc or ConnectionResetError("connection closed"))


class Poster:
    """POSTs JSON to one URL over a pool of raw keep-alive connections.

    aiohttp's client costs the load process about as much CPU per request as the server under
    test spends on the whole callback; this writes a prepared request head and reads only the
    status line and Content-Length, so the load is not the bottleneck.
    """

    def __init__(self, url: str) -> None:
        parsed = URL(url)
        self.host, self.port = parsed.host or "127.0.0.1", parsed.port or 80
        self.head = (f"POST {parsed.raw_path_qs} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                     "Content-Type: application/json\r\nContent-Length: ").encode()
        self.idle: list[_Connection] = []

    async def post(self, body: bytes) -> int:
        """The HTTP status of the answer to ``body``."""
        connection = self.idle.pop() if self.idle else None
        if connection is None or connection.closed:
            transport, connection = await asyncio.get_running_loop().create_connection(
                _Connection, self.host, self.port)
            connection.transport = transport  # uvloop may call connection_made later
        assert connection.transport is not None
        connection.answer = asyncio.get_running_loop().create_future()
        connection.transport.write(self.head + b"%d\r\n\r\n" % len(body) + body)
        status = await connection.answer
        self.idle.append(connection)
        return status

    def close(self) -> None:
        for connection in self.idle:
            if connection.transport is not None:
                connection.transport.close()
        self.idle.clear()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] * 1000


def latencies(load: Load) -> dict[str, float]:
    """The phase's end-to-end and ack percentiles, in ms."""
    return {"e2e_p50_ms": pct(load.e2e, 50), "e2e_p95_ms": pct(load.e2e, 95),
            "e2e_p99_ms": pct(load.e2e, 99), "ack_p50_ms": pct(load.acks, 50),
            "ack_p99_ms": pct(load.acks, 99)}


def phase(name: str, edge: str) -> None:
    print(f"PHASE {name} {edge}", flush=True)


class Share:
    """The share of one core this process used between ``start()`` and ``share()``."""

    def start(self) -> None:
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def share(self) -> float:
        return (time.process_time() - self.cpu) / max(1e-9, time.perf_counter() - self.wall)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = Load(args.key, args.users)
    runner = web.AppRunner(create_provider_app(load), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.provider_port).start()
    load.posters = [Poster(url) for url in args.callback]
    results: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as session:
            for server in args.server:
                await wait_healthy(session, server)
        print("READY", flush=True)
        # Saturation: every user keeps one callback in flight.
        load.saturate = True
        for user in list(load.ready):
            asyncio.get_running_loop().create_task(load.post(user))
        load.ready.clear()
        await asyncio.sleep(args.warmup)
        load.measuring, load.e2e, load.acks = True, [], []
        start_replies, started = load.replies, time.perf_counter()
        own = Share()
        own.start()
        phase("saturation", "start")
        await asyncio.sleep(args.seconds)
        phase("saturation", "end")
        elapsed = time.perf_counter() - started
        results["saturation"] = {
            "callbacks_per_s": (load.replies - start_replies) / elapsed,
            "e2e_p50_ms": pct(load.e2e, 50), "e2e_p99_ms": pct(load.e2e, 99),
            "load_cpu_share": own.share(),
        }
        # Drain, then the fixed rate.
        load.saturate, load.measuring = False, False
        await drain(load)
        rng = random.Random(1)
        rng.shuffle(load.ready)
        load.measuring, load.e2e, load.acks = True, [], []
        own.start()
        phase("rate", "start")
        interval, next_at = 1.0 / args.rate, time.perf_counter()
        end = next_at + args.seconds
        sent = late = 0
        while next_at < end:
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if load.ready:
                asyncio.get_running_loop().create_task(load.post(load.ready.popleft()))
                sent += 1
            else:
                late += 1  # every user is waiting for a reply: the server is behind
            next_at += interval
        await asyncio.sleep(1.0)
        phase("rate", "end")
        results["rate"] = {
            "target_per_s": args.rate, "sent": sent, "skipped_no_ready_user": late,
            **latencies(load), "load_cpu_share": own.share(),
        }
        # Think time: users answer 1-3 s after each reply, for at least 15 s.
        load.measuring = False
        await drain(load)
        load.measuring, load.e2e, load.acks = True, [], []
        load.think = (1.0, 3.0)
        start_replies, started = load.replies, time.perf_counter()
        own.start()
        phase("think", "start")
        for user in list(load.ready):
            load.answer_later(user, load.rng.uniform(0.0, 2.0))
        load.ready.clear()
        await asyncio.sleep(args.think_seconds)
        phase("think", "end")
        elapsed = time.perf_counter() - started
        results["think"] = {"callbacks_per_s": (load.replies - start_replies) / elapsed,
                            **latencies(load), "load_cpu_share": own.share()}
        load.think, load.measuring = None, False
        load.stop_thinking()
        await drain(load)
        await asyncio.sleep(0.5)
        results["errors"] = load.errors
        results["unexpected_replies"] = load.unexpected
        results["waiting_at_end"] = sum(u.waiting for u in load.users.values())
    finally:
        for poster in load.posters:
            poster.close()
        await runner.cleanup()
    return results


async def drain(load: Load) -> None:
    """Wait (up to 30 s) until no callback is in flight; the users are then all ready."""
    deadline = time.perf_counter() + 30
    while any(u.waiting for u in load.users.values()) and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    load.ready = deque(u for u in load.users.values() if not u.waiting)


async def wait_healthy(session: aiohttp.ClientSession, server: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            async with session.get(server + "/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{server} did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--provider-port", type=int, required=True)
    parser.add_argument("--server", required=True, action="append",
                        help="a server's base URL (repeat for several)")
    parser.add_argument("--callback", required=True, action="append",
                        help="a server's callback URL (repeat: callbacks take turns)")
    parser.add_argument("--key", required=True)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--think-seconds", type=float, default=15.0)
    args = parser.parse_args()
    try:  # the load must never be the bottleneck: the fastest loop available
        import uvloop
    except ImportError:
        results = asyncio.run(run(args))
        results["loop"] = "asyncio"
    else:
        results = uvloop.run(run(args))
        results["loop"] = "uvloop"
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
