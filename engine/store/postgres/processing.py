"""Processing on PostgreSQL: the pending events and what they build on, and a batch's
results committed in one transaction. Only events still pending are marked, and the batch
fails whole otherwise (`NotPending`): a node whose lead lapsed mid-batch cannot queue a second
set of messages. The commit NOTIFYs each destination that got messages."""

from __future__ import annotations

import time
from typing import Any

import asyncpg

from engine.store import records
from engine.store.postgres.common import (
    AUDIT_INSERT_MANY,
    NOTIFY_CHANNEL,
    columns,
    pg_json,
    pg_text,
)
from engine.store.postgres.core import PostgresCore, rowcount
from engine.store.postgres.lanes import advance_lanes
from engine.store.records import NewMessage, ProcessedEvent, StoredEvent

# commit_processed for an event that is no longer pending: another node processed it (its
# leadership lapsed while it worked, or ours did). Nothing of the batch is kept.
NotPending = records.NotPending


class PostgresProcessing(PostgresCore):
    async def pending_events(self, limit: int, after_id: int = 0) -> list[StoredEvent]:
        return await self.events(records.PENDING, limit, after_id)

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
            if rowcount(status) != len(marks):
                raise NotPending(f"{len(marks) - rowcount(status)} of {len(marks)} events"
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
                await conn.execute(AUDIT_INSERT_MANY, *columns(audit, 7))
            wake = sorted({pg_text(m.destination) for r in results for m in r.messages
                           if not m.error})
            if wake:  # delivered to listeners when this transaction commits
                await conn.execute(
                    "SELECT pg_notify($1, d) FROM unnest($2::text[]) AS d", NOTIFY_CHANNEL, wake
                )

        await self._tx(fn)



def _audit_row(a: records.AuditEntry) -> tuple[Any, ...]:
    return (a.at, a.kind, pg_text(a.appointment_id), pg_text(a.actor), pg_text(a.trigger),
            pg_text(a.source), pg_json(a.detail))



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
            records.DEAD if m.error else records.QUEUED, m.hold_lane, pg_text(m.error), accepted_at,
            correlation_id,
        ))
    await conn.execute(
        "INSERT INTO outbound (id, lane_id, event_id, channel, destination, appointment_id,"
        " message_type, control_id, payload, event_json, status, hold_lane, last_error,"
        " accepted_at, correlation_id, created_at)"
        " SELECT *, $16 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[],"
        " $5::text[], $6::text[], $7::text[], $8::text[], $9::bytea[], $10::text[], $11::text[],"
        " $12::bool[], $13::text[], $14::float8[], $15::text[])",
        *columns(rows, 15), now,
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
        await advance_lanes(conn, [(lane, mid - 1) for lane, mid in first_new.items()], now)


