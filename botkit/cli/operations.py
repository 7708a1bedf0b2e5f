"""The commands that run or steer a bot: serve, status, check, resume, release, and the
standalone fake provider."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import Any

from botkit.cli.common import (
    count,
    flows_of,
    phone_arg,
    settings_of,
    unreachable,
    warn_if_empty,
    with_store,
)
from botkit.cli.logs import configure_logging
from botkit.errors import BotkitError

__all__ = ['check', 'fake_provider', 'release', 'resume', 'serve', 'status']

log = logging.getLogger("botkit.cli")


def serve(args: argparse.Namespace) -> int:
    from botkit.web.server import create_app
    from botkit.web.serving import listen, serve

    settings = settings_of(args)
    configure_logging(logging.INFO, settings.log_format)
    flows = flows_of(args)
    warn_if_empty(flows, args.bots)
    app = create_app(settings, flows.values(), templates=args.templates)
    sock = listen(settings.host, settings.port)  # a taken port is said before anything else
    where = f"http://{settings.host}:{settings.port}"
    if settings.sandbox:
        why = "no provider key" if settings.api_key is None else "BOTKIT_SANDBOX=1"
        print(f"botkit SANDBOX ({why}): messages go to a fake provider inside this process."
              f" Chat with your bots at {where}/", flush=True)
    else:
        print(f"botkit serving on {where}, sending through {settings.api_url}", flush=True)
    serve(app, sock, loop=settings.loop)
    return 0


def status(args: argparse.Namespace) -> int:
    from botkit.models import sms_status_label, status_label
    from botkit.web.server import provider_client, provider_url

    settings = settings_of(args)

    async def run() -> int:
        if settings.sandbox and await unreachable(provider_url(settings), timeout=1.0):
            where = f"http://{settings.host}:{settings.port}"
            why = "no BOTKIT_API_KEY" if settings.api_key is None else "BOTKIT_SANDBOX=1"
            raise BotkitError(
                f"in sandbox mode ({why}) the fake provider lives inside the server, and no"
                f" server runs at {where}: start it with `run.py serve`, or set"
                " BOTKIT_API_KEY to ask the real provider")
        async with provider_client(settings) as client:
            result = await client.get_status(args.message_id)
        line = f"message {result.message_id}: {status_label(result.status)}"
        if result.sms_message_id is not None or result.sms_message_status is not None:
            line += (f"; SMS fallback {result.sms_message_id}:"
                     f" {sms_status_label(result.sms_message_status)}")
        print(line)
        return 0

    return asyncio.run(run())


def check(args: argparse.Namespace) -> int:
    from botkit.cli.checks import check
    from botkit.runtime.templates import Renderer

    settings_of(args)  # a setting the server would refuse fails the check too
    flows = flows_of(args)
    renderer = Renderer(args.templates)
    problems = check(flows, renderer, args.templates)
    for problem in problems:
        print(problem, file=sys.stderr)
    steps = sum(len(f.steps) for f in flows.values())
    if problems:
        print(f"check failed: {count(len(problems), 'problem')}", file=sys.stderr)
        return 1
    warn_if_empty(flows, args.bots)
    print(f"ok: {count(len(flows), 'flow')} ({', '.join(flows)}), {count(steps, 'step')},"
          " templates compile")
    if flows.default is not None:
        how = ("asks its first question" if flows.default.default == "ask"
               else f"hands the message to {flows.default.first.name!r}")
        print(f"default flow: {flows.default.name} (a message that is no keyword starts it and"
              f" {how})")
    else:
        print("default flow: none (a message that is no keyword gets the fallback reply;"
              " Flow(..., default='ask') makes one)")
    from botkit.cli.translations import missing_translations

    for locale, missing in missing_translations(flows, renderer, args.templates).items():
        if not missing:
            print(f"{locale}: every template a flow sends has a translation")
            continue
        print(f"{locale}: {count(len({n for n, _ in missing}), 'template')} without a"
              f" translation (templates/{locale}/...; the untranslated one is sent):")
        for name, where in missing:
            print(f"  {name} ({where})")
    return 0


def resume(args: argparse.Namespace) -> int:
    async def job(store: Any) -> int:
        await store.set_meta("resume_sending", str(time.time()))
        print("asked the running server to resume sending; it does within a second")
        return 0

    return with_store(args, job)


def release(args: argparse.Namespace) -> int:
    async def job(store: Any) -> int:
        phone = phone_arg(args, args.phone)
        conv = await store.release(phone, time.time())
        if conv is None:
            print(f"error: {phone} has no conversation waiting for a human", file=sys.stderr)
            return 1
        print(f"released conversation {conv.id} of {phone}: the bot answers again")
        return 0

    return with_store(args, job)


def fake_provider(args: argparse.Namespace) -> int:
    from botkit.sandbox.provider_app import run_fake_provider

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_fake_provider(args.host, args.port, args.key, http_errors=args.http_errors)
    return 0
