"""The embedded store: one SQLite file in the data directory, WAL, synchronous=FULL.

All work runs on one dedicated thread that owns the connection. Calls queue up while a
transaction is being committed, and the next transaction takes every queued call at once:
one fsync acknowledges a whole group of webhooks (group commit). Each call runs inside its own
SAVEPOINT (or is one statement), so one failing call never takes the others of its group down
with it.

The writer shares the GIL with the event loop, and every statement step releases it and waits
to take it back: the hot paths (a processed batch, a claim, a group of deliveries) therefore
run a fixed number of statements per batch, each binding all its rows at once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from engine.store import base, requeue
from engine.store.base import (
    AcceptResult,
    AttemptRecord,
    IncomingWebhook,
    ProcessedEvent,
    QueuedMessage,
    StoredEvent,
)
from engine.store.lock import DataDirLock
from engine.store.migrations import load_migrations
from engine.store.sqlite_common import AUDIT_INSERT, audit_operator
from engine.store.sqlite_inbound import SQLiteInboundMixin, read_inbound_origins
from engine.store.sqlite_version import sqlite_problem

T = TypeVar("T")
_MAX_GROUP = 512  # calls per transaction; bounds the latency of the first one in a group
_STOP = object()


class SQLiteStore(SQLiteInboundMixin):
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

    # ------------------------------------------------------------------ intake
    async def accept_webhook(self, webhook: IncomingWebhook) -> AcceptResult:
        def fn(conn: sqlite3.Connection) -> AcceptResult:
            cur = conn.execute(
                "INSERT INTO received_events (source, body_sha256, body, content_type, trigger,"
                " booking_uid, received_at, correlation_id, state, reason)"
                " VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (source, body_sha256) DO NOTHING",
                (
                    webhook.source,
                    webhook.body_sha256,
                    webhook.body,
                    webhook.content_type,
                    webhook.trigger,
                    webhook.booking_uid,
                    webhook.received_at,
                    webhook.correlation_id,
                    webhook.state,
                    webhook.reason,
                ),
            )
            if cur.rowcount == 1:
                return AcceptResult(cur.lastrowid or 0, False, webhook.state)
            row = conn.execute(
                "SELECT id, state FROM received_events WHERE source = ? AND body_sha256 = ?",
                (webhook.source, webhook.body_sha256),
            ).fetchone()
            return AcceptResult(row[0], True, row[1])

        return await self._call(fn, urgent=True, one_write=True)

    # ------------------------------------------------------------------ processing
    async def pending_events(self, limit: int, after_id: int = 0) -> list[StoredEvent]:
        return await self._read(lambda c: _events(c, base.PENDING, limit, after_id))

    async def events(self, state: str, limit: int) -> list[StoredEvent]:
        return await self._call(lambda c: _events(c, state, limit))

    async def appointment_states(self, uids: list[str]) -> dict[str, str]:
        return await self._read(lambda c: _appointment_states(c, uids))

    async def destinations_holding(self, appointment_ids: list[str]) -> set[tuple[str, str]]:
        return await self._read(lambda c: _destinations_holding(c, appointment_ids))

    def batch_reader(self) -> SQLiteBatchReader:
        return SQLiteBatchReader(str(self.path))

    async def commit_processed(self, results: list[ProcessedEvent]) -> None:
        await self._call(lambda conn: _apply_processed(conn, results, time.time()))

    # ------------------------------------------------------------------ delivery
    async def claim_lane_heads(
        self, destination: str, limit: int, owner: str, lease_seconds: float, now: float
    ) -> list[QueuedMessage]:
        def fn(conn: sqlite3.Connection) -> list[QueuedMessage]:
            rows = conn.execute(
                "SELECT l.id, l.fence, o.id, o.channel, o.appointment_id, o.message_type,"
                " o.control_id, o.payload, o.attempts, o.accepted_at, o.correlation_id, o.claims"
                " FROM lanes l JOIN outbound o ON o.id = l.head_id"
                " WHERE l.destination = ? AND l.head_id IS NOT NULL AND l.held = 0"
                " AND l.ready_at <= ? AND (l.lease_until IS NULL OR l.lease_until < ?)"
                " AND o.channel NOT IN (SELECT channel FROM paused_channels)"
                " ORDER BY l.ready_at LIMIT ?",
                (destination, now, now, limit),
            ).fetchall()
            if rows:  # one statement each for all of them (see _apply_processed)
                conn.execute(
                    "UPDATE lanes SET owner = ?, lease_until = ?, fence = fence + 1"
                    " WHERE id IN (SELECT value FROM json_each(?))",
                    (owner, now + lease_seconds, json.dumps([r[0] for r in rows])),
                )
                conn.execute("UPDATE outbound SET claims = claims + 1"
                             " WHERE id IN (SELECT value FROM json_each(?))",
                             (json.dumps([r[2] for r in rows]),))
            return [
                QueuedMessage(mid, lane_id, destination, ch, appt, mtype, cid, payload, att, acc,
                              corr, fence + 1, n + 1)
                for lane_id, fence, mid, ch, appt, mtype, cid, payload, att, acc, corr, n in rows
            ]

        return await self._call(fn, urgent=True)

    async def record_attempts(self, records: list[AttemptRecord]) -> None:
        if not records:
            return

        def fn(conn: sqlite3.Connection) -> None:
            if (all(r.outcome == "delivered" and r.control_id for r in records)
                    and len({r.lane_id for r in records}) == len(records)):
                _apply_delivered(conn, records)  # the common group, in a few statements
                return
            sent = [entry for rec in records if (entry := _apply_attempt(conn, rec))]
            conn.executemany(AUDIT_INSERT, sent)

        await self._call(fn, urgent=True)

    async def next_ready_at(self, destination: str) -> float | None:
        def fn(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(  # when a lane can next be claimed: back-off and lease both
                "SELECT MIN(MAX(l.ready_at, COALESCE(l.lease_until, 0))) FROM lanes l"
                " JOIN outbound o ON o.id = l.head_id"
                " WHERE l.destination = ? AND l.head_id IS NOT NULL AND l.held = 0"
                " AND o.channel NOT IN (SELECT channel FROM paused_channels)",
                (destination,),
            ).fetchone()
            return row[0]

        return await self._read(fn)

    async def release_claims(self, owner: str) -> None:
        def fn(c: sqlite3.Connection) -> None:
            # a claim given back went unsent: it no longer counts as "maybe sent before"
            # (a claim that lapses, in a crash, still does)
            c.execute("UPDATE outbound SET claims = claims - 1 WHERE id IN"
                      " (SELECT head_id FROM lanes WHERE owner = ? AND head_id IS NOT NULL)",
                      (owner,))
            c.execute("UPDATE lanes SET owner = NULL, lease_until = NULL WHERE owner = ?",
                      (owner,))

        await self._call(fn)

    async def release_all_claims(self) -> None:
        """Single node: whatever was in flight when we died is sent again, same MSH-10."""
        await self._call(
            lambda c: c.execute(
                "UPDATE lanes SET owner = NULL, lease_until = NULL WHERE owner IS NOT NULL"
            )
        )

    # ------------------------------------------------------------------ operators
    async def queue_summary(self, now: float) -> list[dict[str, Any]]:
        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT destination, SUM(status = 'queued'), SUM(status = 'dead'),"
                " MIN(CASE WHEN status = 'queued' THEN COALESCE(accepted_at, created_at) END)"
                " FROM outbound WHERE status IN ('queued', 'dead') GROUP BY destination"
            ).fetchall()
            held = dict(
                conn.execute(
                    "SELECT destination, COUNT(*) FROM lanes WHERE held = 1 GROUP BY destination"
                ).fetchall()
            )
            return [
                {
                    "destination": d,
                    "queued": q or 0,
                    "dead": dd or 0,
                    "held_lanes": held.get(d, 0),
                    "oldest_age_seconds": round(now - oldest, 3) if oldest else 0.0,
                }
                for d, q, dd, oldest in rows
            ]

        return await self._read(fn)

    async def lanes(self, destination: str | None, limit: int) -> list[dict[str, Any]]:
        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT l.id, l.destination, l.lane_key, l.head_id, l.held, l.ready_at, l.owner,"
                " (SELECT COUNT(*) FROM outbound o WHERE o.lane_id = l.id"
                "  AND o.status = 'queued')"
                " FROM lanes l WHERE l.head_id IS NOT NULL AND (? IS NULL OR l.destination = ?)"
                " ORDER BY l.held DESC, l.ready_at LIMIT ?",
                (destination, destination, limit),
            ).fetchall()
            keys = (
                "lane", "destination", "lane_key", "head", "held", "ready_at", "owner", "queued"
            )
            return [dict(zip(keys, r, strict=True)) for r in rows]

        return await self._read(fn)

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT o.id, o.lane_id, o.destination, o.channel, o.message_type, o.control_id,"
                " o.appointment_id, o.attempts, o.last_error, o.created_at"
                " FROM outbound o WHERE o.status = 'dead' ORDER BY o.id LIMIT ?",
                (limit,),
            ).fetchall()
            keys = (
                "id", "lane", "destination", "channel", "message_type", "control_id",
                "appointment_id", "attempts", "error", "created_at",
            )
            return [dict(zip(keys, r, strict=True)) for r in rows]

        return await self._read(fn)

    async def message(self, message_id: int) -> dict[str, Any] | None:
        def fn(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT id, lane_id, destination, channel, appointment_id, message_type,"
                " control_id, payload, event_json, status, attempts, last_error, ack_code,"
                " created_at, accepted_at, acked_at, correlation_id FROM outbound WHERE id = ?",
                (message_id,),
            ).fetchone()
            if row is None:
                return None
            keys = (
                "id", "lane", "destination", "channel", "appointment_id", "message_type",
                "control_id", "payload", "event_json", "status", "attempts", "error",
                "ack_code", "created_at", "accepted_at", "acked_at", "correlation_id",
            )
            msg = dict(zip(keys, row, strict=True))
            msg["attempt_log"] = [
                dict(zip(("at", "control_id", "outcome", "ack_code", "ack", "detail"), a,
                         strict=True))
                for a in conn.execute(
                    "SELECT at, control_id, outcome, ack_code, ack, detail FROM attempts"
                    " WHERE message_id = ? ORDER BY id",
                    (message_id,),
                )
            ]
            return msg

        return await self._read(fn)

    async def resend(self, message_id: int, who: str, *, force: bool = False) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            facts = _requeue_facts(conn, message_id)
            if facts is None:
                return False
            message, later, lane_id, appointment_id = facts
            detail: dict[str, Any] = {"message": message_id}
            if message.status == base.QUEUED:  # it goes in its turn anyway: no back-off
                conn.execute("UPDATE lanes SET ready_at = 0 WHERE id = ?", (lane_id,))
            else:
                passed = requeue.check_resend(message, later, time.time(), force)
                if passed:
                    detail["forced_after"] = [h.message_id for h in passed]
                conn.execute(
                    "UPDATE outbound SET status = 'queued', attempts = 0 WHERE id = ?",
                    (message_id,),
                )
                _requeue_in_lane(conn, lane_id, message_id)
            audit_operator(conn, "resend", who, appointment_id, detail)
            return True

        return await self._call(fn)

    async def replace_payload(
        self, message_id: int, control_id: str, payload: bytes, who: str, *,
        force: bool = False,
    ) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            facts = _requeue_facts(conn, message_id)
            if facts is None or facts[0].status == base.ACKED:
                return False  # acknowledged meanwhile: a new MSH-10 would be a duplicate
            message, later, lane_id, appointment_id = facts
            passed = requeue.check_reprocess(message, later, time.time(), force)
            conn.execute(
                "UPDATE outbound SET control_id = ?, payload = ?, status = 'queued',"
                " attempts = 0, last_error = NULL WHERE id = ?",
                (control_id, payload, message_id),
            )
            _requeue_in_lane(conn, lane_id, message_id)
            detail: dict[str, Any] = {"message": message_id,
                                      "old_control_id": message.control_id,
                                      "control_id": control_id}
            if passed:
                detail["forced_after"] = sorted({h.message_id for h in passed})
            audit_operator(conn, "reprocess", who, appointment_id, detail)
            return True

        return await self._call(fn)

    async def release_lane(self, lane_id: int, who: str) -> bool:
        """Move past the dead letter that holds a lane; it stays visible as skipped."""

        def fn(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT l.head_id, o.status, o.appointment_id FROM lanes l"
                " JOIN outbound o ON o.id = l.head_id WHERE l.id = ? AND l.held = 1",
                (lane_id,),
            ).fetchone()
            if row is None:
                return False
            head_id, _status, appointment_id = row
            conn.execute("UPDATE outbound SET status = 'skipped' WHERE id = ?", (head_id,))
            _advance_lane(conn, lane_id, head_id, time.time())
            audit_operator(
                conn, "release", who, appointment_id, {"lane": lane_id, "message": head_id}
            )
            return True

        return await self._call(fn)

    async def set_channel_paused(self, channel: str, paused: bool, who: str) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            if paused:
                conn.execute(
                    "INSERT INTO paused_channels (channel, by, at) VALUES (?,?,?)"
                    " ON CONFLICT (channel) DO NOTHING",
                    (channel, who, time.time()),
                )
            else:
                conn.execute("DELETE FROM paused_channels WHERE channel = ?", (channel,))
            audit_operator(conn, "pause" if paused else "resume", who, None, {"channel": channel})

        await self._call(fn)

    async def paused_channels(self) -> set[str]:
        return await self._read(
            lambda c: {r[0] for r in c.execute("SELECT channel FROM paused_channels")}
        )

    async def requeue_event(self, event_id: int, who: str) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE received_events SET state = 'pending', reason = NULL"
                " WHERE id = ? AND state = 'quarantined'",
                (event_id,),
            )
            if cur.rowcount:
                audit_operator(conn, "reprocess_event", who, None, {"event": event_id})
            return cur.rowcount == 1

        return await self._call(fn)

    async def audit(
        self, appointment_id: str | None, since: float | None, limit: int
    ) -> list[dict[str, Any]]:
        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT at, kind, appointment_id, actor, trigger, source, detail FROM audit"
                " WHERE (? IS NULL OR appointment_id = ?) AND (? IS NULL OR at >= ?)"
                " ORDER BY id LIMIT ?",
                (appointment_id, appointment_id, since, since, limit),
            ).fetchall()
            keys = ("at", "kind", "appointment_id", "actor", "trigger", "source", "detail")
            out = []
            for r in rows:
                entry = dict(zip(keys, r, strict=True))
                entry["detail"] = json.loads(entry["detail"])
                out.append(entry)
            return out

        return await self._read(fn)

    async def quarantined_count(self) -> int:
        return await self._read(lambda c: c.execute(
            "SELECT COUNT(*) FROM received_events WHERE state = 'quarantined'").fetchone()[0])

    async def counts(self) -> dict[str, int]:
        def fn(conn: sqlite3.Connection) -> dict[str, int]:
            out = {f"events_{s}": n for s, n in conn.execute(
                "SELECT state, COUNT(*) FROM received_events GROUP BY state")}
            out.update({f"messages_{s}": n for s, n in conn.execute(
                "SELECT status, COUNT(*) FROM outbound GROUP BY status")})
            return out

        return await self._read(fn)

    # ------------------------------------------------------------------ cluster (one node)
    # One process owns this file, so slots live in memory, with the same rules as on
    # PostgreSQL; there is no other node to notify, and this one always leads.
    async def acquire_slot(
        self, destination: str, max_slots: int, owner: str, lease_seconds: float, now: float
    ) -> int | None:
        slots = self._slots.setdefault(destination, {})
        mine = [n for n, (o, _) in slots.items() if o == owner and n < max_slots]
        free = [n for n in range(max_slots) if n not in slots or slots[n][1] < now]
        for n in sorted(mine) or free[:1]:
            slots[n] = (owner, now + lease_seconds)
            return n
        return None

    async def renew_slot(
        self, destination: str, slot: int, owner: str, lease_seconds: float, now: float
    ) -> bool:
        slots = self._slots.setdefault(destination, {})
        if slots.get(slot, (None, 0.0))[0] != owner:
            return False
        slots[slot] = (owner, now + lease_seconds)
        return True

    async def release_slot(self, destination: str, slot: int, owner: str) -> None:
        slots = self._slots.setdefault(destination, {})
        if slots.get(slot, (None, 0.0))[0] == owner:
            del slots[slot]

    async def listen(self, callback: Callable[[str], None]) -> None:
        """One node: the processor wakes its workers directly."""

    async def try_lead(self, node_id: str) -> bool:
        return True


# ---------------------------------------------------------------------- helpers (writer thread)
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


def _appointment_states(conn: sqlite3.Connection, uids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for uid in set(uids):
        row = conn.execute(
            "SELECT a.state FROM booking_uids b JOIN appointments a"
            " ON a.appointment_id = b.appointment_id WHERE b.uid = ?",
            (uid,),
        ).fetchone()
        if row:
            out[uid] = row[0]
    return out


def _destinations_holding(conn: sqlite3.Connection,
                          appointment_ids: list[str]) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for appointment_id in set(appointment_ids):
        for (dest,) in conn.execute(
            "SELECT destination FROM destination_appointments WHERE appointment_id = ?",
            (appointment_id,),
        ):
            out.add((dest, appointment_id))
    return out


_READER_CONNECTIONS: dict[str, sqlite3.Connection] = {}


class SQLiteBatchReader:
    """The processing reads, for a helper process: its own connection to the same file (WAL:
    it never waits for the engine's writer), opened on first use in that process. It travels
    to the helper as the file's path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def __getstate__(self) -> str:
        return self.path

    def __setstate__(self, path: str) -> None:
        self.path, self._conn = path, None

    def read(self, fn: Callable[[SQLiteBatchReader], T]) -> T:
        conn = _READER_CONNECTIONS.get(self.path)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=10000")
            _READER_CONNECTIONS[self.path] = conn
        self._conn = conn
        conn.execute("BEGIN")  # one snapshot for the whole batch
        try:
            return fn(self)
        finally:
            conn.execute("COMMIT")

    def _connection(self) -> sqlite3.Connection:
        assert self._conn is not None, "read() opens the snapshot these run in"
        return self._conn

    def pending_events(self, limit: int, after_id: int = 0) -> list[StoredEvent]:
        return _events(self._connection(), base.PENDING, limit, after_id)

    def appointment_states(self, uids: list[str]) -> dict[str, str]:
        return _appointment_states(self._connection(), uids)

    def destinations_holding(self, appointment_ids: list[str]) -> set[tuple[str, str]]:
        return _destinations_holding(self._connection(), appointment_ids)

    def inbound_origins(self, uids: list[str]) -> dict[str, str]:
        return read_inbound_origins(self._connection(), uids)


def _events(conn: sqlite3.Connection, state: str, limit: int,
            after_id: int = 0) -> list[StoredEvent]:
    rows = conn.execute(
        "SELECT id, source, body, content_type, trigger, booking_uid, received_at,"
        " correlation_id, state, reason FROM received_events WHERE state = ? AND id > ?"
        " ORDER BY id LIMIT ?",
        (state, after_id, limit),
    ).fetchall()
    return [StoredEvent(*r) for r in rows]


def _apply_processed(conn: sqlite3.Connection, results: list[ProcessedEvent], now: float) -> None:
    """A batch's results in a fixed number of statements for the whole batch (its rows bound
    as one multi-row VALUES each, 128 rows at most per statement). This runs on the writer
    thread, where every statement step gives the GIL away and waits to get it back from a
    busy event loop: while webhooks arrive, steps cost more than SQLite's own work."""
    marked = 0
    for part in _parts([(r.event_id, r.state, r.reason) for r in results]):
        marked += conn.execute(
            "UPDATE received_events SET state = v.column2, reason = v.column3,"
            f" processed_at = ? FROM ({_values(part)}) AS v"
            " WHERE received_events.id = v.column1 AND received_events.state = 'pending'",
            (now, *_flat(part)),
        ).rowcount
    if marked != len(results):  # processed already: writing again would queue it twice
        raise base.NotPending(f"{len(results) - marked} of {len(results)} events are no"
                              " longer pending")
    states: dict[str, str] = {}  # in event order: the last state of an appointment wins
    links: dict[str, str] = {}  # a booking uid keeps the first appointment it was linked to
    for r in results:
        if r.appointment_id and r.appointment_state is not None:
            states[r.appointment_id] = r.appointment_state
        for uid, appointment_id in r.uid_links.items():
            links.setdefault(uid, appointment_id)
    for part in _parts(list(states.items())):
        conn.execute(
            "INSERT INTO appointments (appointment_id, state, updated_at)"
            f" SELECT v.column1, v.column2, ? FROM ({_values(part)}) AS v WHERE true"
            " ON CONFLICT (appointment_id) DO UPDATE SET state = excluded.state,"
            " updated_at = excluded.updated_at",
            (now, *_flat(part)),
        )
    for part in _parts(list(links.items())):
        conn.execute(f"INSERT INTO booking_uids (uid, appointment_id) {_values(part)}"
                     " ON CONFLICT (uid) DO NOTHING", _flat(part))
    messages = [(r.event_id, m) for r in results for m in r.messages]
    if any(m.error for _, m in messages):  # born dead (rare): the lane logic message by message
        for event_id, m in messages:
            _enqueue(conn, m, event_id, now)
    elif messages:
        _enqueue_all(conn, messages, now)
    audit = [(a.at, a.kind, a.appointment_id, a.actor, a.trigger, a.source,
              json.dumps(a.detail, separators=(",", ":"))) for r in results for a in r.audit]
    for part in _parts(audit):
        conn.execute("INSERT INTO audit (at, kind, appointment_id, actor, trigger, source,"
                     f" detail) {_values(part)}", _flat(part))


_ROWS_PER_STATEMENT = 128  # 7 columns x 128 rows stays far below SQLite's bound variables


def _parts(rows: list[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
    return [rows[i:i + _ROWS_PER_STATEMENT] for i in range(0, len(rows), _ROWS_PER_STATEMENT)]


def _values(rows: list[tuple[Any, ...]]) -> str:
    """`VALUES (?,?),(?,?)` for these rows (in a FROM, in brackets: column1, column2...)."""
    return _values_sql(len(rows), len(rows[0]))


@functools.lru_cache(maxsize=1024)
def _values_sql(n_rows: int, n_columns: int) -> str:
    row = "(" + ",".join("?" * n_columns) + ")"
    return "VALUES " + ",".join([row] * n_rows)


def _flat(rows: list[tuple[Any, ...]]) -> list[Any]:
    return [value for row in rows for value in row]


_OUTBOUND_COLUMNS = (
    "id, lane_id, event_id, channel, destination, appointment_id, message_type, control_id,"
    " payload, event_json, status, hold_lane, last_error, created_at")


def _insert_outbound(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """New messages (their columns in _OUTBOUND_COLUMNS order), each with its event's
    received_at and correlation id."""
    for part in _parts(rows):
        conn.execute(
            f"INSERT INTO outbound ({_OUTBOUND_COLUMNS}, accepted_at, correlation_id)"
            " SELECT v.*, r.received_at, r.correlation_id"
            f" FROM ({_values(part)}) AS v LEFT JOIN received_events r ON r.id = v.column3"
            " ORDER BY v.column1",
            _flat(part),
        )


def _enqueue_all(conn: sqlite3.Connection, messages: list[tuple[int, base.NewMessage]],
                 now: float) -> None:
    """Queue a batch's messages (none born dead) in order: the lanes missing made in one
    statement, the messages given their ids here (the ones SQLite would give them), and every
    lane that was empty pointed at its first new message in one statement."""
    # in event order: new lanes get their ids, and so their claim order, as events came
    keys = list(dict.fromkeys((m.destination, m.lane_key) for _, m in messages))
    lanes: dict[tuple[str, str], tuple[int, int | None]] = {}
    last_id = 0
    for part in _parts(keys):
        conn.execute(f"INSERT INTO lanes (destination, lane_key, ready_at)"
                     f" SELECT v.column1, v.column2, ? FROM ({_values(part)}) AS v WHERE true"
                     " ON CONFLICT (destination, lane_key) DO NOTHING", (now, *_flat(part)))
        numbered = [(i, d, k) for i, (d, k) in enumerate(part)]
        # one row back, numbers only: each row fetched would be one more step
        found, last_id = conn.execute(
            "SELECT (SELECT json_group_array(json_array(v.column1, l.id, l.head_id))"
            f" FROM ({_values(numbered)}) AS v JOIN lanes l"
            " ON l.destination = v.column2 AND l.lane_key = v.column3),"
            " (SELECT coalesce(max(id), 0) FROM outbound)",
            _flat(numbered),
        ).fetchone()
        for i, lane_id, head_id in json.loads(found):
            lanes[part[i]] = (lane_id, head_id)
    rows: list[tuple[Any, ...]] = []
    heads: dict[int, int] = {}
    first_s12: set[tuple[str, str]] = set()
    for message_id, (event_id, m) in enumerate(messages, start=last_id + 1):
        lane_id, head_id = lanes[(m.destination, m.lane_key)]
        if head_id is None:
            heads.setdefault(lane_id, message_id)  # an empty lane: its first new message
        if m.message_type.endswith("S12"):
            first_s12.add((m.destination, m.appointment_id))
        rows.append((message_id, lane_id, event_id, m.channel, m.destination, m.appointment_id,
                     m.message_type, m.control_id, m.payload, m.event_json, base.QUEUED,
                     int(m.hold_lane), None, now))
    _insert_outbound(conn, rows)
    # what follows an S12 must stay an S13/S14/S15, not become a second S12
    for part in _parts(sorted(first_s12)):
        conn.execute(f"INSERT INTO destination_appointments (destination, appointment_id)"
                     f" {_values(part)} ON CONFLICT DO NOTHING", _flat(part))
    for part in _parts(list(heads.items())):  # what _set_head does, for every empty lane
        conn.execute(
            "UPDATE lanes SET head_id = v.column2, held = 0, ready_at = ?, owner = NULL,"
            f" lease_until = NULL FROM ({_values(part)}) AS v WHERE lanes.id = v.column1",
            (now, *_flat(part)),
        )


def _enqueue(conn: sqlite3.Connection, m: base.NewMessage, event_id: int, now: float) -> None:
    """Queue one message (the path for batches with a message born dead)."""
    lane = conn.execute(
        "SELECT id, head_id FROM lanes WHERE destination = ? AND lane_key = ?",
        (m.destination, m.lane_key),
    ).fetchone()
    if lane is None:
        lane = conn.execute(
            "INSERT INTO lanes (destination, lane_key, ready_at) VALUES (?,?,?)"
            " RETURNING id, head_id",
            (m.destination, m.lane_key, now),
        ).fetchone()
    lane_id, head_id = lane
    status = base.DEAD if m.error else base.QUEUED
    (message_id,) = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM outbound").fetchone()
    _insert_outbound(conn, [(message_id, lane_id, event_id, m.channel, m.destination,
                              m.appointment_id, m.message_type, m.control_id, m.payload,
                              m.event_json, status, int(m.hold_lane), m.error, now)])
    # a dead-at-render S12 counts too: it waits in the lane for a fix and a reprocess, and
    # what follows it must stay an S13/S14/S15, not become a second S12
    if m.message_type.endswith("S12"):
        conn.execute(
            "INSERT INTO destination_appointments (destination, appointment_id) VALUES (?,?)"
            " ON CONFLICT DO NOTHING",
            (m.destination, m.appointment_id),
        )
    if head_id is None:
        if status == base.QUEUED:  # an empty lane: the new message is its head
            _set_head(conn, lane_id, message_id, now)
        else:
            _advance_lane(conn, lane_id, message_id - 1, now)


def _set_head(conn: sqlite3.Connection, lane_id: int, message_id: int, now: float) -> None:
    """A queued message becomes its lane's head, ready now and claimed by nobody."""
    conn.execute(
        "UPDATE lanes SET head_id = ?, held = 0, ready_at = ?, owner = NULL,"
        " lease_until = NULL WHERE id = ?",
        (message_id, now, lane_id),
    )


def _advance_lane(conn: sqlite3.Connection, lane_id: int, after_id: int, now: float) -> None:
    """Point the lane at its next live message after `after_id` (or empty it)."""
    for mid, status, hold in conn.execute(
        "SELECT id, status, hold_lane FROM outbound WHERE lane_id = ? AND id > ?"
        " AND status IN ('queued', 'dead') ORDER BY id",
        (lane_id, after_id),
    ).fetchall():
        if status == base.QUEUED:
            _set_head(conn, lane_id, mid, now)
            return
        if hold:  # a message that was born dead (unmapped code) holds the lane too
            conn.execute(
                "UPDATE lanes SET head_id = ?, held = 1, owner = NULL, lease_until = NULL"
                " WHERE id = ?",
                (mid, lane_id),
            )
            return
        conn.execute("UPDATE outbound SET status = 'skipped' WHERE id = ?", (mid,))
    conn.execute(
        "UPDATE lanes SET head_id = NULL, held = 0, owner = NULL, lease_until = NULL"
        " WHERE id = ?",
        (lane_id,),
    )


def _requeue_facts(
    conn: sqlite3.Connection, message_id: int
) -> tuple[requeue.MessageFacts, list[requeue.MessageFacts], int, str] | None:
    """A message, the later messages of its appointment to its destination, and their sends:
    what an operator's resend or reprocess is checked against (see store/requeue.py)."""
    row = conn.execute(
        "SELECT lane_id, destination, appointment_id FROM outbound WHERE id = ?", (message_id,)
    ).fetchone()
    if row is None:
        return None
    lane_id, destination, appointment_id = row
    rows = conn.execute(
        "SELECT o.id, o.message_type, o.control_id, o.status, o.acked_at,"
        " CASE WHEN l.head_id = o.id THEN l.owner END, l.lease_until"
        " FROM outbound o JOIN lanes l ON l.id = o.lane_id"
        " WHERE o.destination = ? AND o.appointment_id = ? AND o.id >= ? ORDER BY o.id",
        (destination, appointment_id, message_id),
    ).fetchall()
    sends: dict[int, list[requeue.Send]] = {}
    for mid, control_id, at, outcome, ack in conn.execute(
        "SELECT message_id, control_id, at, outcome, ack FROM attempts"
        " WHERE message_id IN (SELECT value FROM json_each(?)) ORDER BY id",
        (json.dumps([r[0] for r in rows]),),
    ):
        sends.setdefault(mid, []).append(requeue.Send(control_id, at, outcome, ack))
    facts = [requeue.MessageFacts(mid, mtype, cid, status, acked_at, owner,
                                  lease if owner else None, tuple(sends.get(mid, ())))
             for mid, mtype, cid, status, acked_at, owner, lease in rows]
    return facts[0], facts[1:], lane_id, appointment_id


def _requeue_in_lane(conn: sqlite3.Connection, lane_id: int, message_id: int) -> None:
    """A message put back in the queue goes first again if it is ahead of the head."""
    (head_id,) = conn.execute("SELECT head_id FROM lanes WHERE id = ?", (lane_id,)).fetchone()
    if head_id is None or head_id >= message_id:
        conn.execute(
            "UPDATE lanes SET head_id = ?, held = 0, ready_at = 0, owner = NULL,"
            " lease_until = NULL, fence = fence + 1 WHERE id = ?",  # in-flight sends lose
            (message_id, lane_id),
        )


def _apply_delivered(conn: sqlite3.Connection, records: list[AttemptRecord]) -> None:
    """What _apply_attempt does for each record, for a group where every message was
    delivered (each in its own lane, MSH-10 known), in a fixed number of statements: the
    steps on the writer are what costs (see _apply_processed)."""
    keyed = [(i, r.message_id, r.lane_id, r.fence) for i, r in enumerate(records)]
    # which exist, which are still ours (fence and head), whose next live message is dead
    (found,) = conn.execute(
        "SELECT json_group_array(json_array(v.column1,"
        " l.fence = v.column4 AND l.head_id = v.column2,"
        " (SELECT n.status FROM outbound n WHERE n.lane_id = v.column3 AND n.id > v.column2"
        "  AND n.status IN ('queued', 'dead') ORDER BY n.id LIMIT 1) IS 'dead'))"
        f" FROM ({_values(keyed)}) AS v JOIN lanes l ON l.id = v.column3"
        " JOIN outbound o ON o.id = v.column2",
        _flat(keyed),
    ).fetchone()
    checks = sorted(json.loads(found))
    if not checks:
        return
    attempts = [(r.message_id, r.at, r.control_id, r.outcome, r.ack_code, r.ack, r.detail)
                for r in (records[i] for i, _, _ in checks)]
    conn.execute("INSERT INTO attempts (message_id, at, control_id, outcome, ack_code, ack,"
                 f" detail) {_values(attempts)}", _flat(attempts))
    ours = [records[i] for i, still_ours, _ in checks if still_ours]
    if not ours:
        return  # every claim was taken over (leases lapsed): the new owners decide
    acked = [(r.message_id, r.ack_code, r.at) for r in ours]
    conn.execute(
        "UPDATE outbound SET status = 'acked', attempts = attempts + 1, ack_code = v.column2,"
        f" acked_at = v.column3, last_error = NULL FROM ({_values(acked)}) AS v"
        " WHERE outbound.id = v.column1",
        _flat(acked),
    )
    dead_next = {records[i].lane_id for i, still_ours, dead in checks if still_ours and dead}
    advance = [(r.lane_id, r.message_id, r.at) for r in ours if r.lane_id not in dead_next]
    if advance:  # each lane to its next queued message (ready now), or empty
        conn.execute(
            "UPDATE lanes SET head_id = n.next_id, held = 0, owner = NULL, lease_until = NULL,"
            " ready_at = CASE WHEN n.next_id IS NULL THEN lanes.ready_at ELSE n.at END"
            " FROM (SELECT v.column1 AS lane_id, v.column3 AS at,"
            "  (SELECT min(o.id) FROM outbound o WHERE o.lane_id = v.column1"
            "   AND o.id > v.column2 AND o.status = 'queued') AS next_id"
            f"  FROM ({_values(advance)}) AS v) AS n WHERE lanes.id = n.lane_id",
            _flat(advance),
        )
    for r in ours:  # a message born dead next in its lane (rare): the lane logic as ever
        if r.lane_id in dead_next:
            _advance_lane(conn, r.lane_id, r.message_id, r.at)
    sent = [(n, r.message_id, r.at, r.control_id, r.ack_code) for n, r in enumerate(ours)]
    conn.execute(
        "INSERT INTO audit (at, kind, appointment_id, actor, trigger, source, detail)"
        " SELECT v.column3, 'sent', o.appointment_id, 'engine', o.message_type, o.destination,"
        " json_object('message', o.id, 'control_id', v.column4, 'channel', o.channel,"
        " 'outcome', 'delivered', 'ack_code', v.column5)"
        f" FROM ({_values(sent)}) AS v JOIN outbound o ON o.id = v.column2 ORDER BY v.column1",
        _flat(sent),
    )


def _apply_attempt(conn: sqlite3.Connection, rec: AttemptRecord) -> tuple[Any, ...] | None:
    """Record one attempt; return the audit row of a final outcome (the caller inserts them
    all at once)."""
    row = conn.execute(
        "SELECT l.fence, l.head_id, o.control_id, o.appointment_id, o.destination, o.channel,"
        " o.message_type FROM lanes l JOIN outbound o ON o.id = ? WHERE l.id = ?",
        (rec.message_id, rec.lane_id),
    ).fetchone()
    if row is None:
        return None
    fence, head_id, control_id, appointment_id, destination, channel, mtype = row
    control_id = rec.control_id or control_id  # the MSH-10 that went out
    conn.execute(
        "INSERT INTO attempts (message_id, at, control_id, outcome, ack_code, ack, detail)"
        " VALUES (?,?,?,?,?,?,?)",
        (rec.message_id, rec.at, control_id, rec.outcome, rec.ack_code, rec.ack, rec.detail),
    )
    if fence != rec.fence or head_id != rec.message_id:
        return None  # our claim was taken over (lease lapsed): the new owner decides
    if rec.outcome == "delivered":
        conn.execute(
            "UPDATE outbound SET status = 'acked', attempts = attempts + 1, ack_code = ?,"
            " acked_at = ?, last_error = NULL WHERE id = ?",
            (rec.ack_code, rec.at, rec.message_id),
        )
        _advance_lane(conn, rec.lane_id, rec.message_id, rec.at)
    elif rec.outcome == "retry":
        conn.execute(
            "UPDATE outbound SET attempts = attempts + 1, ack_code = ?, last_error = ?"
            " WHERE id = ?",
            (rec.ack_code, rec.detail, rec.message_id),
        )
        conn.execute(
            "UPDATE lanes SET ready_at = ?, owner = NULL, lease_until = NULL WHERE id = ?",
            (rec.next_attempt_at or rec.at, rec.lane_id),
        )
    else:
        conn.execute(
            "UPDATE outbound SET status = 'dead', attempts = attempts + 1, ack_code = ?,"
            " last_error = ?, hold_lane = ? WHERE id = ?",
            (rec.ack_code, rec.detail, int(rec.hold_lane), rec.message_id),
        )
        if rec.hold_lane:
            conn.execute(
                "UPDATE lanes SET held = 1, owner = NULL, lease_until = NULL WHERE id = ?",
                (rec.lane_id,),
            )
        else:
            conn.execute("UPDATE outbound SET status = 'skipped' WHERE id = ?", (rec.message_id,))
            _advance_lane(conn, rec.lane_id, rec.message_id, rec.at)
    if rec.outcome == "retry":
        return None
    return (rec.at, "sent", appointment_id, "engine", mtype, destination,
            json.dumps({"message": rec.message_id, "control_id": control_id,
                        "channel": channel, "outcome": rec.outcome,
                        "ack_code": rec.ack_code}, separators=(",", ":")))
