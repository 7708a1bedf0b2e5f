"""The command line (``python run.py ...``): serve, start, check, export and inspect.

Every subcommand reads the same settings as the server (``BOTKIT_*`` variables and ``.env``);
flags override them. Errors print one line saying what to fix and exit non-zero.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from botkit.cli.campaigns import add_campaign_options, notify, start
from botkit.cli.copy_db import add_copy_db_arguments, copy_db
from botkit.cli.operations import check, fake_provider, release, resume, serve, status
from botkit.cli.reports import conversations, export, messages, stats
from botkit.cli.optouts import add_optout_commands
from botkit.cli.phone_data import export_phone, forget
from botkit.cli.users import add_user_commands
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


def _options() -> dict[str, argparse.ArgumentParser]:
    """The flags commands share, in groups: each command takes only the groups it reads."""
    groups = {name: argparse.ArgumentParser(add_help=False)
              for name in ("db", "bots", "templates", "provider", "address")}
    groups["db"].add_argument("--db", help="the SQLite file, or a postgresql:// URL"
                              " (BOTKIT_DB, default botkit.db)")
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
    command("serve", serve, "serve the bots (the default command)", *everything)
    p = command("start", start, "begin conversations proactively (safe to re-run)",
                *everything)
    p.add_argument("flow", help="the flow to start, e.g. survey")
    add_campaign_options(p)
    p.add_argument("--resend-uncertain", action="store_true",
                   help="send again the flow's messages a killed run may or may not have sent")
    p = command("notify", notify, "send a one-way notice (type 106/108) to phones",
                *everything)
    p.add_argument("template", help="the notice's template, e.g. support/order_shipped.txt")
    add_campaign_options(p)
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
    p = command("status", status, "ask the provider for a message's delivery status",
                "provider", "address")
    p.add_argument("message_id", type=int, help="the provider's message_id, e.g. 1004")
    command("check", check, "load every bot and template; report what to fix", "bots",
            "templates")
    p = command("export", export, "one CSV row per conversation of a flow, with its state",
                "db", "bots")
    p.add_argument("flow", help="the flow whose conversations to export")
    p.add_argument("--csv", metavar="FILE", help="write to FILE instead of standard output")
    p = command("conversations", conversations, "list conversations, most recent first",
                "db", "bots")
    p.add_argument("--phone", help="only this phone's conversations")
    p.add_argument("--flow", help="only this flow's conversations")
    p.add_argument("--limit", type=int, default=50, metavar="N",
                   help="at most N conversations (default 50)")
    p.add_argument("--by-version", action="store_true",
                   help="count conversations per flow version instead (after a deploy)")
    p = command("stats", stats, "a flow's funnel: per step sent, delivered, answered, ...",
                "db", "bots")
    p.add_argument("flow", help="the flow whose funnel to show")
    p = command("messages", messages, "a phone's last messages in and out, with their status",
                "db")
    p.add_argument("phone", help="the phone, as people write it")
    p.add_argument("--limit", type=int, default=30, metavar="N",
                   help="the last N messages (default 30)")
    command("resume", resume, "resume sending paused by a 401/402 (after fixing the cause)",
            "db")
    p = command("release", release, "give a conversation with a human back to the bot", "db")
    p.add_argument("phone", help="the phone whose conversation to release")
    p = sub.add_parser("user", help="who may log in to the operator console",
                       description="Who may log in to the operator console (/console/).")
    add_user_commands(p, o["db"])
    p = sub.add_parser("optouts", parents=[o["db"]],
                       help="the suppression list: list (count, --csv), add, remove",
                       description="The phones that opted out: nothing is sent to them"
                                   " (docs/consent.md).")
    add_optout_commands(p, o["db"])
    p = command("export-phone", export_phone, "everything kept about a phone, as JSON (and"
                " CSV): a subject-access request", "db")
    p.add_argument("phone", help="the phone, as people write it")
    p.add_argument("--out", metavar="FILE.json", help="write the JSON to FILE, not to"
                   " standard output")
    p.add_argument("--csv", metavar="DIR", help="also write one CSV file per table into DIR")
    p = command("forget", forget, "erase what is kept about a phone (its conversations and"
                " messages), in one transaction", "db")
    p.add_argument("phone", help="the phone, as people write it")
    p.add_argument("--yes", action="store_true", help="do not ask first (scripts)")
    p = command("copy-db", copy_db, "copy a database into an empty one: SQLite to PostgreSQL"
                " or back")
    add_copy_db_arguments(p)
    p = command("fake-provider", fake_provider, "run the fake provider standalone (testing)")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on (default 127.0.0.1; BOTKIT_HOST is not read)")
    p.add_argument("--port", type=int, default=9000,
                   help="the port to listen on (default 9000; BOTKIT_PORT is not read)")
    p.add_argument("--key", help="require this access key (Basic auth; default: any key)")
    p.add_argument("--http-errors", action="store_true",
                   help="answer errors under their HTTP status (default: under HTTP 200, as"
                        " the provider's SDKs expect them)")
    return parser
