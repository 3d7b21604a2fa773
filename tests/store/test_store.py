"""The store contract, run against every implementation (SQLite file, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

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


def ack(code: str, control_id: str) -> bytes:
    """An EHR's reply naming the MSH-10 it answers."""
    return (f"MSH|^~\\&|EHR|CLINIC|CALHL7|CALHL7|20260310120000+0000||ACK|R{control_id}|P|2.5.1"
            f"\rMSA|{code}|{control_id}").encode()


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
    # it waits for a fix and a reprocess: what follows it must not become a second S12
    assert await store.destinations_holding(["A"]) == {("ehr", "A")}


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


# ---------------------------------------------------------------------- more of the contract
async def deliver(store, m, at: float) -> None:
    await store.record_attempts([AttemptRecord(m.id, m.lane_id, m.fence, "delivered", at,
                                               ack=b"MSA|AA", ack_code="AA")])


async def test_replayed_quarantined_body_reports_its_stored_state(store) -> None:
    first = await store.accept_webhook(webhook(b"broken", state=base.QUARANTINED))
    again = await store.accept_webhook(webhook(b"broken"))  # now it would pass the check
    assert again.duplicate and again.event_id == first.event_id
    assert again.state == base.QUARANTINED


async def test_concurrent_distinct_webhooks_all_stored(store) -> None:
    bodies = [b'{"n":%d}' % i for i in range(300)]
    results = await asyncio.gather(*(store.accept_webhook(webhook(b)) for b in bodies))
    assert not any(r.duplicate for r in results)
    assert len({r.event_id for r in results}) == 300
    pending = await store.pending_events(1000)
    assert sorted(e.body for e in pending) == sorted(bodies)
    assert [e.id for e in pending] == sorted(e.id for e in pending)
    assert (await store.counts())["events_pending"] == 300


async def test_duplicate_control_id_is_refused_and_leaves_nothing(store) -> None:
    r1 = await store.accept_webhook(webhook(b'{"k":1}'))
    r2 = await store.accept_webhook(webhook(b'{"k":2}'))
    await enqueue(store, r1.event_id, message("A", "SAME"))
    try:
        await enqueue(store, r2.event_id, message("B", "OTHER"), message("C", "SAME"))
    except Exception:  # noqa: BLE001 - each store raises its driver's integrity error
        pass
    else:
        raise AssertionError("a second message with the same MSH-10 was queued")
    assert [e.id for e in await store.pending_events(10)] == [r2.event_id]  # rolled back whole
    assert await store.destinations_holding(["B", "C"]) == set()
    claimed = await store.claim_lane_heads("ehr", 10, "n", 30, time.time())
    assert [m.control_id for m in claimed] == ["SAME"]


async def test_lane_order_holds_across_batches_and_skips(store) -> None:
    r = await store.accept_webhook(webhook(b'{"l":1}'))
    await enqueue(store, r.event_id, message("A", "A1"))
    r2 = await store.accept_webhook(webhook(b'{"l":2}'))
    await enqueue(store, r2.event_id, message("A", "A2", error="unmapped", hold=False),
                  message("A", "A3", mtype="SIU^S13"), message("A", "A4", mtype="SIU^S14"))
    now = time.time()
    sent = []
    for step in range(5):
        heads = await store.claim_lane_heads("ehr", 10, "n", 30, now + step)
        if not heads:
            break
        (m,) = heads
        sent.append(m.control_id)
        await deliver(store, m, now + step)
    assert sent == ["A1", "A3", "A4"]
    assert (await store.counts()).get("messages_skipped") == 1
    assert await store.lanes("ehr", 10) == []  # drained lanes are not listed


async def test_release_claims_frees_only_that_owner(store) -> None:
    r = await store.accept_webhook(webhook(b'{"m":1}'))
    await enqueue(store, r.event_id, message("A", "A1"), message("B", "B1"))
    now = time.time()
    (a,) = await store.claim_lane_heads("ehr", 1, "x", 30, now)
    (b,) = await store.claim_lane_heads("ehr", 1, "y", 30, now)
    assert {a.control_id, b.control_id} == {"A1", "B1"}
    await store.release_claims("x")
    (again,) = await store.claim_lane_heads("ehr", 10, "z", 30, now)
    # a claim given back went unsent: it does not count as "maybe sent before"
    assert again.id == a.id and again.claims == 1 and again.fence > a.fence
    owners = {lane["head"]: lane["owner"] for lane in await store.lanes("ehr", 10)}
    assert owners == {a.id: "z", b.id: "y"}


async def test_replace_payload_requeues_under_a_new_control_id(store) -> None:
    r = await store.accept_webhook(webhook(b'{"o":1}'))
    await enqueue(store, r.event_id, message("A", "A1"), message("A", "A2"))
    now = time.time()
    (a1,) = await store.claim_lane_heads("ehr", 10, "n", 30, now)
    await store.record_attempts([AttemptRecord(a1.id, a1.lane_id, a1.fence, "dead", now,
                                               ack=ack("AE", "A1"), ack_code="AE",
                                               detail="bad code")])
    assert not await store.replace_payload(999_999, "X", b"x", "analyst")
    assert await store.replace_payload(a1.id, "A1-FIX", b"MSH|fixed", "analyst")
    (m,) = await store.claim_lane_heads("ehr", 10, "n", 30, now + 1)
    assert (m.id, m.control_id, m.payload, m.attempts) == (a1.id, "A1-FIX", b"MSH|fixed", 0)
    await deliver(store, m, now + 1)
    info = await store.message(a1.id)
    assert info["status"] == "acked" and info["error"] is None
    assert [a["control_id"] for a in info["attempt_log"]] == ["A1", "A1-FIX"]
    (op,) = [e for e in await store.audit("A", None, 50) if e["kind"] == "operator"]
    assert op["trigger"] == "reprocess"
    assert op["detail"] == {"message": a1.id, "old_control_id": "A1", "control_id": "A1-FIX"}
    (a2,) = await store.claim_lane_heads("ehr", 10, "n", 30, now + 2)
    assert a2.control_id == "A2"


async def test_resend_of_an_acked_message_goes_ahead_of_the_head(store) -> None:
    r = await store.accept_webhook(webhook(b'{"p":1}'))
    await enqueue(store, r.event_id, message("A", "A1"), message("A", "A2"))
    now = time.time()
    (a1,) = await store.claim_lane_heads("ehr", 10, "n", 30, now)
    await deliver(store, a1, now)
    assert await store.resend(a1.id, "analyst")
    (again,) = await store.claim_lane_heads("ehr", 10, "n", 30, now + 1)
    assert again.control_id == "A1"
    await deliver(store, again, now + 1)
    (a2,) = await store.claim_lane_heads("ehr", 10, "n", 30, now + 2)
    assert a2.control_id == "A2"
    assert not await store.resend(999_999, "analyst")


async def test_operator_views(store) -> None:
    r = await store.accept_webhook(webhook(b'{"q":1}'))
    await enqueue(store, r.event_id, message("A", "A1"), message("A", "A2"),
                  message("B", "B1", destination="lab"))
    now = time.time()
    (a1,) = await store.claim_lane_heads("ehr", 10, "n", 30, now)
    await store.record_attempts([AttemptRecord(a1.id, a1.lane_id, a1.fence, "dead", now,
                                               ack=b"MSA|AE|A1", ack_code="AE",
                                               detail="unknown provider")])
    summary = await store.queue_summary(now + 10)
    assert [(s["destination"], s["queued"], s["dead"], s["held_lanes"]) for s in summary] == [
        ("ehr", 1, 1, 1), ("lab", 1, 0, 0)]
    assert all(s["oldest_age_seconds"] >= 9 for s in summary)
    lanes = await store.lanes(None, 10)
    assert [(x["destination"], x["lane_key"], x["held"], x["queued"]) for x in lanes] == [
        ("ehr", "A", 1, 1), ("lab", "B", 0, 1)]
    assert [x["lane_key"] for x in await store.lanes("lab", 10)] == ["B"]
    info = await store.message(a1.id)
    assert {k: info[k] for k in ("status", "attempts", "error", "ack_code", "control_id")} == {
        "status": "dead", "attempts": 1, "error": "unknown provider", "ack_code": "AE",
        "control_id": "A1"}
    assert info["payload"] == b"MSH|^~\\&|A1" and isinstance(info["correlation_id"], str)
    (attempt,) = info["attempt_log"]
    assert attempt["ack"] == b"MSA|AE|A1" and attempt["outcome"] == "dead"
    assert await store.message(999_999) is None
    assert await store.counts() == {"events_processed": 1, "messages_queued": 2,
                                    "messages_dead": 1}
    (sent,) = [e for e in await store.audit(None, None, 10) if e["kind"] == "sent"]
    assert sent["detail"]["outcome"] == "dead" and sent["detail"]["control_id"] == "A1"
    assert await store.audit(None, now + 3600, 10) == []


async def test_later_result_for_an_appointment_wins_within_a_batch(store) -> None:
    r1 = await store.accept_webhook(webhook(b'{"r":1}'))
    r2 = await store.accept_webhook(webhook(b'{"r":2}'))
    await store.commit_processed([
        ProcessedEvent(r1.event_id, base.PROCESSED, appointment_id="A",
                       appointment_state='{"v":1}', uid_links={"u1": "A"}),
        ProcessedEvent(r2.event_id, base.PROCESSED, appointment_id="A",
                       appointment_state='{"v":2}', uid_links={"u2": "A", "u1": "B"}),
    ])
    assert await store.appointment_states(["u1", "u2"]) == {"u1": '{"v":2}', "u2": '{"v":2}'}


async def test_an_event_is_committed_once(store) -> None:
    """A second commit of a processed event (a pipeline that went wrong, another node) is
    refused whole: it would queue the same change again under a new MSH-10."""
    r1 = await store.accept_webhook(webhook(b'{"once":1}'))
    r2 = await store.accept_webhook(webhook(b'{"once":2}'))
    await enqueue(store, r1.event_id, message("A", "ONCE1"))
    with pytest.raises(base.NotPending):
        await store.commit_processed([
            ProcessedEvent(r2.event_id, base.PROCESSED, messages=(message("B", "ONCE2"),)),
            ProcessedEvent(r1.event_id, base.PROCESSED, messages=(message("A", "ONCE3"),)),
        ])
    assert [e.id for e in await store.pending_events(10)] == [r2.event_id]  # nothing written
    assert (await store.message(1))["control_id"] == "ONCE1"
    assert await store.message(2) is None


async def test_text_with_nul_characters_is_kept(store) -> None:
    """JSON may carry \\u0000; a signed body must never be refused for it."""
    hook = webhook(b'{"uid":"a\\u0000b"}')
    odd = IncomingWebhook(**{**{f: getattr(hook, f) for f in hook.__slots__},
                             "booking_uid": "a\x00b", "trigger": "BOOKING\x00"})
    r = await store.accept_webhook(odd)
    assert not r.duplicate
    (stored,) = await store.pending_events(10)
    assert stored.body == b'{"uid":"a\\u0000b"}'
    await store.commit_processed([ProcessedEvent(
        r.event_id, base.PROCESSED, appointment_id="A\x00", appointment_state='{"v":1}',
        uid_links={"a\x00b": "A\x00"}, messages=(message("A\x00", "N1"),),
        audit=(base.AuditEntry(at=1.0, kind="change", appointment_id="A\x00",
                               detail={"note": "x\x00y"}),),
    )])
    assert await store.appointment_states(["a\x00b"]) == {"a\x00b": '{"v":1}'}
    assert await store.destinations_holding(["A\x00"]) == {("ehr", "A\x00")}
    (entry,) = await store.audit(None, None, 10)
    assert entry["detail"]["note"].startswith("x")


async def test_connection_slots(store) -> None:
    now = time.time()
    assert await store.acquire_slot("ehr", 2, "n1/0", 10, now) == 0
    assert await store.acquire_slot("ehr", 2, "n2/0", 10, now) == 1
    assert await store.acquire_slot("ehr", 2, "n3/0", 10, now) is None  # both leased
    assert await store.acquire_slot("ehr", 2, "n1/0", 10, now + 1) == 0  # its own, renewed
    assert await store.acquire_slot("lab", 1, "n3/0", 10, now) == 0  # per destination
    assert await store.renew_slot("ehr", 1, "n2/0", 10, now + 5)
    assert not await store.renew_slot("ehr", 1, "n1/0", 10, now + 5)  # not its slot
    # n1's lease (until now + 11) lapses; n3 takes slot 0 over and n1 must stop using it
    assert await store.acquire_slot("ehr", 2, "n3/0", 10, now + 12) == 0
    assert not await store.renew_slot("ehr", 0, "n1/0", 10, now + 12)
    await store.release_slot("ehr", 0, "n1/0")  # not the owner any more: no effect
    assert await store.acquire_slot("ehr", 2, "n4/0", 10, now + 12) is None
    await store.release_slot("ehr", 0, "n3/0")
    assert await store.acquire_slot("ehr", 2, "n4/0", 10, now + 12) == 0
    assert await store.acquire_slot("ehr", 0, "n5/0", 10, now) is None


async def test_a_lone_node_leads_and_may_listen(store) -> None:
    assert await store.try_lead("node-1")
    assert await store.try_lead("node-1")  # still
    seen: list[str] = []
    await store.listen(seen.append)


async def test_reprocess_never_requeues_an_acknowledged_message(store) -> None:
    r = await store.accept_webhook(webhook(b'{"ack-then-op":1}'))
    await enqueue(store, r.event_id, message("A", "A1"))
    now = time.time()
    (m,) = await store.claim_lane_heads("ehr", 10, "n", 30, now)
    await store.record_attempts([AttemptRecord(m.id, m.lane_id, m.fence, "delivered", now)])
    # a new MSH-10 for a change the EHR has would be a duplicate: refused
    assert not await store.replace_payload(m.id, "NEW1", b"MSH|new", "analyst")
    assert (await store.message(m.id))["status"] == "acked"
    assert await store.claim_lane_heads("ehr", 10, "n", 30, now + 1) == []


async def test_reprocess_while_in_flight_fences_the_old_send(store) -> None:
    r = await store.accept_webhook(webhook(b'{"inflight-op":1}'))
    await enqueue(store, r.event_id, message("A", "A1"))
    now = time.time()
    (old,) = await store.claim_lane_heads("ehr", 10, "n", 30, now)
    await store.record_attempts([AttemptRecord(old.id, old.lane_id, old.fence, "dead", now,
                                               ack=ack("AE", "A1"), ack_code="AE")])
    assert (await store.message(old.id))["status"] == "dead"
    # the analyst reprocesses; a send of the old bytes that was still in flight answers late
    assert await store.replace_payload(old.id, "A1-fixed", b"MSH|fixed", "analyst")
    await store.record_attempts([AttemptRecord(old.id, old.lane_id, old.fence, "delivered",
                                               now + 1)])
    assert (await store.message(old.id))["status"] == "queued"  # the late ACK did not count
    (new,) = await store.claim_lane_heads("ehr", 10, "n", 30, now + 2)
    assert new.control_id == "A1-fixed" and new.fence > old.fence


async def test_a_lone_surrogate_in_the_lookup_columns_is_stored(store) -> None:
    # valid JSON, not UTF-8: it reaches intake from HTTP and from reconciliation alike
    from engine.calcom.check import check_webhook

    body = b'{"triggerEvent":"BOOKING_CANCELLED","payload":{"uid":"\\ud800x"}}'
    check = check_webhook(body, "application/json")
    assert check.booking_uid == "\ud800x"
    incoming = IncomingWebhook.from_check("default", body, "application/json", check, "c1")
    result = await store.accept_webhook(incoming)
    (kept,) = await store.events(base.QUARANTINED, 10)
    assert kept.id == result.event_id and kept.body == body
    assert kept.booking_uid == "?x"


async def test_an_attempt_is_logged_under_the_control_id_that_went_out(store) -> None:
    r = await store.accept_webhook(webhook(b'{"sent-under":1}'))
    await enqueue(store, r.event_id, message("A", "A1"))
    now = time.time()
    (sent,) = await store.claim_lane_heads("ehr", 10, "n", -1, now)
    # a stalled sender's lease lapsed; an analyst forces a reprocess while its old bytes
    # (MSH-10 A1) are still on the wire
    assert await store.replace_payload(sent.id, "A1-fixed", b"MSH|fixed", "analyst",
                                       force=True)
    await store.record_attempts([AttemptRecord(sent.id, sent.lane_id, sent.fence, "delivered",
                                               now + 1, control_id=sent.control_id)])
    (new,) = await store.claim_lane_heads("ehr", 10, "n", 30, now + 2)
    await store.record_attempts([AttemptRecord(new.id, new.lane_id, new.fence, "delivered",
                                               now + 3, control_id=new.control_id)])
    log = (await store.message(sent.id))["attempt_log"]
    assert [(a["control_id"], a["outcome"]) for a in log] == [
        ("A1", "delivered"), ("A1-fixed", "delivered")]


async def test_sqlite_wal_is_copied_into_the_database_and_stays_bounded(tmp_path) -> None:
    """Under writes that never pause, the database file takes in what was written and the
    WAL is rewound (a store that only ran PASSIVE checkpoints beside the writer, with the
    writer's own turned off, let it grow past a gigabyte)."""
    from engine.store.sqlite import SQLiteStore

    s = SQLiteStore(tmp_path / "store.sqlite3")
    await s.open()
    db, wal = tmp_path / "store.sqlite3", tmp_path / "store.sqlite3-wal"
    try:
        before = db.stat().st_size
        filler = b"x" * 4000
        largest_wal = 0
        for start in range(0, 12_000, 400):  # about 48 MB of bodies, written without a pause
            await asyncio.gather(*(s.accept_webhook(webhook(b'{"n":%d,"f":"%s"}' % (i, filler)))
                                   for i in range(start, start + 400)))
            largest_wal = max(largest_wal, wal.stat().st_size)
        assert largest_wal < 32_000_000, f"the WAL grew to {largest_wal:,} bytes"
        deadline = time.monotonic() + 10
        while db.stat().st_size < before + 40_000_000:
            assert time.monotonic() < deadline, "nothing was checkpointed into the database file"
            await asyncio.sleep(0.05)
    finally:
        await s.close()


async def test_sqlite_a_full_disk_stores_nothing_it_refused(tmp_path) -> None:
    """A full disk makes SQLite undo the whole transaction, not one statement: every webhook
    of that group must then be refused, and none of them stored behind its caller's back."""
    from engine.store.sqlite import SQLiteStore

    s = SQLiteStore(tmp_path / "store.sqlite3")
    await s.open()
    try:
        pages = await s._call(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await s._call(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 40}"))
        bodies = [b'{"full":%d,"f":"%s"}' % (i, b"y" * 6000) for i in range(60)]
        answers = await asyncio.gather(*(s.accept_webhook(webhook(b)) for b in bodies),
                                       return_exceptions=True)
        refused = [b for b, a in zip(bodies, answers) if isinstance(a, BaseException)]
        assert refused, "the disk never filled up: the test proves nothing"
        await s._call(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
        for body, answer in zip(bodies, answers):
            again = await s.accept_webhook(webhook(body))
            stored_before = again.duplicate
            assert stored_before == (not isinstance(answer, BaseException)), (
                "refused but stored" if stored_before else "accepted but not stored")
    finally:
        await s.close()


async def test_a_group_of_deliveries_moves_each_lane_as_one_at_a_time_would(store) -> None:
    """One record_attempts call with every kind of lane behind a delivered head: a next
    message queued, born dead (holding), born dead (skipped), none; plus a claim that was
    taken over meanwhile. Each lane ends as if its outcome had been recorded alone."""
    r = await store.accept_webhook(webhook(b'{"group":1}'))
    await enqueue(store, r.event_id,
                  message("A", "A1"), message("A", "A2", mtype="SIU^S13"),
                  message("B", "B1"), message("B", "B2", mtype="SIU^S13", error="unmapped"),
                  message("C", "C1"), message("C", "C2", mtype="SIU^S13", error="unmapped",
                                                  hold=False),
                  message("C", "C3", mtype="SIU^S15"),
                  message("D", "D1"), message("E", "E1", destination="ehr2"))
    now = time.time()
    (stale,) = await store.claim_lane_heads("ehr2", 10, "slow-node", 1, now)
    (taken,) = await store.claim_lane_heads("ehr2", 10, "fast-node", 30, now + 2)
    heads = {m.control_id: m for m in await store.claim_lane_heads("ehr", 10, "n", 30, now + 2)}
    assert sorted(heads) == ["A1", "B1", "C1", "D1"]
    group = [AttemptRecord(m.id, m.lane_id, m.fence, "delivered", now + 3, ack=b"MSA|AA",
                           ack_code="AA", control_id=m.control_id)
             for m in [*heads.values(), stale]]
    await store.record_attempts(group)

    by_control = {}
    for i in range(1, 20):
        info = await store.message(i)
        if info:
            by_control[info["control_id"]] = info
    for cid in ("A1", "B1", "C1", "D1"):
        assert by_control[cid]["status"] == "acked", cid
        assert [a["control_id"] for a in by_control[cid]["attempt_log"]] == [cid]
    assert by_control["C2"]["status"] == "skipped"  # born dead, not holding: passed over
    assert by_control["B2"]["status"] == "dead"
    # the taken-over claim logged its attempt but decided nothing
    assert by_control["E1"]["status"] == "queued"
    assert [a["control_id"] for a in by_control["E1"]["attempt_log"]] == ["E1"]
    assert taken.fence > stale.fence
    # next heads: A2 and C3; B is held by its dead B2; D is empty
    later = await store.claim_lane_heads("ehr", 10, "n2", 30, now + 4)
    assert sorted(m.control_id for m in later) == ["A2", "C3"]
    assert [d["control_id"] for d in await store.dead_letters(10)] == ["B2"]
    summary = {s["destination"]: s for s in await store.queue_summary(now + 4)}
    assert summary["ehr"]["held_lanes"] == 1
    sent = [e for e in await store.audit(None, None, 50) if e["kind"] == "sent"]
    assert [(e["appointment_id"], e["detail"]["control_id"], e["detail"]["outcome"],
             e["detail"]["channel"], e["source"]) for e in sent] == [
        (c, f"{c}1", "delivered", "ch", "ehr") for c in "ABCD"]
