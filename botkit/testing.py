"""Testing kit: run a bot and the fake provider on loopback and talk to it like a user.

Everything goes through real parts: the bot's aiohttp server, a SQLite file, and the fake
provider speaking real HTTP; the user's answers are posted as the provider's callbacks.

>>> async def test_rating_reasked(bot_harness):
...     chat = (await bot_harness(flows=[survey])).chat("380501112233")
...     await chat.start("survey"); await chat.answer("Ana"); await chat.answer("ten")
...     assert (await chat.last_reply()).text.startswith("Please answer 1 to 5")

``bot_harness`` is a pytest fixture (botkit registers it as a pytest plugin); outside pytest
use ``async with Harness(flows=[...], db=path) as harness``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import sqlite_utils
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer, unused_port

from botkit.config import Settings
from botkit.core.conversation import Conversation
from botkit.core.flows import Flow
from botkit.models import MessageType, normalize_phone
from botkit.runtime.assembly import Bot
from botkit.sandbox import FakeProvider, create_provider_app
from botkit.sandbox.faults import Faults
from botkit.web.client import RetryPolicy
from botkit.web.server import RUNTIME, create_app

__all__ = ["BotMessage", "Chat", "Clock", "Harness", "bot_harness"]

TEST_KEY = "test-access-key"


class Clock:
    """A clock tests move by hand: ``clock = Clock(); clock.advance(hours=25)``."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = 0.0, *, minutes: float = 0.0, hours: float = 0.0) -> None:
        """Move time forward."""
        self.now += seconds + 60 * minutes + 3600 * hours


@dataclass(frozen=True)
class BotMessage:
    """A message the bot sent, as the provider received it."""

    message_id: int
    text: str
    type: int
    image: str | None
    button: tuple[str, str] | None
    step: str | None
    sms: str | None = None  # the SMS fallback text of a notice (text_sms)

    @property
    def rich(self) -> bool:
        """True for a 208 or 108 (text, image and button)."""
        return self.type in (MessageType.TWO_WAY_RICH, MessageType.RICH)

    @property
    def one_way(self) -> bool:
        """True for a notice (106 or 108), which the user's client cannot answer."""
        return not MessageType(self.type).two_way


class Harness:
    """A running bot (real server, real SQLite file) wired to a fake provider on loopback.

    Args:
        flows: the flows to run.
        db: the SQLite file (reuse it across harnesses to test restarts).
        clock: the clock the bot uses (default ``time.time``).
        settings: more ``Settings`` fields. Quiet hours are off unless a test turns them on
            (``quiet_hours="21:00-09:00"``, best with a ``Clock``): a test's outcome must not
            depend on the hour it runs at. The per-phone limits are as in production.
        raise_errors: re-raise handler exceptions into the test (default True, like
            Starlette's TestClient); set False to test the error reply.
    """

    def __init__(
        self,
        flows: Iterable[Flow],
        *,
        db: str | Path,
        templates: str | Path | None = "templates",
        clock: Callable[[], float] = time.time,
        raise_errors: bool = True,
        provider: FakeProvider | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 5.0,
        **settings: Any,
    ) -> None:
        self.flows = list(flows)
        self.db_path = Path(db)
        self.templates = str(templates) if templates is not None else None
        self.clock = clock
        self.raise_errors = raise_errors
        self.provider = provider or FakeProvider(api_key=TEST_KEY)
        self.retry = retry or RetryPolicy(attempts=3, base=0.01, cap=0.05)
        self.timeout = timeout
        self.extra_settings = settings
        self._provider_server: TestServer | None = None
        self._bot_server: TestServer | None = None
        self._session: ClientSession | None = None
        self._port = unused_port()

    async def __aenter__(self) -> Harness:
        self._provider_server = TestServer(create_provider_app(self.provider))
        await self._provider_server.start_server()
        self._session = ClientSession()
        try:
            await self.start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        if self._provider_server is not None:
            await self._provider_server.close()
        if self._session is not None:
            await self._session.close()

    @property
    def settings(self) -> Settings:
        """The bot's settings: production mode, pointed at the fake provider."""
        assert self._provider_server is not None
        values: dict[str, Any] = {
            "api_key": TEST_KEY,
            "api_url": str(self._provider_server.make_url("")).rstrip("/"),
            "public_url": f"http://127.0.0.1:{self._port}",
            "db": self.db_path,
            "port": self._port,
            "console": "off",  # a bot's tests need no operator console (settings= turns it on)
            "quiet_hours": "off",
        }
        values.update(self.extra_settings)
        return Settings(**values)

    @property
    def faults(self) -> Faults:
        """The fake provider's fault switches: ``harness.faults.script(Fault.status(429))``."""
        return self.provider.faults

    @property
    def runtime(self) -> Bot:
        """The running bot's parts (store, engine, sender...), as ``assemble`` built them."""
        if self._bot_server is None:
            raise RuntimeError("the harness is stopped: start() it first")
        return self._bot_server.app[RUNTIME].bot

    @property
    def url(self) -> str:
        """The bot server's base URL."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def callback_url(self) -> str:
        """Where the provider posts callbacks (with the secret)."""
        return self.runtime.callback_url

    async def start(self) -> None:
        """Start the bot server (again, after ``stop()``, on the same database)."""
        app = create_app(self.settings, self.flows, templates=self.templates,
                         clock=self.clock, retry=self.retry, raise_errors=self.raise_errors)
        self._bot_server = TestServer(app, port=self._port)
        await self._bot_server.start_server()

    async def stop(self) -> None:
        """Stop the bot server gracefully (the database stays)."""
        if self._bot_server is not None:
            await self._bot_server.close()
            self._bot_server = None

    async def restart(self) -> None:
        """Stop and start the bot on the same database file."""
        await self.stop()
        await self.start()

    def chat(self, phone: str) -> Chat:
        """A conversation driver for one phone."""
        return Chat(self, phone)

    def db(self) -> sqlite_utils.Database:
        """A fresh connection to the bot's database, for assertions."""
        return sqlite_utils.Database(self.db_path)

    async def post(self, body: Any, *, path: str | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """POST a raw callback (dict -> JSON, bytes as is); returns status and JSON body."""
        assert self._session is not None
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        url = self.url + path if path else self.callback_url
        async with self._session.post(url, data=data, headers=headers) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text

    async def settle(self) -> None:
        """Wait until every accepted message is handled and every queued reply sent."""
        deadline = time.monotonic() + self.timeout
        while True:
            rt = self.runtime
            if rt.engine.failures:
                raise rt.engine.failures.pop(0)  # a handler failed: show it in the test
            health = await rt.store.health()
            busy = rt.dispatcher.busy
            inflight = rt.sender.status()["in_flight"]
            # Not the messages waiting for their phone's quiet hours to end (clock.advance).
            held = (await rt.store.queue_size(self.clock())).held
            queued = health["outbox"]["queued"] + health["outbox"]["sending"] - held
            if not busy and not inflight and not queued and not health["inbound_pending"]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"bot did not settle in {self.timeout}s: {health}")
            await asyncio.sleep(0.005)

    async def wait_until(self, check: Callable[[], bool], what: str) -> None:
        """Wait (up to the harness timeout) until ``check()`` is true, e.g. a status arrived."""
        deadline = time.monotonic() + self.timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {self.timeout}s for {what}")
            await asyncio.sleep(0.005)

    async def delivered(self, message_id: int) -> None:
        """Wait until the bot has recorded message ``message_id`` as delivered."""
        await self.wait_until(
            lambda: self.db().execute(
                "SELECT delivery_status FROM outbound WHERE message_id = ?", [message_id]
            ).fetchone() == (1,),
            f"message {message_id} to be recorded as delivered",
        )

    async def sweep(self) -> None:
        """Fire the timers due by the bot's clock (after ``clock.advance(...)``) and settle."""
        await self.runtime.sweeper.sweep_once()
        await self.settle()

    async def poll_statuses(self) -> None:
        """Ask the provider for the statuses that never arrived, as the poller does."""
        await self.runtime.poller.poll_once()
        await self.settle()

    async def notify(self, phone: str, template: str, *, sms: str | None = None,
                     **variables: Any) -> None:
        """Send a one-way notice proactively (as ``run.py notify`` does) and wait for it.

        Example: ``await harness.notify("380501112233", "support/order_shipped.txt", order=1)``
        """
        await self.runtime.engine.notify_many([phone], template, sms=sms, variables=variables)
        await self.settle()

    async def start_flow(self, flow: str, phone: str) -> None:
        """Begin a conversation proactively (as ``run.py start`` does) and wait for the send."""
        await self.runtime.engine.start(flow, phone)
        await self.settle()


class Chat:
    """One user talking to the bot through the fake provider."""

    def __init__(self, harness: Harness, phone: str) -> None:
        self.harness = harness
        self.phone = normalize_phone(phone)  # "+380..." and "380..." are one user
        self.transcript: list[tuple[str, str]] = []
        self._seen = 0

    async def start(self, flow: str) -> list[BotMessage]:
        """Start ``flow`` for this phone proactively; returns the bot's new messages."""
        await self.harness.start_flow(flow, self.phone)
        return self.unread()

    async def send(
        self, text: str, *, tracking: int | None | Literal["last"] = "last"
    ) -> list[BotMessage]:
        """Send a message (answering the last 2Way message by default); returns new replies.

        ``tracking=None`` sends no tracking data; an int names a message id to answer.
        """
        self.transcript.append(("user", text))
        # "last" is none when the user writes first: then no tracking data is sent.
        result = await self.harness.provider.reply(
            self.phone, text, tracking=tracking, callback_url=self.harness.callback_url
        )
        if result.status != 200:
            raise AssertionError(f"bot answered {result.status}: {result.data}")
        await self.harness.settle()
        return self.unread()

    answer = send

    async def last_reply(self) -> BotMessage:
        """The last message the bot sent to this phone."""
        replies = self.replies
        if not replies:
            raise AssertionError(f"the bot sent nothing to {self.phone}")
        return replies[-1]

    @property
    def replies(self) -> list[BotMessage]:
        """Every message the bot sent to this phone, oldest first."""
        steps = {
            row["message_id"]: row["step"]
            for row in self.harness.db().query(
                "SELECT message_id, step FROM outbound WHERE phone = ?", [self.phone])
        }
        out = []
        for sent in self.harness.provider.messages_to(self.phone):
            r = sent.request
            button: tuple[str, str] | None = None
            if r.button_caption and r.button_action:
                button = (r.button_caption, r.button_action)
            out.append(BotMessage(sent.message_id, r.text, int(r.message_type), r.image,
                                  button, steps.get(sent.message_id), r.text_sms))
        return out

    def conversation(self) -> Conversation | None:
        """The phone's most recent conversation as stored."""
        rows = list(self.harness.db().query(
            "SELECT id FROM conversations WHERE phone = ? ORDER BY id DESC LIMIT 1",
            [self.phone]))
        return None if not rows else self._load(rows[0]["id"])

    @property
    def state(self) -> dict[str, Any]:
        """The stored state of the phone's most recent conversation."""
        conv = self.conversation()
        return dict(conv.state) if conv else {}

    def _load(self, conv_id: int) -> Conversation:
        from botkit.storage.rows import conversation_from_row

        row = next(self.harness.db().query("SELECT * FROM conversations WHERE id = ?", [conv_id]))
        return conversation_from_row(row)

    def unread(self) -> list[BotMessage]:
        """The bot's messages since the last ``start``, ``send`` or ``unread`` (e.g. a
        reminder a timer sent)."""
        replies = self.replies
        new = replies[self._seen:]
        self._seen = len(replies)
        self.transcript.extend(("bot", m.text) for m in new)
        return new


@pytest.fixture
async def bot_harness(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    """Factory fixture: ``harness = await bot_harness(flows=[survey])``; closed after the test."""
    opened: list[Harness] = []

    async def make(flows: Iterable[Flow], **kwargs: Any) -> Harness:
        kwargs.setdefault("db", tmp_path / f"bot{len(opened)}.db")
        harness = Harness(flows, **kwargs)
        await harness.__aenter__()
        opened.append(harness)
        return harness

    yield make
    for harness in reversed(opened):
        await harness.__aexit__(None, None, None)
