"""The store contract for the operator actions that put a message back in its lane, on every
implementation (SQLite file, real PostgreSQL): never the same change under two MSH-10s, never
an older state of an appointment after a newer one the EHR has."""

from __future__ import annotations

import time

import pytest

from engine.store.base import AttemptRecord
from engine.store.requeue import InFlight, LaterChangesSent, MayBeHeld
from tests.store.test_store import ack, enqueue, message, webhook


async def story(store, tag: str):  # noqa: ANN001, ANN201
    """S12, S13, S15 of one appointment, queued in one lane."""
    r = await store.accept_webhook(webhook(f'{{"requeue":"{tag}"}}'.encode()))
    await enqueue(store, r.event_id, message("A", f"{tag}12"),
                  message("A", f"{tag}13", mtype="SIU^S13"),
                  message("A", f"{tag}15", mtype="SIU^S15"))


async def send(store, at: float, outcome: str, code: str | None, **extra):  # noqa: ANN001, ANN003, ANN201
    (m,) = await store.claim_lane_heads("ehr", 1, "node", 30, at)
    await store.record_attempts([AttemptRecord(
        m.id, m.lane_id, m.fence, outcome, at, ack=ack(code, m.control_id) if code else None,
        ack_code=code, **extra)])
    return m


async def test_resend_refuses_to_undo_a_cancellation(store) -> None:
    await story(store, "C")
    now = time.time()
    s12 = await send(store, now, "dead", "AE", detail="unknown visit type")
    assert await store.release_lane(s12.lane_id, "analyst")
    s13 = await send(store, now + 1, "delivered", "AA")
    s15 = await send(store, now + 2, "delivered", "AA")
    with pytest.raises(LaterChangesSent) as refused:
        await store.resend(s12.id, "analyst")
    assert [(h.message_id, h.message_type, h.control_id) for h in refused.value.later] == [
        (s13.id, "SIU^S13", "C13"), (s15.id, "SIU^S15", "C15")]
    assert (await store.message(s12.id))["status"] == "skipped"  # nothing changed
    assert await store.claim_lane_heads("ehr", 10, "node", 30, now + 3) == []
    # forced: it goes, and the audit trail says what it was sent after
    assert await store.resend(s12.id, "analyst", force=True)
    (again,) = await store.claim_lane_heads("ehr", 10, "node", 30, now + 4)
    assert again.id == s12.id
    op = [e for e in await store.audit("A", None, 50) if e["kind"] == "operator"][-1]
    assert op["trigger"] == "resend" and op["detail"]["forced_after"] == [s13.id, s15.id]


async def test_resend_waits_for_a_later_change_that_may_have_arrived(store) -> None:
    """A later change whose send timed out may be at the EHR: an older one must not follow."""
    await story(store, "T")
    now = time.time()
    s12 = await send(store, now, "delivered", "AA")
    s13 = await send(store, now + 1, "retry", None, detail="timeout",
                     next_attempt_at=now + 60)
    with pytest.raises(LaterChangesSent) as refused:
        await store.resend(s12.id, "analyst")
    assert [h.message_id for h in refused.value.later] == [s13.id]
    assert "no answer" in refused.value.later[0].how


async def test_resend_passes_later_changes_the_ehr_refused(store) -> None:
    await story(store, "R")
    now = time.time()
    s12 = await send(store, now, "dead", "AE")
    assert await store.release_lane(s12.lane_id, "analyst")
    await send(store, now + 1, "dead", "AE")  # the S13: the EHR has no such appointment
    assert await store.resend(s12.id, "analyst")
    (again,) = await store.claim_lane_heads("ehr", 10, "node", 30, now + 2)
    assert again.id == s12.id


async def test_a_reply_for_another_message_is_no_refusal(store) -> None:
    """An AE whose MSA-2 names another MSH-10 says nothing about ours: it may have arrived."""
    await story(store, "W")
    now = time.time()
    s12 = await send(store, now, "dead", "AE")
    assert await store.release_lane(s12.lane_id, "analyst")
    (s13,) = await store.claim_lane_heads("ehr", 1, "node", 30, now + 1)
    await store.record_attempts([AttemptRecord(s13.id, s13.lane_id, s13.fence, "dead", now + 1,
                                               ack=ack("AE", "SOMEONE-ELSE"), ack_code="AE")])
    with pytest.raises(LaterChangesSent):
        await store.resend(s12.id, "analyst")


async def test_reprocess_refuses_a_message_being_sent(store) -> None:
    await story(store, "F")
    now = time.time()
    (s12,) = await store.claim_lane_heads("ehr", 1, "node-a/ehr/0/x", 30, now)
    for force in (False, True):  # never: its bytes may be on the wire right now
        with pytest.raises(InFlight) as refused:
            await store.replace_payload(s12.id, "F12-fixed", b"MSH|fixed", "analyst",
                                        force=force)
        assert refused.value.owner == "node-a/ehr/0/x"
    info = await store.message(s12.id)
    assert info["control_id"] == "F12" and info["payload"] == s12.payload
    # its outcome lands as usual: the claim was not disturbed
    await store.record_attempts([AttemptRecord(s12.id, s12.lane_id, s12.fence, "delivered",
                                               now + 1, ack=ack("AA", "F12"), ack_code="AA")])
    assert (await store.message(s12.id))["status"] == "acked"


async def test_reprocess_refuses_a_message_the_ehr_may_hold(store) -> None:
    await story(store, "U")
    now = time.time()
    s12 = await send(store, now, "retry", None, detail="timeout", next_attempt_at=now + 60)
    with pytest.raises(MayBeHeld) as refused:
        await store.replace_payload(s12.id, "U12-fixed", b"MSH|fixed", "analyst")
    (held,) = refused.value.held
    assert (held.message_id, held.control_id) == (s12.id, "U12")
    assert (await store.message(s12.id))["control_id"] == "U12"
    assert await store.replace_payload(s12.id, "U12-fixed", b"MSH|fixed", "analyst", force=True)
    op = [e for e in await store.audit("A", None, 50) if e["kind"] == "operator"][-1]
    assert op["trigger"] == "reprocess" and op["detail"]["forced_after"] == [s12.id]


async def test_reprocess_refuses_a_message_whose_sender_stopped_mid_send(store) -> None:
    await story(store, "K")
    now = time.time()
    (s12,) = await store.claim_lane_heads("ehr", 1, "crashed-node", -1, now)  # lapsed
    with pytest.raises(MayBeHeld) as refused:
        await store.replace_payload(s12.id, "K12-fixed", b"MSH|fixed", "analyst")
    assert "crashed-node" in refused.value.held[0].how


async def test_reprocess_of_a_refused_or_unsent_message_goes(store) -> None:
    await story(store, "OK")
    now = time.time()
    s12 = await send(store, now, "dead", "AE")  # the EHR refused it: a fix may go
    assert await store.replace_payload(s12.id, "OK12-fixed", b"MSH|fixed", "analyst")
    info = await store.message(s12.id + 1)  # never sent (held behind the S12): may change
    assert await store.replace_payload(info["id"], "OK13-fixed", b"MSH|fixed13", "analyst")


async def test_reprocess_refuses_to_undo_a_cancellation(store) -> None:
    await story(store, "X")
    now = time.time()
    s12 = await send(store, now, "dead", "AE")
    assert await store.release_lane(s12.lane_id, "analyst")
    await send(store, now + 1, "delivered", "AA")
    await send(store, now + 2, "delivered", "AA")
    with pytest.raises(LaterChangesSent):
        await store.replace_payload(s12.id, "X12-fixed", b"MSH|fixed", "analyst")
    assert (await store.message(s12.id))["status"] == "skipped"
