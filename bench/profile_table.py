"""Where botkit's server spends its CPU at saturation: a table from a py-spy sample.

    python bench/run.py --rounds 1 --py-spy spy.txt     # samples the botkit server (py-spy)
    python bench/profile_table.py spy.txt --thread-ms MainThread=0.19 --thread-ms botkit-db=0.13

``--thread-ms`` gives each thread's CPU per callback as run.py measured it from /proc (the
event loop's thread, and the other threads: the database's), so each share is shown in
microseconds of CPU; py-spy's samples only say how a thread's time divides.

Each sample is charged to the innermost frame that says what the work is (its library or
botkit module), per thread: the event loop's (MainThread) and the database thread's
(botkit-db). py-spy leaves idle threads out, so the samples are CPU time, except that a thread waiting in
``fsync`` counts as busy: the database thread's split by job (printed last) overstates the
groups' COMMITs.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

# The first pattern that matches a frame's file names its category.
CATEGORIES = [
    (r"aiohttp/(web_|http_parser|http_writer|streams|base_protocol|helpers)", "HTTP server (aiohttp)"),
    (r"aiohttp/(client|connector|tcp_helpers|multipart|payload)", "provider POST (aiohttp client)"),
    (r"pydantic", "pydantic validation"),
    (r"json/|orjson", "JSON"),
    (r"jinja2|markupsafe|runtime/templates\.py", "rendering (Jinja)"),
    (r"sqlite_utils|sqlite3|storage/", "SQLite and the store"),
    (r"runtime/(engine|engine_base|proactive|events)\.py|core/", "the turn (engine, core)"),
    (r"runtime/composer\.py|models\.py", "composing replies"),
    (r"runtime/sender\.py", "the sender"),
    (r"runtime/dispatch\.py", "the dispatcher"),
    (r"web/server\.py|web/guard\.py", "callback handler"),
    (r"web/client\.py", "provider client (botkit)"),
    (r"logging/", "logging"),
    (r"asyncio/|uvloop|selectors|threading|queue\.py|concurrent/", "event loop, tasks, threads"),
]
_FRAME = re.compile(r"\(([^()]*):\d+\)$")


def category(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        match = _FRAME.search(frame)
        where = match.group(1) if match else frame
        for pattern, name in CATEGORIES:
            if re.search(pattern, where):
                return name
    return "other"


def samples(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(thread name, frames outermost first, count) for each line of py-spy's raw output."""
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, *frames = stack.split(";")
        yield thread.split(": ", 1)[-1], frames, int(count)


def read(path: Path) -> dict[str, Counter[str]]:
    by_thread: dict[str, Counter[str]] = {}
    for name, frames, count in samples(path):
        by_thread.setdefault(name, Counter())[category(frames)] += count
    return by_thread


_JOB = re.compile(r"^(\w+)\._?(\w+) \(.*botkit/storage/")


def job_of(frames: list[str]) -> str:
    """The database job a sample of the database thread belongs to: the first store method
    the thread called (``Turns._record_and_route``, ``Turns._commit``, ...), or the group's
    BEGIN / COMMIT, or the thread waiting for its next jobs."""
    for n, frame in enumerate(frames):
        if "DatabaseThread._call" in frame and n + 1 < len(frames):
            match = _JOB.match(frames[n + 1])
            return match.group(2) if match else frames[n + 1].split(" (")[0]
    for frame in frames:
        if "DatabaseThread._finish" in frame:
            return "answering the event loop (call_soon_threadsafe)"
    for frame in frames:
        if "DatabaseThread._group" in frame:
            line = int(frame.rsplit(":", 1)[-1].rstrip(")"))
            return "the group's COMMIT (WAL frames, fsync)" if line in _COMMIT_LINES else (
                "the group's BEGIN IMMEDIATE")
    return "the thread's loop (taking jobs)"


# The lines of db_thread.py that commit (or roll back) a group, as py-spy names them.
_COMMIT_LINES = {n for n, text in enumerate(
    (Path(__file__).resolve().parents[1] / "botkit/storage/db_thread.py").read_text()
    .splitlines(), 1) if "self._commit()" in text or "self._rollback()" in text}


def jobs(path: Path, thread: str = "botkit-db") -> Counter[str]:
    counts: Counter[str] = Counter()
    for name, frames, count in samples(path):
        if name == thread:
            counts[job_of(frames)] += count
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("samples", type=Path)
    parser.add_argument("--thread-ms", action="append", default=[], metavar="THREAD=MS",
                        help="a thread's CPU ms per callback (run.py's table)")
    args = parser.parse_args()
    thread_ms = {k: float(v) for k, v in (t.split("=", 1) for t in args.thread_ms)}
    by_thread = read(args.samples)
    print("| thread | where | share of the thread's samples | us of CPU per callback |")
    print("|---|---|---|---|")
    for thread, counts in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(counts.values())
        for name, n in counts.most_common():
            ms = thread_ms.get(thread)
            us = f"{1000 * ms * n / total:.0f}" if ms is not None else "-"
            print(f"| {thread} | {name} | {100 * n / total:.1f}% | {us} |")
    by_job = jobs(args.samples)
    if by_job:  # the database thread's time by job
        total = sum(by_job.values())
        ms = thread_ms.get("botkit-db")
        print("\n| database job | share of the database thread's samples | us of CPU per callback |")
        print("|---|---|---|")
        for name, n in by_job.most_common():
            us = f"{1000 * ms * n / total:.0f}" if ms is not None else "-"
            print(f"| {name} | {100 * n / total:.1f}% | {us} |")


if __name__ == "__main__":
    main()
