"""Intake on SQLite: a signed webhook stored before it is answered, in the next group commit."""

from __future__ import annotations

import sqlite3

from engine.store.records import AcceptResult, IncomingWebhook
from engine.store.sqlite.core import SQLiteCore


class SQLiteIntake(SQLiteCore):
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

