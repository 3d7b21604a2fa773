"""The operators' queries and actions on SQLite: named queries (sql/sqlite/queries.sql) read
into the typed rows of store/queries.py; the actions run on the writer like everything else.
Reads go through the reader connection and never wait for a commit."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from engine.store import records, requeue
from engine.store.queries import (
    AttemptRow,
    AuditRow,
    DeadLetterRow,
    DestinationDepth,
    InboundJobRow,
    LaneRow,
    MessageRow,
    Queries,
    counts,
    inbound_counts,
    queue_summary,
)
from engine.store.records import StoredEvent
from engine.store.sqlite.common import audit_operator, read_events
from engine.store.sqlite.core import SQLiteCore
from engine.store.sqlite.lanes import advance_lane, requeue_in_lane

Q = Queries("sqlite")


class SQLiteOperator(SQLiteCore):
    # ------------------------------------------------------------------ outbound
    async def queue_summary(self, now: float) -> list[dict[str, Any]]:
        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            depths = DestinationDepth.all(conn.execute(Q.queue_depths))
            held = dict(conn.execute(Q.held_lanes).fetchall())
            return queue_summary(depths, held, now)

        return await self._read(fn)

    async def lanes(self, destination: str | None, limit: int) -> list[dict[str, Any]]:
        return await self._read(lambda c: [
            r.as_dict() for r in LaneRow.all(c.execute(Q.lanes, (destination, limit)))])

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        return await self._read(lambda c: [
            r.as_dict() for r in DeadLetterRow.all(c.execute(Q.dead_letters, (limit,)))])

    async def message(self, message_id: int) -> dict[str, Any] | None:
        def fn(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(Q.message, (message_id,)).fetchone()
            if row is None:
                return None
            msg = MessageRow.of(row)
            msg.attempt_log = AttemptRow.all(conn.execute(Q.message_attempts, (message_id,)))
            return msg.as_dict()

        return await self._read(fn)

    async def resend(self, message_id: int, who: str, *, force: bool = False) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            facts = _requeue_facts(conn, message_id)
            if facts is None:
                return False
            message, later, lane_id, appointment_id = facts
            detail: dict[str, Any] = {"message": message_id}
            if message.status == records.QUEUED:  # it goes in its turn anyway: no back-off
                conn.execute(Q.lane_ready_now, (lane_id,))
            else:
                passed = requeue.check_resend(message, later, time.time(), force)
                if passed:
                    detail["forced_after"] = [h.message_id for h in passed]
                conn.execute(Q.requeue_message, (message_id,))
                requeue_in_lane(conn, lane_id, message_id)
            audit_operator(conn, "resend", who, appointment_id, detail)
            return True

        return await self._call(fn)

    async def replace_payload(
        self, message_id: int, control_id: str, payload: bytes, who: str, *,
        force: bool = False,
    ) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            facts = _requeue_facts(conn, message_id)
            if facts is None or facts[0].status == records.ACKED:
                return False  # acknowledged meanwhile: a new MSH-10 would be a duplicate
            message, later, lane_id, appointment_id = facts
            passed = requeue.check_reprocess(message, later, time.time(), force)
            conn.execute(Q.replace_payload, (control_id, payload, message_id))
            requeue_in_lane(conn, lane_id, message_id)
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
            row = conn.execute(Q.held_lane_head, (lane_id,)).fetchone()
            if row is None:
                return False
            head_id, _status, appointment_id = row
            conn.execute(Q.skip_message, (head_id,))
            advance_lane(conn, lane_id, head_id, time.time())
            audit_operator(
                conn, "release", who, appointment_id, {"lane": lane_id, "message": head_id}
            )
            return True

        return await self._call(fn)

    async def set_channel_paused(self, channel: str, paused: bool, who: str) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            if paused:
                conn.execute(Q.pause_channel, (channel, who, time.time()))
            else:
                conn.execute(Q.resume_channel, (channel,))
            audit_operator(conn, "pause" if paused else "resume", who, None, {"channel": channel})

        await self._call(fn)

    async def paused_channels(self) -> set[str]:
        return await self._read(lambda c: {r[0] for r in c.execute(Q.paused_channels)})

    # ------------------------------------------------------------------ received events
    async def events(self, state: str, limit: int) -> list[StoredEvent]:
        return await self._call(lambda c: read_events(c, state, limit))

    async def requeue_event(self, event_id: int, who: str) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(Q.requeue_quarantined_event, (event_id,))
            if cur.rowcount:
                audit_operator(conn, "reprocess_event", who, None, {"event": event_id})
            return cur.rowcount == 1

        return await self._call(fn)

    async def quarantined_count(self) -> int:
        return await self._read(lambda c: c.execute(Q.quarantined_count).fetchone()[0])

    # ------------------------------------------------------------------ audit, counts
    async def audit(
        self, appointment_id: str | None, since: float | None, limit: int
    ) -> list[dict[str, Any]]:
        return await self._read(lambda c: [
            r.as_dict() for r in AuditRow.all(c.execute(Q.audit, (appointment_id, since, limit)))
        ])

    async def counts(self) -> dict[str, int]:
        return await self._read(
            lambda c: counts(c.execute(Q.event_counts), c.execute(Q.message_counts)))

    # ------------------------------------------------------------------ inbound jobs
    async def inbound_jobs(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        return await self._call(lambda c: [
            r.as_dict() for r in InboundJobRow.all(c.execute(Q.inbound_jobs, (status, limit)))
        ])

    async def inbound_retry_job(self, job_id: int, who: str) -> bool:
        """Put a dead job back at the head of its appointment's queue."""

        def fn(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(Q.retry_inbound_job, (job_id,))
            if cur.rowcount:
                audit_operator(conn, "inbound_retry", who, None, {"inbound_job": job_id})
            return cur.rowcount == 1

        return await self._call(fn)

    async def inbound_counts(self) -> dict[str, int]:
        return await self._call(lambda c: inbound_counts(
            c.execute(Q.inbound_job_counts), c.execute(Q.inbound_message_count).fetchone()[0]))


def _requeue_facts(
    conn: sqlite3.Connection, message_id: int
) -> tuple[requeue.MessageFacts, list[requeue.MessageFacts], int, str] | None:
    """A message, the later messages of its appointment to its destination, and their sends:
    what an operator's resend or reprocess is checked against (see store/requeue.py)."""
    row = conn.execute(Q.message_place, (message_id,)).fetchone()
    if row is None:
        return None
    lane_id, destination, appointment_id = row
    rows = conn.execute(Q.appointment_messages_from,
                        (destination, appointment_id, message_id)).fetchall()
    sends: dict[int, list[requeue.Send]] = {}
    for mid, control_id, at, outcome, ack in conn.execute(
        Q.sends_of, (json.dumps([r[0] for r in rows]),)
    ):
        sends.setdefault(mid, []).append(requeue.Send(control_id, at, outcome, ack))
    facts = [requeue.MessageFacts(mid, mtype, cid, status, acked_at, owner,
                                  lease if owner else None, tuple(sends.get(mid, ())))
             for mid, mtype, cid, status, acked_at, owner, lease in rows]
    return facts[0], facts[1:], lane_id, appointment_id

