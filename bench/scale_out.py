"""The scale-out benchmark: botkit on PostgreSQL against botkit on SQLite, and 1-3 processes
on one PostgreSQL database, in the same run; then a campaign sent by two processes.

    python bench/scale_out.py                  # the full run (about 10 minutes)
    python bench/scale_out.py --smoke          # a few seconds, to keep it working (CI)

Throughput: the load process (bench/load.py: the fake provider and the simulated users,
pinned to CPU 1) posts callbacks to the servers in turn, so a phone's consecutive messages
reach different processes. The botkit servers share CPU 0; PostgreSQL (the machine's
cluster, on a schema of the run's own) runs where the kernel puts it. Each phase samples
the CPU time of the servers and of every ``postgres`` process from /proc. The setups take
turns (``--rounds``): sqlite x1, postgres x1, postgres x2, postgres x3, ...; each ratio
compares runs of the same round.

Campaign: ``run.py start bench5 --phones FILE`` twice at once on the same phones, on one
PostgreSQL database, with ``BOTKIT_SEND_RATE``: every phone must reach the provider once
(the second process skips a phone the first started, and both send), and the provider
must never see more than the rate in any one second.

With two cores here, several processes cannot add CPU: the table gives the measured costs
per callback, and the projection for N machines from them. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import unused_port

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))  # bench/run.py and campaign.py, not the project's run.py
from campaign import KEY, Provider

from run import SECRET, cpu_seconds, pinned

PG_URL = os.environ.get("BOTKIT_BENCH_POSTGRES", "postgresql://root@127.0.0.1:5432/test")


def postgres_cpu() -> float:
    """CPU seconds of every process of the PostgreSQL cluster (backends, WAL writer, ...)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != "postgres":
                continue
            total += cpu_seconds(int(proc.name))
        except (OSError, ValueError):
            continue  # it ended meanwhile
    return total


class Schema:
    """A schema of the run's own in the PostgreSQL database, dropped afterwards."""

    def __init__(self) -> None:
        self.name = f"bench_{secrets.token_hex(4)}"
        self.url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}search_path={self.name}"

    def _sql(self, sql: str) -> None:
        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(PG_URL)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(run())

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        import asyncpg

        async def run() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(self.url)
            try:
                return [tuple(r) for r in await conn.fetch(sql)]
            finally:
                await conn.close()

        return asyncio.run(run())

    def __enter__(self) -> Schema:
        self._sql(f"CREATE SCHEMA {self.name}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._sql(f"DROP SCHEMA {self.name} CASCADE")


def run_setup(engine: str, servers: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """One run of ``servers`` botkit processes on ``engine`` under the load; its figures."""
    ports, provider_port = [unused_port() for _ in range(servers)], unused_port()
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    provider = f"http://127.0.0.1:{provider_port}"
    tmp.mkdir(parents=True, exist_ok=True)
    with (Schema() if engine == "postgres" else _NoSchema(tmp)) as db:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOTKIT_")}
        env["BOTKIT_QUIET_HOURS"] = "off"  # the figures must not depend on the hour
        env.update(BOTKIT_API_KEY=KEY, BOTKIT_API_URL=provider, BOTKIT_DB=db.url,
                   BOTKIT_CALLBACK_SECRET=SECRET, BOTKIT_DB_POOL=str(args.pool))
        load_cmd = [sys.executable, str(BENCH / "load.py"), "--provider-port",
                    str(provider_port), "--key", KEY, "--users", str(args.users),
                    "--rate", str(args.rate), "--seconds", str(args.seconds),
                    "--warmup", str(args.warmup), "--think-seconds", str(args.think_seconds)]
        for url in urls:
            load_cmd += ["--server", url, "--callback", f"{url}/viber/callback/{SECRET}"]
        load = subprocess.Popen(pinned(1, load_cmd), cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)
        procs = []
        for n, (port, url) in enumerate(zip(ports, urls, strict=True)):
            with (tmp / f"{engine}{servers}-{n}.log").open("w") as log:
                procs.append(subprocess.Popen(
                    pinned(0, [sys.executable, "run.py", "serve", "--bots", str(BENCH / "bots"),
                               "--templates", str(BENCH / "templates")]),
                    cwd=ROOT, env=env | {"BOTKIT_PORT": str(port), "BOTKIT_PUBLIC_URL": url},
                    stdout=log, stderr=subprocess.STDOUT))
            if n == 0:
                time.sleep(1.0)  # the first migrates; the others find the schema made
        marks: dict[str, tuple[float, float]] = {}
        result: dict[str, Any] = {"engine": engine, "servers": servers}
        try:
            assert load.stdout is not None
            for line in load.stdout:
                if line.startswith("PHASE"):
                    _, name, edge = line.split()
                    marks[f"{name}_{edge}"] = (sum(cpu_seconds(p.pid) for p in procs),
                                               postgres_cpu())
                elif line.startswith("{"):
                    result.update(json.loads(line))
            load.wait(60)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
            if load.poll() is None:
                load.kill()
    callbacks = result["saturation"]["callbacks_per_s"] * args.seconds
    (bot0, pg0), (bot1, pg1) = marks["saturation_start"], marks["saturation_end"]
    result["botkit_ms"] = 1000 * (bot1 - bot0) / callbacks
    result["postgres_ms"] = 1000 * (pg1 - pg0) / callbacks if engine == "postgres" else 0.0
    return result


class _NoSchema:
    """The SQLite file of a run (the same interface as ``Schema``)."""

    def __init__(self, tmp: Path) -> None:
        self.url = str(tmp / "bench.db")

    def __enter__(self) -> _NoSchema:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Medians per setup, and each PostgreSQL setup's ratio to SQLite in the same round."""
    base = results["sqlite x1"]
    rows = ["| setup | callbacks/s | vs SQLite (same round) | botkit CPU ms/callback |"
            " PostgreSQL CPU ms/callback | e2e p99 at fixed rate ms | ack p99 ms |"
            " load's core |",
            "|---|---|---|---|---|---|---|---|"]
    for setup, runs in results.items():
        rate = [r["saturation"]["callbacks_per_s"] for r in runs]
        ratios = [r["saturation"]["callbacks_per_s"] / b["saturation"]["callbacks_per_s"]
                  for r, b in zip(runs, base, strict=True)]
        ratio = (f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
                 if setup != "sqlite x1" else "1")
        rows.append(
            f"| {setup} | {statistics.median(rate):,.0f} | {ratio} |"
            f" {statistics.median(r['botkit_ms'] for r in runs):.3f} |"
            f" {statistics.median(r['postgres_ms'] for r in runs):.3f} |"
            f" {statistics.median(r['rate']['e2e_p99_ms'] for r in runs):.1f} |"
            f" {statistics.median(r['rate']['ack_p99_ms'] for r in runs):.1f} |"
            f" {statistics.median(r['saturation']['load_cpu_share'] for r in runs):.0%} |")
    return "\n".join(rows)


def projection(results: dict[str, list[dict[str, Any]]]) -> str:
    """What N machines would do, from the measured costs per callback."""
    runs = results.get("postgres x1")
    if not runs:
        return ""
    bot = statistics.median(r["botkit_ms"] for r in runs)
    pg = statistics.median(r["postgres_ms"] for r in runs)
    lines = [f"projection from postgres x1: a callback costs {bot:.3f} ms of a botkit core and"
             f" {pg:.3f} ms of PostgreSQL's CPU",
             "| botkit machines (1 core each) | callbacks/s if botkit's CPU bounds |"
             " PostgreSQL cores needed at that rate |", "|---|---|---|"]
    for n in (1, 2, 4, 8, 16):
        rate = n * 1000 / bot
        lines.append(f"| {n} | {rate:,.0f} | {rate * pg / 1000:.1f} |")
    lines.append(f"one PostgreSQL core carries at most {1000 / pg:,.0f} callbacks/s at this cost")
    return "\n".join(lines)


def run_campaign(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Two ``run.py start`` processes at once on the same phones, on one database."""
    phones = tmp / "phones.csv"
    phones.write_text("phone\n" + "".join(f"38050{n:07d}\n" for n in range(args.campaign)))
    provider = Provider(first=True)  # it stands for another machine: see Provider
    with Schema() as db:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOTKIT_")}
        env["BOTKIT_QUIET_HOURS"] = "off"  # the figures must not depend on the hour
        env.update(BOTKIT_API_KEY=KEY, BOTKIT_API_URL=provider.url, BOTKIT_DB=db.url,
                   BOTKIT_SEND_RATE=str(args.campaign_rate), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "run.py", "start", "bench5", "--phones", str(phones),
               "--bots", str(BENCH / "bots"), "--templates", str(BENCH / "templates")]
        started = time.perf_counter()
        try:
            first = subprocess.Popen(pinned(0, cmd), cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(1.0)  # it migrates the schema; the second finds it made
            second = subprocess.Popen(pinned(0, cmd), cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            outs = [p.communicate(timeout=3600) for p in (first, second)]
            seconds = time.perf_counter() - started
            got = provider.received(times=True)
            # The senders' side: when each sent message was claimed, at most LOOKAHEAD
            # (50 ms) before its start with a rate set.
            claimed = [t for (t,) in db.rows("SELECT claimed_at FROM outbound"
                                              " WHERE status = 'sent'")]
        finally:
            provider.stop()
    times = sorted(got.pop("times"))
    most, busiest_at = busiest_second(times)
    most_claimed, _ = busiest_second(sorted(claimed))
    # The provider's own stalls: its longest pause between two receipts (it shares the two
    # cores), after which what waited in its socket is received at once.
    gap = max((b - a for a, b in zip(times, times[1:])), default=0.0)
    sent = [_sent(out) for out, _ in outs]
    return {"phones": args.campaign, "rate_set": args.campaign_rate, "seconds": seconds,
            "rate_reached": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0,
            "most_in_any_second": most, "busiest_second_at": busiest_at,
            "most_claimed_in_any_second": most_claimed,
            "longest_pause_at_provider": gap, "sent_by_each": sent,
            "exits": [first.returncode, second.returncode], **got}


def busiest_second(times: list[float]) -> tuple[int, float]:
    """The most of ``times`` (sorted) in any one-second window, and when it began."""
    most, j, at = 0, 0, 0.0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        if i - j + 1 > most:
            most, at = i - j + 1, times[j] - times[0]
    return most, at


def _sent(summary: str) -> int:
    """Messages a ``run.py start`` says it sent (``... sent 1,234 messages in ...``)."""
    for line in summary.splitlines():
        if " sent " in line:
            return int(line.split(" sent ")[1].split()[0].replace(",", ""))
    return -1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--think-seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool", type=int, default=10, help="BOTKIT_DB_POOL (default 10)")
    parser.add_argument("--processes", default="1,2,3",
                        help="PostgreSQL setups: how many server processes (default 1,2,3)")
    parser.add_argument("--campaign", type=int, default=100_000,
                        help="phones of the two-process campaign (0: none; default 100,000)")
    parser.add_argument("--campaign-rate", type=float, default=500.0,
                        help="its BOTKIT_SEND_RATE (default 500)")
    args = parser.parse_args()
    if args.smoke:
        args.users, args.seconds, args.warmup, args.rate, args.rounds = 20, 1.0, 0.5, 20.0, 1
        args.think_seconds, args.processes, args.campaign = 1.0, "2", 300
        args.campaign_rate = 200.0
    setups = [("sqlite", 1)] + [("postgres", int(n)) for n in args.processes.split(",")]
    print(f"{time.strftime('%Y-%m-%d')}, nproc {os.cpu_count()}; servers on CPU 0, load on"
          f" CPU 1, PostgreSQL unpinned; {args.users} users, {args.seconds:.0f}s phases;"
          f" pool {args.pool}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {f"{e} x{n}": [] for e, n in setups}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for engine, servers in setups:
                result = run_setup(engine, servers, args, Path(tmp) / f"{r}")
                results[f"{engine} x{servers}"].append(result)
                print(f"  round {r + 1} {engine} x{servers}:"
                      f" {result['saturation']['callbacks_per_s']:.0f} callbacks/s, botkit"
                      f" {result['botkit_ms']:.3f} + PostgreSQL {result['postgres_ms']:.3f} ms"
                      f" CPU each; load at {result['saturation']['load_cpu_share']:.0%}",
                      flush=True)
        if args.rounds:
            print(table(results))
            print(projection(results))
        campaign = run_campaign(args, Path(tmp)) if args.campaign else None
    if campaign is not None:
        print(f"campaign: {campaign['phones']:,} phones by 2 processes at"
              f" BOTKIT_SEND_RATE={campaign['rate_set']:.0f}: {campaign['seconds']:.0f} s,"
              f" {campaign['rate_reached']:.0f}/s reached, at most"
              f" {campaign['most_in_any_second']} in any second (the one"
              f" {campaign['busiest_second_at']:.1f} s in; the provider's longest pause"
              f" between two receipts {campaign['longest_pause_at_provider'] * 1000:.0f} ms,"
              f" its longest garbage collection {campaign['gc_longest'] * 1000:.0f} ms;"
              f" the senders claimed at most {campaign['most_claimed_in_any_second']} in any"
              " second);"
              f" the provider got"
              f" {campaign['messages']:,} messages for {campaign['phones']:,} phones"
              f" ({campaign['doubled']} doubled); sent by each: {campaign['sent_by_each']}")
    print(json.dumps({"throughput": results, "campaign": campaign}))
    bad = any(r["errors"] or r["unexpected_replies"] for runs in results.values() for r in runs)
    if campaign is not None:
        bad = bad or campaign["doubled"] or campaign["phones"] != campaign["messages"] or (
            campaign["most_in_any_second"] > campaign["rate_set"]) or any(campaign["exits"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
