"""One engine per SQLite data directory.

Two engines on one embedded store would each release the other's lane claims at start and
each open the destinations' full `max_connections`: messages sent twice, EHRs flooded. The
engine holds an exclusive `flock` on `engine.lock` in the data directory for as long as its
store is open; the kernel drops it when the process ends in any way (kill -9 included), so
a crashed engine never blocks its restart. The file names the holder for whoever is refused.

flock is only as good as the file system's locking: the data directory must be on a local
file system (not NFS or SMB). Operator commands do not take the lock: they work in short
transactions of their own beside the running engine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = "engine.lock"


class StoreInUse(RuntimeError):
    """Another engine holds the data directory."""


class DataDirLock:
    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise StoreInUse naming the holder; never waits."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreInUse(self._refusal()) from None
        except BaseException:
            os.close(fd)
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # while still held: nobody reads a holder that is gone
        os.close(fd)  # closing the last descriptor releases the lock

    def _refusal(self) -> str:
        holder = _read_holder(self.path)
        who = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, running since"
               f" {holder.get('started_at', '?')}") if holder else "a process that is starting"
        return (f"the data directory {self.path.parent} is in use by another calhl7 engine"
                f" ({who}; lock file {self.path}). Two engines on one SQLite store would take"
                " over each other's messages: stop that one first, or give this one another"
                " --data. Several engines on one store need PostgreSQL (--store"
                " postgresql://...).")


def _read_holder(path: Path) -> dict[str, object]:
    """What the holder wrote; it writes right after taking the lock, so wait a moment."""
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            text = path.read_text()
            if text.strip():
                holder = json.loads(text)
                if isinstance(holder, dict):
                    return holder
        time.sleep(0.01)
    return {}
