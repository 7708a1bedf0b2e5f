"""Languages (docs/languages.md): a conversation's locale picks its templates, is guessed from
the number at the start, switched by a handler, kept in the database; Babel formats dates and
numbers. End to end where it matters: real server, SQLite file, fake provider."""

from __future__ import annotations

from pathlib import Path

import pytest

from botkit import Flow, Turn
from botkit.config import Settings
from botkit.core.locales import Locales
from botkit.runtime.templates import Renderer

UA, UK = "380501230001", "447700900123"


def templates(root: Path) -> Path:
    files = {
        "polyglot/ask_name.txt": "What's your name?",
        "uk/polyglot/ask_name.txt": "Як вас звати?",
        "polyglot/thanks.txt": "Thanks, {{ name }}! Your order: {{ total | currency('EUR') }}.",
        "uk/polyglot/thanks.txt": "Дякуємо, {{ name }}! Ваше замовлення: {{ total | currency('EUR') }}.",
        "polyglot/ask_language.txt": "English or українська?",
        "pt/polyglot/ask_name.txt": "Qual é o seu nome?",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def polyglot() -> Flow:
    flow = Flow("polyglot", keywords=["hi"], start="language")

    @flow.step("language", prompt="polyglot/ask_language.txt")
    async def language(turn: Turn) -> None:
        turn.locale = "uk" if "укр" in turn.text.lower() else "en"
        turn.ask("name")

    @flow.step("name", prompt="polyglot/ask_name.txt")
    async def name(turn: Turn) -> None:
        turn.finish("polyglot/thanks.txt", name=turn.text.strip(), total=1234.5)

    return flow


def test_a_template_is_looked_up_in_the_locale_then_its_language_then_as_is(tmp_path):
    renderer = Renderer(templates(tmp_path))
    assert renderer.render("polyglot/ask_name.txt", {}, "uk").text == "Як вас звати?"
    assert renderer.render("polyglot/ask_name.txt", {}, "pt_BR").text == "Qual é o seu nome?"
    assert renderer.render("polyglot/ask_name.txt", {}, "de").text == "What's your name?"
    assert renderer.render("polyglot/ask_name.txt", {}).text == "What's your name?"
    # botkit's own templates ship in Ukrainian
    assert renderer.render("botkit/error.txt", {}, "uk").text.startswith("Вибачте")


def test_dates_and_numbers_are_formatted_for_the_locale(tmp_path):
    (tmp_path / "when.txt").write_text(
        "{{ at | date }}; {{ at | datetime('short', 'Europe/Kyiv') }}; {{ n | number }};"
        " {{ share | percent }}")
    renderer = Renderer(tmp_path)
    values = {"at": 1_800_000_000, "n": 1234567.5, "share": 0.25}
    assert renderer.render("when.txt", values, "en").text == (
        "Jan 15, 2027; 1/15/27, 10:00\u202fAM; 1,234,567.5; 25%")
    uk = renderer.render("when.txt", values, "uk").text
    assert uk == "15 січ. 2027\u202fр.; 15.01.27, 10:00; 1\xa0234\xa0567,5; 25%"


def test_the_locale_is_guessed_from_the_number_else_the_default():
    locales = Locales("en", {"380": "uk", "3805012": "ru"})
    assert locales.guess(UK) == "en"
    assert locales.guess("380671112233") == "uk"
    assert locales.guess(UA) == "ru"  # the longest prefix wins
    assert Settings(locales="380=uk, 48=pl").locales == {"380": "uk", "48": "pl"}
    with pytest.raises(ValueError, match="is not a locale"):
        Settings(default_locale="klingon")


async def test_a_new_conversation_speaks_the_guessed_language(bot_harness, tmp_path):
    bot = await bot_harness(flows=[polyglot()], templates=templates(tmp_path),
                            locales={"380": "uk"})
    [fallback] = await bot.chat(UA).send("??", tracking=None)  # no flow: botkit's own reply
    assert fallback.text.startswith("Вибачте, я не зрозумів")
    [english] = await bot.chat(UK).send("??", tracking=None)
    assert english.text.startswith("Sorry, I didn't understand")
    await bot.chat(UA).send("hi", tracking=None)
    assert bot.chat(UA).conversation().locale == "uk"


async def test_a_handler_switches_the_language_and_it_is_kept_across_a_restart(
        bot_harness, tmp_path):
    bot = await bot_harness(flows=[polyglot()], templates=templates(tmp_path))
    chat = bot.chat(UK)
    [language] = await chat.send("hi")
    assert language.text == "English or українська?"
    [name] = await chat.answer("Українська")
    assert name.text == "Як вас звати?"  # the turn that switched already speaks it
    assert chat.conversation().locale == "uk"
    await bot.restart()
    [thanks] = await chat.answer("Олена")
    assert thanks.text == "Дякуємо, Олена! Ваше замовлення: 1\xa0234,50\xa0EUR."


def test_run_py_check_reports_missing_translations_with_file_and_line(tmp_path):
    import subprocess
    import sys

    from test_cli import ROOT, cli_env, write_package

    write_package(tmp_path / "bots", {"greet": '''
        from botkit import Flow, Turn

        greet = Flow("greet", keywords=["hi"])


        @greet.step("first", prompt="greet/hello.txt")
        async def first(turn: Turn) -> None:
            turn.finish("greet/bye.txt")
    '''})
    folder = tmp_path / "templates"
    for name, text in {"greet/hello.txt": "Hello!", "greet/bye.txt": "Bye!",
                       "uk/greet/hello.txt": "Привіт!"}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    result = subprocess.run(
        [sys.executable, "run.py", "check", "--bots", str(tmp_path / "bots"), "--templates",
         str(folder)], cwd=ROOT, env=cli_env(tmp_path / "bot.db"), capture_output=True,
        text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr  # a missing translation is no error
    lines = result.stdout.splitlines()
    report = lines.index("uk: 1 template without a translation (templates/uk/...; the"
                         " untranslated one is sent):")
    assert lines[report + 1].startswith("  greet/bye.txt (")
    assert lines[report + 1].endswith("greet.py:9)")  # the turn.finish() that names it
