"""The database schema, as sqlite-utils ``Migrations``, and the check that refuses a newer one.

Each migration and its record in ``_sqlite_migrations`` commit in one transaction. Append new
migrations at the end; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite_utils
from sqlite_utils.migrations import Migrations

from botkit.errors import SchemaTooNewError
from botkit.storage.rows import (
    CAMPAIGN,
    CONSENT_ROLE,
    HANDOFF,
    HUMAN,
    REFUSED_OPTED_OUT,
    RELEASE_HELD,
    UNCONFIRMED,
)

__all__ = ["MIGRATIONS", "UNCONFIRMED", "check_and_migrate"]

MIGRATIONS = Migrations("botkit")


@MIGRATIONS(name="m001_initial")
def m001_initial(db: sqlite_utils.Database) -> None:
    db.execute("""
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            phone TEXT NOT NULL,
            flow TEXT NOT NULL,
            step TEXT NOT NULL,
            status TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT '{}',
            retries INTEGER NOT NULL DEFAULT 0,
            version INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            expires_at REAL NOT NULL
        )""")
    # At most one open conversation per phone; also the index routing looks phones up by.
    db.execute(
        "CREATE UNIQUE INDEX conversations_open ON conversations (phone)"
        " WHERE status IN ('active', 'human')"
    )
    db.execute("CREATE INDEX conversations_phone ON conversations (phone, updated_at)")
    db.execute("CREATE INDEX conversations_flow ON conversations (flow, status)")
    db.execute("""
        CREATE TABLE inbound (
            id INTEGER PRIMARY KEY,
            message_token TEXT NOT NULL UNIQUE,
            phone TEXT NOT NULL,
            time INTEGER NOT NULL,
            text TEXT NOT NULL,
            tracking_data TEXT,
            received_at REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            route TEXT,
            conversation_id INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            handled_at REAL
        )""")
    db.execute("CREATE INDEX inbound_pending ON inbound (id) WHERE status = 'pending'")
    db.execute("CREATE INDEX inbound_conversation ON inbound (conversation_id)")
    db.execute("""
        CREATE TABLE outbound (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER,
            inbound_id INTEGER,
            phone TEXT NOT NULL,
            flow TEXT,
            step TEXT,
            template TEXT NOT NULL,
            text TEXT NOT NULL,
            message_type INTEGER NOT NULL,
            payload TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'queued',
            due_at REAL NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            message_id INTEGER,
            delivery_status INTEGER,
            delivery_status_at REAL,
            created_at REAL NOT NULL,
            sent_at REAL
        )""")
    # The sender's queue, and "is an earlier message of this phone still waiting?".
    db.execute("CREATE INDEX outbound_queue ON outbound (id) WHERE status IN ('queued', 'sending')")
    db.execute(
        "CREATE INDEX outbound_phone_queue ON outbound (phone, id)"
        " WHERE status IN ('queued', 'sending')"
    )
    db.execute("CREATE INDEX outbound_message_id ON outbound (message_id)")
    db.execute("CREATE INDEX outbound_conversation ON outbound (conversation_id)")
    db.execute("""
        CREATE TABLE status_events (
            id INTEGER PRIMARY KEY,
            message_id INTEGER NOT NULL,
            status INTEGER NOT NULL,
            body TEXT NOT NULL,
            received_at REAL NOT NULL
        )""")
    db.execute("CREATE INDEX status_events_message ON status_events (message_id)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def check_and_migrate(db: sqlite_utils.Database, where: str) -> list[str]:
    """Refuse a database migrated by a newer botkit, then apply pending migrations.

    Returns the names of the migrations applied now.
    """
    known = {m.name for m in MIGRATIONS._migrations}
    unknown = [m.name for m in MIGRATIONS.applied(db) if m.name not in known]
    if unknown:
        raise SchemaTooNewError(
            f"database {where} has migration {unknown[0]} that this version of botkit doesn't"
            " know; upgrade botkit (pip install -U botkit) or point BOTKIT_DB at another file"
        )
    pending = [m.name for m in MIGRATIONS.pending(db)]
    MIGRATIONS.apply(db)
    return pending


@MIGRATIONS(name="m002_life_cycle")
def m002_life_cycle(db: sqlite_utils.Database) -> None:
    """Timers, flow versions, what each turn did (for stats), and status polling."""
    db.execute("ALTER TABLE conversations ADD COLUMN flow_version TEXT")
    db.execute("ALTER TABLE outbound ADD COLUMN flow_version TEXT")
    db.execute("ALTER TABLE outbound ADD COLUMN ttl INTEGER")
    db.execute("ALTER TABLE outbound ADD COLUMN polled_at REAL")
    # "question": the message that asks its step (its statuses can start timers).
    db.execute("ALTER TABLE outbound ADD COLUMN role TEXT")
    # Which sender claimed a row, and when: a restart requeues only abandoned claims.
    db.execute("ALTER TABLE outbound ADD COLUMN claimed_by TEXT")
    db.execute("ALTER TABLE outbound ADD COLUMN claimed_at REAL")
    db.execute("ALTER TABLE inbound ADD COLUMN flow TEXT")
    db.execute("ALTER TABLE inbound ADD COLUMN step TEXT")
    db.execute("ALTER TABLE inbound ADD COLUMN outcome TEXT")
    # Messages whose delivery is still unknown, for the /receive-viber poller.
    db.execute(
        "CREATE INDEX outbound_unconfirmed ON outbound (sent_at)"
        " WHERE status = 'sent' AND (delivery_status IS NULL OR delivery_status IN (0, 5, 20))"
    )
    db.execute("CREATE INDEX inbound_flow_step ON inbound (flow, step)")
    db.execute("CREATE INDEX outbound_flow_step ON outbound (flow, step)")
    db.execute("""
        CREATE TABLE timers (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL,
            conversation_version INTEGER NOT NULL,
            phone TEXT NOT NULL,
            kind TEXT NOT NULL,
            flow TEXT NOT NULL,
            step TEXT NOT NULL,
            due_at REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            message_id INTEGER,
            created_at REAL NOT NULL,
            done_at REAL,
            detail TEXT
        )""")
    db.execute("CREATE INDEX timers_due ON timers (due_at) WHERE status = 'pending'")
    db.execute(
        "CREATE INDEX timers_conversation ON timers (conversation_id) WHERE status = 'pending'"
    )
    db.execute("CREATE INDEX timers_flow_step ON timers (flow, step, kind)")


@MIGRATIONS(name="m003_attention_index")
def m003_attention_index(db: sqlite_utils.Database) -> None:
    """Failed and uncertain messages by index, so ``/healthz`` counts them without reading
    every message."""
    db.execute("CREATE INDEX outbound_attention ON outbound (status)"
               " WHERE status IN ('failed', 'uncertain')")


@MIGRATIONS(name="m004_timers_without_version")
def m004_timers_without_version(db: sqlite_utils.Database) -> None:
    """Drop ``timers.conversation_version``: nothing reads it, and inserts leave it out.

    m002 stays as it shipped, so a database it migrated has the column (NOT NULL); one made
    while m002 had been edited to leave it out has none, and is left as it is.
    """
    if "conversation_version" in db["timers"].columns_dict:
        db.execute("ALTER TABLE timers DROP COLUMN conversation_version")




@MIGRATIONS(name="m005_sms_fallback")
def m005_sms_fallback(db: sqlite_utils.Database) -> None:
    """The SMS fallback's id and status on each message and status event, the key of a
    proactive notice, and status polling for any status that is not final (m002's index knew
    only 0, 5 and 20)."""
    for table in ("outbound", "status_events"):
        db.execute(f"ALTER TABLE {table} ADD COLUMN sms_message_id INTEGER")
        db.execute(f"ALTER TABLE {table} ADD COLUMN sms_message_status INTEGER")
    # A proactive notice's key (run.py notify --once KEY): one per phone and key.
    db.execute("ALTER TABLE outbound ADD COLUMN notice_key TEXT")
    db.execute("CREATE UNIQUE INDEX outbound_notice ON outbound (phone, notice_key)"
               " WHERE notice_key IS NOT NULL")
    db.execute("DROP INDEX outbound_unconfirmed")
    db.execute(f"CREATE INDEX outbound_unconfirmed ON outbound (sent_at) WHERE {UNCONFIRMED}")


@MIGRATIONS(name="m006_hot_path_indexes")
def m006_hot_path_indexes(db: sqlite_utils.Database) -> None:
    """Indexes every callback paid for and no query reads (measured: issue 15).

    ``inbound_conversation`` and ``outbound_conversation`` were written by every callback (its
    inbound row's conversation is set when handled, each reply row is inserted with one) and
    read by no query; a feature that reads messages by conversation adds its own. A phone's
    conversations are listed by ``conversations_phone``: on (phone, id) instead of (phone,
    updated_at), it no longer moves at every turn, and a phone's few rows sort in memory.
    """
    db.execute("DROP INDEX inbound_conversation")
    db.execute("DROP INDEX outbound_conversation")
    db.execute("DROP INDEX conversations_phone")
    db.execute("CREATE INDEX conversations_phone ON conversations (phone, id)")


@MIGRATIONS(name="m007_presence")
def m007_presence(db: sqlite_utils.Database) -> None:
    """Which process accepted each message, the processes' heartbeats and the account's
    send rate: what PostgreSQL's many processes need, kept alike so ``run.py copy-db``
    moves every row both ways."""
    db.execute("ALTER TABLE inbound ADD COLUMN received_by TEXT")
    db.execute("CREATE TABLE processes (name TEXT PRIMARY KEY, started_at REAL NOT NULL,"
               " seen_at REAL NOT NULL)")
    db.execute("CREATE TABLE send_rate (id INTEGER PRIMARY KEY, next_at REAL NOT NULL)")


@MIGRATIONS(name="m008_console")
def m008_console(db: sqlite_utils.Database) -> None:
    """The operator console: its users, and its inbox of conversations with a human.

    ``conversations_human`` holds only the conversations with a human, on their ids: a turn
    of any other conversation writes nothing to it.
    """
    db.execute("CREATE TABLE users (name TEXT PRIMARY KEY, role TEXT NOT NULL,"
               " password_hash TEXT NOT NULL, created_at REAL NOT NULL)")
    db.execute(f"CREATE INDEX conversations_human ON conversations (id) WHERE {HUMAN}")


@MIGRATIONS(name="m009_agents")
def m009_agents(db: sqlite_utils.Database) -> None:
    """The console's agents: who has which conversation with a human, and what they did."""
    db.execute("CREATE TABLE assignments (conversation_id INTEGER PRIMARY KEY,"
               " agent TEXT NOT NULL, taken_at REAL NOT NULL)")
    db.execute("CREATE TABLE agent_actions (id INTEGER PRIMARY KEY,"
               " conversation_id INTEGER NOT NULL, agent TEXT NOT NULL, action TEXT NOT NULL,"
               " detail TEXT, at REAL NOT NULL)")
    db.execute("CREATE INDEX agent_actions_conversation ON agent_actions (conversation_id, id)")


@MIGRATIONS(name="m010_handoffs")
def m010_handoffs(db: sqlite_utils.Database) -> None:
    """The messages that handed a conversation to a human, by conversation: since when it
    waits, for the console's inbox. Only those messages are in it, so other turns write
    nothing to it."""
    db.execute(f"CREATE INDEX inbound_handoffs ON inbound (conversation_id) WHERE {HANDOFF}")


@MIGRATIONS(name="m011_phone_history")
def m011_phone_history(db: sqlite_utils.Database) -> None:
    """A phone's messages in and out, by phone: its history across conversations and the
    console's transcript, read from an index instead of a scan of every message (which
    grows with every message, and would hold the database thread at each live refresh).
    Every callback writes one entry into each (measured: docs/PERFORMANCE.md, "Issue 17")."""
    db.execute("CREATE INDEX inbound_phone ON inbound (phone, id)")
    db.execute("CREATE INDEX outbound_phone ON outbound (phone, id)")


@MIGRATIONS(name="m012_campaigns")
def m012_campaigns(db: sqlite_utils.Database) -> None:
    """A record of each campaign run (``run.py start``, ``run.py notify``), and which
    messages each one queued, for the console's campaigns page.

    A run is a row of ``campaigns`` (a re-run is a new one). ``outbound.campaign_id`` is set
    only on the rows a campaign inserts, and ``outbound_campaign`` holds only those rows:
    every other message (a reply to a callback) writes nothing to it. It covers what the
    page counts (status, delivery status, sent_at), so the counts read no table rows.
    """
    db.execute("CREATE TABLE campaigns (id INTEGER PRIMARY KEY, kind TEXT NOT NULL,"
               " name TEXT NOT NULL, total INTEGER NOT NULL, started_at REAL NOT NULL,"
               " finished_at REAL, outcome TEXT, begun INTEGER NOT NULL DEFAULT 0,"
               " skipped INTEGER NOT NULL DEFAULT 0, seen_at REAL, process TEXT)")
    db.execute("ALTER TABLE outbound ADD COLUMN campaign_id INTEGER")
    db.execute("CREATE INDEX outbound_campaign ON outbound"
               f" (campaign_id, status, delivery_status, sent_at) WHERE {CAMPAIGN}")


@MIGRATIONS(name="m013_consent")
def m013_consent(db: sqlite_utils.Database) -> None:
    """The suppression list and its history, and the check that makes it hold.

    ``suppressions`` has one row per phone that opted out (when, the keyword, the message);
    ``consent_events`` keeps every opt-out and opt-in. The trigger ``outbound_opted_out`` is
    the one place every message passes, whatever path queued it (a flow, a timer, a
    campaign, an agent, a future one): a row for a phone on the list is stored ``refused``
    with the reason, never sent, unless it answers an opt-out or opt-in keyword (role
    ``consent``). Its check is a primary-key lookup inside SQLite, in the insert's own
    statement: no round trip more.
    """
    db.execute("CREATE TABLE suppressions (phone TEXT PRIMARY KEY, at REAL NOT NULL,"
               " keyword TEXT, source TEXT NOT NULL, inbound_id INTEGER)")
    db.execute("CREATE TABLE consent_events (id INTEGER PRIMARY KEY, phone TEXT NOT NULL,"
               " kind TEXT NOT NULL, at REAL NOT NULL, keyword TEXT, source TEXT NOT NULL,"
               " inbound_id INTEGER)")
    db.execute("CREATE INDEX consent_events_phone ON consent_events (phone, id)")
    db.execute(
        "CREATE TRIGGER outbound_opted_out AFTER INSERT ON outbound"
        f" WHEN NEW.role IS NOT '{CONSENT_ROLE}'"
        " AND EXISTS (SELECT 1 FROM suppressions WHERE phone = NEW.phone)"
        " BEGIN UPDATE outbound SET status = 'refused', attempts = 0, claimed_by = NULL,"
        f" claimed_at = NULL, error = '{REFUSED_OPTED_OUT}' WHERE id = NEW.id; END")


@MIGRATIONS(name="m014_forget")
def m014_forget(db: sqlite_utils.Database) -> None:
    """What is kept of a forgotten phone's messages (``run.py forget``): a keyed hash of each
    message token, so that a late duplicate callback is still recognised (and not handled as
    a new message). The inbound insert checks it by primary key in its own statement."""
    db.execute("CREATE TABLE forgotten_tokens (token_hash TEXT PRIMARY KEY, at REAL NOT NULL)")


@MIGRATIONS(name="m015_pacing")
def m015_pacing(db: sqlite_utils.Database) -> None:
    """Quiet hours and per-phone limits (docs/consent.md).

    ``proactive`` marks the rows of turns the bot started (a campaign, a timer, a notice),
    which the per-phone limits count. ``held_until`` is when the phone's quiet hours end for
    a row that waits for them (its ``due_at`` is that time too, until the phone writes and
    the row goes at once); the step's timers count from it.

    The trigger ``inbound_releases_held``: a message from the phone, whatever path stored it,
    lets its held rows go now (quiet hours are for what the bot starts; a user who writes is
    awake). It runs in the insert's own statement, on the phone's few queued rows.
    """
    db.execute("ALTER TABLE outbound ADD COLUMN proactive INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE outbound ADD COLUMN held_until REAL")
    db.execute(f"CREATE TRIGGER inbound_releases_held AFTER INSERT ON inbound BEGIN {RELEASE_HELD}; END")


@MIGRATIONS(name="m016_locale")
def m016_locale(db: sqlite_utils.Database) -> None:
    """The language a conversation speaks (docs/languages.md); NULL: the default locale."""
    db.execute("ALTER TABLE conversations ADD COLUMN locale TEXT")
