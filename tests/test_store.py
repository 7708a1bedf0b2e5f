"""SQLiteStore: settings, migrations, the newer-schema refusal, atomic claims."""

from __future__ import annotations

import sqlite3

import pytest

from botkit import SchemaTooNewError
from botkit.sqlite_store import SQLiteStore
from botkit.store import Commit, OutboxItem


async def opened(path) -> SQLiteStore:
    store = SQLiteStore(path)
    await store.open()
    return store


async def test_wal_full_sync_and_schema_version(tmp_path):
    store = await opened(tmp_path / "a.db")
    await store.close()
    conn = sqlite3.connect(tmp_path / "a.db")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    names = [r[0] for r in conn.execute(
        "SELECT name FROM _sqlite_migrations WHERE migration_set = 'botkit'")]
    assert names == ["m001_initial"]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"conversations", "inbound", "outbound", "status_events", "meta"} <= tables
    conn.close()
    again = await opened(tmp_path / "a.db")  # reopening applies nothing twice
    await again.close()


async def test_newer_database_is_refused(tmp_path):
    store = await opened(tmp_path / "b.db")
    await store.close()
    conn = sqlite3.connect(tmp_path / "b.db")
    conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
                 " VALUES ('botkit', 'm007_future', 'later')")
    conn.commit()
    conn.close()
    store = SQLiteStore(tmp_path / "b.db")
    with pytest.raises(SchemaTooNewError, match="has migration m007_future that this version"):
        await store.open()
    await store.close()


async def test_secret_is_generated_once_and_kept(tmp_path):
    store = await opened(tmp_path / "c.db")
    first = await store.secret(lambda: "generated-secret-1234")
    second = await store.secret(lambda: "another-one-5678")
    await store.close()
    assert first == second == "generated-secret-1234"


def item(phone: str, n: int) -> OutboxItem:
    return OutboxItem(phone, None, "t", f"m{n}", 206, {"text": f"m{n}"}, False)


async def test_two_stores_claim_disjoint_rows(tmp_path):
    a, b = await opened(tmp_path / "d.db"), await opened(tmp_path / "d.db")
    await a.commit(Commit(None, outbox=tuple(item(f"38050{n:07d}", n) for n in range(40))), 1.0)
    claimed_a = await a.claim_outbox(25, [])
    claimed_b = await b.claim_outbox(25, [])
    ids_a, ids_b = {r.id for r in claimed_a}, {r.id for r in claimed_b}
    assert len(ids_a) == 25 and len(ids_b) == 15 and not ids_a & ids_b
    assert await a.reset_sending() == 40
    await a.close()
    await b.close()


async def test_claim_never_overtakes_a_phone_in_flight(tmp_path):
    store = await opened(tmp_path / "e.db")
    await store.commit(Commit(None, outbox=(item("1", 0), item("2", 1), item("1", 2))), 1.0)
    first = await store.claim_outbox(1, [])
    assert [r.payload["text"] for r in first] == ["m0"]
    second = await store.claim_outbox(10, ["1"])  # phone 1 is still being sent
    assert [r.payload["text"] for r in second] == ["m1"]
    await store.close()
