"""Drains the inbound job queue into Cal.com API v2 calls, one job in flight per appointment.

A job is one stored SIU (see listener.py). What it does depends on what we hold for that EHR
appointment (`HeldBlock`, the Cal.com booking blocking its time):

| action (per channel trigger map) | nothing held / held cancelled | block held |
|---|---|---|
| create (S12)                | POST /v2/bookings | move when times/provider differ, else nothing |
| move (S13)                  | create            | POST /v2/bookings/{uid}/reschedule -> new uid |
| move_if_times_changed (S14) | create            | reschedule only if start/end changed          |
| cancel (S15)                | nothing to free   | POST /v2/bookings/{uid}/cancel                |

A provider change cannot be a reschedule (the event type belongs to the provider): the old
block is cancelled and a new one created. Every uid Cal.com gives us is stored with the channel
it came from (`inbound_uids`): the processor uses it to not echo these bookings to that EHR.

Failures: a 4xx from Cal.com (slot taken, minimum notice, outside availability, unknown uid)
dead-letters the job with Cal.com's message and logs at error level; the next job of the same
appointment still runs (a dead create leaves nothing held, so a later S13 creates and a later
S15 has nothing to free). 429/5xx/network -> capped exponential back-off, the job stays at the
head of its appointment's queue. A write that may have been applied (timeout, 5xx) is checked
on the next attempt before anything is sent again: the placeholder attendee e-mail is unique per
EHR appointment, so a block we created without hearing the answer is found and adopted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from engine.calcom.api import (
    CalcomApi,
    CalcomAuthError,
    CalcomError,
    CalcomRejected,
    CalcomUnavailable,
)
from engine.calcom.models import ApiBooking
from engine.config.inbound import InboundChannel, InboundConfig
from engine.metrics import Metrics
from engine.store.inbound_records import (
    BLOCK_CANCELLED,
    HeldBlock,
    InboundJob,
    JobOutcome,
    UidRecord,
)
from engine.store.roles import InboundStore

log = logging.getLogger("calhl7.inbound.worker")


class _Dead(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _utc_z(iso: str) -> str:
    """ISO UTC with `Z`, milliseconds: the form Cal.com documents for `start`."""
    dt = datetime.fromisoformat(iso).astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _same_instant(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return datetime.fromisoformat(a) == datetime.fromisoformat(b)


def _status(booking: ApiBooking) -> str:
    s = booking.status.lower()
    return s if s in ("accepted", "pending", "cancelled", "rejected") else "accepted"


class InboundWorker:
    def __init__(
        self,
        store: InboundStore,
        api: CalcomApi,
        config_getter: Callable[[], InboundConfig],
        metrics: Metrics,
        *,
        concurrency: int = 8,
        lease_seconds: float = 600.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 300.0,
        poll_seconds: float = 1.0,
    ) -> None:
        self.store = store
        self.api = api
        self.config = config_getter
        self.metrics = metrics
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.poll_seconds = poll_seconds
        self.wake = asyncio.Event()

    # ------------------------------------------------------------------ loop
    async def run(self, stop: asyncio.Event) -> None:
        inflight: set[asyncio.Task[None]] = set()
        done_event = asyncio.Event()

        def finished(task: asyncio.Task[None]) -> None:
            inflight.discard(task)
            done_event.set()

        try:
            while not stop.is_set():
                claimed = 0
                free = self.concurrency - len(inflight)
                if free > 0:
                    try:
                        jobs = await self.store.inbound_claim_jobs(free, time.time(),
                                                                   self.lease_seconds)
                    except Exception as exc:  # noqa: BLE001 - the store is back soon
                        log.error("inbound claim failed", extra={"error": type(exc).__name__})
                        jobs = []
                    claimed = len(jobs)
                    for job in jobs:
                        task = asyncio.create_task(self._run_job(job), name=f"inbound-job-{job.id}")
                        inflight.add(task)
                        task.add_done_callback(finished)
                if claimed and len(inflight) < self.concurrency:
                    continue  # there may be more due right now
                self.wake.clear()
                done_event.clear()
                waits = [asyncio.ensure_future(stop.wait()),
                         asyncio.ensure_future(self.wake.wait()),
                         asyncio.ensure_future(done_event.wait())]
                await asyncio.wait(waits, timeout=self.poll_seconds,
                                   return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
        finally:
            if inflight:  # let calls in flight finish and record what Cal.com did
                await asyncio.wait(inflight, timeout=30)
                for t in inflight:
                    t.cancel()

    async def drain(self, timeout: float = 60.0) -> None:
        """Run until no job is queued (tests, CLI)."""
        stop = asyncio.Event()
        task = asyncio.create_task(self.run(stop))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                counts = await self.store.inbound_counts()
                if not counts.get("inbound_jobs_queued"):
                    return
                await asyncio.sleep(0.05)
            raise TimeoutError("inbound jobs still queued")
        finally:
            stop.set()
            await task

    async def _run_job(self, job: InboundJob) -> None:
        outcome = await self.execute(job)
        for attempt in range(5):
            try:
                await self.store.inbound_finish_jobs([outcome])
                return
            except Exception as exc:  # noqa: BLE001 - keep what Cal.com did; retry the write
                log.error("inbound outcome not stored", extra={"job": job.id,
                                                               "error": type(exc).__name__})
                await asyncio.sleep(0.5 * (attempt + 1))

    # ------------------------------------------------------------------ one job
    async def execute(self, job: InboundJob) -> JobOutcome:
        now = time.time()
        channel = self.config().channels.get(job.channel)
        if channel is None:
            return self._dead(job, now, "inbound channel no longer configured", None)
        ctx = _Ctx(job, channel)
        try:
            result = await self._act(ctx)
        except _Dead as exc:
            return self._dead(job, now, exc.detail, ctx)
        except CalcomAuthError as exc:  # the key, not the job: wait for an operator
            log.error("cal.com refused the API key", extra={"job": job.id, "status": exc.status})
            return self._retry(job, ctx, f"{exc.status}: {exc.message}", None)
        except CalcomRejected as exc:
            return self._dead(job, now, f"Cal.com {exc.status}: {exc.message}", ctx)
        except CalcomUnavailable as exc:
            ctx.uncertain = ctx.uncertain or exc.maybe_applied
            return self._retry(job, ctx, f"Cal.com {exc.status or 'unreachable'}: {exc.message}",
                               exc.retry_after)
        except CalcomError as exc:
            return self._retry(job, ctx, f"Cal.com: {exc.message}", None)
        except Exception as exc:  # noqa: BLE001 - a bug: keep the job, back off
            log.error("inbound job failed", extra={"job": job.id, "error": type(exc).__name__})
            return self._retry(job, ctx, f"internal error: {type(exc).__name__}", None)
        return JobOutcome(job.id, job.lease, "done", time.time(), detail=None,
                          held=ctx.held if ctx.changed else None, uids=tuple(ctx.uids),
                          result=result)

    def _dead(self, job: InboundJob, now: float, detail: str, ctx: _Ctx | None) -> JobOutcome:
        # Cal.com's own words stay in the store (`calhl7 inbound-jobs`): they may quote data
        log.error("inbound job dead-lettered", extra={
            "job": job.id, "channel": job.channel, "trigger": job.trigger})
        return JobOutcome(job.id, job.lease, "dead", now, detail=detail,
                          held=ctx.held if ctx and ctx.changed else None,
                          uids=tuple(ctx.uids) if ctx else ())

    def _retry(self, job: InboundJob, ctx: _Ctx, detail: str, hint: float | None) -> JobOutcome:
        delay = min(self.backoff_max, self.backoff_initial * 2 ** min(job.attempts, 20))
        delay *= 0.8 + 0.4 * random.random()
        if hint is not None:
            delay = max(delay, hint)
        log.warning("inbound job will be retried", extra={
            "job": job.id, "attempt": job.attempts + 1, "delay_seconds": round(delay, 2)})
        now = time.time()
        return JobOutcome(job.id, job.lease, "retry", now, detail=detail,
                          next_attempt_at=now + delay,
                          held=ctx.held if ctx.changed else None, uids=tuple(ctx.uids))

    async def _act(self, ctx: _Ctx) -> dict[str, Any]:
        p = ctx.job.params
        action = p["action"]
        if action == "cancel":
            if ctx.held is None or not ctx.held.active:
                return {"did": "nothing", "why": "no block held"}
            try:
                await self._cancel(ctx)
            except CalcomRejected as exc:
                if not _gone(exc) or not await self._follow(ctx):
                    if _gone(exc):
                        return {"did": "nothing", "why": "block already gone in Cal.com"}
                    raise
                await self._cancel(ctx)
            return {"did": "cancelled", "uid": ctx.held.current_uid if ctx.held else None}
        if ctx.held is None or not ctx.held.active:
            booking = await self._create(ctx)
            return {"did": "created", "uid": booking.uid, "status": _status(booking)}
        try:
            return await self._move(ctx)
        except CalcomRejected as exc:
            # changed in Cal.com itself (moved or cancelled there): act on what holds it now
            if not _gone(exc):
                raise
            if not await self._follow(ctx):
                booking = await self._create(ctx)
                return {"did": "created", "uid": booking.uid, "status": _status(booking)}
            return await self._move(ctx)

    async def _move(self, ctx: _Ctx) -> dict[str, Any]:
        p, held = ctx.job.params, ctx.held
        assert held is not None
        times_same = _same_instant(held.start, p["start"]) and _same_instant(held.end, p["end"])
        if times_same and held.provider_id == p["provider_id"]:
            return {"did": "nothing", "why": "times unchanged"}
        if held.provider_id != p["provider_id"]:
            await self._cancel(ctx)
            booking = await self._create(ctx)
            return {"did": "replaced", "uid": booking.uid, "status": _status(booking)}
        booking = await self._reschedule(ctx)
        return {"did": "moved", "uid": booking.uid, "status": _status(booking)}

    async def _follow(self, ctx: _Ctx) -> bool:
        """Follow the held booking's reschedule chain in Cal.com to the booking that holds the
        time now; record it. False when nothing holds it any more (cancelled there)."""
        held = ctx.held
        assert held is not None and held.current_uid is not None
        uid = held.current_uid
        booking = await self.api.get_booking(uid)
        for _ in range(10):
            if booking.status.lower() != "cancelled" or not booking.rescheduledToUid:
                break
            nxt = booking.rescheduledToUid
            booking = await self.api.get_booking(nxt)
            ctx.uids.append(UidRecord(nxt, uid, _status(booking)))
            uid = nxt
        status = _status(booking)
        ctx.set_held(replace(held, current_uid=booking.uid, status=status,
                             start=booking.start.astimezone(UTC).isoformat(),
                             end=booking.end.astimezone(UTC).isoformat()))
        log.warning("inbound block was changed in Cal.com", extra={
            "job": ctx.job.id, "channel": ctx.job.channel, "status": status})
        return ctx.held is not None and ctx.held.active

    # ------------------------------------------------------------------ Cal.com steps
    async def _create(self, ctx: _Ctx) -> ApiBooking:
        job, channel = ctx.job, ctx.channel
        p = job.params
        provider = channel.providers.get(p["provider_id"] or "")
        if provider is None:
            raise _Dead(f"provider {str(p['provider_id'])[:40]} has no Cal.com mapping")
        email = channel.placeholder_email(job.ehr_appointment_id)
        booking: ApiBooking | None = None
        if job.attempts > 0:  # an earlier try may have created it without us hearing back
            booking = await self._find_block(email, provider.event_type_id, p["start"])
        if booking is None:
            body: dict[str, Any] = {
                "start": _utc_z(p["start"]),
                "eventTypeId": provider.event_type_id,
                "attendee": {"name": channel.placeholder.name, "email": email,
                             "timeZone": channel.timezone, "language": "en"},
                "metadata": {"calhl7_origin": channel.name,
                             "calhl7_ref": email.split("+", 1)[1].split("@", 1)[0]},
            }
            if provider.send_length and p.get("duration"):
                body["lengthInMinutes"] = int(p["duration"])
            loc = channel.locations.get(p.get("location_code") or "")
            if loc:
                body["location"] = dict(loc)
            booking = await self.api.create_booking(body)
        status = _status(booking)
        ctx.uids.append(UidRecord(booking.uid, None, status))
        ctx.set_held(HeldBlock(job.channel, job.ehr_appointment_id, booking.uid, status,
                               booking.start.astimezone(UTC).isoformat(),
                               booking.end.astimezone(UTC).isoformat(),
                               p["provider_id"], provider.event_type_id))
        return booking

    async def _find_block(self, email: str, event_type_id: int, start: str) -> ApiBooking | None:
        page = await self.api.list_bookings({"attendeeEmail": email, "eventTypeId": event_type_id,
                                             "status": "upcoming,unconfirmed,past",
                                             "sortCreated": "desc", "take": 10})
        for b in page.data:
            if b.status.lower() in ("accepted", "pending") and _same_instant(
                    b.start.isoformat(), start):
                return b
        return None

    async def _reschedule(self, ctx: _Ctx) -> ApiBooking:
        job, channel, held = ctx.job, ctx.channel, ctx.held
        assert held is not None and held.current_uid is not None
        p = job.params
        provider = channel.providers.get(p["provider_id"] or "")
        if provider is None:
            raise _Dead(f"provider {str(p['provider_id'])[:40]} has no Cal.com mapping")
        old = held.current_uid
        booking: ApiBooking | None = None
        if job.attempts > 0:
            current = await self.api.get_booking(old)
            if current.status.lower() == "cancelled" and current.rescheduledToUid:
                booking = await self.api.get_booking(current.rescheduledToUid)
        if booking is None:
            body: dict[str, Any] = {"start": _utc_z(p["start"]),
                                    "reschedulingReason": "Moved in the EHR"}
            if provider.owner_email:
                body["rescheduledBy"] = provider.owner_email
            booking = await self.api.reschedule_booking(old, body)
        status = _status(booking)
        ctx.uids.append(UidRecord(old, None, BLOCK_CANCELLED))
        ctx.uids.append(UidRecord(booking.uid, old, status))
        ctx.set_held(replace(held, current_uid=booking.uid, status=status,
                             start=booking.start.astimezone(UTC).isoformat(),
                             end=booking.end.astimezone(UTC).isoformat()))
        return booking

    async def _cancel(self, ctx: _Ctx) -> None:
        held = ctx.held
        assert held is not None and held.current_uid is not None
        uid = held.current_uid
        done = False
        if ctx.job.attempts > 0:
            with contextlib.suppress(CalcomRejected):
                done = (await self.api.get_booking(uid)).status.lower() in ("cancelled", "rejected")
        if not done:
            await self.api.cancel_booking(uid, ctx.channel.cancellation_reason)
        ctx.uids.append(UidRecord(uid, None, BLOCK_CANCELLED))
        ctx.set_held(replace(held, status=BLOCK_CANCELLED))


def _gone(exc: CalcomRejected) -> bool:
    """400/404 on a booking we hold: it was cancelled or moved in Cal.com, not by us."""
    return exc.status in (400, 404) and exc.endpoint in ("bookings.reschedule",
                                                         "bookings.cancel")


class _Ctx:
    """What one job has done so far (kept even when a later step fails)."""

    def __init__(self, job: InboundJob, channel: InboundChannel) -> None:
        self.job = job
        self.channel = channel
        self.held = job.held
        self.changed = False
        self.uncertain = False
        self.uids: list[UidRecord] = []

    def set_held(self, held: HeldBlock) -> None:
        self.held = held
        self.changed = True
