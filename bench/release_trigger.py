"""What the trigger ``inbound_releases_held`` costs each callback on PostgreSQL.

    python bench/release_trigger.py   # about a minute; BOTKIT_BENCH_POSTGRES names the server

Single-row inbound inserts (as one callback makes when the server is idle), 2,000 a run, in
a schema of its own with botkit's migrations and a 20,000-row outbound (1 in 100 queued),
alternating runs with the trigger on and off. Prints the medians in microseconds an insert.
Loopback only.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import asyncpg  # noqa: E402

from botkit.storage.postgres.schema import MIGRATIONS  # noqa: E402

PG_URL = os.environ.get("BOTKIT_BENCH_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
INSERT = ("INSERT INTO inbound (message_token, phone, time, text, received_at, received_by)"
          " VALUES ($1, $2, 1, 'hi', 0, 'bench')")


async def main(runs: int = 5, per_run: int = 2000) -> None:
    conn = await asyncpg.connect(PG_URL)
    schema = f"bench_trigger_{secrets.token_hex(4)}"
    await conn.execute(f"CREATE SCHEMA {schema}; SET search_path TO {schema}")
    try:
        for _, sql in MIGRATIONS:
            await conn.execute(sql)
        await conn.execute(
            "INSERT INTO outbound (phone, template, text, message_type, payload, created_at,"
            " status) SELECT '38090' || lpad((g % 5000)::text, 7, '0'), 't', 't', 206, '{}',"
            " 0, CASE WHEN g % 100 = 0 THEN 'queued' ELSE 'sent' END"
            " FROM generate_series(1, 20000) AS g")
        await conn.execute("ANALYZE")
        figures: dict[str, list[float]] = {"with the trigger": [], "without": []}
        n = 0
        for run in range(runs):
            for kind, figures_of in figures.items():
                on = "ENABLE" if kind == "with the trigger" else "DISABLE"
                await conn.execute(f"ALTER TABLE inbound {on} TRIGGER inbound_releases_held")
                started = time.perf_counter()
                for _ in range(per_run):
                    n += 1
                    await conn.execute(INSERT, f"bench-{n}", f"38090{n % 5000:07d}")
                figures_of.append((time.perf_counter() - started) / per_run * 1e6)
            print(f"run {run + 1}/{runs}", file=sys.stderr)
        for kind, values in figures.items():
            print(f"{kind}: median {statistics.median(values):.0f} us an insert"
                  f" (runs: {', '.join(f'{v:.0f}' for v in values)})")
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
