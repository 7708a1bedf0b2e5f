"""Strangers and bad input, over real HTTP on loopback.

What must hold: a request with a wrong or missing secret changes nothing and calls nothing;
the generated secret has at least 128 bits and is compared in constant time; fuzzed bodies
(truncated, wrong types, huge numbers, deep nesting, non-UTF-8, over the size cap, wrong
content types, NaN literals) mixed with valid callbacks get no 5xx, every valid callback is
handled and answered, memory stays flat, and junk arriving at once does not starve valid
callbacks.

CI scale by default; ``RELIABILITY_SCALE_FUZZ=5000`` runs the issue's full count. The bodies
are drawn by hypothesis from a fixed seed (``RELIABILITY_FUZZ_SEED``), so a failure replays.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import inspect
import json
import logging
import os
import random
import re
import resource
import sys
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import pytest
from aiohttp import ClientError, ClientSession, TCPConnector
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from yarl import URL

from botkit.web import server
from botkit.sandbox import FakeProvider
from botkit.testing import TEST_KEY, Harness
from botkit.web.server import MAX_BODY

# tests/ holds the demo flows; pytest puts it on sys.path for this package, but say so
# explicitly so the file also runs on its own (python -m pytest tests/reliability/...).
sys.path.insert(0, str(Path(__file__).parent.parent))
from demo import TEMPLATES, demo, echo

FUZZ_BODIES = int(os.environ.get("RELIABILITY_SCALE_FUZZ", "1000"))
FUZZ_SEED = int(os.environ.get("RELIABILITY_FUZZ_SEED", "20250507"))
VALID_SHARE = 0.2  # of the fuzzed requests, the share that are valid callbacks
MEMORY_BATCH = int(os.environ.get("RELIABILITY_SCALE_MEMORY_BATCH", "400"))
MEMORY_BATCHES = int(os.environ.get("RELIABILITY_SCALE_MEMORY_BATCHES", "4"))  # 1st warms up
MEMORY_LIMIT_PER_REQUEST = 4096  # bytes still allocated after the batches, per request
MEMORY_LIMIT_MB = 20.0  # growth of resident memory outside Python's allocations
CONCURRENT_JUNK = int(os.environ.get("RELIABILITY_SCALE_CONCURRENT", "300"))
CONCURRENT_VALID = max(10, CONCURRENT_JUNK // 4)

NOW = 1_800_000_000
STATUSES = {0, 1, 2, 3, 4, 5, 20}
UNDOCUMENTED_STATUSES = [6, 7, 99, 2**31 - 1]  # valid too: "seen" and numbers still to come
STATUS_IDS = 9 * 10**17  # valid status callbacks name ids from here: no real message has one
TABLES = ("inbound", "outbound", "status_events", "conversations", "timers")

T = TypeVar("T")
Expect = Literal["valid", "invalid", "too_large", "either"]


# -- the requests --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request to the callback endpoint and what botkit must answer.

    ``valid``: 200, then handled. ``invalid``: 4xx with a JSON ``error``. ``too_large``: 413.
    ``either``: botkit may accept it (then it must handle it) or refuse it with a JSON 4xx.
    """

    kind: str
    body: bytes
    expect: Expect
    content_type: str = "application/json"
    encoding: str | None = None  # Content-Encoding
    chunked: bool = False
    token: str | None = None  # a valid reply: the token botkit stores...
    phone: str | None = None  # ...and the phone that must get exactly one answer
    status_id: int | None = None  # a valid status update: its message_id

    def describe(self) -> str:
        head = self.body[:90]
        more = f"... ({len(self.body)} bytes)" if len(self.body) > 90 else ""
        extra = f" [{self.content_type}{', ' + self.encoding if self.encoding else ''}]"
        return f"{head!r}{more}{extra}"


def sized(case: Case) -> Case:
    """A plain body over the cap must be refused with 413 whatever else is wrong with it."""
    if case.encoding is None and len(case.body) > MAX_BODY:
        return replace(case, expect="too_large")
    return case


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity come out as bare literals


def reply(token: Any, phone: Any, text: Any = "demo", tracking: Any = None) -> dict[str, Any]:
    message = {"text": text} if tracking is None else {"text": text, "tracking_data": tracking}
    return {"message_token": token, "phone_number": phone, "time": NOW, "message": message}


def with_field(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(body))
    if path.startswith("message."):
        body["message"][path.removeprefix("message.")] = value
    else:
        body[path] = value
    return body


def placed(body: dict[str, Any], path: str, raw: bytes) -> bytes:
    """``body`` as JSON with the raw bytes ``raw`` as the value at ``path``."""
    return dumps(with_field(body, path, "@@placeholder@@")).replace(b'"@@placeholder@@"', raw)


# -- hypothesis strategies for the junk ------------------------------------------------------

TOKENS = st.uuids().map(lambda u: f"fz-{u.hex[:20]}")
PHONES = st.integers(0, 10**7 - 1).map(lambda n: f"38060{n:07d}")
TEXTS = st.one_of(
    st.sampled_from(["demo", "echo", "start demo", "hello", "", "7", "Ана 🙂", "a\x00b"]),
    st.text(max_size=60),
).filter(lambda t: t.strip() != "boom")  # demo's step one raises on "boom", on purpose
TRACKING = st.one_of(
    st.none(),
    st.sampled_from(["", "tracking_id:1", "tracking_id:abc", "tracking_id:-5", " tracking_id:7 ",
                     "tracking_id:99999999999999999999", "tracking_id:9999999999999999999"]),
    st.text(max_size=60),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=6), inner, max_size=4), max_leaves=12)
CONTAINERS = st.one_of(st.lists(st.integers(), max_size=3),
                       st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def _not_a_phone(value: str) -> bool:
    digits = value.strip().removeprefix("+")
    return not digits or not all(ch.isdigit() for ch in digits)


def repeated(char: str, low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda n: char * n)


# Values the contract refuses, per field (PROVIDER_API.md, botkit/models.py).
BAD: dict[str, st.SearchStrategy[Any]] = {
    "message_token": st.one_of(st.floats(), st.booleans(), st.none(), CONTAINERS, st.just(""),
                               repeated("t", 65, 400)),
    "phone_number": st.one_of(st.text(min_size=1, max_size=30).filter(_not_a_phone),
                              repeated("9", 21, 60), st.integers(min_value=10**20),
                              st.integers(max_value=-1), st.floats(), st.booleans(), st.none(),
                              CONTAINERS, st.sampled_from(["", " ", "+", "+ 380", "380-50-11"])),
    "time": st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=12),
                      st.integers(min_value=2**40), st.just(10**30), st.booleans(), st.none(),
                      CONTAINERS),
    "message": st.one_of(st.text(max_size=20), st.lists(st.integers(), max_size=3), st.none(),
                         st.integers(), st.booleans(), st.floats()),
    "message.text": st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), CONTAINERS,
                              repeated("ж", 4097, 6000)),
    "message.tracking_data": st.one_of(st.integers(), st.floats(), st.booleans(), CONTAINERS,
                                       repeated("t", 257, 1000)),
}
# Values the contract accepts although they look odd: each must be handled.
ODD_BUT_VALID: dict[str, st.SearchStrategy[Any]] = {
    "message_token": st.one_of(st.integers(-10**40, 10**40), st.text(min_size=1, max_size=64)),
    "phone_number": st.one_of(st.integers(0, 10**20 - 1),
                              st.integers(0, 10**12).map(lambda n: f" +{n} ")),
    "time": st.integers(0, 2**40 - 1),
    "message": st.one_of(st.just({}), st.fixed_dictionaries(
        {"text": TEXTS}, optional={"tracking_data": TRACKING, "extra": JSON_VALUES})),
    "message.text": st.one_of(TEXTS, repeated("ж", 4000, 4096)),
    "message.tracking_data": st.one_of(TRACKING, repeated("t", 200, 256)),
    "extra field": JSON_VALUES,
}
BAD_STATUS: dict[str, st.SearchStrategy[Any]] = {
    "message_id": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63), st.floats(),
                            st.booleans(), st.none(), CONTAINERS,
                            st.text(max_size=10).filter(lambda s: not s.strip().isdigit())),
    # Any number in range is a status (an undocumented one is stored as it came).
    "status": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**31), st.none(),
                        CONTAINERS, st.floats(), st.sampled_from(["delivered", "", "x"])),
}
BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf", b"\x80"]
CONTENT_TYPES = ["text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=b0undary", "application/xml",
                 "application/octet-stream", "application/json; charset=latin-1", "image/png"]
MULTIPART = (b'--b0undary\r\nContent-Disposition: form-data; name="message_token"\r\n\r\n1\r\n'
             b'--b0undary\r\nContent-Disposition: form-data; name="message"\r\n\r\nhi\r\n'
             b"--b0undary--\r\n")


def replies() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(reply, TOKENS, PHONES, TEXTS, TRACKING)


@st.composite
def truncated(draw: st.DrawFn) -> Case:
    body = dumps(draw(replies()))
    return Case("truncated JSON", body[: draw(st.integers(0, len(body) - 1))], "invalid")


@st.composite
def wrong_type(draw: st.DrawFn) -> Case:
    field = draw(st.sampled_from(sorted(BAD)))
    body = with_field(draw(replies()), field, draw(BAD[field]))
    return sized(Case(f"wrong value: {field}", dumps(body), "invalid"))


@st.composite
def odd_but_valid(draw: st.DrawFn) -> Case:
    field = draw(st.sampled_from(sorted(ODD_BUT_VALID)))
    value = draw(ODD_BUT_VALID[field])
    base = draw(replies())
    if field == "extra field":
        body = {**draw(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3)), **base}
    else:
        body = with_field(base, field, value)
    return sized(Case(f"odd but valid: {field}", dumps(body), "valid"))


@st.composite
def missing_field(draw: st.DrawFn) -> Case:
    status = draw(st.booleans())
    body: dict[str, Any] = {"message_id": 1000, "status": 1} if status else draw(replies())
    field = draw(st.sampled_from(sorted(body)))
    del body[field]
    return Case(f"missing field: {field}", dumps(body), "invalid")


def nesting(depth: int, shape: str) -> bytes:
    if shape == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@st.composite
def deep(draw: st.DrawFn) -> Case:
    depth = draw(st.sampled_from([2, 100, 500, 900, 999, 1000, 1001, 3000, 10_000, 30_000]))
    shape = draw(st.sampled_from(["list", "dict"]))
    where = draw(st.sampled_from(["the top", "message.text", "a reply's extra field",
                                  "a status's extra field"]))
    nest = nesting(depth, shape)
    kind = f"deep {shape} at {where}"
    if where == "the top":
        return sized(Case(kind, nest, "invalid"))
    if where == "message.text":
        return sized(Case(kind, placed(draw(replies()), "message.text", nest), "invalid"))
    base = draw(replies()) if where.startswith("a reply") else {"message_id": 7, "status": 1}
    return sized(Case(kind, placed(base, "deep", nest), "either"))


@st.composite
def non_utf8(draw: st.DrawFn) -> Case:
    how = draw(st.sampled_from(["random bytes", "latin-1", "bad UTF-8 sequence", "UTF-16/32",
                                "escaped lone surrogate"]))
    kind = f"encoding: {how}"
    if how == "random bytes":
        return Case(kind, draw(st.binary(min_size=1, max_size=300)), "invalid")
    if how == "latin-1":
        body = json.dumps(draw(replies()) | {"message": {"text": "café ñ"}}, ensure_ascii=False)
        return Case(kind, body.encode("latin-1"), "invalid")
    if how == "bad UTF-8 sequence":
        return Case(kind, placed(draw(replies()), "message.text",
                                 b'"a' + draw(st.sampled_from(BAD_UTF8)) + b'b"'), "invalid")
    if how == "UTF-16/32":
        codec = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"]))
        body = json.dumps(draw(replies()), ensure_ascii=False).encode(codec)
        return sized(Case(f"{kind} ({codec})", body, "either"))
    field = draw(st.sampled_from(["message_token", "message.text", "status extra"]))
    if field == "status extra":
        return Case(kind + " in a status", placed({"message_id": 7, "status": 1}, "note",
                                                   b'"\\ud800"'), "either")
    return Case(kind + " in a reply", placed(draw(replies()), field, b'"\\udc00x"'), "invalid")


@st.composite
def oversized(draw: st.DrawFn) -> Case:
    size = draw(st.integers(MAX_BODY + 1, 3 * MAX_BODY))
    how = draw(st.sampled_from(["padded reply", "junk", "chunked junk"]))
    if how == "padded reply":
        base = dumps(draw(replies()))
        return sized(Case("over the cap: padded reply", placed(
            json.loads(base), "pad", b'"' + b"x" * (size - len(base)) + b'"'), "too_large"))
    junk = (draw(st.binary(min_size=1, max_size=16)) * size)[:size]
    return Case(f"over the cap: {how}", junk, "too_large", chunked=how == "chunked junk")


@st.composite
def at_the_cap(draw: st.DrawFn) -> Case:
    base = draw(replies())
    size = draw(st.sampled_from([MAX_BODY - 1, MAX_BODY, MAX_BODY + 1]))
    bare = placed(base, "pad", b'""')
    body = placed(base, "pad", b'"' + b"x" * (size - len(bare)) + b'"')
    return sized(Case(f"{size - MAX_BODY:+d} bytes from the cap", body, "valid",
                      chunked=draw(st.booleans())))


@cache
def gzip_bomb() -> bytes:
    return gzip.compress(b" " * 4_000_000)  # 4 MB of JSON whitespace in about 4 KB


@st.composite
def compressed(draw: st.DrawFn) -> Case:
    encoding = draw(st.sampled_from(["gzip", "deflate"]))
    how = draw(st.sampled_from(["valid reply", "corrupt", "bomb"]))
    if how == "valid reply":
        raw = dumps(draw(replies()))
        body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
        return Case(f"{encoding}: valid reply", body, "either", encoding=encoding)
    if how == "corrupt":
        return Case(f"{encoding}: corrupt", draw(st.binary(min_size=1, max_size=100)),
                    "invalid", encoding=encoding)
    return Case("gzip bomb", gzip_bomb(), "too_large", encoding="gzip")


def blank() -> st.SearchStrategy[Case]:
    return st.sampled_from([b"", b" ", b"\r\n\t", b"\x00", b"\xef\xbb\xbf"]).map(
        lambda body: Case("blank body", body, "invalid"))


@st.composite
def top_level(draw: st.DrawFn) -> Case:
    raw = [b"9" * 5000, b"1e999999", b"-", b"NaN", b"-Infinity", b'"\\ud800"', b"[]", b"{}",
           b"{", b"}", b'{"a": 1', b"nul", b"tru"]
    body = draw(st.one_of(st.sampled_from(raw), st.one_of(
        SCALARS, st.lists(SCALARS, max_size=4)).map(dumps)))
    return Case("not a JSON object", body, "invalid")


@st.composite
def duplicate_keys(draw: st.DrawFn) -> Case:
    pairs = list(draw(replies()).items())
    field = draw(st.sampled_from(["message_token", "phone_number", "time", "message"]))
    pairs.insert(draw(st.integers(0, len(pairs))), (field, draw(BAD[field])))
    text = ", ".join(f"{json.dumps(key)}: {json.dumps(value)}" for key, value in pairs)
    return sized(Case(f"duplicate key: {field}", ("{" + text + "}").encode(), "either"))


@st.composite
def content_types(draw: st.DrawFn) -> Case:
    ctype = draw(st.sampled_from(CONTENT_TYPES))
    how = draw(st.sampled_from(["valid reply", "form fields", "multipart form", "plain text"]))
    if how == "valid reply":
        # The provider documents no content type, so botkit may take JSON under any.
        return Case(f"{ctype}: valid reply", dumps(draw(replies())), "either", content_type=ctype)
    body = {"form fields": b"message_token=1&phone_number=380501112233&time=1&message=hi",
            "multipart form": MULTIPART}.get(how) or draw(st.text(max_size=40)).encode()
    return Case(f"{ctype}: {how}", body, "invalid", content_type=ctype)


@st.composite
def nan_literals(draw: st.DrawFn) -> Case:
    literal = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity"]))
    where = draw(st.sampled_from(["message_token", "phone_number", "time", "message.text",
                                  "message.tracking_data", "message_id", "status",
                                  "a status's extra field", "a reply's extra field"]))
    kind = f"{literal.decode()} in {where}"
    if where in ("message_id", "status"):
        return Case(kind, placed({"message_id": 7, "status": 1}, where, literal), "invalid")
    if where == "a status's extra field":
        return Case(kind, placed({"message_id": 7, "status": 1}, "x", literal), "either")
    if where == "a reply's extra field":  # not JSON by RFC 8259, but an ignored field
        return Case(kind, placed(draw(replies()), "x", literal), "either")
    return Case(kind, placed(draw(replies()), where, literal), "invalid")


def random_objects() -> st.SearchStrategy[Case]:
    keys = st.sampled_from(["message", "message_id", "status", "message_token", "phone_number",
                            "time", "text", "tracking_data"]) | st.text(max_size=8)
    return st.dictionaries(keys, JSON_VALUES, max_size=6).map(
        lambda body: sized(Case("random object", dumps(body), "either")))


@st.composite
def status_junk(draw: st.DrawFn) -> Case:
    field = draw(st.sampled_from(sorted(BAD_STATUS)))
    body = {"message_id": 7, "status": 1, field: draw(BAD_STATUS[field])}
    return Case(f"status with a wrong {field}", dumps(body), "invalid")


JUNK: st.SearchStrategy[Case] = st.one_of(
    truncated(), wrong_type(), odd_but_valid(), missing_field(), deep(), non_utf8(),
    oversized(), at_the_cap(), compressed(), blank(), top_level(), duplicate_keys(),
    content_types(), nan_literals(), random_objects(), status_junk(),
)


def draw_examples(strategy: st.SearchStrategy[T], count: int, at_seed: int) -> list[T]:
    """``count`` examples of ``strategy``, the same on every run (seeded, no example database).

    Drawn through ``@given`` (not ``.example()``, which is for the REPL), in plain sync code,
    so the async tests can post them.
    """
    drawn: list[T] = []

    @seed(at_seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: T) -> None:
        drawn.append(value)

    collect()
    # hypothesis may stop early if it runs out of new examples: repeat them to fill up
    return [drawn[i % len(drawn)] for i in range(count)]


def valid_cases(count: int, rng: random.Random, run: int) -> list[Case]:
    """Valid callbacks: replies that start a demo or echo turn (one answer each) and statuses."""
    cases = []
    for i in range(count):
        if rng.random() < 0.2:
            message_id = STATUS_IDS + run * 10**7 + i
            body = {"message_id": rng.choice([message_id, str(message_id)]),
                    "status": rng.choice(sorted(STATUSES) + UNDOCUMENTED_STATUSES),
                    "extra": "tolerated"}
            cases.append(Case("valid status", dumps(body), "valid", status_id=message_id))
            continue
        phone = f"77{run:03d}{i:07d}"
        token: str | int = f"ok-{run}-{i}"
        if rng.random() < 0.2:
            token = 10**30 + run * 10**7 + i  # a huge number is a valid token
        tracking = rng.choice([None, "", "tracking_id:1", "tracking_id:abc",
                               "tracking_id:99999999999999999999",
                               "tracking_id:9999999999999999999"])
        text = rng.choice(["demo", "echo", "start demo"])
        cases.append(Case("valid reply", dumps(reply(token, phone, text, tracking)), "valid",
                          token=str(token), phone=phone))
    return cases


def fuzz_cases(count: int, at_seed: int, run: int, valid: int | None = None) -> list[Case]:
    """``count`` requests: hypothesis junk with valid callbacks at random places."""
    rng = random.Random(at_seed)
    valid = round(count * VALID_SHARE) if valid is None else valid
    cases = draw_examples(JUNK, count - valid, at_seed)
    for case in valid_cases(valid, rng, run):
        cases.insert(rng.randrange(len(cases) + 1), case)
    return cases


# -- sending and checking --------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """botkit's answer to one case (``status`` None: the connection failed)."""

    case: Case
    status: int | None
    body: Any
    seconds: float
    error: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == 200 and isinstance(self.body, dict) and self.body.get("ok") is True

    @property
    def new_reply(self) -> bool:
        """Accepted as a reply that botkit had not seen (so it must be handled)."""
        return self.accepted and "matched" not in self.body and not self.body.get("duplicate")

    def problem(self) -> str | None:
        """What is wrong with this answer, or None."""
        if self.status is None:
            return f"no answer: {self.error}"
        refused = 400 <= self.status < 500 and (
            isinstance(self.body, dict) and isinstance(self.body.get("error"), str)
            # A body that fails to decompress may be refused by aiohttp's parser before
            # botkit's handler runs, with aiohttp's plain-text 400.
            or self.case.encoding is not None)
        fine = {"valid": self.accepted, "invalid": refused,
                "too_large": refused and self.status == 413,
                "either": self.accepted or refused}[self.case.expect]
        return None if fine else f"expected {self.case.expect}, got {self.status}"


async def chunks(body: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


async def post(session: ClientSession, url: str | URL, case: Case) -> Outcome:
    headers = {"Content-Type": case.content_type}
    if case.encoding:
        headers["Content-Encoding"] = case.encoding
    if case.encoding or case.chunked or len(case.body) > MAX_BODY:
        # The server may close a connection whose body it refused or could not decode; a
        # stranger's broken body may cost that stranger's connection, but must not be
        # blamed on the next request that happens to reuse it from the pool.
        headers["Connection"] = "close"
    data: Any = chunks(case.body) if case.chunked else case.body
    started = time.perf_counter()
    try:
        async with session.post(url, data=data, headers=headers) as response:
            raw = await response.read()
            status = response.status
    except (TimeoutError, ClientError, OSError) as exc:
        return Outcome(case, None, None, time.perf_counter() - started, repr(exc))
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    return Outcome(case, status, body, time.perf_counter() - started)


async def post_all(session: ClientSession, url: str | URL, cases: list[Case]) -> list[Outcome]:
    return [await post(session, url, case) for case in cases]


async def drain(bot: Harness) -> None:
    """Wait until every accepted message had its turn and every reply went out.

    Unlike ``Harness.settle`` this does not wait for messages left pending, so a lost one
    shows up in the assertions below instead of as a timeout.
    """
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rt = bot.runtime
        outbox = (await rt.store.health())["outbox"]
        busy = rt.dispatcher.busy if rt.dispatcher else 0
        in_flight = rt.sender.status()["in_flight"] if rt.sender else 0
        if not busy and not in_flight and not outbox["queued"] and not outbox["sending"]:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the bot did not finish its turns and sends in 15 s")


def failures(outcomes: list[Outcome]) -> list[str]:
    """One line per kind of wrong answer: how many, and one example."""
    grouped: dict[tuple[str, str], list[Outcome]] = {}
    for outcome in outcomes:
        problem = outcome.problem()
        if problem is not None:
            grouped.setdefault((outcome.case.kind, problem), []).append(outcome)
    lines = []
    for (kind, problem), bad in sorted(grouped.items(), key=lambda item: -len(item[1])):
        first = bad[0]
        lines.append(f"{len(bad)} x {kind}: {problem} {str(first.body)[:100]!r}"
                     f" for {first.case.describe()}")
    return lines


def lost(bot: Harness, outcomes: list[Outcome]) -> list[str]:
    """Accepted callbacks that were not handled or answered as they must be, grouped."""
    db = bot.db()
    problems = [
        f"{row['n']} x inbound {row['status']} with tracking_data {row['tracking_data']!r}"
        f" (error {row['error']!r}), e.g. token {row['token']!r}"
        for row in db.query(
            "SELECT status, tracking_data, error, count(*) AS n, min(message_token) AS token"
            " FROM inbound WHERE status != 'handled' GROUP BY status, tracking_data, error")
    ]
    accepted = sum(outcome.new_reply for outcome in outcomes)
    stored = db.execute("SELECT count(*) FROM inbound").fetchone()[0]
    if stored != accepted:
        problems.append(f"{accepted} replies accepted but {stored} stored")
    handled = {row["message_token"] for row in db.query(
        "SELECT message_token FROM inbound WHERE status = 'handled'")}
    statuses = {row["message_id"] for row in db.query(
        "SELECT message_id FROM status_events WHERE message_id >= ?", [STATUS_IDS])}
    valid = [outcome.case for outcome in outcomes if outcome.case.expect == "valid"]
    unhandled = [c.token for c in valid if c.token is not None and c.token not in handled]
    answers = Counter(len(bot.provider.messages_to(c.phone)) for c in valid if c.phone)
    unstored = [c.status_id for c in valid if c.status_id and c.status_id not in statuses]
    if unhandled:
        problems.append(f"{len(unhandled)} valid replies not handled, e.g. {unhandled[:3]}")
    if set(answers) - {1}:
        problems.append(f"valid replies by number of answers (must all be 1): {dict(answers)}")
    if unstored:
        problems.append(f"{len(unstored)} valid statuses not stored, e.g. {unstored[:3]}")
    failed = db.execute("SELECT count(*) FROM outbound WHERE status = 'failed'").fetchone()[0]
    if failed:
        problems.append(f"{failed} replies failed to send")
    if bot.runtime.engine is not None and bot.runtime.engine.failures:
        problems.append(f"handler failures: {bot.runtime.engine.failures!r}")
    return problems


async def healthz(session: ClientSession, bot: Harness) -> tuple[int, Any]:
    async with session.get(bot.url + "/healthz") as response:
        return response.status, await response.json()


def counts(bot: Harness) -> dict[str, int]:
    db = bot.db()
    return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}


def secret_of(bot: Harness) -> str:
    return bot.callback_url.rsplit("/", 1)[1]


@pytest.fixture
async def bot(bot_harness: Callable[..., Any]) -> Harness:
    harness: Harness = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    return harness


# -- 1. strangers ------------------------------------------------------------------------------

WRONG_PATHS: dict[str, Callable[[str], str]] = {
    "another secret": lambda s: "/viber/callback/" + "A" * len(s),
    "no secret": lambda s: "/viber/callback/",
    "no secret, no slash": lambda s: "/viber/callback",
    "last character changed": lambda s: f"/viber/callback/{s[:-1]}{'B' if s[-1] == 'A' else 'A'}",
    "other case": lambda s: f"/viber/callback/{s.swapcase()}",
    "a prefix": lambda s: f"/viber/callback/{s[:-1]}",
    "one character more": lambda s: f"/viber/callback/{s}0",
    "trailing slash": lambda s: f"/viber/callback/{s}/",
    "a deeper path": lambda s: f"/viber/callback/{s}/x",
    "upper-case route": lambda s: f"/VIBER/callback/{s}",
    "non-ASCII": lambda s: "/viber/callback/" + quote("секрет-" + s[:8]),
    "NUL byte": lambda s: "/viber/callback/%00",
    "very long": lambda s: "/viber/callback/" + "x" * 4000,
    "in the query": lambda s: f"/viber/callback/?secret={s}",
}


@pytest.mark.parametrize("how", list(WRONG_PATHS))
async def test_a_wrong_or_missing_secret_is_404_and_changes_nothing(bot, how):
    secret = secret_of(bot)
    assert secret.swapcase() != secret
    url = URL(bot.url + WRONG_PATHS[how](secret), encoded=True)
    bodies = [
        Case("valid reply", dumps(reply("stranger-1", "380500000001", "demo")), "valid"),
        Case("valid status", dumps({"message_id": 1000, "status": 1}), "valid"),
        Case("garbage", b"\xff{not json", "invalid"),
        Case("over the cap", b"x" * (MAX_BODY + 10), "too_large"),
        *fuzz_cases(30, FUZZ_SEED, run=0, valid=5),
    ]
    async with ClientSession() as session:
        outcomes = await post_all(session, url, bodies)
        others = []
        for method in ("GET", "PUT", "PATCH", "DELETE"):
            async with session.request(method, url, data=bodies[0].body) as response:
                others.append((method, response.status, await response.json()))
    wrong = [(o.case.kind, o.status, o.body) for o in outcomes
             if o.status != 404 or not isinstance(o.body, dict) or "error" not in o.body]
    assert not wrong, f"{how}: answers other than a JSON 404: {wrong[:5]}"
    assert all(status in (404, 405) and "error" in body for _, status, body in others), others
    assert not any(secret in json.dumps(o.body) for o in outcomes)
    assert counts(bot) == dict.fromkeys(TABLES, 0)
    assert bot.provider.sent == [] and bot.provider.callback_log == []


# -- 2. the secret -----------------------------------------------------------------------------


async def test_the_generated_secret_has_128_bits_differs_per_database_and_is_kept(bot_harness):
    first = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    second = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    secrets = [secret_of(first), secret_of(second)]
    assert secrets[0] != secrets[1]
    for secret in secrets:
        # URL-safe base64: 6 bits a character; token_urlsafe(24) gives 32 characters, 192 bits
        assert re.fullmatch(r"[A-Za-z0-9_-]+", secret) and len(secret) * 6 >= 128, secret
    assert first.runtime.secret == secrets[0]
    await first.restart()
    assert secret_of(first) == secrets[0]  # kept in the database, so old messages still work


async def test_the_secret_never_appears_in_an_answer(bot):
    secret = secret_of(bot)
    async with ClientSession() as session:
        answers = [await post(session, bot.callback_url, Case("garbage", b"{", "invalid")),
                   await post(session, bot.callback_url, Case("big", b"x" * 70_000, "too_large")),
                   await post(session, bot.url + "/viber/callback/nope",
                              Case("stranger", b"{}", "invalid"))]
        async with session.get(bot.callback_url) as response:
            texts = [await response.text()]
        async with session.get(bot.url + "/healthz") as response:
            texts.append(await response.text())
    assert [a.status for a in answers] == [400, 413, 404]
    assert not any(secret in text for text in texts + [json.dumps(a.body) for a in answers])


def test_the_secret_is_compared_in_constant_time_and_generated_with_secrets():
    # A cheap guard against a refactor to ``==``, which leaks the secret through timing.
    callback = inspect.getsource(server._callback)
    assert "hmac.compare_digest(" in callback
    assert not re.search(r"(==|!=)\s*rt\.secret|rt\.secret\S*\s*(==|!=)", callback)
    generate = inspect.getsource(server.callback_secret)  # what the server and start use
    found = re.search(r"secrets\.token_urlsafe\((\d+)\)", generate)
    assert found and int(found.group(1)) * 8 >= 128


# -- 3. fuzzing ----------------------------------------------------------------------------


async def test_fuzzed_bodies_get_no_5xx_and_valid_callbacks_mixed_in_are_all_handled(
    bot, record_property
):
    started = time.perf_counter()
    cases = fuzz_cases(FUZZ_BODIES, FUZZ_SEED, run=1)
    drawn = time.perf_counter() - started
    async with ClientSession() as session:
        outcomes = await post_all(session, bot.callback_url, cases)
        await drain(bot)
        health = await healthz(session, bot)
    statuses = Counter(outcome.status for outcome in outcomes)
    kinds = Counter(case.kind.split(":")[0] for case in cases)
    figures = {"requests": len(cases),
               "valid_mixed_in": sum(c.kind.startswith("valid") for c in cases),
               "must_be_accepted": sum(c.expect == "valid" for c in cases),
               "kinds": len({case.kind for case in cases}), "statuses": dict(statuses),
               "accepted_replies": sum(o.new_reply for o in outcomes),
               "seconds_drawing": round(drawn, 2),
               "seconds_posting": round(time.perf_counter() - started - drawn, 2)}
    print(f"\nfuzz: {figures}\nfuzz kinds: {dict(kinds)}")
    for name, value in figures.items():
        record_property(f"fuzz_{name}", value)
    problems = failures(outcomes) + lost(bot, outcomes)
    if health[0] != 200 or health[1]["status"] != "ok":
        problems.append(f"/healthz answered {health}")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])


# -- 4. memory ---------------------------------------------------------------------------------


def rss_mb() -> float:
    """Resident memory of this process (the harness serves the bot in-process)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def botkit_objects(provider: FakeProvider) -> Counter[str]:
    """Live instances of botkit's own classes, by class, but for the fake provider's records."""
    gc.collect()
    records = {id(sent.request) for sent in provider.sent}  # the provider keeps SendRequests
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        module = vars(type(obj)).get("__module__")
        if (isinstance(module, str) and module.startswith("botkit.")
                and "sandbox" not in module and id(obj) not in records):
            counts[type(obj).__qualname__] += 1
    return counts


async def test_memory_stays_flat_across_batches_of_fuzzed_bodies(
    bot_harness, record_property, caplog
):
    # The fake provider keeps a record of every message it accepted (and, delivering, of
    # every status callback it posted), and pytest keeps every log record with its
    # traceback: that is the test's memory, not the bot's. So the provider delivers
    # nothing here, logs are off, and botkit's own objects are counted apart.
    caplog.set_level(logging.CRITICAL + 1)
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES,
                            provider=FakeProvider(api_key=TEST_KEY, auto_deliver=False))
    batches = [fuzz_cases(MEMORY_BATCH, FUZZ_SEED + 1 + n, run=10 + n)
               for n in range(MEMORY_BATCHES)]
    rows = []
    async with ClientSession() as session:
        await post_all(session, bot.callback_url, batches[0])  # warms caches and pools up
        await drain(bot)
        base_objects, base_rss = botkit_objects(bot.provider), rss_mb()
        tracemalloc.start()
        try:
            for batch in batches[1:]:
                outcomes = await post_all(session, bot.callback_url, batch)
                await drain(bot)
                gc.collect()
                retained = tracemalloc.get_traced_memory()[0] / 2**20
                rows.append({"requests": len(batch), "retained_mb": round(retained, 2),
                             "rss_growth_mb": round(rss_mb() - base_rss, 2),
                             "5xx": sum((o.status or 0) >= 500 for o in outcomes)})
        finally:
            tracemalloc.stop()
    grown = botkit_objects(bot.provider) - base_objects
    measured = sum(row["requests"] for row in rows)
    per_request = rows[-1]["retained_mb"] * 2**20 / measured
    print(f"\nmemory: rss {base_rss:.1f} MB after a warm-up batch of {MEMORY_BATCH}; then"
          f" per batch {rows}; {per_request:.0f} bytes retained a request, nearly all the fake"
          f" provider's record of the {len(bot.provider.sent)} messages it accepted;"
          f" botkit objects grown: {dict(grown)}")
    record_property("memory_batches", rows)
    record_property("memory_retained_bytes_per_request", round(per_request))
    record_property("memory_botkit_objects_grown", dict(grown))
    # Python allocations made during the measured batches and still alive after them
    assert per_request < MEMORY_LIMIT_PER_REQUEST, rows
    # and what the process holds besides them (SQLite's cache, buffers, allocator arenas)
    assert rows[-1]["rss_growth_mb"] - rows[-1]["retained_mb"] < MEMORY_LIMIT_MB, rows
    # a leak per request would leave about one object per request; allow a few in flight
    assert sum(grown.values()) <= max(20, measured // 100), grown


# -- 5. junk and valid callbacks at once -------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def test_valid_callbacks_are_served_while_junk_arrives_at_the_same_time(
    bot, record_property
):
    cases = fuzz_cases(CONCURRENT_JUNK + CONCURRENT_VALID, FUZZ_SEED + 100, run=30,
                       valid=CONCURRENT_VALID)
    async with ClientSession(connector=TCPConnector(limit=100)) as session:
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(post(session, bot.callback_url, c) for c in cases))
        elapsed = time.perf_counter() - started
        await drain(bot)
        health = await healthz(session, bot)
    valid = [o for o in outcomes if o.case.expect == "valid" and o.case.kind.startswith("valid")]
    latencies = [o.seconds for o in valid]
    figures = {"junk": len(outcomes) - len(valid), "valid": len(valid),
               "seconds": round(elapsed, 2),
               "valid_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
               "valid_p95_ms": round(percentile(latencies, 0.95) * 1000, 1),
               "valid_max_ms": round(max(latencies) * 1000, 1)}
    print(f"\nconcurrent: {figures}")
    for name, value in figures.items():
        record_property(f"concurrent_{name}", value)
    unanswered = [o.error for o in outcomes if o.status is None]
    assert not unanswered, f"{len(unanswered)} requests got no answer: {unanswered[:3]}"
    refused = [(o.case.kind, o.status, o.body) for o in valid if not o.accepted]
    assert not refused, refused[:5]
    missing = lost(bot, outcomes)  # every accepted callback, junk included, is handled
    assert not missing, "\n".join(missing[:30])
    assert health[0] == 200, health


# -- the faults the fuzzing found, one by one --------------------------------------------------

REPLY = reply("focused-1", "380500000009", "demo")
STATUS = {"message_id": 7, "status": 1}
NOT_5XX = {
    "10,000 nested lists": (b"[" * 10_000 + b"]" * 10_000, None),
    "20,000 nested lists": (b"[" * 20_000 + b"]" * 20_000, None),
    "nested dicts in a reply's extra field": (placed(REPLY, "x", nesting(5000, "dict")), None),
    "nested lists in message.text": (placed(REPLY, "message.text", nesting(3000, "list")), None),
    "a 600-deep extra field in a status": (placed(STATUS, "x", nesting(600, "list")), None),
    "a lone surrogate in a status's extra field": (placed(STATUS, "x", b'"\\ud800"'), None),
    "a lone surrogate in message_token": (placed(REPLY, "message_token", b'"\\ud800"'), None),
    "a lone surrogate as a status's extra key": (b'{"message_id": 7, "status": 1, "\\ud800": 1}',
                                                 None),
    "a corrupt gzip body": (b"this is not gzip", "gzip"),
    "a corrupt deflate body": (b"this is not deflate", "deflate"),
    "a truncated gzip body": (gzip.compress(dumps(REPLY))[:20], "gzip"),
}


@pytest.mark.parametrize("name", list(NOT_5XX))
async def test_hostile_body_gets_a_json_answer_not_a_5xx(bot, name):
    body, encoding = NOT_5XX[name]
    async with ClientSession() as session:
        outcome = await post(session, bot.callback_url,
                             Case(name, body, "either", encoding=encoding))
        await drain(bot)
        health = await healthz(session, bot)
    assert outcome.problem() is None, (outcome.status, outcome.body)
    assert not lost(bot, [outcome])
    assert health[0] == 200


async def test_a_reply_tracking_an_id_beyond_64_bits_is_still_answered(bot):
    # "tracking_id:<19 digits>" over 2**63 - 1 is valid tracking data (a string of at most
    # 256 characters); the user's reply must be handled as if it named no message.
    body = reply("tracking-overflow", "380500000010", "demo", "tracking_id:9999999999999999999")
    async with ClientSession() as session:
        outcome = await post(session, bot.callback_url, Case("valid reply", dumps(body), "valid",
                                                             token="tracking-overflow",
                                                             phone="380500000010"))
    await drain(bot)
    assert outcome.accepted
    assert not lost(bot, [outcome])


@pytest.mark.parametrize("phone", ["٣٨٠٥٠١١١٢٢٣٣", "３８０５０１１１２２３３", "३८०५०"],
                         ids=["Arabic-Indic", "fullwidth", "Devanagari"])
async def test_a_phone_number_in_other_digits_is_refused(bot, phone):
    # Botkit stores one spelling per user (ASCII digits) and sends it to the provider as
    # destination_addr; other scripts' digits would make a second user and a bad send.
    async with ClientSession() as session:
        outcome = await post(session, bot.callback_url, Case(
            "phone in other digits", dumps(reply("other-digits", phone, "demo")), "invalid"))
    assert outcome.status == 400 and outcome.body.get("field") == "phone_number", outcome
    assert counts(bot)["inbound"] == 0
