"""/metrics says what happened: a scripted run with every kind of outcome, then the scraped
figures against what the store and the simulated EHRs saw; and 10,000 bookings make no more
series than 100."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from engine.http.asgi import HttpSettings, WebhookApp
from engine.metrics import trigger_label
from engine.sim.bookings import StoryTeller, compact, sign
from engine.sim.ehr import SimPolicy, simulator_of
from tests.engine.test_delivery import received
from tests.engine_harness import SECRET, Running, eventually, fast_channels, running_engine

Labels = frozenset[tuple[str, str]]


# ---------------------------------------------------------------------- helpers
async def scrape(client: httpx.AsyncClient) -> str:
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    return r.text


def samples(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of a scrape: (sample name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def values(text: str, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """One metric's samples summed by the given label values (zeros left out)."""
    out: dict[tuple[str, ...], float] = {}
    for (sample, labels), value in samples(text).items():
        if sample == name and value:
            d = dict(labels)
            key = tuple(d[k] for k in keys)
            out[key] = out.get(key, 0) + value
    return out


async def quiet(eng: Running, timeout: float = 20.0) -> None:
    """Nothing pending, nothing in flight or waiting for a retry: every lane is empty or held
    by a dead letter."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        counts = await eng.store.counts()
        lanes = await eng.store.lanes(None, 100_000)
        if not counts.get("events_pending") and all(lane["held"] for lane in lanes):
            break
        assert loop.time() < deadline, f"not quiet: {counts}, {lanes[:3]}"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # the last outcome's counters follow its commit


async def all_messages(eng: Running) -> list[dict[str, Any]]:
    out = []
    for i in range(1, 100_000):
        msg = await eng.store.message(i)
        if msg is None:
            return out
        out.append(msg)
    return out


# ---------------------------------------------------------------------- the scripted run
async def test_scraped_metrics_equal_what_happened(tmp_path: Path) -> None:
    limit = 64 * 1024
    main_policy = SimPolicy(ae_every=3)  # AE 204 to every 3rd message: dead letter, lane held
    legacy_policy = SimPolicy(encoding="ascii", ar_match=["MSH-9.2=S15"])  # AR 201 on cancels
    async with running_engine(tmp_path, channels_dir=fast_channels(tmp_path),
                              main_policy=main_policy, legacy_policy=legacy_policy,
                              max_body_bytes=limit) as eng:
        webhooks: Counter[tuple[str, str, str]] = Counter()

        async def post(hook: dict[str, Any] | bytes, outcome: str, status: int,
                       trigger: str | None, **kw: str) -> None:
            r = await eng.post(hook, **kw)
            assert r.status_code == status, r.text
            assert status >= 400 or r.json()["status"] == outcome, r.text
            webhooks["default", trigger_label(trigger), outcome] += 1

        # phase 1: bookings; an AE and an AR dead-letter, a redelivery, a quarantine,
        # a forged signature, a body too large
        teller = StoryTeller(seed=21)
        stories = [teller.story() for _ in range(14)]
        for story in stories:
            for hook in story.webhooks:
                await post(hook, "accepted", 200, hook["triggerEvent"])
        first = stories[0].webhooks[0]
        await post(first, "duplicate", 200, first["triggerEvent"])
        broken = json.loads(compact(first))
        del broken["payload"]["uid"]
        await post(broken, "quarantined", 202, broken["triggerEvent"])
        await post(first, "rejected_signature", 401, None, secret="not-the-secret")
        await post(b'{"pad":"' + b"x" * limit + b'"}', "too_large", 413, None)
        await quiet(eng)
        main_dead = [d for d in await eng.store.dead_letters(100) if d["destination"] == "ehr-main"]
        assert len(main_dead) >= 2, "the scenario needs two AE dead letters at the main EHR"

        # phase 2: the main EHR goes silent (timeouts, then resends under the same MSH-10),
        # comes back; an analyst resends one dead letter and reprocesses another
        main = simulator_of(eng.sims["main_server"])
        main.policy = SimPolicy(silent=True)
        teller = StoryTeller(seed=22)
        for story in [teller.story() for _ in range(5)]:
            for hook in story.webhooks:
                await post(hook, "accepted", 200, hook["triggerEvent"])
        await eventually(lambda: main.received >= 2)  # a send, a timeout, a resend
        main.policy = SimPolicy()
        assert await eng.store.resend(main_dead[0]["id"], "analyst")
        fix = await eng.store.message(main_dead[1]["id"])
        new_id = "R" + fix["control_id"][1:]
        assert await eng.store.replace_payload(
            fix["id"], new_id, bytes(fix["payload"]).replace(fix["control_id"].encode(),
                                                            new_id.encode(), 1), "analyst")
        await quiet(eng)
        await eng.engine.refresh_gauges()
        text = await scrape(eng.client)

        # ---- what happened: each attempt and the reply the engine read are in the store;
        # whether a message went out before, and under which MSH-10, the EHRs' own logs say
        messages = await all_messages(eng)
        key_of: dict[str, tuple[str, str, str]] = {}
        expected: Counter[tuple[str, str, str, str]] = Counter()
        queued: Counter[tuple[str, str, str]] = Counter()
        replies: Counter[str] = Counter()
        for m in messages:
            key = (m["channel"], m["destination"], m["message_type"])
            queued[key] += 1
            key_of[m["control_id"]] = key
            for a in m["attempt_log"]:
                key_of[a["control_id"]] = key
                if a["ack"] is not None:
                    replies[m["destination"]] += 1
                if a["outcome"] == "delivered":
                    expected[(*key, "acked")] += 1
                    continue
                if a["outcome"] == "dead":
                    expected[(*key, "dead_lettered")] += 1
                if a["ack_code"] in ("AE", "CE"):
                    expected[(*key, "application_error")] += 1
                elif a["ack_code"] in ("AR", "CR"):
                    expected[(*key, "rejected")] += 1
                elif "no reply from" in (a["detail"] or ""):
                    expected[(*key, "timeout")] += 1
                else:
                    expected[(*key, "connection_error")] += 1
            if m["error"] and not m["attempt_log"]:  # dead at render
                expected[(*key, "dead_lettered")] += 1
        for log in ("main.jsonl", "legacy.jsonl"):
            for rec in received(tmp_path / log):
                key = key_of[rec["msh10"]]
                if rec["repeat"]:
                    expected[(*key, "resent")] += 1
                elif rec["msh10"] == new_id:
                    expected[(*key, "reprocessed")] += 1

        # the scenario did what it says
        outcomes = {k[3] for k in expected}
        assert {"acked", "application_error", "rejected", "timeout", "dead_lettered",
                "resent", "reprocessed"} <= outcomes, outcomes

        # ---- and /metrics says the same
        assert values(text, "calhl7_webhooks_received_total", "source", "trigger",
                      "outcome") == dict(webhooks)
        assert values(text, "calhl7_messages_total", "channel", "destination",
                      "message_type", "outcome") == dict(expected)
        assert values(text, "calhl7_messages_queued_total", "channel", "destination",
                      "message_type") == dict(queued)

        processed = await eng.store.events("processed", 10_000)
        events = Counter("routed" if e.reason is None else
                         "unrouted" if e.reason == "unrouted" else "no_change" for e in processed)
        events["ignored"] += len(await eng.store.events("ignored", 10_000))
        assert values(text, "calhl7_events_total", "outcome") == {
            (k,): v for k, v in events.items() if v}
        assert sum(events.values()) == sum(v for (_, _, o), v in webhooks.items()
                                           if o == "accepted")

        acked = Counter(m["destination"] for m in messages if m["status"] == "acked")
        assert values(text, "calhl7_ack_latency_seconds_count", "destination") == {
            (d,): n for d, n in replies.items()}
        assert values(text, "calhl7_end_to_end_latency_seconds_count", "destination") == {
            (d,): n for d, n in acked.items()}

        # gauges from the store
        summary = {row["destination"]: row for row in await eng.store.queue_summary(0)}
        for name, column in (("calhl7_queue_depth_messages", "queued"),
                             ("calhl7_dead_letter_messages", "dead"),
                             ("calhl7_held_lanes", "held_lanes")):
            got = values(text, name, "destination")
            assert got == {(d,): row[column] for d, row in summary.items() if row[column]}, name
        assert samples(text)[("calhl7_quarantined_events", frozenset())] == 1
        ages = values(text, "calhl7_queue_oldest_age_seconds", "destination")
        assert set(ages) == {(d,) for d, row in summary.items() if row["queued"]}

        # each timeout or broken connection costs a reconnect; each connection slot connects
        lost = sum(v for k, v in expected.items()
                   if k[1] == "ehr-main" and k[3] in ("timeout", "connection_error"))
        connected = values(text, "calhl7_mllp_reconnects_total", "destination", "outcome")
        assert lost + 1 <= connected["ehr-main", "connected"] <= lost + 2
        assert ("ehr-main", "failed") not in connected


async def test_gauges_come_from_the_store_right_after_a_restart(tmp_path: Path) -> None:
    channels = fast_channels(tmp_path)
    policy = SimPolicy(ae_every=1)  # every message dead at the main EHR
    async with running_engine(tmp_path, channels_dir=channels, main_policy=policy) as eng:
        teller = StoryTeller(seed=3)
        for _ in range(4):
            for hook in teller.story().webhooks:
                assert (await eng.post(hook)).status_code == 200
        await eng.post({"triggerEvent": "BOOKING_CREATED", "payload": {}})  # quarantined
        await quiet(eng)
        before = await eng.store.queue_summary(0)
    # the same store, a new engine (and new counters): the first scrape already knows
    async with running_engine(tmp_path, channels_dir=channels, start_sims=False) as eng:
        text = await scrape(eng.client)
        for row in before:
            d = row["destination"]
            assert values(text, "calhl7_dead_letter_messages", "destination").get((d,), 0) \
                == row["dead"]
            assert values(text, "calhl7_queue_depth_messages", "destination").get((d,), 0) \
                == row["queued"]
        assert samples(text)[("calhl7_quarantined_events", frozenset())] == 1
        assert any(row["dead"] for row in before)
        # counters start at zero; known label values are there from the start
        assert values(text, "calhl7_messages_total", "channel", "destination", "message_type",
                      "outcome") == {}
        assert ("calhl7_webhooks_received_total",
                frozenset({"source": "default", "trigger": "other",
                           "outcome": "rejected_signature"}.items())) in samples(text)
        assert ("calhl7_mllp_reconnects_total",
                frozenset({"destination": "ehr-main", "outcome": "failed"}.items())) \
            in samples(text)


async def test_metrics_on_their_own_address(tmp_path: Path) -> None:
    from load.harness import free_port

    port = free_port()
    async with running_engine(tmp_path, metrics_host="127.0.0.1", metrics_port=port) as eng:
        assert (await eng.client.get("/metrics")).status_code == 404  # not on the webhook port
        r = await eng.post(StoryTeller(seed=1).created()[1])
        assert r.json()["status"] == "accepted"  # the webhook port still takes webhooks
        await eng.settle()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as ops:
            text = await scrape(ops)
            assert values(text, "calhl7_webhooks_received_total", "outcome") == {("accepted",): 1}
            assert (await ops.get("/healthz")).json() == {"status": "alive"}
            ready = await ops.get("/readyz")
            assert ready.status_code == 200 and ready.json()["ready"] is True
            # the ops address takes no webhooks
            assert (await ops.post("/webhooks/calcom", content=b"{}")).status_code == 404


async def test_health_and_readiness(tmp_path: Path) -> None:
    # no EHR is up: the engine is ready (messages wait on disk), the body says why they wait
    async with running_engine(tmp_path, channels_dir=fast_channels(tmp_path),
                              start_sims=False) as eng:
        assert (await eng.client.get("/healthz")).json() == {"status": "alive"}
        teller = StoryTeller(seed=3)
        b, created = teller.created()
        while b.event_type[1] != 731042:  # in person, family medicine: both EHRs get it
            b, created = teller.created()
        await eng.post(created)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            body = (await eng.client.get("/readyz")).json()
            if all(d.get("last_error") for d in body["destinations"].values()):
                break
            assert loop.time() < deadline, body
            await asyncio.sleep(0.1)
        r = await eng.client.get("/readyz")
        assert r.status_code == 200
        body = r.json()
        assert body["ready"] is True and body["store"] == "ok" and body["channels_loaded"]
        assert set(body["destinations"]) == {"ehr-main", "ehr-legacy"}
        assert all(d["connections"] == 0 and d["last_error_at"]
                   for d in body["destinations"].values())
        # a store that cannot take a write is not ready; health stays alive
        original = eng.store.release_claims

        async def broken(owner: str) -> None:
            raise OSError("disk full")

        eng.store.release_claims = broken
        try:
            r = await eng.client.get("/readyz")
            assert r.status_code == 503 and r.json()["store"] == "unavailable"
            assert (await eng.client.get("/healthz")).status_code == 200
        finally:
            eng.store.release_claims = original
        assert (await eng.client.get("/readyz")).status_code == 200


# ---------------------------------------------------------------------- cardinality
async def _asgi_post(app: WebhookApp, body: bytes) -> int:
    """One webhook through the real ASGI app, without the socket (10,000 of them fast)."""
    headers = [(b"content-type", b"application/json"),
               (b"x-cal-signature-256", sign(body, SECRET).encode()),
               (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "path": "/webhooks/calcom", "method": "POST", "headers": headers}
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


def series(text: str) -> set[tuple[str, Labels]]:
    return set(samples(text))


async def test_series_do_not_grow_with_bookings(tmp_path: Path) -> None:
    """10,000 distinct bookings through intake, normalization, routing and rendering, and a
    few seconds of their delivery, make exactly the series that the first 100 made."""
    # generous ACK timeouts: a busy machine must not add timeout series halfway
    channels = fast_channels(tmp_path, connection={"max_connections": 4,
                                                   "response_timeout_seconds": 30})
    async with running_engine(tmp_path, channels_dir=channels) as eng:
        engine = eng.engine
        app = WebhookApp(engine.store, engine.metrics, HttpSettings({"default": [SECRET]}),
                         engine.readiness, on_accepted=engine.processor.wake.set)
        teller = StoryTeller(seed=99)
        bodies = [compact(teller.created()[1]) for _ in range(10_000)]  # distinct bookings

        async def post_all(batch: list[bytes]) -> None:
            for i in range(0, len(batch), 500):
                statuses = await asyncio.gather(*(_asgi_post(app, b) for b in batch[i:i + 500]))
                assert set(statuses) == {200}

        await post_all(bodies[:100])
        counts = await eng.settle(30)
        assert counts.get("messages_queued", 0) == 0 and counts["events_processed"] == 100
        after_100 = series(await scrape(eng.client))

        # an analyst pauses every channel: the next 9,900 queue up without going out yet
        channel_names = [c.name for c in engine.config().channels]
        for name in channel_names:
            await eng.store.set_channel_paused(name, True, "test")
        await post_all(bodies[100:])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while (await eng.store.counts()).get("events_pending"):
            assert loop.time() < deadline
            await asyncio.sleep(0.1)
        await engine.refresh_gauges()
        text = await scrape(eng.client)
        assert values(text, "calhl7_webhooks_received_total", "outcome") == {("accepted",): 10_000}
        assert sum(values(text, "calhl7_events_total", "outcome").values()) == 10_000
        assert sum(values(text, "calhl7_queue_depth_messages", "destination").values()) > 9_900
        assert series(text) == after_100, series(text) ^ after_100

        # resumed: thousands of them go out, still on the same series
        acked_before = sum(values(text, "calhl7_messages_total", "outcome").values())
        for name in channel_names:
            await eng.store.set_channel_paused(name, False, "test")
        engine.supervisor.wake_all()
        async def moved_on() -> str | None:
            text = await scrape(eng.client)
            done = sum(values(text, "calhl7_messages_total", "outcome").values())
            return text if done > acked_before + 100 else None

        text = await eventually(moved_on, timeout=60)
        assert series(text) == after_100, series(text) ^ after_100
