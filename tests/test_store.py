"""The store contract, run against every implementation (SQLite file, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
import time

from engine.store import base
from engine.store.base import AttemptRecord, IncomingWebhook, NewMessage, ProcessedEvent


def webhook(body: bytes, source: str = "default", state: str = base.PENDING) -> IncomingWebhook:
    return IncomingWebhook(
        source=source,
        body=body,
        body_sha256=hashlib.sha256(body).digest(),
        content_type="application/json",
        trigger="BOOKING_CREATED",
        booking_uid="uid-1",
        received_at=time.time(),
        correlation_id="corr-" + hashlib.sha256(body).hexdigest()[:8],
        state=state,
        reason=None if state == base.PENDING else "payload.uid: missing",
    )


def message(appointment: str, control_id: str, *, mtype: str = "SIU^S12", error: str | None = None,
            destination: str = "ehr", channel: str = "ch", hold: bool = True) -> NewMessage:
    return NewMessage(
        channel=channel, destination=destination, lane_key=appointment,
        appointment_id=appointment, message_type=mtype, control_id=control_id,
        payload=f"MSH|^~\\&|{control_id}".encode(), event_json="{}", error=error, hold_lane=hold,
    )


async def enqueue(store, event_id: int, *msgs: NewMessage) -> None:
    await store.commit_processed(
        [ProcessedEvent(event_id=event_id, state=base.PROCESSED, messages=tuple(msgs))]
    )


async def test_accept_is_idempotent_on_identical_bytes(store) -> None:
    first = await store.accept_webhook(webhook(b'{"a":1}'))
    again = await store.accept_webhook(webhook(b'{"a":1}'))
    other_source = await store.accept_webhook(webhook(b'{"a":1}', source="clinic-b"))
    assert not first.duplicate and again.duplicate
    assert again.event_id == first.event_id
    assert not other_source.duplicate and other_source.event_id != first.event_id


async def test_concurrent_duplicates_store_one_row(store) -> None:
    results = await asyncio.gather(*(store.accept_webhook(webhook(b'{"same":true}'))
                                     for _ in range(50)))
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.event_id for r in results}) == 1
    assert len(await store.pending_events(100)) == 1


async def test_quarantined_events_wait_for_reprocess(store) -> None:
    r = await store.accept_webhook(webhook(b"not json", state=base.QUARANTINED))
    assert await store.pending_events(10) == []
    (q,) = await store.events(base.QUARANTINED, 10)
    assert q.id == r.event_id and q.reason == "payload.uid: missing"
    assert await store.requeue_event(r.event_id, "analyst")
    assert [e.id for e in await store.pending_events(10)] == [r.event_id]
    assert not await store.requeue_event(r.event_id, "analyst")  # no longer quarantined


async def test_processing_links_uids_and_states(store) -> None:
    r = await store.accept_webhook(webhook(b'{"b":1}'))
    await store.commit_processed([ProcessedEvent(
        event_id=r.event_id, state=base.PROCESSED, appointment_id="A",
        appointment_state='{"v":1}', uid_links={"uid-a": "A", "uid-b": "A"},
        messages=(message("A", "C1"),),
        audit=(base.AuditEntry(at=1.0, kind="change", appointment_id="A", actor="attendee",
                               trigger="BOOKING_CREATED", source="default"),),
    )])
    assert await store.pending_events(10) == []
    assert await store.appointment_states(["uid-a", "uid-b", "nope"]) == {
        "uid-a": '{"v":1}', "uid-b": '{"v":1}'}
    assert await store.destinations_holding(["A", "B"]) == {("ehr", "A")}
    (entry,) = await store.audit("A", None, 10)
    assert entry["trigger"] == "BOOKING_CREATED" and entry["kind"] == "change"


async def test_only_the_head_of_a_lane_is_claimed(store) -> None:
    r = await store.accept_webhook(webhook(b'{"c":1}'))
    await enqueue(store, r.event_id, message("A", "A1"), message("A", "A2", mtype="SIU^S13"),
                  message("B", "B1"))
    now = time.time()
    claimed = await store.claim_lane_heads("ehr", 10, "node-1", 30, now)
    assert sorted(m.control_id for m in claimed) == ["A1", "B1"]
    assert await store.claim_lane_heads("ehr", 10, "node-2", 30, now) == []  # leased
    a1 = next(m for m in claimed if m.control_id == "A1")
    await store.record_attempts([AttemptRecord(a1.id, a1.lane_id, a1.fence, "delivered", now,
                                               ack=b"MSA|AA|A1", ack_code="AA")])
    (a2,) = await store.claim_lane_heads("ehr", 10, "node-1", 30, now + 1)
    assert a2.control_id == "A2"
    info = await store.message(a1.id)
    assert info["status"] == "acked" and info["attempt_log"][0]["ack_code"] == "AA"


async def test_retry_waits_and_keeps_control_id(store) -> None:
    r = await store.accept_webhook(webhook(b'{"d":1}'))
    await enqueue(store, r.event_id, message("A", "A1"))
    now = time.time()
    (m,) = await store.claim_lane_heads("ehr", 10, "n", 30, now)
    await store.record_attempts([AttemptRecord(m.id, m.lane_id, m.fence, "retry", now,
                                               ack_code="AR", next_attempt_at=now + 60)])
    assert await store.claim_lane_heads("ehr", 10, "n", 30, now + 1) == []
    assert abs(await store.next_ready_at("ehr") - (now + 60)) < 0.01
    (again,) = await store.claim_lane_heads("ehr", 10, "n", 30, now + 61)
    assert again.control_id == "A1" and again.attempts == 1


async def test_dead_letter_holds_its_lane_until_released(store) -> None:
    r = await store.accept_webhook(webhook(b'{"e":1}'))
    await enqueue(store, r.event_id, message("A", "A1"), message("A", "A2"), message("B", "B1"))
    now = time.time()
    heads = await store.claim_lane_heads("ehr", 10, "n", 30, now)
    a1 = next(m for m in heads if m.control_id == "A1")
    await store.record_attempts([AttemptRecord(a1.id, a1.lane_id, a1.fence, "dead", now,
                                               ack_code="AE", detail="unknown provider")])
    heads = await store.claim_lane_heads("ehr", 10, "n2", 30, now + 1)
    assert [m.control_id for m in heads] == []  # B1 still leased by n, A held
    (dead,) = await store.dead_letters(10)
    assert dead["control_id"] == "A1" and dead["error"] == "unknown provider"
    summary = {s["destination"]: s for s in await store.queue_summary(now)}
    assert summary["ehr"]["held_lanes"] == 1 and summary["ehr"]["dead"] == 1
    assert await store.release_lane(a1.lane_id, "analyst")
    (a2,) = await store.claim_lane_heads("ehr", 10, "n", 30, now + 2)
    assert a2.control_id == "A2"
    ops = [e for e in await store.audit(None, None, 50) if e["kind"] == "operator"]
    assert ops[-1]["actor"] == "analyst" and ops[-1]["trigger"] == "release"


async def test_resend_puts_a_dead_letter_back_at_the_head(store) -> None:
    r = await store.accept_webhook(webhook(b'{"f":1}'))
    await enqueue(store, r.event_id, message("A", "A1"), message("A", "A2"))
    now = time.time()
    (a1,) = await store.claim_lane_heads("ehr", 10, "n", 30, now)
    await store.record_attempts([AttemptRecord(a1.id, a1.lane_id, a1.fence, "dead", now)])
    assert await store.resend(a1.id, "analyst")
    (again,) = await store.claim_lane_heads("ehr", 10, "n", 30, now + 1)
    assert again.id == a1.id and again.control_id == "A1"


async def test_skip_policy_moves_past_a_dead_letter(store) -> None:
    r = await store.accept_webhook(webhook(b'{"g":1}'))
    await enqueue(store, r.event_id, message("A", "A1"), message("A", "A2"))
    now = time.time()
    (a1,) = await store.claim_lane_heads("ehr", 10, "n", 30, now)
    await store.record_attempts([AttemptRecord(a1.id, a1.lane_id, a1.fence, "dead", now,
                                               hold_lane=False)])
    (a2,) = await store.claim_lane_heads("ehr", 10, "n", 30, now + 1)
    assert a2.control_id == "A2"


async def test_message_born_dead_holds_the_lane(store) -> None:
    r = await store.accept_webhook(webhook(b'{"h":1}'))
    await enqueue(store, r.event_id, message("A", "A1", error="no mapping for provider 4211"),
                  message("A", "A2", mtype="SIU^S13"))
    assert await store.claim_lane_heads("ehr", 10, "n", 30, time.time()) == []
    (dead,) = await store.dead_letters(10)
    assert dead["error"] == "no mapping for provider 4211"
    assert await store.destinations_holding(["A"]) == set()


async def test_stale_claim_cannot_decide(store) -> None:
    r = await store.accept_webhook(webhook(b'{"i":1}'))
    await enqueue(store, r.event_id, message("A", "A1"))
    now = time.time()
    (old,) = await store.claim_lane_heads("ehr", 10, "slow-node", 1, now)
    (new,) = await store.claim_lane_heads("ehr", 10, "fast-node", 30, now + 2)  # lease lapsed
    assert new.fence > old.fence
    await store.record_attempts([AttemptRecord(old.id, old.lane_id, old.fence, "dead", now + 3)])
    assert (await store.message(old.id))["status"] == "queued"


async def test_paused_channel_is_not_claimed(store) -> None:
    r = await store.accept_webhook(webhook(b'{"j":1}'))
    await enqueue(store, r.event_id, message("A", "A1", channel="paused-ch"), message("B", "B1"))
    await store.set_channel_paused("paused-ch", True, "analyst")
    assert await store.paused_channels() == {"paused-ch"}
    now = time.time()
    assert [m.control_id for m in await store.claim_lane_heads("ehr", 10, "n", 30, now)] == ["B1"]
    await store.set_channel_paused("paused-ch", False, "analyst")
    assert [m.control_id for m in await store.claim_lane_heads("ehr", 10, "n", 30, now)] == ["A1"]
