"""What each node does on a timer: refresh the queue gauges from the store, and beat its
heartbeat so operators see which nodes are alive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from engine.aio import sleep_or_stop
from engine.metrics import Metrics
from engine.store.roles import ClusterStore, OperatorStore

log = logging.getLogger("calhl7.app")  # the name operators already filter on


async def refresh_gauges(store: OperatorStore, metrics: Metrics,
                         destinations: Iterable[str]) -> None:
    """Queue gauges from the store: right after a restart, and the same on every node."""
    summary = await store.queue_summary(time.time())
    metrics.set_queue_gauges(summary, destinations, await store.quarantined_count())


async def keep_gauges(refresh: Callable[[], Awaitable[None]], stop: asyncio.Event,
                      interval: float = 2.0) -> None:
    while not stop.is_set():
        try:
            await refresh()
        except Exception as exc:  # noqa: BLE001 - readiness reports the store; keep trying
            log.warning("gauge refresh failed", extra={"error": type(exc).__name__})
        await sleep_or_stop(stop, interval)


async def heartbeat(store: ClusterStore, node_id: str, stop: asyncio.Event,
                    interval: float) -> None:
    """Several nodes on PostgreSQL: operators see who is alive (a no-op on SQLite)."""
    while not stop.is_set():
        with contextlib.suppress(Exception):
            await store.heartbeat(node_id, time.time())
        await sleep_or_stop(stop, interval)
