"""Jinja replies: strict, unescaped, user text stays text, 208 parts, limits, overrides."""

from __future__ import annotations

import pytest
from demo import TEMPLATES, demo, echo

from botkit import DefinitionError, ReplyLimitError
from botkit.runtime.templates import Renderer


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_missing_variable_is_an_error(tmp_path):
    write(tmp_path, "b/t.txt", "Hi {{ name }}")
    with pytest.raises(DefinitionError, match="template b/t.txt: 'name' is undefined"):
        Renderer(tmp_path).render("b/t.txt", {})


def test_no_html_escaping_and_trimmed(tmp_path):
    write(tmp_path, "b/t.txt", "\n  <b>{{ x }}</b> & co  \n")
    assert Renderer(tmp_path).render("b/t.txt", {"x": "Tom & Jerry"}).text == (
        "<b>Tom & Jerry</b> & co")


def test_template_sets_image_and_button(tmp_path):
    write(tmp_path, "b/t.txt", 'Hello\n{% set image = "https://x.test/a.png" %}'
          '{% set button = {"caption": "Go", "url": "https://x.test/go"} %}')
    rendered = Renderer(tmp_path).render("b/t.txt", {})
    assert (rendered.text, rendered.image, rendered.button_caption, rendered.button_action) == (
        "Hello", "https://x.test/a.png", "Go", "https://x.test/go")
    assert rendered.rich


def test_bad_button_shape(tmp_path):
    write(tmp_path, "b/t.txt", 'Hi{% set button = "Go" %}')
    with pytest.raises(DefinitionError, match='button must be {"caption": ..., "url": ...}'):
        Renderer(tmp_path).render("b/t.txt", {})


def test_text_limit_and_empty_text(tmp_path):
    write(tmp_path, "b/long.txt", "{{ 'x' * 1001 }}")
    write(tmp_path, "b/empty.txt", "{% if false %}x{% endif %}")
    with pytest.raises(ReplyLimitError, match="rendered 1001 characters, limit 1000"):
        Renderer(tmp_path).render("b/long.txt", {})
    with pytest.raises(ReplyLimitError, match="rendered empty text"):
        Renderer(tmp_path).render("b/empty.txt", {})


def test_syntax_error_and_missing_template_name_file_and_line(tmp_path):
    write(tmp_path, "b/bad.txt", "line one\n{% if %}\n")
    with pytest.raises(DefinitionError, match=r"template .*b/bad.txt:2: "):
        Renderer(tmp_path).load("b/bad.txt")
    with pytest.raises(DefinitionError, match="template b/none.txt not found"):
        Renderer(tmp_path).load("b/none.txt")


def test_builtin_templates_can_be_overridden(tmp_path):
    assert Renderer(tmp_path).render("botkit/error.txt", {}).text.startswith("Sorry")
    write(tmp_path, "botkit/error.txt", "Our own error text")
    assert Renderer(tmp_path).render("botkit/error.txt", {}).text == "Our own error text"


async def test_user_text_is_never_evaluated(bot_harness):
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    chat = bot.chat("380500000005")
    await chat.send("echo")
    [said] = await chat.answer("{{ 7*7 }} {% raw %}<script>")
    assert said.text == "You said {{ 7*7 }} {% raw %}<script>"
