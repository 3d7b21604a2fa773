"""The engine's processing loop: reads batches, has the pure core process them (here or in the
helper process), commits the results, pipelined so a batch is computed while the one before
it commits."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool

from engine.aio import sleep_or_stop
from engine.config.outbound import Config
from engine.metrics import Metrics
from engine.processing.core import Batch, BatchResult, process_batch
from engine.processing.helper import (
    HelperBatch,
    HelperRead,
    process_in_worker,
    read_and_process_in_worker,
)
from engine.processing.inputs import gather_inputs
from engine.store import base
from engine.store.base import ProcessedEvent, StoredEvent
from engine.store.roles import BatchReader, ProcessingStore

log = logging.getLogger("calhl7.processing")


class Processor:
    """Reads batches of pending events, has the pure core process them, commits the results.

    With `pool`, the pure core runs in a helper process: the event loop stays free for the
    webhooks and the MLLP connections, and a second core does the rendering."""

    def __init__(
        self,
        store: ProcessingStore,
        config: Callable[[], Config],
        metrics: Metrics,
        on_enqueued: Callable[[set[str]], None] = lambda destinations: None,
        batch_size: int = 128,
        pool: Executor | None = None,
        echo_map: Callable[[], Mapping[str, frozenset[str]]] = dict,
        node_id: str = "local",
    ) -> None:
        self.store = store
        self.config = config  # a getter: hot reload swaps what it returns
        self.metrics = metrics
        self.on_enqueued = on_enqueued
        self.batch_size = batch_size
        self.pool = pool
        self.echo_map = echo_map  # a getter: inbound channel -> destinations that are its EHR
        # set: the helper reads its batches itself on this (see _from_helper)
        self.batch_reader: BatchReader | None = store.batch_reader()
        self.node_id = node_id
        self.wake = asyncio.Event()
        self.helper_batches = 0  # batches the helper process did (the rest ran here)
        self.helper_reads = 0  # of those, batches it also read itself (not empty ones)
        # while webhooks arrive, small batches: each step holds the event loop only briefly,
        # so a webhook's 2xx never waits long; once they stop, big ones drain the backlog fast
        self.busy_batch_size = 16
        self._last_intake = 0.0
        # the pipeline: the commit in flight, and what it writes (seen by the next batch)
        self._inflight: asyncio.Task[bool] | None = None
        self._landed_through = 0  # the last event id of the last batch whose commit landed
        self._last_id = 0
        self._overlay_states: dict[str, str] = {}
        self._overlay_holding: set[tuple[str, str]] = set()
        # with a helper that reads: its next batch, asked for while the last one commits, and
        # the pipeline's generation (a reset makes the helper start over; older answers void)
        self._ahead: asyncio.Future[HelperBatch] | None = None
        self._generation = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            handled = 0
            try:
                if await self.store.try_lead(self.node_id):
                    handled = await self._step()
            except Exception as exc:  # noqa: BLE001 - keep serving; the batch stays pending
                log.error("processing batch failed; retrying in 1 s",
                          extra={"error": type(exc).__name__})
                await self._settle_pipeline()
                await sleep_or_stop(stop, 1.0)
            if handled == 0:
                await self._settle_pipeline()  # idle: let the last commit land first
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=0.5)
                except TimeoutError:
                    pass
        await self._settle_pipeline()
        if self._ahead is not None:  # asked for, never to be used
            self._ahead.cancel()
            self._ahead = None

    def note_intake(self) -> None:
        """A webhook was accepted: process it soon, and keep batches small meanwhile."""
        self._last_intake = time.monotonic()
        self.wake.set()

    def _batch_size(self) -> int:
        if time.monotonic() - self._last_intake < 0.2:
            return min(self.busy_batch_size, self.batch_size)
        return self.batch_size

    async def process_once(self) -> int:
        """One batch, committed when this returns (tools and tests)."""
        handled = await self._step()
        await self._settle_pipeline()
        return handled

    async def _step(self) -> int:
        """One batch, pipelined: its pure-core work overlaps the commit of the batch before,
        whose results it sees through an overlay until that commit has landed."""
        got = await self._from_helper()
        from_helper = got is not None
        if got is None:  # no helper, or a store it cannot read: read here
            events = await self.store.pending_events(self._batch_size(), after_id=self._last_id)
            if events:
                got = (tuple((e.id, e.correlation_id) for e in events),
                       await self._compute(await self._read_inputs(events)))
        if not got or not got[0]:
            await self._settle_pipeline()
            return 0
        refs, result = got
        if from_helper:  # the next batch is computed while this one commits
            self._ahead = self._try_ask_helper()
        if not await self._finish_inflight():
            # the batch before did not land as computed (another node took over, or an event
            # was quarantined at commit): what we computed on top of it is void; redo
            self._reset_pipeline()
            return 0
        self._overlay_states, self._overlay_holding = result.states, set(result.holding)
        self._inflight = asyncio.create_task(self._commit(refs, result))
        self._last_id = refs[-1][0]  # also the last event of the commit in flight
        return len(refs)

    def _ask_helper(self) -> asyncio.Future[HelperBatch]:
        reader = self.batch_reader
        assert reader is not None, "asked only after _from_helper found a batch reader"
        config = self.config()
        request = HelperRead(self._generation, self._batch_size(), self._landed_through,
                             dict(self.echo_map()))
        return asyncio.get_running_loop().run_in_executor(
            self.pool, read_and_process_in_worker, reader, str(config.directory),
            config.fingerprint, request)

    def _try_ask_helper(self) -> asyncio.Future[HelperBatch] | None:
        try:
            return self._ask_helper()
        except Exception as exc:  # noqa: BLE001 - e.g. the pool broke: _from_helper decides
            log.warning("processing helper unavailable", extra={"error": type(exc).__name__})
            return None

    async def _from_helper(self) -> tuple[tuple[tuple[int, str], ...], BatchResult] | None:
        """The helper reads the batch on its own connection and processes it: the engine's
        event loop only commits. None: no helper here, or it failed (then read here)."""
        if self.pool is None or self.batch_reader is None:
            return None
        while True:
            asked, self._ahead = self._ahead, None
            if asked is None:
                # a fresh start: the helper begins at the first pending event, so nothing
                # may still be committing (a batch the engine did itself, say)
                if self._inflight is not None:
                    await self._settle_pipeline()
                asked = self._try_ask_helper()
                if asked is None:  # the pool refused the call: it is broken or shut down
                    self._helper_failed(BrokenProcessPool())
                    return None
            try:
                answer = await asked
            except Exception as exc:  # noqa: BLE001 - the helper could not: do it here
                self._helper_failed(exc)
                return None
            if answer.generation == self._generation:
                break
            # asked before the pipeline was reset: computed on results that did not land
        self.helper_batches += 1
        if answer.events:  # not an idle poll
            self.helper_reads += 1
        return answer.events, answer.result

    def _helper_failed(self, exc: Exception) -> None:
        """This batch is read and processed here; a dead helper is not asked again."""
        if isinstance(exc, BrokenProcessPool):
            log.error("processing helper process died; processing in the engine from now on",
                      extra={"error": type(exc).__name__})
            self.pool = None
        else:
            log.warning("processing helper unavailable; processing in the engine",
                        extra={"error": type(exc).__name__})
        self._generation += 1  # it starts over, after a settled pipeline

    async def _compute(self, batch: Batch) -> BatchResult:
        config = self.config()
        if self.pool is not None:
            try:
                result = await asyncio.get_running_loop().run_in_executor(
                    self.pool, process_in_worker, str(config.directory),
                    config.fingerprint, batch)
                self.helper_batches += 1
                return result
            except Exception as exc:  # noqa: BLE001 - the helper could not: do it here
                log.warning("processing helper unavailable; processing in the engine",
                            extra={"error": type(exc).__name__})
        return process_batch(batch, config)

    async def _commit(self, events: tuple[tuple[int, str], ...], result: BatchResult) -> bool:
        """True when the batch landed exactly as computed."""
        landed = True
        try:
            await self.store.commit_processed(list(result.results))
        except base.NotPending:  # another node processed them meanwhile
            return False
        except Exception as exc:  # noqa: BLE001 - find the one that cannot be stored
            log.error("batch commit failed; committing its events one by one",
                      extra={"error": type(exc).__name__})
            result = await self._commit_one_by_one(result)
            landed = False
        self._count(events, result)
        destinations = {m.destination for r in result.results for m in r.messages}
        if destinations:
            self.on_enqueued(destinations)
        return landed

    async def _finish_inflight(self) -> bool:
        task, self._inflight = self._inflight, None
        if task is None:
            return True
        try:
            landed = await task
        except Exception as exc:  # noqa: BLE001
            log.error("processing commit failed", extra={"error": type(exc).__name__})
            return False
        if landed:
            self._landed_through = self._last_id
        return landed

    async def _settle_pipeline(self) -> None:
        await self._finish_inflight()
        self._reset_pipeline()

    def _reset_pipeline(self) -> None:
        self._last_id = self._landed_through = 0
        self._generation += 1
        self._overlay_states, self._overlay_holding = {}, set()

    async def _commit_one_by_one(self, result: BatchResult) -> BatchResult:
        """An event whose results cannot be stored is quarantined on its own (raw body kept,
        reprocessable after a fix) instead of holding every event behind it."""
        results, outcomes = [], []
        for r, outcome in zip(result.results, result.outcomes, strict=True):
            try:
                await self.store.commit_processed([r])
            except base.NotPending:
                continue
            except Exception as exc:  # noqa: BLE001
                r = ProcessedEvent(r.event_id, base.QUARANTINED,
                                   reason=f"could not be stored: {type(exc).__name__}")
                outcome = "quarantined"
                await self.store.commit_processed([r])
            results.append(r)
            outcomes.append(outcome)
        return BatchResult(tuple(results), tuple(outcomes))

    async def _read_inputs(self, events: list[StoredEvent]) -> Batch:
        reads = {"states": self.store.appointment_states,
                 "holding": self.store.destinations_holding,
                 "origins": self.store.inbound_origins}
        echo_map = self.echo_map()
        steps = gather_inputs(events, self._overlay_states, self._overlay_holding,
                              lambda channel: echo_map.get(channel, frozenset()))
        try:
            what, keys = next(steps)
            while True:
                what, keys = steps.send(await reads[what](keys))  # the read it names
        except StopIteration as done:
            return done.value

    def _count(self, events: tuple[tuple[int, str], ...], result: BatchResult) -> None:
        """Metrics counted per label set, not per event (one labels() lookup each), and the
        log lines of each event (`events`: id and correlation id)."""
        correlation = dict(events)
        outcomes = Counter(result.outcomes)
        queued = Counter((m.channel, m.destination, m.message_type)
                         for r in result.results for m in r.messages)
        dead = Counter((m.channel, m.destination, m.message_type, "dead_lettered")
                       for r in result.results for m in r.messages if m.error is not None)
        for outcome, n in outcomes.items():
            self.metrics.events.labels(outcome).inc(n)
        for labels, n in queued.items():
            self.metrics.messages_queued.labels(*labels).inc(n)
        for dead_labels, n in dead.items():  # unmapped code, render failure: dead from the start
            self.metrics.messages.labels(*dead_labels).inc(n)
        for r in result.results:
            _log_processed(correlation[r.event_id], r)


def _log_processed(correlation_id: str, r: ProcessedEvent) -> None:
    """One debug line per event and per queued message, a warning for what needs an analyst;
    ids, codes and PHI-free reasons only (a quarantine reason is a field path)."""
    debug = log.isEnabledFor(logging.DEBUG)
    if not debug and r.state != base.QUARANTINED and all(m.error is None for m in r.messages):
        return  # nothing to say at this level: build no log records
    ids = {"event_id": r.event_id, "correlation_id": correlation_id}
    if r.state == base.QUARANTINED:
        log.warning("event quarantined", extra={**ids, "reason": r.reason})
    for m in r.messages:
        fields = {**ids, "channel": m.channel, "destination": m.destination,
                  "message_type": m.message_type, "control_id": m.control_id}
        if m.error is not None:
            log.warning("message dead at render", extra=fields)  # the error is in the store
        else:
            log.debug("message queued", extra=fields)
    if debug:
        if r.state != base.PROCESSED:
            outcome = r.state
        elif r.reason is None or r.reason == "unrouted":
            outcome = r.reason or "routed"
        else:
            outcome = "no_change"
        log.debug("event processed", extra={**ids, "outcome": outcome,
                                            "messages": len(r.messages)})
