"""``run.py copy-db FROM TO``, run as the operator runs it (a real process), on a SQLite file
a bot really ran on, into SQLite and PostgreSQL and back.

Rows are compared table by table on the columns both ends have (PostgreSQL's
``timers.leased_until`` is its own), sorted by each table's key.
"""

from __future__ import annotations

import asyncio
import io
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from engines import Backend

from botkit.cli.copy_db import Meter
from botkit.core.conversation import Status
from botkit.models import InboundReply
from botkit.core.records import (
    Commit,
    Committed,
    ConsentChange,
    ConversationChange,
    OutboxItem,
    User,
)
from botkit.storage.copying import TABLES
from botkit.storage.engines import is_postgres, store_for
from botkit.testing import Harness
from bots.support import support
from bots.survey import survey

ROOT = Path(__file__).resolve().parents[1]
ANA, BO, CY, DI = "380501112233", "380501112244", "380501112255", "380501112266"

Dump = dict[str, tuple[list[str], list[tuple[Any, ...]]]]  # table -> (columns, rows)


def run_copy(source: str | Path, target: str | Path) -> subprocess.CompletedProcess[str]:
    """``python run.py copy-db FROM TO`` in the project folder, with no BOTKIT_* variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTKIT_")}
    return subprocess.run([sys.executable, "run.py", "copy-db", str(source), str(target)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)


async def copy(source: str | Path, target: str | Path) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_copy, source, target)


@pytest.fixture
async def filled(tmp_path: Path) -> Path:
    """A SQLite file a bot ran on: a survey finished after a re-ask, one left open with its
    reminder pending, a hand-over to a human, delivery statuses, the callback secret, the
    server's heartbeat, the account's send rate, a console user who took the hand-over, a
    campaign, a phone on the suppression list: a row in every table."""
    db = tmp_path / "bot.db"
    async with Harness(flows=[survey, support], db=db, templates=ROOT / "templates") as bot:
        ana = bot.chat(ANA)
        await ana.start("survey")
        for answer in ("Ana", "ten", "5", "Quick delivery"):
            await ana.answer(answer)
        bo = bot.chat(BO)
        await bo.start("survey")
        await bo.answer("Bo")
        await bot.chat(CY).send("agent")
        await bot.settle()
    store = store_for(db)
    await store.open()
    await store.send_slots(10, 50.0)
    await store.beat(0.0)  # a process that is running (the bot's left at its clean stop)
    await store.add_user(User(name="olga", role="agent", password_hash="$argon2id$stand-in",
                              created_at=1.0))
    [(with_human, _)] = await store.human_conversations()
    await store.take(with_human.id, "olga", 2.0)  # an assignment, and an agent's action
    # A campaign run, and its notice (the one outbox row with a campaign_id).
    run = await store.begin_campaign("notify", "support/hours.txt", 1, 3.0)
    await store.commit(Commit(inbound_id=None, campaign_id=run, outbox=(OutboxItem(
        phone="380501112277", flow=None, step=None, template="support/hours.txt", text="We are open",
        message_type=106, payload={"text": "We are open"}, in_conversation=False),)), 3.0)
    await store.end_campaign(run, "done", 4.0, begun=1, skipped=0)
    # On the suppression list after her survey: her sent messages copy as they are.
    await store.set_consent(ConsentChange(phone=ANA, kind="opt_out", keyword="stop",
                                          source="cli"), 5.0)
    # A phone forgotten: what is kept of it is the hash of its message's token.
    await store.record_inbound(InboundReply.model_validate({
        "message_token": "gone-1", "phone_number": "380501112288", "time": 1,
        "message": {"text": "hi"}}), 5.0)
    await store.forget("380501112288", 6.0)
    await store.close()
    empty = [table for table, (_, rows) in (await dump(db)).items() if not rows]
    assert not empty, f"the bot left {empty} empty: the test would not copy them"
    return db


async def dump(db: str | Path) -> Dump:
    """Every table's columns and rows, sorted by its key (its first column)."""
    if is_postgres(db):
        import asyncpg

        conn = await asyncpg.connect(str(db))
        try:
            return {t: _sorted([a.name for a in (await conn.prepare(f"SELECT * FROM {t}"))
                                .get_attributes()],
                               [tuple(r) for r in await conn.fetch(f"SELECT * FROM {t}")])
                    for t in TABLES}
        finally:
            await conn.close()
    conn = sqlite3.connect(db)
    try:
        return {t: _sorted([c[0] for c in conn.execute(f"SELECT * FROM {t}").description],
                           conn.execute(f"SELECT * FROM {t}").fetchall()) for t in TABLES}
    finally:
        conn.close()


def _sorted(columns: list[str], rows: list[tuple[Any, ...]]) -> tuple[list[str], list[Any]]:
    return columns, sorted(rows, key=lambda row: row[0])


def shared(a: Dump, b: Dump, table: str) -> tuple[list[Any], list[Any]]:
    """``table``'s rows in ``a`` and in ``b``, on the columns both have."""
    (ca, ra), (cb, rb) = a[table], b[table]
    both = [c for c in ca if c in cb]
    return ([tuple(row[ca.index(c)] for c in both) for row in ra],
            [tuple(row[cb.index(c)] for c in both) for row in rb])


async def commit_new_conversation(db: str | Path) -> Committed:
    """What a running bot does next on the copy: a new conversation and its question."""
    store = store_for(db)
    await store.open()
    try:
        question = OutboxItem(phone=DI, flow="survey", step="name", template="t", text="hi",
                              message_type=206, payload={"text": "hi"}, in_conversation=True)
        change = ConversationChange(phone=DI, flow="survey", step="name", status=Status.ACTIVE,
                                    state={}, retries=0, expires_at=9e9)
        return await store.commit(Commit(inbound_id=None, conversation=change,
                                         outbox=(question,)), 1.0)
    finally:
        await store.close()


async def test_a_bot_database_goes_there_and_back_with_every_row(
    filled: Path, backend: Backend, postgres: Backend, tmp_path: Path
) -> None:
    # SQLite -> SQLite or PostgreSQL -> PostgreSQL -> a new SQLite file.
    back = tmp_path / "back.db"
    for source, target in ((filled, backend.db), (backend.db, postgres.db), (postgres.db, back)):
        result = await copy(source, target)

        assert result.returncode == 0, result.stderr
        before, after = await dump(source), await dump(target)
        for table in TABLES:
            rows, copied = shared(before, after, table)
            assert copied == rows, table
    assert await dump(back) == await dump(filled)  # SQLite both: every column

    original = await dump(filled)
    next_ids = (len(original["conversations"][1]) + 1, [len(original["outbound"][1]) + 1])
    for db in (backend.db, postgres.db, back):
        committed = await commit_new_conversation(db)
        assert (committed.conversation_id, committed.outbox_ids) == next_ids, db


async def test_progress_goes_to_stderr_and_the_counts_to_stdout(
    filled: Path, postgres: Backend
) -> None:
    counts = {table: len(rows) for table, (_, rows) in (await dump(filled)).items()}

    result = await copy(filled, postgres.db)

    assert result.returncode == 0, result.stderr
    for table, n in counts.items():
        assert f"{table}: {n:,}/{n:,} rows\n" in result.stderr
    assert "timers.leased_until: only TO has it, left empty" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["table", "FROM", "TO"]
    assert [line.split() for line in lines[1:-1]] == [
        [table, str(n), str(n)] for table, n in counts.items()]
    assert lines[-1] == f"copied {sum(counts.values())} rows from {filled} to {postgres.db}"
    # The copy is analyzed: the planner knows its tables' sizes before autovacuum comes by.
    conn = await postgres.connect()
    try:
        analyzed = await conn.fetch(
            "SELECT relname FROM pg_stat_user_tables WHERE schemaname = $1"
            " AND last_analyze IS NOT NULL", postgres.schema)
    finally:
        await conn.close()
    assert {"conversations", "inbound", "outbound", "timers"} <= {r["relname"] for r in analyzed}


async def test_a_target_with_rows_is_refused_and_left_as_it_was(
    filled: Path, backend: Backend
) -> None:
    store = await backend.opened()
    change = ConversationChange(phone=DI, flow="survey", step="name", status=Status.ACTIVE,
                                state={}, retries=0, expires_at=9e9)
    await store.commit(Commit(inbound_id=None, conversation=change), 1.0)
    await store.close()
    before = await dump(backend.db)

    result = await copy(filled, backend.db)

    assert result.returncode == 2
    assert (f"error: {backend.db} is not empty (conversations has 1 row): copy-db copies"
            " only into an empty database") in result.stderr
    assert "give a new SQLite file or an empty PostgreSQL database" in result.stderr
    assert result.stdout == ""
    assert await dump(backend.db) == before


@pytest.mark.parametrize(("table", "column", "value", "says"), [
    ("timers", "message_id", 3.5, "message_id holds 3.5, which a PostgreSQL bigint column"),
    ("inbound", "text", b"\x00", "text holds b'\\x00', which a PostgreSQL text column"),
])
async def test_a_row_that_fails_midway_leaves_the_target_empty(
    filled: Path, postgres: Backend, table: str, column: str, value: object, says: str
) -> None:
    # The bad row's table comes after others: those were copied, then rolled back.
    conn = sqlite3.connect(filled)
    with conn:
        [(row_id,)] = conn.execute(f"SELECT max(id) FROM {table}").fetchall()
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE id = ?", [value, row_id])
    conn.close()

    result = await copy(filled, postgres.db)

    assert result.returncode == 2
    assert f"{table} row id = {row_id}: {says}" in result.stderr
    assert "Nothing was committed, so it is still empty" in result.stderr
    assert all(not rows for _, rows in (await dump(postgres.db)).values())


async def test_counts_that_differ_after_the_copy_exit_1(filled: Path, postgres: Backend) -> None:
    store = await postgres.opened()  # the schema, then a trigger that drops meta's rows
    await store.close()
    conn = await postgres.connect()
    await conn.execute(
        "CREATE FUNCTION dropped() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL;"
        " END $$; CREATE TRIGGER dropped BEFORE INSERT ON meta FOR EACH ROW"
        " EXECUTE FUNCTION dropped()")
    await conn.close()

    result = await copy(filled, postgres.db)

    assert result.returncode == 1
    # meta: the callback secret and the key of forgotten tokens, both dropped by the trigger
    assert "meta 2 0 differs" in [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert "error: the row counts of meta differ: TO keeps the rows copied" in result.stderr


def test_usage_errors_exit_2_saying_what_to_give(tmp_path: Path) -> None:
    missing = run_copy(tmp_path / "nope.db", tmp_path / "to.db")
    assert missing.returncode == 2
    assert f"error: FROM {tmp_path / 'nope.db'}: no such file; give the SQLite file" in (
        missing.stderr)
    assert not (tmp_path / "nope.db").exists() and not (tmp_path / "to.db").exists()

    (tmp_path / "a.db").touch()
    same = run_copy(tmp_path / "a.db", tmp_path / "." / "a.db")
    assert same.returncode == 2
    assert "error: FROM and TO are the same database" in same.stderr

    (tmp_path / "text.db").write_text("not a database at all " * 100)
    garbage = run_copy(tmp_path / "text.db", tmp_path / "to.db")
    assert garbage.returncode == 2
    assert "file is not a database: give a botkit SQLite file" in garbage.stderr


async def test_a_source_newer_than_this_botkit_is_refused(filled: Path, tmp_path: Path) -> None:
    conn = sqlite3.connect(filled)
    with conn:
        conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
                     " VALUES ('botkit', 'm099_future', 'later')")
    conn.close()

    result = await copy(filled, tmp_path / "to.db")

    assert result.returncode == 2
    assert "has migration m099_future that this version of botkit doesn't know" in result.stderr


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_meter_rewrites_its_line_on_a_terminal_and_writes_lines_elsewhere() -> None:
    terminal = Terminal()
    meter = Meter(terminal)
    for done in (0, 5_000, 7_500):
        meter("outbound", done, 7_500)
    assert terminal.getvalue() == "".join(
        f"\routbound: {n}/7,500 rows\x1b[K" for n in ("0", "5,000")) + (
        "\routbound: 7,500/7,500 rows\x1b[K\n")

    log, now = io.StringIO(), [100.0]
    meter = Meter(log, clock=lambda: now[0])
    for done, at in ((0, 100.0), (5_000, 100.2), (10_000, 101.5), (15_000, 101.6),
                     (17_000, 101.7)):
        now[0] = at
        meter("outbound", done, 17_000)
    assert log.getvalue() == ("outbound: 5,000/17,000 rows\noutbound: 10,000/17,000 rows\n"
                              "outbound: 17,000/17,000 rows\n")
