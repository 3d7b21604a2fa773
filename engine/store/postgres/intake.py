"""Intake on PostgreSQL: group commit. Concurrent `accept_webhook` calls queue up while a
flush is in flight and the next flush stores all of them in one statement (one commit, one
round trip); identical bodies from two nodes at once leave one row, the second sees a
duplicate; a statement that lost its connection is tried again (it is idempotent: Cal.com
never retries)."""

from __future__ import annotations

import asyncio

import asyncpg

from engine.store.postgres.common import pg_text
from engine.store.postgres.core import PostgresCore
from engine.store.records import AcceptResult, IncomingWebhook

_MAX_GROUP = 512  # webhooks per intake statement
_INTAKE_FLUSHES = 1  # intake statements in flight at once (more calls wait and group up)
# a batch failing on one bad row: store the others one by one, fail only that one
_ROW_ERRORS = (asyncpg.exceptions.DataError, asyncpg.exceptions.IntegrityConstraintViolationError)
_CONNECTION_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
# the server went away (restart, failover, a killed session): worth another try on a fresh
# connection (asyncpg may report a session killed just before use as an internal client error)
_LOST = (OSError, asyncpg.exceptions.PostgresConnectionError,
         asyncpg.exceptions.OperatorInterventionError, asyncpg.InterfaceError,
         asyncpg.exceptions.InternalClientError)
_INTAKE_ATTEMPTS = 3  # Cal.com never retries: a webhook we fail to store is lost


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


class PostgresIntake(PostgresCore):
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

