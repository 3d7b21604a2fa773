"""Inbound on SQLite: the listener's SIU and its Cal.com job, the worker's claims and
outcomes, the no-echo origins, and the reconciliation watermark.

Every method runs on the store's writer thread through `self._call(fn)`, so an inbound SIU is
group-committed with whatever else is waiting (webhooks, outcomes): one fsync for a burst.
Tables: sql/sqlite/0002_inbound.sql, and 0005 (the content digest that tells a resend from a
reused MSH-10).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
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
from engine.store.sqlite.core import SQLiteCore

_J = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class SQLiteInbound(SQLiteCore):
    # adaptive group commit: wait up to this long for as many messages as the last batch had
    inbound_linger_seconds: float = 0.001

    # ------------------------------------------------------------------ listener
    async def accept_inbound(self, msg: InboundMessage) -> InboundAccept:
        """Store the SIU and its Cal.com job in one transaction; a resend is a duplicate.

        Concurrent calls are batched here, in the event loop, into one writer call: while one
        batch is being committed (its fsync), every message that arrives waits for the next
        one, so N senders share one fsync instead of alternating small and large groups."""
        params = _J(msg.job_params) if msg.job_params is not None else None  # off the writer
        digest = content_digest(msg.payload)
        fut: asyncio.Future[InboundAccept] = asyncio.get_running_loop().create_future()
        state = self.__dict__.setdefault("_inbound_batch", {"pending": [], "flushing": False})
        state["pending"].append((msg, params, digest, fut))
        if not state["flushing"]:
            state["flushing"] = True
            asyncio.ensure_future(self._inbound_flush(state))
        return await fut

    async def _inbound_flush(self, state: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        try:
            while state["pending"]:
                await asyncio.sleep(0)  # let the rest of this loop turn's arrivals join
                # N senders in lock-step send N messages per commit: after a batch of N, wait a
                # moment (bounded) for the N-th, so they share one fsync instead of splitting
                # into a batch of 1 and a batch of N-1 every cycle
                want = state.get("last", 1)
                deadline = loop.time() + self.inbound_linger_seconds
                while len(state["pending"]) < want and loop.time() < deadline:
                    await asyncio.sleep(0.0001)
                batch, state["pending"] = state["pending"], []
                state["last"] = len(batch)

                def fn(conn: sqlite3.Connection, batch: list[Any] = batch) -> list[Any]:
                    out: list[Any] = []
                    for msg, params, digest, _ in batch:
                        conn.execute("SAVEPOINT inbound")
                        try:
                            out.append((True, _accept_one(conn, msg, params, digest)))
                        except Exception as exc:  # noqa: BLE001 - that message only
                            conn.execute("ROLLBACK TO inbound")
                            out.append((False, exc))
                        conn.execute("RELEASE inbound")
                    return out

                try:
                    results = await self._call(fn, urgent=True)
                except Exception as exc:  # noqa: BLE001 - the commit failed: nobody is stored
                    results = [(False, exc)] * len(batch)
                for (_, _, _, fut), (ok, value) in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
        finally:
            state["flushing"] = False

    # ------------------------------------------------------------------ worker
    async def inbound_claim_jobs(
        self, limit: int, now: float, lease_seconds: float
    ) -> list[InboundJob]:
        """Heads of their appointment's queue that are due and not in flight; leased."""

        def fn(conn: sqlite3.Connection) -> list[InboundJob]:
            rows = conn.execute(
                "SELECT j.id, j.message_id, j.channel, j.ehr_appointment_id, j.trigger, j.params,"
                " j.attempts, j.lease FROM inbound_jobs j"
                " WHERE j.status = 'queued' AND j.ready_at <= ?"
                " AND (j.lease_until IS NULL OR j.lease_until < ?)"
                " AND NOT EXISTS (SELECT 1 FROM inbound_jobs k WHERE k.status = 'queued'"
                "  AND k.channel = j.channel AND k.ehr_appointment_id = j.ehr_appointment_id"
                "  AND k.id < j.id)"
                " ORDER BY j.id LIMIT ?",
                (now, now, limit),
            ).fetchall()
            out = []
            for jid, mid, channel, appt, trigger, params, attempts, lease in rows:
                conn.execute(
                    "UPDATE inbound_jobs SET lease = ?, lease_until = ? WHERE id = ?",
                    (lease + 1, now + lease_seconds, jid),
                )
                out.append(InboundJob(jid, mid, channel, appt, trigger, json.loads(params),
                                      attempts, lease + 1, _held(conn, channel, appt)))
            return out

        return await self._call(fn)

    async def inbound_finish_jobs(self, outcomes: list[JobOutcome]) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            for o in outcomes:
                row = conn.execute(
                    "SELECT lease, status, channel, ehr_appointment_id FROM inbound_jobs"
                    " WHERE id = ?", (o.job_id,),
                ).fetchone()
                if row is None or row[0] != o.lease or row[1] != "queued":
                    continue  # our claim lapsed and someone else owns it now
                _, _, channel, appt = row
                # the uids first: they are what Cal.com already did, whatever the job's fate
                for u in o.uids:
                    conn.execute(
                        "INSERT INTO inbound_uids (uid, channel, ehr_appointment_id,"
                        " previous_uid, status, created_at) VALUES (?,?,?,?,?,?)"
                        " ON CONFLICT (uid) DO UPDATE SET status = excluded.status",
                        (u.uid, channel, appt, u.previous_uid, u.status, o.at),
                    )
                if o.held is not None:
                    h = o.held
                    conn.execute(
                        "INSERT INTO inbound_blocks (channel, ehr_appointment_id, current_uid,"
                        " status, start_at, end_at, provider_id, event_type_id, updated_at)"
                        " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (channel, ehr_appointment_id)"
                        " DO UPDATE SET current_uid = excluded.current_uid,"
                        " status = excluded.status, start_at = excluded.start_at,"
                        " end_at = excluded.end_at, provider_id = excluded.provider_id,"
                        " event_type_id = excluded.event_type_id,"
                        " updated_at = excluded.updated_at",
                        (channel, appt, h.current_uid, h.status, h.start, h.end, h.provider_id,
                         h.event_type_id, o.at),
                    )
                result = _J(o.result) if o.result is not None else None
                if o.outcome == "retry":
                    conn.execute(
                        "UPDATE inbound_jobs SET attempts = attempts + 1, ready_at = ?,"
                        " lease_until = NULL, last_error = ? WHERE id = ?",
                        (o.next_attempt_at or o.at, o.detail, o.job_id),
                    )
                else:
                    conn.execute(
                        "UPDATE inbound_jobs SET status = ?, attempts = attempts + 1,"
                        " lease_until = NULL, last_error = ?, result = ?, done_at = ? WHERE id = ?",
                        ("done" if o.outcome == "done" else "dead", o.detail, result, o.at,
                         o.job_id),
                    )

        await self._call(fn)

    async def inbound_release_all_leases(self) -> None:
        """Single node, at start: jobs in flight when we died run again (each step checks
        Cal.com first on a retry, so nothing is booked twice)."""
        await self._call(lambda c: c.execute(
            "UPDATE inbound_jobs SET lease_until = NULL, attempts = MAX(attempts, 1)"
            " WHERE status = 'queued' AND lease_until IS NOT NULL"))

    async def inbound_next_ready_at(self) -> float | None:
        return await self._call(lambda c: c.execute(
            "SELECT MIN(COALESCE(lease_until, ready_at)) FROM inbound_jobs WHERE status = 'queued'"
        ).fetchone()[0])

    # ------------------------------------------------------------------ no echo
    async def inbound_origins(self, uids: list[str]) -> dict[str, str]:
        """booking uid -> inbound channel (EHR) whose SIU made it; only uids we created.
        Asked on every processing batch: a read, never waiting for a commit."""
        return await self._read(lambda c: read_inbound_origins(c, uids))

    # ------------------------------------------------------------------ held blocks
    async def inbound_block(self, channel: str, ehr_appointment_id: str) -> HeldBlock | None:
        return await self._call(lambda c: _held(c, channel, ehr_appointment_id))

    # ------------------------------------------------------------------ reconciliation
    async def reconcile_watermark(self, source: str) -> datetime | None:
        def fn(conn: sqlite3.Connection) -> datetime | None:
            row = conn.execute(
                "SELECT watermark FROM reconcile_watermarks WHERE source = ?", (source,)
            ).fetchone()
            return datetime.fromisoformat(row[0]) if row else None

        return await self._call(fn)

    async def set_reconcile_watermark(self, source: str, ts: datetime) -> None:
        if ts.tzinfo is None:
            raise ValueError("the watermark must be timezone-aware")
        await self._call(lambda c: c.execute(
            "INSERT INTO reconcile_watermarks (source, watermark, updated_at) VALUES (?,?,?)"
            " ON CONFLICT (source) DO UPDATE SET watermark = excluded.watermark,"
            " updated_at = excluded.updated_at",
            (source, ts.isoformat(), time.time()),
        ))


def _accept_one(conn: sqlite3.Connection, msg: InboundMessage, params: str | None,
                digest: str) -> InboundAccept:
    earlier = conn.execute(
        "SELECT id, ack_code, digest FROM inbound_messages WHERE sender = ? AND control_id = ?"
        " ORDER BY id", (msg.sender, msg.control_id),
    ).fetchall()
    for mid, ack_code, seen in earlier:
        if seen is None or seen == digest:  # NULL: stored before digests, the old rule
            return InboundAccept(mid, True, ack_code)
    cur = conn.execute(
        "INSERT INTO inbound_messages (channel, sender, control_id, trigger,"
        " ehr_appointment_id, payload, ack_code, received_at, digest)"
        " VALUES (?,?,?,?,?,?,?,?,?)",
        (msg.channel, msg.sender, msg.control_id, msg.trigger, msg.ehr_appointment_id,
         msg.payload, msg.ack_code, msg.received_at, digest),
    )
    message_id = cur.lastrowid or 0
    if params is not None:
        conn.execute(
            "INSERT INTO inbound_jobs (message_id, channel, ehr_appointment_id, trigger,"
            " params, status, created_at) VALUES (?,?,?,?,?,'queued',?)",
            (message_id, msg.channel, msg.ehr_appointment_id, msg.trigger, params,
             msg.received_at),
        )
    return InboundAccept(message_id, False, msg.ack_code, reused_id=bool(earlier))


def _held(conn: sqlite3.Connection, channel: str, appt: str) -> HeldBlock | None:
    row = conn.execute(
        "SELECT current_uid, status, start_at, end_at, provider_id, event_type_id"
        " FROM inbound_blocks WHERE channel = ? AND ehr_appointment_id = ?",
        (channel, appt),
    ).fetchone()
    if row is None:
        return None
    return HeldBlock(channel, appt, *row)


def read_inbound_origins(conn: sqlite3.Connection, uids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    wanted = list(dict.fromkeys(u for u in uids if u))
    for i in range(0, len(wanted), 500):
        chunk = wanted[i:i + 500]
        marks = ",".join("?" * len(chunk))
        for uid, channel in conn.execute(
            f"SELECT uid, channel FROM inbound_uids WHERE uid IN ({marks})", chunk
        ):
            out[uid] = channel
    return out
