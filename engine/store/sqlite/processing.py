"""Processing on SQLite: the pending events and what they build on, read on a connection of
their own (or a helper process's), and a batch's results committed in a fixed number of
statements."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from engine.store import records
from engine.store.records import ProcessedEvent, StoredEvent
from engine.store.sqlite.common import flat, parts, read_events, values
from engine.store.sqlite.core import SQLiteCore
from engine.store.sqlite.inbound import read_inbound_origins
from engine.store.sqlite.lanes import advance_lane, set_head

T = TypeVar("T")


class SQLiteProcessing(SQLiteCore):
    async def pending_events(self, limit: int, after_id: int = 0) -> list[StoredEvent]:
        return await self._read(lambda c: read_events(c, records.PENDING, limit, after_id))

    async def appointment_states(self, uids: list[str]) -> dict[str, str]:
        return await self._read(lambda c: _appointment_states(c, uids))

    async def destinations_holding(self, appointment_ids: list[str]) -> set[tuple[str, str]]:
        return await self._read(lambda c: _destinations_holding(c, appointment_ids))

    def batch_reader(self) -> SQLiteBatchReader:
        return SQLiteBatchReader(str(self.path))

    async def commit_processed(self, results: list[ProcessedEvent]) -> None:
        await self._call(lambda conn: _apply_processed(conn, results, time.time()))


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
        return read_events(self._connection(), records.PENDING, limit, after_id)

    def appointment_states(self, uids: list[str]) -> dict[str, str]:
        return _appointment_states(self._connection(), uids)

    def destinations_holding(self, appointment_ids: list[str]) -> set[tuple[str, str]]:
        return _destinations_holding(self._connection(), appointment_ids)

    def inbound_origins(self, uids: list[str]) -> dict[str, str]:
        return read_inbound_origins(self._connection(), uids)


def _apply_processed(conn: sqlite3.Connection, results: list[ProcessedEvent], now: float) -> None:
    """A batch's results in a fixed number of statements for the whole batch (its rows bound
    as one multi-row VALUES each, 128 rows at most per statement). This runs on the writer
    thread, where every statement step gives the GIL away and waits to get it back from a
    busy event loop: while webhooks arrive, steps cost more than SQLite's own work."""
    marked = 0
    for part in parts([(r.event_id, r.state, r.reason) for r in results]):
        marked += conn.execute(
            "UPDATE received_events SET state = v.column2, reason = v.column3,"
            f" processed_at = ? FROM ({values(part)}) AS v"
            " WHERE received_events.id = v.column1 AND received_events.state = 'pending'",
            (now, *flat(part)),
        ).rowcount
    if marked != len(results):  # processed already: writing again would queue it twice
        raise records.NotPending(f"{len(results) - marked} of {len(results)} events are no"
                              " longer pending")
    states: dict[str, str] = {}  # in event order: the last state of an appointment wins
    links: dict[str, str] = {}  # a booking uid keeps the first appointment it was linked to
    for r in results:
        if r.appointment_id and r.appointment_state is not None:
            states[r.appointment_id] = r.appointment_state
        for uid, appointment_id in r.uid_links.items():
            links.setdefault(uid, appointment_id)
    for part in parts(list(states.items())):
        conn.execute(
            "INSERT INTO appointments (appointment_id, state, updated_at)"
            f" SELECT v.column1, v.column2, ? FROM ({values(part)}) AS v WHERE true"
            " ON CONFLICT (appointment_id) DO UPDATE SET state = excluded.state,"
            " updated_at = excluded.updated_at",
            (now, *flat(part)),
        )
    for part in parts(list(links.items())):
        conn.execute(f"INSERT INTO booking_uids (uid, appointment_id) {values(part)}"
                     " ON CONFLICT (uid) DO NOTHING", flat(part))
    messages = [(r.event_id, m) for r in results for m in r.messages]
    if any(m.error for _, m in messages):  # born dead (rare): the lane logic message by message
        for event_id, m in messages:
            _enqueue(conn, m, event_id, now)
    elif messages:
        _enqueue_all(conn, messages, now)
    audit = [(a.at, a.kind, a.appointment_id, a.actor, a.trigger, a.source,
              json.dumps(a.detail, separators=(",", ":"))) for r in results for a in r.audit]
    for part in parts(audit):
        conn.execute("INSERT INTO audit (at, kind, appointment_id, actor, trigger, source,"
                     f" detail) {values(part)}", flat(part))


_OUTBOUND_COLUMNS = (
    "id, lane_id, event_id, channel, destination, appointment_id, message_type, control_id,"
    " payload, event_json, status, hold_lane, last_error, created_at")


def _insert_outbound(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """New messages (their columns in _OUTBOUND_COLUMNS order), each with its event's
    received_at and correlation id."""
    for part in parts(rows):
        conn.execute(
            f"INSERT INTO outbound ({_OUTBOUND_COLUMNS}, accepted_at, correlation_id)"
            " SELECT v.*, r.received_at, r.correlation_id"
            f" FROM ({values(part)}) AS v LEFT JOIN received_events r ON r.id = v.column3"
            " ORDER BY v.column1",
            flat(part),
        )


def _enqueue_all(conn: sqlite3.Connection, messages: list[tuple[int, records.NewMessage]],
                 now: float) -> None:
    """Queue a batch's messages (none born dead) in order: the lanes missing made in one
    statement, the messages given their ids here (the ones SQLite would give them), and every
    lane that was empty pointed at its first new message in one statement."""
    # in event order: new lanes get their ids, and so their claim order, as events came
    keys = list(dict.fromkeys((m.destination, m.lane_key) for _, m in messages))
    lanes: dict[tuple[str, str], tuple[int, int | None]] = {}
    last_id = 0
    for part in parts(keys):
        conn.execute(f"INSERT INTO lanes (destination, lane_key, ready_at)"
                     f" SELECT v.column1, v.column2, ? FROM ({values(part)}) AS v WHERE true"
                     " ON CONFLICT (destination, lane_key) DO NOTHING", (now, *flat(part)))
        numbered = [(i, d, k) for i, (d, k) in enumerate(part)]
        # one row back, numbers only: each row fetched would be one more step
        found, last_id = conn.execute(
            "SELECT (SELECT json_group_array(json_array(v.column1, l.id, l.head_id))"
            f" FROM ({values(numbered)}) AS v JOIN lanes l"
            " ON l.destination = v.column2 AND l.lane_key = v.column3),"
            " (SELECT coalesce(max(id), 0) FROM outbound)",
            flat(numbered),
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
                     m.message_type, m.control_id, m.payload, m.event_json, records.QUEUED,
                     int(m.hold_lane), None, now))
    _insert_outbound(conn, rows)
    # what follows an S12 must stay an S13/S14/S15, not become a second S12
    for part in parts(sorted(first_s12)):
        conn.execute(f"INSERT INTO destination_appointments (destination, appointment_id)"
                     f" {values(part)} ON CONFLICT DO NOTHING", flat(part))
    for part in parts(list(heads.items())):  # what _set_head does, for every empty lane
        conn.execute(
            "UPDATE lanes SET head_id = v.column2, held = 0, ready_at = ?, owner = NULL,"
            f" lease_until = NULL FROM ({values(part)}) AS v WHERE lanes.id = v.column1",
            (now, *flat(part)),
        )


def _enqueue(conn: sqlite3.Connection, m: records.NewMessage, event_id: int, now: float) -> None:
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
    status = records.DEAD if m.error else records.QUEUED
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
        if status == records.QUEUED:  # an empty lane: the new message is its head
            set_head(conn, lane_id, message_id, now)
        else:
            advance_lane(conn, lane_id, message_id - 1, now)

