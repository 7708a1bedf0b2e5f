"""SQLiteStore's own: WAL and synchronous=FULL, its migrations, the newer-schema refusal, and
the checkpointer. What every engine does is in test_store.py."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from botkit import SchemaTooNewError
from botkit.core.records import Commit
from botkit.storage.sqlite import SQLiteStore


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
    assert names == ["m001_initial", "m002_life_cycle", "m003_attention_index",
                     "m004_timers_without_version", "m005_sms_fallback",
                     "m006_hot_path_indexes", "m007_presence", "m008_console",
                     "m009_agents", "m010_handoffs", "m011_phone_history",
                     "m012_campaigns", "m013_consent", "m014_forget", "m015_pacing", "m016_locale"]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"conversations", "inbound", "outbound", "status_events", "meta", "timers"} <= tables
    indexes = {r[0]: r[1] for r in conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    assert "inbound_conversation" not in indexes and "outbound_conversation" not in indexes
    assert indexes["conversations_phone"].endswith("(phone, id)")
    conn.close()
    again = await opened(tmp_path / "a.db")  # reopening applies nothing twice
    await again.close()

async def test_a_version_1_database_is_migrated_in_place(tmp_path):
    from sqlite_utils import Database

    from botkit.storage.schema import MIGRATIONS

    db = Database(tmp_path / "old.db")
    MIGRATIONS.apply(db, stop_before="m002_life_cycle")  # as botkit 0.1 left it
    db.execute("INSERT INTO conversations (phone, flow, step, status, created_at, updated_at,"
               " expires_at) VALUES ('1', 'survey', 'name', 'active', 0, 0, 9e9)")
    db.conn.commit()
    db.close()
    store = await opened(tmp_path / "old.db")
    [conv] = await store.conversations()
    assert (conv.phone, conv.step) == ("1", "name")
    await store.close()

async def test_a_database_with_timers_of_m002_as_shipped_takes_new_timers(tmp_path):
    from sqlite_utils import Database

    from botkit.core.conversation import Status
    from botkit.core.records import ConversationChange, TimerSpec
    from botkit.storage.schema import MIGRATIONS

    db = Database(tmp_path / "m002.db")
    MIGRATIONS.apply(db, stop_before="m003_attention_index")  # as 0.2 left it
    db.execute("INSERT INTO timers (conversation_id, conversation_version, phone, kind, flow,"
               " step, due_at, created_at) VALUES (1, 0, '1', 'remind', 'f', 'q', 5, 0)")
    db.conn.commit()
    db.close()
    store = await opened(tmp_path / "m002.db")
    change = ConversationChange(phone="380503", flow="f", step="q",
                                status=Status.ACTIVE, state={}, retries=0,
                                expires_at=9e9)
    timer = TimerSpec(kind="timeout", flow="f", step="q", due_at=9.0)
    await store.commit(Commit(inbound_id=None, conversation=change, timers=(timer,)), 1.0)
    assert [t.kind for t in await store.due_timers(10.0, 10)] == ["remind", "timeout"]
    await store.close()

async def test_newer_database_is_refused(tmp_path):
    store = await opened(tmp_path / "b.db")
    await store.close()
    conn = sqlite3.connect(tmp_path / "b.db")
    conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
                 " VALUES ('botkit', 'm099_future', 'later')")
    conn.commit()
    conn.close()
    store = SQLiteStore(tmp_path / "b.db")
    with pytest.raises(SchemaTooNewError, match="has migration m099_future that this version"):
        await store.open()
    await store.close()

async def test_the_wal_is_checkpointed_by_its_own_thread_not_inside_commits(tmp_path):
    from botkit.storage.sqlite.checkpoints import WRITER_AUTOCHECKPOINT

    store = await opened(tmp_path / "wal.db")
    limit = await store._run(lambda: store.conn.execute("PRAGMA wal_autocheckpoint").fetchone())
    assert limit == (WRITER_AUTOCHECKPOINT,)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    checkpointer.interval = 0.05
    for n in range(30):  # enough pages that a commit would otherwise checkpoint
        await store.set_meta(f"k{n}", "x" * 3000)
    runs = checkpointer.runs
    for _ in range(100):
        if checkpointer.runs >= runs + 2:
            break
        await asyncio.sleep(0.02)
    # The pages reached the database file itself: a copy of it without its log has them.
    import shutil

    shutil.copyfile(tmp_path / "wal.db", tmp_path / "main-only.db")
    conn = sqlite3.connect(tmp_path / "main-only.db")
    assert conn.execute("SELECT count(*) FROM meta WHERE key LIKE 'k%'").fetchone() == (30,)
    conn.close()
    await store.close()

