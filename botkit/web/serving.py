"""Serving the app as a process: the port bound before anything is said, the signals, and the
order of a stop (``run.py serve``).

``listen`` binds first, so a taken port is said before the banner. ``serve`` runs the app
until SIGINT or SIGTERM; a first signal stops taking work and lets what is in progress
finish, a second one exits at once, saying what that may cost.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import logging
import os
import signal
import socket

from aiohttp import web

from botkit.console.app import ANNOUNCE, PREFIX, standalone
from botkit.errors import ConfigError
from botkit.runtime.assembly import Bot
from botkit.web.guard import GUARD
from botkit.web.metrics import metrics_handler
from botkit.web.server import CONSOLE, RUNTIME

__all__ = ["listen", "serve"]

log = logging.getLogger("botkit.server")


def listen(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port`` before anything is announced, or say what to do.

    >>> sock = listen("127.0.0.1", 8080)  # ConfigError when another server has the port
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host or '0.0.0.0'} is already in use: another botkit (or"
                " another program) may be running there. Stop it, or choose another port"
                " with --port N or BOTKIT_PORT=N") from exc
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"cannot listen on {host}: it is not an address of this"
                              " machine; set --host or BOTKIT_HOST to one that is") from exc
        raise


def serve(
    app: web.Application, sock: socket.socket, *, shutdown_timeout: float = 15.0,
    loop: str = "auto",
) -> None:
    """Serve ``app`` on ``sock`` (from ``listen``) until SIGINT or SIGTERM, closing slow
    clients (``run.py serve``).

    Like ``web.run_app``, plus the SlowClientGuard watching the server's connections.
    ``loop`` (``BOTKIT_LOOP``): ``uvloop`` (a dependency where it builds: Linux and macOS),
    ``asyncio`` (the standard library's loop), or ``auto``, uvloop when it is installed.
    """
    uvloop = None
    if loop != "asyncio":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError as exc:
            if loop == "uvloop":
                raise ConfigError("BOTKIT_LOOP=uvloop, but uvloop is not installed:"
                                  " pip install uvloop, or BOTKIT_LOOP=auto") from exc
    log.info("event loop: %s", "uvloop" if uvloop is not None else "asyncio")
    if uvloop is None:
        asyncio.run(_serve(app, sock, shutdown_timeout))
    else:
        uvloop.run(_serve(app, sock, shutdown_timeout))


async def _serve(app: web.Application, sock: socket.socket, shutdown_timeout: float) -> None:
    # Signals only set an event: the shutdown then runs in order (stop taking turns, finish
    # the sends in flight, close the store) instead of cancelling every task at once.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # No access log: the engine logs one line per message with what happened to it.
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None)
    await runner.setup()
    watch, console = None, None
    try:
        await web.SockSite(runner, sock).start()
        assert runner.server is not None
        watch = asyncio.create_task(app[GUARD].watch(runner.server), name="botkit-guard")
        rt = app[RUNTIME].bot
        # Printed once for the operator (not logged): the URL to give the provider.
        print(f"provider callbacks go to {rt.callback_url}", flush=True)
        console, console_url = await _start_console(app, sock)
        if console_url is not None:
            print(f"operator console at {console_url}/", flush=True)
            for path in app[CONSOLE][ANNOUNCE]:
                print(f"log in to the console as the sandbox's admin (once): "
                      f"{console_url.rsplit(PREFIX, 1)[0]}{path}", flush=True)
        await stop.wait()
        log.info("stopping: %s (Ctrl+C again to stop at once)", _in_progress(rt) or "nothing"
                 " in progress")
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second signal: stop now
            loop.add_signal_handler(signum, _stop_now, rt)
    finally:
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        if console is not None:
            await console.cleanup()
        await runner.cleanup()


async def _start_console(
    app: web.Application, sock: socket.socket
) -> tuple[web.AppRunner | None, str | None]:
    """Start the console where ``BOTKIT_CONSOLE`` puts it; its runner (when it has an
    address of its own) and its URL (None when it is off)."""
    settings = app[RUNTIME].bot.settings
    if settings.console == "off":
        return None, None
    address = settings.console_address
    if address is None:
        host, port = sock.getsockname()[:2]
        return None, f"http://{_shown(host)}:{port}{PREFIX}"
    console_sock = listen(*address)
    metrics = metrics_handler(lambda: app[RUNTIME].bot)
    runner = web.AppRunner(standalone(app[CONSOLE], metrics), access_log=None)
    await runner.setup()
    await web.SockSite(runner, console_sock).start()
    host, port = console_sock.getsockname()[:2]
    return runner, f"http://{_shown(host)}:{port}{PREFIX}"


def _shown(host: str) -> str:
    """An address as a browser on this machine reaches it."""
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _in_progress(rt: Bot) -> str:
    """What a graceful stop waits for, in words ("" when nothing)."""
    turns, sends = rt.dispatcher.busy, rt.sender.status()["in_flight"]
    parts = [f"{n} {what}" for n, what in ((turns, "messages being handled"),
                                           (sends, "sends in flight")) if n]
    return "finishing " + " and ".join(parts) if parts else ""


def _stop_now(rt: Bot) -> None:
    """The second Ctrl+C: exit at once. Everything accepted is already committed, so this is
    a crash botkit recovers from at the next start (docs/design.md, "Durability")."""
    turns, sends = rt.dispatcher.busy, rt.sender.status()["in_flight"]
    log.warning("stopping at once: %d sends in flight may reach their users twice, and %d"
                " messages being handled are handled at the next start", sends, turns)
    logging.shutdown()
    os._exit(130)
