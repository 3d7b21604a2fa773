"""The core of the PostgreSQL store: the connection pool, transactions, migrations.

Why asyncpg: it is the fastest asyncio driver for PostgreSQL. It speaks the binary protocol,
caches a prepared statement per query and connection, pipelines `executemany` in one round
trip, and brings its own connection pool, so the store needs neither a thread pool nor a
pooling library. It passes a URL's `options=-csearch_path=X` to the server at connection
start-up by itself (unknown query parameters become server settings), which is how the tests
give every test a schema of its own; `open()` checks which schema that resolved to.

The roles (intake, processing, delivery, cluster, inbound, operator) are mixins over this
core, one module each; `PostgresStore` (this package's __init__) is all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg

from engine.store.migrations import load_migrations
from engine.store.records import AcceptResult, IncomingWebhook

log = logging.getLogger("calhl7.store")

T = TypeVar("T")
TX_ATTEMPTS = 5
RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
CONNECTION_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class PostgresCore:
    def __init__(self, url: str, *, min_connections: int = 1, max_connections: int = 10) -> None:
        self.url = url
        self.schema: str | None = None
        self._min = min_connections
        self._max = max_connections
        self._pool: asyncpg.Pool | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # intake group commit
        self._intake: list[tuple[IncomingWebhook, asyncio.Future[AcceptResult]]] = []
        self._flushes = 0
        # LISTEN
        self._listeners: list[Callable[[str], None]] = []
        self._listen_conn: asyncpg.Connection | None = None
        self._listen_lock = asyncio.Lock()
        # processing leadership
        self._lead_conn: asyncpg.Connection | None = None
        self._lead_lock = asyncio.Lock()
        self._leading = False
        self._lead_key = 0
        self._slot_rows: dict[str, int] = {}  # destination -> slots known to exist

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        conn = await self._connect("calhl7-migrate")
        try:
            schema = await conn.fetchval("SELECT current_schema()")
            if schema is None:
                raise RuntimeError("no schema of the search_path exists in this database")
            self.schema = schema
            await migrate(conn, lock_key("migrate", schema))
        finally:
            await conn.close()
        self._lead_key = lock_key("lead", schema)
        self._closing = False
        self._pool = await asyncpg.create_pool(
            self.url, min_size=self._min, max_size=self._max, command_timeout=60,
            server_settings=self._settings("calhl7"), reset=_keep_session,
        )

    async def close(self) -> None:
        if self._pool is None:
            return
        self._closing = True
        while self._tasks:  # intake flushes in flight finish; reconnect loops stop
            for task in list(self._tasks):
                if task.get_name() == "calhl7-relisten":
                    task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in (self._listen_conn, self._lead_conn):
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await conn.close(timeout=5)
        self._listen_conn = self._lead_conn = None
        self._leading = False
        pool, self._pool = self._pool, None
        try:
            await asyncio.wait_for(pool.close(), timeout=10)
        except TimeoutError:
            pool.terminate()

    def _settings(self, application_name: str) -> dict[str, str]:
        """Name our sessions for pg_stat_activity, unless the URL names them already."""
        if "application_name" in parse_qs(urlsplit(self.url).query):
            return {}
        return {"application_name": application_name}

    async def _connect(self, application_name: str) -> asyncpg.Connection:
        settings = self._settings(application_name)
        # the server drops a vanished node's session (and so its leadership lock) within
        # ~25 s instead of the kernel's two hours; a merely paused process keeps it: see README
        settings.update(tcp_keepalives_idle="10", tcp_keepalives_interval="5",
                        tcp_keepalives_count="3")
        return await asyncpg.connect(self.url, timeout=10, server_settings=settings)

    def _p(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        return self._pool

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tx(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `fn` in one transaction; a deadlock or serialization failure runs it again."""
        for attempt in range(1, TX_ATTEMPTS + 1):
            try:
                async with self._p().acquire() as conn, conn.transaction():
                    return await fn(conn)
            except RETRYABLE:
                if attempt == TX_ATTEMPTS:
                    raise
                await asyncio.sleep(random.uniform(0.002, 0.02) * attempt)
        raise AssertionError("unreachable")



async def _keep_session(_conn: asyncpg.Connection) -> None:
    """A pooled connection goes back as it is: the pool's default reset (unlock advisory
    locks, UNLISTEN, RESET ALL) costs a round trip at every release, and ours never set any
    of those (leadership and LISTEN have connections of their own). asyncpg still rolls back
    a transaction left open."""


def rowcount(status: str) -> int:
    """asyncpg's command tag ('UPDATE 1') -> rows affected."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except (ValueError, AttributeError):
        return 0


def lock_key(purpose: str, schema: str) -> int:
    """A 64-bit advisory lock key per purpose and schema (several schemas share a database)."""
    digest = hashlib.blake2b(f"calhl7:{purpose}:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def migrate(conn: asyncpg.Connection, key: int) -> None:
    """Apply the numbered migrations not applied yet, all in one transaction, under an
    advisory lock: nodes starting at the same moment wait for each other."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", key)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, sql in load_migrations("postgres"):
            if version in done:
                continue
            await conn.execute(sql)  # no arguments: the simple protocol runs every statement
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            log.info("store migration applied", extra={"version": version})


