"""``run.py user add|list|remove|passwd``: who may log in to the operator console."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import Any

from botkit.cli.common import iso, with_store
from botkit.console.access import ROLES
from botkit.console.passwords import hash_password, password_problem
from botkit.core.records import User
from botkit.errors import BotkitError

__all__ = ["add_user_commands"]


def add_user_commands(parser: argparse.ArgumentParser, db: argparse.ArgumentParser) -> None:
    """The ``user`` command's subcommands, on ``parser``; ``db`` holds the --db flag."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("add", parents=[db], help="add a user (asks for the password)")
    p.add_argument("name", help="the name to log in with, e.g. olga")
    p.add_argument("--role", choices=ROLES, default="agent",
                   help="agent: the inbox and conversations; admin: also the users"
                        " (default agent)")
    _password_option(p)
    p.set_defaults(run=_add)
    p = sub.add_parser("list", parents=[db], help="list the users and their roles")
    p.set_defaults(run=_list)
    p = sub.add_parser("remove", parents=[db], help="remove a user (their sessions end)")
    p.add_argument("name")
    p.set_defaults(run=_remove)
    p = sub.add_parser("passwd", parents=[db],
                       help="set a user's password (their other sessions end)")
    p.add_argument("name")
    _password_option(p)
    p.set_defaults(run=_passwd)


def _password_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from standard input (one line), for scripts")


def _add(args: argparse.Namespace) -> int:
    name = _name(args.name)
    password_hash = hash_password(_password(args))

    async def job(store: Any) -> int:
        await store.add_user(User(name=name, role=args.role, password_hash=password_hash,
                                  created_at=time.time()))
        print(f"added {args.role} {name}: they log in at /console/")
        return 0

    return with_store(args, job)


def _list(args: argparse.Namespace) -> int:
    async def job(store: Any) -> int:
        users = await store.users()
        if not users:
            print("no users yet: add one with  python run.py user add NAME --role admin")
            return 0
        width = max(len(u.name) for u in users)
        for user in users:
            print(f"{user.name:<{width}}  {user.role:<5}  added {iso(user.created_at)}")
        return 0

    return with_store(args, job)


def _remove(args: argparse.Namespace) -> int:
    async def job(store: Any) -> int:
        if not await store.remove_user(args.name):
            return _no_user(args.name)
        print(f"removed {args.name}: their sessions end at their next request")
        return 0

    return with_store(args, job)


def _passwd(args: argparse.Namespace) -> int:
    password_hash = hash_password(_password(args))

    async def job(store: Any) -> int:
        if not await store.set_password(args.name, password_hash):
            return _no_user(args.name)
        print(f"changed the password of {args.name}: their other sessions end")
        return 0

    return with_store(args, job)


def _no_user(name: str) -> int:
    print(f"error: there is no user {name!r} (see: python run.py user list)", file=sys.stderr)
    return 1


def _name(name: str) -> str:
    if not (1 <= len(name) <= 64) or not all(c.isalnum() or c in "._-@" for c in name):
        raise BotkitError(f"{name!r} is not a user name: use 1-64 letters, digits, '.', '_',"
                          " '-' or '@'")
    return name


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise BotkitError("no terminal to ask for the password: pass --password-stdin"
                              " and write it to standard input")
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise BotkitError("the two passwords differ; nothing was changed")
    problem = password_problem(password)
    if problem is not None:
        raise BotkitError(f"{problem}; nothing was changed")
    return password
