"""The Cal.com API v2 client against the fake Cal.com over real HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from engine.calcom.api import (
    CalcomApi,
    CalcomAuthError,
    CalcomConflict,
    CalcomRejected,
    CalcomUnavailable,
    RateBudget,
)
from engine.metrics import Metrics
from tests.fake_calcom import FakeCalcom, standard_fake

KEY = "cal_test_key"


@pytest.fixture
async def fake() -> AsyncIterator[FakeCalcom]:
    f = await standard_fake().start()
    try:
        yield f
    finally:
        await f.stop()


def _body(start: datetime, email: str = "ehr-block+abc@ehr-blocks.invalid") -> dict:
    return {"start": start.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "eventTypeId": 990001,
            "attendee": {"name": "EHR booking", "email": email, "timeZone": "America/New_York"}}


def _slot(days: int = 3, hour: int = 15) -> datetime:
    d = datetime.now(UTC) + timedelta(days=days)
    return d.replace(hour=hour, minute=0, second=0, microsecond=0)


async def test_auth_and_version_headers(fake: FakeCalcom) -> None:
    metrics = Metrics()
    async with CalcomApi(KEY, fake.base_url, metrics=metrics, rate_per_minute=6000) as api:
        booking = await api.create_booking(_body(_slot()))
        assert booking.status == "accepted"
        await api.get_booking(booking.uid)
        await api.get_event_type(990001)
    create, get, et = fake.requests
    assert create.headers["authorization"] == f"Bearer {KEY}"
    assert create.headers["cal-api-version"] == "2024-08-13"
    assert get.headers["cal-api-version"] == "2024-08-13"
    assert et.headers["cal-api-version"] == "2024-06-14"
    assert metrics.calcom_calls.labels("bookings.create", "ok")._value.get() == 1


async def test_wrong_key_is_an_auth_error_not_retried(fake: FakeCalcom) -> None:
    async with CalcomApi("cal_wrong", fake.base_url, rate_per_minute=6000) as api:
        with pytest.raises(CalcomAuthError):
            await api.get_booking("nope")
    assert len(fake.requests) == 1


async def test_400_not_retried_and_carries_calcoms_message(fake: FakeCalcom) -> None:
    metrics = Metrics()
    async with CalcomApi(KEY, fake.base_url, metrics=metrics, rate_per_minute=6000) as api:
        past = datetime.now(UTC) - timedelta(days=1)
        with pytest.raises(CalcomRejected) as info:
            await api.create_booking(_body(past))
    assert info.value.status == 400
    assert "notice" in info.value.message
    assert len(fake.requests) == 1
    assert metrics.calcom_calls.labels("bookings.create", "client_error")._value.get() == 1


async def test_409_taken_slot_is_a_conflict(fake: FakeCalcom) -> None:
    async with CalcomApi(KEY, fake.base_url, rate_per_minute=6000) as api:
        await api.create_booking(_body(_slot()))
        with pytest.raises(CalcomConflict) as info:
            await api.create_booking(_body(_slot(), "ehr-block+other@ehr-blocks.invalid"))
    assert "already has booking" in info.value.message
    assert len(fake.requests) == 2


async def test_429_honoured_with_retry_after(fake: FakeCalcom) -> None:
    """Another client of the same key used up the window: we get a 429 and wait it out."""
    import httpx

    fake.rate_per_window, fake.window_seconds = 3, 2.0
    metrics = Metrics()
    async with httpx.AsyncClient(base_url=fake.base_url) as other:
        for _ in range(3):
            await other.get("/v2/bookings", headers={"Authorization": f"Bearer {KEY}",
                                                     "cal-api-version": "2024-08-13"})
    async with CalcomApi(KEY, fake.base_url, metrics=metrics, rate_per_minute=6000,
                         budget=RateBudget(6000, burst=100)) as api:
        started = time.monotonic()
        page = await api.list_bookings({"take": 10})
        elapsed = time.monotonic() - started
    assert page.data == []
    statuses = [r.status for r in fake.requests[3:]]
    assert statuses == [429, 200]  # one 429, then it waited for Retry-After: no hammering
    assert elapsed >= 1.0
    assert metrics.calcom_calls.labels("bookings.list", "rate_limited")._value.get() == 1


async def test_remaining_zero_pauses_before_a_429(fake: FakeCalcom) -> None:
    fake.rate_per_window, fake.window_seconds = 3, 2.0
    async with CalcomApi(KEY, fake.base_url, rate_per_minute=6000,
                         budget=RateBudget(6000, burst=100)) as api:
        started = time.monotonic()
        for _ in range(5):
            await api.list_bookings({"take": 10})
        elapsed = time.monotonic() - started
    assert [r.status for r in fake.requests] == [200] * 5
    assert elapsed >= 1.0


async def test_5xx_retried_for_reads_not_blindly_for_writes(fake: FakeCalcom) -> None:
    async with CalcomApi(KEY, fake.base_url, rate_per_minute=6000, backoff_initial=0.01) as api:
        fake.fail_next = [503, 502]
        page = await api.list_bookings({"take": 10})
        assert page.data == []
        assert [r.status for r in fake.requests] == [503, 502, 200]
        fake.fail_next = [500]
        with pytest.raises(CalcomUnavailable) as info:
            await api.create_booking(_body(_slot()))
        assert info.value.maybe_applied


async def test_shared_budget_paces_calls() -> None:
    budget = RateBudget(per_minute=600, burst=2)  # 10/s
    started = time.monotonic()
    for _ in range(7):
        await budget.acquire()
    assert time.monotonic() - started >= 0.45  # 2 immediately, 5 more at 10/s
    for per_minute in (120, 600, 1000):
        b = RateBudget(per_minute)
        # whatever the 60 s window Cal.com counts, we never send more than the limit in it
        assert b.capacity + b.rate * 60 <= per_minute + 1e-9


async def test_pagination_and_filters(fake: FakeCalcom) -> None:
    async with CalcomApi(KEY, fake.base_url, rate_per_minute=6000) as api:
        for i in range(5):
            await api.create_booking(_body(_slot(days=3 + i), f"ehr-block+{i}@ehr-blocks.invalid"))
        first = await api.list_bookings({"take": 2, "skip": 0, "sortCreated": "asc"})
        assert first.pagination.hasNextPage and first.pagination.totalItems == 5
        last = await api.list_bookings({"take": 2, "skip": 4, "sortCreated": "asc"})
        assert not last.pagination.hasNextPage and len(last.data) == 1
        one = await api.list_bookings({"attendeeEmail": "ehr-block+3@ehr-blocks.invalid"})
        assert len(one.data) == 1


async def test_an_unreadable_booking_names_the_field_not_the_patient(fake: FakeCalcom) -> None:
    async with CalcomApi(KEY, fake.base_url, rate_per_minute=6000) as api:
        booking = await api.create_booking(_body(_slot(), email="ada.testpatient@example.com"))
        fake.bookings[booking.uid].status = None  # type: ignore[assignment]  # Cal.com changed
        with pytest.raises(CalcomUnavailable) as info:
            await api.list_bookings({"take": 10})
        with pytest.raises(CalcomUnavailable) as single:
            await api.get_booking(booking.uid)
    for exc in (info.value, single.value):
        assert "status" in str(exc) and "unreadable response" in str(exc)
        assert "testpatient" not in str(exc) and "example.com" not in str(exc)
        assert exc.__cause__ is None and exc.__suppress_context__
