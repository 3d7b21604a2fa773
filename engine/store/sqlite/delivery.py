"""Delivery on SQLite: lane heads claimed with a lease and a fence, attempts recorded (a group
of deliveries in a few statements), claims released; the destination's connection slots."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from engine.store.records import AttemptRecord, QueuedMessage
from engine.store.sqlite.common import AUDIT_INSERT, flat, values
from engine.store.sqlite.core import SQLiteCore
from engine.store.sqlite.lanes import advance_lane


class SQLiteDelivery(SQLiteCore):
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
            if rows:  # one statement each for all of them (see processing.py: _apply_processed)
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

    # A destination's connection slots: one process owns this file, so they live in memory,
    # with the same rules as on PostgreSQL.
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


def _apply_delivered(conn: sqlite3.Connection, records: list[AttemptRecord]) -> None:
    """What _apply_attempt does for each record, for a group where every message was
    delivered (each in its own lane, MSH-10 known), in a fixed number of statements: the
    steps on the writer are what costs (see processing.py: _apply_processed)."""
    keyed = [(i, r.message_id, r.lane_id, r.fence) for i, r in enumerate(records)]
    # which exist, which are still ours (fence and head), whose next live message is dead
    (found,) = conn.execute(
        "SELECT json_group_array(json_array(v.column1,"
        " l.fence = v.column4 AND l.head_id = v.column2,"
        " (SELECT n.status FROM outbound n WHERE n.lane_id = v.column3 AND n.id > v.column2"
        "  AND n.status IN ('queued', 'dead') ORDER BY n.id LIMIT 1) IS 'dead'))"
        f" FROM ({values(keyed)}) AS v JOIN lanes l ON l.id = v.column3"
        " JOIN outbound o ON o.id = v.column2",
        flat(keyed),
    ).fetchone()
    checks = sorted(json.loads(found))
    if not checks:
        return
    attempts = [(r.message_id, r.at, r.control_id, r.outcome, r.ack_code, r.ack, r.detail)
                for r in (records[i] for i, _, _ in checks)]
    conn.execute("INSERT INTO attempts (message_id, at, control_id, outcome, ack_code, ack,"
                 f" detail) {values(attempts)}", flat(attempts))
    ours = [records[i] for i, still_ours, _ in checks if still_ours]
    if not ours:
        return  # every claim was taken over (leases lapsed): the new owners decide
    acked = [(r.message_id, r.ack_code, r.at) for r in ours]
    conn.execute(
        "UPDATE outbound SET status = 'acked', attempts = attempts + 1, ack_code = v.column2,"
        f" acked_at = v.column3, last_error = NULL FROM ({values(acked)}) AS v"
        " WHERE outbound.id = v.column1",
        flat(acked),
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
            f"  FROM ({values(advance)}) AS v) AS n WHERE lanes.id = n.lane_id",
            flat(advance),
        )
    for r in ours:  # a message born dead next in its lane (rare): the lane logic as ever
        if r.lane_id in dead_next:
            advance_lane(conn, r.lane_id, r.message_id, r.at)
    sent = [(n, r.message_id, r.at, r.control_id, r.ack_code) for n, r in enumerate(ours)]
    conn.execute(
        "INSERT INTO audit (at, kind, appointment_id, actor, trigger, source, detail)"
        " SELECT v.column3, 'sent', o.appointment_id, 'engine', o.message_type, o.destination,"
        " json_object('message', o.id, 'control_id', v.column4, 'channel', o.channel,"
        " 'outcome', 'delivered', 'ack_code', v.column5)"
        f" FROM ({values(sent)}) AS v JOIN outbound o ON o.id = v.column2 ORDER BY v.column1",
        flat(sent),
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
        advance_lane(conn, rec.lane_id, rec.message_id, rec.at)
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
            advance_lane(conn, rec.lane_id, rec.message_id, rec.at)
    if rec.outcome == "retry":
        return None
    return (rec.at, "sent", appointment_id, "engine", mtype, destination,
            json.dumps({"message": rec.message_id, "control_id": control_id,
                        "channel": channel, "outcome": rec.outcome,
                        "ack_code": rec.ack_code}, separators=(",", ":")))
