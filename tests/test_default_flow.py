"""The default flow (``Flow(default="ask" | "handle")``, docs/routing.md rule 3): whatever a
phone with no open conversation writes, when it is no keyword, starts it. End to end: real
server, SQLite file, fake provider."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from demo import TEMPLATES, demo
from test_cli import ROOT, cli_env, write_package

from botkit import Flow, Turn
from botkit.core.flows import FlowSet
from botkit.errors import DefinitionError
from botkit.testing import Clock

PHONE = "380500000071"


def greeter(default: str) -> Flow:
    flow = Flow("greeter", default=default, keywords=["hello"], timeout=timedelta(hours=1))

    @flow.step("first", prompt="demo/ask_one.txt")
    async def first(turn: Turn) -> None:
        turn.say("demo/said.txt", text=turn.text)

    return flow


async def test_default_ask_starts_at_the_first_question_for_any_message(bot_harness):
    bot = await bot_harness(flows=[demo, greeter("ask")], templates=TEMPLATES)
    chat = bot.chat(PHONE)
    [question] = await chat.send("where is my order?", tracking=None)
    assert (question.text, question.step) == ("Question one?", "first")
    [said] = await chat.answer("Ana")  # the conversation is open: its step gets the answer
    assert said.text == "You said Ana"
    route = bot.db().execute("SELECT route FROM inbound ORDER BY id LIMIT 1").fetchone()
    assert route == ("start",)


async def test_default_handle_gives_the_first_message_to_the_step(bot_harness):
    bot = await bot_harness(flows=[demo, greeter("handle")], templates=TEMPLATES)
    [said] = await bot.chat(PHONE).send("hi there", tracking=None)
    assert said.text == "You said hi there"
    assert bot.chat(PHONE).conversation().flow == "greeter"
    route = bot.db().execute("SELECT route FROM inbound ORDER BY id LIMIT 1").fetchone()
    assert route == ("entry",)


async def test_keywords_and_open_conversations_come_first(bot_harness):
    clock = Clock()
    bot = await bot_harness(flows=[demo, greeter("ask")], templates=TEMPLATES, clock=clock)
    chat = bot.chat(PHONE)
    [question] = await chat.send("demo", tracking=None)  # another flow's keyword
    assert chat.conversation().flow == "demo"
    [two] = await chat.send("Ana", tracking=None)  # the open conversation gets it
    assert two.step == "two"
    assert question.step == "one"
    clock.advance(hours=2)  # demo's conversation expires, and its timer closes it
    await bot.sweep()
    assert chat.conversation().status.value == "expired"
    [greeting] = await chat.send("anything", tracking=None)  # none open: the default
    assert chat.conversation().flow == "greeter" and greeting.step == "first"


async def test_without_a_default_flow_the_fallback_reply_remains(bot_harness):
    bot = await bot_harness(flows=[demo], templates=TEMPLATES)
    [fallback] = await bot.chat(PHONE).send("hello?", tracking=None)
    assert fallback.step is None and "demo" in fallback.text  # it lists the keywords


def test_at_most_one_default_flow_and_it_must_have_what_it_starts_with():
    other = Flow("other", default="handle")

    @other.step("only")
    async def only(turn: Turn) -> None:
        turn.finish()

    with pytest.raises(DefinitionError, match="'greeter' and 'other' are both the default"):
        FlowSet([greeter("ask"), other])
    silent = Flow("silent", default="ask")

    @silent.step("only")
    async def quiet(turn: Turn) -> None:
        turn.finish()

    with pytest.raises(DefinitionError, match="has no prompt to ask"):
        FlowSet([silent])
    with pytest.raises(DefinitionError, match="default must be 'ask' or 'handle'"):
        Flow("odd", default="yes")  # type: ignore[arg-type]
    assert FlowSet([demo]).default is None


def test_run_py_check_names_the_default_flow(tmp_path):
    write_package(tmp_path / "bots", {"greet": '''
from botkit import Flow, Turn

greeter = Flow("greeter", default="ask")


@greeter.step("first", prompt="greet/hello.txt")
async def first(turn: Turn) -> None:
    turn.finish()
'''})
    (tmp_path / "templates" / "greet").mkdir(parents=True)
    (tmp_path / "templates" / "greet" / "hello.txt").write_text("Hello!")
    result = subprocess.run(
        [sys.executable, "run.py", "check", "--bots", str(tmp_path / "bots"), "--templates",
         str(tmp_path / "templates")], cwd=ROOT, env=cli_env(tmp_path / "bot.db"),
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "default flow: greeter (a message that is no keyword starts it and asks its" \
        " first question)" in result.stdout
