"""The inbound store methods, on SQLite and (when reachable) PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from engine.store.inbound_records import HeldBlock, InboundMessage, JobOutcome, UidRecord


# the `store` fixture of conftest.py: both implementations, a fresh store each


def msg(control_id: str, appt: str, trigger: str = "S12", **params: Any) -> InboundMessage:
    return InboundMessage("ch", "EHR|FAC", control_id, trigger, appt, b"MSH|...", time.time(),
                          job_params={"action": "create", **params})


async def test_accept_is_idempotent_per_sender_and_control_id(store: Any) -> None:
    first = await store.accept_inbound(msg("C1", "A"))
    again = await store.accept_inbound(msg("C1", "A"))
    assert not first.duplicate and again.duplicate and again.message_id == first.message_id
    assert again.ack_code == "AA"
    counts = await store.inbound_counts()
    assert counts["inbound_messages"] == 1 and counts["inbound_jobs_queued"] == 1


async def test_one_job_in_flight_per_appointment_in_order(store: Any) -> None:
    for i, appt in enumerate(["A", "A", "B", "A", "B"]):
        await store.accept_inbound(msg(f"C{i}", appt))
    now = time.time()
    jobs = await store.inbound_claim_jobs(10, now, 1000)
    assert [(j.ehr_appointment_id, j.message_id) for j in jobs] == [("A", 1), ("B", 3)]
    assert await store.inbound_claim_jobs(10, now, 1000) == []  # heads leased, others wait
    a = jobs[0]
    await store.inbound_finish_jobs([JobOutcome(
        a.id, a.lease, "done", now, held=HeldBlock("ch", "A", "uid-1", "accepted", "s", "e", "P", 9),
        uids=(UidRecord("uid-1", None, "accepted"),), result={"did": "created"})])
    nxt = await store.inbound_claim_jobs(10, now, 1000)
    assert [(j.ehr_appointment_id, j.message_id) for j in nxt] == [("A", 2)]
    assert nxt[0].held is not None and nxt[0].held.current_uid == "uid-1"
    # a stale outcome (old lease) changes nothing
    await store.inbound_finish_jobs([JobOutcome(nxt[0].id, nxt[0].lease - 1, "dead", now)])
    assert (await store.inbound_jobs("dead", 10)) == []
    # retry keeps it at the head, later
    await store.inbound_finish_jobs([JobOutcome(nxt[0].id, nxt[0].lease, "retry", now,
                                                detail="Cal.com 503", next_attempt_at=now + 100)])
    assert await store.inbound_claim_jobs(10, now + 1, 1000) == []
    again = await store.inbound_claim_jobs(10, now + 101, 1000)
    assert [j.message_id for j in again] == [2] and again[0].attempts == 1
    await store.inbound_finish_jobs([JobOutcome(again[0].id, again[0].lease, "dead", now,
                                                detail="Cal.com 409: taken")])
    dead = await store.inbound_jobs("dead", 10)
    assert [d["error"] for d in dead] == ["Cal.com 409: taken"]
    assert await store.inbound_retry_job(dead[0]["id"], "analyst")
    retried = [(e["kind"], e["actor"], e["trigger"], e["detail"])
               for e in await store.audit(None, None, 100) if e["kind"] == "operator"]
    assert retried == [("operator", "analyst", "inbound_retry", {"inbound_job": dead[0]["id"]})]
    assert [j.message_id for j in await store.inbound_claim_jobs(10, now + 200, 1000)] == [2]


async def test_origins_and_watermarks(store: Any) -> None:
    await store.accept_inbound(msg("C1", "A"))
    job = (await store.inbound_claim_jobs(1, time.time(), 60))[0]
    await store.inbound_finish_jobs([JobOutcome(job.id, job.lease, "done", time.time(), uids=(
        UidRecord("u1", None, "cancelled"), UidRecord("u2", "u1", "accepted")))])
    assert await store.inbound_origins(["u1", "u2", "zz", ""]) == {"u1": "ch", "u2": "ch"}
    assert await store.reconcile_watermark("default") is None
    mark = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    await store.set_reconcile_watermark("default", mark)
    assert await store.reconcile_watermark("default") == mark
    with pytest.raises(ValueError):
        await store.set_reconcile_watermark("default", datetime(2026, 3, 1))


async def test_concurrent_accepts_share_commits_and_dedupe_within_a_batch(store: Any) -> None:
    import asyncio

    msgs = [msg(f"K{i % 40}", f"A{i % 40}") for i in range(50)]  # 10 resends among them
    results = await asyncio.gather(*(store.accept_inbound(m) for m in msgs))
    assert sum(not r.duplicate for r in results) == 40
    assert sum(r.duplicate for r in results) == 10
    by_control: dict[str, set[int]] = {}
    for m, r in zip(msgs, results, strict=True):
        by_control.setdefault(m.control_id, set()).add(r.message_id)
    assert all(len(ids) == 1 for ids in by_control.values())
    counts = await store.inbound_counts()
    assert counts["inbound_messages"] == 40 and counts["inbound_jobs_queued"] == 40
