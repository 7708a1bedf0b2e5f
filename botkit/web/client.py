"""The HTTP client of the provider's API: Basic auth, error mapping and retries.

``ProviderClient`` posts to ``/send-viber`` and ``/receive-viber`` (PROVIDER_API.md),
turns every error answer into exactly one ``ProviderError`` subclass (``raise_for_answer``)
and retries the retryable ones with a ``RetryPolicy``. Its seams are ``base_url``, an
injected aiohttp ``session`` and an injected ``sleep``, so tests run it against a fake
provider on loopback without waiting.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar

import aiohttp
from pydantic import ValidationError

from botkit.errors import (
    BalanceError,
    InvalidParameterError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    UnauthorizedError,
)
from botkit.models import ErrorBody, SendRequest, SendResult, StatusResult

__all__ = ["ProviderClient", "RetryPolicy", "raise_for_answer"]

log = logging.getLogger("botkit.client")
_M = TypeVar("_M", SendResult, StatusResult)

# PROVIDER_API.md, "Errors". The body's shape is a PHP framework's, whose errors carry
# code 0 unless the application sets one: only codes 1-3 name a class by themselves.
_BY_CODE: dict[int, type[ProviderError]] = {
    1: InvalidParameterError,
    2: ProviderUnavailableError,
    3: BalanceError,
}
_BY_STATUS: dict[int, type[ProviderError]] = {
    429: RateLimitedError,
    400: InvalidParameterError,
    401: UnauthorizedError,
    402: BalanceError,
}


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently the client retries a retryable failure.

    ``attempts`` counts every try including the first; the n-th delay is
    ``base * factor**n`` capped at ``cap``, then jittered down by up to ``jitter`` of itself.

    >>> list(RetryPolicy(attempts=4, base=1, factor=2, jitter=0).delays())
    [1.0, 2.0, 4.0]
    """

    attempts: int = 5
    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be an int >= 1, got {self.attempts!r}")
        for field, low in (("base", 0.0), ("factor", 1.0), ("cap", 0.0)):
            value = getattr(self, field)
            if not (math.isfinite(value) and value >= low):
                raise ValueError(
                    f"RetryPolicy.{field} must be a finite number >= {low}, got {value!r}"
                )
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"RetryPolicy.jitter must be between 0 and 1, got {self.jitter!r}")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Yield the ``attempts - 1`` sleeps between tries, in seconds; nothing sleeps here.

        >>> len(list(RetryPolicy(attempts=3).delays(random.Random(1))))
        2
        """
        rng = rng if rng is not None else random.Random()
        full = min(float(self.base), self.cap)
        for _ in range(self.attempts - 1):
            yield rng.uniform(full * (1.0 - self.jitter), full)
            # Multiply step by step, so a long policy can't overflow the float.
            full = min(full * self.factor, self.cap)


def raise_for_answer(http_status: int, body: Any) -> None:
    """Raise the one ``ProviderError`` subclass an answer means, or return for a success.

    ``body`` is the parsed JSON (None if the answer was not JSON). An error body counts
    even under HTTP 200. A ``code`` of 1, 2 or 3 decides the class; otherwise the status
    does, the body's ``status`` first and then the HTTP status (PROVIDER_API.md). ``code`` 0
    with no status at all is a rate limit.

    >>> raise_for_answer(200, {"message_id": 429})  # success: returns None
    """
    error = ErrorBody.parse(body)
    ok = 200 <= http_status < 300
    if error is None and ok:
        return
    error = error or ErrorBody()
    if body is None:
        fallback = f"HTTP {http_status} with no JSON body"
    else:
        fallback = f"HTTP {http_status} with an unexpected body"
    status = error.status if error.status is not None else (None if ok else http_status)
    raise _error_class(error.code, status)(
        error.message or error.name or fallback,
        status=status if status is not None else http_status,
        code=error.code,
        name=error.name,
    )


def _error_class(code: int | None, status: int | None) -> type[ProviderError]:
    if code is not None and code in _BY_CODE:
        return _BY_CODE[code]
    if status is None:  # an error body under HTTP 200 that names no status
        return RateLimitedError if code == 0 else ProviderError
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if 500 <= status < 600:
        return ProviderUnavailableError
    return ProviderError


class _Answer(NamedTuple):
    status: int
    body: Any
    retry_after: float | None


class ProviderClient:
    """Sends messages and reads statuses through the provider's API, retrying what can be.

    Without ``session`` it opens its own on first use and closes it in ``close()``;
    an injected session is left open. Use it as an async context manager.

    Usage::

        async with ProviderClient("https://web.it-decision.com/v1/api", access_key) as client:
            result = await client.send(request)
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        session: aiohttp.ClientSession | None = None,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        # The SDKs base64-encode the key as given; it is not "user:password" (PROVIDER_API.md).
        self._headers: dict[str, str] = {"Accept": "application/json"}  # as every SDK sends
        if api_key is not None:
            token = base64.b64encode(api_key.encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
        self._session = session
        self._owns_session = session is None
        self._sleep = sleep
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._rng = rng if rng is not None else random.Random()

    def __repr__(self) -> str:
        key = "<hidden>" if "Authorization" in self._headers else None
        return f"ProviderClient(base_url={self.base_url!r}, api_key={key})"

    async def send(self, request: SendRequest) -> SendResult:
        """Send one message and return the provider's ``message_id``.

        A retried send may reach the user twice if an earlier try got through unseen.

        Usage: ``message_id = (await client.send(request)).message_id``
        """
        return await self.send_checked(request.model_dump(mode="json", exclude_none=True))

    async def send_checked(self, payload: dict[str, Any]) -> SendResult:
        """Send a body that was already checked as a SendRequest (the outbox stores them so).

        Saves validating every stored message a second time on the hot path.
        """
        return _validate(SendResult, await self._call("/send-viber", payload))

    async def get_status(self, message_id: int) -> StatusResult:
        """Ask for a message's delivery status (messages of the last 5 days).

        The status may be a number ``MessageStatus`` does not list; that is no error.

        Usage: ``print(status_label((await client.get_status(429)).status))``
        """
        answer = await self._call("/receive-viber", {"message_id": message_id})
        return _validate(StatusResult, answer)

    async def close(self) -> None:
        """Close the session this client opened; an injected session stays open.

        Usage: ``await client.close()`` (or leave an ``async with`` block).
        """
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, path: str, payload: dict[str, Any]) -> _Answer:
        delays = self.retry.delays(self._rng)
        for attempt in range(1, self.retry.attempts + 1):
            answer: _Answer | None = None
            try:
                answer = await self._post(path, payload)
                raise_for_answer(answer.status, answer.body)
                return answer
            except ProviderError as exc:
                delay = next(delays, None)
                if not exc.retryable or delay is None:
                    raise
                if isinstance(exc, RateLimitedError) and answer is not None and answer.retry_after:
                    delay = min(max(delay, answer.retry_after), self.retry.cap)
                log.warning(
                    "POST %s failed (%s), attempt %d/%d, retrying in %.2fs",
                    path,
                    exc.reason,
                    attempt,
                    self.retry.attempts,
                    delay,
                )
                await self._sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _post(self, path: str, payload: dict[str, Any]) -> _Answer:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                self.base_url + path,
                json=payload,
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                raw = await resp.read()
                return _Answer(resp.status, _json_or_none(raw), _seconds(resp.headers))
        except TimeoutError as exc:
            raise ProviderUnavailableError(
                f"no answer within {self._timeout.total}s", name="Timeout"
            ) from exc
        except aiohttp.ClientError as exc:
            raise ProviderUnavailableError(
                f"{type(exc).__name__}: {exc}", name="Network error"
            ) from exc


def _json_or_none(raw: bytes) -> Any:
    # An error page from a proxy (text/html) must not crash: the HTTP status decides then.
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _seconds(headers: Mapping[str, str]) -> float | None:
    # Only the delay-seconds form of Retry-After; an HTTP-date falls back to the policy.
    # Most answers have none: return before float() raises for them (a hot path).
    text = headers.get("Retry-After")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _validate(model: type[_M], answer: _Answer) -> _M:
    try:
        return model.model_validate(answer.body)
    except ValidationError as exc:
        shown = repr(answer.body)[:200]
        # Not retryable: the request may have been carried out, only the answer is odd.
        raise ProviderError(
            f"unexpected answer from the provider: {shown}", status=answer.status
        ) from exc
