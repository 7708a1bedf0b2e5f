"""``run.py optouts [list|add|remove]``: the suppression list (docs/consent.md).

``optouts`` lists the phones that opted out and counts them (``--csv FILE`` exports them);
``optouts add`` puts phones on the list (an import from another system: their open
conversations close, nothing more is sent to them); ``optouts remove`` takes them off. Each
change is recorded in ``consent_events`` with its source, ``cli``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any, Literal, TextIO

from botkit.cli.common import count, iso, settings_of, with_store
from botkit.core.records import ConsentChange

__all__ = ["add_optout_commands"]


def add_optout_commands(parser: argparse.ArgumentParser, db: argparse.ArgumentParser) -> None:
    """The ``optouts`` command's subcommands, on ``parser``; ``db`` holds the --db flag."""
    parser.add_argument("--csv", metavar="FILE",
                        help="write the list as CSV to FILE (- for standard output)")
    parser.set_defaults(run=_list)
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    p = sub.add_parser("list", parents=[db], help="list and count the phones that opted out")
    p.add_argument("--csv", metavar="FILE",
                   help="write the list as CSV to FILE (- for standard output)")
    p.set_defaults(run=_list)
    for action, what in (("add", "put phones on the list: nothing more is sent to them"),
                         ("remove", "take phones off the list: they get messages again")):
        p = sub.add_parser(action, parents=[db], help=what)
        p.add_argument("phones", nargs="*", metavar="PHONE",
                       help="phone numbers, as people write them")
        p.add_argument("--phones", dest="phones_file", metavar="FILE.csv",
                       help="a CSV with a 'phone' column (or the phones in the first column)")
        if action == "add":
            p.add_argument("--keyword", help="the word the phone wrote elsewhere, if known")
        p.set_defaults(run=_add if action == "add" else _remove)


def _list(args: argparse.Namespace) -> int:
    async def job(store: Any) -> int:
        entries = await store.suppressions()
        if args.csv:
            out: TextIO = sys.stdout if args.csv == "-" else open(
                args.csv, "w", newline="", encoding="utf-8")
            try:
                writer = csv.writer(out)
                writer.writerow(["phone", "opted_out_at", "keyword", "source", "message"])
                for e in entries:
                    writer.writerow([e.phone, iso(e.at), e.keyword or "", e.source,
                                     e.inbound_id or ""])
            finally:
                if out is not sys.stdout:
                    out.close()
            if args.csv != "-":
                print(f"wrote {count(len(entries), 'phone')} to {args.csv}", file=sys.stderr)
            return 0
        print(f"{'phone':<16} {'opted out':<26} how")
        for e in entries:
            how = f"wrote {e.keyword!r}" if e.keyword else f"added ({e.source})"
            print(f"{e.phone:<16} {iso(e.at):<26} {how}")
        print(f"{count(len(entries), 'phone')} on the suppression list")
        return 0

    return with_store(args, job)


def _add(args: argparse.Namespace) -> int:
    return _change(args, "opt_out")


def _remove(args: argparse.Namespace) -> int:
    return _change(args, "opt_in")


def _change(args: argparse.Namespace, kind: Literal["opt_out", "opt_in"]) -> int:
    from botkit.cli.phone_lists import PhoneList

    listed = PhoneList.read(args.phones, Path(args.phones_file) if args.phones_file else None,
                            settings_of(args).phone_region)
    for problem in listed.rejected:
        print(f"rejected {problem}", file=sys.stderr)
    if not listed.phones:
        print("error: no phone numbers to use: give PHONE arguments or --phones FILE.csv",
              file=sys.stderr)
        return 2

    async def job(store: Any) -> int:
        changed = 0
        for phone in listed.phones:
            changed += await store.set_consent(ConsentChange(
                phone=phone, kind=kind, keyword=getattr(args, "keyword", None), source="cli"),
                time.time())
        same = len(listed.phones) - changed
        if kind == "opt_out":
            print(f"added {count(changed, 'phone')} to the suppression list"
                  + (f" ({same} already on it)" if same else ""))
        else:
            print(f"removed {count(changed, 'phone')} from the suppression list"
                  + (f" ({same} not on it)" if same else ""))
        return 1 if listed.rejected else 0

    return with_store(args, job)

