"""The command line (``python run.py ...``), run as the operator runs it: a real process.

Each test gets its own SQLite file through ``BOTKIT_DB`` and an environment without any
other ``BOTKIT_*`` variable, so the sandbox/production choice is the test's. Conversations
that need a user are driven with the testing ``Harness`` on the same file first.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlite_utils
from aiohttp.test_utils import unused_port

from botkit.cli.main import main
from botkit.models import MessageStatus, MessageType, SendRequest
from botkit.testing import Harness
from botkit.web.client import ProviderClient
from bots.support import support
from bots.survey import survey

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "templates"
ANA, BO, CY = "380501112233", "380501112244", "380501112255"
COMMANDS = ["serve", "start", "notify", "status", "check", "export", "conversations", "stats",
            "messages", "resume", "release", "fake-provider"]


def run_cli(
    *args: str, db: Path, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``python run.py ARGS`` in the project folder, with only the BOTKIT_* variables given."""
    return subprocess.run(
        [sys.executable, "run.py", *args], cwd=ROOT, env=cli_env(db, env),
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def cli_env(db: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTKIT_")}
    # The real clock: a command's outcome must not depend on the hour the test runs at.
    env.update({"BOTKIT_DB": str(db), "BOTKIT_QUIET_HOURS": "off", "PYTHONUNBUFFERED": "1",
                **(extra or {})})
    return env


def rows(db: Path, sql: str, params: list[object] | None = None) -> list[dict[str, object]]:
    return list(sqlite_utils.Database(db).query(sql, params or []))


def write_package(folder: Path, modules: dict[str, str]) -> Path:
    """A bots package: ``folder/__init__.py`` plus one file per module."""
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name, source in modules.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return folder


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"process exited early with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s") from None
            time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "bot.db"


# -- help ---------------------------------------------------------------------------------


def test_top_level_help_lists_every_command(db: Path) -> None:
    result = run_cli("--help", db=db)
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command in result.stdout


# The shared flags each command reads (docs/cli.md); it offers no other.
SHARED = {"--db", "--bots", "--templates", "--api-url", "--public-url", "--host", "--port"}
READS = {
    "serve": SHARED, "start": SHARED, "notify": SHARED,
    "status": {"--api-url", "--public-url", "--host", "--port"},
    "check": {"--bots", "--templates"}, "export": {"--db", "--bots"},
    "conversations": {"--db", "--bots"}, "stats": {"--db", "--bots"}, "messages": {"--db"},
    "resume": {"--db"}, "release": {"--db"},
    "fake-provider": {"--host", "--port"},  # its own, with its own defaults
}


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help_listing_only_the_flags_it_reads(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert f"run.py {command}" in text
    offered = {flag for flag in SHARED if f"  {flag} " in text or f"  {flag}," in text}
    assert offered == READS[command]


def test_fake_provider_help_gives_its_real_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fake-provider", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default 9000; BOTKIT_PORT is not read" in text
    assert "default 127.0.0.1; BOTKIT_HOST is not read" in text


# -- check --------------------------------------------------------------------------------


def test_check_passes_on_the_example_bots(db: Path) -> None:
    result = run_cli("check", db=db)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ") and "support" in result.stdout and "survey" in result.stdout


def test_check_reports_every_problem_with_file_and_line(tmp_path: Path, db: Path) -> None:
    bots = write_package(tmp_path / "brokenbots", {"quiz": '''\
        from botkit import Flow, Turn

        quiz = Flow("quiz", start="name")


        @quiz.step("name", prompt="quiz/ask_name.txt")
        async def name(turn: Turn) -> None:
            turn.ask("ratng")


        @quiz.step("rating", prompt="quiz/missing.txt")
        async def rating(turn: Turn) -> None:
            turn.finish("quiz/thanks.txt")
        '''})
    templates = tmp_path / "templates"
    (templates / "quiz").mkdir(parents=True)
    (templates / "quiz" / "ask_name.txt").write_text("Your name?\n")
    broken = templates / "quiz" / "thanks.txt"
    broken.write_text("Thanks\n{% if state.name %}\n{{ state.name }\n{% endif %}\n")

    result = run_cli("check", "--bots", str(bots), "--templates", str(templates), db=db)

    assert result.returncode == 1, result.stdout + result.stderr
    quiz = (bots / "quiz.py").resolve()
    ask_line = line_of(quiz, 'turn.ask("ratng")')
    step_line = line_of(quiz, '@quiz.step("rating"')
    err = result.stderr
    assert (f"{quiz}:{ask_line}: turn.ask('ratng'): flow 'quiz' has no step 'ratng'"
            " (did you mean 'rating'?)") in err
    assert f"{quiz}:{step_line}: template quiz/missing.txt not found" in err
    assert f"{broken}:3: unexpected '}}'" in err
    assert "check failed" in err and "ok:" not in result.stdout


def test_check_finds_what_templates_read_but_no_reply_gives(tmp_path: Path, db: Path) -> None:
    bots = write_package(tmp_path / "typobots", {"feedback": '''\
        from botkit import Flow, Turn

        feedback = Flow("feedback")


        @feedback.step("topic", prompt="feedback/ask_topic.txt")
        async def topic(turn: Turn) -> None:
            turn.state["topic"] = turn.text
            turn.ask("details", name="Ana")


        @feedback.step("details", prompt="feedback/ask_details.txt")
        async def details(turn: Turn) -> None:
            turn.state.setdefault("details", turn.text)
            turn.finish("feedback/thanks.txt", answer=turn.text)


        @feedback.step("extra", prompt="feedback/ask_topc.txt")
        async def extra(turn: Turn) -> None:
            turn.say("feedback/broken.txt")
        '''})
    templates = tmp_path / "templates"
    (templates / "feedback").mkdir(parents=True)
    files = {
        "ask_topic.txt": "What about? {% if hint is defined %}{{ hint }}{% endif %}\n",
        "ask_details.txt": "Tell us about the {{ state.topik }}, {{ name }}.\n",
        "thanks.txt": "Thanks, {{ nme }}! {{ state.get('x') }}{% if 'later' in state %}"
                      "{{ state.later }}{% endif %} {{ state['details'] }} {{ answer }}\n",
        "broken.txt": "Hi {{ name }\n",
    }
    for name, text in files.items():
        (templates / "feedback" / name).write_text(text)

    result = run_cli("check", "--bots", str(bots), "--templates", str(templates), db=db)

    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if not line.startswith("check")]
    details, thanks = templates / "feedback" / "ask_details.txt", templates / "feedback" / "thanks.txt"
    quiz = (bots / "feedback.py").resolve()
    extra_line = line_of(quiz, '@feedback.step("extra"')
    assert sorted(problems) == sorted([
        f"{details}:1: reads state.topik, which no handler writes (did you mean 'topic'?):"
        " set turn.state['topik'] in a handler",
        f"{thanks}:1: reads {{{{ nme }}}}, which no reply passes (did you mean 'name'?): pass"
        " it, as in turn.say('feedback/thanks.txt', nme=...)",
        f"{quiz}:{extra_line}: template feedback/ask_topc.txt not"
        " found in the templates folder (did you mean 'feedback/ask_topic.txt'?)",
        f"template {templates / 'feedback' / 'broken.txt'}:1: unexpected '}}'",  # once
    ]), result.stderr


def test_check_validates_the_settings_as_every_command_does(db: Path) -> None:
    result = run_cli("check", db=db, env={"BOTKIT_PORT": "abc"})
    assert result.returncode == 2 and "BOTKIT_PORT" in result.stderr


def test_an_empty_bots_folder_is_warned_about(tmp_path: Path, db: Path) -> None:
    empty = write_package(tmp_path / "nothing", {})
    result = run_cli("check", "--bots", str(empty), db=db)
    assert result.returncode == 0
    assert f"warning: no flows found in {empty}/" in result.stderr


def test_bots_load_from_the_folder_given_even_when_another_bots_comes_first(
    tmp_path: Path, db: Path
) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    bots = write_package(other / "bots", {"greet": '''\
        from botkit import Flow, Turn

        greet = Flow("greet")


        @greet.step("hello", prompt="survey/ask_name.txt")
        async def hello(turn: Turn) -> None:
            turn.finish()
        '''})
    # the project's own bots/ comes first on sys.path (it is run.py's folder)
    result = run_cli("check", "--bots", str(bots), db=db, env={"PYTHONPATH": str(other)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 1 flow (greet)")


def test_a_flow_name_defined_twice_names_both_modules(tmp_path: Path, db: Path) -> None:
    flow = '''\
        from botkit import Flow, Turn

        greet = Flow("greet")


        @greet.step("hello", prompt="greet/hello.txt")
        async def hello(turn: Turn) -> None:
            turn.finish("greet/bye.txt")
        '''
    bots = write_package(tmp_path / "dupbots", {"first": flow, "second": flow})

    result = run_cli("check", "--bots", str(bots), db=db)

    assert result.returncode == 2
    assert "flow 'greet' is defined in both dupbots.first and dupbots.second" in result.stderr


# -- start --------------------------------------------------------------------------------


def test_start_creates_conversations_and_queues_first_messages(db: Path) -> None:
    result = run_cli("start", "survey", ANA, BO, db=db)

    assert result.returncode == 0, result.stderr
    assert "survey: started 2 conversations" in result.stdout
    convs = rows(db, "SELECT phone, flow, step, status FROM conversations ORDER BY phone")
    assert convs == [{"phone": p, "flow": "survey", "step": "name", "status": "active"}
                     for p in (ANA, BO)]
    outbound = rows(db, "SELECT phone, step, status, template FROM outbound ORDER BY phone")
    assert outbound == [{"phone": p, "step": "name", "status": "queued",
                         "template": "survey/ask_name.txt"} for p in (ANA, BO)]


def test_start_again_skips_phones_already_in_the_flow(db: Path) -> None:
    assert run_cli("start", "survey", ANA, db=db).returncode == 0

    result = run_cli("start", "survey", ANA, BO, db=db)

    assert result.returncode == 0, result.stderr
    assert f"skipped {ANA}: already at 'name'" in result.stdout
    assert "started 1 conversation, skipped 1;" in result.stdout
    assert len(rows(db, "SELECT id FROM conversations")) == 2
    assert len(rows(db, "SELECT id FROM outbound WHERE phone = ?", [ANA])) == 1


def test_start_from_a_csv_reports_bad_lines_and_starts_the_rest(
    tmp_path: Path, db: Path
) -> None:
    phones = tmp_path / "phones.csv"
    phones.write_text(f"name,phone\nAna,{ANA}\n\nBo,call me\nCy,{CY}\n")

    result = run_cli("start", "survey", "--phones", str(phones), db=db)

    assert result.returncode == 1
    assert f"rejected {phones}:4: 'call me': not a phone number (digits, spaces, +, - and brackets)" in result.stderr
    assert "started 2 conversations, skipped 0, rejected 1;" in result.stdout
    assert [r["phone"] for r in rows(db, "SELECT phone FROM conversations ORDER BY phone")] == [
        ANA, CY]


def test_start_reads_phones_as_people_write_them_and_counts_what_it_drops(
    tmp_path: Path, db: Path
) -> None:
    phones = tmp_path / "phones.csv"
    phones.write_text("name,Phone ,city\nAna,+38 050 124 0002,Kyiv\nBo,380-50-124-0005,Lviv\n"
                      "Cy,(050) 124 0006,Odesa\nDi,+380 50 124 0002,Kyiv\n"
                      "Ed,123456789012345678901,Kyiv\nFe,,Kyiv\n")
    result = run_cli("start", "survey", "+380 (50) 124-0007", "--phones", str(phones), db=db,
                     env={"BOTKIT_PHONE_REGION": "UA"})

    assert result.returncode == 1  # some lines were rejected
    assert f"rejected {phones}:6: '123456789012345678901': too long (21 digits, at most 20)" \
        in result.stderr
    assert f"rejected {phones}:7: '': it is empty" in result.stderr
    assert "started 4 conversations, skipped 0, rejected 2, 1 duplicate;" in result.stdout
    assert [r["phone"] for r in rows(db, "SELECT phone FROM conversations ORDER BY phone")] == [
        "380501240002", "380501240005", "380501240006", "380501240007"]

    without_region = run_cli("start", "survey", "(050) 124 0008", db=db)
    assert "rejected argument '(050) 124 0008': no country has that calling code" in (
        without_region.stderr)


def test_a_csv_without_a_phone_column_says_which_columns_it_has(tmp_path: Path, db: Path) -> None:
    phones = tmp_path / "phones.csv"
    phones.write_text("name,number\nAna,380501240002\n")
    result = run_cli("start", "survey", "--phones", str(phones), db=db)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {phones} has no 'phone' column (its first row: 'name', 'number'): name the"
        " column of phones 'phone', or put the phones in the first column with no header row")


def test_a_bad_phone_region_names_the_setting(db: Path) -> None:
    result = run_cli("start", "survey", "0501240002", db=db, env={"BOTKIT_PHONE_REGION": "XX"})
    assert result.returncode == 2
    assert "BOTKIT_PHONE_REGION" in result.stderr and "two-letter country code" in result.stderr


def test_commands_that_take_a_phone_read_it_as_people_write_it(db: Path) -> None:
    assert run_cli("start", "survey", "380501240009", db=db).returncode == 0
    listed = run_cli("messages", "+38 (050) 124-00-09", db=db)
    assert listed.returncode == 0 and "what's your name?" in listed.stdout
    bad = run_cli("messages", "abc", db=db)
    assert (bad.returncode, bad.stderr.strip()) == (
        2, "error: 'abc': not a phone number (digits, spaces, +, - and brackets)")
    released = run_cli("release", "+380501240009", db=db)
    assert released.stderr.strip() == (
        "error: 380501240009 has no conversation waiting for a human")


def test_conversations_of_an_unknown_flow_suggest_the_right_one(db: Path) -> None:
    result = run_cli("conversations", "--flow", "survy", db=db)
    assert result.returncode == 2
    assert "no flow is named 'survy' (did you mean 'survey'?)" in result.stderr


def test_start_an_unknown_flow_suggests_the_right_one(db: Path) -> None:
    result = run_cli("start", "survy", ANA, db=db)

    assert result.returncode == 2
    assert "no flow is named 'survy' (did you mean 'survey'?)" in result.stderr
    assert not db.exists() or not rows(db, "SELECT id FROM conversations")


def test_start_without_phones_says_how_to_give_them(db: Path) -> None:
    result = run_cli("start", "survey", db=db)

    assert result.returncode == 2
    assert "error: no phone numbers to use: give PHONE arguments or --phones FILE.csv" in (
        result.stderr)


@pytest.mark.parametrize("option, value, message", [
    ("--concurrency", "0", "argument --concurrency: 0 is out of range (1 to 100)"),
    ("--concurrency", "500", "argument --concurrency: 500 is out of range (1 to 100)"),
    ("--concurrency", "many", "argument --concurrency: 'many' is not a number"),
    ("--rate", "-5", "argument --rate: -5 is out of range (0 or more)"),
    ("--rate", "inf", "argument --rate: inf is out of range (0 or more)"),
])
def test_start_refuses_a_sending_option_out_of_range(
    db: Path, option: str, value: str, message: str
) -> None:
    # Not clamped or taken as "no limit" in silence: the message says what to give.
    result = run_cli("start", "survey", ANA, option, value, db=db)

    assert result.returncode == 2
    assert message in result.stderr
    assert not db.exists() or not rows(db, "SELECT id FROM conversations")


# -- conversations, export, release -------------------------------------------------------


def test_conversations_lists_and_filters_by_phone(db: Path) -> None:
    assert run_cli("start", "survey", ANA, BO, db=db).returncode == 0

    everyone = run_cli("conversations", db=db)
    one = run_cli("conversations", "--phone", BO, db=db)

    assert everyone.returncode == 0 and one.returncode == 0
    table = [line.split()[1:5] for line in everyone.stdout.splitlines()[1:]]
    assert sorted(table) == [[ANA, "survey", "name", "active"], [BO, "survey", "name", "active"]]
    assert [line.split()[1] for line in one.stdout.splitlines()[1:]] == [BO]


def test_conversations_on_an_empty_database(db: Path) -> None:
    result = run_cli("conversations", db=db)
    assert result.returncode == 0
    assert "(no conversations)" in result.stdout


async def test_export_writes_answers_and_the_step_of_unfinished_ones(
    tmp_path: Path, db: Path
) -> None:
    async with Harness(flows=[survey], db=db, templates=TEMPLATES) as harness:
        ana = harness.chat(ANA)
        await ana.start("survey")
        await ana.answer("Ana")
        await ana.answer("5")
        await ana.answer("skip")
        bo = harness.chat(BO)
        await bo.start("survey")
        await bo.answer("Bo")
    out = tmp_path / "out.csv"

    result = await asyncio.to_thread(run_cli, "export", "survey", "--csv", str(out), db=db)

    assert result.returncode == 0, result.stderr
    assert f"wrote 2 conversations to {out}" in result.stderr
    with out.open(newline="", encoding="utf-8") as f:
        by_phone = {row["phone"]: row for row in csv.DictReader(f)}
    assert by_phone[ANA]["status"] == "done"
    assert (by_phone[ANA]["name"], by_phone[ANA]["rating"]) == ("Ana", "5")
    assert by_phone[ANA]["comment"] == ""
    assert (by_phone[BO]["status"], by_phone[BO]["step"]) == ("active", "rating")
    assert (by_phone[BO]["name"], by_phone[BO]["rating"]) == ("Bo", "")


async def test_release_gives_a_handed_off_conversation_back_to_the_bot(db: Path) -> None:
    async with Harness(flows=[support], db=db, templates=TEMPLATES) as harness:
        chat = harness.chat(ANA)
        [handed_off] = await chat.send("agent")
        assert "a person from our team" in handed_off.text
    assert rows(db, "SELECT status FROM conversations WHERE phone = ?", [ANA]) == [
        {"status": "human"}]

    result = await asyncio.to_thread(run_cli, "release", ANA, db=db)

    assert result.returncode == 0, result.stderr
    assert f"released conversation 1 of {ANA}" in result.stdout
    assert rows(db, "SELECT status FROM conversations WHERE phone = ?", [ANA]) == [
        {"status": "released"}]


def test_release_without_a_human_conversation_fails(db: Path) -> None:
    assert run_cli("start", "survey", ANA, db=db).returncode == 0

    result = run_cli("release", ANA, db=db)

    assert result.returncode == 1
    assert f"{ANA} has no conversation waiting for a human" in result.stderr
    assert rows(db, "SELECT status FROM conversations") == [{"status": "active"}]


# -- status against a standalone fake provider ---------------------------------------------


@pytest.fixture
def fake_provider(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``run.py fake-provider`` in its own process; yields its URL and access key."""
    port, key = unused_port(), "cli-test-key"
    log = (tmp_path / "fake-provider.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "run.py", "fake-provider", "--port", str(port), "--key", key],
        cwd=ROOT, env=cli_env(tmp_path / "unused.db"), stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}", key
    finally:
        stop(proc)
        log.close()


def test_status_prints_the_delivery_status(
    fake_provider: tuple[str, str], db: Path
) -> None:
    url, key = fake_provider

    async def send() -> int:
        async with ProviderClient(url, key) as client:
            request = SendRequest(source_addr="Acme", destination_addr=ANA,
                                  message_type=MessageType.TWO_WAY_TEXT, text="Hi")
            return (await client.send(request)).message_id

    message_id = asyncio.run(send())
    env = {"BOTKIT_API_KEY": key, "BOTKIT_API_URL": url}

    known = run_cli("status", str(message_id), db=db, env=env)
    unknown = run_cli("status", str(message_id + 1000), db=db, env=env)

    assert known.returncode == 0, known.stderr
    names = {s.name.lower() for s in MessageStatus}
    assert known.stdout.startswith(f"message {message_id}: ")
    assert known.stdout.split()[2] in names
    assert unknown.returncode == 2
    assert f"no message {message_id + 1000} sent in the last 5 days" in unknown.stderr


# -- settings and the default command ------------------------------------------------------


def test_a_bad_setting_names_the_variable(db: Path) -> None:
    result = run_cli("conversations", db=db, env={"BOTKIT_PORT": "notaport"})

    assert result.returncode == 2
    assert "BOTKIT_PORT" in result.stderr and "expected a TCP port number" in result.stderr
    assert "Traceback" not in result.stderr


def test_flags_without_a_command_go_to_serve(tmp_path: Path, db: Path) -> None:
    # serve is the default command, so its flags work without naming it (run.py --port 9000).
    result = run_cli("--bots", str(tmp_path / "nobots"), db=db)

    assert result.returncode == 2
    assert f"bots folder {tmp_path / 'nobots'} does not exist" in result.stderr


def test_serve_runs_the_sandbox_and_stops_on_sigterm(tmp_path: Path, db: Path) -> None:
    port = unused_port()
    out = tmp_path / "serve.out"
    with out.open("wb") as stdout, (tmp_path / "serve.err").open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "run.py"], cwd=ROOT, stdout=stdout, stderr=stderr,
            env=cli_env(db, {"BOTKIT_PORT": str(port)}),
        )
        try:
            health = poll_healthz(port, proc, timeout=10)
            assert health["status"] == "ok" and health["sandbox"] is True
            assert "SANDBOX" in out.read_text()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            stop(proc)


def test_serve_stops_at_once_with_a_chat_stream_open(tmp_path: Path, db: Path) -> None:
    # An open server-sent-events stream (a chat tab) held the stop for the 15 s shutdown
    # timeout and more; it must end as the server stops.
    port = unused_port()
    with (tmp_path / "serve.err").open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "run.py"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=stderr, env=cli_env(db, {"BOTKIT_PORT": str(port)}))
        try:
            poll_healthz(port, proc, timeout=10)
            stream = socket.create_connection(("127.0.0.1", port), timeout=10)
            stream.sendall(b"GET /sandbox/chat/events?phone=380501112233 HTTP/1.1\r\n"
                           b"Host: 127.0.0.1\r\n\r\n")
            assert stream.recv(4096).startswith(b"HTTP/1.1 200")
            began = time.monotonic()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=8) == 0
            took = time.monotonic() - began
            rest = b""
            while chunk := stream.recv(4096):  # the stream was ended, not left hanging
                rest += chunk
            stream.close()
        finally:
            stop(proc)
    assert took < 5, f"the stop took {took:.1f}s"
    assert "stopping: nothing in progress (Ctrl+C again to stop at once)" in (
        tmp_path / "serve.err").read_text()


def test_a_second_ctrl_c_stops_at_once_saying_what_may_be_sent_again(
    tmp_path: Path, db: Path
) -> None:
    port = unused_port()
    with socket.socket() as silent:  # a provider that accepts connections and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        env = cli_env(db, {"BOTKIT_PORT": str(port), "BOTKIT_API_KEY": "k",
                           "BOTKIT_API_URL": f"http://127.0.0.1:{silent.getsockname()[1]}",
                           "BOTKIT_CALLBACK_SECRET": "s" * 24, "BOTKIT_API_TIMEOUT": "60"})
        err = tmp_path / "serve.err"
        with err.open("wb") as stderr:
            proc = subprocess.Popen([sys.executable, "run.py"], cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=stderr, env=env)
            try:
                poll_healthz(port, proc, timeout=10)
                body = json.dumps({"message_token": 1, "phone_number": "380501112233",
                                   "time": 1_800_000_000, "message": {"text": "survey"}})
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/viber/callback/{'s' * 24}", data=body.encode(),
                    headers={"Content-Type": "application/json"})
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                with opener.open(request, timeout=10) as answer:
                    assert answer.status == 200
                deadline = time.monotonic() + 10  # the send is in flight, waiting for an answer
                while poll_healthz(port, proc, 5)["sending"]["in_flight"] != 1:  # type: ignore[index]
                    assert time.monotonic() < deadline, "the send never started"
                    time.sleep(0.05)
                proc.send_signal(signal.SIGINT)
                deadline = time.monotonic() + 10
                while "Ctrl+C again" not in err.read_text():
                    assert time.monotonic() < deadline, err.read_text()
                    time.sleep(0.05)
                began = time.monotonic()
                proc.send_signal(signal.SIGINT)
                assert proc.wait(timeout=5) == 130
                took = time.monotonic() - began
            finally:
                stop(proc)
    text = err.read_text()
    assert "stopping: finishing 1 sends in flight (Ctrl+C again to stop at once)" in text
    assert ("stopping at once: 1 sends in flight may reach their users twice, and 0 messages"
            " being handled are handled at the next start") in text
    assert took < 3, f"the second Ctrl+C took {took:.1f}s"


def test_serve_on_a_taken_port_says_so_before_announcing_anything(db: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port), db=db)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: port {port} on 127.0.0.1 is already in use: another botkit (or another"
        " program) may be running there. Stop it, or choose another port with --port N or"
        " BOTKIT_PORT=N")
    assert "Chat with your bots" not in result.stdout and "serving flows" not in result.stderr
    assert "Errno" not in result.stderr


def test_status_in_sandbox_mode_without_a_server_says_so_in_one_line(db: Path) -> None:
    port = unused_port()
    result = run_cli("status", "1000", "--port", str(port), db=db)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: in sandbox mode (no BOTKIT_API_KEY) the fake provider lives inside the"
        f" server, and no server runs at http://127.0.0.1:{port}: start it with `run.py"
        " serve`, or set BOTKIT_API_KEY to ask the real provider")


def test_an_idle_keep_alive_is_closed_quietly_and_a_trickle_with_a_warning(
    tmp_path: Path, db: Path
) -> None:
    with serving(tmp_path, db, BOTKIT_READ_DEADLINE="1") as (port, err):
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")  # a browser, now idle
        trickle = socket.create_connection(("127.0.0.1", port), timeout=10)
        trickle.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # never finishes its headers
        assert idle.recv(4096) == b"" and trickle.recv(4096) == b""  # both closed
        idle.close()
        trickle.close()
    log = err.read_text()
    assert log.count("closed a connection that sent no whole request") == 1, log
    assert "keep-alive" not in log  # at DEBUG: not an attack


@contextmanager
def serving(tmp_path: Path, db: Path, **env: str) -> Iterator[tuple[int, Path]]:
    """``python run.py`` (the sandbox) on a free port for the block, its log in a file."""
    port = unused_port()
    err = tmp_path / "serve.err"
    with err.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "run.py"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=stderr, env=cli_env(db, {"BOTKIT_PORT": str(port), **env}))
        try:
            poll_healthz(port, proc, timeout=10)
            yield port, err
        finally:
            stop(proc)


def poll_healthz(port: int, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, object]:
    # No proxy: a proxy from the environment must not see loopback requests.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"server exited early with {proc.returncode}"
        try:
            with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                assert response.status == 200
                body: dict[str, object] = json.loads(response.read())
                return body
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"/healthz did not answer within {timeout}s") from None
            time.sleep(0.1)


@pytest.mark.parametrize("loop, expected", [("auto", "uvloop"), ("asyncio", "asyncio"),
                                            ("uvloop", "uvloop")])
def test_serve_runs_on_the_event_loop_botkit_loop_names(
    tmp_path: Path, db: Path, loop: str, expected: str
) -> None:
    with serving(tmp_path, db, BOTKIT_LOOP=loop) as (_, err):
        pass
    assert f"event loop: {expected}" in err.read_text()


def test_an_unknown_event_loop_is_refused_naming_the_setting(db: Path) -> None:
    result = run_cli("serve", db=db, env={"BOTKIT_LOOP": "trio"})
    assert result.returncode == 2
    assert "BOTKIT_LOOP" in result.stderr and "auto, uvloop or asyncio" in result.stderr
