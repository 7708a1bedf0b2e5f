"""Fault injection for the fake provider: scripted answers, random errors, latency, duplicates.

An error is answered as the provider's error body under HTTP 200, the way every official SDK
expects it (PROVIDER_API.md, "Errors"), unless the provider's ``http_errors`` setting or the
fault itself (``Fault.status(401, http=True)``) asks for the error's own HTTP status.

Everything is off by default. A test scripts the next answers of ``/send-viber``
(``provider.faults.script(Fault.status(429), Fault.reset())``), a benchmark turns on a
seeded fraction of errors (``provider.faults.rate(0.1, seed=1)``); both are deterministic.
"""

from __future__ import annotations

import random
import socket
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

from aiohttp import web

__all__ = ["Fault", "FaultKind", "Faults", "error_body"]

FaultKind = Literal["status", "delay", "reset"]

# The provider's error table (PROVIDER_API.md): HTTP status -> (code, name, message). Its
# bodies are a PHP framework's: any other error carries code 0.
_ERRORS: dict[int, tuple[int, str, str]] = {
    429: (0, "Too Many Requests", "Rate limit exceeded"),
    400: (1, "Invalid Parameter", "Empty parameter or parameter validation error"),
    500: (2, "Internal server error", "The server encountered an unexpected condition which"
                                      " prevented it from fulfilling the request"),
    402: (3, "Topup balance is required", "User balance is empty"),
    401: (0, "Unauthorized", "Your request was made with invalid credentials."),
}
_STATUS_OF_CODE = {code: status for status, (code, _, _) in _ERRORS.items() if code != 0}


def error_body(
    status: int, *, name: str | None = None, message: str | None = None
) -> dict[str, Any]:
    """Build the provider's error body for an HTTP status, as its error table shows it.

    Statuses outside the table get the standard reason phrase and code 0.

    >>> error_body(429)
    {'name': 'Too Many Requests', 'message': 'Rate limit exceeded', 'code': 0, 'status': 429}
    """
    code, default_name, default_message = _ERRORS.get(
        status, (0, _reason(status), _reason(status)))
    return {"name": name or default_name, "message": message or default_message,
            "code": code, "status": status}


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


@dataclass(frozen=True, kw_only=True)
class Fault:
    """One scripted answer to a ``/send-viber`` call; build it with the class methods.

    ``status`` and ``reset`` faults replace the call (no message id is assigned); under a
    ``delay`` fault the call is processed normally and only its answer is late.

    Example: ``provider.faults.script(Fault.status(429), Fault.delay(1.5), Fault.reset())``
    """

    kind: FaultKind
    http_status: int = 200
    body: dict[str, Any] | str | None = None
    seconds: float = 0.0
    http: bool | None = None  # a JSON error under its own HTTP status; None: as the provider

    @classmethod
    def status(
        cls, http_status: int, body: dict[str, Any] | str | None = None, *,
        http: bool | None = None,
    ) -> Fault:
        """Answer an error: the provider's error body for ``http_status`` (or ``body``).

        A JSON body goes under HTTP 200 or under ``http_status`` as the provider's
        ``http_errors`` setting says, or as ``http`` says for this fault alone. A text
        ``body`` always goes under ``http_status`` (a proxy's error page).

        Example: ``Fault.status(401, http=True)``; ``Fault.status(503, body="")`` (no JSON)
        """
        chosen = body if body is not None else error_body(http_status)
        return cls(kind="status", http_status=http_status, body=chosen, http=http)

    @classmethod
    def error_body_200(cls, code: int = 2, body: dict[str, Any] | None = None) -> Fault:
        """Answer HTTP 200 carrying an error body, whatever the provider's setting.

        Example: ``Fault.error_body_200(code=0)``  (code 0 with status 429: rate limited)
        """
        if body is None:
            body = error_body(_STATUS_OF_CODE.get(code, 429))
        return cls(kind="status", http_status=200, body=body, http=False)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Process the call normally but hold the answer back ``seconds`` (client timeouts).

        The message is accepted even if the client gives up waiting, as on the real provider.

        Example: ``Fault.delay(1.5)``
        """
        return cls(kind="delay", seconds=seconds)

    @classmethod
    def reset(cls) -> Fault:
        """Drop the connection without answering; the client sees a connection reset.

        Example: ``Fault.reset()``
        """
        return cls(kind="reset")

    def answer(self, request: web.Request, *, http_errors: bool = False) -> web.Response:
        """The response for a ``status`` or ``reset`` fault (a ``delay`` is the caller's job);
        ``http_errors`` is the provider's setting, used when the fault sets no ``http``."""
        if self.kind == "reset":
            _reset(request)
            # Never sent; 499 ("client closed request" in nginx) only marks the access log.
            return web.Response(status=499, reason="Reset by fault injection")
        if isinstance(self.body, dict):
            under_http = http_errors if self.http is None else self.http
            return web.json_response(self.body, status=self.http_status if under_http else 200)
        return web.Response(text=self.body or "", status=self.http_status)


def _reset(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        # SO_LINGER with timeout 0 turns the close into a TCP RST: the client sees
        # ECONNRESET (aiohttp.ClientOSError) rather than a clean ServerDisconnectedError.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


@dataclass
class Faults:
    """The fault settings of one fake provider, found at ``provider.faults``.

    ``latency`` (seconds) delays every request; ``duplicate_callbacks`` posts that many
    extra copies of every callback. Scripted faults are used first, then the random rate.

    ``drop_status_callbacks`` loses every status callback (the status still changes and
    ``/receive-viber`` reports it), as when the provider's callbacks go missing.

    Example: ``provider.faults.duplicate_callbacks = 2``  (every callback arrives 3 times)
    """

    latency: float = 0.0
    duplicate_callbacks: int = 0
    drop_status_callbacks: bool = False
    _script: deque[Fault] = field(default_factory=deque, repr=False)
    _error_rate: float = 0.0
    _statuses: tuple[int, ...] = (429, 500)
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def script(self, *faults: Fault) -> None:
        """Queue answers for the next ``/send-viber`` calls, one fault per call, in order.

        Example: ``provider.faults.script(Fault.status(500), Fault.status(500))``
        """
        self._script.extend(faults)

    def rate(
        self, error_rate: float, statuses: Iterable[int] = (429, 500), *, seed: int | None = None
    ) -> None:
        """Answer a random fraction of ``/send-viber`` calls with one of ``statuses``.

        The same seed gives the same sequence of answers.

        Example: ``provider.faults.rate(0.1, statuses=(429, 500), seed=1)``
        """
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be between 0 and 1, got {error_rate!r}")
        self._error_rate = error_rate
        self._statuses = tuple(statuses)
        self._rng = random.Random(seed)

    def clear(self) -> None:
        """Turn every fault off: empty the script, no random errors, latency or duplicates."""
        self._script.clear()
        self._error_rate = 0.0
        self.latency = 0.0
        self.duplicate_callbacks = 0
        self.drop_status_callbacks = False

    @property
    def pending(self) -> int:
        """How many scripted faults are still waiting for a call."""
        return len(self._script)

    def next_fault(self) -> Fault | None:
        """Take the fault for the current ``/send-viber`` call, or None to answer normally."""
        if self._script:
            return self._script.popleft()
        if self._error_rate and self._statuses and self._rng.random() < self._error_rate:
            return Fault.status(self._rng.choice(self._statuses))
        return None
