"""``run.py start`` and ``run.py notify``: many phones in batches, sent with progress."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botkit.cli.common import count, flows_of, in_range, settings_of, unreachable, with_store
from botkit.cli.logs import configure_logging
from botkit.core.flows import FlowSet
from botkit.errors import BotkitError

__all__ = ['add_campaign_options', 'notify', 'start']

log = logging.getLogger("botkit.cli")


def add_campaign_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("phones", nargs="*", metavar="PHONE",
                   help="phone numbers, as people write them (+38 050 124 0002)")
    p.add_argument("--phones", dest="phones_file", metavar="FILE.csv",
                   help="a CSV with a 'phone' column (or the phones in the first column)")
    p.add_argument("--concurrency", type=in_range(int, 1, 100), metavar="N",
                   help="messages sent at the same time, 1-100 (default"
                        " BOTKIT_SEND_CONCURRENCY, 100)")
    p.add_argument("--rate", type=in_range(float, 0, math.inf), metavar="N",
                   help="at most N messages a second (default BOTKIT_SEND_RATE, 0 = no limit)")
    p.add_argument("--ignore-quiet-hours", action="store_true",
                   help="send now even to phones in their local night (BOTKIT_QUIET_HOURS):"
                        " for urgent transactional messages only; it is logged")


def start(args: argparse.Namespace) -> int:
    flows = flows_of(args)
    flows[args.flow]  # noqa: B018 - fails early, with a suggestion, for a wrong flow name

    def begin(engine: Any) -> Any:
        return functools.partial(engine.start_many, args.flow,
                                 quiet_hours=not args.ignore_quiet_hours)

    return _campaign(args, flows, begin, label=args.flow, done_as="phones started or skipped",
                     uncertain={"flow": args.flow})


def notify(args: argparse.Namespace) -> int:
    from botkit.cli.checks import check_template
    from botkit.runtime.templates import Renderer

    flows = flows_of(args)
    variables = dict(_variable(text) for text in args.var)
    renderer = Renderer(args.templates)
    for name in filter(None, (args.template, args.sms)):
        problem = check_template(renderer, name)
        if problem:
            raise BotkitError(problem)
    delivery = None
    if args.sender or args.promotional:
        from botkit.core.flows import Delivery

        delivery = Delivery(sender=args.sender, source_type=1 if args.promotional else None)

    def begin(engine: Any) -> Any:
        async def notify(phones: list[str], campaign_id: int | None = None) -> Any:
            return await engine.notify_many(phones, args.template, sms=args.sms,
                                            variables=variables, delivery=delivery,
                                            key=args.once, campaign_id=campaign_id,
                                            quiet_hours=not args.ignore_quiet_hours)
        return notify

    return _campaign(args, flows, begin, label=args.template,
                     done_as="phones queued or skipped",
                     uncertain={"template": args.template}, rerun_safe=args.once is not None)


def _variable(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip().isidentifier():
        raise BotkitError(f"--var {text!r}: write NAME=VALUE, e.g. --var order=42")
    return name.strip(), value


def _campaign(
    args: argparse.Namespace, flows: FlowSet, begin: Callable[[Any], Any], *, label: str,
    done_as: str, uncertain: dict[str, str], rerun_safe: bool = True,
) -> int:
    """Begin ``begin(engine)`` for the phones of ``args`` in batches and send what it queued
    (``run.py start`` and ``run.py notify``). ``uncertain`` selects the messages that
    ``--resend-uncertain`` queues again (``flow=`` or ``template=``)."""
    from botkit.web.server import callback_secret, callback_url, renderer_for

    from botkit.cli.phone_lists import PhoneList

    settings = settings_of(args)
    configure_logging(logging.WARNING, settings.log_format)
    listed = PhoneList.read(args.phones, Path(args.phones_file) if args.phones_file else None,
                            settings.phone_region)
    phones, bad = listed.phones, listed.rejected
    for problem in bad:
        print(f"rejected {problem}", file=sys.stderr)
    if not phones and not args.resend_uncertain:  # alone, it sends the uncertain ones again
        some = f" ({len(bad)} rejected)" if bad else ""
        print(f"error: no phone numbers to use{some}: give PHONE arguments or --phones"
              " FILE.csv", file=sys.stderr)
        return 2

    if args.ignore_quiet_hours and settings.quiet_hours:
        log.warning("%s %s: --ignore-quiet-hours: %d phones get it now, even in their local"
                    " night (BOTKIT_QUIET_HOURS=%s-%s)", args.command, label, len(phones),
                    *(t.strftime("%H:%M") for t in settings.quiet_hours))

    async def job(store: Any) -> int:
        from botkit.runtime.assembly import assemble
        from botkit.runtime.campaign import Campaign, Progress
        from botkit.web.server import provider_client, provider_url

        secret = await callback_secret(settings, store)
        if args.resend_uncertain:
            again = await store.resend_uncertain(**uncertain)
            print(f"{label}: {again} uncertain messages queued again", file=sys.stderr)
        problem = await unreachable(provider_url(settings))
        if problem:
            print(f"{problem}: the messages are queued; the server sends them when it runs",
                  file=sys.stderr)
        client = provider_client(settings)
        # Statuses reach the server; one that beats this process's record of its send is
        # applied when the send is recorded, by the same rules the server's sender has.
        bot = assemble(settings=settings, flows=flows, store=store, client=client,
                       renderer=renderer_for(settings, args.templates), clock=time.time,
                       secret=secret, callback_url=callback_url(settings, secret),
                       send=problem is None, concurrency=args.concurrency, rate=args.rate,
                       hold_abandoned=True)
        tty = sys.stderr.isatty()

        def report(progress: Progress) -> None:
            print(("\r" if tty else "") + f"{label}: {progress.line()}", file=sys.stderr,
                  end="" if tty else "\n", flush=True)

        campaign = Campaign(store, bot.engine, bot.sender, begin(bot.engine), phones,
                            report=report, send=problem is None, done_as=done_as,
                            kind=args.command, name=label)  # its record (the console's)
        # Ctrl-C or SIGTERM: the sends in flight finish and are recorded, then it stops.
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        stopped = False
        # Its heartbeat: a server on another machine leaves this process's claims alone.
        beating = asyncio.create_task(bot.presence.run(), name="campaign-presence")
        try:
            progress = await campaign.run()
        except asyncio.CancelledError:
            stopped, progress = True, campaign.progress
        finally:
            bot.presence.stop()
            await asyncio.gather(beating, return_exceptions=True)
            await client.close()
        if tty:
            print(file=sys.stderr)
        if stopped:
            again = ("run the same command again to go on (nothing is sent twice)"
                     if rerun_safe else
                     "the notices already queued are sent by the server; running the same"
                     " command again would queue them all once more (--once KEY prevents"
                     " that)")
            print(f"{label}: stopped after {progress.sent} messages; {again}", file=sys.stderr)
            return 130
        for detail in progress.details[:20]:
            print(detail)
        if len(progress.details) > 20:
            print(f"... and {len(progress.details) - 20} more")
        begun = (f"started {count(progress.started, 'conversation')}"
                 if args.command == "start" else f"queued {count(progress.started, 'notice')}")
        given = "".join(f", {what}" for n, what in (
            (len(bad), f"rejected {len(bad)}"),
            (listed.duplicates, count(listed.duplicates, "duplicate"))) if n)
        print(f"{label}: {begun}, skipped {progress.skipped}{given}; sent"
              f" {count(progress.sent, 'message')} in {progress.seconds:.1f}s"
              f" ({progress.rate:.0f}/s), {progress.failed} failed")
        if progress.held:
            print(f"{count(progress.held, 'phone')} in the night (BOTKIT_QUIET_HOURS, by each"
                  " phone's time zone): the running server sends their messages when it ends"
                  " (--ignore-quiet-hours sends now)")
        if progress.limited:
            print(f"{count(progress.limited, 'phone')} skipped at a per-phone limit"
                  " (BOTKIT_MAX_UNANSWERED, BOTKIT_MAX_PROACTIVE_PER_DAY)")
        if progress.waiting:
            print(f"{progress.waiting} messages wait in the queue (for a later try, for quiet"
                  " hours to end, or for the server to send them)")
        if progress.uncertain:
            print(f"{progress.uncertain} messages are uncertain (a killed run was sending"
                  f" them); `run.py {args.command} {label} --resend-uncertain` sends them again")
        return 1 if bad or progress.failed else 0

    return with_store(args, job)
