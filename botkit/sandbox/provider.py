"""The fake provider: DecisionTelecom's Viber Business API as a local aiohttp app.

It speaks the contract of PROVIDER_API.md over real HTTP: it checks ``/send-viber`` bodies
with the same models botkit sends with, assigns message ids, runs each message through
its delivery life cycle (pending -> sent -> delivered, or undelivered when the phone stays
offline past the message's TTL) posting status callbacks, sends the SMS fallback
(``text_sms``) of a Viber + SMS message that went undelivered, and plays users who answer
2Way messages. botkit's tests use it on loopback, the sandbox runs it in-process, and
``run.py fake-provider`` runs it standalone. Faults come from ``provider.faults`` (faults.py).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import aiohttp

from botkit.models import InboundReply, MessageStatus, SendRequest, SmsStatus, is_final_status
from botkit.sandbox.faults import Faults
from botkit.sandbox.records import (
    EVENT_HISTORY,
    CallbackRecord,
    CallbackResult,
    EventLog,
    SentMessage,
    bot_event,
)

__all__ = ["CallbackRecord", "CallbackResult", "FakeProvider", "SentMessage"]

log = logging.getLogger("botkit.sandbox")

STATUS_WINDOW = 5 * 86400.0  # /receive-viber answers "for the last 5 days" (provider docs)
_FAILED = {MessageStatus.ERROR, MessageStatus.REJECTED, MessageStatus.UNDELIVERED}
_EXPIRY_TICK = 0.5
_CALLBACK_TIMEOUT = aiohttp.ClientTimeout(total=10)


class FakeProvider:
    """State and behaviour of a fake DecisionTelecom provider; serve it with create_provider_app.

    With ``auto_deliver`` every accepted message runs its life cycle in the background
    (``delivery_delay`` seconds between steps); without it, tests move statuses with
    ``deliver()``. Time is read from ``clock`` only, so tests can inject a fake one.

    Example::

        provider = FakeProvider(api_key="secret", auto_deliver=False)
        server = await aiohttp_server(create_provider_app(provider))
        ...                                  # the bot sends through server.make_url("/")
        await provider.reply("380501112233", "Ana")
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
        first_id: int = 1000,
        first_token: int = 10**13,
        auto_deliver: bool = True,
        delivery_delay: float = 0.0,
        http_errors: bool = False,
        first_sms_id: int = 50_000,
    ) -> None:
        self.clock = clock
        self.auto_deliver = auto_deliver
        self.delivery_delay = delivery_delay
        # Errors under their own HTTP status; off: under HTTP 200, as the SDKs expect them.
        self.http_errors = http_errors
        # What happens to the SMS fallback of an undelivered Viber + SMS message.
        self.sms_status: int = SmsStatus.DELIVERED
        self.faults = Faults()
        self.sent: list[SentMessage] = []
        self.callback_log: list[CallbackRecord] = []
        self._auth = None if api_key is None else "Basic " + _b64(api_key)
        self._session = session
        self._owns_session = session is None
        self._by_id: dict[int, SentMessage] = {}
        self._by_phone: dict[str, list[SentMessage]] = {}
        self._offline: set[str] = set()
        self._next_id = first_id
        self._next_token = first_token  # the provider's tokens are 14-digit numbers
        self._next_sms_id = first_sms_id
        self._tasks: set[asyncio.Task[None]] = set()
        self.events = EventLog(clock)
        # The tokens of the replies reply() posted (the latest EVENT_HISTORY of them).
        self._own_tokens: set[str] = set()
        self._own_order: deque[str] = deque()

    # --- looking at what happened -------------------------------------------------

    def message(self, message_id: int) -> SentMessage:
        """Return the accepted message with this id, or raise KeyError naming the known range."""
        try:
            return self._by_id[message_id]
        except KeyError:
            ids = [m.message_id for m in self.sent]
            known = f"{ids[0]}..{ids[-1]}" if ids else "none"
            raise KeyError(f"no message {message_id} was accepted (known ids: {known})") from None

    def messages_to(self, phone: str) -> list[SentMessage]:
        """Every accepted message to ``phone``, oldest first (a leading ``+`` is ignored)."""
        return list(self._by_phone.get(phone.lstrip("+"), ()))

    def last_message(self, phone: str) -> SentMessage | None:
        """The last accepted message to ``phone``, or None."""
        messages = self.messages_to(phone)
        return messages[-1] if messages else None

    def is_online(self, phone: str) -> bool:
        """Whether the phone's Viber client receives messages (all phones start online)."""
        return phone.lstrip("+") not in self._offline

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``listener`` with every event from now on; returns the function that stops it.

        Events are dicts with ``kind`` "bot" (a message accepted), "status" (a status change),
        "user" (a simulated user answered) or "error" (the bot refused a callback), and
        ``phone``. The web chat streams them to the browser.

        Example: ``stop = provider.subscribe(queue.put_nowait)``
        """
        return self.events.subscribe(listener)

    def events_for(self, phone: str) -> list[dict[str, Any]]:
        """The recent events of one phone, oldest first (the chat's history)."""
        return self.events.of(phone)

    # --- driving the simulation ---------------------------------------------------

    async def set_online(self, phone: str, online: bool = True) -> None:
        """Take a phone offline, or bring it back and deliver its messages waiting at sent (0).

        Messages to an offline phone stay at sent until it comes back or their TTL runs out.

        Example: ``await provider.set_online("380501112233", False)``
        """
        if not online:
            self._offline.add(phone.lstrip("+"))
            return
        self._offline.discard(phone.lstrip("+"))
        for msg in self.messages_to(phone):
            await self._try_deliver(msg)

    async def deliver(self, message_id: int, status: int = MessageStatus.DELIVERED) -> None:
        """Set a message's status and post the status callback, whatever the life cycle says.

        Any number goes, documented or not (``deliver(1000, 7)``: a status botkit must store
        as it came).

        Example: ``await provider.deliver(1000, status=MessageStatus.SENT)``
        """
        msg = self.message(message_id)
        self._mark(msg, status)
        await self._announce(msg)

    async def expire_due(self) -> list[int]:
        """Mark every not-yet-final message whose TTL has run out undelivered (4); return their ids.

        Example: ``clock.now += 3601; assert await provider.expire_due() == [1000]``
        """
        now = self.clock()
        due = [m for m in self.sent if not is_final_status(m.status) and now >= m.expires_at]
        for msg in due:
            self._mark(msg, MessageStatus.UNDELIVERED)
        for msg in due:
            await self._announce(msg)
        return [m.message_id for m in due]

    async def reply(
        self,
        phone: str,
        text: str,
        *,
        tracking: int | None | Literal["last"] = "last",
        token: int | None = None,
        time: int | None = None,
        callback_url: str | None = None,
    ) -> CallbackResult:
        """Post a user's answer to the bot, shaped exactly like the provider's 2Way callback.

        ``tracking="last"`` names the last 2Way message to the phone that has not failed (as
        the user's Viber client would), an int names any id, None omits ``tracking_data``.
        The callback goes to ``callback_url`` or to that of the phone's last 2Way message.

        Example: ``answer = await provider.reply("380501112233", "5", tracking=None)``
        """
        last = self._last_two_way(phone)
        tracking_id = (last.message_id if last else None) if tracking == "last" else tracking
        url = callback_url or self._reply_url(phone, tracking_id, last)
        message: dict[str, Any] = {"text": text}
        if tracking_id is not None:
            message["tracking_data"] = f"tracking_id:{tracking_id}"
        if token is None:
            token, self._next_token = self._next_token, self._next_token + 1
        payload = {
            "message_token": token,
            "phone_number": phone,
            "time": int(self.clock()) if time is None else time,
            "message": message,
        }
        self._remember(str(token))
        self.events.emit({"kind": "user", "phone": phone, "text": text, "token": token})
        result = await self._post_all(url, payload)
        if not result.ok:
            self.events.emit({"kind": "error", "phone": phone, "token": token,
                        "error": result.error or f"the bot answered HTTP {result.status}"})
        return result

    def _remember(self, token: str) -> None:
        self._own_tokens.add(token)
        self._own_order.append(token)
        if len(self._own_order) > EVENT_HISTORY:
            self._own_tokens.discard(self._own_order.popleft())

    def observe_reply(self, reply: InboundReply) -> None:
        """Show a user's message the bot stored that this provider did not post (a ``curl``
        to the callback URL), so the chat shows every message of the phone.

        Example: ``create_app(...)`` passes it as ``Runtime.on_inbound`` in sandbox mode.
        """
        if reply.message_token not in self._own_tokens:
            self.events.emit({"kind": "user", "phone": reply.phone_number, "text": reply.message.text,
                        "token": reply.message_token, "via": "callback"})

    # --- starting and stopping ----------------------------------------------------

    async def start(self) -> None:
        """Start the background TTL check when ``auto_deliver`` is on (the app does this)."""
        if self.auto_deliver:
            self._spawn(self._expiry_loop())

    async def close(self) -> None:
        """Cancel and await background work, then close the session if the provider made it."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # --- used by the HTTP handlers --------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries exactly ``Basic <base64(api_key)>``."""
        if self._auth is None:
            return True
        return header is not None and hmac.compare_digest(header.encode(), self._auth.encode())

    def accept(self, request: SendRequest, body: dict[str, Any], headers: dict[str, str]) -> int:
        """Record a valid send, start its life cycle and return its new message id."""
        message_id, self._next_id = self._next_id, self._next_id + 1
        msg = SentMessage(message_id=message_id, request=request, body=body, headers=headers,
                          received_at=self.clock())
        self._mark(msg, MessageStatus.PENDING)
        self.sent.append(msg)
        self._by_id[message_id] = msg
        self._by_phone.setdefault(msg.phone.lstrip("+"), []).append(msg)
        self.events.emit(bot_event(msg))
        log.info("accepted message %d to %s (type %d)", message_id, msg.phone, request.message_type)
        if self.auto_deliver:
            self._spawn(self._life_cycle(msg))
        return message_id

    def status_of(self, message_id: int) -> int | None:
        """The status ``/receive-viber`` reports, or None for unknown or older than 5 days."""
        msg = self._by_id.get(message_id)
        if msg is None or self.clock() - msg.received_at > STATUS_WINDOW:
            return None
        return msg.status

    def status_body(self, msg: SentMessage) -> dict[str, Any]:
        """The status as the provider reports it (``/receive-viber`` and status callbacks),
        with the SMS fields once the SMS fallback went out."""
        body: dict[str, Any] = {"message_id": msg.message_id, "status": int(msg.status)}
        if msg.sms_message_id is not None:
            body["sms_message_id"] = msg.sms_message_id
            body["sms_message_status"] = msg.sms_status
        return body

    # --- internals ------------------------------------------------------------------

    async def _life_cycle(self, msg: SentMessage) -> None:
        await self._announce(msg)
        await asyncio.sleep(self.delivery_delay)
        if msg.status == MessageStatus.PENDING:
            self._mark(msg, MessageStatus.SENT)
            await self._announce(msg)
        await asyncio.sleep(self.delivery_delay)
        await self._try_deliver(msg)

    async def _try_deliver(self, msg: SentMessage) -> None:
        # Check and set with no await in between, so the life cycle, set_online() and
        # expire_due() can race without announcing a message twice.
        if msg.status != MessageStatus.SENT or not self.is_online(msg.phone):
            return
        expired = self.clock() >= msg.expires_at
        status = MessageStatus.UNDELIVERED if expired else MessageStatus.DELIVERED
        self._mark(msg, status)
        await self._announce(msg)

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(_EXPIRY_TICK)
            await self.expire_due()

    def _mark(self, msg: SentMessage, status: int) -> None:
        msg.history.append((status, self.clock()))
        if (status == MessageStatus.UNDELIVERED and msg.request.text_sms
                and msg.sms_message_id is None):  # Viber could not: the SMS goes instead
            msg.sms_message_id, self._next_sms_id = self._next_sms_id, self._next_sms_id + 1
            msg.sms_status = self.sms_status
            log.info("message %d undelivered: SMS fallback %d to %s", msg.message_id,
                     msg.sms_message_id, msg.phone)
        if msg.message_id in self._by_id:
            self.events.emit({"kind": "status", "phone": msg.phone, "id": msg.message_id,
                        "status": int(status)})

    async def _announce(self, msg: SentMessage) -> None:
        url = msg.request.callback_url
        body = self.status_body(msg)
        if url is not None and self.faults.drop_status_callbacks:
            self.callback_log.append(CallbackRecord(url, body, "dropped (fault)"))
        elif url is not None:
            await self._post_all(url, body)

    def _last_two_way(self, phone: str) -> SentMessage | None:
        for msg in reversed(self.messages_to(phone)):
            if msg.two_way and msg.status not in _FAILED:
                return msg
        return None

    def _reply_url(self, phone: str, tracking_id: int | None, last: SentMessage | None) -> str:
        named = self._by_id.get(tracking_id) if tracking_id is not None else None
        for msg in (named, last, *reversed(self.messages_to(phone))):
            if msg is not None and msg.two_way and msg.request.callback_url:
                return msg.request.callback_url
        raise LookupError(
            f"no callback URL known for {phone}: send it a 2Way message (206/208) with a "
            "callback_url first, or pass reply(..., callback_url=...)"
        )

    async def _post_all(self, url: str, payload: dict[str, Any]) -> CallbackResult:
        first = await self._post(url, payload)
        for _ in range(self.faults.duplicate_callbacks):
            await self._post(url, payload)
        return first

    async def _post(self, url: str, payload: dict[str, Any]) -> CallbackResult:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(url, json=payload, timeout=_CALLBACK_TIMEOUT) as resp:
                raw = (await resp.read()).decode("utf-8", "replace")
                result = CallbackResult(url=url, payload=payload, status=resp.status,
                                        data=_json_or_text(raw))
        except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
            error = f"{type(exc).__name__}: {exc}"
            log.warning("callback to %s failed: %s", url, error)
            result = CallbackResult(url=url, payload=payload, status=None, error=error)
        if result.status is not None and not result.ok:
            log.warning("callback to %s answered HTTP %d", url, result.status)
        outcome = result.status if result.status is not None else str(result.error)
        self.callback_log.append(CallbackRecord(url, payload, outcome))
        return result

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("fake provider background task failed", exc_info=task.exception())


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _b64(api_key: str) -> str:
    return base64.b64encode(api_key.encode()).decode()
