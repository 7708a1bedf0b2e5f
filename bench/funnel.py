"""What splitting an A/B-tested step by variant adds to a flow's report (``Store.funnel``).

    python bench/seed.py big.db --conversations 200000
    python bench/funnel.py big.db                  # SQLite, runs alternated
    python bench/funnel.py big.db --postgres postgresql://root@127.0.0.1:5432/test

The seeded surveys' rating questions are split between two templates (odd and even message
ids), and the seed's statistics are dropped (botkit never runs ANALYZE on SQLite, so a
user's database has none). With ``--postgres`` the database is first copied into an empty
schema of that server (``run.py copy-db``), then the same runs are made there. Prints each
run's seconds, and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from botkit.storage.base import Store  # noqa: E402
from botkit.storage.engines import store_for  # noqa: E402

TESTED = {"rating": ("survey/ask_rating.txt", "survey/ask_rating_b.txt")}


def prepared(seeded: Path) -> Path:
    """A copy of the seeded database with its rating questions split, without statistics."""
    copy = seeded.with_name(seeded.stem + "-ab.db")
    shutil.copyfile(seeded, copy)
    db = sqlite3.connect(copy)
    db.execute("UPDATE outbound SET template = CASE WHEN id % 2 = 1 THEN ? ELSE ? END"
               " WHERE step = 'rating'", TESTED["rating"])
    db.execute("DROP TABLE IF EXISTS sqlite_stat1")
    db.commit()
    db.close()
    return copy


async def runs(store: Store, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"funnel": [], "funnel + split": []}
    for n in range(rounds):
        for label, variants in (("funnel", None), ("funnel + split", TESTED)):
            started = time.perf_counter()
            report = await store.funnel("survey", variants=variants)
            times[label].append(time.perf_counter() - started)
            split = report.get("variants", {}).get("rating", {})
            reached = {t: f["reached"] for t, f in split.items()}
            print(f"  round {n + 1}: {label}: {times[label][-1]:.2f} s"
                  f"{f' {reached}' if reached else ''}", flush=True)
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("db", type=Path, help="a database bench/seed.py filled")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", help="also on this PostgreSQL server (a schema of its own)")
    args = parser.parse_args()
    path = prepared(args.db)
    targets = [("SQLite", str(path))]
    if args.postgres:
        schema = f"bench_{secrets.token_hex(4)}"
        url = f"{args.postgres}{'&' if '?' in args.postgres else '?'}search_path={schema}"
        subprocess.run(["psql", args.postgres, "-qc", f"CREATE SCHEMA {schema}"], check=True)
        print(f"copying {path} into PostgreSQL schema {schema}", flush=True)
        subprocess.run([sys.executable, "run.py", "copy-db", str(path), url], check=True,
                       cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL)
        targets.append(("PostgreSQL", url))
    try:
        for name, db in targets:
            store = store_for(db)
            await store.open()
            print(name, flush=True)
            times = await runs(store, args.rounds)
            await store.close()
            print(name + ": " + ", ".join(f"{label} median {statistics.median(t):.2f} s"
                                          for label, t in times.items()), flush=True)
    finally:
        path.unlink()
        if args.postgres:
            subprocess.run(["psql", args.postgres, "-qc", "SET client_min_messages = warning;"
                            f" DROP SCHEMA {schema} CASCADE"], check=False)


if __name__ == "__main__":
    asyncio.run(main())
