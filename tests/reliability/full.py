"""Run the reliability suite at the issue's full scale and print its figures.

    python tests/reliability/full.py

The same tests as CI (tests/reliability/), with the full counts: 2,000 conversations
under SIGKILL, 1,000 callbacks delivered three times, 200 users x 10 messages, 1,000 replies
against provider faults, 5,000 fuzzed bodies. Prints the machine, each test's figures, and
the time taken. Loopback only; bounded in count and time.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    env = dict(os.environ, RELIABILITY_SCALE="10", RELIABILITY_SCALE_CRASH="2000",
               RELIABILITY_SCALE_FUZZ="5000")
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}")
    print("scale: RELIABILITY_SCALE=10, RELIABILITY_SCALE_CRASH=2000,"
          " RELIABILITY_SCALE_FUZZ=5000", flush=True)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
         "tests/reliability", *sys.argv[1:]],
        cwd=ROOT, env=env,
    )
    print(f"full-scale reliability run: exit {result.returncode},"
          f" {time.monotonic() - started:.0f}s")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
