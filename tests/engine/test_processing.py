"""The processing pipeline against each store: a batch is computed while the one before it is
still committing, so it must see that batch's results before they land."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest

from engine.config.outbound import load_config
from engine.metrics import Metrics
from engine.processing import Batch, Processor, helper_process_init, process_batch
from engine.sim.bookings import StoryTeller, compact
from engine.store import base
from tests.conftest import REPO
from tests.engine_harness import eventually
from tests.store.test_store import webhook


@pytest.fixture(scope="module")
def helper_pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=helper_process_init) as pool:
        yield pool


async def test_batches_of_one_queue_what_one_batch_queues(store) -> None:
    await _batches_of_one(store, None)


async def test_through_the_helper_too(store, helper_pool: ProcessPoolExecutor) -> None:
    """On SQLite the helper reads its batches itself and is asked for the next one before
    the last one's commit has landed: it must see the results it has not seen committed."""
    processor = await _batches_of_one(store, helper_pool)
    assert processor.helper_batches > 0
    assert (processor.batch_reader is not None) == (type(store).__name__ == "SQLiteStore")
    if processor.batch_reader is not None:  # batches of one: the helper read every event
        processed = await store.events(base.PROCESSED, 10_000)
        assert processed and processor.helper_reads >= len(processed)


async def _batches_of_one(store, pool: ProcessPoolExecutor | None) -> Processor:  # noqa: ANN001
    config = load_config(REPO / "channels")
    # new, reschedule, cancel, no-show: each change needs the one before
    wanted = await _accept_stories(store, config, stories=15, seed=5)
    assert len({appointment for _, appointment, _ in wanted}) > 5
    assert {"SIU^S12", "SIU^S15"} <= {mtype for *_, mtype in wanted}

    processor = Processor(store, lambda: config, Metrics(), batch_size=1, pool=pool)
    await _run_until_nothing_pending(processor, store)
    assert await _queued(store) == wanted
    return processor


async def _run_until_nothing_pending(processor: Processor, store) -> None:  # noqa: ANN001
    stop = asyncio.Event()
    running = asyncio.create_task(processor.run(stop))
    try:
        await eventually(lambda: _nothing_pending(store))
    finally:
        stop.set()
        await running


async def _queued(store) -> list[tuple[str, str, str]]:  # noqa: ANN001
    """(destination, appointment, type) of every queued message, in id order."""
    queued: list[tuple[str, str, str]] = []
    while (m := await store.message(len(queued) + 1)) is not None:
        queued.append((m["destination"], m["appointment_id"], m["message_type"]))
    return queued


async def _nothing_pending(store) -> bool:  # noqa: ANN001
    return await store.pending_events(1) == []


async def test_a_batch_that_does_not_land_voids_what_was_computed_on_it(
        tmp_path, helper_pool: ProcessPoolExecutor) -> None:  # noqa: ANN001
    """A commit that fails (here a real SQLite trigger refuses one booking) quarantines its
    event; the helper's next batch, already computed on top of it, must be thrown away and
    computed again: the result is what the engine alone produces."""
    from engine.store.sqlite import SQLiteStore

    config = load_config(REPO / "channels")
    outcomes = []
    for pool in (None, helper_pool):
        path = tmp_path / f"helper-{pool is not None}.sqlite3"
        store = SQLiteStore(path)
        await store.open()
        try:
            teller = StoryTeller(seed=21)
            stories = [teller.story() for _ in range(8)]
            refused = next(s for s in stories if len(s.webhooks) >= 3).appointment_uid
            with sqlite3.connect(path) as db:
                db.execute("CREATE TRIGGER refuse BEFORE INSERT ON booking_uids"
                           f" WHEN NEW.uid = '{refused}'"
                           " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
            for story in stories:
                for hook in story.webhooks:
                    await store.accept_webhook(webhook(compact(hook)))
            processor = Processor(store, lambda: config, Metrics(), batch_size=1, pool=pool)
            await _run_until_nothing_pending(processor, store)
            quarantined = [e.id for e in await store.events("quarantined", 100)]
            outcomes.append((quarantined, await _queued(store)))
        finally:
            await store.close()
    assert outcomes[0][0], "the trigger refused nothing: the test tests nothing"
    assert outcomes[1] == outcomes[0]


async def test_a_helper_that_fails_mid_stream_hands_over_without_repeats(
        tmp_path, helper_pool: ProcessPoolExecutor) -> None:  # noqa: ANN001
    """The engine's configuration no longer matches the channel files the helper reads (an
    edit not reloaded yet): helper calls fail and the engine processes batches itself, until
    the reload, when the helper takes over again. No event is processed twice (nothing
    queued twice under two MSH-10s), none is skipped."""
    from engine.store.sqlite import SQLiteStore

    config = load_config(REPO / "channels")
    store = SQLiteStore(tmp_path / "store.sqlite3")
    await store.open()
    try:
        wanted = await _accept_stories(store, config, stories=60)
        current = {"config": config}
        processor = Processor(store, lambda: current["config"], Metrics(), batch_size=1,
                              pool=helper_pool)
        stop = asyncio.Event()
        running = asyncio.create_task(processor.run(stop))
        try:
            await eventually(lambda: _processed_at_least(store, 10))
            current["config"] = dataclasses.replace(config, fingerprint="edited, not reloaded")
            left = len(await store.pending_events(1000))
            await eventually(lambda: _processed_at_least(store, 20))
            current["config"] = config  # reloaded: the helper takes over again
            await eventually(lambda: _nothing_pending(store))
        finally:
            stop.set()
            await running
        assert left > 0, "everything was processed before the switch: the test tests nothing"
        assert processor.helper_batches > 0
        assert await _queued(store) == wanted
    finally:
        await store.close()


async def test_a_helper_process_killed_mid_stream_leaves_the_engine_processing(
        tmp_path) -> None:  # noqa: ANN001
    """kill -9 of the helper process: the pool is broken for good; the engine processes the
    rest itself, once each."""
    import os
    import signal

    import psutil

    from engine.store.sqlite import SQLiteStore

    config = load_config(REPO / "channels")
    store = SQLiteStore(tmp_path / "store.sqlite3")
    await store.open()
    others = {p.pid for p in psutil.Process().children()}  # e.g. the module's helper pool
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=helper_process_init)
    try:
        wanted = await _accept_stories(store, config, stories=60)
        processor = Processor(store, lambda: config, Metrics(), batch_size=1, pool=pool)
        stop = asyncio.Event()
        running = asyncio.create_task(processor.run(stop))
        try:
            await eventually(lambda: _processed_at_least(store, 10))
            helpers = [p for p in psutil.Process().children() if p.pid not in others
                       and any("spawn_main" in part for part in p.cmdline())]
            assert len(helpers) == 1
            os.kill(helpers[0].pid, signal.SIGKILL)
            left = len(await store.pending_events(1000))
            await eventually(lambda: _nothing_pending(store))
        finally:
            stop.set()
            await running
        assert left > 0, "everything was processed before the kill: the test tests nothing"
        assert processor.pool is None  # given up on, not retried for every batch
        assert await _queued(store) == wanted
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        await store.close()


async def _accept_stories(store, config, stories: int,  # noqa: ANN001
                          seed: int = 8) -> list[tuple[str, str, str]]:
    """Accept that many stories' webhooks; what one batch of all of them would queue."""
    teller = StoryTeller(seed=seed)
    for _ in range(stories):
        for hook in teller.story().webhooks:
            await store.accept_webhook(webhook(compact(hook)))
    events = await store.pending_events(10_000)
    expected = process_batch(Batch(tuple(events), {}, frozenset(), {}), config)
    return [(m.destination, m.appointment_id, m.message_type)
            for r in expected.results for m in r.messages]


async def _processed_at_least(store, n: int) -> bool:  # noqa: ANN001
    return len(await store.events("processed", n)) >= n
