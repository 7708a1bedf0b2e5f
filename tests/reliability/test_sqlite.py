"""SQLite under several writers: server, sender and command line at once."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the harness next to this file
from harness import ROOT, Driver, Processes, check, make_conversations  # noqa: E402


@pytest.fixture
async def procs(tmp_path):
    procs = Processes(tmp_path)
    await procs.start_provider()
    await procs.start_server()
    yield procs
    procs.close()


BOTS = ("--bots", "tests/reliability/rel_bots")
TEMPLATES = ("--templates", "tests/reliability/rel_templates")


def cli(procs: Processes, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, env=procs._env(),
                          capture_output=True, text=True, timeout=120)


async def test_server_sender_and_cli_write_at_once_without_locking_errors(procs):
    convs = make_conversations(80, prefix="3809")
    driver = asyncio.create_task(Driver(procs, convs, concurrency=40).run())
    phones = [f"38097{i:07d}" for i in range(150)]
    jobs = [asyncio.to_thread(cli, procs, "start", "chain", *phones[i::3], *BOTS, *TEMPLATES)
            for i in range(3)]
    jobs += [asyncio.to_thread(cli, procs, "resume") for _ in range(3)]
    jobs += [asyncio.to_thread(cli, procs, "conversations", "--limit", "5", *BOTS)
             for _ in range(2)]
    results = await asyncio.gather(*jobs)
    await asyncio.wait_for(driver, 120)
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "locked" not in result.stderr + result.stdout
    assert "database is locked" not in procs.server_log()
    started = sum(int(r.stdout.split("started ")[1].split()[0]) for r in results[:3])
    assert started == len(phones)
    db = sqlite3.connect(procs.db)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("SELECT count(*) FROM conversations WHERE flow = 'chain'").fetchone() == (
        len(phones) + len(convs),)
    db.close()
    async with aiohttp.ClientSession() as session:
        log = await procs.provider_log(session)
    assert check(procs, log, convs).problems == []
