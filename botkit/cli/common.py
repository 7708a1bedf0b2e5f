"""What the commands share: their settings, the bots, a store for one job, phones typed
on the command line, and how counts and times are printed."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from botkit.core.flows import FlowSet
from botkit.errors import BotkitError

__all__ = ['count', 'flows_of', 'in_range', 'iso', 'phone_arg', 'settings_of', 'unreachable', 'warn_if_empty', 'with_store']

log = logging.getLogger("botkit.cli")


def in_range(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` between ``low`` and ``high``, or a message saying so
    (as BOTKIT_SEND_CONCURRENCY and BOTKIT_SEND_RATE are checked)."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (low <= value <= high and math.isfinite(value)):
            want = f"{low:g} to {high:g}" if math.isfinite(high) else f"{low:g} or more"
            raise argparse.ArgumentTypeError(f"{text} is out of range ({want})")
        return value
    return parse


def settings_of(args: argparse.Namespace) -> Any:
    from botkit.config import Settings

    return Settings.from_env(**{name: getattr(args, name, None) for name in (
        "db", "api_url", "public_url", "host", "port")})


def flows_of(args: argparse.Namespace) -> FlowSet:
    from botkit.cli.loader import load_flows

    return FlowSet(load_flows(args.bots))


def with_store(args: argparse.Namespace, job: Callable[[Any], Awaitable[int]]) -> int:
    from botkit.storage.engines import store_for

    settings = settings_of(args)

    async def run() -> int:
        store = store_for(settings.db, pool_size=settings.db_pool, lease=settings.lease)
        await store.open()
        try:
            return await job(store)
        finally:
            await store.close()

    return asyncio.run(run())


async def unreachable(url: str, timeout: float = 3.0) -> str | None:
    """Why nothing answers at ``url`` (a TCP connect), or None when something does."""
    from urllib.parse import urlsplit

    parsed = urlsplit(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parsed.hostname, port), timeout)
    except (OSError, TimeoutError) as exc:
        return f"the provider at {url} does not answer ({exc or type(exc).__name__})"
    writer.close()
    return None


def warn_if_empty(flows: FlowSet, folder: str) -> None:
    if not flows:
        print(f"warning: no flows found in {folder}/: each module there that defines a"
              " Flow at module level is served (README.md, the tutorial)", file=sys.stderr)


def phone_arg(args: argparse.Namespace, text: str) -> str:
    """A phone typed on the command line, as botkit stores it, or an error saying why not."""
    from botkit.phones import PhoneError, read_phone

    try:
        return read_phone(text, settings_of(args).phone_region)
    except PhoneError as exc:
        raise BotkitError(f"{text!r}: {exc}") from None


def count(n: int, noun: str) -> str:
    """``1 conversation``, ``2 conversations``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def iso(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")
