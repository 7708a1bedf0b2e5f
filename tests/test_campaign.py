"""``run.py start FLOW --phones FILE`` as a campaign: it sends, shows progress, never twice.

Real processes: the command line and a standalone fake provider on loopback, a real SQLite
file. The provider's log (``/sandbox/sent``) says what reached it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_cli import ROOT, cli_env, db, fake_provider, rows, run_cli  # noqa: F401 (fixtures)

__all__ = ["db", "fake_provider"]

PHONE = "380501234567"


def phones_file(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "phones.csv"
    path.write_text("phone\n" + "".join(f"38066{n:07d}\n" for n in range(count)))
    return path


def received(url: str) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"{url}/sandbox/sent", timeout=10) as answer:
        return list(json.load(answer)["messages"])


def env_for(provider: tuple[str, str]) -> dict[str, str]:
    url, key = provider
    return {"BOTKIT_API_KEY": key, "BOTKIT_API_URL": url}


def start(db: Path, provider: tuple[str, str], phones: Path, *extra: str,
          ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "run.py", "start", "survey", "--phones", str(phones), *extra],
        cwd=ROOT, env=cli_env(db, env_for(provider)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def wait_sent(db: Path, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                done = rows(db, "SELECT count(*) AS n FROM outbound WHERE status = 'sent'")
            except Exception:  # the schema is not there yet
                done = [{"n": 0}]
            if done[0]["n"] >= count:
                return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} sent before the campaign ended")


def test_a_campaign_sends_every_first_message_once_and_shows_progress(
    tmp_path: Path, db: Path, fake_provider: tuple[str, str]
) -> None:
    result = run_cli("start", "survey", "--phones", str(phones_file(tmp_path, 300)),
                     db=db, env=env_for(fake_provider), timeout=60)

    assert result.returncode == 0, result.stderr
    assert "survey: started 300 conversations, skipped 0; sent 300 messages" in result.stdout
    assert "300/300 phones started or skipped, 300 sent" in result.stderr  # the last report
    sent = Counter(m["phone"] for m in received(fake_provider[0]))
    assert len(sent) == 300 and set(sent.values()) == {1}
    assert rows(db, "SELECT status, count(*) AS n FROM outbound GROUP BY status") == [
        {"status": "sent", "n": 300}]
    [run] = rows(db, "SELECT * FROM campaigns")  # the run recorded itself
    assert (run["kind"], run["name"], run["total"], run["begun"], run["skipped"],
            run["outcome"]) == ("start", "survey", 300, 300, 0, "done")
    assert run["started_at"] <= run["finished_at"] <= time.time()
    assert rows(db, "SELECT campaign_id, count(*) AS n FROM outbound GROUP BY 1") == [
        {"campaign_id": run["id"], "n": 300}]  # each of its messages carries its id
    again = run_cli("start", "survey", "--phones", str(phones_file(tmp_path, 300)),
                    db=db, env=env_for(fake_provider), timeout=60)
    assert "started 0 conversations, skipped 300; sent 0 messages" in again.stdout
    assert len(received(fake_provider[0])) == 300
    assert [(r["id"] > run["id"], r["begun"], r["skipped"], r["outcome"]) for r in rows(
        db, "SELECT * FROM campaigns WHERE id <> ?", [run["id"]])] == [(True, 0, 300, "done")]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_or_killed_campaign_goes_on_and_sends_nothing_twice(
    how: signal.Signals, tmp_path: Path, db: Path, fake_provider: tuple[str, str]
) -> None:
    phones = phones_file(tmp_path, 400)
    first = start(db, fake_provider, phones, "--rate", "200")  # about 2 s
    wait_sent(db, 100, first)
    first.send_signal(how)
    _, err = first.communicate(timeout=30)
    [run] = rows(db, "SELECT * FROM campaigns")
    if how == signal.SIGTERM:
        assert first.returncode == 130, err
        assert "run the same command again to go on (nothing is sent twice)" in err
        assert rows(db, "SELECT count(*) AS n FROM outbound WHERE status = 'sending'") == [
            {"n": 0}]  # the sends in flight finished and were recorded
        assert run["outcome"] == "stopped" and run["finished_at"] is not None
    else:  # killed: its record stays unfinished
        assert run["outcome"] is None and run["finished_at"] is None

    second = run_cli("start", "survey", "--phones", str(phones), db=db,
                     env=env_for(fake_provider), timeout=60)

    assert second.returncode == 0, second.stderr
    sent = Counter(m["phone"] for m in received(fake_provider[0]))
    assert set(sent.values()) == {1}, [p for p, n in sent.items() if n > 1]
    statuses = dict((r["status"], r["n"]) for r in rows(
        db, "SELECT status, count(*) AS n FROM outbound GROUP BY status"))
    uncertain = statuses.get("uncertain", 0)
    assert statuses.get("sent", 0) + uncertain == 400 and len(rows(
        db, "SELECT id FROM conversations")) == 400
    [(again, done)] = [(r["id"], r["outcome"]) for r in rows(db, "SELECT * FROM campaigns")
                       if r["id"] != run["id"]]  # the re-run is a record of its own
    assert done == "done"
    by_run = {r["campaign_id"]: r["n"] for r in rows(
        db, "SELECT campaign_id, count(*) AS n FROM outbound GROUP BY 1")}
    # A message belongs to the run that queued it (the re-run sent what the first queued).
    assert set(by_run) <= {run["id"], again} and sum(by_run.values()) == 400
    assert by_run[run["id"]] >= 100
    if how == signal.SIGTERM:
        assert uncertain == 0 and len(sent) == 400
    else:  # what was in flight at the kill may or may not have reached the provider
        assert uncertain <= 16 and 400 - uncertain <= len(sent) <= 400
        if uncertain:
            assert f"{uncertain} messages are uncertain" in second.stdout


def test_a_rate_limit_is_kept(
    tmp_path: Path, db: Path, fake_provider: tuple[str, str]
) -> None:
    result = run_cli("start", "survey", "--phones", str(phones_file(tmp_path, 60)), "--rate",
                     "40", db=db, env=env_for(fake_provider), timeout=60)

    assert result.returncode == 0, result.stderr
    times = sorted(float(m["received_at"]) for m in received(fake_provider[0]))  # type: ignore[arg-type]
    assert len(times) == 60
    # Sends start at least 1/40 s apart, so 60 of them span at least 59/40 s; a slow machine
    # only stretches that (arrivals may bunch by a few milliseconds, hence the margin).
    assert times[-1] - times[0] >= 59 / 40 - 0.1


def test_uncertain_messages_are_sent_again_only_when_asked(
    db: Path, fake_provider: tuple[str, str]
) -> None:
    phone = "380660000001"
    assert run_cli("start", "survey", phone, db=db).returncode == 0  # no provider: queued
    sqlite3_exec(db, "UPDATE outbound SET status = 'uncertain'")  # as after a killed run

    plain = run_cli("start", "survey", phone, db=db, env=env_for(fake_provider))
    assert "1 messages are uncertain" in plain.stdout and received(fake_provider[0]) == []

    again = run_cli("start", "survey", phone, "--resend-uncertain", db=db,
                    env=env_for(fake_provider))
    assert again.returncode == 0, again.stderr
    assert "survey: 1 uncertain messages queued again" in again.stderr
    assert [m["phone"] for m in received(fake_provider[0])] == [phone]
    assert rows(db, "SELECT status FROM outbound") == [{"status": "sent"}]


def sqlite3_exec(db: Path, sql: str) -> None:
    import sqlite3

    conn = sqlite3.connect(db)
    with conn:
        conn.execute(sql)
    conn.close()


async def test_a_status_that_beats_the_campaigns_send_record_still_starts_its_timer(
    bot_harness: Any, tmp_path: Path
) -> None:
    # The campaign's process records the send; the server receives its statuses. A status
    # that reaches the server first is kept unmatched and applied when the send is recorded,
    # by the campaign's sender, which must plan the same timers the server would.
    from botkit.models import MessageStatus
    from botkit.sandbox import FakeProvider, Fault
    from botkit.testing import TEST_KEY
    from bots.survey import survey

    provider = FakeProvider(api_key=TEST_KEY, auto_deliver=False)
    harness = await bot_harness(flows=[survey], provider=provider, db=tmp_path / "bot.db")
    harness.faults.script(Fault.delay(1.0))  # the send's answer waits; its status does not
    env = cli_env(harness.db_path, {
        "BOTKIT_API_KEY": TEST_KEY, "BOTKIT_API_URL": harness.settings.api_url,
        "BOTKIT_PUBLIC_URL": harness.url})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "start", "survey", PHONE, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):  # a new process: its start-up takes a while under load
        while not provider.sent:
            assert proc.returncode is None, (await proc.communicate())[1].decode()
            await asyncio.sleep(0.01)
    await provider.deliver(provider.sent[0].message_id, MessageStatus.UNDELIVERED)
    assert rows(harness.db_path, "SELECT message_id FROM outbound WHERE message_id IS NOT NULL"
                ) == []  # the status came first
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()

    # Due at once: the server's own sweep (each second) may have fired it already.
    [timer] = rows(harness.db_path, "SELECT status FROM timers WHERE kind = 'undelivered'")
    assert timer["status"] in ("pending", "fired")
    await harness.sweep()  # the survey sends its first question once more
    assert [m.request.text for m in provider.messages_to(PHONE)] == [
        provider.sent[0].request.text] * 2


def test_notify_sends_one_way_notices_with_their_sms_fallback(
    tmp_path: Path, db: Path, fake_provider: tuple[str, str]
) -> None:
    result = run_cli("notify", "support/order_shipped.txt", "--phones",
                     str(phones_file(tmp_path, 3)), "--var", "order=100300",
                     "--sms", "support/order_shipped_sms.txt",
                     db=db, env=env_for(fake_provider), timeout=60)

    assert result.returncode == 0, result.stderr
    assert "support/order_shipped.txt: queued 3 notices, skipped 0; sent 3" in result.stdout
    assert "3/3 phones queued or skipped, 3 sent" in result.stderr
    sent = received(fake_provider[0])
    assert len(sent) == 3 and {m["message_type"] for m in sent} == {106}
    assert {m["text_sms"] for m in sent} == {
        "Acme: order 100300 has shipped, arriving within 3 working days."}
    assert all("order 100300 has shipped" in str(m["text"]) for m in sent)
    assert rows(db, "SELECT message_type, status, step, conversation_id FROM outbound"
                " GROUP BY 1, 2, 3, 4") == [{"message_type": 106, "status": "sent",
                                             "step": None, "conversation_id": None}]
    assert rows(db, "SELECT count(*) AS n FROM conversations") == [{"n": 0}]
    [run] = rows(db, "SELECT * FROM campaigns")
    assert (run["kind"], run["name"], run["total"], run["begun"], run["outcome"]) == (
        "notify", "support/order_shipped.txt", 3, 3, "done")
    assert rows(db, "SELECT DISTINCT campaign_id FROM outbound") == [{"campaign_id": run["id"]}]


def test_notify_once_under_a_key_sends_nothing_twice(
    tmp_path: Path, db: Path, fake_provider: tuple[str, str]
) -> None:
    def notify(count: int, key: str) -> subprocess.CompletedProcess[str]:
        return run_cli("notify", "support/order_shipped.txt", "--phones",
                       str(phones_file(tmp_path, count)), "--var", "order=100200",
                       "--once", key, db=db, env=env_for(fake_provider), timeout=60)

    first = notify(2, "order-100200-shipped")
    assert "queued 2 notices, skipped 0; sent 2" in first.stdout, first.stderr
    again = notify(3, "order-100200-shipped")  # one phone more: only it gets the notice
    assert again.returncode == 0, again.stderr
    assert "queued 1 notice, skipped 2; sent 1 message" in again.stdout
    assert "skipped 380660000000: already has notice 'order-100200-shipped'" in again.stdout
    other = notify(1, "order-100200-delivered")  # another key is another notice
    assert "queued 1 notice, skipped 0; sent 1 message" in other.stdout
    assert Counter(m["phone"] for m in received(fake_provider[0])) == {
        "380660000000": 2, "380660000001": 1, "380660000002": 1}


@pytest.mark.parametrize(("args", "problem"), [
    (("support/nope.txt", "380501112233"),
     "error: template support/nope.txt not found in the templates folder"),
    (("support/order_shipped.txt", "380501112233", "--var", "order"),
     "error: --var 'order': write NAME=VALUE"),
    (("support/order_shipped.txt", "380501112233", "--var", "order=1", "--sms",
      "support/order_shipped_sms.txt", "--promotional"),
     "error: text_sms: an SMS fallback needs a transactional text message (type 106"),
])
def test_notify_says_what_to_fix_and_sends_nothing(
    db: Path, fake_provider: tuple[str, str], args: tuple[str, ...], problem: str
) -> None:
    result = run_cli("notify", *args, db=db, env=env_for(fake_provider), timeout=60)
    assert result.returncode == 2
    assert problem in result.stderr
    assert received(fake_provider[0]) == []


def test_uncertain_notices_are_sent_again_only_when_asked(
    db: Path, fake_provider: tuple[str, str]
) -> None:
    phone = "380660000001"
    notice = ("notify", "support/order_shipped.txt")
    assert run_cli(*notice, phone, "--var", "order=1", db=db).returncode == 0  # queued: no provider
    sqlite3_exec(db, "UPDATE outbound SET status = 'uncertain'")  # as after a killed run

    plain = run_cli("start", "survey", "380660000002", db=db, env=env_for(fake_provider))
    assert "1 messages are uncertain" in plain.stdout
    assert "`run.py start survey --resend-uncertain` sends them again" in plain.stdout
    assert [m["phone"] for m in received(fake_provider[0])] == ["380660000002"]

    wrong = run_cli("notify", "support/hours.txt", "--resend-uncertain", db=db,
                    env=env_for(fake_provider))  # another template's: none
    assert "support/hours.txt: 0 uncertain messages queued again" in wrong.stderr
    again = run_cli(*notice, "--resend-uncertain", db=db, env=env_for(fake_provider))
    assert again.returncode == 0, again.stderr
    assert "support/order_shipped.txt: 1 uncertain messages queued again" in again.stderr
    assert [m["phone"] for m in received(fake_provider[0])] == ["380660000002", phone]
