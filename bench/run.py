"""The benchmark: botkit against a bare aiohttp baseline, in the same run, on this machine.

    python bench/run.py                 # the full run (about 3 minutes)
    python bench/run.py --smoke         # a few seconds, to keep it working (CI)

For each server it starts the load process (the fake provider and the simulated users,
bench/load.py, on uvloop when installed) pinned to CPU 1 and the server pinned to CPU 0,
measures saturation throughput, latency at a fixed rate and with users who think 1-3 s
between answers, samples the server's CPU time and peak RSS from /proc, and prints a table
with botkit's ratios to two bare baselines: the bare handler at botkit's durability
(``bare-full``: WAL, synchronous=FULL) and at the fastest honest setting a user would pick
(``bare-normal``: WAL, synchronous=NORMAL). Loopback only.

The load process reports the share of its core it used in each phase; a phase where it used
more than 80% is flagged INVALID for throughput (the load, not the server, set the pace).

The servers take turns: bare-full, bare-normal, botkit, ... (``--rounds``, 3 by default). A
shared machine's speed drifts by tens of percent over minutes, so each botkit run is
compared with the bare runs of its own round, and the table shows the median of those
ratios and their range.

``--servers botkit,botkit-watched`` measures what the operator console costs: the same botkit
with ``--pages`` (5) console pages open on live views (bench/watchers.py: each holds the
event stream and reads the inbox again at each event), against botkit without, round by
round.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp.test_utils import unused_port

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
KEY = "bench-key"
SECRET = "bench-secret-0123456789abcdef"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of the process's main thread (the event loop) and of all its others."""
    main = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if task.name == str(pid):
            main += seconds
        else:
            other += seconds
    return main, other


def context_switches(pid: int) -> int:
    """Context switches of all the process's threads so far (voluntary and not)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            lines = (task / "status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in lines if "ctxt_switches:" in line)
    return total


def botkit_writes(server_url: str) -> dict[str, int]:
    """The jobs and transactions of botkit's database writer so far (its /healthz)."""
    with urllib.request.urlopen(server_url + "/healthz", timeout=5) as response:
        return dict(json.load(response).get("writes", {}))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pinned(cpu: int, command: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu), *command]
    return command


def run_one(kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    port, provider_port = unused_port(), unused_port()
    server_url = f"http://127.0.0.1:{port}"
    callback = f"{server_url}/viber/callback/{SECRET}"
    provider = f"http://127.0.0.1:{provider_port}"
    tmp.mkdir(exist_ok=True)
    db = tmp / f"{kind}.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTKIT_")}
    env["BOTKIT_QUIET_HOURS"] = "off"  # the figures must not depend on the hour
    if kind == "botkit-scale":  # a copy of the seeded database (bench/seed.py)
        print(f"copying {args.scale} ...", flush=True)
        shutil.copyfile(args.scale, db)
    if kind.startswith("botkit"):
        env.update(BOTKIT_CONSOLE="on")
        env.update(BOTKIT_API_KEY=KEY, BOTKIT_API_URL=provider, BOTKIT_DB=str(db),
                   BOTKIT_PORT=str(port), BOTKIT_PUBLIC_URL=server_url,
                   BOTKIT_CALLBACK_SECRET=SECRET, BOTKIT_LOOP=args.loop)
        server_cmd = [sys.executable, "run.py", "serve", "--bots", str(BENCH / "bots"),
                      "--templates", str(BENCH / "templates")]
        if args.profile:  # cProfile of the event loop's thread, written at a clean stop
            server_cmd[1:1] = ["-m", "cProfile", "-o", str(args.profile)]
    else:
        server_cmd = [sys.executable, str(BENCH / "bare.py"), "--port", str(port),
                      "--provider", provider, "--key", KEY, "--db", str(db),
                      "--templates", str(BENCH / "templates"), "--callback", callback,
                      "--synchronous", "NORMAL" if kind == "bare-normal" else "FULL",
                      "--loop", args.loop]
    load_cmd = [sys.executable, str(BENCH / "load.py"), "--provider-port", str(provider_port),
                "--server", server_url, "--callback", callback, "--key", KEY,
                "--users", str(args.users), "--rate", str(args.rate),
                "--seconds", str(args.seconds), "--warmup", str(args.warmup),
                "--think-seconds", str(args.think_seconds)]
    load = subprocess.Popen(pinned(1, load_cmd), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            text=True)
    time.sleep(0.3)  # the provider listens before the server sends anything
    with (tmp / f"{kind}-server.log").open("w") as log:
        started = time.monotonic()
        server = subprocess.Popen(pinned(0, server_cmd), cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    marks: dict[str, float] = {}
    threads: dict[str, tuple[float, float]] = {}
    switches: dict[str, int] = {}
    writes: dict[str, dict[str, int]] = {}
    result: dict[str, Any] = {}
    spy: subprocess.Popen[bytes] | None = None
    # Console pages open on live views (bench/watchers.py), beside the load on CPU 1: they
    # log in as soon as the server answers, before the load's warm-up ends.
    watchers = subprocess.Popen(pinned(1, [
        sys.executable, str(BENCH / "watchers.py"), "--server", server_url, "--db", str(db),
        "--pages", str(args.pages)]), cwd=ROOT, stdout=subprocess.PIPE,
        text=True) if kind == "botkit-watched" else None
    saturation_at = 0.0
    try:
        assert load.stdout is not None
        for line in load.stdout:
            if line.startswith("READY"):
                result["startup_s"] = time.monotonic() - started
            elif line.startswith("PHASE"):
                _, name, edge = line.split()
                if (name, edge) == ("saturation", "start"):
                    saturation_at = time.monotonic()
                marks[f"{name}_{edge}"] = cpu_seconds(server.pid)
                threads[f"{name}_{edge}"] = thread_cpu_seconds(server.pid)
                switches[f"{name}_{edge}"] = context_switches(server.pid)
                if kind in ("botkit", "botkit-watched"):
                    writes[f"{name}_{edge}"] = botkit_writes(server_url)
                if (name, edge) == ("saturation", "start") and args.py_spy and (
                        kind == "botkit"):
                    spy = py_spy(server.pid, args.seconds, args.py_spy, args.native)
            elif line.startswith("{"):
                result.update(json.loads(line))
        load.wait(60)
        result["rss_peak_mb"] = peak_rss_mb(server.pid)
        if watchers is not None:
            watchers.terminate()
            out, _ = watchers.communicate(timeout=30)
            lines = out.strip().splitlines()
            watching_at = float(lines[0].split()[1]) if lines[0].startswith("WATCHING") else 0
            result["watchers"] = json.loads(lines[-1])
            # Watching from before the saturation phase, or the run does not count.
            result["watchers"]["in_time"] = 0 < watching_at < saturation_at
        if spy is not None:
            spy.wait(60)
    finally:
        if watchers is not None and watchers.poll() is None:
            watchers.kill()
        server.terminate()
        server.wait(30)
        if load.poll() is None:
            load.kill()
    # Group commit at work: botkit's database jobs per transaction during saturation.
    result["jobs_per_commit"] = float("nan")
    if writes.get("saturation_start"):
        first, last = writes["saturation_start"], writes["saturation_end"]
        commits = last["commits"] - first["commits"]
        result["jobs_per_commit"] = (last["jobs"] - first["jobs"]) / commits if commits else 0.0
    callbacks = result["saturation"]["callbacks_per_s"] * args.seconds
    cpu = marks["saturation_end"] - marks["saturation_start"]
    result["cpu_ms_per_callback"] = 1000 * cpu / callbacks if callbacks else float("nan")
    (main0, other0), (main1, other1) = threads["saturation_start"], threads["saturation_end"]
    result["loop_thread_ms_per_callback"] = (1000 * (main1 - main0) / callbacks
                                              if callbacks else float("nan"))
    result["other_threads_ms_per_callback"] = (1000 * (other1 - other0) / callbacks
                                                if callbacks else float("nan"))
    result["switches_per_callback"] = ((switches["saturation_end"]
                                        - switches["saturation_start"]) / callbacks
                                       if callbacks else float("nan"))
    result["db_bytes"] = db.stat().st_size if db.exists() else 0
    return result


def watched_table(plain: list[dict[str, Any]], watched: list[dict[str, Any]]) -> str:
    """botkit with console pages open against botkit without, round by round."""
    rows = ["| round | callbacks/s without / with pages | ratio | CPU ms/callback without /"
            " with | ratio | e2e p99 ms at fixed rate without / with | peak RSS MB without /"
            " with | events to the pages, their reads |",
            "|---|---|---|---|---|---|---|---|"]
    ratios: dict[str, list[float]] = {"tput": [], "cpu": []}
    for n, (a, b) in enumerate(zip(plain, watched, strict=True), 1):
        ta, tb = a["saturation"]["callbacks_per_s"], b["saturation"]["callbacks_per_s"]
        ca, cb = a["cpu_ms_per_callback"], b["cpu_ms_per_callback"]
        ratios["tput"].append(tb / ta)
        ratios["cpu"].append(cb / ca)
        w = b.get("watchers", {})
        late = "" if w.get("in_time") else " (opened late: INVALID)"
        rows.append(f"| {n} | {ta:.0f} / {tb:.0f} | {tb / ta:.2f} | {ca:.3f} / {cb:.3f} |"
                    f" {cb / ca:.2f} | {a['rate']['e2e_p99_ms']:.1f} /"
                    f" {b['rate']['e2e_p99_ms']:.1f} | {a['rss_peak_mb']:.0f} /"
                    f" {b['rss_peak_mb']:.0f} | {w.get('events', 0)},"
                    f" {w.get('reads', 0)}{late} |")
    rows.append(f"| median | | {statistics.median(ratios['tput']):.2f} (range"
                f" {min(ratios['tput']):.2f}-{max(ratios['tput']):.2f}) | |"
                f" {statistics.median(ratios['cpu']):.2f} (range {min(ratios['cpu']):.2f}-"
                f"{max(ratios['cpu']):.2f}) | | | |")
    return "\n".join(rows)


def py_spy(pid: int, seconds: float, out: Path, native: bool) -> subprocess.Popen[bytes]:
    """Sample the server's threads for the saturation phase (``pip install py-spy``)."""
    command = ["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)),
               "--rate", "250", "--threads", "--nonblocking", "--format", "raw",
               "--output", str(out)]
    if native:  # py-spy pauses the process for each native sample
        command = [c for c in command if c != "--nonblocking"] + ["--native"]
    return subprocess.Popen(pinned(1, command), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


ROWS = [
    ("callbacks/s at saturation", "saturation.callbacks_per_s", "{:.0f}"),
    ("server CPU ms per callback", "cpu_ms_per_callback", "{:.2f}"),
    ("  of it the event loop's thread", "loop_thread_ms_per_callback", "{:.2f}"),
    ("  of it the other threads (database)", "other_threads_ms_per_callback", "{:.2f}"),
    ("  context switches per callback", "switches_per_callback", "{:.2f}"),
    ("e2e p50 ms at fixed rate", "rate.e2e_p50_ms", "{:.1f}"),
    ("e2e p95 ms at fixed rate", "rate.e2e_p95_ms", "{:.1f}"),
    ("e2e p99 ms at fixed rate", "rate.e2e_p99_ms", "{:.1f}"),
    ("ack p99 ms at fixed rate", "rate.ack_p99_ms", "{:.1f}"),
    ("callbacks/s with 1-3 s think time", "think.callbacks_per_s", "{:.0f}"),
    ("e2e p50 ms with think time", "think.e2e_p50_ms", "{:.1f}"),
    ("e2e p95 ms with think time", "think.e2e_p95_ms", "{:.1f}"),
    ("e2e p99 ms with think time", "think.e2e_p99_ms", "{:.1f}"),
    ("ack p99 ms with think time", "think.ack_p99_ms", "{:.1f}"),
    ("load process CPU share at saturation", "saturation.load_cpu_share", "{:.2f}"),
    ("database jobs per commit at saturation", "jobs_per_commit", "{:.1f}"),
    ("peak RSS MB", "rss_peak_mb", "{:.0f}"),
    ("start-up s", "startup_s", "{:.2f}"),
    ("errors", "errors", "{}"),
    ("lost or doubled replies", "unexpected_replies", "{}"),
]


# The metrics the scale table compares (an empty database against a seeded one).
SCALE_ROWS = {"saturation.callbacks_per_s", "cpu_ms_per_callback", "rate.e2e_p99_ms",
              "rss_peak_mb", "startup_s"}


def get(d: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        d = d[part]
    return d


def table(bares: dict[str, list[dict[str, Any]]], botkit: list[dict[str, Any]]) -> str:
    """Medians of each server's runs, and the median (range) of botkit's paired ratios to
    each bare baseline."""
    names = list(bares)
    lines = ["| metric | botkit | " + " | ".join(names) + " | "
             + " | ".join(f"botkit/{n}" for n in names) + " |",
             "|---" * (2 + 2 * len(names)) + "|"]
    for label, path, fmt in ROWS:
        a = [get(r, path) for r in botkit]
        cells, ratios = [], []
        for name in names:
            b = [get(r, path) for r in bares[name]]
            if isinstance(a[0], float):
                paired = [x / y for x, y in zip(a, b, strict=True)
                          if y and not math.isnan(x) and not math.isnan(y)]
                ratio = f"{statistics.median(paired):.2f}" if paired else "-"
                if len(paired) > 1:
                    ratio += f" ({min(paired):.2f}-{max(paired):.2f})"
                cells.append(_cell(fmt, statistics.median(b)))
            else:  # counts: the total over the runs
                ratio = "-"
                cells.append(fmt.format(sum(b)))
            ratios.append(ratio)
        mine = _cell(fmt, statistics.median(a)) if isinstance(a[0], float) else fmt.format(sum(a))
        lines.append(f"| {label} | {mine} | " + " | ".join(cells) + " | "
                     + " | ".join(ratios) + " |")
    return "\n".join(lines)


def _cell(fmt: str, value: float) -> str:
    return "-" if math.isnan(value) else fmt.format(value)


LOAD_LIMIT = 0.8  # the load process above this share of its core: its own pace, not the server's


def invalid(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The phases where the load process, not the server, set the pace."""
    flagged = []
    for kind, runs in results.items():
        for n, run in enumerate(runs, 1):
            for phase in ("saturation", "rate", "think"):
                share = run.get(phase, {}).get("load_cpu_share", 0.0)
                if share > LOAD_LIMIT:
                    flagged.append(f"INVALID for throughput: {kind} run {n}, {phase}: the load"
                                   f" process used {share:.0%} of its core")
    return flagged


def scale_table(empty: dict[str, Any], big: dict[str, Any], seeded: Path) -> str:
    import sqlite3

    conn = sqlite3.connect(f"file:{seeded}?mode=ro", uri=True)
    conversations = conn.execute("SELECT count(*) FROM conversations").fetchone()[0]
    messages = sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                   for t in ("inbound", "outbound"))
    conn.close()
    size = seeded.stat().st_size
    lines = [f"database: {conversations:,} conversations, {messages:,} messages,"
             f" {size / 1e6:,.0f} MB = {size / max(conversations, 1):,.0f} bytes per"
             " conversation (with its messages and timers)",
             "| metric | empty database | seeded database | seeded/empty |", "|---|---|---|---|"]
    for label, path, fmt in ROWS:
        if path in SCALE_ROWS:
            a, b = get(empty, path), get(big, path)
            lines.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {b / a:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--think-seconds", type=float, default=15.0,
                        help="the phase with 1-3 s think time (default 15)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each server, taking turns (default 3)")
    parser.add_argument("--servers", default="bare-full,bare-normal,botkit",
                        help="which servers each round runs, in turn (default: all three);"
                             " the table needs all three")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="the servers' event loop, the same for all (default uvloop)")
    parser.add_argument("--profile", type=Path, help="write a cProfile of botkit's server here")
    parser.add_argument("--py-spy", type=Path, metavar="FILE",
                        help="sample botkit's server with py-spy during saturation, into FILE"
                             " (collapsed stacks; bench/profile_table.py reads it)")
    parser.add_argument("--native", action="store_true",
                        help="with --py-spy: C frames too (the event loop's and SQLite's)")
    parser.add_argument("--pages", type=int, default=5,
                        help="console pages open in botkit-watched runs (default 5)")
    parser.add_argument("--scale", type=Path, metavar="SEEDED.db",
                        help="also run botkit on a copy of this database (bench/seed.py)")
    args = parser.parse_args()
    if args.smoke:
        args.users, args.seconds, args.warmup, args.rate, args.rounds = 20, 1.0, 0.5, 20.0, 1
        args.think_seconds = 1.0
    kinds = tuple(args.servers.split(","))
    unknown = set(kinds) - {"bare-full", "bare-normal", "botkit", "botkit-watched"}
    if unknown:
        parser.error(f"--servers: unknown {', '.join(sorted(unknown))}; choose from bare-full,"
                     " bare-normal, botkit, botkit-watched")
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    pinning = "server on CPU 0, load and provider on CPU 1" if shutil.which("taskset") and (
        os.cpu_count() or 1) >= 2 else "not pinned (taskset or a 2nd core missing)"
    print(f"{time.strftime('%Y-%m-%d')}, nproc {os.cpu_count()}, {cpu}, Python"
          f" {platform.python_version()}; {pinning}")
    print(f"{args.users} users, saturation {args.seconds:.0f}s, then {args.rate:.0f}"
          f" callbacks/s for {args.seconds:.0f}s; servers on {args.loop}", flush=True)
    print(f"{args.rounds} rounds of {', '.join(kinds)}; each ratio compares a botkit"
          " run with the bare runs of its round", flush=True)
    # The copy of a big database goes next to it (the same disk), not to a small /tmp.
    where = args.scale.resolve().parent if args.scale else None
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        for n in range(args.rounds):
            for kind in kinds:
                result = run_one(kind, args, Path(tmp) / f"{n}")
                results[kind].append(result)
                print(f"  round {n + 1} {kind}:"
                      f" {result['saturation']['callbacks_per_s']:.0f} callbacks/s,"
                      f" {result['cpu_ms_per_callback']:.2f} ms CPU each; the load process"
                      f" at {result['saturation']['load_cpu_share']:.0%} of its core"
                      f" ({result.get('loop', '?')})", flush=True)
        if args.scale:
            results["botkit-scale"] = [run_one("botkit-scale", args, Path(tmp) / "scale")]
    if {"bare-full", "bare-normal", "botkit"} <= set(kinds):
        print(table({k: results[k] for k in ("bare-full", "bare-normal")}, results["botkit"]))
    if {"botkit", "botkit-watched"} <= set(kinds):
        print(f"botkit with {args.pages} console pages open on live views, against botkit"
              " without, in the same round:")
        print(watched_table(results["botkit"], results["botkit-watched"]))
    for line in invalid(results):
        print(line)
    if args.scale:
        print(scale_table(results["botkit"][-1], results["botkit-scale"][0], args.scale))
    print(json.dumps(results))
    bad = any(r["errors"] or r["unexpected_replies"]
              for kind, runs in results.items() if not kind.startswith("bare") for r in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
