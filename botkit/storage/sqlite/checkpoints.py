"""Checkpointer: copies the WAL into the database file from its own connection and thread.

SQLite checkpoints a WAL database by itself inside the COMMIT that takes the log past
``wal_autocheckpoint`` pages (1000 by default): that commit then also writes those pages to
the database file and fsyncs it, and every callback waiting on it waits longer (the tail of
the latency). The store's writer connection instead leaves checkpoints to this thread, which
runs a PASSIVE checkpoint every ``interval`` seconds (0.1) on a connection of its own: PASSIVE
never blocks the writer, nor waits for it. The writer keeps a high ``wal_autocheckpoint``
(``WRITER_AUTOCHECKPOINT``) as a safety net, so the log stays bounded even if this thread
falls behind.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

__all__ = ["WRITER_AUTOCHECKPOINT", "Checkpointer"]

log = logging.getLogger("botkit.store")

WRITER_AUTOCHECKPOINT = 20_000  # pages (80 MB of log) before the writer checkpoints itself


class Checkpointer:
    """A daemon thread checkpointing ``path`` every ``interval`` seconds until ``stop()``."""

    def __init__(self, path: Path, *, interval: float = 0.1) -> None:
        self.path = path
        self.interval = interval
        self.runs = 0  # checkpoints run, for tests
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="botkit-checkpoint",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the thread (after the checkpoint in progress, if any)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        # PASSIVE never waits for a lock, so the connection needs no busy timeout.
        conn = sqlite3.connect(str(self.path), isolation_level=None)
        try:
            while not self._stop.wait(self.interval):
                self.checkpoint(conn)
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        """One PASSIVE checkpoint on ``conn``: it copies what no reader still needs."""
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # a locked or vanished file: try again next time
            log.warning("checkpoint of %s failed: %s", self.path, exc)
        self.runs += 1
