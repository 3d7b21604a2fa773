"""Reconciliation: find bookings whose webhooks we missed and feed them into the normal pipeline.

`reconcile_once` lists `GET /v2/bookings` twice — `afterUpdatedAt=since` (sorted by updatedAt)
and `afterCreatedAt=since` (sorted by creation; a booking never updated has no updatedAt) —
with every status, page by page, and for each booking builds the webhook body Cal.com would
have sent for its current state. Bodies go through `store.accept_webhook` exactly like a
webhook, so the same idempotency (body hash) and precedence rules (per booking uid, in
normalize) apply: a booking seen by both paths yields one SIU.

Synthesized bodies are deterministic per booking state (compact JSON, sorted keys, createdAt =
the booking's updatedAt or createdAt), so two runs over an unchanged booking produce
byte-identical bodies and the second is a stored duplicate.

Booking state -> body:
| API status | rescheduledToUid | body |
|---|---|---|
| accepted | - | BOOKING_CREATED; BOOKING_RESCHEDULED with rescheduleUid when rescheduledFromUid |
| pending  | - | BOOKING_REQUESTED (rescheduleUid when rescheduledFromUid) |
| cancelled | set | none: it was replaced; the new booking's body carries the link |
| cancelled | - | BOOKING_CANCELLED (rescheduleUid when rescheduledFromUid) |
| rejected | - | BOOKING_REJECTED |
plus BOOKING_NO_SHOW_UPDATED when the first attendee is marked absent.

Webhook fields the API booking lacks are filled the way Cal.com fills them, so normalize sees
the same details as from the real webhook: the organizer from hosts[0], the booking form from
`bookingFieldsResponses` (as {label, value}), a Cal Video URL moved back to
`metadata.videoCallUrl` with the raw `integrations:*` location, and the event type's title
(`eventTitle`, one GET per event type per run, cached).
Not available from the API: team membership of team event types and `iCalSequence`.

The watermark of a run is its start time minus a skew, not the newest updatedAt seen: a
booking changed while we page through the list moves to the end of the order and may be
skipped by skip-based paging; the next run, starting from before that change, picks it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.calcom.api import CalcomApi, CalcomError
from engine.calcom.check import check_webhook
from engine.calcom.models import ApiBooking
from engine.metrics import Metrics
from engine.store.base import IncomingWebhook
from engine.store.roles import ReconcileStore

log = logging.getLogger("calhl7.calcom.reconcile")

ALL_STATUSES = "upcoming,recurring,past,cancelled,unconfirmed"
PAGE_SIZE = 100
DEFAULT_SKEW = timedelta(minutes=2)
_SYSTEM_LABELS = {
    "name": "your_name", "email": "email_address", "attendeePhoneNumber": "phone_number",
    "location": "location", "title": "what_is_this_meeting_about", "notes": "additional_notes",
    "guests": "additional_guests", "rescheduleReason": "reason_for_reschedule",
}


@dataclass
class ReconcileSummary:
    source: str
    since: datetime
    listed: int = 0  # distinct bookings seen
    fed: int = 0  # bodies stored as new events
    duplicates: int = 0  # bodies already stored (seen by a webhook or an earlier run)
    replaced: int = 0  # rescheduled-away bookings (no body of their own)
    pages: int = 0
    watermark: datetime | None = None  # what the next run should start from
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"reconcile {self.source}: {self.listed} bookings, {self.fed} new events, "
                f"{self.duplicates} already known, {self.replaced} replaced, {self.pages} pages")


def _iso(dt: datetime) -> str:
    """`2026-03-10T18:00:00.000Z`: Cal.com's toISOString form."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()


def _responses(b: ApiBooking) -> tuple[dict[str, Any], dict[str, Any]]:
    responses: dict[str, Any] = {}
    user_fields: dict[str, Any] = {}
    for name in sorted(b.bookingFieldsResponses):
        value = b.bookingFieldsResponses[name]
        entry = {"label": _SYSTEM_LABELS.get(name, name), "value": value, "isHidden": False}
        responses[name] = entry
        if name not in _SYSTEM_LABELS:
            user_fields[name] = entry
    return responses, user_fields


def booking_payload(b: ApiBooking, event_title: str | None = None) -> dict[str, Any]:
    """The webhook `payload` Cal.com would send for this booking's current state."""
    host = b.hosts[0] if b.hosts else None
    responses, user_fields = _responses(b)
    location = b.location
    metadata = dict(b.metadata)
    answered = b.bookingFieldsResponses.get("location")
    choice = answered.get("value") if isinstance(answered, dict) else None
    if (isinstance(location, str) and location.lower().startswith(("http://", "https://"))
            and isinstance(choice, str) and choice.startswith("integrations:")):
        metadata["videoCallUrl"] = location  # the API shows the room URL, webhooks the app
        location = choice
    attendees: list[dict[str, Any]] = []
    for a in b.attendees:
        first = last = None
        name_answer = b.bookingFieldsResponses.get("name")
        if not attendees and isinstance(name_answer, dict):
            first, last = name_answer.get("firstName"), name_answer.get("lastName")
        attendees.append({
            "email": a.email, "name": a.name, "firstName": first, "lastName": last,
            "timeZone": a.timeZone, "phoneNumber": a.phoneNumber,
            "language": {"locale": a.language} if a.language else None,
        })
    event_type_id = b.eventType.id if b.eventType and b.eventType.id else b.eventTypeId
    payload: dict[str, Any] = {
        "uid": b.uid,
        "bookingId": b.id,
        "title": b.title,
        "description": b.description,
        "startTime": _iso(b.start),
        "endTime": _iso(b.end),
        "eventTypeId": event_type_id,
        "type": b.eventType.slug if b.eventType else None,
        "eventTitle": event_title,
        "length": b.duration,
        "organizer": {
            "id": host.id if host else None, "name": host.name if host else None,
            "email": host.email if host else None, "username": host.username if host else None,
            "timeZone": host.timeZone if host else None,
        },
        "attendees": attendees,
        "responses": responses,
        "userFieldsResponses": user_fields,
        "location": location,
        "metadata": metadata,
        "status": b.status.upper(),
        "iCalUID": b.icsUid,
    }
    if b.rescheduledFromUid:
        payload["rescheduleUid"] = b.rescheduledFromUid
        payload["rescheduledBy"] = b.rescheduledByEmail
    status = b.status.lower()
    if status == "cancelled":
        payload["cancellationReason"] = b.cancellationReason
        payload["cancelledBy"] = b.cancelledByEmail
    elif status == "rejected":
        payload["rejectionReason"] = b.cancellationReason
    return payload


def synthesize(b: ApiBooking, event_title: str | None = None) -> list[tuple[str, bytes]]:
    """(trigger, body) pairs for one API booking, deterministic per booking state."""
    status = b.status.lower()
    if status == "cancelled" and b.rescheduledToUid:
        return []  # replaced by a reschedule: the new booking's body links it
    if status == "accepted":
        trigger = "BOOKING_RESCHEDULED" if b.rescheduledFromUid else "BOOKING_CREATED"
    elif status == "pending":
        trigger = "BOOKING_REQUESTED"
    elif status == "cancelled":
        trigger = "BOOKING_CANCELLED"
    elif status == "rejected":
        trigger = "BOOKING_REJECTED"
    else:
        return []
    stamp = _iso(b.updatedAt or b.createdAt or b.start)
    out = [(trigger, _compact({"triggerEvent": trigger, "createdAt": stamp,
                               "payload": booking_payload(b, event_title)}))]
    if status == "accepted" and b.attendees and b.attendees[0].absent:
        out.append(("BOOKING_NO_SHOW_UPDATED", _compact({
            "triggerEvent": "BOOKING_NO_SHOW_UPDATED", "createdAt": stamp,
            "payload": {"bookingUid": b.uid, "bookingId": b.id,
                        "message": "x1 Attendee(s) marked as no-show",
                        "attendees": [{"email": b.attendees[0].email, "noShow": True}]},
        })))
    return out


async def _pages(api: CalcomApi, params: dict[str, str | int], summary: ReconcileSummary,
                 progress: Callable[[ReconcileSummary], None] | None) -> Any:
    skip = 0
    while True:
        page = await api.list_bookings({**params, "take": PAGE_SIZE, "skip": skip})
        summary.pages += 1
        for b in page.data:
            yield b
        if progress is not None:
            progress(summary)
        if not page.pagination.hasNextPage or not page.data:
            return
        skip += len(page.data)


async def reconcile_once(
    api: CalcomApi,
    store: ReconcileStore,
    *,
    since: datetime,
    source: str = "default",
    metrics: Metrics | None = None,
    progress: Callable[[ReconcileSummary], None] | None = None,
    skew: timedelta = DEFAULT_SKEW,
    on_fed: Callable[[], None] | None = None,
    fetch_event_titles: bool = True,
    titles: dict[int, str | None] | None = None,
) -> ReconcileSummary:
    """One pass from `since`; `titles` (event type id -> title) may be kept by the caller
    across runs to save the event-type calls."""
    if since.tzinfo is None:
        raise ValueError("since must be timezone-aware")
    started = datetime.now(UTC)
    summary = ReconcileSummary(source, since)
    seen: set[str] = set()
    titles = {} if titles is None else titles
    after = _iso(since)
    sweeps = (
        {"afterUpdatedAt": after, "sortUpdatedAt": "asc", "status": ALL_STATUSES},
        {"afterCreatedAt": after, "sortCreated": "asc", "status": ALL_STATUSES},
    )
    for params in sweeps:
        async for b in _pages(api, dict(params), summary, progress):
            if b.uid in seen:
                continue
            seen.add(b.uid)
            summary.listed += 1
            title = None
            et = b.eventType.id if b.eventType and b.eventType.id else b.eventTypeId
            if fetch_event_titles and et:
                if et not in titles:
                    try:
                        titles[et] = (await api.get_event_type(et)).get("title")
                    except CalcomError as exc:  # a team event type, or gone: no title
                        titles[et] = None
                        summary.errors.append(f"event type {et}: {exc.status}")
                title = titles[et]
            bodies = synthesize(b, title)
            if not bodies:
                summary.replaced += 1
                continue
            for _trigger, body in bodies:
                if await _feed(store, source, body):
                    summary.fed += 1
                else:
                    summary.duplicates += 1
    if summary.fed and on_fed is not None:
        on_fed()
    summary.watermark = max(since, started - skew)
    if metrics is not None and summary.fed:
        metrics.reconcile_found.inc(summary.fed)
    log.info("reconcile finished", extra={"source": source, "listed": summary.listed,
                                          "fed": summary.fed, "duplicates": summary.duplicates,
                                          "pages": summary.pages})
    return summary


async def _feed(store: ReconcileStore, source: str, body: bytes) -> bool:
    webhook = IncomingWebhook.from_check(
        source, body, "application/json", check_webhook(body, "application/json"),
        correlation_id="rc-" + hashlib.sha256(body).hexdigest()[:13])
    result = await store.accept_webhook(webhook)
    return not result.duplicate


class _NotOurTurn(Exception):
    pass


async def run_reconciler(
    api: CalcomApi,
    store: ReconcileStore,
    interval_seconds: float,
    stop: asyncio.Event,
    metrics: Metrics | None = None,
    *,
    source: str = "default",
    initial_lookback: timedelta = timedelta(hours=24),
    on_fed: Callable[[], None] | None = None,
    may_run: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """Every `interval_seconds`: reconcile from the stored watermark, then move it.
    `may_run`: with several nodes, only the one it says yes to spends the API budget."""
    titles: dict[int, str | None] = {}
    titles_at = time.monotonic()
    while not stop.is_set():
        if time.monotonic() - titles_at > 3600:  # event types get renamed: refresh hourly
            titles.clear()
            titles_at = time.monotonic()
        try:
            if may_run is not None and not await may_run():
                raise _NotOurTurn
            since = await store.reconcile_watermark(source)
            if since is None:
                since = datetime.now(UTC) - initial_lookback
            summary = await reconcile_once(api, store, since=since, source=source,
                                           metrics=metrics, on_fed=on_fed, titles=titles)
            if summary.watermark is not None:
                await store.set_reconcile_watermark(source, summary.watermark)
            if metrics is not None:
                metrics.reconcile_runs.labels("ok").inc()
        except _NotOurTurn:
            pass
        except Exception as exc:  # noqa: BLE001 - next interval tries again from the watermark
            log.error("reconcile failed", extra={"source": source, "error": type(exc).__name__})
            if metrics is not None:
                metrics.reconcile_runs.labels("failed").inc()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_seconds)
