"""``run.py export-phone PHONE``: everything kept about a phone, for a subject-access
request; ``run.py forget PHONE``: erase it (docs/consent.md)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from botkit.cli.common import count, iso, phone_arg, with_store

__all__ = ["export_phone", "forget"]


def export_phone(args: argparse.Namespace) -> int:
    """``run.py export-phone PHONE``: everything kept about a phone, for a subject-access
    request, as one JSON document (``--out FILE``, else standard output) and, with
    ``--csv DIR``, one CSV file per table."""
    phone = phone_arg(args, args.phone)

    async def job(store: Any) -> int:
        tables = await store.phone_data(phone)
        document = {"phone": phone, "exported_at": iso(time.time()),
                    "times": "unix seconds (UTC)",
                    "tables": {t: [_decoded(r) for r in rows] for t, rows in tables.items()}}
        text = json.dumps(document, ensure_ascii=False, indent=2, default=str)
        if args.out:
            Path(args.out).write_text(text + "\n", encoding="utf-8")
        else:
            print(text)
        if args.csv:
            folder = Path(args.csv)
            folder.mkdir(parents=True, exist_ok=True)
            for table, rows in tables.items():
                with (folder / f"{table}.csv").open("w", newline="", encoding="utf-8") as f:
                    writer = csv.writer(f)
                    if rows:
                        writer.writerow(rows[0].keys())
                        writer.writerows([v for v in r.values()] for r in rows)
        total = sum(len(rows) for rows in tables.values())
        kept = ", ".join(f"{count(len(rows), 'row')} of {t}" for t, rows in tables.items()
                         if rows) or "nothing"
        print(f"{phone}: {count(total, 'row')} kept ({kept})"
              + (f"; written to {args.out}" if args.out else "")
              + (f"; CSV files in {args.csv}" if args.csv else ""), file=sys.stderr)
        return 0

    return with_store(args, job)


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """A row with its JSON columns (a conversation's state, a message's payload, a status
    callback's body) as JSON, not as text."""
    out = dict(row)
    for column in ("state", "payload", "body"):
        value = out.get(column)
        if isinstance(value, str):
            try:
                out[column] = json.loads(value)
            except ValueError:
                pass
    return out


def forget(args: argparse.Namespace) -> int:
    """``run.py forget PHONE``: erase what is kept about a phone, in one transaction, and say
    what went. Asks first, unless ``--yes``."""
    phone = phone_arg(args, args.phone)
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"error: forgetting {phone} cannot be undone: pass --yes to confirm",
                  file=sys.stderr)
            return 2
        answer = input(f"erase every conversation and message of {phone}? This cannot be"
                       " undone [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing erased", file=sys.stderr)
            return 1

    async def job(store: Any) -> int:
        removed = await store.forget(phone, time.time())
        gone = ", ".join(f"{count(n, 'row')} of {t}" for t, n in removed.items() if n)
        kept = await store.suppression(phone)
        print(f"forgot {phone}: removed {gone or 'nothing (nothing was kept)'}")
        print("kept: keyed hashes of its message tokens (a late duplicate is still"
              " recognised)" + ("; its entry on the suppression list (nothing is sent to"
                                " it)" if kept else ""))
        return 0

    return with_store(args, job)
