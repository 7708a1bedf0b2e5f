"""The commands that read what is stored: export, conversations, stats, messages."""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import sys
import time
from typing import Any, TextIO

from botkit.cli.common import count, flows_of, iso, phone_arg, with_store
from botkit.core.experiments import VariantFigures, by_variant

__all__ = ['conversations', 'export', 'messages', 'stats']

log = logging.getLogger("botkit.cli")


def export(args: argparse.Namespace) -> int:
    async def job(store: Any) -> int:
        convs = await store.conversations(flow=args.flow, limit=10**9)
        if not convs:
            flows_of(args)[args.flow]  # noqa: B018 - a typo gets "did you mean", not an empty file
        keys = list(dict.fromkeys(k for c in convs for k in c.state))
        out: TextIO = open(args.csv, "w", newline="", encoding="utf-8") if args.csv else sys.stdout
        try:
            writer = csv.writer(out)
            writer.writerow(["conversation", "phone", "status", "step", "started", "updated",
                             *keys])
            for c in sorted(convs, key=lambda c: c.id):
                writer.writerow([c.id, c.phone, c.status.value, c.step, iso(c.created_at),
                                 iso(c.updated_at), *(_cell(c.state.get(k)) for k in keys)])
        finally:
            out.flush()
            if args.csv:
                out.close()
                print(f"wrote {count(len(convs), 'conversation')} to {args.csv}", file=sys.stderr)
        return 0

    return with_store(args, job)


def conversations(args: argparse.Namespace) -> int:
    if args.by_version:
        return _by_version(args)

    async def job(store: Any) -> int:
        phone = phone_arg(args, args.phone) if args.phone else None
        convs = await store.conversations(phone=phone, flow=args.flow, limit=args.limit)
        if not convs and args.flow:
            flows_of(args)[args.flow]  # noqa: B018 - a typo gets "did you mean", as export does
        now = time.time()
        print(f"{'id':>6}  {'phone':<16} {'flow':<12} {'step':<16} {'status':<11} last activity")
        for c in convs:
            status = "expired" if c.expired(now) else c.status.value
            print(f"{c.id:>6}  {c.phone:<16} {c.flow:<12} {c.step:<16} {status:<11}"
                  f" {iso(c.updated_at)}")
        if not convs:
            print("(no conversations)")
        return 0

    return with_store(args, job)


def _by_version(args: argparse.Namespace) -> int:
    flows = flows_of(args)

    async def job(store: Any) -> int:
        rows = await store.versions()
        print(f"{'flow':<12} {'version':<14} {'open':>6} {'total':>7}")
        for row in rows:
            flow = flows.get(row["flow"])
            mark = " (current)" if flow and flow.version_id == row["version"] else (
                "" if flow else " (flow no longer loaded)")
            print(f"{row['flow']:<12} {row['version']:<14} {row['open']:>6} {row['total']:>7}"
                  f"{mark}")
        if not rows:
            print("(no conversations)")
        return 0

    return with_store(args, job)


def stats(args: argparse.Namespace) -> int:
    flows = flows_of(args)

    async def job(store: Any) -> int:
        flow = flows.get(args.flow)
        tested = flow.variants if flow else {}
        funnel = await store.funnel(args.flow, variants=tested)
        if not funnel["started"]:
            flows[args.flow]  # noqa: B018 - a typo gets "did you mean"
        order = list(flow.steps) if flow else []
        steps = order + sorted(set(funnel["steps"]) - set(order))
        started, completed = funnel["started"], funnel["completed"]
        rate = f"{100 * completed / started:.0f}%" if started else "-"
        print(f"{args.flow}: {started} conversations started, {completed} completed ({rate})")
        columns = ("sent", "delivered", "answered", "reasked", "timed_out", "dropped")
        print(f"{'step':<16}" + "".join(f"{c.replace('_', ' '):>11}" for c in columns)
              + f"{'median answer':>15}")
        for name in steps:
            row = funnel["steps"].get(name, {})
            delays = sorted(row.get("delays", []))
            median = _duration(statistics.median(delays)) if delays else "-"
            print(f"{name:<16}" + "".join(f"{row.get(c, 0):>11}" for c in columns)
                  + f"{median:>15}")
        for name, templates in tested.items():
            _print_variants(name, by_variant(templates, funnel["variants"].get(name, {})))
        return 0

    return with_store(args, job)


def _print_variants(step: str, rows: list[VariantFigures]) -> None:
    """One A/B-tested step's figures by variant, each compared with the control (the
    first), per phone: a phone counts once, in the variant it was given."""
    print(f"\n{step}: A/B test of its prompt, by variant (completion: two-proportion z-test"
          f" against {rows[0].template})")
    width = max(16, *(len(r.template) + 2 for r in rows))
    columns = ("reached", "answered", "went on", "gave up", "timed out")
    print(f"{'variant':<{width}}" + "".join(f"{c:>10}" for c in columns)
          + f"{'completed':>16}{'median answer':>15}  compared")
    for r in rows:
        rate = f"{r.completed} ({100 * r.completion:.0f}%)" if r.completion is not None else "0"
        median = _duration(r.median_answer) if r.median_answer is not None else "-"
        print(f"{r.template:<{width}}" + "".join(f"{n:>10}" for n in (
            r.reached, r.answered, r.went_on, r.gave_up, r.timed_out))
            + f"{rate:>16}{median:>15}  {_compared(r, r is rows[0])}")


def _compared(row: VariantFigures, control: bool) -> str:
    if control:
        return "control"
    # None: it or the control has no conversations yet.
    return "-" if row.comparison is None else row.comparison.summary


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def messages(args: argparse.Namespace) -> int:
    async def job(store: Any) -> int:
        phone = phone_arg(args, args.phone)
        entries = await store.history(phone, args.limit)
        for entry in entries:
            who = "user" if entry.direction == "in" else "bot "
            text = entry.text.replace("\n", "\n" + " " * 33)
            print(f"{iso(entry.at)}  {who}  {text}")
            print(f"{'':27}[{entry.detail}]")
        if not entries:
            print(f"(no messages with {phone})")
        return 0

    return with_store(args, job)


def _cell(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value
