"""The core of the SQLite store: the connection, the writer thread and its group commit.

One SQLite file in the data directory, WAL, synchronous=FULL. All work runs on one dedicated
thread that owns the connection. Calls queue up while a transaction is being committed, and
the next transaction takes every queued call at once: one fsync acknowledges a whole group of
webhooks (group commit). Each call runs inside its own SAVEPOINT (or is one statement), so one
failing call never takes the others of its group down with it.

The writer shares the GIL with the event loop, and every statement step releases it and waits
to take it back: the hot paths (a processed batch, a claim, a group of deliveries) therefore
run a fixed number of statements per batch, each binding all its rows at once.

The roles (intake, processing, delivery, inbound, operator) are mixins over this core, one
module each; `SQLiteStore` (this package's __init__) is all of them.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from engine.store.lock import DataDirLock
from engine.store.migrations import load_migrations
from engine.store.sqlite_version import sqlite_problem

T = TypeVar("T")
_MAX_GROUP = 512  # calls per transaction; bounds the latency of the first one in a group
_STOP = object()


class SQLiteCore:
    def __init__(self, path: str | Path, *, exclusive: bool = False) -> None:
        self.path = Path(path)
        # the engine's store: one per data directory (see store/lock.py); operators share it
        self._lock = DataDirLock(self.path.parent) if exclusive else None
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        # reads run on their own connection and thread (WAL: readers never wait for the
        # writer), so the processor can read its next batch while the last one commits
        self._reader: ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None
        # destination -> slot -> (owner, lease until); see acquire_slot
        self._slots: dict[str, dict[int, tuple[str, float]]] = {}

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        problem = sqlite_problem()
        if problem:
            raise RuntimeError(problem)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._lock is not None:
            self._lock.acquire()  # raises StoreInUse, naming the engine that holds it
        try:
            # the batch statements vary in their number of rows: keep their plans
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   cached_statements=512)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a 2xx is only sent after the fsync
            conn.execute("PRAGMA busy_timeout=10000")  # operator CLIs write from other processes
            conn.execute("PRAGMA foreign_keys=ON")
            _migrate(conn)
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise
        self._conn = conn
        self._read_conn = sqlite3.connect(self.path, isolation_level=None,
                                          check_same_thread=False)
        self._read_conn.execute("PRAGMA busy_timeout=10000")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-read")
        self._thread = threading.Thread(target=self._run, name="sqlite-store", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread is None:
            return
        self._calls.put(_STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None
        assert self._conn is not None and self._reader is not None
        self._reader.shutdown(wait=True)
        assert self._read_conn is not None
        self._read_conn.close()
        self._conn.close()
        if self._lock is not None:
            self._lock.release()

    # ------------------------------------------------------------------ the writer thread
    async def _call(self, fn: Callable[[sqlite3.Connection], T], urgent: bool = False,
                    one_write: bool = False) -> T:
        """Run `fn` on the writer thread inside the next transaction. `urgent` calls (someone
        is waiting on the wire: a webhook, an MLLP sender) commit ahead of the rest of their
        group, so a big processing commit never stands between a webhook and its 2xx.

        Each call runs in its own savepoint, except a `one_write` call: it changes the store
        with one statement, which SQLite undoes alone if it fails (or, for a full disk or an
        I/O error, undoes the whole transaction: then the whole group fails). Every statement on
        the writer gives the GIL away and waits to get it back, so two steps fewer per webhook
        count while webhooks arrive."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._calls.put((fn, fut, loop, urgent, one_write))
        return await fut

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read on the reader connection: sees what is committed, never waits for a commit."""
        conn = self._read_conn
        assert conn is not None and self._reader is not None

        def run() -> T:
            conn.execute("BEGIN")  # one snapshot for the whole read
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

        return await asyncio.get_running_loop().run_in_executor(self._reader, run)

    def _run(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            first = self._calls.get()
            if first is _STOP:
                return
            group = [first]
            while len(group) < _MAX_GROUP:
                try:
                    item = self._calls.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._calls.put(_STOP)
                    break
                group.append(item)
            urgent = [(fn, fut, loop, one) for fn, fut, loop, u, one in group if u]
            rest = [(fn, fut, loop, one) for fn, fut, loop, u, one in group if not u]
            for part in (urgent, rest):
                if part:
                    self._run_group(conn, part)

    @staticmethod
    def _run_group(conn: sqlite3.Connection, group: list[Any]) -> None:
        results: list[tuple[asyncio.Future[Any], asyncio.AbstractEventLoop, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, fut, loop, one_write in group:
                if not one_write:
                    conn.execute("SAVEPOINT call")
                try:
                    value = fn(conn)
                except Exception as exc:  # noqa: BLE001 - handed to the caller
                    if not conn.in_transaction:  # SQLite rolled it all back (disk full...):
                        raise  # the whole group fails, and nothing after it runs alone
                    if not one_write:
                        conn.execute("ROLLBACK TO call")
                        conn.execute("RELEASE call")
                    results.append((fut, loop, False, exc))
                else:
                    if not one_write:
                        conn.execute("RELEASE call")
                    results.append((fut, loop, True, value))
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - the commit failed: nobody got anything
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            results = [(fut, loop, False, exc) for fn, fut, loop, _ in group]
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for fut, loop, ok, value in results:
            by_loop.setdefault(loop, []).append((fut, ok, value))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # that loop is closed: its callers are gone
                pass

def _settle(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in items:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
    done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    # foreign keys off while migrating, so a migration may rebuild a referenced table (SQLite
    # cannot drop a UNIQUE clause); they are checked before each commit instead
    conn.execute("PRAGMA foreign_keys=OFF")
    try:
        for version, sql in load_migrations("sqlite"):
            if version in done:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(sql):
                    conn.execute(statement)
                if conn.execute("PRAGMA foreign_key_check").fetchone() is not None:
                    raise RuntimeError(f"store migration {version} breaks a foreign key")
                conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise
    finally:
        conn.execute("PRAGMA foreign_keys=ON")


def _statements(sql: str) -> list[str]:
    """Split a migration into statements (ours never put ';' inside a literal)."""
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]

