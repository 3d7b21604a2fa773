"""The processing pipeline against each store: a batch is computed while the one before it is
still committing, so it must see that batch's results before they land."""

from __future__ import annotations

import asyncio

from engine.channels.config import load_config
from engine.metrics import Metrics
from engine.processing import Batch, Processor, process_batch
from engine.sim.bookings import StoryTeller, compact
from tests.conftest import REPO
from tests.engine_harness import eventually
from tests.test_store import webhook


async def test_batches_of_one_queue_what_one_batch_queues(store) -> None:
    config = load_config(REPO / "channels")
    teller = StoryTeller(seed=5)
    for _ in range(15):  # new, reschedule, cancel, no-show: each change needs the one before
        for hook in teller.story().webhooks:
            await store.accept_webhook(webhook(compact(hook)))
    events = await store.pending_events(1000)
    expected = process_batch(Batch(tuple(events), {}, frozenset(), {}), config)
    wanted = [(m.destination, m.appointment_id, m.message_type)
              for r in expected.results for m in r.messages]
    assert len({appointment for _, appointment, _ in wanted}) > 5
    assert {"SIU^S12", "SIU^S15"} <= {mtype for *_, mtype in wanted}

    processor = Processor(store, lambda: config, Metrics(), batch_size=1)
    stop = asyncio.Event()
    running = asyncio.create_task(processor.run(stop))
    try:
        await eventually(lambda: _nothing_pending(store))
    finally:
        stop.set()
        await running

    queued = []
    while (m := await store.message(len(queued) + 1)) is not None:
        queued.append((m["destination"], m["appointment_id"], m["message_type"]))
    assert queued == wanted


async def _nothing_pending(store) -> bool:  # noqa: ANN001
    return await store.pending_events(1) == []
