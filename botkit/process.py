"""This process's name, and whether a process named by another is still running.

Every process that works on a store has a name, ``host/pid/token`` (``host``: the hostname,
with the boot and the pid namespace on Linux): the store records it on
each message the process accepts and on its heartbeat, and its senders name their claims
after it. Work is taken over from a process only once it is gone: on this host, when its pid
no longer runs (at once); on a shared store, also when its heartbeat stopped (after a lease),
wherever it runs.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

__all__ = ["HEARTBEAT_LEASE", "HOST", "gone", "on_this_host", "process_name"]



def _host() -> str:
    """The host part of a name: the hostname and, on Linux, this boot of the machine and the
    pid namespace. Processes read each other's pids only when all three match: two machines
    cloned with one hostname differ in their boot, two containers sharing a hostname but not
    their pids in their namespace."""
    name = socket.gethostname().replace("/", "_")
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        return f"{name}~{boot}~{os.stat('/proc/self/ns/pid').st_ino:x}"
    except OSError:  # not Linux
        return name


HOST = _host()
# Names made before the host part carried the boot and pid namespace: the hostname alone.
_BARE_HOST = socket.gethostname().replace("/", "_")
# A process beats every few seconds; one whose last beat is older than this is gone, and
# the others take over its work.
HEARTBEAT_LEASE = 30.0
_NAMES: dict[int, str] = {}  # by pid: a forked child gets a name of its own


def process_name() -> str:
    """``host/pid/token``, the same for the whole life of this process."""
    pid = os.getpid()
    name = _NAMES.get(pid)
    if name is None:
        name = _NAMES[pid] = f"{HOST}/{pid}/{secrets.token_hex(4)}"
    return name


def on_this_host(name: str) -> bool:
    """Whether ``name`` (``host/pid/...``) is of a process on this machine, in this pid
    namespace (or of one that ran here before names carried them)."""
    return name.split("/", 1)[0] in (HOST, _BARE_HOST)


def gone(name: str | None, live: set[str] | None = None) -> bool:
    """Whether the process that ``name`` (``host/pid/...``) names has stopped, or is cut off.

    With ``live`` (the ``host/pid`` of processes whose heartbeat is fresh: a shared store),
    a process that is not among them is gone, wherever it runs: it may be alive but unable
    to reach the database, and its work must go on elsewhere. On this host, a process whose
    pid no longer runs is gone at once, without waiting for its heartbeat to age. From
    another host, without ``live``, nothing counts as gone.
    """
    if not name:
        return True
    host, pid_text = (name.split("/") + [""])[:2]
    if live is not None and f"{host}/{pid_text}" not in live:
        return True
    if not on_this_host(name):
        return False
    pid = int(pid_text) if pid_text.isdigit() else -1
    if pid == os.getpid():  # this process, or an earlier one that had its pid
        return not (name + "/").startswith(process_name() + "/")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    """A killed process whose parent has not collected it yet still answers os.kill."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # not Linux, or it is gone by now
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]
