"""Slow clients: trickling connections do not stop valid callbacks, and
are closed after the read deadline."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the harness next to this file
from harness import SECRET, Processes  # noqa: E402

TRICKLERS = 200
DEADLINE = 2.0


@pytest.fixture
async def procs(tmp_path):
    procs = Processes(tmp_path, env={"BOTKIT_READ_DEADLINE": str(DEADLINE)})
    await procs.start_provider()
    await procs.start_server()
    yield procs
    procs.close()


async def trickle(port: int, body: bool) -> float:
    """Send a request a byte at a time (headers, or a body to the real callback URL);
    return the seconds until the server answered 4xx or hung up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    path = f"/viber/callback/{SECRET}".encode()
    head = (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
            if body else b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n")
    if body:
        writer.write(head)  # the headers at once, then a body that never finishes
    try:
        for i in range(200):
            writer.write(b"a" if body else head[i % len(head): i % len(head) + 1])
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(1024), 0.5)
            except asyncio.TimeoutError:
                continue
            if data == b"" or data.startswith(b"HTTP/1.1 4"):
                return time.monotonic() - started
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - started
    finally:
        writer.close()
    return float("inf")


async def test_trickling_connections_are_closed_and_valid_callbacks_served(procs):
    tricklers = [asyncio.create_task(trickle(procs.port, body=i % 2 == 0))
                 for i in range(TRICKLERS)]
    await asyncio.sleep(0.5)
    latencies = []
    async with aiohttp.ClientSession() as session:
        for i in range(30):
            body = {"message_token": 70_000 + i, "phone_number": f"3809800{i:05d}",
                    "time": 1, "message": {"text": "go"}}
            started = time.monotonic()
            async with session.post(procs.callback_url, json=body) as response:
                assert response.status == 200
            latencies.append(time.monotonic() - started)
    closed_after = await asyncio.gather(*tricklers)
    print(f"\n{TRICKLERS} trickling connections: closed after {min(closed_after):.1f}-"
          f"{max(closed_after):.1f}s; valid callbacks max {max(latencies) * 1000:.0f} ms")
    assert min(closed_after) >= DEADLINE - 0.5  # held until the deadline, not refused early
    assert max(closed_after) < DEADLINE + 3  # the deadline, plus the guard's 1 s tick
    assert max(latencies) < DEADLINE  # none waited for the tricklers
