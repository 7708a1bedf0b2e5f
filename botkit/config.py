"""Settings: one typed, validated object built from ``BOTKIT_*`` variables or keyword arguments.

Tests build it directly (``Settings(db=tmp_path / "bot.db")``); the server builds it with
``Settings.from_env()``, which also reads a ``.env`` file when one exists.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping
from datetime import time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from botkit.errors import ConfigError

__all__ = ["DEFAULT_API_URL", "OPT_IN_KEYWORDS", "OPT_OUT_KEYWORDS", "POSTGRES_SCHEMES",
           "Settings", "parse_window"]

DEFAULT_API_URL = "https://web.it-decision.com/v1/api"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")  # a BOTKIT_DB that is not a SQLite file
# The suppression list's keywords by default (docs/consent.md): English, Ukrainian, Russian.
OPT_OUT_KEYWORDS = ("stop", "unsubscribe", "стоп", "відписатися", "отписаться")
OPT_IN_KEYWORDS = ("start",)

log = logging.getLogger("botkit.config")

# Settings field -> (environment variable, accepted form shown in errors)
ENV_VARS: dict[str, tuple[str, str]] = {
    "api_key": ("BOTKIT_API_KEY", "the access key from your account manager"),
    "api_url": ("BOTKIT_API_URL", "an http(s) URL such as https://web.it-decision.com/v1/api"),
    "public_url": ("BOTKIT_PUBLIC_URL", "the http(s) base URL the provider reaches this server at"),
    "callback_secret": ("BOTKIT_CALLBACK_SECRET", "at least 16 URL-safe characters"),
    "db": ("BOTKIT_DB", "a SQLite file such as botkit.db, or a PostgreSQL URL such as"
                        " postgresql://botkit@db.internal/botkit"),
    "db_pool": ("BOTKIT_DB_POOL", "PostgreSQL connections per process (1-100)"),
    "host": ("BOTKIT_HOST", "an interface address such as 127.0.0.1 or 0.0.0.0"),
    "port": ("BOTKIT_PORT", "a TCP port number 1-65535"),
    "sender": ("BOTKIT_SENDER", "the default sender name (source_addr), 1-20 characters"),
    "sandbox": ("BOTKIT_SANDBOX", "1 to force the sandbox (and its web chat) on, 0 for off"),
    "status_poll_after": ("BOTKIT_STATUS_POLL_AFTER",
                          "seconds after sending to ask for a status that never came (>= 60)"),
    "send_rate": ("BOTKIT_SEND_RATE", "the most messages sent per second (0: no limit)"),
    "send_concurrency": ("BOTKIT_SEND_CONCURRENCY",
                         "how many messages may be on their way to the provider at once (1-100)"),
    "api_timeout": ("BOTKIT_API_TIMEOUT", "seconds to wait for each provider request (> 0)"),
    "read_deadline": ("BOTKIT_READ_DEADLINE",
                      "seconds a client may take to send a request, or stay idle (> 0)"),
    "lease": ("BOTKIT_LEASE", "seconds without a heartbeat after which a process counts as"
                              " gone and another takes its work over (>= 1)"),
    "loop": ("BOTKIT_LOOP", "auto, uvloop or asyncio: the event loop `serve` runs on"),
    "crash_at": ("BOTKIT_CRASH_AT", "POINT:N, a crash point for reliability tests"),
    "log_format": ("BOTKIT_LOG_FORMAT", "text (lines for people) or json (one JSON object"
                                        " a line)"),
    "console": ("BOTKIT_CONSOLE", "on (the operator console at /console on the bot's own"
                                  " address), off, or HOST:PORT (an address of its own)"),
    "opt_out_keywords": ("BOTKIT_OPT_OUT_KEYWORDS",
                         "words that put a phone on the suppression list, comma-separated"
                         " (empty: none; docs/consent.md)"),
    "opt_in_keywords": ("BOTKIT_OPT_IN_KEYWORDS",
                        "words that take a phone off the suppression list, comma-separated"),
    "opt_in_by_flow_keyword": ("BOTKIT_OPT_IN_BY_FLOW_KEYWORD",
                               "true: a flow's keyword from a phone that opted out starts the"
                               " flow and takes the phone off the list (default false)"),
    "quiet_hours": ("BOTKIT_QUIET_HOURS",
                    "the local night in which the bot starts no message, as 21:00-09:00"
                    " (or off)"),
    "phone_zones": ("BOTKIT_PHONE_ZONES",
                    "time zones by number prefix, comma-separated, such as"
                    " 7=Europe/Moscow,1808=Pacific/Honolulu (*=ZONE: numbers of no known"
                    " zone)"),
    "max_unanswered": ("BOTKIT_MAX_UNANSWERED",
                       "the most bot messages a phone gets in a row without writing back"
                       " (0: no limit)"),
    "max_proactive_per_day": ("BOTKIT_MAX_PROACTIVE_PER_DAY",
                              "the most messages the bot starts to one phone in 24 hours"
                              " (0: no limit)"),
    "default_locale": ("BOTKIT_DEFAULT_LOCALE",
                       "the language of conversations whose number guesses none, such as en"),
    "locales": ("BOTKIT_LOCALES",
                "languages by number prefix, comma-separated, such as 380=uk,48=pl"),
    "phone_region": ("BOTKIT_PHONE_REGION",
                     "the country of phone numbers typed without their country code, as a"
                     " two-letter code such as UA"),
}


def _by_prefix(value: object, form: str, wildcard: bool = False) -> object:
    """A setting by number prefix: the environment's comma-separated ``PREFIX=VALUE`` pairs
    as a dict, each prefix digits (or ``*`` with ``wildcard``)."""
    if isinstance(value, str):
        pairs = [p.partition("=") for p in value.split(",") if p.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ValueError(f"write each as {form}")
        value = {k.strip().lstrip("+"): v.strip() for k, _, v in pairs}
    if isinstance(value, dict):
        for prefix in value:
            if not (prefix.isdigit() or wildcard and prefix == "*"):
                also = ", or *" if wildcard else ""
                raise ValueError(f"{prefix!r} is not a number prefix (digits{also})")
    return value


def _checked_locale(code: str) -> str:
    """``code`` if Babel knows it as a locale (``uk``, ``pt_BR``), else ValueError."""
    from babel import Locale, UnknownLocaleError

    try:
        Locale.parse(code)
    except (UnknownLocaleError, ValueError):
        raise ValueError(f"{code!r} is not a locale (such as en, uk or pt_BR)") from None
    return code


def parse_window(text: str) -> tuple[time, time] | None:
    """``"21:00-09:00"`` as (start, end) local times; ``"off"`` or empty: None.

    >>> parse_window("21:00-09:00")
    (datetime.time(21, 0), datetime.time(9, 0))
    """
    text = text.strip().lower()
    if text in ("", "off", "none", "false", "0"):
        return None
    start, sep, end = text.partition("-")
    try:
        if not sep:
            raise ValueError
        window = time.fromisoformat(start.strip()), time.fromisoformat(end.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a window: write it as 21:00-09:00 (or off)") from None
    if window[0] == window[1]:
        raise ValueError(f"{text!r} is empty: its start and end are the same (write off)")
    return window


class Settings(BaseModel):
    """Everything the server needs to run, validated when built.

    >>> Settings(db="bot.db", port=9090).public_base
    'http://127.0.0.1:9090'
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    api_key: SecretStr | None = None
    api_url: str = DEFAULT_API_URL
    public_url: str | None = None
    callback_secret: SecretStr | None = None
    # A SQLite file (a Path), or a PostgreSQL URL (kept as the string it is).
    db: Path | str = Path("botkit.db")
    db_pool: int = Field(default=10, ge=1, le=100)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    sender: str = Field(default="botkit", min_length=1, max_length=20)
    sandbox_mode: bool | None = Field(default=None, alias="sandbox")
    status_poll_after: float = Field(default=900.0, ge=60)
    send_rate: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    send_concurrency: int = Field(default=100, ge=1, le=100)  # the client keeps 100 connections
    api_timeout: float = Field(default=10.0, gt=0)
    read_deadline: float = Field(default=10.0, gt=0)
    lease: float = Field(default=30.0, ge=1, allow_inf_nan=False)
    loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    crash_at: str | None = None
    phone_region: str | None = None
    console: str = "on"
    log_format: Literal["text", "json"] = "text"
    opt_out_keywords: tuple[str, ...] = OPT_OUT_KEYWORDS
    opt_in_keywords: tuple[str, ...] = OPT_IN_KEYWORDS
    opt_in_by_flow_keyword: bool = False
    # (start, end) of the phone's local night; None: no quiet hours (docs/consent.md).
    quiet_hours: tuple[time, time] | None = (time(21), time(9))
    phone_zones: dict[str, str] = Field(default_factory=dict)
    max_unanswered: int = Field(default=5, ge=0)
    max_proactive_per_day: int = Field(default=10, ge=0)
    default_locale: str = "en"
    locales: dict[str, str] = Field(default_factory=dict)

    @field_validator("default_locale")
    @classmethod
    def _locale(cls, value: str) -> str:
        return _checked_locale(value.strip())

    @field_validator("locales", mode="before")
    @classmethod
    def _locales(cls, value: object) -> object:
        value = _by_prefix(value, "PREFIX=LOCALE, such as 380=uk")
        for locale in value.values() if isinstance(value, dict) else ():
            _checked_locale(locale)
        return value

    @field_validator("quiet_hours", mode="before")
    @classmethod
    def _window(cls, value: object) -> object:
        return parse_window(value) if isinstance(value, str) else value

    @field_validator("phone_zones", mode="before")
    @classmethod
    def _zones(cls, value: object) -> object:
        value = _by_prefix(value, "PREFIX=ZONE, such as 7=Europe/Moscow", wildcard=True)
        for zone in value.values() if isinstance(value, dict) else ():
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"{zone!r} is not a time zone (such as Europe/Kyiv)") from None
        return value

    @field_validator("opt_out_keywords", "opt_in_keywords", mode="before")
    @classmethod
    def _words(cls, value: object) -> object:
        if isinstance(value, str):  # from the environment: comma-separated
            return tuple(w.strip() for w in value.split(",") if w.strip())
        return value

    @field_validator("console")
    @classmethod
    def _console(cls, value: str) -> str:
        value = value.strip()
        if value.lower() in ("on", "off"):
            return value.lower()
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is neither on, off nor HOST:PORT")
        return value

    @property
    def console_address(self) -> tuple[str, int] | None:
        """Where the console listens when it has an address of its own (else None)."""
        if self.console in ("on", "off"):
            return None
        host, _, port = self.console.rpartition(":")
        return host.strip("[]"), int(port)

    @field_validator("db")
    @classmethod
    def _db(cls, value: Path | str) -> Path | str:
        if isinstance(value, str) and not value.startswith(POSTGRES_SCHEMES):
            if "://" in value:
                raise ValueError(f"{value.split('://')[0]}:// is not a database botkit knows")
            return Path(value)
        return value

    @field_validator("phone_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from botkit.phones import check_region  # phonenumbers loads only when a region is set

        return check_region(value)

    @field_validator("api_url", "public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("callback_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            raw = value.get_secret_value()
            if len(raw) < 16 or not all(c.isalnum() or c in "-_" for c in raw):
                raise ValueError("must be at least 16 characters of A-Z, a-z, 0-9, - or _")
        return value

    @field_validator("api_key")
    @classmethod
    def _blank_key(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value().strip() else None

    @model_validator(mode="after")
    def _key_or_sandbox(self) -> Settings:
        if self.sandbox_mode is False and self.api_key is None:
            raise ValueError("BOTKIT_SANDBOX=0 needs BOTKIT_API_KEY: set the key, or let the"
                             " sandbox run")
        return self

    @property
    def sandbox(self) -> bool:
        """True when the built-in sandbox runs: no provider key, or ``BOTKIT_SANDBOX=1``."""
        return self.api_key is None if self.sandbox_mode is None else self.sandbox_mode

    @property
    def public_base(self) -> str:
        """The base URL the provider posts callbacks to (``BOTKIT_PUBLIC_URL`` or host:port)."""
        return self.public_url or f"http://{self.host}:{self.port}"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        env_file: str | Path | None = ".env",
        **overrides: Any,
    ) -> Settings:
        """Build settings from ``BOTKIT_*`` variables, a ``.env`` file, then ``overrides``.

        Real environment variables win over the file; keyword overrides (command-line flags)
        win over both. Raises ConfigError naming the variable and the accepted form.

        >>> Settings.from_env({"BOTKIT_PORT": "9000"}, env_file=None).port
        9000
        """
        values: dict[str, Any] = {}
        sources: list[Mapping[str, str | None]] = []
        if env_file is not None and Path(env_file).is_file():
            sources.append(dotenv_values(env_file))
        sources.append(os.environ if environ is None else environ)
        for source in sources:
            for field, (var, _) in ENV_VARS.items():
                raw = source.get(var)
                if raw is not None and raw != "":
                    values[field] = raw
        _warn_unknown(sources)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None


def _warn_unknown(sources: list[Mapping[str, str | None]]) -> None:
    known = [var for var, _ in ENV_VARS.values()]
    for source in sources:
        for name in source:
            if name.startswith("BOTKIT_") and name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                log.warning("ignoring unknown setting %s%s", name, hint)


def _explain(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        if not error["loc"]:
            lines.append(str(error["msg"]).removeprefix("Value error, "))
            continue
        field = str(error["loc"][0])
        var, form = ENV_VARS.get(field, (field, "a valid value"))
        lines.append(f"{var}: {error['msg']}; expected {form}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
