"""Delivery on PostgreSQL: lanes are claimed with `FOR UPDATE SKIP LOCKED` and a lease; the
lane's fence is bumped at every claim and an outcome only counts while its fence is current
(a node whose lease lapsed decides nothing); every statement that changes a lane locks its
row first. `record_attempts` is one round trip (calhl7_record_attempt in
sql/postgres/0001_initial.sql). A destination's connection limit holds for the cluster
(`destination_slots`, leased)."""

from __future__ import annotations

import asyncio
import random

from engine.store.postgres.common import pg_text
from engine.store.postgres.core import RETRYABLE, TX_ATTEMPTS, PostgresCore, rowcount
from engine.store.records import AttemptRecord, QueuedMessage

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



class PostgresDelivery(PostgresCore):
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
        for attempt in range(1, TX_ATTEMPTS + 1):
            try:
                async with self._p().acquire() as conn:
                    await conn.executemany(_RECORD, rows)  # atomic: all or nothing
                return
            except RETRYABLE:
                if attempt == TX_ATTEMPTS:
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
        return rowcount(status) == 1

    async def release_slot(self, destination: str, slot: int, owner: str) -> None:
        await self._p().execute(
            "UPDATE destination_slots SET owner = NULL, lease_until = NULL"
            " WHERE destination = $1 AND slot = $2 AND owner = $3",
            pg_text(destination), slot, pg_text(owner),
        )
