"""The outbox sender against provider faults: retries, failures, the 401/402 pause."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from demo import TEMPLATES, demo, echo

from botkit import Flow, Turn
from botkit.sandbox import Fault

PHONE = "380500000004"


async def bot_with_faults(bot_harness, *faults, **kw):
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES, **kw)
    bot.provider.faults.script(*faults)
    return bot


async def test_send_concurrency_bounds_the_requests_in_flight(bot_harness):
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES, send_concurrency=3)
    bot.provider.faults.latency = 0.2  # each answer takes a while: sends pile up
    sender = bot.runtime.sender
    phones = [f"38050000{n:04d}" for n in range(9)]
    starting = asyncio.gather(*(bot.runtime.engine.start("demo", p) for p in phones))
    most = 0
    while len(bot.provider.sent) < len(phones):
        most = max(most, sender.status()["in_flight"])
        await asyncio.sleep(0.01)
    await starting
    assert most == 3  # the slots were all used, and never more
    assert sorted(m.phone for m in bot.provider.sent) == phones


async def test_a_rate_limit_claims_only_what_starts_soon(bot_harness):
    # At 20 a second, sends start 50 ms apart: only the next one or two are claimed ahead of
    # their start (`sending`), plus any still waiting for the provider's answer; the rest
    # stay queued, so a crash leaves little in doubt. (Claiming all 8 at once was the bug.)
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES, send_rate=20)
    phones = [f"38050001{n:04d}" for n in range(8)]
    starting = asyncio.gather(*(bot.runtime.engine.start("demo", p) for p in phones))
    most = 0
    while len(bot.provider.sent) < len(phones):
        sending = bot.db().execute(
            "SELECT count(*) FROM outbound WHERE status = 'sending'").fetchone()[0]
        most = max(most, sending)
        await asyncio.sleep(0.005)
    await starting
    assert 1 <= most <= 4
    times = sorted(m.received_at for m in bot.provider.sent)
    assert times[-1] - times[0] >= 7 / 20 - 0.02  # the rate is still kept


async def test_a_stalled_loop_does_not_bunch_more_than_the_rate_into_a_second(bot_harness):
    # Sends are planned 1/rate apart when claimed. If the event loop stalls (a slow handler,
    # a long GC), the ones planned during the stall would all start when it ends, and with
    # those planned after it, one second would hold more than `rate` starts.
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES, send_rate=50)
    loop, sender, starts = asyncio.get_running_loop(), bot.runtime.sender, []
    send = sender.client.send_checked

    async def timed(payload):
        starts.append(loop.time())
        return await send(payload)

    sender.client.send_checked = timed  # type: ignore[method-assign]
    phones = [f"38050002{n:04d}" for n in range(70)]
    starting = asyncio.gather(*(bot.runtime.engine.start("demo", p) for p in phones))
    while len(starts) < 5:
        await asyncio.sleep(0.005)
    time.sleep(0.3)  # the loop stalls: 15 sends' turns pass
    while len(bot.provider.sent) < len(phones):
        await asyncio.sleep(0.01)
    await starting
    # Starts are planned 1/rate apart; the times here are when each coroutine ran, which a
    # loaded machine delays by a few milliseconds, one more than another: a window a little
    # under a second keeps that jitter from counting as a 51st start.
    most = max(sum(1 for t in starts if s <= t < s + 0.98) for s in starts)
    assert 45 <= most <= 50
    assert sorted(m.phone for m in bot.provider.sent) == phones


async def test_429_and_500_are_retried_until_sent(bot_harness):
    bot = await bot_with_faults(bot_harness, Fault.status(429), Fault.status(500))
    chat = bot.chat(PHONE)
    [q1] = await chat.start("demo")
    assert q1.text == "Question one?"
    assert bot.db().execute("SELECT status, attempts FROM outbound").fetchone() == ("sent", 1)


async def test_error_body_with_http_200_is_not_recorded_as_sent(bot_harness):
    bot = await bot_with_faults(bot_harness, Fault.error_body_200(code=2))
    chat = bot.chat(PHONE)
    await chat.start("demo")
    [sent] = bot.provider.sent
    row = bot.db().execute("SELECT status, message_id FROM outbound").fetchone()
    assert row == ("sent", sent.message_id)  # the error body was retried, then accepted


async def test_invalid_parameter_fails_visibly_without_retry(bot_harness, caplog):
    body = {"name": "Invalid Parameter: destination_addr", "message": "unknown number",
            "code": 1, "status": 400}
    bot = await bot_with_faults(bot_harness, Fault.status(400, body=body),
                                Fault.status(500))  # a retry would hit this 500
    chat = bot.chat(PHONE)
    assert await chat.start("demo") == []
    status, error = bot.db().execute("SELECT status, error FROM outbound").fetchone()
    assert status == "failed"
    assert "Invalid Parameter: destination_addr" in error and "HTTP 400" in error
    assert "outbox 1 to 380500000004 failed" in caplog.text
    assert bot.provider.faults.pending == 1  # the 500 was never asked for


async def test_retries_exhausted_end_in_failed_state_with_reason(bot_harness):
    bot = await bot_with_faults(bot_harness, *[Fault.status(503)] * 3)  # policy: 3 attempts
    bot.runtime.sender.retry_rounds = 0  # no later rounds either
    chat = bot.chat(PHONE)
    assert await chat.start("demo") == []
    status, error = bot.db().execute("SELECT status, error FROM outbound").fetchone()
    assert status == "failed" and "HTTP 503" in error


async def test_an_outage_longer_than_the_client_retries_is_retried_later(bot_harness, caplog):
    bot = await bot_with_faults(bot_harness, *[Fault.status(503)] * 3)  # one client round
    bot.runtime.sender.round_delay = 0.05
    chat = bot.chat(PHONE)
    [q1] = await chat.start("demo")  # the second round gets through
    assert q1.text == "Question one?"
    assert bot.db().execute("SELECT status, attempts FROM outbound").fetchone() == ("sent", 2)
    assert "trying again in 0s (round 1 of 6)" in caplog.text


async def test_402_pauses_sending_keeps_the_queue_and_resumes(bot_harness, caplog):
    caplog.set_level(logging.INFO)
    bot = await bot_with_faults(bot_harness, Fault.status(402))
    chat = bot.chat(PHONE)
    engine, sender = bot.runtime.engine, bot.runtime.sender
    sender.poll_interval = 0.05
    await engine.start("demo", PHONE)
    for _ in range(300):
        if sender.paused:
            break
        await asyncio.sleep(0.01)
    assert sender.paused and "balance is empty" in sender.paused
    assert "SENDING PAUSED" in caplog.text
    async with bot._session.get(bot.url + "/healthz") as response:
        health = await response.json()
    assert health["status"] == "degraded" and health["sending"]["state"] == "paused"
    assert health["outbox"]["queued"] == 1
    assert bot.provider.sent == []
    jobs = bot.runtime.store.thread.jobs
    await asyncio.sleep(0.3)  # paused: it looks for a resume once a poll, it does not spin
    assert bot.runtime.store.thread.jobs - jobs <= 10
    sender.resume()  # the operator topped up
    await bot.settle()
    assert [m.request.text for m in bot.provider.messages_to(PHONE)] == ["Question one?"]
    assert sender.paused is None and "sending resumed" in caplog.text
    # The claim made while paused did not use up one of the message's attempts.
    assert bot.db().execute("SELECT attempts FROM outbound").fetchone() == (1,)
    assert chat.conversation().step == "one"


async def test_401_pauses_sending_too(bot_harness):
    bot = await bot_with_faults(bot_harness, Fault.status(401))
    await bot.runtime.engine.start("demo", PHONE)
    for _ in range(300):
        if bot.runtime.sender.paused:
            break
        await asyncio.sleep(0.01)
    assert "access key was refused" in bot.runtime.sender.paused


async def test_messages_of_one_phone_leave_in_order(bot_harness):
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    bot.provider.faults.latency = 0.01
    chat = bot.chat(PHONE)
    await chat.send("echo")
    for n in range(8):
        await bot.post({"message_token": 1000 + n, "phone_number": PHONE,
                        "time": 1_800_000_000, "message": {"text": f"m{n}"}})
    await bot.settle()
    texts = [m.request.text for m in bot.provider.messages_to(PHONE)]
    assert texts == ["You said echo", *[f"You said m{n}" for n in range(8)]]


def test_only_claims_of_senders_that_are_gone_are_taken_over():
    import os
    import subprocess
    import sys
    import time

    from botkit.process import process_name
    from botkit.runtime.sender import _LIVE, HOST, LEASE, abandoned

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert abandoned(None, 0.0)  # no claimer recorded
    assert abandoned(f"{HOST}/{dead}/x", time.time())  # its process has exited
    assert not abandoned(f"{HOST}/1/x", time.time())  # a live process (init) keeps its rows
    mine = f"{process_name()}/live"
    _LIVE.add(mine)
    try:
        assert not abandoned(mine, time.time())  # a running sender of this process
        assert abandoned(f"{process_name()}/stopped", time.time())  # a stopped one
        # An earlier process that had this pid (a container's pid 1 after a restart):
        assert abandoned(f"{HOST}/{os.getpid()}/before/live", time.time())
    finally:
        _LIVE.discard(mine)
    # A claim named before names carried the boot and pid namespace: by its pid, as before.
    bare = HOST.split("~")[0]
    assert abandoned(f"{bare}/{dead}/x", time.time())
    assert not abandoned(f"{bare}/1/x", time.time())
    assert not abandoned("elsewhere/12/x", time.time())  # another host: only after the lease
    assert abandoned("elsewhere/12/x", time.time() - LEASE - 1)
    # With heartbeats (a shared store), another host's claim is gone once its beat stopped,
    # however young the claim, and kept while it beats, however old.
    assert abandoned("elsewhere/12/x/s", time.time(), live={"elsewhere/13"})
    assert not abandoned("elsewhere/12/x/s", time.time() - LEASE - 1, live={"elsewhere/12"})


chatty = Flow("chatty", keywords=["chatty"], sender="Demo")


@chatty.step("a", prompt="demo/ask_one.txt")
async def chatty_a(turn: Turn) -> None:
    turn.say("demo/said.txt", text=turn.text)  # two messages: the second waits for the first
    turn.ask("a")


async def test_a_turn_hands_its_messages_to_the_sender_without_waiting_for_a_poll(bot_harness):
    bot = await bot_harness(flows=[chatty], templates=TEMPLATES)
    sender, store = bot.runtime.sender, bot.runtime.store
    sender.poll_interval = 3600.0  # a message left for the poll would not go out in the test
    sender.wake()
    await asyncio.sleep(0.05)
    claims = 0
    claim_outbox = store.claim_outbox

    async def counted(*args, **kwargs):
        nonlocal claims
        claims += 1
        return await claim_outbox(*args, **kwargs)

    store.claim_outbox = counted
    chat = bot.chat(PHONE)
    assert [m.text for m in await chat.send("chatty")] == ["Question one?"]
    assert claims == 0  # the reply was claimed in its turn's commit
    replies = await chat.answer("hi")
    assert [m.text for m in replies] == ["You said hi", "Question one?"]
    assert claims == 1  # the second was claimed when the first had gone, not at the poll
    rows = bot.db().execute("SELECT status, attempts FROM outbound ORDER BY id").fetchall()
    assert rows == [("sent", 1)] * 3


def test_a_killed_process_not_yet_collected_counts_as_gone() -> None:
    import os
    import signal
    import subprocess
    import sys

    from botkit.runtime.sender import HOST, abandoned

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not abandoned(f"{HOST}/{child.pid}/x", time.time())  # alive: its claim holds
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.time() + 5
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z":
            assert time.time() < deadline, "the child did not become a zombie"
            time.sleep(0.01)
        assert abandoned(f"{HOST}/{child.pid}/x", time.time())  # a zombie: gone
    finally:
        child.kill()
        child.wait()
