"""PostgreSQL only: several engine nodes (PostgresStore instances) sharing one schema."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from engine.store import base
from engine.store.base import AttemptRecord, ProcessedEvent
from tests.conftest import PG_URL, _pg_schema_url
from tests.store.test_store import enqueue, message, webhook

asyncpg = pytest.importorskip("asyncpg")
postgres = pytest.importorskip("engine.store.postgres")
PostgresStore = postgres.PostgresStore


@pytest.fixture
async def schema_url() -> str:
    return await _pg_schema_url()  # a fresh schema, dropped at the end of the session


@pytest.fixture
async def nodes(schema_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    a, b = PostgresStore(schema_url), PostgresStore(schema_url)
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_the_schema_of_the_url_is_used(schema_url: str) -> None:
    store = PostgresStore(schema_url)
    await store.open()
    try:
        assert store.schema and store.schema == schema_url.rsplit("%3D", 1)[1]
        conn = await asyncpg.connect(PG_URL)
        try:
            tables = {r[0] for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                store.schema)}
        finally:
            await conn.close()
        assert {"received_events", "lanes", "outbound", "destination_slots",
                "schema_migrations"} <= tables
    finally:
        await store.close()


async def test_migrations_from_three_nodes_at_once(schema_url: str) -> None:
    stores = [PostgresStore(schema_url) for _ in range(3)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        conn = await asyncpg.connect(schema_url)
        try:
            versions = [r[0] for r in await conn.fetch(
                "SELECT version FROM schema_migrations ORDER BY version")]
        finally:
            await conn.close()
        assert versions == sorted(set(versions)) and versions[0] == 1
        await stores[2].close()
        again = PostgresStore(schema_url)  # a restart finds nothing left to do
        await again.open()
        stores[2] = again
        conn = await asyncpg.connect(schema_url)
        try:
            assert [r[0] for r in await conn.fetch(
                "SELECT version FROM schema_migrations ORDER BY version")] == versions
        finally:
            await conn.close()
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_identical_webhooks_on_two_nodes_make_one_event(nodes) -> None:
    a, b = nodes
    for round_ in range(5):
        body = b'{"same":%d}' % round_
        results = await asyncio.gather(*(
            node.accept_webhook(webhook(body)) for _ in range(25) for node in (a, b)))
        assert sum(not r.duplicate for r in results) == 1
        assert len({r.event_id for r in results}) == 1
    assert len(await a.pending_events(100)) == 5


async def test_concurrent_claims_never_share_a_lane_head(nodes) -> None:
    a, b = nodes
    r = await a.accept_webhook(webhook(b'{"lanes":1}'))
    await enqueue(a, r.event_id, *(message(f"L{i}", f"C{i}") for i in range(300)))
    now = time.time()
    claimed: dict[str, list[int]] = {"a": [], "b": []}

    async def claimer(name: str, node: PostgresStore, slot: int) -> None:
        while True:
            batch = await node.claim_lane_heads("ehr", 7, f"{name}/{slot}", 60, now)
            if not batch:
                return
            claimed[name].extend(m.lane_id for m in batch)

    await asyncio.gather(*(claimer(n, node, s) for n, node in (("a", a), ("b", b))
                           for s in range(4)))
    everything = claimed["a"] + claimed["b"]
    assert len(everything) == len(set(everything)) == 300
    assert claimed["a"] and claimed["b"]  # both nodes really took part


async def test_a_lapsed_claim_is_taken_over_and_its_outcome_ignored(nodes) -> None:
    a, b = nodes
    r = await a.accept_webhook(webhook(b'{"fence":1}'))
    await enqueue(a, r.event_id, message("A", "A1"), message("A", "A2"))
    now = time.time()
    (old,) = await a.claim_lane_heads("ehr", 10, "node-a/0", 1, now)
    assert await b.claim_lane_heads("ehr", 10, "node-b/0", 30, now + 0.5) == []  # leased
    (new,) = await b.claim_lane_heads("ehr", 10, "node-b/0", 30, now + 2)  # lapsed
    assert new.id == old.id and new.fence > old.fence and new.claims == 2
    # the slow node comes back with an outcome: recorded, but it decides nothing
    await a.record_attempts([AttemptRecord(old.id, old.lane_id, old.fence, "delivered",
                                           now + 3, ack_code="AA")])
    info = await b.message(old.id)
    assert info["status"] == "queued" and len(info["attempt_log"]) == 1
    assert await a.claim_lane_heads("ehr", 10, "node-a/0", 30, now + 3) == []  # b holds it
    await b.record_attempts([AttemptRecord(new.id, new.lane_id, new.fence, "delivered",
                                           now + 4, ack_code="AA")])
    assert (await a.message(old.id))["status"] == "acked"
    (a2,) = await a.claim_lane_heads("ehr", 10, "node-a/0", 30, now + 5)
    assert a2.control_id == "A2"


async def test_outcome_and_takeover_race(nodes) -> None:
    """A stale outcome and a new claim at the same moment: exactly one of them wins."""
    a, b = nodes
    r = await a.accept_webhook(webhook(b'{"race":1}'))
    await enqueue(a, r.event_id, *(message(f"R{i}", f"R{i}") for i in range(50)))
    now = time.time()
    old = await a.claim_lane_heads("ehr", 50, "node-a/0", 1, now)
    records = [AttemptRecord(m.id, m.lane_id, m.fence, "delivered", now + 2, ack_code="AA")
               for m in old]
    _, taken = await asyncio.gather(
        a.record_attempts(records), b.claim_lane_heads("ehr", 50, "node-b/0", 30, now + 2))
    acked = {m.id for m in old if (await a.message(m.id))["status"] == "acked"}
    assert acked.isdisjoint({m.id for m in taken})
    assert acked | {m.id for m in taken} == {m.id for m in old}


async def test_connection_slots_hold_for_the_cluster(nodes) -> None:
    a, b = nodes
    now = time.time()
    got = await asyncio.gather(a.acquire_slot("ehr", 1, "a/0", 10, now),
                               b.acquire_slot("ehr", 1, "b/0", 10, now))
    assert sorted(got, key=lambda x: x is None) == [0, None]
    holder, other = ((a, "a/0"), (b, "b/0")) if got[0] == 0 else ((b, "b/0"), (a, "a/0"))
    assert await other[0].acquire_slot("ehr", 1, other[1], 10, now + 5) is None
    assert await holder[0].renew_slot("ehr", 0, holder[1], 10, now + 5)
    assert await other[0].acquire_slot("ehr", 1, other[1], 10, now + 14) is None  # renewed
    assert await other[0].acquire_slot("ehr", 1, other[1], 10, now + 16) == 0  # expired
    assert not await holder[0].renew_slot("ehr", 0, holder[1], 10, now + 16)
    await other[0].release_slot("ehr", 0, other[1])
    assert await holder[0].acquire_slot("ehr", 1, holder[1], 10, now + 17) == 0


async def test_many_nodes_race_for_a_few_slots(schema_url: str) -> None:
    stores = [PostgresStore(schema_url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        now = time.time()
        got = await asyncio.gather(*(s.acquire_slot("ehr", 3, f"n{i}/{j}", 30, now)
                                     for i, s in enumerate(stores) for j in range(5)))
        assert sorted(g for g in got if g is not None) == [0, 1, 2]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_notify_reaches_the_other_node(nodes) -> None:
    a, b = nodes
    heard: asyncio.Queue[str] = asyncio.Queue()
    await b.listen(heard.put_nowait)
    r = await a.accept_webhook(webhook(b'{"notify":1}'))
    await a.commit_processed([ProcessedEvent(
        r.event_id, base.PROCESSED,
        messages=(message("A", "N1"), message("B", "N2", destination="lab"),
                  message("C", "N3", destination="broken", error="unmapped")),
    )])
    got = {await asyncio.wait_for(heard.get(), 5), await asyncio.wait_for(heard.get(), 5)}
    assert got == {"ehr", "lab"}
    await asyncio.sleep(0.1)
    assert heard.empty()  # nothing for a destination whose only message was born dead


async def test_listener_reconnects_after_losing_its_connection(nodes) -> None:
    a, b = nodes
    heard: asyncio.Queue[str] = asyncio.Queue()
    await b.listen(heard.put_nowait)
    pid = b._listen_conn.get_server_pid()
    conn = await asyncpg.connect(PG_URL)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()
    deadline = time.monotonic() + 10
    n = 0
    while True:  # notifications sent while it reconnects are lost: keep sending
        r = await a.accept_webhook(webhook(b'{"again":%d}' % n))
        await enqueue(a, r.event_id, message(f"A{n}", f"A{n}"))
        n += 1
        try:
            assert await asyncio.wait_for(heard.get(), 0.3) == "ehr"
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "the listener never came back"
    assert b._listen_conn.get_server_pid() != pid


async def test_only_one_node_leads_and_the_lead_passes_on(schema_url: str) -> None:
    a, b = PostgresStore(schema_url), PostgresStore(schema_url)
    await a.open()
    await b.open()
    try:
        first = await asyncio.gather(a.try_lead("a"), b.try_lead("b"))
        assert sorted(first) == [False, True]
        leader, follower = (a, b) if first[0] else (b, a)
        assert await leader.try_lead("leader") and not await follower.try_lead("follower")
        await leader.close()  # a node that stops (or dies) lets go
        assert await follower.try_lead("follower")
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_heartbeats(nodes) -> None:
    a, b = nodes
    await a.heartbeat("node-a", 100.0)
    await b.heartbeat("node-b", 101.0)
    await a.heartbeat("node-a", 110.0)
    assert await b.nodes() == [
        {"node_id": "node-a", "started_at": 100.0, "last_seen": 110.0},
        {"node_id": "node-b", "started_at": 101.0, "last_seen": 101.0},
    ]


async def test_processing_on_one_node_delivering_on_both(nodes) -> None:
    """Lanes keep their order while two nodes drain them concurrently."""
    a, b = nodes
    r = await a.accept_webhook(webhook(b'{"drain":1}'))
    per_lane = 5
    msgs = [message(f"L{lane}", f"L{lane}-{i}") for i in range(per_lane) for lane in range(20)]
    await enqueue(a, r.event_id, *msgs)
    order: dict[str, list[int]] = {}
    in_flight: set[int] = set()

    async def worker(node: PostgresStore, owner: str) -> None:
        idle = 0
        while idle < 3:
            batch = await node.claim_lane_heads("ehr", 4, owner, 30, time.time())
            if not batch:
                idle += 1
                await asyncio.sleep(0.02)
                continue
            idle = 0
            for m in batch:
                assert m.lane_id not in in_flight  # only the head of a lane is in flight
                in_flight.add(m.lane_id)
            for m in batch:
                lane, seq = m.control_id.split("-")
                order.setdefault(lane, []).append(int(seq))
                await asyncio.sleep(0)
                in_flight.discard(m.lane_id)  # its outcome is about to free the lane
                await node.record_attempts([AttemptRecord(
                    m.id, m.lane_id, m.fence, "delivered", time.time(), ack_code="AA")])
            await node.release_claims(owner)

    await asyncio.gather(*(worker(node, f"{name}/{s}") for name, node in (("a", a), ("b", b))
                           for s in range(3)))
    assert order == {f"L{lane}": list(range(per_lane)) for lane in range(20)}
    assert (await a.counts())["messages_acked"] == 100


async def test_a_batch_processed_by_two_nodes_is_kept_once(nodes) -> None:
    """A node whose lead lapsed mid-batch cannot queue the same change a second time."""
    a, b = nodes
    r = await a.accept_webhook(webhook(b'{"twice":1}'))
    # both nodes read it as pending: the lead moved while the first one worked
    assert [e.id for e in await a.pending_events(10)] == [r.event_id]
    assert [e.id for e in await b.pending_events(10)] == [r.event_id]

    def batch(control_id: str) -> list[ProcessedEvent]:
        return [ProcessedEvent(r.event_id, base.PROCESSED, appointment_id="A",
                               appointment_state='{"v":1}', uid_links={"u": "A"},
                               messages=(message("A", control_id),))]

    outcomes = await asyncio.gather(a.commit_processed(batch("FROM-A")),
                                    b.commit_processed(batch("FROM-B")),
                                    return_exceptions=True)
    assert sorted(type(o).__name__ for o in outcomes) == ["NoneType", "NotPending"]
    assert len(await a.claim_lane_heads("ehr", 10, "n", 30, time.time())) == 1
    assert (await a.counts())["messages_queued"] == 1


async def test_intake_retries_once_after_a_lost_connection(nodes, monkeypatch) -> None:
    a, _ = nodes
    real = a._insert_events
    calls = []

    async def lose_the_reply(webhooks, retry=False):
        calls.append(retry)
        result = await real(webhooks, retry)
        if len(calls) == 1:  # committed, but the reply never came back
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection lost")
        return result

    monkeypatch.setattr(a, "_insert_events", lose_the_reply)
    result = await a.accept_webhook(webhook(b'{"lost":1}'))
    assert calls == [False, True]
    assert not result.duplicate  # it was ours: the retry found our own row
    assert len(await a.pending_events(10)) == 1
    assert (await a.accept_webhook(webhook(b'{"lost":1}'))).duplicate


async def test_intake_survives_killed_sessions(schema_url: str) -> None:
    name = "calhl7-kill-" + uuid.uuid4().hex[:6]
    store = PostgresStore(f"{schema_url}&application_name={name}", min_connections=3)
    await store.open()
    try:
        assert not (await store.accept_webhook(webhook(b'{"before":1}'))).duplicate
        conn = await asyncpg.connect(PG_URL)
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1", name)
        finally:
            await conn.close()
        assert killed >= 1
        results = await asyncio.gather(*(store.accept_webhook(webhook(b'{"after":%d}' % i))
                                         for i in range(20)))
        assert not any(r.duplicate for r in results)
        assert len(await store.pending_events(100)) == 21
    finally:
        await store.close()


async def test_a_node_from_before_migration_3_can_still_record_an_attempt(schema_url: str) -> None:
    store = PostgresStore(schema_url)
    await store.open()
    try:
        r = await store.accept_webhook(webhook(b'{"old-node":1}'))
        await enqueue(store, r.event_id, message("A", "A1"))
        (m,) = await store.claim_lane_heads("ehr", 10, "n", 30, time.time())
        conn = await asyncpg.connect(schema_url)
        try:  # the 10-argument call such a node makes
            await conn.execute(
                "SELECT calhl7_record_attempt($1::bigint, $2::bigint, $3::bigint, $4::text,"
                " $5::float8, $6::bytea, $7::text, $8::text, $9::float8, $10::bool)",
                m.id, m.lane_id, m.fence, "delivered", time.time(), None, "AA", None,
                time.time(), True)
        finally:
            await conn.close()
        msg = await store.message(m.id)
        assert msg["status"] == "acked"
        assert [a["control_id"] for a in msg["attempt_log"]] == ["A1"]
    finally:
        await store.close()
