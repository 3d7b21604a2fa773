"""The shared store: several engine nodes on one PostgreSQL database.

Why asyncpg: it is the fastest asyncio driver for PostgreSQL. It speaks the binary protocol,
caches a prepared statement per query and connection, pipelines `executemany` in one round
trip, and brings its own connection pool, so the store needs neither a thread pool nor a
pooling library. It passes a URL's `options=-csearch_path=X` to the server at connection
start-up by itself (unknown query parameters become server settings), which is how the tests
give every test a schema of its own; `open()` checks which schema that resolved to.

Same semantics as the SQLite store (tests/test_store.py runs on both); what several nodes add:
- intake group commit: concurrent `accept_webhook` calls queue up while a flush is in
  flight and the next flush stores all of them in one statement (one commit, one round trip);
  identical bodies from two nodes at once leave one row, the second sees a duplicate; a
  statement that lost its connection is tried again (it is idempotent: Cal.com never retries);
- lanes are claimed with `FOR UPDATE SKIP LOCKED` and a lease; the lane's fence is bumped at
  every claim and an outcome only counts while its fence is current (a node whose lease
  lapsed decides nothing); every statement that changes a lane locks its row first;
  `record_attempts` is one round trip (calhl7_record_attempt in sql/postgres/0001_initial.sql);
- a destination's connection limit holds for the cluster (`destination_slots`, leased);
- `commit_processed` NOTIFYs `calhl7_outbound` with each destination that got messages, and
  `listen()` relays those on a dedicated connection;
- `try_lead()` holds a session advisory lock on a dedicated connection, so only one node
  normalizes at a time (appointment precedence holds across nodes);
- `commit_processed` only marks events that are still pending and fails whole otherwise
  (`NotPending`): a node whose lead lapsed mid-batch cannot queue a second set of messages;
- migrations run under `pg_advisory_xact_lock`, so nodes may start at the same moment;
- nothing releases other nodes' claims at start (there is no `release_all_claims`): the
  leases of a dead node expire and its lanes are taken over.

PostgreSQL text cannot hold NUL characters, which JSON may carry ("\\u0000"): text values are
stored with NUL replaced by U+FFFD, the same way on writes and lookups, so nothing is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg

from engine.store import base, requeue
from engine.store.base import (
    AcceptResult,
    AttemptRecord,
    IncomingWebhook,
    NewMessage,
    ProcessedEvent,
    QueuedMessage,
    StoredEvent,
)
from engine.store.migrations import load_migrations
from engine.store.postgres_common import (
    AUDIT_INSERT_MANY,
    audit_operator,
    pg_json,
    pg_text,
)
from engine.store.postgres_inbound import PostgresInboundMixin

log = logging.getLogger("calhl7.store")

T = TypeVar("T")
NOTIFY_CHANNEL = "calhl7_outbound"
_MAX_GROUP = 512  # webhooks per intake statement
_INTAKE_FLUSHES = 1  # intake statements in flight at once (more calls wait and group up)
_TX_ATTEMPTS = 5
_RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
# a batch failing on one bad row: store the others one by one, fail only that one
_ROW_ERRORS = (asyncpg.exceptions.DataError, asyncpg.exceptions.IntegrityConstraintViolationError)
_CONNECTION_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
# the server went away (restart, failover, a killed session): worth another try on a fresh
# connection (asyncpg may report a session killed just before use as an internal client error)
_LOST = (OSError, asyncpg.exceptions.PostgresConnectionError,
         asyncpg.exceptions.OperatorInterventionError, asyncpg.InterfaceError,
         asyncpg.exceptions.InternalClientError)
_INTAKE_ATTEMPTS = 3  # Cal.com never retries: a webhook we fail to store is lost


# commit_processed for an event that is no longer pending: another node processed it (its
# leadership lapsed while it worked, or ours did). Nothing of the batch is kept.
NotPending = base.NotPending


_ACCEPT = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::text[], $5::text[],
                         $6::text[], $7::float8[], $8::text[], $9::text[], $10::text[])
        AS t (source, body_sha256, body, content_type, trigger, booking_uid, received_at,
              correlation_id, state, reason)
), inserted AS (
    INSERT INTO received_events (source, body_sha256, body, content_type, trigger, booking_uid,
                                 received_at, correlation_id, state, reason)
    SELECT * FROM input
    ON CONFLICT (source, body_sha256) DO NOTHING
    RETURNING id, source, body_sha256, state
)
SELECT id, source, body_sha256, state, TRUE AS inserted FROM inserted
UNION ALL
SELECT e.id, e.source, e.body_sha256, e.state, $11::bool AND e.correlation_id = i.correlation_id
FROM received_events e JOIN input i ON e.source = i.source AND e.body_sha256 = i.body_sha256
"""
# ($11: a retry after a lost reply, where a row with our correlation id is our own)
# rows committed by another node after the statement above started are invisible to it:
# the few keys it returned nothing for are simply asked again by the next statement

_CLAIM = """
WITH picked AS (
    SELECT l.id
    FROM lanes l JOIN outbound o ON o.id = l.head_id
    WHERE l.destination = $1 AND l.head_id IS NOT NULL AND NOT l.held AND l.ready_at <= $2
      AND (l.lease_until IS NULL OR l.lease_until < $2)
      AND NOT EXISTS (SELECT 1 FROM paused_channels p WHERE p.channel = o.channel)
    ORDER BY l.ready_at
    LIMIT $3
    FOR UPDATE OF l SKIP LOCKED
), claimed AS (
    UPDATE lanes l SET owner = $4, lease_until = $2::float8 + $5::float8, fence = l.fence + 1
    FROM picked WHERE l.id = picked.id
    RETURNING l.id, l.fence, l.head_id, l.ready_at
), bumped AS (
    UPDATE outbound o SET claims = o.claims + 1
    FROM claimed c WHERE o.id = c.head_id
    RETURNING o.id, o.lane_id, o.channel, o.appointment_id, o.message_type, o.control_id,
              o.payload, o.attempts, o.accepted_at, o.correlation_id, o.claims
)
SELECT b.id, b.lane_id, b.channel, b.appointment_id, b.message_type, b.control_id, b.payload,
       b.attempts, b.accepted_at, b.correlation_id, c.fence, b.claims
FROM bumped b JOIN claimed c ON c.id = b.lane_id
ORDER BY c.ready_at, c.id
"""

_RECORD = (
    "SELECT calhl7_record_attempt($1::bigint, $2::bigint, $3::bigint, $4::text, $5::float8,"
    " $6::bytea, $7::text, $8::text, $9::float8, $10::bool, $11::text)"
)


class PostgresStore(PostgresInboundMixin):
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
            await _migrate(conn, _lock_key("migrate", schema))
        finally:
            await conn.close()
        self._lead_key = _lock_key("lead", schema)
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
                with contextlib.suppress(*_CONNECTION_ERRORS):
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
        for attempt in range(1, _TX_ATTEMPTS + 1):
            try:
                async with self._p().acquire() as conn, conn.transaction():
                    return await fn(conn)
            except _RETRYABLE:
                if attempt == _TX_ATTEMPTS:
                    raise
                await asyncio.sleep(random.uniform(0.002, 0.02) * attempt)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ intake
    async def accept_webhook(self, webhook: IncomingWebhook) -> AcceptResult:
        self._p()
        fut: asyncio.Future[AcceptResult] = asyncio.get_running_loop().create_future()
        self._intake.append((webhook, fut))
        if self._flushes < _INTAKE_FLUSHES:
            self._flushes += 1
            self._spawn(self._drain_intake(), "calhl7-intake")
        return await fut

    async def _drain_intake(self) -> None:
        try:
            while self._intake:
                batch = self._intake[:_MAX_GROUP]
                del self._intake[:_MAX_GROUP]
                await self._flush_intake(batch)
        finally:
            self._flushes -= 1

    async def _flush_intake(
        self, batch: list[tuple[IncomingWebhook, asyncio.Future[AcceptResult]]]
    ) -> None:
        try:
            for attempt in range(1, _INTAKE_ATTEMPTS + 1):
                try:  # idempotent (unique hash), so a lost connection is simply tried again
                    results = await self._insert_events([w for w, _ in batch], attempt > 1)
                    break
                except _LOST:
                    if attempt == _INTAKE_ATTEMPTS or self._pool is None:
                        raise
                    await asyncio.sleep(0.05 * attempt)
        except Exception as exc:  # noqa: BLE001 - handed to the callers
            if len(batch) > 1 and isinstance(exc, _ROW_ERRORS):
                for item in batch:  # one row cannot be stored: the others still are
                    await self._flush_intake([item])
                return
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    async def _insert_events(
        self, webhooks: list[IncomingWebhook], retry: bool = False
    ) -> list[AcceptResult]:
        first: dict[tuple[str, bytes], int] = {}
        keys = []
        for i, w in enumerate(webhooks):
            key = (pg_text(w.source), bytes(w.body_sha256))
            keys.append(key)
            first.setdefault(key, i)
        found: dict[tuple[str, bytes], tuple[int, str, bool]] = {}
        todo = [webhooks[i] for i in first.values()]
        for _ in range(5):
            columns = list(zip(*(
                (pg_text(w.source), w.body_sha256, w.body, pg_text(w.content_type),
                 pg_text(w.trigger), pg_text(w.booking_uid), w.received_at,
                 pg_text(w.correlation_id), w.state, pg_text(w.reason))
                for w in todo
            ), strict=True))
            for r in await self._p().fetch(_ACCEPT, *columns, retry):
                found[(r["source"], bytes(r["body_sha256"]))] = (r["id"], r["state"],
                                                                 r["inserted"])
            todo = [w for w in todo if (pg_text(w.source), bytes(w.body_sha256)) not in found]
            if not todo:
                break
        else:
            raise RuntimeError("received event neither inserted nor found")
        out = []
        for i, key in enumerate(keys):
            event_id, state, inserted = found[key]
            out.append(AcceptResult(event_id, not (inserted and first[key] == i), state))
        return out

    # ------------------------------------------------------------------ processing
    async def pending_events(self, limit: int, after_id: int = 0) -> list[StoredEvent]:
        return await self.events(base.PENDING, limit, after_id)

    async def events(self, state: str, limit: int, after_id: int = 0) -> list[StoredEvent]:
        rows = await self._p().fetch(
            "SELECT id, source, body, content_type, trigger, booking_uid, received_at,"
            " correlation_id, state, reason FROM received_events WHERE state = $1"
            " AND id > $3 ORDER BY id LIMIT $2",
            state, limit, after_id,
        )
        return [StoredEvent(*r) for r in rows]

    async def appointment_states(self, uids: list[str]) -> dict[str, str]:
        wanted = {pg_text(u): u for u in set(uids)}
        rows = await self._p().fetch(
            "SELECT b.uid, a.state FROM booking_uids b"
            " JOIN appointments a ON a.appointment_id = b.appointment_id"
            " WHERE b.uid = ANY($1::text[])",
            list(wanted),
        )
        return {wanted[r["uid"]]: r["state"] for r in rows}

    async def destinations_holding(self, appointment_ids: list[str]) -> set[tuple[str, str]]:
        wanted = {pg_text(a): a for a in set(appointment_ids)}
        rows = await self._p().fetch(
            "SELECT destination, appointment_id FROM destination_appointments"
            " WHERE appointment_id = ANY($1::text[])",
            list(wanted),
        )
        return {(r["destination"], wanted[r["appointment_id"]]) for r in rows}

    def batch_reader(self) -> None:
        return None  # the engine reads: a helper would need a connection pool of its own

    async def commit_processed(self, results: list[ProcessedEvent]) -> None:
        if not results:
            return

        marks = {r.event_id: (r.state, pg_text(r.reason)) for r in results}

        async def fn(conn: asyncpg.Connection) -> None:
            now = time.time()
            # only pending events: a second node processing the same batch (its lead
            # lapsed while it worked) fails here instead of queuing every message twice
            status = await conn.execute(
                "UPDATE received_events e SET state = t.state, reason = t.reason,"
                " processed_at = $4"
                " FROM unnest($1::bigint[], $2::text[], $3::text[]) AS t (id, state, reason)"
                " WHERE e.id = t.id AND e.state = 'pending'",
                list(marks), [m[0] for m in marks.values()], [m[1] for m in marks.values()], now,
            )
            if _rowcount(status) != len(marks):
                raise NotPending(f"{len(marks) - _rowcount(status)} of {len(marks)} events"
                                 " were no longer pending")
            # one statement per table, each row once: within a batch a later state of an
            # appointment wins, and a booking uid keeps the first appointment it was linked to
            states = {pg_text(r.appointment_id): pg_text(r.appointment_state) for r in results
                      if r.appointment_id and r.appointment_state is not None}
            if states:
                await conn.execute(
                    "INSERT INTO appointments (appointment_id, state, updated_at)"
                    " SELECT a, s, $3 FROM unnest($1::text[], $2::text[]) AS t (a, s)"
                    " ON CONFLICT (appointment_id) DO UPDATE"
                    " SET state = excluded.state, updated_at = excluded.updated_at",
                    list(states), list(states.values()), now,
                )
            links: dict[str, str] = {}
            for r in results:
                for uid, appointment in r.uid_links.items():
                    links.setdefault(pg_text(uid), pg_text(appointment))
            if links:
                await conn.execute(
                    "INSERT INTO booking_uids (uid, appointment_id)"
                    " SELECT * FROM unnest($1::text[], $2::text[])"
                    " ON CONFLICT (uid) DO NOTHING",
                    list(links), list(links.values()),
                )
            if any(r.messages for r in results):
                await _enqueue(conn, results, now)
            audit = [_audit_row(a) for r in results for a in r.audit]
            if audit:
                await conn.execute(AUDIT_INSERT_MANY, *_columns(audit, 7))
            wake = sorted({pg_text(m.destination) for r in results for m in r.messages
                           if not m.error})
            if wake:  # delivered to listeners when this transaction commits
                await conn.execute(
                    "SELECT pg_notify($1, d) FROM unnest($2::text[]) AS d", NOTIFY_CHANNEL, wake
                )

        await self._tx(fn)

    # ------------------------------------------------------------------ delivery
    async def claim_lane_heads(
        self, destination: str, limit: int, owner: str, lease_seconds: float, now: float
    ) -> list[QueuedMessage]:
        rows = await self._p().fetch(
            _CLAIM, pg_text(destination), now, limit, pg_text(owner), lease_seconds
        )
        return [
            QueuedMessage(
                r["id"], r["lane_id"], destination, r["channel"], r["appointment_id"],
                r["message_type"], r["control_id"], r["payload"], r["attempts"],
                r["accepted_at"], r["correlation_id"], r["fence"], r["claims"],
            )
            for r in rows
        ]

    async def record_attempts(self, records: list[AttemptRecord]) -> None:
        """One round trip, one transaction: a call of calhl7_record_attempt (sql/postgres) per
        record, pipelined, lanes locked in id order (a lane's records keep their order)."""
        if not records:
            return
        rows = [
            (r.message_id, r.lane_id, r.fence, r.outcome, r.at, r.ack, pg_text(r.ack_code),
             pg_text(r.detail), r.next_attempt_at or r.at, r.hold_lane, pg_text(r.control_id))
            for r in sorted(records, key=lambda r: r.lane_id)
        ]
        for attempt in range(1, _TX_ATTEMPTS + 1):
            try:
                async with self._p().acquire() as conn:
                    await conn.executemany(_RECORD, rows)  # atomic: all or nothing
                return
            except _RETRYABLE:
                if attempt == _TX_ATTEMPTS:
                    raise
                await asyncio.sleep(random.uniform(0.002, 0.02) * attempt)

    async def next_ready_at(self, destination: str) -> float | None:
        return await self._p().fetchval(
            # when a lane can next be claimed: not before its back-off, nor its lease
            "SELECT MIN(GREATEST(l.ready_at, COALESCE(l.lease_until, 0))) FROM lanes l"
            " JOIN outbound o ON o.id = l.head_id"
            " WHERE l.destination = $1 AND l.head_id IS NOT NULL AND NOT l.held"
            " AND o.channel NOT IN (SELECT channel FROM paused_channels)",
            pg_text(destination),
        )

    async def release_claims(self, owner: str) -> None:
        # a claim given back went unsent: it no longer counts as "maybe sent before" (a claim
        # that lapses, when a node dies, still does)
        await self._p().execute(
            "WITH released AS (UPDATE lanes SET owner = NULL, lease_until = NULL"
            " WHERE owner = $1 RETURNING head_id)"
            " UPDATE outbound o SET claims = o.claims - 1 FROM released r"
            " WHERE o.id = r.head_id",
            pg_text(owner),
        )

    # ------------------------------------------------------------------ cluster
    async def acquire_slot(
        self, destination: str, max_slots: int, owner: str, lease_seconds: float, now: float
    ) -> int | None:
        """One of a destination's `max_slots` connection slots for `owner`, or None if all
        are held by live leases. An owner that already holds one gets it back, renewed."""
        if max_slots <= 0:
            return None
        destination, owner = pg_text(destination), pg_text(owner)
        if self._slot_rows.get(destination, 0) < max_slots:
            await self._p().execute(
                "INSERT INTO destination_slots (destination, slot)"
                " SELECT $1, s FROM generate_series(0, $2 - 1) AS s ON CONFLICT DO NOTHING",
                destination, max_slots,
            )
            self._slot_rows[destination] = max_slots
        return await self._p().fetchval(
            "WITH pick AS ("
            "  SELECT slot FROM destination_slots"
            "  WHERE destination = $1 AND slot < $2"
            "    AND (owner = $3 OR owner IS NULL OR lease_until < $5::float8)"
            "  ORDER BY owner IS NOT DISTINCT FROM $3 DESC, slot"
            "  LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " UPDATE destination_slots d SET owner = $3, lease_until = $5::float8 + $4::float8"
            " FROM pick WHERE d.destination = $1 AND d.slot = pick.slot RETURNING d.slot",
            destination, max_slots, owner, lease_seconds, now,
        )

    async def renew_slot(
        self, destination: str, slot: int, owner: str, lease_seconds: float, now: float
    ) -> bool:
        """Extend the lease; False when the slot is no longer ours (taken over after expiry)."""
        status = await self._p().execute(
            "UPDATE destination_slots SET lease_until = $4::float8 + $5::float8"
            " WHERE destination = $1 AND slot = $2 AND owner = $3",
            pg_text(destination), slot, pg_text(owner), now, lease_seconds,
        )
        return _rowcount(status) == 1

    async def release_slot(self, destination: str, slot: int, owner: str) -> None:
        await self._p().execute(
            "UPDATE destination_slots SET owner = NULL, lease_until = NULL"
            " WHERE destination = $1 AND slot = $2 AND owner = $3",
            pg_text(destination), slot, pg_text(owner),
        )

    async def heartbeat(self, node_id: str, now: float) -> None:
        """This node is alive (operators see the cluster in `nodes()`)."""
        await self._p().execute(
            "INSERT INTO nodes (node_id, started_at, last_seen) VALUES ($1, $2, $2)"
            " ON CONFLICT (node_id) DO UPDATE SET last_seen = excluded.last_seen",
            pg_text(node_id), now,
        )

    async def nodes(self) -> list[dict[str, Any]]:
        rows = await self._p().fetch(
            "SELECT node_id, started_at, last_seen FROM nodes ORDER BY node_id"
        )
        return [dict(r) for r in rows]

    async def listen(self, callback: Callable[[str], None]) -> None:
        """Call `callback(destination)` whenever a node queued messages for a destination.

        Returns once LISTEN is active; a dedicated connection keeps listening (and reconnects)
        until `close()`. Notifications sent while it was reconnecting are lost, which is why
        delivery workers still poll."""
        self._p()
        self._listeners.append(callback)
        async with self._listen_lock:
            if self._listen_conn is None or self._listen_conn.is_closed():
                await self._connect_listener()

    async def _connect_listener(self) -> None:
        conn = await self._connect("calhl7-listen")
        try:
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._on_listener_lost)
        self._listen_conn = conn

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        for callback in list(self._listeners):
            try:
                callback(payload)
            except Exception as exc:  # noqa: BLE001 - one listener must not stop the others
                log.error("outbound listener failed", extra={"error": type(exc).__name__})

    def _on_listener_lost(self, conn: object) -> None:
        if self._closing or conn is not self._listen_conn:
            return
        self._listen_conn = None
        log.warning("LISTEN connection lost; reconnecting")
        self._spawn(self._relisten(), "calhl7-relisten")

    async def _relisten(self) -> None:
        delay = 0.2
        while not self._closing:
            async with self._listen_lock:
                if self._listen_conn is not None and not self._listen_conn.is_closed():
                    return
                try:
                    await self._connect_listener()
                    return
                except _CONNECTION_ERRORS:
                    pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def try_lead(self, node_id: str) -> bool:
        """True while this node holds processing leadership (a session advisory lock on a
        dedicated connection: it ends with that connection, so a dead node's lead passes on).
        Call it before every processing batch."""
        async with self._lead_lock:
            conn = self._lead_conn
            try:
                if conn is None or conn.is_closed():
                    self._leading = False
                    conn = self._lead_conn = await self._connect("calhl7-lead")
                if self._leading:
                    await conn.fetchval("SELECT 1", timeout=10)  # the session, so the lock, lives
                    return True
                self._leading = bool(
                    await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lead_key,
                                        timeout=10)
                )
                if self._leading:
                    log.info("processing leadership taken", extra={"node": node_id})
                return self._leading
            except _CONNECTION_ERRORS:
                self._leading = False
                if conn is not None:
                    conn.terminate()
                self._lead_conn = None
                return False

    # ------------------------------------------------------------------ operators
    async def queue_summary(self, now: float) -> list[dict[str, Any]]:
        pool = self._p()
        rows = await pool.fetch(
            "SELECT destination, COUNT(*) FILTER (WHERE status = 'queued') AS queued,"
            " COUNT(*) FILTER (WHERE status = 'dead') AS dead,"
            " MIN(COALESCE(accepted_at, created_at)) FILTER (WHERE status = 'queued') AS oldest"
            " FROM outbound WHERE status IN ('queued', 'dead')"
            " GROUP BY destination ORDER BY destination"
        )
        held = {r[0]: r[1] for r in await pool.fetch(
            "SELECT destination, COUNT(*) FROM lanes WHERE held GROUP BY destination")}
        return [
            {
                "destination": r["destination"],
                "queued": r["queued"],
                "dead": r["dead"],
                "held_lanes": held.get(r["destination"], 0),
                "oldest_age_seconds": round(now - r["oldest"], 3) if r["oldest"] else 0.0,
            }
            for r in rows
        ]

    async def lanes(self, destination: str | None, limit: int) -> list[dict[str, Any]]:
        where, args = "", [limit]
        if destination is not None:
            where, args = " AND l.destination = $2", [limit, pg_text(destination)]
        rows = await self._p().fetch(
            "SELECT l.id AS lane, l.destination, l.lane_key, l.head_id AS head,"
            " l.held::int AS held, l.ready_at, l.owner,"
            " (SELECT COUNT(*) FROM outbound o WHERE o.lane_id = l.id"
            "  AND o.status = 'queued') AS queued"
            f" FROM lanes l WHERE l.head_id IS NOT NULL{where}"
            " ORDER BY l.held DESC, l.ready_at LIMIT $1",
            *args,
        )
        return [dict(r) for r in rows]

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        rows = await self._p().fetch(
            "SELECT id, lane_id AS lane, destination, channel, message_type, control_id,"
            " appointment_id, attempts, last_error AS error, created_at"
            " FROM outbound WHERE status = 'dead' ORDER BY id LIMIT $1",
            limit,
        )
        return [dict(r) for r in rows]

    async def message(self, message_id: int) -> dict[str, Any] | None:
        async with self._p().acquire() as conn:
            row = await conn.fetchrow(
                "SELECT id, lane_id AS lane, destination, channel, appointment_id, message_type,"
                " control_id, payload, event_json, status, attempts, last_error AS error,"
                " ack_code, created_at, accepted_at, acked_at, correlation_id"
                " FROM outbound WHERE id = $1",
                message_id,
            )
            if row is None:
                return None
            msg = dict(row)
            msg["attempt_log"] = [dict(a) for a in await conn.fetch(
                "SELECT at, control_id, outcome, ack_code, ack, detail FROM attempts"
                " WHERE message_id = $1 ORDER BY id",
                message_id,
            )]
        return msg

    async def resend(self, message_id: int, who: str, *, force: bool = False) -> bool:
        async def fn(conn: asyncpg.Connection) -> bool:
            facts = await _requeue_facts(conn, message_id)
            if facts is None:
                return False
            message, later, lane_id, appointment_id = facts
            detail: dict[str, Any] = {"message": message_id}
            if message.status == base.QUEUED:  # it goes in its turn anyway: no back-off
                await conn.execute("UPDATE lanes SET ready_at = 0 WHERE id = $1", lane_id)
            else:
                passed = requeue.check_resend(message, later, time.time(), force)
                if passed:
                    detail["forced_after"] = [h.message_id for h in passed]
                await conn.execute(
                    "UPDATE outbound SET status = 'queued', attempts = 0 WHERE id = $1",
                    message_id,
                )
                await _requeue_in_lane(conn, lane_id, message_id)
            await audit_operator(conn, "resend", who, appointment_id, detail)
            return True

        return await self._tx(fn)

    async def replace_payload(
        self, message_id: int, control_id: str, payload: bytes, who: str, *,
        force: bool = False,
    ) -> bool:
        async def fn(conn: asyncpg.Connection) -> bool:
            facts = await _requeue_facts(conn, message_id)
            if facts is None or facts[0].status == base.ACKED:
                return False  # acknowledged meanwhile: a new MSH-10 would be a duplicate
            message, later, lane_id, appointment_id = facts
            passed = requeue.check_reprocess(message, later, time.time(), force)
            await conn.execute(
                "UPDATE outbound SET control_id = $2, payload = $3, status = 'queued',"
                " attempts = 0, last_error = NULL WHERE id = $1",
                message_id, pg_text(control_id), payload,
            )
            await _requeue_in_lane(conn, lane_id, message_id)
            detail: dict[str, Any] = {"message": message_id,
                                      "old_control_id": message.control_id,
                                      "control_id": control_id}
            if passed:
                detail["forced_after"] = sorted({h.message_id for h in passed})
            await audit_operator(conn, "reprocess", who, appointment_id, detail)
            return True

        return await self._tx(fn)

    async def release_lane(self, lane_id: int, who: str) -> bool:
        """Move past the dead letter that holds a lane; it stays visible as skipped."""

        async def fn(conn: asyncpg.Connection) -> bool:
            await _lock_lane(conn, lane_id)
            row = await conn.fetchrow(
                "SELECT l.head_id, o.appointment_id FROM lanes l"
                " JOIN outbound o ON o.id = l.head_id WHERE l.id = $1 AND l.held",
                lane_id,
            )
            if row is None:
                return False
            head_id, appointment_id = row
            await conn.execute("UPDATE outbound SET status = 'skipped' WHERE id = $1", head_id)
            await _advance_lanes(conn, [(lane_id, head_id)], time.time())
            await audit_operator(
                conn, "release", who, appointment_id, {"lane": lane_id, "message": head_id}
            )
            return True

        return await self._tx(fn)

    async def set_channel_paused(self, channel: str, paused: bool, who: str) -> None:
        async def fn(conn: asyncpg.Connection) -> None:
            if paused:
                await conn.execute(
                    "INSERT INTO paused_channels (channel, paused_by, paused_at)"
                    " VALUES ($1, $2, $3) ON CONFLICT (channel) DO NOTHING",
                    pg_text(channel), pg_text(who), time.time(),
                )
            else:
                await conn.execute(
                    "DELETE FROM paused_channels WHERE channel = $1", pg_text(channel)
                )
            await audit_operator(conn, "pause" if paused else "resume", who, None,
                                  {"channel": channel})

        await self._tx(fn)

    async def paused_channels(self) -> set[str]:
        return {r[0] for r in await self._p().fetch("SELECT channel FROM paused_channels")}

    async def requeue_event(self, event_id: int, who: str) -> bool:
        async def fn(conn: asyncpg.Connection) -> bool:
            status = await conn.execute(
                "UPDATE received_events SET state = 'pending', reason = NULL"
                " WHERE id = $1 AND state = 'quarantined'",
                event_id,
            )
            if _rowcount(status):
                await audit_operator(conn, "reprocess_event", who, None, {"event": event_id})
            return _rowcount(status) == 1

        return await self._tx(fn)

    async def audit(
        self, appointment_id: str | None, since: float | None, limit: int
    ) -> list[dict[str, Any]]:
        clauses: list[str] = []
        args: list[Any] = [limit]
        if appointment_id is not None:
            args.append(pg_text(appointment_id))
            clauses.append(f"appointment_id = ${len(args)}")
        if since is not None:
            args.append(since)
            clauses.append(f"at >= ${len(args)}")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._p().fetch(
            "SELECT at, kind, appointment_id, actor, trigger, source, detail::text AS detail"
            f" FROM audit{where} ORDER BY id LIMIT $1",
            *args,
        )
        out = []
        for r in rows:
            entry = dict(r)
            entry["detail"] = json.loads(entry["detail"])
            out.append(entry)
        return out

    async def quarantined_count(self) -> int:
        return await self._p().fetchval(
            "SELECT COUNT(*) FROM received_events WHERE state = 'quarantined'")

    async def counts(self) -> dict[str, int]:
        async with self._p().acquire() as conn:
            out = {f"events_{s}": n for s, n in await conn.fetch(
                "SELECT state, COUNT(*) FROM received_events GROUP BY state")}
            out.update({f"messages_{s}": n for s, n in await conn.fetch(
                "SELECT status, COUNT(*) FROM outbound GROUP BY status")})
        return out


# ---------------------------------------------------------------------- helpers
async def _keep_session(_conn: asyncpg.Connection) -> None:
    """A pooled connection goes back as it is: the pool's default reset (unlock advisory
    locks, UNLISTEN, RESET ALL) costs a round trip at every release, and ours never set any
    of those (leadership and LISTEN have connections of their own). asyncpg still rolls back
    a transaction left open."""


def _rowcount(status: str) -> int:
    """asyncpg's command tag ('UPDATE 1') -> rows affected."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except (ValueError, AttributeError):
        return 0


def _lock_key(purpose: str, schema: str) -> int:
    """A 64-bit advisory lock key per purpose and schema (several schemas share a database)."""
    digest = hashlib.blake2b(f"calhl7:{purpose}:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _migrate(conn: asyncpg.Connection, key: int) -> None:
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


def _audit_row(a: base.AuditEntry) -> tuple[Any, ...]:
    return (a.at, a.kind, pg_text(a.appointment_id), pg_text(a.actor), pg_text(a.trigger),
            pg_text(a.source), pg_json(a.detail))


async def _lock_lane(conn: asyncpg.Connection, lane_id: int) -> None:
    await conn.execute("SELECT 1 FROM lanes WHERE id = $1 FOR UPDATE", lane_id)


async def _advance_lanes(
    conn: asyncpg.Connection, lanes: Sequence[tuple[int, int]], now: float
) -> None:
    """Each (lane, after message id): its next live message becomes the head, dead letters
    that do not hold the lane are skipped (sql/postgres: calhl7_advance_lanes; lanes locked)."""
    await conn.execute(
        "SELECT calhl7_advance_lanes($1::bigint[], $2::bigint[], $3::float8)",
        [lane for lane, _ in lanes], [after for _, after in lanes], now,
    )


async def _requeue_facts(
    conn: asyncpg.Connection, message_id: int
) -> tuple[requeue.MessageFacts, list[requeue.MessageFacts], int, str] | None:
    """A message, the later messages of its appointment to its destination, and their sends:
    what an operator's resend or reprocess is checked against (see store/requeue.py). The
    lanes of those messages are locked, in id order, so no claim or outcome lands meanwhile."""
    row = await conn.fetchrow(
        "SELECT lane_id, destination, appointment_id FROM outbound WHERE id = $1", message_id
    )
    if row is None:
        return None
    lane_id, destination, appointment_id = row
    await conn.execute(
        "SELECT 1 FROM lanes WHERE id IN (SELECT lane_id FROM outbound"
        " WHERE destination = $1 AND appointment_id = $2 AND id >= $3) ORDER BY id FOR UPDATE",
        destination, appointment_id, message_id,
    )
    rows = await conn.fetch(
        "SELECT o.id, o.message_type, o.control_id, o.status, o.acked_at,"
        " CASE WHEN l.head_id = o.id THEN l.owner END AS owner, l.lease_until"
        " FROM outbound o JOIN lanes l ON l.id = o.lane_id"
        " WHERE o.destination = $1 AND o.appointment_id = $2 AND o.id >= $3 ORDER BY o.id",
        destination, appointment_id, message_id,
    )
    sends: dict[int, list[requeue.Send]] = {}
    for a in await conn.fetch(
        "SELECT message_id, control_id, at, outcome, ack FROM attempts"
        " WHERE message_id = ANY($1::bigint[]) ORDER BY id",
        [r["id"] for r in rows],
    ):
        sends.setdefault(a["message_id"], []).append(
            requeue.Send(a["control_id"], a["at"], a["outcome"], a["ack"]))
    facts = [requeue.MessageFacts(r["id"], r["message_type"], r["control_id"], r["status"],
                                  r["acked_at"], r["owner"],
                                  r["lease_until"] if r["owner"] else None,
                                  tuple(sends.get(r["id"], ())))
             for r in rows]
    return facts[0], facts[1:], lane_id, appointment_id


async def _requeue_in_lane(conn: asyncpg.Connection, lane_id: int, message_id: int) -> None:
    """A message put back in the queue goes first again if it is ahead of the head."""
    await conn.execute(
        "UPDATE lanes SET head_id = $2, held = FALSE, ready_at = 0, owner = NULL,"
        " lease_until = NULL, fence = fence + 1"  # a send in flight can no longer decide
        " WHERE id = $1 AND (head_id IS NULL OR head_id >= $2)",
        lane_id, message_id,
    )


async def _enqueue(conn: asyncpg.Connection, results: list[ProcessedEvent], now: float) -> None:
    """Queue every message of `results` in its lane, in order, in a few statements."""
    items: list[tuple[ProcessedEvent, NewMessage]] = [(r, m) for r in results for m in r.messages]
    keys = sorted({(pg_text(m.destination), pg_text(m.lane_key)) for _, m in items})
    dests, lane_keys = [k[0] for k in keys], [k[1] for k in keys]
    await conn.execute(
        "INSERT INTO lanes (destination, lane_key, ready_at)"
        " SELECT d, k, $3 FROM unnest($1::text[], $2::text[]) AS t (d, k)"
        " ON CONFLICT (destination, lane_key) DO NOTHING",
        dests, lane_keys, now,
    )
    # lock every lane we add to (in id order, like everybody): ids taken after the lock
    # follow every message already in those lanes, so id order is lane order
    lanes = {
        (r["destination"], r["lane_key"]): (r["id"], r["head_id"])
        for r in await conn.fetch(
            "SELECT l.id, l.destination, l.lane_key, l.head_id FROM lanes l"
            " JOIN unnest($1::text[], $2::text[]) AS t (d, k)"
            " ON l.destination = t.d AND l.lane_key = t.k ORDER BY l.id FOR UPDATE OF l",
            dests, lane_keys,
        )
    }
    ids = sorted(r[0] for r in await conn.fetch(
        "SELECT nextval(pg_get_serial_sequence('outbound', 'id')) FROM generate_series(1, $1)",
        len(items),
    ))
    origin = {
        r["id"]: (r["received_at"], r["correlation_id"])
        for r in await conn.fetch(
            "SELECT id, received_at, correlation_id FROM received_events"
            " WHERE id = ANY($1::bigint[])",
            list({r.event_id for r in results}),
        )
    }
    rows = []
    first_new: dict[int, int] = {}  # empty lane -> its first new message
    for mid, (r, m) in zip(ids, items, strict=True):
        lane_id, head_id = lanes[(pg_text(m.destination), pg_text(m.lane_key))]
        if head_id is None:
            first_new.setdefault(lane_id, mid)
        accepted_at, correlation_id = origin.get(r.event_id, (None, None))
        rows.append((
            mid, lane_id, r.event_id, pg_text(m.channel), pg_text(m.destination),
            pg_text(m.appointment_id), pg_text(m.message_type), pg_text(m.control_id), m.payload,
            pg_text(m.event_json),
            base.DEAD if m.error else base.QUEUED, m.hold_lane, pg_text(m.error), accepted_at,
            correlation_id,
        ))
    await conn.execute(
        "INSERT INTO outbound (id, lane_id, event_id, channel, destination, appointment_id,"
        " message_type, control_id, payload, event_json, status, hold_lane, last_error,"
        " accepted_at, correlation_id, created_at)"
        " SELECT *, $16 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[],"
        " $5::text[], $6::text[], $7::text[], $8::text[], $9::bytea[], $10::text[], $11::text[],"
        " $12::bool[], $13::text[], $14::float8[], $15::text[])",
        *_columns(rows, 15), now,
    )
    holding = sorted({(pg_text(m.destination), pg_text(m.appointment_id)) for _, m in items
                      if m.message_type.endswith("S12")})
    if holding:
        await conn.execute(
            "INSERT INTO destination_appointments (destination, appointment_id)"
            " SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
            [h[0] for h in holding], [h[1] for h in holding],
        )
    if first_new:
        await _advance_lanes(conn, [(lane, mid - 1) for lane, mid in first_new.items()], now)


def _columns(rows: Iterable[tuple[Any, ...]], width: int) -> list[list[Any]]:
    cols: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for i, value in enumerate(row):
            cols[i].append(value)
    return cols
