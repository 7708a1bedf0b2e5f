"""Scale-out: several bot server processes on one PostgreSQL database keep every guarantee.

Real processes on loopback: the fake provider, and 2-3 ``run.py serve`` on one PostgreSQL
schema of the test's own. The driver spreads each phone's callbacks across the servers, so
consecutive messages of one conversation reach different processes.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from pathlib import Path

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the harness next to this file
from harness import (
    Driver,
    Processes,
    check,
    make_conversations,
)

CONVERSATIONS = int(os.environ.get("RELIABILITY_SCALE_OUT", "150"))
LEASE = "3"  # seconds: take-overs within a test's patience


@pytest.fixture
async def cluster(tmp_path, postgres):
    procs = Processes(tmp_path, db=postgres.db, servers=3, env={"BOTKIT_LEASE": LEASE})
    await procs.start_provider()
    yield procs
    procs.close()


async def settle(procs: Processes, session: aiohttp.ClientSession, seconds: float = 20.0):
    """Wait until no server has messages queued or being sent; the provider's log."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        busy = 0
        for index, url in enumerate(procs.urls):
            if procs.server_died(index) or procs.servers[index] is None:
                continue
            async with session.get(url + "/healthz") as r:
                health = await r.json()
            busy += health["outbox"]["queued"] + health["outbox"]["sending"]
            busy += health["inbound_pending"]
        if not busy:
            break
        await asyncio.sleep(0.1)
    return await procs.provider_log(session)


async def test_conversations_spread_over_three_processes_keep_order_and_once(cluster):
    await cluster.start_servers()
    convs = make_conversations(CONVERSATIONS)
    driver = Driver(cluster, convs, concurrency=40, spread=True)
    await asyncio.wait_for(driver.run(), 120)
    async with aiohttp.ClientSession() as session:
        log = await settle(cluster, session)
    report = check(cluster, log, convs)
    print("scale-out, no faults:", report.summary())
    assert report.problems == []
    assert report.doubled == 0 and report.resent_after_crash == 0
    assert report.handled == 4 * len(convs)


async def test_each_callback_posted_to_two_processes_at_once_is_handled_once(cluster):
    await cluster.start_servers()
    convs = make_conversations(60)
    driver = Driver(cluster, convs, concurrency=30, copies=2, spread=True)
    await asyncio.wait_for(driver.run(), 120)
    async with aiohttp.ClientSession() as session:
        log = await settle(cluster, session)
    report = check(cluster, log, convs)
    print("scale-out, every callback twice at once:", report.summary())
    assert report.problems == []
    assert report.doubled == 0 and report.handled == 4 * len(convs)


async def test_sigkills_lose_nothing_keep_order_fire_timers_once_and_hold_the_rate(
        tmp_path, postgres):
    """SIGKILL of a random process every second or so, under the driver's conversations
    spread over three processes, with timers due meanwhile and the account's rate shared."""
    rate = 100
    procs = Processes(tmp_path, db=postgres.db, servers=3,
                      env={"BOTKIT_LEASE": LEASE, "BOTKIT_SEND_RATE": str(rate)})
    try:
        await procs.start_provider()
        await procs.start_servers()
        convs = make_conversations(3 * CONVERSATIONS)
        driver = Driver(procs, convs, concurrency=40, spread=True)
        rng = random.Random(16)
        play = asyncio.create_task(driver.run())
        nudged = [f"38066{n:07d}" for n in range(40)]  # a reminder and a timeout each
        async with aiohttp.ClientSession() as session:
            for n, phone in enumerate(nudged):
                body = {"message_token": 6 * 10**12 + n, "phone_number": phone, "time": 1,
                        "message": {"text": "nudge"}}
                for attempt in range(3 * len(procs.callback_urls)):  # a killed one refuses
                    try:
                        url = procs.callback_urls[(n + attempt) % len(procs.callback_urls)]
                        async with session.post(url, json=body) as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.2)
            kills = 0
            while not play.done() and kills < 6:
                await asyncio.sleep(rng.uniform(0.8, 1.6))
                victim = rng.randrange(len(procs.servers))
                procs.kill_server(victim)
                kills += 1
                await asyncio.sleep(0.3)
                await procs.start_server(victim)
            await asyncio.wait_for(play, 180)
            # A timer read by a process killed before it fired waits out its lease (60 s).
            for _ in range(90):
                fired = await cluster_rows(procs, "SELECT count(*) FROM timers"
                                                  " WHERE status = 'pending'"
                                                  " AND phone LIKE '38066%'")
                if fired == [(0,)]:
                    break
                await asyncio.sleep(1.0)
            log = await settle(procs, session)
        report = check(procs, log, convs)
        texts: dict[str, list[str]] = {p: [] for p in nudged}
        for m in log:
            if m["phone"] in texts:
                texts[m["phone"]].append(m["text"])
        resent = (await cluster_rows(
            procs, "SELECT coalesce(sum(attempts - 1), 0) FROM outbound"
                   " WHERE phone LIKE '38066%' AND attempts > 1"))[0][0]
        timers = await cluster_rows(procs, "SELECT phone, kind, status, detail FROM timers"
                                           " WHERE phone LIKE '38066%'")
        reminded = {p for p, kind, status, _ in timers if (kind, status) == ("remind", "fired")}
        doubled = sum(len(t) - (3 if p in reminded else 2) for p, t in texts.items())
        times = sorted(m["received_at"] for m in log)
        busiest = max(sum(1 for t in times[i:i + rate + 1] if t < start + 1.0)
                      for i, start in enumerate(times))
        print(f"scale-out, {kills} SIGKILLs:", report.summary(),
              f"timers: {len(nudged)} conversations, {len(nudged) - len(reminded)} reminders"
              f" superseded or cancelled, their messages doubled {doubled}"
              f" (resent {resent}), at most {busiest} sends in any second (rate {rate})")
        assert kills >= 3, "the conversations ended before the kills began: raise the count"
        assert report.problems == []
        assert report.handled == 4 * len(convs)
        assert report.doubled <= report.resent_after_crash
        # Each timer fired once, or not at all when a later one of its conversation was due
        # by the time a process swept it (a reminder whose sweeper was killed, taken over
        # after the lease when the timeout was due too: superseded, as after any outage; or
        # cancelled, when the timeout fired first and closed the conversation).
        # Its message reached the user once, in order, but for a send in flight at a kill
        # (counted in the row's attempts).
        assert all(status in ("fired", "cancelled") or detail == "superseded by a later timer"
                   for _, kind, status, detail in timers if kind == "remind"), [
            t for t in timers if t[1] == "remind" and t[2] != "fired"]
        for phone, got in texts.items():
            once = [t for n, t in enumerate(got) if t not in got[:n]]
            assert once == ["Still there?", *(["Reminder: still there?"] if phone in reminded
                                              else []), "Closed."], (phone, got)
        assert doubled <= resent
        assert sorted((kind, status) for _, kind, status, _ in timers if kind != "remind") == [
            ("expire", "cancelled")] * 40 + [("timeout", "fired")] * 40
        assert busiest <= rate  # the account's rate, across the processes and their restarts
    finally:
        procs.close()


async def test_timers_fire_once_whichever_processes_sweep(cluster):
    await cluster.start_servers()
    phones = [f"38067{n:07d}" for n in range(40)]
    async with aiohttp.ClientSession() as session:
        for n, phone in enumerate(phones):
            body = {"message_token": 5 * 10**12 + n, "phone_number": phone, "time": 1,
                    "message": {"text": "nudge"}}
            async with session.post(cluster.callback_urls[n % 3], json=body) as r:
                assert r.status == 200
        await asyncio.sleep(4.0)  # the reminder is due after 1 s, the timeout after 2
        log = await settle(cluster, session)
    got: dict[str, list[str]] = {p: [] for p in phones}
    for m in log:
        got[m["phone"]].append(m["text"])
    assert all(texts == ["Still there?", "Reminder: still there?", "Closed."]
               for texts in got.values()), got
    fired = await cluster_rows(cluster, "SELECT kind, status, count(*) FROM timers"
                                        " GROUP BY kind, status ORDER BY kind, status")
    # Each fired once; the expiry was cancelled when the timeout closed the conversation.
    assert fired == [("expire", "cancelled", 40), ("remind", "fired", 40),
                     ("timeout", "fired", 40)]


async def cluster_rows(procs: Processes, sql: str, *args):
    import asyncpg

    conn = await asyncpg.connect(str(procs.db))
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def test_a_live_neighbour_s_work_is_left_to_it_until_its_heartbeat_stops(cluster):
    """Another machine's process accepted a message and claimed a send, then went silent:
    nothing is taken from it while it beats, everything after the lease."""
    cluster.servers = cluster.servers[:2]
    await cluster.start_servers()
    other = "elsewhere/4242/abcd"
    now = "extract(epoch FROM clock_timestamp())"
    await cluster_rows(cluster, f"INSERT INTO processes VALUES ($1, {now}, {now})", other)
    await cluster_rows(cluster, "INSERT INTO inbound (message_token, phone, time, text,"
                                " received_at, received_by) VALUES ('77', '380671111111', 1,"
                                " 'go', 1, $1)", other)
    await cluster_rows(cluster, "INSERT INTO outbound (phone, template, text, message_type,"
                                " payload, status, attempts, claimed_by, claimed_at, created_at)"
                                " VALUES ('380672222222', 't', 'claimed elsewhere', 206, $1,"
                                " 'sending', 1, $2, 1, 1)",
                       '{"destination_addr": "380672222222", "text": "claimed elsewhere",'
                       ' "message_type": 206, "source_addr": "Chain", "source_type": 2}',
                       other + "/s1")
    for _ in range(12):  # 4 leases of 3 s... beating all along: left alone
        await cluster_rows(cluster, f"UPDATE processes SET seen_at = {now} WHERE name = $1",
                           other)
        await asyncio.sleep(0.33)
    assert await cluster_rows(cluster, "SELECT status FROM inbound") == [("pending",)]
    assert await cluster_rows(cluster, "SELECT status FROM outbound") == [("sending",)]
    async with aiohttp.ClientSession() as session:  # its beat stops: taken over
        for _ in range(100):
            sent = {m["phone"]: m["text"] for m in await cluster.provider_log(session)}
            if len(sent) == 2:
                break
            await asyncio.sleep(0.1)
    assert sent == {"380671111111": "Q1?", "380672222222": "claimed elsewhere"}, (
        await cluster_rows(cluster, "SELECT status, error, attempts FROM outbound"),
        cluster.server_log(0)[-3000:])
    assert await cluster_rows(cluster, "SELECT status FROM inbound") == [("handled",)]


async def test_a_process_cut_off_from_the_database_answers_503_and_recovers(tmp_path, postgres):
    """One server reaches PostgreSQL through a link the test cuts mid-load and restores."""
    from urllib.parse import urlsplit

    from proxy import Proxy

    url = urlsplit(str(postgres.db))
    proxy = Proxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    through = url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl()
    procs = Processes(tmp_path, db=postgres.db, servers=2, env={"BOTKIT_LEASE": LEASE})
    try:
        await procs.start_provider()
        await procs.start_server(0, BOTKIT_DB=through)
        await procs.start_server(1)
        convs = make_conversations(3 * CONVERSATIONS)
        driver = Driver(procs, convs, concurrency=40, spread=True)
        play = asyncio.create_task(driver.run())
        async with aiohttp.ClientSession() as session:
            await asyncio.sleep(1.0)
            await proxy.cut()
            health, callback = await cut_off_answers(procs, session)
            assert health[0] == 503 and "database" in health[1]["database"], health
            assert callback[0] == 503 and "database is unavailable" in callback[1]["error"]
            await asyncio.sleep(2 * float(LEASE))  # the other server takes its work over
            await proxy.restore()
            for _ in range(100):  # it reconnects by itself
                async with session.get(procs.urls[0] + "/healthz") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.1)
            assert r.status == 200
            await asyncio.wait_for(play, 180)
            log = await settle(procs, session)
        report = check(procs, log, convs)
        print("scale-out, one database link cut for", 2 * float(LEASE), "s:", report.summary())
        assert report.problems == []
        assert report.handled == 4 * len(convs)
        assert report.doubled <= report.resent_after_crash
        assert driver.statuses[503] > 0  # the cut-off server refused, the driver posted again
    finally:
        procs.close()
        await proxy.close()


async def cut_off_answers(procs: Processes, session: aiohttp.ClientSession):
    """What the cut-off server answers to /healthz and to a callback, once it noticed."""
    body = {"message_token": 9 * 10**12, "phone_number": "380670000009", "time": 1,
            "message": {"text": "go"}}
    for _ in range(100):
        async with session.get(procs.urls[0] + "/healthz") as r:
            health = (r.status, await r.json())
        if r.status == 503:
            break
        await asyncio.sleep(0.1)
    async with session.post(procs.callback_urls[0], json=body) as r:
        callback = (r.status, await r.json())
    return health, callback


async def test_the_send_rate_is_the_account_s_across_processes(tmp_path, postgres):
    """BOTKIT_SEND_RATE=50 with three processes: at most 50 sends start in any second."""
    rate, phones = 50, 250
    procs = Processes(tmp_path, db=postgres.db, servers=3,
                      env={"BOTKIT_LEASE": LEASE, "BOTKIT_SEND_RATE": str(rate)})
    try:
        await procs.start_provider()
        await procs.start_servers()
        async with aiohttp.ClientSession() as session:
            async def post(n: int) -> None:
                body = {"message_token": 7 * 10**12 + n, "phone_number": f"38068{n:07d}",
                        "time": 1, "message": {"text": "go"}}
                async with session.post(procs.callback_urls[n % 3], json=body) as r:
                    assert r.status == 200

            await asyncio.gather(*(post(n) for n in range(phones)))
            for _ in range(200):
                log = await procs.provider_log(session)
                if len(log) >= phones:
                    break
                await asyncio.sleep(0.1)
        times = sorted(m["received_at"] for m in log)
        busiest = max(sum(1 for t in times[i:] if t < start + 1.0)
                      for i, start in enumerate(times))
        span = times[-1] - times[0]
        print(f"scale-out, rate {rate}/s over 3 processes: {len(times)} sends in {span:.2f} s,"
              f" at most {busiest} in any second, {len(times) / span:.1f}/s overall")
        assert len(times) == phones
        assert busiest <= rate
        assert span >= (phones - rate) / rate - 0.1  # and not slower than it must be:
        assert len(times) / span > 0.7 * rate
    finally:
        procs.close()
