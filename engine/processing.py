"""From stored webhook to queued SIU: normalize, route, render, and commit it all at once.

Runs after the webhook was answered. Takes pending events in batches in arrival order; each
batch reads the appointment states it needs, applies the pure core event by event (later
events in a batch see the states earlier ones produced), and commits the event marks, the new
states, the rendered messages and the audit entries in one transaction. A crash before that
commit leaves the events pending; nothing is half done.

With a helper process (the default) the pure core runs there, and on SQLite the helper also
reads its batches on its own connection: the engine's event loop only commits. The helper
keeps its place and the results whose commit has not landed yet, so the engine asks for the
next batch while the last one commits; a commit that does not land as computed starts the
pipeline over (a new generation), and whatever was computed on top of it is thrown away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine.aio import sleep_or_stop
from engine.appointments.normalize import normalize
from engine.appointments.state import AppointmentState
from engine.channels.config import Config, load_config
from engine.channels.routing import OutboundMessage, route
from engine.hl7.controlid import new_control_id
from engine.inbound.echo import echo_origin, echo_uids, webhook_payload
from engine.metrics import Metrics
from engine.store import base
from engine.store.base import (
    AuditEntry,
    BatchReader,
    NewMessage,
    ProcessedEvent,
    Store,
    StoredEvent,
)

log = logging.getLogger("calhl7.processing")

_UID_KEYS = ("uid", "rescheduleUid", "bookingUid", "iCalUID", "fromReschedule")


def _uids_of(payload: Mapping[str, Any] | None) -> list[str]:
    """The booking uids an event may need to look up (cheap: no validation)."""
    if payload is None:
        return []
    found = [payload.get(k) for k in _UID_KEYS]
    return [u for u in found if isinstance(u, str) and u and _encodable(u)]


def _encodable(text: str) -> bool:
    """False for a lone surrogate (valid JSON, not UTF-8): no store could look it up."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Batch:
    """What the pure core needs for one batch, read from the store beforehand (picklable)."""

    events: tuple[StoredEvent, ...]
    states: dict[str, str]  # booking uid -> appointment state JSON
    holding: frozenset[tuple[str, str]]  # (destination, appointment) ever queued an S12
    echo: dict[int, frozenset[str]]  # event id -> destinations not to send to (EHR-made)


@dataclass(frozen=True, slots=True)
class BatchResult:
    results: tuple[ProcessedEvent, ...]
    outcomes: tuple[str, ...]  # per event: routed, unrouted, no_change, ignored, quarantined
    # what the commit will write that the next batch must see before it lands: the new
    # states by booking uid, and which (destination, appointment) got an S12
    states: dict[str, str] = field(default_factory=dict)
    holding: frozenset[tuple[str, str]] = frozenset()


# the reads a batch needs, in order; each answer decides what the next one asks
Lookup = tuple[str, list[str]]  # ("states" | "holding" | "origins", keys)


def gather_inputs(
    events: Sequence[StoredEvent],
    overlay_states: Mapping[str, str],
    overlay_holding: AbstractSet[tuple[str, str]],
    echo_destinations: Callable[[str], frozenset[str]],
    with_origins: bool = True,
) -> Generator[Lookup, Any, Batch]:
    """A batch's inputs, without I/O: yields each lookup it needs and is sent the answer, so
    the engine (awaiting the store) and a helper process (on its own connection) run the
    same steps. The overlay is what the commit in flight will write."""
    payloads = {e.id: webhook_payload(e.body) for e in events}  # parsed once, used thrice
    uids = [u for e in events for u in _uids_of(payloads[e.id])]
    states: dict[str, str] = (yield ("states", uids)) if uids else {}
    states.update({u: overlay_states[u] for u in uids if u in overlay_states})
    appointments = list({json.loads(s)["appointment_id"] for s in states.values()})
    holding: set[tuple[str, str]] = (yield ("holding", appointments)) if appointments else set()
    holding |= overlay_holding
    echo: dict[int, frozenset[str]] = {}
    if with_origins:
        echo_keys = [u for e in events for u in echo_uids(payloads[e.id]) if _encodable(u)]
        origins = (yield ("origins", echo_keys)) if echo_keys else {}
        for e in events:
            channel = echo_origin(payloads[e.id], origins)
            if channel is not None:
                echo[e.id] = echo_destinations(channel)
    return Batch(tuple(events), states, frozenset(holding), echo)


def process_batch(batch: Batch, config: Config, now: float | None = None) -> BatchResult:
    """The pure core over a batch: normalize, route, render. Later events of a batch see the
    states earlier ones produced. No I/O: the caller reads the inputs and commits the output."""
    now = time.time() if now is None else now  # one time for the whole batch
    states = {uid: AppointmentState.from_dict(json.loads(s)) for uid, s in batch.states.items()}
    holding = set(batch.holding)
    results, outcomes = [], []
    written: dict[str, str] = {}
    for stored in batch.events:
        result, outcome, uids = _process_one(stored, states, holding, config,
                                             batch.echo.get(stored.id, frozenset()), now)
        results.append(result)
        outcomes.append(outcome)
        if result.appointment_state is not None:
            written.update(dict.fromkeys(uids, result.appointment_state))
    queued_s12 = frozenset((m.destination, m.appointment_id) for r in results
                           for m in r.messages if m.message_type.endswith("S12"))
    return BatchResult(tuple(results), tuple(outcomes), written, queued_s12)


def _process_one(
    stored: StoredEvent,
    states: dict[str, AppointmentState],
    holding: set[tuple[str, str]],
    config: Config,
    echo_to: frozenset[str],
    now: float,
) -> tuple[ProcessedEvent, str, tuple[str, ...]]:
    """One event: its results, its outcome, and the booking uids whose state it wrote."""
    received_at = datetime.fromtimestamp(stored.received_at, UTC)
    try:
        n = normalize(stored.body, source=stored.source, received_at=received_at,
                      lookup=states.get)
    except Exception as exc:  # noqa: BLE001 - a bug or a shape we never saw: keep it
        return ProcessedEvent(stored.id, base.QUARANTINED,
                              reason=f"normalization failed: {type(exc).__name__}"), \
            "quarantined", ()
    if n.disposition == "quarantined":
        return ProcessedEvent(stored.id, base.QUARANTINED, reason=n.reason), "quarantined", ()
    notes = tuple(
        AuditEntry(at=now, kind="note", appointment_id=n.state.appointment_id if n.state
                   else None, trigger=stored.trigger, source=stored.source,
                   detail={"note": note, "event": stored.id})
        for note in n.notes
    )
    written: tuple[str, ...] = ()
    if n.state is not None:
        written = (*n.state.uids, *n.uid_links)
        for uid in written:
            states[uid] = n.state
    # ASCII JSON: a lone surrogate cannot break the row. The event is encoded once: it is
    # also the state's last event
    event = n.event if n.disposition == "event" else None
    event_json = json.dumps(event.to_dict()) if event is not None else None
    state_json = None
    if n.state is not None:
        state_json = n.state.to_json(event_json if n.state.last_event is event else None)
    if event is None or event_json is None:
        return ProcessedEvent(
            stored.id, base.IGNORED if n.disposition == "ignored" else base.PROCESSED,
            reason=n.reason or n.disposition,
            appointment_id=n.state.appointment_id if n.state else None,
            appointment_state=state_json, uid_links=dict(n.uid_links), audit=notes,
        ), n.disposition, written
    try:
        result = route(
            event, config,
            destination_has=lambda dest, appt: (dest, appt) in holding,
            make_control_id=new_control_id,
            now=datetime.fromtimestamp(now, UTC),
        )
    except Exception as exc:  # noqa: BLE001 - one poison event must not stop the others
        return ProcessedEvent(stored.id, base.QUARANTINED,
                              reason=f"routing failed: {type(exc).__name__}"), "quarantined", ()
    skipped = [{"channel": c, "reason": r} for c, r in result.skipped]
    routed = [m for m in result.messages if m.destination not in echo_to]
    skipped += [{"channel": m.channel, "reason": "made by this EHR: no echo"}
                for m in result.messages if m.destination in echo_to]
    messages = tuple(_to_new_message(m, event_json, config) for m in routed)
    for m in messages:
        if m.message_type.endswith("S12"):  # even dead at render: it waits for a fix
            holding.add((m.destination, m.appointment_id))
    change = AuditEntry(
        at=now, kind="change", appointment_id=event.appointment_id, actor=event.actor,
        trigger=event.trigger, source=event.source,
        detail={
            "event": stored.id, "kind": str(event.kind), "booking_uid": event.booking_uid,
            "occurred_at": event.occurred_at.isoformat() if event.occurred_at else None,
            "received_at": received_at.isoformat(),
            "status": event.status, "start": event.start.isoformat(),
            "end": event.end.isoformat(), "correlation_id": stored.correlation_id,
            "routed_to": sorted({m.destination for m in messages}),
            "skipped": skipped,
        },
    )
    return ProcessedEvent(
        stored.id, base.PROCESSED,
        reason="unrouted" if result.unrouted else None,
        appointment_id=event.appointment_id, appointment_state=state_json,
        uid_links=dict(n.uid_links), messages=messages, audit=(change, *notes),
    ), "unrouted" if result.unrouted else "routed", written


def _to_new_message(m: OutboundMessage, event_json: str, config: Config) -> NewMessage:
    destination = config.destinations[m.destination]
    return NewMessage(
        channel=m.channel, destination=m.destination, lane_key=m.lane_key,
        appointment_id=m.appointment_id, message_type=m.message_type,
        control_id=m.control_id, payload=m.payload, event_json=event_json, error=m.error,
        hold_lane=destination.ack.on_dead_letter == "hold",
    )


# ---------------------------------------------------------------------- the helper process
_WORKER_CONFIG: dict[str, Config] = {}


def _process_in_worker(channels_dir: str, fingerprint: str, batch: Batch) -> BatchResult:
    """Runs in the helper process: keeps the configuration it loaded until the files change."""
    config = _WORKER_CONFIG.get(channels_dir)
    if config is None or config.fingerprint != fingerprint:
        config = load_config(channels_dir)
        if config.fingerprint != fingerprint:  # files changed again: let the parent decide
            raise ConfigMismatch(channels_dir)
        _WORKER_CONFIG[channels_dir] = config
    return process_batch(batch, config)


class ConfigMismatch(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class HelperRead:
    """A request for the helper's next batch (picklable). The helper keeps its own place in
    the pending events and the results not yet known to be committed; a new `generation`
    makes it start over from what the store holds."""

    generation: int
    limit: int
    landed_through: int  # the engine's commits have landed up to this event id
    echo_destinations: dict[str, frozenset[str]]  # inbound channel -> destinations


@dataclass(frozen=True, slots=True)
class HelperBatch:
    """The helper's answer: which events it read (id, correlation id) and their results."""

    generation: int
    events: tuple[tuple[int, str], ...]
    result: BatchResult


@dataclass
class _HelperPlace:
    """In the helper: where its reading stands, and what the engine may not have committed
    yet (by the last event id of each batch), which later batches must see."""

    generation: int
    last_id: int = 0
    unlanded: list[tuple[int, dict[str, str], frozenset[tuple[str, str]]]] = field(
        default_factory=list)


_HELPER_PLACE: list[_HelperPlace] = []  # a helper process serves one engine


def _read_and_process_in_worker(reader: BatchReader, channels_dir: str, fingerprint: str,
                                request: HelperRead) -> HelperBatch:
    """Runs in the helper process: reads the next batch on its own store connection and
    processes it; the engine only commits. Bodies never cross the process boundary, and the
    engine can ask for the next batch before this one's commit has landed."""
    if not _HELPER_PLACE or _HELPER_PLACE[0].generation != request.generation:
        _HELPER_PLACE[:] = [_HelperPlace(request.generation)]
    place = _HELPER_PLACE[0]
    place.unlanded = [u for u in place.unlanded if u[0] > request.landed_through]
    overlay_states: dict[str, str] = {}
    overlay_holding: set[tuple[str, str]] = set()
    for _, states, holding in place.unlanded:  # oldest first: later batches win
        overlay_states.update(states)
        overlay_holding |= holding

    def read(r: BatchReader) -> Batch | None:
        events = r.pending_events(request.limit, place.last_id)
        if not events:
            return None
        steps = gather_inputs(events, overlay_states, overlay_holding,
                              lambda ch: request.echo_destinations.get(ch, frozenset()))
        reads = {"states": r.appointment_states, "holding": r.destinations_holding,
                 "origins": r.inbound_origins}
        try:
            what, keys = next(steps)
            while True:
                what, keys = steps.send(reads[what](keys))
        except StopIteration as done:
            return done.value

    batch = reader.read(read)
    if batch is None:
        return HelperBatch(request.generation, (), BatchResult((), ()))
    result = _process_in_worker(channels_dir, fingerprint, batch)
    place.last_id = batch.events[-1].id
    place.unlanded.append((place.last_id, result.states, result.holding))
    return HelperBatch(request.generation,
                       tuple((e.id, e.correlation_id) for e in batch.events), result)


def warm_helper(channels_dir: str, fingerprint: str) -> bool:
    """Start-up: the helper imports everything and loads the channels before the first
    webhook arrives, not while it waits."""
    _process_in_worker(channels_dir, fingerprint, Batch((), {}, frozenset(), {}))
    return True


def helper_process_init() -> None:
    """In each helper process: exit when the engine is gone, even after a kill -9 (nothing
    else would end a process blocked on the pool's queue)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class Processor:
    """Reads batches of pending events, has the pure core process them, commits the results.

    With `pool`, the pure core runs in a helper process: the event loop stays free for the
    webhooks and the MLLP connections, and a second core does the rendering."""

    def __init__(
        self,
        store: Store,
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
        self.batch_reader: BatchReader | None = getattr(store, "batch_reader", lambda: None)()
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
            self.pool, _read_and_process_in_worker, reader, str(config.directory),
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
                    self.pool, _process_in_worker, str(config.directory),
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
                 "origins": getattr(self.store, "inbound_origins", None)}
        echo_map = self.echo_map()
        steps = gather_inputs(events, self._overlay_states, self._overlay_holding,
                              lambda channel: echo_map.get(channel, frozenset()),
                              with_origins=reads["origins"] is not None)
        try:
            what, keys = next(steps)
            while True:
                # misc: the generator names which read it needs; "origins" only when not None
                what, keys = steps.send(await reads[what](keys))  # type: ignore[misc]
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
