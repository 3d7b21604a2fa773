"""The helper process: runs the pure core (and, where the store allows, reads its own
batches) so the engine's event loop only commits.

Functions here run in the helper; the engine calls them through its process pool. The helper
keeps the configuration it loaded and its place in the pending events between calls.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from engine.config.outbound import Config, load_config
from engine.processing.core import Batch, BatchResult, process_batch
from engine.processing.inputs import gather_inputs
from engine.store.roles import BatchReader

_WORKER_CONFIG: dict[str, Config] = {}


def process_in_worker(channels_dir: str, fingerprint: str, batch: Batch) -> BatchResult:
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


def read_and_process_in_worker(reader: BatchReader, channels_dir: str, fingerprint: str,
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
    result = process_in_worker(channels_dir, fingerprint, batch)
    place.last_id = batch.events[-1].id
    place.unlanded.append((place.last_id, result.states, result.holding))
    return HelperBatch(request.generation,
                       tuple((e.id, e.correlation_id) for e in batch.events), result)


def warm_helper(channels_dir: str, fingerprint: str) -> bool:
    """Start-up: the helper imports everything and loads the channels before the first
    webhook arrives, not while it waits."""
    process_in_worker(channels_dir, fingerprint, Batch((), {}, frozenset(), {}))
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
