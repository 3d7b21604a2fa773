"""Reconciliation against the fake Cal.com over HTTP, into the real store and processor."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.calcom.api import CalcomApi
from engine.config.outbound import load_config
from engine.metrics import Metrics
from engine.processing import Processor
from engine.reconcile import reconcile_once, run_reconciler
from engine.sim.bookings import compact
from engine.store.base import IncomingWebhook
from engine.store.sqlite import SQLiteStore
from tests.conftest import REPO
from tests.engine_harness import eventually
from tests.fake_calcom import FakeCalcom, standard_fake

KEY = "cal_test_key"


@dataclass
class Env:
    fake: FakeCalcom
    store: SQLiteStore
    api: CalcomApi
    processor: Processor
    metrics: Metrics


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    fake = await standard_fake().start()
    store = SQLiteStore(tmp_path / "store.sqlite3")
    await store.open()
    metrics = Metrics()
    config = load_config(REPO / "channels")
    api = CalcomApi(KEY, fake.base_url, metrics=metrics, rate_per_minute=6000)
    try:
        yield Env(fake, store, api, Processor(store, lambda: config, metrics), metrics)
    finally:
        await api.aclose()
        await store.close()
        await fake.stop()


def patient_booking(fake: FakeCalcom, event_type: int, days: int, hour: int, *,
                    name: str = "Ada Testpatient", webhooks: bool = False) -> Any:
    start = (datetime.now(UTC) + timedelta(days=days)).replace(hour=hour, minute=0, second=0,
                                                               microsecond=0)
    return fake.create({
        "start": start.isoformat(), "eventTypeId": event_type,
        "attendee": {"name": name, "email": f"{name.split()[0].lower()}@example.com",
                     "timeZone": "America/New_York", "phoneNumber": "+15555550123"},
        "bookingFieldsResponses": {"dateOfBirth": "1984-07-12", "patientType": "new",
                                   "attendeePhoneNumber": "+15555550123"},
    }, webhooks=webhooks)


async def accept_like_intake(store: Any, envelope: dict[str, Any]) -> None:
    """What the webhook endpoint stores for a body Cal.com sent (compact JSON)."""
    import hashlib
    import time

    from engine.calcom.check import check_webhook

    body = compact(envelope)
    check = check_webhook(body, "application/json")
    await store.accept_webhook(IncomingWebhook(
        "default", body, hashlib.sha256(body).digest(), "application/json", check.trigger,
        check.booking_uid, time.time(), "wh-test", "pending", check.reason))


async def outbound(store: Any, destination: str = "ehr-main") -> list[dict[str, Any]]:
    out = []
    for i in range(1, 10_000):
        m = await store.message(i)
        if m is None:
            break
        if m["destination"] == destination:
            out.append(m)
    return out


async def test_missed_webhooks_are_fed_and_become_siu(env: Env) -> None:
    since = datetime.now(UTC) - timedelta(minutes=5)
    created = patient_booking(env.fake, 731042, 3, 14)  # its BOOKING_CREATED was dropped
    moved_from = patient_booking(env.fake, 731042, 4, 14, name="Bea Testpatient")
    moved_to = env.fake.reschedule(moved_from, {"start": (moved_from.start + timedelta(days=1)).isoformat()},
                                   webhooks=False)
    gone = patient_booking(env.fake, 731044, 5, 15, name="Cy Testpatient")
    env.fake.cancel(gone, "Feeling better", by="cy@example.com", webhooks=False)

    summary = await reconcile_once(env.api, env.store, since=since, source="default",
                                   metrics=env.metrics)
    assert summary.listed == 4 and summary.replaced == 1 and summary.fed == 3
    assert summary.watermark is not None and summary.watermark > since
    # a booking never updated has no updatedAt: only the afterCreatedAt sweep finds it
    lists = env.fake.calls("GET", "/v2/bookings")
    assert {k for r in lists for k in r.query if k.startswith("after")} == {
        "afterUpdatedAt", "afterCreatedAt"}
    assert all(r.query["status"] == "upcoming,recurring,past,cancelled,unconfirmed" for r in lists)
    events = await env.store.pending_events(100)
    by_uid = {e.booking_uid: e for e in events}
    assert by_uid[created.uid].trigger == "BOOKING_CREATED"
    assert by_uid[moved_to.uid].trigger == "BOOKING_RESCHEDULED"
    assert json.loads(by_uid[moved_to.uid].body)["payload"]["rescheduleUid"] == moved_from.uid
    assert by_uid[gone.uid].trigger == "BOOKING_CANCELLED"
    assert moved_from.uid not in by_uid

    await env.processor.process_once()
    msgs = await outbound(env.store)
    created_siu = [m for m in msgs if m["appointment_id"] == created.uid]
    assert [m["message_type"] for m in created_siu] == ["SIU^S12"]
    # the rescheduled booking's original was never seen: one appointment, id = the first uid
    assert {m["appointment_id"] for m in msgs if m["message_type"] == "SIU^S12"} >= {
        created.uid, moved_from.uid}
    assert env.metrics.reconcile_found._value.get() == 3


async def test_a_booking_seen_by_both_paths_gives_one_siu(env: Env) -> None:
    since = datetime.now(UTC) - timedelta(minutes=5)
    booking = patient_booking(env.fake, 731042, 3, 10, webhooks=True)  # webhook delivered
    await accept_like_intake(env.store, env.fake.webhooks_sent[-1])
    await env.processor.process_once()
    assert [m["message_type"] for m in await outbound(env.store)] == ["SIU^S12"]

    summary = await reconcile_once(env.api, env.store, since=since, source="default")
    assert summary.fed == 1  # a different body (API shape) ...
    await env.processor.process_once()
    assert [m["message_type"] for m in await outbound(env.store)] == ["SIU^S12"]  # ... no SIU
    done = await env.store.events("processed", 10)
    assert done[-1].correlation_id.startswith("rc-")
    assert (done[-1].reason or "").startswith("already held")  # same details: no S14 either

    # then the patient cancels; that webhook is lost; reconciliation brings the S15
    env.fake.cancel(booking, "Cannot make it", by="ada@example.com", webhooks=False)
    summary = await reconcile_once(env.api, env.store, since=since, source="default")
    assert summary.fed == 1
    await env.processor.process_once()
    assert [m["message_type"] for m in await outbound(env.store)] == ["SIU^S12", "SIU^S15"]


async def test_two_runs_over_the_same_state_are_byte_identical(env: Env) -> None:
    since = datetime.now(UTC) - timedelta(minutes=5)
    for i in range(130):  # more than one page (take=100)
        patient_booking(env.fake, 731042 if i % 2 else 731044, 3 + i // 8, 8 + i % 8,
                        name=f"P{i} Testpatient")
    first = await reconcile_once(env.api, env.store, since=since, source="default")
    assert first.listed == 130 and first.fed == 130 and first.pages == 3  # 1 + 2 pages
    second = await reconcile_once(env.api, env.store, since=since, source="default")
    assert second.fed == 0 and second.duplicates == 130
    counts = await env.store.counts()
    assert counts["events_pending"] == 130


async def test_no_show_and_pending_bookings(env: Env) -> None:
    since = datetime.now(UTC) - timedelta(minutes=5)
    pending = patient_booking(env.fake, 731043, 3, 9)
    seen = patient_booking(env.fake, 731044, 3, 11, name="Di Testpatient")
    env.fake.mark_absent(seen, webhooks=False)
    await reconcile_once(env.api, env.store, since=since, source="default")
    triggers = sorted((e.booking_uid == pending.uid, e.trigger)
                      for e in await env.store.pending_events(10))
    assert triggers == [(False, "BOOKING_CREATED"), (False, "BOOKING_NO_SHOW_UPDATED"),
                        (True, "BOOKING_REQUESTED")]


async def test_watermark_and_periodic_runner(env: Env) -> None:
    assert await env.store.reconcile_watermark("default") is None
    patient_booking(env.fake, 731042, 3, 10)
    stop = asyncio.Event()
    task = asyncio.create_task(run_reconciler(env.api, env.store, 0.05, stop, env.metrics,
                                              source="default"))
    await eventually(lambda: env.metrics.reconcile_runs.labels("ok")._value.get() >= 2)
    stop.set()
    await task
    mark = await env.store.reconcile_watermark("default")
    assert mark is not None and datetime.now(UTC) - mark < timedelta(minutes=5)
    assert (await env.store.counts())["events_pending"] == 1  # second run: a duplicate


async def test_cli_reconcile_once_with_progress_and_summary(env: Env, tmp_path: Path) -> None:
    import os
    import sys

    patient_booking(env.fake, 731042, 3, 10)
    patient_booking(env.fake, 731044, 3, 12, name="Eve Testpatient")
    code = ("import argparse, sys; from engine.cli.inbound import register; "
            "p = argparse.ArgumentParser(); register(p.add_subparsers()); "
            "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, "reconcile", "--since", "1h", "--data", str(tmp_path / "cli"),
        cwd=str(REPO), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CALHL7_CALCOM_API_KEY": KEY, "CALHL7_CALCOM_API_URL": env.fake.base_url})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "page " in err.decode()
    assert "2 bookings, 2 new events" in out.decode()
    assert "Ada" not in out.decode() + err.decode()
