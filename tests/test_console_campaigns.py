"""The console's campaigns page over real HTTP on loopback: a real ``run.py start`` on the
server's SQLite file shows up with its progress while it runs and its end after; only admins
see it; a template's name stays text."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from test_campaign import env_for, phones_file
from test_cli import ROOT, cli_env, fake_provider  # noqa: F401 (a fixture)
from test_console import HTML, console  # noqa: F401 (a fixture)

from botkit.console.campaigns import QUIET, campaign_view
from botkit.core.records import CampaignCounts, CampaignRun

__all__ = ["console", "fake_provider"]


async def feed(client) -> dict:
    async with client.get("/console/api/campaigns") as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_an_agent_or_nobody_is_refused_the_campaigns(console):
    agent = await console.logged_in("olga")
    for path in ("/console/campaigns", "/console/api/campaigns"):
        async with agent.get(path) as response:
            assert response.status == 403, path
            assert "admin" in (await response.json())["error"]
        async with agent.get(path, headers=HTML) as response:
            assert response.status == 403, path
        async with console.client().get(path) as response:  # no session
            assert response.status == 401, path
            assert "error" in await response.json()
        async with console.client().get(path, headers=HTML,
                                        allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"].startswith("/console/login?next=")
    async with agent.get("/console/", headers=HTML) as response:
        assert "/console/campaigns" not in await response.text()  # no link for an agent


async def test_a_campaign_s_name_is_shown_as_text(console):
    store = console.bot.store
    run = await store.begin_campaign("notify", "<script>alert(1)</script>.txt", 2, time.time())
    await store.end_campaign(run, "done", time.time(), begun=2, skipped=0)
    admin = await console.logged_in("ada", "admin")
    async with admin.get("/console/campaigns", headers=HTML) as response:
        page = await response.text()
    assert response.status == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.txt" in page and "<script>alert" not in page
    assert 'href="/console/campaigns"' in page  # the admin's nav link
    [shown] = (await feed(admin))["campaigns"]
    assert shown["name"] == "<script>alert(1)</script>.txt" and shown["state"] == "done"


async def test_a_running_campaign_shows_its_progress_live_and_then_its_end(
    console, tmp_path: Path, fake_provider: tuple[str, str]
):
    admin = await console.logged_in("ada", "admin")
    assert (await feed(admin)) == {"campaigns": [], "running": False}
    # The server's own sender would take the campaign's queued messages and send them at
    # once; stopped, the campaign's process sends them all, at its rate.
    await console.bot.sender.stop()
    # 60 phones at 20 a second: about 3 s of sending, from another process on the same file.
    proc = subprocess.Popen(
        [sys.executable, "run.py", "start", "survey", "--phones",
         str(phones_file(tmp_path, 60)), "--rate", "20"],
        cwd=ROOT, env=cli_env(console.bot.settings.db, env_for(fake_provider)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = None
        async with asyncio.timeout(30):
            while seen is None:
                data = await feed(admin)
                runs = [c for c in data["campaigns"] if c["running"] and c["sent"] >= 5
                        and c["queued"] > 0 and c["rate"]]
                if runs:
                    seen, running = runs[0], data["running"]
                    break
                assert proc.poll() is None, proc.communicate()
                await asyncio.sleep(0.1)
        _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert running is True
    assert (seen["kind"], seen["name"], seen["total"], seen["state"]) == (
        "start", "survey", 60, "running")
    assert seen["queued"] + seen["sent"] + seen["failed"] + seen["not_begun"] == 60
    assert 2 <= seen["rate"] <= 40  # 20 a second, measured over a short window
    assert seen["remaining"] > 0 and seen["bar"]

    [ended] = (await feed(admin))["campaigns"]
    assert (ended["id"], ended["state"], ended["sent"], ended["queued"], ended["failed"]) == (
        seen["id"], "done", 60, 0, 0)
    assert ended["remaining"] is None and ended["finished_at"] is not None
    assert ended["bar"][-1]["x"] + ended["bar"][-1]["width"] == 100
    async with admin.get("/console/campaigns", headers=HTML) as response:
        page = await response.text()
    assert "survey" in page and "sent 60" in page and 'class="part ' in page


def test_an_unfinished_run_whose_process_went_quiet_is_shown_as_not_finished():
    now = 1000.0
    run = CampaignRun(id=1, kind="start", name="survey", total=10, started_at=now - 300,
                      begun=10, seen_at=now - QUIET - 1)
    counts = CampaignCounts(queued=4, sent=6, recent=0, first_sent_at=now - 290,
                            last_sent_at=now - 250)
    view = campaign_view(run, counts, now)
    assert view["state"] == "not finished (its process stopped?)" and not view["running"]
    assert view["remaining"] is None and view["rate"] == 6 / 40
    alive = campaign_view(CampaignRun(id=1, kind="start", name="survey", total=10,
                                      started_at=now - 30, begun=8, seen_at=now - 1),
                          CampaignCounts(queued=2, sent=6, recent=6, first_sent_at=now - 20,
                                         last_sent_at=now - 1), now)
    # 6 sent over the 20 s since the first send; 2 queued and 2 not begun left.
    assert alive["running"] and alive["rate"] == 6 / 20 and alive["remaining"] == 4 / (6 / 20)
    # A message refused after the run began (the phone opted out) is a part of its own, not
    # a phone the run has yet to begin (the record's count of begun phones lags a second).
    refused = campaign_view(CampaignRun(id=1, kind="start", name="survey", total=10,
                                        started_at=now - 30, begun=9, seen_at=now - 1),
                            CampaignCounts(sent=9, refused=1, recent=9,
                                           first_sent_at=now - 20, last_sent_at=now - 1), now)
    assert refused["not_begun"] == 0 and refused["refused"] == 1
    assert [p["part"] for p in refused["bar"]] == ["sent", "refused"]
    assert refused["bar"][1]["width"] == 10.0
