"""What several nodes on one database add: LISTEN for the destinations other nodes queued
to, processing leadership (a session advisory lock on a dedicated connection, so only one
node normalizes at a time), and a heartbeat operators see. Nothing releases other nodes'
claims at start: the leases of a dead node expire and its lanes are taken over."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from engine.store.postgres.common import NOTIFY_CHANNEL, pg_text
from engine.store.postgres.core import CONNECTION_ERRORS, PostgresCore, log


class PostgresCluster(PostgresCore):
    async def heartbeat(self, node_id: str, now: float) -> None:
        """This node is alive (operators see the cluster in `nodes()`)."""
        await self._p().execute(
            "INSERT INTO nodes (node_id, started_at, last_seen) VALUES ($1, $2, $2)"
            " ON CONFLICT (node_id) DO UPDATE SET last_seen = excluded.last_seen",
            pg_text(node_id), now,
        )

    async def nodes(self) -> list[dict[str, Any]]:
        rows = await self._p().fetch(
            "SELECT node_id, started_at, last_seen FROM nodes ORDER BY node_id"
        )
        return [dict(r) for r in rows]

    async def listen(self, callback: Callable[[str], None]) -> None:
        """Call `callback(destination)` whenever a node queued messages for a destination.

        Returns once LISTEN is active; a dedicated connection keeps listening (and reconnects)
        until `close()`. Notifications sent while it was reconnecting are lost, which is why
        delivery workers still poll."""
        self._p()
        self._listeners.append(callback)
        async with self._listen_lock:
            if self._listen_conn is None or self._listen_conn.is_closed():
                await self._connect_listener()

    async def _connect_listener(self) -> None:
        conn = await self._connect("calhl7-listen")
        try:
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._on_listener_lost)
        self._listen_conn = conn

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        for callback in list(self._listeners):
            try:
                callback(payload)
            except Exception as exc:  # noqa: BLE001 - one listener must not stop the others
                log.error("outbound listener failed", extra={"error": type(exc).__name__})

    def _on_listener_lost(self, conn: object) -> None:
        if self._closing or conn is not self._listen_conn:
            return
        self._listen_conn = None
        log.warning("LISTEN connection lost; reconnecting")
        self._spawn(self._relisten(), "calhl7-relisten")

    async def _relisten(self) -> None:
        delay = 0.2
        while not self._closing:
            async with self._listen_lock:
                if self._listen_conn is not None and not self._listen_conn.is_closed():
                    return
                try:
                    await self._connect_listener()
                    return
                except CONNECTION_ERRORS:
                    pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def try_lead(self, node_id: str) -> bool:
        """True while this node holds processing leadership (a session advisory lock on a
        dedicated connection: it ends with that connection, so a dead node's lead passes on).
        Call it before every processing batch."""
        async with self._lead_lock:
            conn = self._lead_conn
            try:
                if conn is None or conn.is_closed():
                    self._leading = False
                    conn = self._lead_conn = await self._connect("calhl7-lead")
                if self._leading:
                    await conn.fetchval("SELECT 1", timeout=10)  # the session, so the lock, lives
                    return True
                self._leading = bool(
                    await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lead_key,
                                        timeout=10)
                )
                if self._leading:
                    log.info("processing leadership taken", extra={"node": node_id})
                return self._leading
            except CONNECTION_ERRORS:
                self._leading = False
                if conn is not None:
                    conn.terminate()
                self._lead_conn = None
                return False


    async def recover_single_node(self) -> None:
        """Nothing: other nodes may hold claims; a dead node's leases expire instead."""
