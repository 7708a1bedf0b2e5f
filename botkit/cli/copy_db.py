"""``run.py copy-db FROM TO``: move a database from SQLite into PostgreSQL, or back.

The copying itself is the storage floor's (``botkit.storage.copying``); this module reads
the two arguments, shows each table's progress on standard error and prints the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from botkit.errors import BotkitError

if TYPE_CHECKING:
    from botkit.storage.copying import TableCopy, TableCount

__all__ = ["add_copy_db_arguments", "copy_db"]


def add_copy_db_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="FROM",
                   help="the database to copy: a SQLite file, or a postgresql:// URL")
    p.add_argument("target", metavar="TO",
                   help="the empty database to copy into: a SQLite file (created when"
                        " missing), or a postgresql:// URL")


def copy_db(args: argparse.Namespace) -> int:
    from botkit.storage.copying import copy_database, count_rows, prepare, shown

    source, target = _database(args.source), _database(args.target)
    _refuse_missing(source)
    _refuse_same(source, target)

    async def run() -> list[TableCount]:
        await prepare(source)
        await prepare(target)
        copied = await copy_database(source, target, progress=Meter(sys.stderr))
        for plan in copied:
            _say_columns(plan)
        return await count_rows(target, copied)

    counts = asyncio.run(run())
    _print_counts(counts, shown(source), shown(target))
    differ = [c.table for c in counts if not c.same]
    if differ:
        print(f"error: the row counts of {', '.join(differ)} differ: TO keeps the rows"
              " copied; find what differs, then empty TO and run copy-db again",
              file=sys.stderr)
        return 1
    return 0


def _database(text: str) -> str | Path:
    """A URL as it is, anything else a SQLite file (as ``BOTKIT_DB`` is read)."""
    from botkit.storage.engines import is_postgres

    return text if is_postgres(text) else Path(text)


def _refuse_missing(source: str | Path) -> None:
    # Opening a missing file would create an empty database, and copy nothing from it.
    if isinstance(source, Path) and not source.is_file():
        raise BotkitError(f"FROM {source}: no such file; give the SQLite file to copy (e.g."
                          " botkit.db) or a postgresql:// URL")


def _refuse_same(source: str | Path, target: str | Path) -> None:
    same = (source.resolve() == target.resolve() if isinstance(source, Path)
            and isinstance(target, Path) else source == target)
    if same:
        raise BotkitError(f"FROM and TO are the same database ({source}): give TO a new"
                          " SQLite file or an empty PostgreSQL database")


class Meter:
    """Each table's progress, ``outbound: 5,000/12,000 rows``: rewritten in place on a
    terminal; elsewhere (a log) a line at most once a second, and always the table's last."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.clock = stream, clock
        self.tty = stream.isatty()
        self.shown_at = -1.0

    def __call__(self, table: str, done: int, total: int) -> None:
        last = done >= total
        if not (last or self.tty or (done and self.clock() - self.shown_at >= 1.0)):
            return
        self.shown_at = self.clock()
        line = f"{table}: {done:,}/{total:,} rows"
        if self.tty:
            print(f"\r{line}\x1b[K", file=self.stream, end="\n" if last else "", flush=True)
        else:
            print(line, file=self.stream, flush=True)


def _say_columns(plan: TableCopy) -> None:
    for column in plan.source_only:
        print(f"{plan.table}.{column}: only FROM has it, not copied", file=sys.stderr)
    for column in plan.target_only:
        print(f"{plan.table}.{column}: only TO has it, left empty", file=sys.stderr)


def _print_counts(counts: list[TableCount], source: str, target: str) -> None:
    print(f"{'table':<16}{'FROM':>12}{'TO':>12}")
    for c in counts:
        mark = "" if c.same else "  differs"
        print(f"{c.table:<16}{c.source:>12,}{c.target:>12,}{mark}")
    total = sum(c.target for c in counts)
    print(f"copied {total:,} rows from {source} to {target}")
