"""Crashes: SIGKILL under load, each crash point, SIGTERM.

CI scale by default; RELIABILITY_SCALE_CRASH=2000 runs the issue's full count (see full.py).
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
from harness import (  # noqa: E402
    Driver,
    Processes,
    check,
    make_conversations,
    percentile,
    wait_http,
)

CONVERSATIONS = int(os.environ.get("RELIABILITY_SCALE_CRASH", "500"))


@pytest.fixture
async def procs(tmp_path):
    procs = Processes(tmp_path)
    await procs.start_provider()
    yield procs
    procs.close()


async def finish(procs: Processes, convs) -> dict:
    if procs.server_died():
        await procs.start_server()
    assert procs.server is not None
    await wait_http(procs.url + "/healthz", procs.server)  # a restart may still be under way
    async with aiohttp.ClientSession() as session:
        for _ in range(200):  # let the last sends and statuses land
            async with session.get(procs.url + "/healthz") as r:
                health = await r.json()
            if not health["outbox"]["queued"] and not health["outbox"]["sending"]:
                break
            await asyncio.sleep(0.05)
        return {"log": await procs.provider_log(session), "health": health}


async def test_sigkill_every_few_seconds_loses_and_doubles_nothing(procs, record_property):
    await procs.start_server()
    convs = make_conversations(CONVERSATIONS)
    driver = Driver(procs, convs, concurrency=40)
    rng = random.Random(7)

    total = 4 * len(convs)

    async def killer() -> None:
        # Every 0.3-1.0 s, and at least at every sixth of the callbacks, so that a fast run
        # still sees several kills.
        step, threshold = total // 6, total // 6
        while True:
            due = asyncio.get_running_loop().time() + rng.uniform(0.3, 1.0)
            while asyncio.get_running_loop().time() < due:
                if sum(len(c.acked) for c in convs) >= threshold:
                    threshold += step
                    break
                await asyncio.sleep(0.02)
            procs.kill_server()
            await procs.start_server()

    kills = asyncio.create_task(killer())
    try:
        await asyncio.wait_for(driver.run(), 240)
    finally:
        kills.cancel()
        await asyncio.gather(kills, return_exceptions=True)
    final = await finish(procs, convs)
    report = check(procs, final["log"], convs)
    latencies = [x for c in convs for x in c.latencies]
    print(f"\nSIGKILL x{procs.kills}: {report.summary()}, reposts {driver.reposts},"
          f" p95 reply {percentile(latencies, 95):.2f}s")
    record_property("report", report.summary())
    assert procs.kills >= 3, "the run was too short to kill the server a few times"
    assert report.problems == []
    assert report.handled == report.callbacks_acked == 4 * len(convs)


@pytest.mark.parametrize("point", ["after_inbound_stored", "after_turn_commit",
                                   "after_send_request", "after_send_recorded"])
async def test_each_crash_point_once(procs, point):
    await procs.start_server(BOTKIT_CRASH_AT=f"{point}:2")
    convs = make_conversations(1, prefix=f"3807{len(point):02d}")
    driver = Driver(procs, convs, step_timeout=30)
    run = asyncio.create_task(driver.run())
    for _ in range(400):
        if procs.server_died():
            break
        await asyncio.sleep(0.025)
    assert procs.server_died(), f"{point} was never reached"
    await procs.start_server()  # no crash point this time
    await asyncio.wait_for(run, 60)
    final = await finish(procs, convs)
    report = check(procs, final["log"], convs)
    assert report.problems == []
    if point == "after_send_request":  # the provider had it; the restart sends it again
        assert report.doubled == 1 and report.resent_after_crash == 1
    else:
        assert report.doubled == 0


async def test_sigterm_under_load_stops_in_bounded_time_and_resumes(procs, record_property):
    await procs.start_server()
    convs = make_conversations(60, prefix="3808")
    driver = Driver(procs, convs, concurrency=60)
    run = asyncio.create_task(driver.run())
    await asyncio.sleep(1.0)
    seconds = await asyncio.to_thread(procs.stop_server, 30.0)
    assert seconds < 20, f"graceful stop took {seconds:.1f}s"
    assert "Traceback" not in procs.server_log()
    await procs.start_server()
    await asyncio.wait_for(run, 120)
    final = await finish(procs, convs)
    report = check(procs, final["log"], convs)
    print(f"\nSIGTERM stop in {seconds:.2f}s: {report.summary()}")
    record_property("sigterm_seconds", seconds)
    assert report.problems == [] and report.doubled == 0
