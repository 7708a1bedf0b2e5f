"""A TCP forwarder on loopback that a test can cut and restore: a database link going away.

``cut()`` resets every connection through it and refuses new ones, as when a machine loses
its network and the other side notices; ``silence()`` drops what is sent either way and
leaves new connections unanswered, without a reset, as when packets are lost on the way;
``restore()`` lets connections through again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from aiohttp.test_utils import unused_port

from botkit.storage.postgres.connection import KEEPALIVES


def _as_the_server_does(writer: asyncio.StreamWriter) -> None:
    """Give up on a vanished client as botkit asks PostgreSQL to (``KEEPALIVES``): PostgreSQL
    sees the proxy, which answers for the client, so the proxy must notice for it and close
    the server's side; that ends the session and releases its locks."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, setting in ((socket.TCP_KEEPIDLE, "tcp_keepalives_idle"),
                            (socket.TCP_KEEPINTVL, "tcp_keepalives_interval"),
                            (socket.TCP_KEEPCNT, "tcp_keepalives_count"),
                            (socket.TCP_USER_TIMEOUT, "tcp_user_timeout")):
        sock.setsockopt(socket.IPPROTO_TCP, option, int(KEEPALIVES[setting]))


class Proxy:
    def __init__(self, target_host: str, target_port: int, *, listen: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listen = listen
        self.port = unused_port()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self.silent = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.listen, self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _as_the_server_does(writer)
        if self.silent:  # accepted (as a SYN that never got its answer would hang), ignored
            self._links.add(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._links |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                if not self.silent:
                    writer.write(data)
                    await writer.drain()
        self._links.discard(writer)
        writer.close()

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._links):
            writer.transport.abort()  # a reset, not a polite close
        self._links.clear()
        if server is not None:
            await server.wait_closed()

    def silence(self) -> None:
        self.silent = True

    async def restore(self) -> None:
        if self.silent:  # what went silent is broken for good, as after a real outage
            self.silent = False
            for writer in list(self._links):
                writer.transport.abort()
            self._links.clear()
            return
        await self.start()

    async def close(self) -> None:
        await self.cut()
