"""The front door over real HTTP: signatures, limits, quarantine, idempotency, durability."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from engine.sim.bookings import StoryTeller, compact, sign
from tests.calcom_factory import load_sample
from tests.engine_harness import SECRET, running_engine


def sample(name: str) -> bytes:
    return compact(load_sample(name))


async def test_signed_sample_is_accepted_and_processed(tmp_path: Path, store_url: str | None) -> None:
    async with running_engine(tmp_path, store_url=store_url) as eng:
        r = await eng.post(sample("booking_created"))
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "accepted"
        counts = await eng.settle()
        assert counts.get("events_processed") == 1
        assert counts.get("messages_acked", 0) >= 1  # reached a simulated EHR


async def test_signature_failures_store_nothing(tmp_path: Path, store_url: str | None) -> None:
    body = sample("booking_created")
    async with running_engine(tmp_path, store_url=store_url) as eng:
        missing = await eng.client.post("/webhooks/calcom", content=body,
                                        headers={"Content-Type": "application/json"})
        wrong = await eng.post(body, secret="another-secret")
        literal = await eng.client.post("/webhooks/calcom", content=body, headers={
            "Content-Type": "application/json", "X-Cal-Signature-256": "no-secret-provided"})
        over_modified = await eng.client.post("/webhooks/calcom", content=body + b" ", headers={
            "Content-Type": "application/json", "X-Cal-Signature-256": sign(body, SECRET)})
        assert [r.status_code for r in (missing, wrong, literal, over_modified)] == [401] * 4
        assert await eng.store.counts() == {}


async def test_two_secrets_while_rotating_and_per_source_secrets(tmp_path: Path, store_url: str | None) -> None:
    secrets = {"default": ["new-secret", "old-secret"], "clinic-b": ["b-secret"]}
    async with running_engine(tmp_path, store_url=store_url, secrets=secrets) as eng:
        old = await eng.post(sample("booking_created"), secret="old-secret")
        new = await eng.post(sample("booking_rescheduled"), secret="new-secret")
        b = await eng.post(sample("booking_created"), secret="b-secret",
                           path="/webhooks/calcom/clinic-b")
        b_wrong = await eng.post(sample("booking_cancelled"), secret="new-secret",
                                 path="/webhooks/calcom/clinic-b")
        unknown = await eng.post(sample("booking_created"), path="/webhooks/calcom/nobody")
        assert (old.status_code, new.status_code, b.status_code) == (200, 200, 200)
        assert b.json()["status"] == "accepted"  # same bytes, other source: not a duplicate
        assert b_wrong.status_code == 401 and unknown.status_code == 404


async def test_oversized_body_is_refused_without_storing(tmp_path: Path, store_url: str | None) -> None:
    async with running_engine(tmp_path, store_url=store_url) as eng:
        # announce 5 MB, send only the first KB: the answer must come without the rest
        reader, writer = await asyncio.open_connection("127.0.0.1", eng.engine.http_port)
        writer.write(b"POST /webhooks/calcom HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nX-Cal-Signature-256: 00\r\n"
                     b"Content-Length: 5000000\r\n\r\n" + b"x" * 1024)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert status_line.split()[1] == b"413"
        # and a chunked body without a declared length is cut off at the limit too
        async def chunks():  # noqa: ANN202
            for _ in range(6):
                yield b"x" * 1_000_000
        try:
            r = await eng.client.post("/webhooks/calcom", content=chunks(), headers={
                "X-Cal-Signature-256": "00", "Content-Type": "application/json"})
            assert r.status_code == 413
        except httpx.TransportError:
            pass  # the server answered and closed while we were still sending
        assert await eng.store.counts() == {}


async def test_signed_but_unusable_bodies_are_quarantined_not_refused(tmp_path: Path, store_url: str | None) -> None:
    created = sample("booking_created")
    cases = {
        "truncated": (created[: len(created) // 2], "application/json"),
        "invalid utf-8": (b'{"triggerEvent":"BOOKING_CREATED","payload":{"uid":"\xff\xfe"}}',
                          "application/json"),
        "form encoded": (b"triggerEvent=BOOKING_CREATED&uid=x",
                         "application/x-www-form-urlencoded"),
        "missing uid": (compact({"triggerEvent": "BOOKING_CREATED", "createdAt":
                                 "2026-03-10T18:00:00Z", "payload": {"startTime": "x"}}),
                        "application/json"),
    }
    async with running_engine(tmp_path, store_url=store_url) as eng:
        for name, (body, ctype) in cases.items():
            r = await eng.post(body, **{"Content-Type": ctype})
            assert r.status_code == 202, (name, r.text)
            assert r.json()["status"] == "quarantined" and r.json()["reason"], name
        quarantined = await eng.store.events("quarantined", 10)
        assert len(quarantined) == len(cases)
        assert all(q.body for q in quarantined)  # raw bytes kept for a fix and a reprocess


async def test_ping_and_unknown_triggers_are_ignored(tmp_path: Path, store_url: str | None) -> None:
    async with running_engine(tmp_path, store_url=store_url) as eng:
        ping = await eng.post({"triggerEvent": "PING", "createdAt": "2026-03-10T18:00:00Z",
                               "payload": {}})
        other = await eng.post({"triggerEvent": "SOMETHING_NEW", "createdAt":
                                "2026-03-10T18:00:00Z", "payload": {"x": 1}})
        ended = await eng.post(sample("meeting_ended"))
        assert [r.status_code for r in (ping, other, ended)] == [200, 200, 200]
        assert {r.json()["status"] for r in (ping, other, ended)} == {"ignored"}


async def test_concurrent_duplicates_give_one_event(tmp_path: Path, store_url: str | None) -> None:
    body = sample("booking_created")
    async with running_engine(tmp_path, store_url=store_url) as eng:
        replies = await asyncio.gather(*(eng.post(body) for _ in range(20)))
        statuses = sorted(r.json()["status"] for r in replies)
        assert statuses.count("accepted") == 1 and statuses.count("duplicate") == 19
        counts = await eng.settle()
        assert counts.get("events_processed") == 1
        main = eng.sims["main"]
        assert sum(main.acks.values()) == 1  # one S12 reached the main EHR


async def test_hard_names_survive_intake(tmp_path: Path, store_url: str | None) -> None:
    teller = StoryTeller(seed=5)
    async with running_engine(tmp_path, store_url=store_url) as eng:
        for _ in range(12):  # the patient list cycles through every hard name
            _, hook = teller.created()
            r = await eng.post(hook)
            assert r.status_code == 200 and r.json()["status"] == "accepted"
        counts = await eng.settle()
        assert counts.get("events_pending", 0) == 0
        assert counts.get("events_quarantined", 0) == 0


async def test_health_and_readiness(tmp_path: Path, store_url: str | None) -> None:
    async with running_engine(tmp_path, store_url=store_url) as eng:
        assert (await eng.client.get("/healthz")).status_code == 200
        ready = await eng.client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["channels_loaded"] is True
        assert (await eng.client.get("/webhooks/calcom")).status_code == 405


async def test_unknown_path_gets_404(tmp_path: Path, store_url: str | None) -> None:
    async with running_engine(tmp_path, store_url=store_url) as eng:
        r = await eng.client.get("/nope")
        assert r.status_code == 404 and r.json()["error"] == "not found"


async def test_pure_core_runs_in_a_helper_process(tmp_path: Path) -> None:
    async with running_engine(tmp_path, processing_processes=1) as eng:
        teller = StoryTeller(seed=12)
        for _ in range(5):
            for hook in teller.story().webhooks:
                assert (await eng.post(hook)).status_code == 200
        counts = await eng.settle(30)
        assert counts.get("events_pending", 0) == 0
        assert eng.engine.processor.helper_batches > 0  # not the in-engine fallback


@pytest.mark.parametrize("helpers", [0, 1])
async def test_a_poison_event_is_quarantined_and_the_rest_flow(tmp_path: Path,
                                                               store_url: str | None,
                                                               helpers: int) -> None:
    """A lone surrogate is valid JSON but not UTF-8: it must neither lose the webhook (5xx)
    nor stop the events behind it (with a helper process: its pipeline starts over)."""
    teller = StoryTeller(seed=13)
    _, poison = teller.created()
    raw = compact(poison).decode()
    first = poison["payload"]["attendees"][0]["firstName"]
    body = raw.replace(json.dumps(first, ensure_ascii=False), '"Zo\\ud800e"', 1)
    body = body.replace(poison["payload"]["uid"], poison["payload"]["uid"] + "\\udfff", 1)
    async with running_engine(tmp_path, store_url=store_url,
                              processing_processes=helpers) as eng:
        r = await eng.post(body.encode())
        assert r.status_code in (200, 202), r.text
        healthy = [teller.created()[1] for _ in range(3)]
        for hook in healthy:
            assert (await eng.post(hook)).status_code == 200
        counts = await eng.settle(20)
        assert counts.get("events_pending", 0) == 0
        assert counts.get("events_processed", 0) >= 3
        assert counts.get("events_quarantined", 0) <= 1  # the poison, kept for a fix
