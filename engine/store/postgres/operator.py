"""The operators' queries and actions on PostgreSQL: named queries (sql/postgres/queries.sql)
read into the typed rows of store/queries.py. Every action that changes a lane locks it
first, like everything else that does."""

from __future__ import annotations

import time
from typing import Any

import asyncpg

from engine.store import records, requeue
from engine.store.postgres.common import audit_operator, pg_text
from engine.store.postgres.core import PostgresCore, rowcount
from engine.store.postgres.lanes import advance_lanes, lock_lane, requeue_in_lane
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

Q = Queries("postgres")


class PostgresOperator(PostgresCore):
    # ------------------------------------------------------------------ outbound
    async def queue_summary(self, now: float) -> list[dict[str, Any]]:
        pool = self._p()
        depths = DestinationDepth.all(await pool.fetch(Q.queue_depths))
        held = {r[0]: r[1] for r in await pool.fetch(Q.held_lanes)}
        return queue_summary(depths, held, now)

    async def lanes(self, destination: str | None, limit: int) -> list[dict[str, Any]]:
        if destination is None:
            rows = await self._p().fetch(Q.lanes, limit)
        else:
            rows = await self._p().fetch(Q.lanes_of_destination, limit, pg_text(destination))
        return [r.as_dict() for r in LaneRow.all(rows)]

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        return [r.as_dict() for r in DeadLetterRow.all(await self._p().fetch(Q.dead_letters,
                                                                             limit))]

    async def message(self, message_id: int) -> dict[str, Any] | None:
        async with self._p().acquire() as conn:
            row = await conn.fetchrow(Q.message, message_id)
            if row is None:
                return None
            msg = MessageRow.of(row)
            msg.attempt_log = AttemptRow.all(await conn.fetch(Q.message_attempts, message_id))
        return msg.as_dict()

    async def resend(self, message_id: int, who: str, *, force: bool = False) -> bool:
        async def fn(conn: asyncpg.Connection) -> bool:
            facts = await _requeue_facts(conn, message_id)
            if facts is None:
                return False
            message, later, lane_id, appointment_id = facts
            detail: dict[str, Any] = {"message": message_id}
            if message.status == records.QUEUED:  # it goes in its turn anyway: no back-off
                await conn.execute(Q.lane_ready_now, lane_id)
            else:
                passed = requeue.check_resend(message, later, time.time(), force)
                if passed:
                    detail["forced_after"] = [h.message_id for h in passed]
                await conn.execute(Q.requeue_message, message_id)
                await requeue_in_lane(conn, lane_id, message_id)
            await audit_operator(conn, "resend", who, appointment_id, detail)
            return True

        return await self._tx(fn)

    async def replace_payload(
        self, message_id: int, control_id: str, payload: bytes, who: str, *,
        force: bool = False,
    ) -> bool:
        async def fn(conn: asyncpg.Connection) -> bool:
            facts = await _requeue_facts(conn, message_id)
            if facts is None or facts[0].status == records.ACKED:
                return False  # acknowledged meanwhile: a new MSH-10 would be a duplicate
            message, later, lane_id, appointment_id = facts
            passed = requeue.check_reprocess(message, later, time.time(), force)
            await conn.execute(Q.replace_payload, message_id, pg_text(control_id), payload)
            await requeue_in_lane(conn, lane_id, message_id)
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
            await lock_lane(conn, lane_id)
            row = await conn.fetchrow(Q.held_lane_head, lane_id)
            if row is None:
                return False
            head_id, appointment_id = row
            await conn.execute(Q.skip_message, head_id)
            await advance_lanes(conn, [(lane_id, head_id)], time.time())
            await audit_operator(
                conn, "release", who, appointment_id, {"lane": lane_id, "message": head_id}
            )
            return True

        return await self._tx(fn)

    async def set_channel_paused(self, channel: str, paused: bool, who: str) -> None:
        async def fn(conn: asyncpg.Connection) -> None:
            if paused:
                await conn.execute(Q.pause_channel, pg_text(channel), pg_text(who), time.time())
            else:
                await conn.execute(Q.resume_channel, pg_text(channel))
            await audit_operator(conn, "pause" if paused else "resume", who, None,
                                 {"channel": channel})

        await self._tx(fn)

    async def paused_channels(self) -> set[str]:
        return {r[0] for r in await self._p().fetch(Q.paused_channels)}

    # ------------------------------------------------------------------ received events
    async def requeue_event(self, event_id: int, who: str) -> bool:
        async def fn(conn: asyncpg.Connection) -> bool:
            status = await conn.execute(Q.requeue_quarantined_event, event_id)
            if rowcount(status):
                await audit_operator(conn, "reprocess_event", who, None, {"event": event_id})
            return rowcount(status) == 1

        return await self._tx(fn)

    async def quarantined_count(self) -> int:
        return await self._p().fetchval(Q.quarantined_count)

    # ------------------------------------------------------------------ audit, counts
    async def audit(
        self, appointment_id: str | None, since: float | None, limit: int
    ) -> list[dict[str, Any]]:
        rows = await self._p().fetch(Q.audit, limit, pg_text(appointment_id), since)
        return [r.as_dict() for r in AuditRow.all(rows)]

    async def counts(self) -> dict[str, int]:
        async with self._p().acquire() as conn:
            return counts(await conn.fetch(Q.event_counts), await conn.fetch(Q.message_counts))

    # ------------------------------------------------------------------ inbound jobs
    async def inbound_jobs(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        async with self._p().acquire() as conn:
            rows = await conn.fetch(Q.inbound_jobs, status, limit)
        return [r.as_dict() for r in InboundJobRow.all(rows)]

    async def inbound_retry_job(self, job_id: int, who: str) -> bool:
        """Put a dead job back at the head of its appointment's queue."""

        async def fn(conn: asyncpg.Connection) -> bool:
            changed = rowcount(await conn.execute(Q.retry_inbound_job, job_id)) == 1
            if changed:
                await audit_operator(conn, "inbound_retry", who, None, {"inbound_job": job_id})
            return changed

        return await self._tx(fn)

    async def inbound_counts(self) -> dict[str, int]:
        async with self._p().acquire() as conn:
            return inbound_counts(await conn.fetch(Q.inbound_job_counts),
                                  await conn.fetchval(Q.inbound_message_count))


async def _requeue_facts(
    conn: asyncpg.Connection, message_id: int
) -> tuple[requeue.MessageFacts, list[requeue.MessageFacts], int, str] | None:
    """A message, the later messages of its appointment to its destination, and their sends:
    what an operator's resend or reprocess is checked against (see store/requeue.py). The
    lanes of those messages are locked, in id order, so no claim or outcome lands meanwhile."""
    row = await conn.fetchrow(Q.message_place, message_id)
    if row is None:
        return None
    lane_id, destination, appointment_id = row
    await conn.execute(Q.lock_appointment_lanes_from, destination, appointment_id, message_id)
    rows = await conn.fetch(Q.appointment_messages_from, destination, appointment_id,
                            message_id)
    sends: dict[int, list[requeue.Send]] = {}
    for a in await conn.fetch(Q.sends_of, [r["id"] for r in rows]):
        sends.setdefault(a["message_id"], []).append(
            requeue.Send(a["control_id"], a["at"], a["outcome"], a["ack"]))
    facts = [requeue.MessageFacts(r["id"], r["message_type"], r["control_id"], r["status"],
                                  r["acked_at"], r["owner"],
                                  r["lease_until"] if r["owner"] else None,
                                  tuple(sends.get(r["id"], ())))
             for r in rows]
    return facts[0], facts[1:], lane_id, appointment_id
