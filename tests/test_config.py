"""Settings from the environment, a .env file and flags, with errors that say what to fix."""

from __future__ import annotations

import pytest

from botkit import ConfigError, Settings


def test_defaults_and_sandbox():
    settings = Settings.from_env({}, env_file=None)
    assert settings.sandbox and settings.port == 8080 and settings.host == "127.0.0.1"
    assert settings.api_url == "https://web.it-decision.com/v1/api"
    assert settings.public_base == "http://127.0.0.1:8080"
    assert Settings.from_env({"BOTKIT_API_KEY": "  "}, env_file=None).sandbox


def test_env_file_then_environment_then_flags(tmp_path):
    env = tmp_path / ".env"
    env.write_text("BOTKIT_PORT=9001\nBOTKIT_SENDER=FromFile\nBOTKIT_API_KEY=k1\n")
    settings = Settings.from_env({"BOTKIT_PORT": "9002"}, env_file=env)
    assert (settings.port, settings.sender, settings.sandbox) == (9002, "FromFile", False)
    assert Settings.from_env({"BOTKIT_PORT": "9002"}, env_file=env, port=9003).port == 9003


def test_key_is_never_shown():
    settings = Settings.from_env({"BOTKIT_API_KEY": "very-secret-key"}, env_file=None)
    assert "very-secret-key" not in repr(settings) and "very-secret-key" not in str(settings)


@pytest.mark.parametrize("env, message", [
    ({"BOTKIT_PORT": "notaport"}, "BOTKIT_PORT: "),
    ({"BOTKIT_PORT": "70000"}, "a TCP port number 1-65535"),
    ({"BOTKIT_API_URL": "ftp://x"}, "BOTKIT_API_URL: Value error, must start with http"),
    ({"BOTKIT_CALLBACK_SECRET": "short"}, "BOTKIT_CALLBACK_SECRET: Value error, must be at least 16"),
    ({"BOTKIT_SENDER": "x" * 21}, "BOTKIT_SENDER: "),
    ({"BOTKIT_SEND_CONCURRENCY": "0"}, "BOTKIT_SEND_CONCURRENCY: "),
    ({"BOTKIT_SEND_CONCURRENCY": "101"}, "at once (1-100)"),
    ({"BOTKIT_SEND_RATE": "inf"}, "BOTKIT_SEND_RATE: Input should be a finite number"),
    ({"BOTKIT_QUIET_HOURS": "late"}, "BOTKIT_QUIET_HOURS: Value error, 'late' is not a window"),
    ({"BOTKIT_QUIET_HOURS": "09:00-09:00"}, "is empty: its start and end are the same"),
    ({"BOTKIT_PHONE_ZONES": "7=Mars/Base"}, "'Mars/Base' is not a time zone"),
    ({"BOTKIT_PHONE_ZONES": "7"}, "write each as PREFIX=ZONE"),
    ({"BOTKIT_MAX_UNANSWERED": "-1"}, "BOTKIT_MAX_UNANSWERED: "),
    ({"BOTKIT_LOCALES": "380=zz_ZZ"}, "'zz_ZZ' is not a locale"),
    ({"BOTKIT_LOCALES": "ua=uk"}, "'ua' is not a number prefix (digits)"),
    ({"BOTKIT_DEFAULT_LOCALE": "klingon"}, "BOTKIT_DEFAULT_LOCALE: Value error, 'klingon'"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        Settings.from_env(env, env_file=None)
    assert message in str(info.value)


def test_unknown_variable_is_reported_with_a_suggestion(caplog):
    Settings.from_env({"BOTKIT_PROT": "9000"}, env_file=None)
    assert "ignoring unknown setting BOTKIT_PROT; did you mean BOTKIT_PORT?" in caplog.text


def test_a_postgresql_url_without_its_driver_says_what_to_install(monkeypatch):
    import sys

    import pytest

    from botkit.errors import ConfigError
    from botkit.storage.engines import store_for

    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if it were not installed
    for name in [m for m in sys.modules if m.startswith("botkit.storage.postgres")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ConfigError, match=r"pip install 'botkit\[postgres\]'"):
        store_for("postgresql://bot@db/bot")
