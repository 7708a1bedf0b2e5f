"""Renderer: message text from Jinja templates, plus the image and button of a 208.

Templates live in ``templates/<bot>/<name>.txt``. A template sets the rich parts of a
message with top-level ``set`` statements, read back from the template's module::

    Thanks, {{ name }}!
    {% set image = "https://example.com/thanks.png" %}
    {% set button = {"caption": "See results", "url": "https://example.com/results"} %}

Rendering is strict (``StrictUndefined``: a missing variable is an error) and does no HTML
escaping. User text only ever reaches a template as a variable, so a user who writes
``{{ 7*7 }}`` sees it back literally. Every template sees ``state`` (the conversation's),
``phone``, and ``public_url`` (the server's public base URL, for images it serves from
``static/``). Built-in templates (``botkit/fallback.txt``,
``botkit/error.txt``) can be overridden by a file of the same name in the templates folder.

A conversation's language (``locale``, docs/languages.md) picks ``templates/<locale>/<name>``
when it exists, then ``templates/<language>/<name>`` (``uk`` for ``uk_UA``), then
``templates/<name>``; botkit's own templates ship in English and Ukrainian. Babel's filters
format for that locale: ``{{ when | date }}``, ``{{ when | datetime("short") }}``,
``{{ n | number }}``, ``{{ price | currency("EUR") }}`` (a date or time may be a
``datetime``, a ``date``, or a Unix time).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import jinja2
from babel import Locale, UnknownLocaleError, dates, numbers

from botkit.errors import DefinitionError, ReplyLimitError

__all__ = ["Rendered", "Renderer"]

TEXT_LIMIT = 1000


@dataclass(frozen=True)
class Rendered:
    """A rendered message: its text and, for a 208, its image and button."""

    text: str
    image: str | None = None
    button_caption: str | None = None
    button_action: str | None = None

    @property
    def rich(self) -> bool:
        """True when the message carries an image or a button (sent as 208)."""
        return self.image is not None or self.button_caption is not None


class Renderer:
    """Renders templates from a folder, falling back to botkit's built-in ones.

    >>> Renderer("templates").render("survey/ask_name.txt", {}).text
    "Hi! What's your name?"
    """

    def __init__(
        self, folder: str | Path | None = "templates", globals: Mapping[str, Any] | None = None
    ) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if folder is not None:
            loaders.append(jinja2.FileSystemLoader(str(folder)))
        loaders.append(jinja2.PackageLoader("botkit", "default_templates"))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            auto_reload=False,
            cache_size=-1,  # compile each template once per process
        )
        self.env.globals.update(globals or {})
        self.env.filters.update(_FILTERS)
        self._localized: dict[tuple[str, str | None], str] = {}

    def localized(self, name: str, locale: str | None) -> str:
        """The template that speaks ``locale``: ``<locale>/<name>``, ``<language>/<name>``,
        or ``name`` itself, the first that exists (remembered per process)."""
        key = (name, locale)
        found = self._localized.get(key)
        if found is None:
            found = name
            for candidate in _candidates(name, locale):
                try:
                    self.env.get_template(candidate)
                except jinja2.TemplateNotFound:
                    continue
                found = candidate
                break
            self._localized[key] = found
        return found

    def render(
        self, name: str, variables: Mapping[str, Any], locale: str | None = None
    ) -> Rendered:
        """Render template ``name`` in ``locale`` (``localized``); raises DefinitionError or
        ReplyLimitError naming it."""
        if locale is not None:
            name = self.localized(name, locale)
            variables = {"locale": locale, **variables}
        template = self.load(name)
        try:
            module = template.make_module(dict(variables))
        except jinja2.UndefinedError as exc:
            raise DefinitionError(f"template {name}: {exc} ({_advice(str(exc))})") from exc
        except jinja2.TemplateError as exc:
            raise DefinitionError(f"template {name}: {exc}") from exc
        text = str(module).strip()
        if not text:
            raise ReplyLimitError("text", f"template {name} rendered empty text", text)
        if len(text) > TEXT_LIMIT:
            raise ReplyLimitError(
                "text", f"template {name} rendered {len(text)} characters, limit 1000", text
            )
        image = getattr(module, "image", None)
        button = getattr(module, "button", None)
        caption, action = _button(name, button)
        return Rendered(text, str(image) if image else None, caption, action)

    def load(self, name: str) -> jinja2.Template:
        """Load and compile template ``name``, raising DefinitionError with file and line."""
        try:
            template = self.env.get_template(name)  # compiled once, then cached
        except jinja2.TemplateNotFound:
            close = difflib.get_close_matches(name, self.env.list_templates(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DefinitionError(
                f"template {name} not found in the templates folder{hint}") from None
        except jinja2.TemplateSyntaxError as exc:
            where = f"{exc.filename or name}:{exc.lineno}"
            raise DefinitionError(f"template {where}: {exc.message}") from exc
        if type(template.globals) is not dict:
            # Jinja chains the template's globals to the environment's and copies the chain
            # into every render's context, key by key in Python: a flat copy made once (the
            # globals are set before any template loads) makes each render cheaper.
            template.globals = dict(template.globals)
        return template


def _candidates(name: str, locale: str | None) -> list[str]:
    if not locale:
        return []
    language = locale.split("_")[0]
    return list(dict.fromkeys([f"{locale}/{name}", f"{language}/{name}"]))


def _locale_of(context: Any) -> Locale:
    code = context.get("locale") or "en"
    try:
        return Locale.parse(code)
    except (UnknownLocaleError, ValueError):
        return Locale.parse("en")


def _moment(value: Any) -> datetime | date:
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    return value  # type: ignore[no-any-return]


@jinja2.pass_context
def _date(context: Any, value: Any, format: str = "medium") -> str:
    return dates.format_date(_moment(value), format, locale=_locale_of(context))


@jinja2.pass_context
def _datetime(context: Any, value: Any, format: str = "medium", tz: str = "UTC") -> str:
    moment = _moment(value)
    return dates.format_datetime(moment, format, tzinfo=dates.get_timezone(tz),
                                 locale=_locale_of(context))


@jinja2.pass_context
def _time(context: Any, value: Any, format: str = "short", tz: str = "UTC") -> str:
    moment = _moment(value)
    if not isinstance(moment, datetime):
        raise TypeError(f"the time filter needs a datetime or a Unix time, got {value!r}")
    return dates.format_time(moment, format, tzinfo=dates.get_timezone(tz),
                             locale=_locale_of(context))


@jinja2.pass_context
def _number(context: Any, value: Any) -> str:
    return numbers.format_decimal(value, locale=_locale_of(context))


@jinja2.pass_context
def _percent(context: Any, value: Any) -> str:
    return numbers.format_percent(value, locale=_locale_of(context))


@jinja2.pass_context
def _currency(context: Any, value: Any, currency: str) -> str:
    return numbers.format_currency(value, currency, locale=_locale_of(context))


# Babel's formatting, for the conversation's locale (``locale`` in the template's variables).
_FILTERS = {"date": _date, "datetime": _datetime, "time": _time, "number": _number,
            "percent": _percent, "currency": _currency}


def _advice(problem: str) -> str:
    """What to do about a missing name: a variable is passed by the reply, a key of
    ``state`` is written by a handler (``'dict object' has no attribute 'topik'``)."""
    if "has no attribute" in problem:
        return ("a key this value does not have: if it is state.<key>, check its spelling,"
                " or set turn.state[<key>] in a handler first; `run.py check` finds both")
    return "pass it to the reply, as in turn.say(template, name=...); `run.py check` finds these"


def _button(name: str, button: Any) -> tuple[str | None, str | None]:
    if not button:
        return None, None
    if not isinstance(button, Mapping) or set(button) != {"caption", "url"}:
        raise DefinitionError(
            f'template {name}: button must be {{"caption": ..., "url": ...}}, got {button!r}'
        )
    return str(button["caption"]), str(button["url"])
