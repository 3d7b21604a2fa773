"""Inbound on PostgreSQL: the listener's SIU and its Cal.com job, the worker's claims and
outcomes, the no-echo origins, and the reconciliation watermark. Several nodes may run inbound
workers on one database: job heads are claimed with `FOR UPDATE SKIP LOCKED` and a lease, and
an outcome only counts while the job's lease number is the one the worker claimed (a node
whose lease lapsed decides nothing). Tables: sql/postgres/0002_inbound.sql, and 0005 (the
content digest that tells a resend from a reused MSH-10).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from engine.store.inbound_records import (
    HeldBlock,
    InboundAccept,
    InboundJob,
    InboundMessage,
    JobOutcome,
    content_digest,
)
from engine.store.postgres.common import pg_text
from engine.store.postgres.core import PostgresCore

_J = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

_CLAIM = """
WITH heads AS (
    SELECT DISTINCT ON (channel, ehr_appointment_id) id
    FROM inbound_jobs WHERE status = 'queued'
    ORDER BY channel, ehr_appointment_id, id
), picked AS (
    SELECT j.id FROM inbound_jobs j JOIN heads h ON h.id = j.id
    WHERE j.ready_at <= $1 AND (j.lease_until IS NULL OR j.lease_until < $1)
    ORDER BY j.id LIMIT $2
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE inbound_jobs j SET lease = j.lease + 1, lease_until = $1::float8 + $3::float8
FROM picked WHERE j.id = picked.id
RETURNING j.id, j.message_id, j.channel, j.ehr_appointment_id, j.trigger, j.params,
          j.attempts, j.lease
"""

# The common case in one round trip: stored unless the sender already sent this MSH-10 with
# this content (or before digests existed: any content); RETURNING sees the table as it was
# before the insert, so it says whether the MSH-10 had been used for other content. A
# resend (nothing inserted) is then read back by _SAME.
_ACCEPT = """
INSERT INTO inbound_messages (channel, sender, control_id, trigger, ehr_appointment_id, payload,
                              ack_code, received_at, digest)
SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::bytea, $7::text, $8::float8,
       $9::text
WHERE NOT EXISTS (SELECT 1 FROM inbound_messages WHERE sender = $2 AND control_id = $3
                  AND (digest = $9 OR digest IS NULL))
ON CONFLICT (sender, control_id, digest) DO NOTHING
RETURNING id, EXISTS (SELECT 1 FROM inbound_messages e WHERE e.sender = $2
                      AND e.control_id = $3)
"""
_SAME = ("SELECT id, ack_code FROM inbound_messages WHERE sender = $1 AND control_id = $2"
         " AND (digest = $3 OR digest IS NULL) ORDER BY id LIMIT 1")

_HELD = ("SELECT current_uid, status, start_at, end_at, provider_id, event_type_id"
         " FROM inbound_blocks WHERE channel = $1 AND ehr_appointment_id = $2")


class PostgresInbound(PostgresCore):

    # ------------------------------------------------------------------ listener
    async def accept_inbound(self, msg: InboundMessage) -> InboundAccept:
        digest = content_digest(msg.payload)

        async def fn(conn: Any) -> InboundAccept:
            row = await conn.fetchrow(
                _ACCEPT, msg.channel, pg_text(msg.sender), pg_text(msg.control_id),
                pg_text(msg.trigger), pg_text(msg.ehr_appointment_id), msg.payload,
                msg.ack_code, msg.received_at, digest)
            if row is None:
                same = await conn.fetchrow(_SAME, pg_text(msg.sender), pg_text(msg.control_id),
                                           digest)
                if same is None:  # the same message from another node, not committed yet
                    raise _Retry()
                return InboundAccept(same[0], True, same[1])
            new_id, earlier = row
            if msg.job_params is not None:
                await conn.execute(
                    "INSERT INTO inbound_jobs (message_id, channel, ehr_appointment_id, trigger,"
                    " params, status, created_at) VALUES ($1,$2,$3,$4,$5,'queued',$6)",
                    new_id, msg.channel, pg_text(msg.ehr_appointment_id), pg_text(msg.trigger),
                    _J(msg.job_params), msg.received_at)
            return InboundAccept(new_id, False, msg.ack_code, reused_id=earlier)

        for _ in range(20):
            try:
                return await self._tx(fn)
            except _Retry:
                continue
        raise RuntimeError("duplicate inbound message could not be read back")

    # ------------------------------------------------------------------ worker
    async def inbound_claim_jobs(
        self, limit: int, now: float, lease_seconds: float
    ) -> list[InboundJob]:
        async def fn(conn: Any) -> list[InboundJob]:
            rows = await conn.fetch(_CLAIM, now, limit, lease_seconds)
            out = []
            for r in sorted(rows, key=lambda r: r[0]):
                held = await conn.fetchrow(_HELD, r[2], r[3])
                out.append(InboundJob(
                    r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7],
                    HeldBlock(r[2], r[3], *held) if held else None))
            return out

        return await self._tx(fn)

    async def inbound_finish_jobs(self, outcomes: list[JobOutcome]) -> None:
        async def fn(conn: Any) -> None:
            for o in outcomes:
                row = await conn.fetchrow(
                    "SELECT lease, status, channel, ehr_appointment_id FROM inbound_jobs"
                    " WHERE id = $1 FOR UPDATE", o.job_id)
                if row is None or row[0] != o.lease or row[1] != "queued":
                    continue
                channel, appt = row[2], row[3]
                for u in o.uids:
                    await conn.execute(
                        "INSERT INTO inbound_uids (uid, channel, ehr_appointment_id,"
                        " previous_uid, status, created_at) VALUES ($1,$2,$3,$4,$5,$6)"
                        " ON CONFLICT (uid) DO UPDATE SET status = excluded.status",
                        u.uid, channel, appt, u.previous_uid, u.status, o.at)
                if o.held is not None:
                    h = o.held
                    await conn.execute(
                        "INSERT INTO inbound_blocks (channel, ehr_appointment_id, current_uid,"
                        " status, start_at, end_at, provider_id, event_type_id, updated_at)"
                        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)"
                        " ON CONFLICT (channel, ehr_appointment_id) DO UPDATE SET"
                        " current_uid = excluded.current_uid, status = excluded.status,"
                        " start_at = excluded.start_at, end_at = excluded.end_at,"
                        " provider_id = excluded.provider_id,"
                        " event_type_id = excluded.event_type_id,"
                        " updated_at = excluded.updated_at",
                        channel, appt, h.current_uid, h.status, h.start, h.end, h.provider_id,
                        h.event_type_id, o.at)
                if o.outcome == "retry":
                    await conn.execute(
                        "UPDATE inbound_jobs SET attempts = attempts + 1, ready_at = $2,"
                        " lease_until = NULL, last_error = $3 WHERE id = $1",
                        o.job_id, o.next_attempt_at or o.at, pg_text(o.detail))
                else:
                    await conn.execute(
                        "UPDATE inbound_jobs SET status = $2, attempts = attempts + 1,"
                        " lease_until = NULL, last_error = $3, result = $4, done_at = $5"
                        " WHERE id = $1",
                        o.job_id, "done" if o.outcome == "done" else "dead", pg_text(o.detail),
                        _J(o.result) if o.result is not None else None, o.at)

        await self._tx(fn)

    async def inbound_next_ready_at(self) -> float | None:
        async with self._p().acquire() as conn:
            return await conn.fetchval(
                "SELECT MIN(COALESCE(lease_until, ready_at)) FROM inbound_jobs"
                " WHERE status = 'queued'")

    # ------------------------------------------------------------------ no echo
    async def inbound_origins(self, uids: list[str]) -> dict[str, str]:
        wanted = list(dict.fromkeys(pg_text(u) for u in uids if u))
        if not wanted:
            return {}
        async with self._p().acquire() as conn:
            rows = await conn.fetch(
                "SELECT uid, channel FROM inbound_uids WHERE uid = ANY($1::text[])", wanted)
        return {r[0]: r[1] for r in rows}

    # ------------------------------------------------------------------ held blocks
    async def inbound_block(self, channel: str, ehr_appointment_id: str) -> HeldBlock | None:
        async with self._p().acquire() as conn:
            row = await conn.fetchrow(_HELD, channel, ehr_appointment_id)
        return HeldBlock(channel, ehr_appointment_id, *row) if row else None

    # ------------------------------------------------------------------ reconciliation
    async def reconcile_watermark(self, source: str) -> datetime | None:
        async with self._p().acquire() as conn:
            value = await conn.fetchval(
                "SELECT watermark FROM reconcile_watermarks WHERE source = $1", source)
        return datetime.fromisoformat(value) if value else None

    async def set_reconcile_watermark(self, source: str, ts: datetime) -> None:
        if ts.tzinfo is None:
            raise ValueError("the watermark must be timezone-aware")
        async with self._p().acquire() as conn:
            await conn.execute(
                "INSERT INTO reconcile_watermarks (source, watermark, updated_at)"
                " VALUES ($1,$2,$3) ON CONFLICT (source) DO UPDATE SET"
                " watermark = excluded.watermark, updated_at = excluded.updated_at",
                source, ts.isoformat(), time.time())


class _Retry(Exception):
    pass
