"""The fault harness: real processes, a driver of scripted conversations, an invariant checker.

- ``Processes`` runs the fake provider and the bot server as separate processes (so the
  server can be killed with SIGKILL while the provider keeps its log), on loopback.
- ``Driver`` plays many three-step conversations of the ``chain`` bot through real HTTP
  callbacks. A callback that was not acknowledged (server down, connection reset) is posted
  again with the same ``message_token``, as the provider would. It can also post each
  callback several times.
- ``check`` compares the driver's log, the provider's log and the bot's database, and
  returns a ``Report`` of what was lost, doubled or failed.

Used by tests/reliability/test_*.py at CI scale and by tests/reliability/full.py at full scale.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import unused_port

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
KEY = "reliability-key"
SECRET = "reliability-secret-0123456789abcdef"
EXPECTED = ["Q1?", "Q2?", "Q3?"]
ANSWERS = ["a1", "a2", "a3"]


def expected_texts(answers: list[str]) -> list[str]:
    """What the chain bot sends for a conversation: the keyword then three answers."""
    return [*EXPECTED, "Done: " + " ".join(answers)]


class Processes:
    """The fake provider and the bot servers, each in its own process.

    One server on a SQLite file by default; ``db`` (a postgresql:// URL) and ``servers``
    run several on one PostgreSQL database, each on its own port. ``server``, ``url`` and
    ``callback_url`` name the first.
    """

    def __init__(self, tmp: Path, *, env: dict[str, str] | None = None,
                 db: str | Path | None = None, servers: int = 1,
                 hosts: list[str] | None = None) -> None:
        self.tmp = tmp
        self.db: str | Path = db if db is not None else tmp / "bot.db"
        self.provider_port = unused_port()
        self.ports = [unused_port() for _ in range(servers)]
        # Where each server listens and is reached (another network namespace's address),
        # the command it runs under (``ip netns exec NAME``), and the provider's URL from it.
        self.hosts = hosts or ["127.0.0.1"] * servers
        self.wraps: list[list[str]] = [[] for _ in range(servers)]
        self.urls = [f"http://{host}:{port}" for host, port in zip(self.hosts, self.ports,
                                                                    strict=True)]
        self.callback_urls = [f"{url}/viber/callback/{SECRET}" for url in self.urls]
        self.port, self.url, self.callback_url = self.ports[0], self.urls[0], self.callback_urls[0]
        self.provider_url = f"http://127.0.0.1:{self.provider_port}"
        self.provider_host = "127.0.0.1"
        self.api_urls = [self.provider_url] * servers
        self.extra_env = env or {}
        self.provider: subprocess.Popen[bytes] | None = None
        self.servers: list[subprocess.Popen[bytes] | None] = [None] * servers
        self.starts = 0
        self.kills = 0

    @property
    def server(self) -> subprocess.Popen[bytes] | None:
        return self.servers[0]

    def _env(self, extra: dict[str, str] | None = None, index: int = 0) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOTKIT_")}
        env.update(
            BOTKIT_API_KEY=KEY, BOTKIT_API_URL=self.api_urls[index], BOTKIT_DB=str(self.db),
            # The real clock: the outcome must not depend on the hour the test runs at.
            BOTKIT_QUIET_HOURS="off", BOTKIT_HOST=self.hosts[index], BOTKIT_PORT=str(self.ports[index]),
            BOTKIT_PUBLIC_URL=self.urls[index], BOTKIT_CALLBACK_SECRET=SECRET,
        )
        env.update(self.extra_env)
        env.update(extra or {})
        return env

    def _spawn(self, args: list[str], log: str, env: dict[str, str],
               wrap: list[str] | None = None) -> subprocess.Popen[bytes]:
        with (self.tmp / log).open("ab") as out:
            return subprocess.Popen([*(wrap or []), sys.executable, "run.py", *args], cwd=ROOT,
                                    env=env, stdout=out, stderr=subprocess.STDOUT)

    async def start_provider(self) -> None:
        self.provider = self._spawn(
            ["fake-provider", "--host", self.provider_host, "--port", str(self.provider_port),
             "--key", KEY], "provider.log", self._env())
        await wait_http(self.provider_url + "/sandbox/sent", self.provider)

    async def start_server(self, index: int = 0, **env: str) -> None:
        log = "server.log" if index == 0 else f"server{index}.log"
        server = self.servers[index] = self._spawn(
            ["serve", "--bots", str(HERE / "rel_bots"), "--templates",
             str(HERE / "rel_templates")],
            log, self._env(env, index), self.wraps[index])
        self.starts += 1
        await wait_http(self.urls[index] + "/healthz", server)

    async def start_servers(self, **env: str) -> None:
        """Every server, one after another (the first migrates the database)."""
        for index in range(len(self.servers)):
            await self.start_server(index, **env)

    def kill_server(self, index: int = 0) -> None:
        """SIGKILL: no cleanup, as a crash or an OOM kill."""
        server = self.servers[index]
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGKILL)
            self.kills += 1
        if server is not None:
            server.wait()

    def stop_server(self, timeout: float = 30.0, index: int = 0) -> float:
        """SIGTERM, and the seconds until the process exited."""
        server = self.servers[index]
        assert server is not None
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout)
        return time.monotonic() - started

    def server_died(self, index: int = 0) -> bool:
        server = self.servers[index]
        return server is not None and server.poll() is not None

    def close(self) -> None:
        for process in (*self.servers, self.provider):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    async def provider_log(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        async with session.get(self.provider_url + "/sandbox/sent") as response:
            return list((await response.json())["messages"])

    def server_log(self, index: int = 0) -> str:
        path = self.tmp / ("server.log" if index == 0 else f"server{index}.log")
        return path.read_text(errors="replace") if path.exists() else ""


async def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            if process.poll() is not None:
                raise RuntimeError(f"process for {url} exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer in {timeout}s")
            await asyncio.sleep(0.05)


@dataclass
class Conversation:
    """One scripted user: a phone, its answers, and what the driver saw."""

    phone: str
    answers: list[str]
    tokens: list[int] = field(default_factory=list)
    acked: set[int] = field(default_factory=set)
    seen: list[tuple[int, str]] = field(default_factory=list)  # (message_id, text) received
    latencies: list[float] = field(default_factory=list)
    done: bool = False


class Driver:
    """Plays scripted conversations over real HTTP, re-posting what was not acknowledged."""

    def __init__(
        self,
        procs: Processes,
        conversations: list[Conversation],
        *,
        concurrency: int = 50,
        copies: int = 1,
        step_timeout: float = 60.0,
        spread: bool = False,
    ) -> None:
        self.procs = procs
        # spread: each phone's consecutive callbacks go to different servers (and a callback
        # that was not acknowledged is posted again to the next one).
        self.spread = spread
        self.conversations = {c.phone: c for c in conversations}
        self.concurrency = concurrency
        self.copies = copies
        self.step_timeout = step_timeout
        self.posts = 0
        self.reposts = 0
        self.statuses: dict[int, int] = defaultdict(int)
        self._log_next = 0
        self._changed = asyncio.Event()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            watcher = asyncio.create_task(self._watch(session))
            slots = asyncio.Semaphore(self.concurrency)

            async def play(conv: Conversation) -> None:
                async with slots:
                    await self._play(session, conv)

            try:
                await asyncio.gather(*(play(c) for c in self.conversations.values()))
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    async def _play(self, session: aiohttp.ClientSession, conv: Conversation) -> None:
        base = 10**12 + int(conv.phone[-7:]) * 10
        for step, text in enumerate(["go", *conv.answers]):
            tracking = conv.seen[-1][0] if conv.seen else None
            token = base + step
            conv.tokens.append(token)
            sent_at = time.monotonic()
            await asyncio.gather(*(self._post(session, conv, token, text, tracking, step + n)
                                   for n in range(self.copies)))
            await self._wait_for(conv, step + 1)
            conv.latencies.append(time.monotonic() - sent_at)
        conv.done = True

    async def _post(self, session: aiohttp.ClientSession, conv: Conversation, token: int,
                    text: str, tracking: int | None, turn: int = 0) -> None:
        message: dict[str, Any] = {"text": text}
        if tracking is not None:
            message["tracking_data"] = f"tracking_id:{tracking}"
        body = {"message_token": token, "phone_number": conv.phone, "time": int(time.time()),
                "message": message}
        urls = self.procs.callback_urls if self.spread else [self.procs.callback_url]
        turn += int(conv.phone[-3:])  # phones start on different servers
        while True:
            self.posts += 1
            url = urls[turn % len(urls)]
            turn += 1
            try:
                async with session.post(url, json=body) as response:
                    self.statuses[response.status] += 1
                    if response.status == 200:
                        conv.acked.add(token)
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                self.statuses[0] += 1
            self.reposts += 1  # not acknowledged: the provider would post it again
            await asyncio.sleep(0.1)

    async def _wait_for(self, conv: Conversation, count: int) -> None:
        deadline = time.monotonic() + self.step_timeout
        while len({text for _, text in conv.seen}) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{conv.phone}: no reply #{count} after {self.step_timeout}s"
                                   f" (seen {conv.seen})")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    async def _watch(self, session: aiohttp.ClientSession) -> None:
        while True:
            try:
                async with session.get(self.procs.provider_url + "/sandbox/sent",
                                       params={"since": str(self._log_next)}) as response:
                    data = await response.json()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)
                continue
            for m in data["messages"]:
                conv = self.conversations.get(m["phone"])
                if conv is not None:
                    conv.seen.append((m["message_id"], m["text"]))
            if data["messages"]:
                self._log_next = data["next"]
                self._changed.set()
            await asyncio.sleep(0.02)


@dataclass
class Report:
    """What the invariant checker found; ``problems`` must be empty."""

    conversations: int = 0
    callbacks_acked: int = 0
    handled: int = 0
    replies_expected: int = 0
    replies_received: int = 0
    doubled: int = 0
    resent_after_crash: int = 0
    failed_sends: int = 0
    integrity: str = ""
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return json.dumps({k: v for k, v in self.__dict__.items() if k != "problems"}
                          | {"problems": len(self.problems)})


def read_tables(db: str | Path) -> dict[str, Any]:
    """What ``check`` needs of the bot's database (a SQLite file or a postgresql:// URL)."""
    queries = {
        "inbound": "SELECT message_token, status FROM inbound",
        "outbound": "SELECT id, phone, text, status, attempts, claimed_by, message_id"
                    " FROM outbound ORDER BY id",
        "conversations": "SELECT phone, status, state FROM conversations ORDER BY id",
        "pending": "SELECT count(*) AS n FROM inbound WHERE status = 'pending'",
    }
    if str(db).startswith("postgresql://"):
        import asyncpg

        async def fetch() -> dict[str, Any]:
            conn = await asyncpg.connect(str(db))
            try:
                tables = {k: [dict(r) for r in await conn.fetch(q)] for k, q in queries.items()}
            finally:
                await conn.close()
            return tables | {"integrity": "ok"}  # PostgreSQL keeps its own pages

        with ThreadPoolExecutor(1) as pool:  # the caller's event loop may be running
            return pool.submit(asyncio.run, fetch()).result()
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        tables = {k: [dict(r) for r in conn.execute(q)] for k, q in queries.items()}
        return tables | {"integrity": conn.execute("PRAGMA integrity_check").fetchone()[0]}
    finally:
        conn.close()


def check(procs: Processes, log: list[dict[str, Any]], convs: list[Conversation],
          *, expect_done: bool = True, retried_sends: int = 0) -> Report:
    """Check the invariants of the driver's log, the provider's log and the database.

    A message doubled at the provider must be explained by a re-claim (a crash mid-send) or,
    up to ``retried_sends`` in all, by the client's retry of a send whose answer was lost
    (a link cut mid-request: the provider has no idempotency key, PROVIDER_API.md).
    """
    report = Report(conversations=len(convs))
    unexplained: list[str] = []
    tables = read_tables(procs.db)
    report.integrity = tables["integrity"]
    if report.integrity != "ok":
        report.problems.append(f"integrity_check: {report.integrity}")
    inbound = {int(r["message_token"]): r for r in tables["inbound"]}
    by_phone: dict[str, list[str]] = defaultdict(list)
    for m in log:
        by_phone[m["phone"]].append(m["text"])
    outbound = defaultdict(list)
    for r in tables["outbound"]:
        outbound[r["phone"]].append(r)
    last_conversation = {r["phone"]: r for r in tables["conversations"]}
    report.failed_sends = sum(1 for rows in outbound.values() for r in rows
                              if r["status"] == "failed")
    for conv in convs:
        report.callbacks_acked += len(conv.acked)
        for token in conv.acked:
            row = inbound.get(token)
            if row is None:
                report.problems.append(f"{conv.phone}: acknowledged token {token} lost")
            elif row["status"] != "handled":
                report.problems.append(f"{conv.phone}: token {token} is {row['status']}")
            else:
                report.handled += 1
        expected = expected_texts(conv.answers)
        report.replies_expected += len(expected)
        rows = outbound[conv.phone]
        if [r["text"] for r in rows] != expected:  # one reply per turn: each turn once
            report.problems.append(f"{conv.phone}: outbox {[r['text'] for r in rows]}")
        got = by_phone[conv.phone]
        report.replies_received += len(got)
        collapsed = [t for i, t in enumerate(got) if i == 0 or got[i - 1] != t]
        if collapsed != expected[:len(collapsed)] or (expect_done and collapsed != expected):
            report.problems.append(f"{conv.phone}: provider got {got}")
        doubled = len(got) - len(collapsed)
        report.doubled += doubled
        # Each claim after the first is a send that a crash may have doubled: a row whose
        # send two kills in a row interrupted is resent twice.
        resent = sum(r["attempts"] - 1 for r in rows if r["attempts"] > 1)
        report.resent_after_crash += resent
        unexplained += [f"{conv.phone}: {doubled} doubled, only {resent} resent"
                        f" (outbox {[(r['id'], r['attempts'], r['claimed_by'], r['message_id']) for r in rows]},"
                        f" provider {[(m['message_id'], m['text'], round(m['received_at'], 3)) for m in log if m['phone'] == conv.phone]})"
                        ] * max(0, doubled - resent)
        if expect_done:
            row = last_conversation.get(conv.phone)
            want = dict(zip(("a1", "a2", "a3"), conv.answers, strict=True))
            if row is None or row["status"] != "done" or json.loads(row["state"]) != want:
                report.problems.append(f"{conv.phone}: conversation {row}")
    if len(unexplained) > retried_sends:
        report.problems += sorted(set(unexplained))
    pending = tables["pending"][0]["n"]
    if pending:
        report.problems.append(f"{pending} inbound messages still pending")
    return report


def make_conversations(count: int, *, prefix: str = "3806") -> list[Conversation]:
    """``count`` users with distinct phones and answers."""
    return [Conversation(f"{prefix}{n:08d}", [f"{a}-{n}" for a in ANSWERS]) for n in range(count)]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values``, nearest rank."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]
