"""PostgresStore's own: migrations one process at a time, the newer-schema refusal, an
unreachable server, and what several processes on one database must not do twice (claims
of due timers and of unconfirmed messages, a phone's turns). What every engine does is in
test_store.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from botkit import SchemaTooNewError, StoreUnavailableError
from botkit.core.conversation import Status
from botkit.core.flows import FlowSet
from botkit.core.lifecycle import DeliveryRules
from botkit.core.records import Commit, ConversationChange, OutboxItem, TimerSpec
from botkit.storage.postgres import PostgresStore
from botkit.storage.postgres.schema import MIGRATIONS

RULES = DeliveryRules(FlowSet([]), lambda: 0.0)


async def test_stores_opening_at_once_migrate_the_schema_once(postgres):
    stores = [postgres.store() for _ in range(5)]
    await asyncio.gather(*(s.open() for s in stores))
    assert await postgres.rows("SELECT name FROM botkit_migrations") == [
        (name,) for name, _ in MIGRATIONS]
    await asyncio.gather(*(s.close() for s in stores))


async def test_a_newer_database_is_refused(postgres):
    store = await postgres.opened()
    await store.close()
    await postgres.rows("INSERT INTO botkit_migrations (name) VALUES ('p099_future')")
    store = postgres.store()
    with pytest.raises(SchemaTooNewError, match="has migration p099_future that this version"):
        await store.open()
    await store.close()


async def test_an_unreachable_server_is_said_so_without_its_password():
    from aiohttp.test_utils import unused_port

    store = PostgresStore(f"postgresql://bot:s3cret@127.0.0.1:{unused_port()}/db")
    with pytest.raises(StoreUnavailableError) as caught:
        await store.open()
    assert "bot:***@127.0.0.1" in str(caught.value) and "s3cret" not in str(caught.value)


def question(phone: str, n: int) -> OutboxItem:
    return OutboxItem(phone=phone, flow=None, step=None, template="t", text=f"m{n}",
                      message_type=206, payload={"text": f"m{n}"}, in_conversation=False)


async def test_two_processes_ask_for_each_unconfirmed_message_once(postgres):
    a, b = await postgres.opened(), await postgres.opened()
    ids = (await a.commit(Commit(inbound_id=None, outbox=tuple(
        question(f"3{n}", n) for n in range(30))), 1.0)).outbox_ids
    await a.claim_outbox(30, 2.0)
    for n, outbox_id in enumerate(ids):
        await a.mark_sent(outbox_id, 5000 + n, 100.0, RULES)
    # Polled now (2000) for what was sent before 1000: a row picked is not picked again.
    got = await asyncio.gather(a.unconfirmed(1000.0, 0.0, 20, 2000.0),
                               b.unconfirmed(1000.0, 0.0, 20, 2000.0))
    picked = [outbox_id for rows in got for outbox_id, _ in rows]
    assert sorted(picked) == sorted(ids) and len(set(picked)) == 30
    await a.close()
    await b.close()


async def test_a_due_timer_is_read_by_one_process_until_its_lease_ends(postgres):
    lease = 12.0  # BOTKIT_LEASE
    a, b = await postgres.opened(lease=lease), await postgres.opened(lease=lease)
    for n in range(10):
        change = ConversationChange(phone=f"4{n}", flow="f", step="q", status=Status.ACTIVE,
                                    state={}, retries=0, expires_at=9e9)
        await a.commit(Commit(inbound_id=None, conversation=change, timers=(
            TimerSpec(kind="remind", flow="f", step="q", due_at=5.0),)), 1.0)
    first, second = await asyncio.gather(a.due_timers(6.0, 10), b.due_timers(6.0, 10))
    assert len(first) + len(second) == 10
    assert not {t.id for t in first} & {t.id for t in second}
    assert await a.due_timers(6.0 + lease - 1, 10) == []  # leased, not fired
    assert len(await b.due_timers(6.0 + lease, 10)) == 10  # the lease ran out
    await a.close()
    await b.close()


async def test_a_campaign_s_starts_refresh_the_statistics_its_sends_are_planned_on(
        postgres, monkeypatch):
    from botkit.storage.postgres import turns

    monkeypatch.setattr(turns, "ANALYZE_AFTER", 300)
    store = await postgres.opened()

    def start(n: int) -> Commit:
        change = ConversationChange(phone=f"5{n:05d}", flow="f", step="q",
                                    status=Status.ACTIVE, state={}, retries=0, expires_at=9e9)
        return Commit(inbound_id=None, conversation=change, timers=(
            TimerSpec(kind="remind", flow="f", step="q", due_at=50.0),
            TimerSpec(kind="expire", flow="f", step="q", due_at=90.0)))

    await store.commit_many([start(n) for n in range(200)], 1.0)
    analyzed = ("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'timers'"
                " AND schemaname = current_schema()")
    assert await postgres.rows(analyzed) == [(None,)]
    await store.commit_many([start(n) for n in range(200, 400)], 1.0)  # 400 >= 300
    [(at,)] = await postgres.rows(analyzed)
    assert at is not None
    # A late send's timers are found by their conversation, not by walking every timer of
    # the campaign's step (what the plan was on the statistics of an empty table).
    [plan] = await postgres.rows(
        "EXPLAIN (FORMAT JSON) UPDATE timers SET due_at = due_at + 1 WHERE conversation_id = 7"
        " AND flow = 'f' AND step = 'q' AND status = 'pending'"
        " AND kind = ANY(ARRAY['remind', 'expire'])")
    assert "timers_conversation" in str(plan), plan
    await store.close()


async def test_a_phone_s_turns_wait_for_each_other_across_processes(postgres):
    a, b = await postgres.opened(), await postgres.opened()
    order: list[str] = []

    async def turn(store, phone: str, name: str, hold: float) -> None:
        async with store.phone_turns(phone):
            order.append(f"{name} in")
            await asyncio.sleep(hold)
            order.append(f"{name} out")

    first = asyncio.create_task(turn(a, "5", "a", 0.3))
    await asyncio.sleep(0.05)
    await asyncio.gather(turn(b, "5", "b", 0), turn(b, "6", "other phone", 0))
    await first
    assert order.index("a out") < order.index("b in")  # the same phone waited
    assert order.index("other phone out") < order.index("a out")  # another did not
    await a.close()
    await b.close()


async def test_a_turn_uses_its_own_connection_for_its_calls(postgres):
    store = await postgres.opened(pool_size=2)  # one connection may be held by a turn
    for n in range(3):
        await store.record_inbound(_reply(f"before{n}"), 1.0)
    async with store.phone_turns("7"):
        for n in range(5):  # would deadlock if each call took a connection of the pool
            await store.record_inbound(_reply(f"t{n}"), 1.0)
        # The first read is the one taken with the lock, in the same round trip.
        assert [i.token for i in await store.pending_of("7", 10**9)] == [
            "before0", "before1", "before2"]
        assert len(await store.pending_of("7", 10**9)) == 8  # then the table's own
    await store.close()


async def test_a_turn_reads_its_routing_with_its_lock_and_afresh_after_a_commit(postgres):
    store = await postgres.opened()
    change = ConversationChange(phone="9", flow="f", step="q", status=Status.ACTIVE, state={},
                                retries=0, expires_at=9e9)
    asked = await store.commit(Commit(inbound_id=None, conversation=change, outbox=(
        replace(question("9", 1), flow="f", step="q", in_conversation=True),)), 1.0)
    await store.claim_outbox(1, 1.0)
    await store.mark_sent(asked.outbox_ids[0], 900, 1.0, RULES)
    outside = await store.routing_context("9", 900)
    async with store.phone_turns("9", 900):
        sent, tracked, active, suppressed = await store.routing_context("9", 900)  # locked
        assert (sent, tracked, active, suppressed) == outside
        assert sent is not None and sent.message_id == 900
        assert tracked is not None and tracked.id == active.id == asked.conversation_id
        await store.commit(Commit(inbound_id=None, closes=((active, Status.DONE),)), 2.0)
        assert (await store.routing_context("9", 900))[2] is None  # afresh: closed now
    await store.close()


async def test_a_turn_on_a_link_gone_silent_ends_within_the_command_timeout(
        postgres, monkeypatch):
    """A statement that times out on a silent link (no reset) fails the turn at once: the
    connection is dropped, not asked to cancel, roll back and unlock, which on such a link
    waits for minutes, holding the turn's slot and its phone."""
    from urllib.parse import urlsplit

    from botkit.storage.postgres import connection
    from reliability.proxy import Proxy

    monkeypatch.setattr(connection, "COMMAND_TIMEOUT", 1.0)
    url = urlsplit(str(postgres.db))
    proxy = Proxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    store = PostgresStore(url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}")
                          .geturl(), pool_size=2)  # one turn at a time
    await store.open()
    loop = asyncio.get_running_loop()

    async def turn(phone: str, token: str, *, silence: bool = False) -> None:
        async with store.phone_turns(phone):
            if silence:
                proxy.silence()
            await store.open_conversations([phone])  # a read on the turn's own connection
            await store.record_inbound(_reply(token), 1.0)

    try:
        started = loop.time()
        with pytest.raises(StoreUnavailableError, match="database"):
            await asyncio.wait_for(turn("7", "lost", silence=True), 30)
        assert loop.time() - started < 3.0  # the command timeout, and no more
        await proxy.restore()
        for n in range(3):  # the one turn slot was given back; the pool reconnects
            await asyncio.wait_for(turn("8", f"after{n}"), 10)
    finally:
        await store.close()
        await proxy.close()
    assert await postgres.rows("SELECT message_token FROM inbound ORDER BY id") == [
        (f"after{n}",) for n in range(3)]


def _reply(token: str):
    from botkit.models import InboundReply

    return InboundReply.model_validate({"message_token": token, "phone_number": "7",
                                        "time": 1, "message": {"text": "x"}})


async def test_a_claim_looks_past_a_queue_head_it_cannot_send(postgres):
    """The head of the queue (WINDOW rows) is all one phone's: only its first may go, and
    the next phone's message behind them is claimed all the same."""
    from botkit.storage.postgres.outbox import WINDOW

    store = await postgres.opened()
    blocked = tuple(question("1", n) for n in range(WINDOW + 100))
    await store.commit(Commit(inbound_id=None, outbox=(*blocked, question("2", 9999))), 1.0)
    claimed = await store.claim_outbox(10, 2.0)
    assert [(c.phone, c.payload["text"]) for c in claimed] == [("1", "m0"), ("2", "m9999")]
    await store.close()
