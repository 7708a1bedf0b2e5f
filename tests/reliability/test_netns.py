"""Machines simulated with network namespaces: two bot servers, each in a namespace of its
own, reach PostgreSQL on a third "machine" (the root namespace) over veth links. One
server's link is cut mid-load (its packets dropped, no reset: as a machine that loses its
network) and restored: nothing is lost, the other server carries on and takes over the cut
server's work after the lease, and the cut one recovers by itself.

The namespaces, links and addresses are the test's own (``169.254.213.0/24``, link-local:
never routed off the machine); PostgreSQL itself listens on loopback, and the "database
machine" forwards its link address to it (``proxy.Proxy``). Needs root and ``ip netns``
(iproute2); skipped where they are missing, with the reason.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import secrets
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the harness next to this file
from harness import Driver, Processes, check, make_conversations
from proxy import Proxy
from test_scale_out import CONVERSATIONS, LEASE, settle


def _why_not() -> str | None:
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed: apt-get install -y iproute2"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"bkprobe{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


class Machines:
    """Namespaces ``a`` and ``b``, each linked to the root namespace by a veth pair."""

    def __init__(self) -> None:
        tag = secrets.token_hex(2)
        self.names = {m: f"bk{m}{tag}" for m in "ab"}
        self.links = {m: f"bk{m}{tag}" for m in "ab"}  # the root namespace's end
        # root end .1 / machine end .2 (a), .5 / .6 (b)
        self.root_ip = {"a": "169.254.213.1", "b": "169.254.213.5"}
        self.ip = {"a": "169.254.213.2", "b": "169.254.213.6"}

    def up(self) -> None:
        for m in "ab":
            ns, root_end, inner = self.names[m], self.links[m], f"{self.links[m]}i"
            for cmd in (
                ["ip", "netns", "add", ns],
                ["ip", "link", "add", root_end, "type", "veth", "peer", "name", inner],
                ["ip", "link", "set", inner, "netns", ns],
                ["ip", "addr", "add", f"{self.root_ip[m]}/30", "dev", root_end],
                ["ip", "link", "set", root_end, "up"],
                ["ip", "-n", ns, "addr", "add", f"{self.ip[m]}/30", "dev", inner],
                ["ip", "-n", ns, "link", "set", inner, "up"],
                ["ip", "-n", ns, "link", "set", "lo", "up"],
            ):
                subprocess.run(cmd, check=True, capture_output=True)

    def cut(self, m: str) -> None:
        subprocess.run(["ip", "link", "set", self.links[m], "down"], check=True)

    def restore(self, m: str) -> None:
        subprocess.run(["ip", "link", "set", self.links[m], "up"], check=True)

    def down(self) -> None:
        for m in "ab":
            subprocess.run(["ip", "link", "del", self.links[m]], capture_output=True)
            subprocess.run(["ip", "netns", "del", self.names[m]], capture_output=True)


@pytest.fixture
def machines():
    why = _why_not()
    if why is not None:
        pytest.skip(why)
    made = Machines()
    try:
        made.up()
        yield made
    finally:
        made.down()


async def test_a_machine_cut_off_mid_load_loses_nothing_and_the_other_carries_on(
        tmp_path, postgres, machines):
    db = urlsplit(str(postgres.db))
    proxies = {m: Proxy(db.hostname or "127.0.0.1", db.port or 5432,
                        listen=machines.root_ip[m]) for m in "ab"}
    for proxy in proxies.values():
        await proxy.start()
    procs = Processes(tmp_path, db=postgres.db, servers=2,
                      hosts=[machines.ip["a"], machines.ip["b"]],
                      env={"BOTKIT_LEASE": LEASE})
    procs.provider_host = "0.0.0.0"
    for n, m in enumerate("ab"):
        procs.wraps[n] = ["ip", "netns", "exec", machines.names[m]]
        procs.api_urls[n] = f"http://{machines.root_ip[m]}:{procs.provider_port}"
    dsn = {m: db._replace(netloc=f"{db.username}@{machines.root_ip[m]}:{proxies[m].port}"
                          ).geturl() for m in "ab"}
    try:
        await procs.start_provider()
        await procs.start_server(0, BOTKIT_DB=dsn["a"])
        await procs.start_server(1, BOTKIT_DB=dsn["b"])
        convs = make_conversations(3 * CONVERSATIONS)
        # A turn under way on a when its link went is taken over by b after the lease and
        # once PostgreSQL dropped a's sessions (about 11 s): well within a minute a step.
        driver = Driver(procs, convs, concurrency=40, spread=True, step_timeout=60.0)
        play = asyncio.create_task(driver.run())
        async with aiohttp.ClientSession() as session:
            await asyncio.sleep(1.5)
            # A turn in progress on a when its link goes: a "slow" answer takes 0.3 s.
            await post(session, procs.callback_urls[0], 1, "go")
            asked = await wait_sent(procs, session, PHONE, 1)
            await post(session, procs.callback_urls[0], 2, "slow", asked=asked)
            machines.cut("a")
            cut_at = asyncio.get_running_loop().time()
            # b answers it, from a's message, while a is still cut off: once a's heartbeat
            # is older than the lease, and PostgreSQL has dropped a's sessions that held the
            # phone's lock or its rows (keepalives, tcp_user_timeout and an idle transaction's
            # timeout: about 11 s), b's statements that waited on them tried again.
            await wait_sent(procs, session, PHONE, 2, within=20.0)
            taken_after = asyncio.get_running_loop().time() - cut_at
            await asyncio.sleep(max(0.0, 4 * float(LEASE) - taken_after))
        machines.restore("a")
        try:
            await asyncio.wait_for(play, 240)
        except TimeoutError as exc:  # which phone, and what each server said of it
            phone = str(exc).split(":")[0]
            said = "\n".join(f"--- {n}: " + "\n".join(
                line for line in procs.server_log(n).splitlines() if phone in line)
                for n in (0, 1))
            raise AssertionError(f"{exc}\n{said}") from None
        async with aiohttp.ClientSession() as session:
            for _ in range(300):  # a reconnects by itself
                try:
                    async with session.get(procs.urls[0] + "/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            assert r.status == 200, procs.server_log(0)[-2000:]
            log = await settle(procs, session, 40.0)
        # a's link to the provider was cut too: a send whose answer was lost is retried
        # within its request, and the provider may have taken both (no idempotency key).
        retried = sum(procs.server_log(n).count("POST /send-viber failed") for n in (0, 1))
        report = check(procs, log, convs, retried_sends=retried)
        print(f"netns: machine a cut off mid-load, its turn taken over by b in"
              f" {taken_after:.1f} s:",
              report.summary(), f"callbacks refused or unanswered: {driver.reposts},"
              f" sends retried within their request: {retried}")
        assert report.problems == []
        assert report.handled == 4 * len(convs)
        assert report.doubled <= report.resent_after_crash + retried
        assert driver.reposts > 0  # a's callbacks failed and went to b
        assert re.search(r"resuming \d+ messages accepted but not handled by processes",
                         procs.server_log(1))  # b took the cut machine's work over
    finally:
        procs.close()
        for proxy in proxies.values():
            await proxy.close()
        collect_cut_sockets()


def collect_cut_sockets() -> None:
    """Collect, here, the client sockets whose connect the cut link left hanging until the
    driver's timeout cancelled it (aiohttp does not close those): otherwise their
    ResourceWarning surfaces in whichever later test the garbage collector runs in."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


PHONE = "380699999999"


async def post(session: aiohttp.ClientSession, url: str, n: int, text: str,
               asked: int | None = None) -> None:
    """Post the n-th message of ``PHONE`` to one server, answering bot message ``asked``."""
    message: dict[str, object] = {"text": text}
    if asked is not None:
        message["tracking_data"] = f"tracking_id:{asked}"
    body = {"message_token": 8 * 10**12 + n, "phone_number": PHONE, "time": 1,
            "message": message}
    async with session.post(url, json=body) as r:
        assert r.status == 200, await r.text()


async def wait_sent(procs: Processes, session: aiohttp.ClientSession, phone: str, count: int,
                    within: float = 10.0) -> int:
    """Wait until the provider got ``count`` messages for ``phone``; the last one's id."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        mine = [m for m in await procs.provider_log(session) if m["phone"] == phone]
        if len(mine) >= count:
            return int(mine[-1]["message_id"])
        assert asyncio.get_running_loop().time() < deadline, (
            f"{phone}: {len(mine)} of {count} messages after {within:.0f} s")
        await asyncio.sleep(0.1)
