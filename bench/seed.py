"""Fill a botkit database with finished conversations, for the benchmark at scale.

    python bench/seed.py big.db                      # 1,000,000 conversations, 5,000,000 messages
    python bench/seed.py big.db --conversations 1000

Each conversation is a survey someone finished: five messages (three from the bot, sent
and delivered, two answers from the user, handled) and two timers that were cancelled or
fired, written through botkit's own schema (the migrations run first). Prints progress and
the bytes per stored conversation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from botkit.storage.sqlite import SQLiteStore  # noqa: E402

CHUNK = 20_000  # conversations per transaction
T0 = 1_790_000_000.0  # about four months before the benchmark's date


def rows(first: int, count: int) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    conversations, inbound, outbound, timers = [], [], [], []
    for n in range(first, first + count):
        phone, at = f"38090{n:07d}", T0 + n * 10.0
        state = json.dumps({"name": f"User {n}", "rating": n % 5 + 1})
        conversations.append((n + 1, phone, "survey", "done", "done", state, 0, 4, at,
                              at + 60, at + 86400, "v1", None))  # the default locale
        for k, (step, text) in enumerate((("name", "What's your name?"),
                                          ("rating", "How would you rate us, 1 to 5?"),
                                          ("done", "Thanks! We're done."))):
            out_id, message_id = 3 * n + k + 1, 10**9 + 3 * n + k
            payload = json.dumps({"source_addr": "Acme", "destination_addr": phone,
                                  "message_type": 206, "text": text, "source_type": 1,
                                  "callback_url": "https://bot.example.com/viber/callback/x"})
            outbound.append((out_id, n + 1, 2 * n + k if k else None, phone, "survey", step,
                             f"survey/{step}.txt", text, 206, payload, "sent", 0, 1, None,
                             message_id, 1, at + 20 * k + 2, at + 20 * k, at + 20 * k + 1,
                             "v1", None, None, "question" if k < 2 else None, "host/1/x",
                             at + 20 * k, None, None, None, None, 0, None))  # no SMS
            # fallback, no notice key, no campaign; not proactive, never held
        for k, (step, text) in enumerate((("name", f"User {n}"), ("rating", str(n % 5 + 1)))):
            inbound.append((2 * n + k + 1, f"seed-{n}-{k}", phone, int(at) + 20 * k + 10, text,
                            f"tracking_id:{10**9 + 3 * n + k}", at + 20 * k + 10, "handled",
                            "step", n + 1, 0, None, at + 20 * k + 10, "survey", step,
                            "ask" if k == 0 else "finish", "host/1/x"))  # its receiver
        for k, status in enumerate(("cancelled", "fired")):
            timers.append((2 * n + k + 1, n + 1, phone, "remind" if k == 0 else "expire",
                           "survey", "rating", at + 3600, status, None, at, at + 40, None))
    yield "conversations", conversations
    yield "outbound", outbound
    yield "inbound", inbound
    yield "timers", timers


def seed(path: Path, count: int) -> None:
    async def migrate() -> None:  # the schema exactly as botkit makes it
        store = SQLiteStore(path)
        await store.open()
        await store.close()

    asyncio.run(migrate())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")  # a bulk load: durability comes at the end
    conn.execute("PRAGMA cache_size = -200000")
    started = time.monotonic()
    for first in range(0, count, CHUNK):
        conn.execute("BEGIN")
        for table, values in rows(first, min(CHUNK, count - first)):
            marks = ",".join("?" * len(values[0]))
            conn.executemany(f"INSERT INTO {table} VALUES ({marks})", values)
        conn.execute("COMMIT")
        done = min(first + CHUNK, count)
        rate = done / (time.monotonic() - started)
        print(f"\r{done:,}/{count:,} conversations ({rate:,.0f}/s,"
              f" about {(count - done) / rate:,.0f}s left)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("--conversations", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.db.exists():
        print(f"{args.db} exists; seed a new file", file=sys.stderr)
        return 2
    seed(args.db, args.conversations)
    conn = sqlite3.connect(args.db)
    counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("conversations", "inbound", "outbound", "timers")}
    conn.close()
    size = args.db.stat().st_size
    print(json.dumps({"conversations": counts["conversations"],
                      "messages": counts["inbound"] + counts["outbound"],
                      "timers": counts["timers"], "bytes": size,
                      "bytes_per_conversation": size / max(counts["conversations"], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
