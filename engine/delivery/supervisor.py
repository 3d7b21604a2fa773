"""One delivery worker per destination, kept running and matched to the configuration.

A worker that fails is restarted; a destination whose settings changed gets a new worker,
which starts only once the old one has stopped (never two senders on one lane).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from engine.aio import sleep_or_stop
from engine.config.destinations import Destination
from engine.delivery.worker import DestinationWorker
from engine.metrics import Metrics
from engine.store.roles import DeliveryStore

log = logging.getLogger("calhl7.app")  # the name operators already filter on


class Supervisor:
    def __init__(
        self,
        store: DeliveryStore,
        metrics: Metrics,
        node_id: str,
        destinations: Callable[[], Mapping[str, Destination]],
        status: dict[str, dict[str, Any]],
        stop: asyncio.Event,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.node_id = node_id
        self.destinations = destinations  # the running configuration's, read at each use
        self.status = status  # per destination, for /readyz
        self.stop = stop  # the engine's: every worker ends with it
        self.workers: dict[str, tuple[DestinationWorker, asyncio.Task[None], asyncio.Event]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # incl. ones being retired

    def sync(self) -> None:
        """Start, stop and replace workers to match the running configuration."""
        wanted = self.destinations()
        retiring: dict[str, asyncio.Task[None]] = {}
        for name in list(self.workers):
            worker, task, stop = self.workers[name]
            if name not in wanted or worker.settings != wanted[name]:
                stop.set()
                retiring[name] = task
                del self.workers[name]
        for name, dest in wanted.items():
            if name in self.workers:
                continue
            stop = asyncio.Event()
            self.metrics.init_destination(name)
            status = self.status.setdefault(name, {})
            worker = DestinationWorker(
                name, self._getter(name), self.store, self.metrics,
                self.node_id, status, settings=dest,
            )
            task = asyncio.create_task(self._run(worker, stop, retiring.get(name)),
                                       name=f"deliver-{name}")
            self.workers[name] = (worker, task, stop)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _getter(self, name: str) -> Callable[[], Destination]:
        return lambda: self.destinations()[name]

    def wake(self, destinations: set[str]) -> None:
        """New messages for these destinations: their workers look now, not at their next poll."""
        for name in destinations:
            entry = self.workers.get(name)
            if entry:
                entry[0].notify()

    def wake_all(self) -> None:
        self.wake(set(self.workers))

    async def drain(self, timeout: float) -> None:
        """Stop every worker; in-flight sends finish and their ACKs commit (up to `timeout`)."""
        for _, _, stop in self.workers.values():
            stop.set()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def _run(self, worker: DestinationWorker, stop: asyncio.Event,
                   predecessor: asyncio.Task[None] | None = None) -> None:
        if predecessor is not None:
            await asyncio.wait([predecessor])
        both = asyncio.Event()

        async def relay() -> None:
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.stop.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            both.set()

        relay_task = asyncio.create_task(relay())
        while not both.is_set():
            try:
                await worker.run(both)
            except Exception:  # noqa: BLE001 - a worker must never die quietly
                log.exception("delivery worker failed; restarting", extra={
                    "destination": worker.name})
                await sleep_or_stop(both, 1.0)
        relay_task.cancel()
