"""The inbound store methods, on SQLite and (when reachable) PostgreSQL."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.store.inbound_records import HeldBlock, InboundMessage, JobOutcome, UidRecord
from engine.store.migrations import load_migrations
from tests.conftest import STORE_KINDS

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


async def test_a_reused_control_id_is_a_resend_only_when_the_content_matches(store: Any) -> None:
    body = b"MSH|^~\\&|EHR|FAC|||20250101000000||SIU^S12|C9|P|2.5.1\rSCH|A9^EHR\r"
    first = await store.accept_inbound(InboundMessage(
        "ch", "EHR|FAC", "C9", "S12", "A9", body, time.time(), job_params={"action": "create"}))
    # resent with a new MSH-7: the same message
    again = await store.accept_inbound(InboundMessage(
        "ch", "EHR|FAC", "C9", "S12", "A9", body.replace(b"20250101000000", b"20260101"),
        time.time(), job_params={"action": "create"}))
    assert again.duplicate and again.message_id == first.message_id and not again.reused_id
    # the same MSH-10 for other content: a new message, and said to be one
    other = await store.accept_inbound(InboundMessage(
        "ch", "EHR|FAC", "C9", "S15", "B7", body.replace(b"A9^", b"B7^"), time.time(),
        job_params={"action": "cancel"}))
    assert not other.duplicate and other.reused_id and other.message_id != first.message_id
    # that one resent is its own duplicate
    other_again = await store.accept_inbound(InboundMessage(
        "ch", "EHR|FAC", "C9", "S15", "B7", body.replace(b"A9^", b"B7^"), time.time(),
        job_params={"action": "cancel"}))
    assert other_again.duplicate and other_again.message_id == other.message_id
    counts = await store.inbound_counts()
    assert counts["inbound_messages"] == 2 and counts["inbound_jobs_queued"] == 2


_OLD_ROW = ("ch", "EHR|FAC", "OLD1", "S12", "A1", b"MSH|^~\\&|EHR|FAC", "AA", 1.0)


async def _store_before_digests(kind: str, tmp_path: Path) -> Any:
    """A store at the schema before content digests, holding one message and its job."""
    if kind == "sqlite":
        from engine.store.sqlite import SQLiteStore
        from engine.store.sqlite.core import _statements

        path = tmp_path / "old.sqlite3"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)")
        for version, sql in load_migrations("sqlite"):
            if version < 5:
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations VALUES (?)", (version,))
        conn.execute("INSERT INTO inbound_messages (channel, sender, control_id, trigger,"
                     " ehr_appointment_id, payload, ack_code, received_at)"
                     " VALUES (?,?,?,?,?,?,?,?)", _OLD_ROW)
        conn.execute("INSERT INTO inbound_jobs (message_id, channel, ehr_appointment_id,"
                     " trigger, params, status, created_at) VALUES (1,'ch','A1','S12','{}',"
                     "'queued',1.0)")
        conn.close()
        return SQLiteStore(path)
    import asyncpg

    from engine.store.postgres import PostgresStore
    from tests.conftest import PG_URL, _create_schema, _url

    schema = await _create_schema()
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'SET search_path = "{schema}"')
        await conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                           " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        for version, sql in load_migrations("postgres"):
            if version < 5:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)",
                                   version)
        await conn.execute("INSERT INTO inbound_messages (channel, sender, control_id, trigger,"
                           " ehr_appointment_id, payload, ack_code, received_at)"
                           " VALUES ($1,$2,$3,$4,$5,$6,$7,$8)", *_OLD_ROW)
        await conn.execute("INSERT INTO inbound_jobs (message_id, channel, ehr_appointment_id,"
                           " trigger, params, status, created_at) VALUES (1,'ch','A1','S12',"
                           "'{}','queued',1.0)")
    finally:
        await conn.close()
    return PostgresStore(_url(schema))


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_messages_stored_before_digests_keep_the_old_rule(kind: str, tmp_path: Path) -> None:
    store = await _store_before_digests(kind, tmp_path)
    await store.open()
    try:
        # the row from before has no digest: any repeat of its MSH-10 stays a resend
        again = await store.accept_inbound(InboundMessage(
            "ch", "EHR|FAC", "OLD1", "S12", "A1", b"MSH|^~\\&|EHR|FAC|other", time.time(),
            job_params={"action": "create"}))
        assert again.duplicate and again.message_id == 1
        new = await store.accept_inbound(msg("NEW1", "A2"))
        assert not new.duplicate and not new.reused_id
        jobs = await store.inbound_jobs(None, 10)
        # the old job still joins its message
        assert sorted((j["control_id"], j["ehr_appointment_id"]) for j in jobs) == [
            ("NEW1", "A2"), ("OLD1", "A1")]
    finally:
        await store.close()
