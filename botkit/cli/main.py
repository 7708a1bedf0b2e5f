"""The command line (``python run.py ...``): serve, start, check, export and inspect.

Every subcommand reads the same settings as the server (``BOTKIT_*`` variables and ``.env``);
flags override them. Errors print one line saying what to fix and exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import functools
import logging
import math
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from botkit.core.flows import FlowSet
from botkit.errors import BotkitError

__all__ = ["main"]

log = logging.getLogger("botkit.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns the exit status (``run.py`` passes it to ``sys.exit``)."""
    parser = _parser()
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or (words[0].startswith("-") and words[0] not in ("-h", "--help")):
        words = ["serve", *words]  # `run.py --port 9000` serves, like `run.py`
    args = parser.parse_args(words)
    try:
        result: int = args.run(args)
        return result
    except BotkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that can't be read or written: say which
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _in_range(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], Any]:
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


def _options() -> dict[str, argparse.ArgumentParser]:
    """The flags commands share, in groups: each command takes only the groups it reads."""
    groups = {name: argparse.ArgumentParser(add_help=False)
              for name in ("db", "bots", "templates", "provider", "address")}
    groups["db"].add_argument("--db", help="the SQLite file (BOTKIT_DB, default botkit.db)")
    groups["bots"].add_argument("--bots", default="bots",
                                help="the folder of bot modules (default bots)")
    groups["templates"].add_argument("--templates", default="templates",
                                     help="the templates folder (default templates)")
    groups["provider"].add_argument("--api-url", help="the provider's base URL (BOTKIT_API_URL)")
    address = groups["address"]
    address.add_argument("--public-url", help="the URL the provider reaches this server at"
                         " (BOTKIT_PUBLIC_URL, default http://HOST:PORT)")
    address.add_argument("--host", help="the server's address (BOTKIT_HOST, default 127.0.0.1)")
    address.add_argument("--port", type=int,
                         help="the server's port (BOTKIT_PORT, default 8080)")
    return groups


def _campaign_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("phones", nargs="*", metavar="PHONE",
                   help="phone numbers, as people write them (+38 050 124 0002)")
    p.add_argument("--phones", dest="phones_file", metavar="FILE.csv",
                   help="a CSV with a 'phone' column (or the phones in the first column)")
    p.add_argument("--concurrency", type=_in_range(int, 1, 100), metavar="N",
                   help="messages sent at the same time, 1-100 (default"
                        " BOTKIT_SEND_CONCURRENCY, 100)")
    p.add_argument("--rate", type=_in_range(float, 0, math.inf), metavar="N",
                   help="at most N messages a second (default BOTKIT_SEND_RATE, 0 = no limit)")


def _parser() -> argparse.ArgumentParser:
    o = _options()
    parser = argparse.ArgumentParser(prog="run.py", description="botkit: two-way Viber bots.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], help: str,
                *groups: str) -> Any:
        p = sub.add_parser(name, parents=[o[g] for g in groups], help=help, description=help)
        p.set_defaults(run=run)
        return p

    everything = ("db", "bots", "templates", "provider", "address")
    command("serve", _serve, "serve the bots (the default command)", *everything)
    p = command("start", _start, "begin conversations proactively (safe to re-run)",
                *everything)
    p.add_argument("flow", help="the flow to start, e.g. survey")
    _campaign_options(p)
    p.add_argument("--resend-uncertain", action="store_true",
                   help="send again the flow's messages a killed run may or may not have sent")
    p = command("notify", _notify, "send a one-way notice (type 106/108) to phones",
                *everything)
    p.add_argument("template", help="the notice's template, e.g. support/order_shipped.txt")
    _campaign_options(p)
    p.add_argument("--sms", metavar="TEMPLATE",
                   help="the SMS sent instead when Viber cannot deliver the notice")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="a template variable (repeat for more)")
    p.add_argument("--sender", help="the source_addr (default BOTKIT_SENDER)")
    p.add_argument("--promotional", action="store_true",
                   help="send as promotional (source_type 1; no SMS fallback)")
    p.add_argument("--resend-uncertain", action="store_true",
                   help="send again this template's notices a killed run may or may not have"
                        " sent")
    p.add_argument("--once", metavar="KEY",
                   help="skip phones that already got a notice under KEY (e.g."
                        " order-100200-shipped), so a re-run sends nothing twice")
    p = command("status", _status, "ask the provider for a message's delivery status",
                "provider", "address")
    p.add_argument("message_id", type=int, help="the provider's message_id, e.g. 1004")
    command("check", _check, "load every bot and template; report what to fix", "bots",
            "templates")
    p = command("export", _export, "one CSV row per conversation of a flow, with its state",
                "db", "bots")
    p.add_argument("flow", help="the flow whose conversations to export")
    p.add_argument("--csv", metavar="FILE", help="write to FILE instead of standard output")
    p = command("conversations", _conversations, "list conversations, most recent first",
                "db", "bots")
    p.add_argument("--phone", help="only this phone's conversations")
    p.add_argument("--flow", help="only this flow's conversations")
    p.add_argument("--limit", type=int, default=50, metavar="N",
                   help="at most N conversations (default 50)")
    p.add_argument("--by-version", action="store_true",
                   help="count conversations per flow version instead (after a deploy)")
    p = command("stats", _stats, "a flow's funnel: per step sent, delivered, answered, ...",
                "db", "bots")
    p.add_argument("flow", help="the flow whose funnel to show")
    p = command("messages", _messages, "a phone's last messages in and out, with their status",
                "db")
    p.add_argument("phone", help="the phone, as people write it")
    p.add_argument("--limit", type=int, default=30, metavar="N",
                   help="the last N messages (default 30)")
    command("resume", _resume, "resume sending paused by a 401/402 (after fixing the cause)",
            "db")
    p = command("release", _release, "give a conversation with a human back to the bot", "db")
    p.add_argument("phone", help="the phone whose conversation to release")
    p = command("fake-provider", _fake_provider, "run the fake provider standalone (testing)")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on (default 127.0.0.1; BOTKIT_HOST is not read)")
    p.add_argument("--port", type=int, default=9000,
                   help="the port to listen on (default 9000; BOTKIT_PORT is not read)")
    p.add_argument("--key", help="require this access key (Basic auth; default: any key)")
    p.add_argument("--http-errors", action="store_true",
                   help="answer errors under their HTTP status (default: under HTTP 200, as"
                        " the provider's SDKs expect them)")
    return parser


def _settings(args: argparse.Namespace) -> Any:
    from botkit.config import Settings

    return Settings.from_env(**{name: getattr(args, name, None) for name in (
        "db", "api_url", "public_url", "host", "port")})


def _flows(args: argparse.Namespace) -> FlowSet:
    from botkit.cli.loader import load_flows

    return FlowSet(load_flows(args.bots))


def _serve(args: argparse.Namespace) -> int:
    from botkit.web.server import create_app
    from botkit.web.serving import listen, serve

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(args)
    flows = _flows(args)
    _warn_if_empty(flows, args.bots)
    app = create_app(settings, flows.values(), templates=args.templates)
    sock = listen(settings.host, settings.port)  # a taken port is said before anything else
    where = f"http://{settings.host}:{settings.port}"
    if settings.sandbox:
        why = "no provider key" if settings.api_key is None else "BOTKIT_SANDBOX=1"
        print(f"botkit SANDBOX ({why}): messages go to a fake provider inside this process."
              f" Chat with your bots at {where}/", flush=True)
    else:
        print(f"botkit serving on {where}, sending through {settings.api_url}", flush=True)
    serve(app, sock)
    return 0


def _with_store(args: argparse.Namespace, job: Callable[[Any], Awaitable[int]]) -> int:
    from botkit.storage.sqlite import SQLiteStore

    settings = _settings(args)

    async def run() -> int:
        store = SQLiteStore(settings.db)
        await store.open()
        try:
            return await job(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _start(args: argparse.Namespace) -> int:
    flows = _flows(args)
    flows[args.flow]  # noqa: B018 - fails early, with a suggestion, for a wrong flow name

    def begin(engine: Any) -> Any:
        return functools.partial(engine.start_many, args.flow)

    return _campaign(args, flows, begin, label=args.flow, done_as="phones started or skipped",
                     uncertain={"flow": args.flow})


def _notify(args: argparse.Namespace) -> int:
    from botkit.cli.checks import check_template
    from botkit.runtime.templates import Renderer

    flows = _flows(args)
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
        async def notify(phones: list[str]) -> Any:
            return await engine.notify_many(phones, args.template, sms=args.sms,
                                            variables=variables, delivery=delivery,
                                            key=args.once)
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

    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from botkit.cli.phone_lists import PhoneList

    settings = _settings(args)
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

    async def job(store: Any) -> int:
        from botkit.runtime.assembly import assemble
        from botkit.runtime.campaign import Campaign, Progress
        from botkit.web.server import provider_client, provider_url

        secret = await callback_secret(settings, store)
        if args.resend_uncertain:
            again = await store.resend_uncertain(**uncertain)
            print(f"{label}: {again} uncertain messages queued again", file=sys.stderr)
        problem = await _unreachable(provider_url(settings))
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
                            report=report, send=problem is None, done_as=done_as)
        # Ctrl-C or SIGTERM: the sends in flight finish and are recorded, then it stops.
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        stopped = False
        try:
            progress = await campaign.run()
        except asyncio.CancelledError:
            stopped, progress = True, campaign.progress
        finally:
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
        begun = (f"started {_count(progress.started, 'conversation')}"
                 if args.command == "start" else f"queued {_count(progress.started, 'notice')}")
        given = "".join(f", {what}" for n, what in (
            (len(bad), f"rejected {len(bad)}"),
            (listed.duplicates, _count(listed.duplicates, "duplicate"))) if n)
        print(f"{label}: {begun}, skipped {progress.skipped}{given}; sent"
              f" {_count(progress.sent, 'message')} in {progress.seconds:.1f}s"
              f" ({progress.rate:.0f}/s), {progress.failed} failed")
        if progress.waiting:
            print(f"{progress.waiting} messages wait in the queue (for a later try, or for"
                  " the server to send them)")
        if progress.uncertain:
            print(f"{progress.uncertain} messages are uncertain (a killed run was sending"
                  f" them); `run.py {args.command} {label} --resend-uncertain` sends them again")
        return 1 if bad or progress.failed else 0

    return _with_store(args, job)


async def _unreachable(url: str, timeout: float = 3.0) -> str | None:
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


def _status(args: argparse.Namespace) -> int:
    from botkit.models import sms_status_label, status_label
    from botkit.web.server import provider_client, provider_url

    settings = _settings(args)

    async def run() -> int:
        if settings.sandbox and await _unreachable(provider_url(settings), timeout=1.0):
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


def _check(args: argparse.Namespace) -> int:
    from botkit.cli.checks import check
    from botkit.runtime.templates import Renderer

    _settings(args)  # a setting the server would refuse fails the check too
    flows = _flows(args)
    problems = check(flows, Renderer(args.templates), args.templates)
    for problem in problems:
        print(problem, file=sys.stderr)
    steps = sum(len(f.steps) for f in flows.values())
    if problems:
        print(f"check failed: {_count(len(problems), 'problem')}", file=sys.stderr)
        return 1
    _warn_if_empty(flows, args.bots)
    print(f"ok: {_count(len(flows), 'flow')} ({', '.join(flows)}), {_count(steps, 'step')},"
          " templates compile")
    return 0


def _export(args: argparse.Namespace) -> int:
    async def job(store: Any) -> int:
        convs = await store.conversations(flow=args.flow, limit=10**9)
        if not convs:
            _flows(args)[args.flow]  # noqa: B018 - a typo gets "did you mean", not an empty file
        keys = list(dict.fromkeys(k for c in convs for k in c.state))
        out: TextIO = open(args.csv, "w", newline="", encoding="utf-8") if args.csv else sys.stdout
        try:
            writer = csv.writer(out)
            writer.writerow(["conversation", "phone", "status", "step", "started", "updated",
                             *keys])
            for c in sorted(convs, key=lambda c: c.id):
                writer.writerow([c.id, c.phone, c.status.value, c.step, _iso(c.created_at),
                                 _iso(c.updated_at), *(_cell(c.state.get(k)) for k in keys)])
        finally:
            out.flush()
            if args.csv:
                out.close()
                print(f"wrote {_count(len(convs), 'conversation')} to {args.csv}", file=sys.stderr)
        return 0

    return _with_store(args, job)


def _conversations(args: argparse.Namespace) -> int:
    if args.by_version:
        return _by_version(args)

    async def job(store: Any) -> int:
        phone = _phone_arg(args, args.phone) if args.phone else None
        convs = await store.conversations(phone=phone, flow=args.flow, limit=args.limit)
        if not convs and args.flow:
            _flows(args)[args.flow]  # noqa: B018 - a typo gets "did you mean", as export does
        now = time.time()
        print(f"{'id':>6}  {'phone':<16} {'flow':<12} {'step':<16} {'status':<11} last activity")
        for c in convs:
            status = "expired" if c.expired(now) else c.status.value
            print(f"{c.id:>6}  {c.phone:<16} {c.flow:<12} {c.step:<16} {status:<11}"
                  f" {_iso(c.updated_at)}")
        if not convs:
            print("(no conversations)")
        return 0

    return _with_store(args, job)


def _by_version(args: argparse.Namespace) -> int:
    flows = _flows(args)

    async def job(store: Any) -> int:
        rows = await store.versions()
        print(f"{'flow':<12} {'version':<14} {'open':>6} {'total':>7}")
        for row in rows:
            flow = flows.get(row["flow"])
            mark = " (current)" if flow and flow.version_id == row["version"] else (
                "" if flow else " (flow no longer loaded)")
            print(f"{row['flow']:<12} {row['version']:<14} {row['open']:>6} {row['total']:>7}"
                  f"{mark}")
        if not rows:
            print("(no conversations)")
        return 0

    return _with_store(args, job)


def _stats(args: argparse.Namespace) -> int:
    flows = _flows(args)

    async def job(store: Any) -> int:
        funnel = await store.funnel(args.flow)
        if not funnel["started"]:
            flows[args.flow]  # noqa: B018 - a typo gets "did you mean"
        flow = flows.get(args.flow)
        order = list(flow.steps) if flow else []
        steps = order + sorted(set(funnel["steps"]) - set(order))
        started, completed = funnel["started"], funnel["completed"]
        rate = f"{100 * completed / started:.0f}%" if started else "-"
        print(f"{args.flow}: {started} conversations started, {completed} completed ({rate})")
        columns = ("sent", "delivered", "answered", "reasked", "timed_out", "dropped")
        print(f"{'step':<16}" + "".join(f"{c.replace('_', ' '):>11}" for c in columns)
              + f"{'median answer':>15}")
        for name in steps:
            row = funnel["steps"].get(name, {})
            delays = sorted(row.get("delays", []))
            median = _duration(statistics.median(delays)) if delays else "-"
            print(f"{name:<16}" + "".join(f"{row.get(c, 0):>11}" for c in columns)
                  + f"{median:>15}")
        return 0

    return _with_store(args, job)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def _messages(args: argparse.Namespace) -> int:
    async def job(store: Any) -> int:
        phone = _phone_arg(args, args.phone)
        entries = await store.history(phone, args.limit)
        for entry in entries:
            who = "user" if entry.direction == "in" else "bot "
            text = entry.text.replace("\n", "\n" + " " * 33)
            print(f"{_iso(entry.at)}  {who}  {text}")
            print(f"{'':27}[{entry.detail}]")
        if not entries:
            print(f"(no messages with {phone})")
        return 0

    return _with_store(args, job)


def _resume(args: argparse.Namespace) -> int:
    async def job(store: Any) -> int:
        await store.set_meta("resume_sending", str(time.time()))
        print("asked the running server to resume sending; it does within a second")
        return 0

    return _with_store(args, job)


def _release(args: argparse.Namespace) -> int:
    async def job(store: Any) -> int:
        phone = _phone_arg(args, args.phone)
        conv = await store.release(phone, time.time())
        if conv is None:
            print(f"error: {phone} has no conversation waiting for a human", file=sys.stderr)
            return 1
        print(f"released conversation {conv.id} of {phone}: the bot answers again")
        return 0

    return _with_store(args, job)


def _fake_provider(args: argparse.Namespace) -> int:
    from botkit.sandbox.provider_app import run_fake_provider

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_fake_provider(args.host, args.port, args.key, http_errors=args.http_errors)
    return 0


def _warn_if_empty(flows: FlowSet, folder: str) -> None:
    if not flows:
        print(f"warning: no flows found in {folder}/: each module there that defines a"
              " Flow at module level is served (README.md, the tutorial)", file=sys.stderr)


def _phone_arg(args: argparse.Namespace, text: str) -> str:
    """A phone typed on the command line, as botkit stores it, or an error saying why not."""
    from botkit.phones import PhoneError, read_phone

    try:
        return read_phone(text, _settings(args).phone_region)
    except PhoneError as exc:
        raise BotkitError(f"{text!r}: {exc}") from None


def _count(n: int, noun: str) -> str:
    """``1 conversation``, ``2 conversations``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _iso(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _cell(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value
