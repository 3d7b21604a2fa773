"""A fake Cal.com: a real HTTP server (ASGI on uvicorn, a free port) behaving like API v2.

What it does like the documented API v2:
- `Authorization: Bearer <key>` required (401 otherwise); `cal-api-version` checked per family
  (2024-08-13 for /v2/bookings*, 2024-06-14 for /v2/event-types*; 400 here when wrong, where the
  real one would silently answer from an older controller);
- rate limit per key in a fixed window (default 120/60 s): `X-RateLimit-*-Default` headers on
  every answer, 429 with `Retry-After` when over;
- bookings: create (409 when the host is busy, 400 for minimum notice or a bad body), get,
  list (filters, sorting, take/skip and the pagination block), cancel, reschedule (a NEW uid;
  the old one cancelled with `rescheduledToUid`; PENDING when the event type needs
  confirmation and `rescheduledBy` is not the owner); event type get;
- error envelope `{status: "error", error: {code, message}}`;
- records every request; can fail the next N requests with a given status;
- sends the webhooks a real Cal.com sends for each change (signed, compact JSON, the shapes of
  tests/fixtures/calcom/webhooks) to `webhook_url`, unless `drop_webhooks` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import string
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import uvicorn

from load.harness import free_port

BOOKINGS_VERSION = "2024-08-13"
EVENT_TYPES_VERSION = "2024-06-14"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso_ms(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _iso_z(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(value: str) -> datetime:
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError("naive")
    return dt.astimezone(UTC)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int = 0
    result_uid: str | None = None  # the booking a successful call answered with


@dataclass
class FakeBooking:
    id: int
    uid: str
    host_id: int
    event_type_id: int
    start: datetime
    end: datetime
    status: str  # accepted | pending | cancelled | rejected
    attendees: list[dict[str, Any]]
    responses: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    location: str | None = None
    title: str = ""
    description: str = ""
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime | None = None
    cancellation_reason: str | None = None
    cancelled_by: str | None = None
    rescheduling_reason: str | None = None
    rescheduled_by: str | None = None
    rescheduled_from: str | None = None
    rescheduled_to: str | None = None
    ics_uid: str = ""
    ical_sequence: int = 0


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class FakeCalcom:
    def __init__(
        self,
        *,
        api_keys: tuple[str, ...] = ("cal_test_key",),
        rate_per_window: int = 120,
        window_seconds: float = 60.0,
        webhook_url: str | None = None,
        webhook_secret: str = "test-secret-do-not-use",
        seed: int = 7,
    ) -> None:
        self.api_keys = set(api_keys)
        self.rate_per_window = rate_per_window
        self.window_seconds = window_seconds
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.drop_webhooks = False
        self.users: dict[int, dict[str, Any]] = {}
        self.event_types: dict[int, dict[str, Any]] = {}
        self.bookings: dict[str, FakeBooking] = {}
        self.requests: list[Recorded] = []
        self.webhooks_sent: list[dict[str, Any]] = []
        self.fail_next: list[int] = []  # statuses to answer the next requests with
        self.fail_after_apply: list[int] = []  # carry the next requests out, then answer this
        self._windows: dict[str, tuple[float, int]] = {}
        self._rng = random.Random(seed)
        self._next_id = 6_000_000
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._hooks: set[asyncio.Task[None]] = set()
        self.port = 0

    # ------------------------------------------------------------------ setup helpers
    def add_user(self, user_id: int, name: str, email: str, username: str,
                 time_zone: str = "America/New_York") -> None:
        self.users[user_id] = {"id": user_id, "name": name, "email": email,
                               "username": username, "timeZone": time_zone}

    def add_event_type(self, event_type_id: int, owner_id: int, slug: str, title: str,
                       length: int, *, requires_confirmation: bool = False,
                       minimum_notice_minutes: int = 0, lengths: tuple[int, ...] = (),
                       location: str | None = None) -> None:
        self.event_types[event_type_id] = {
            "id": event_type_id, "owner_id": owner_id, "slug": slug, "title": title,
            "length": length, "requires_confirmation": requires_confirmation,
            "minimum_notice_minutes": minimum_notice_minutes, "lengths": lengths,
            "location": location}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeCalcom:
        self.port = free_port()
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, lifespan="off",
                                access_log=False, log_config=None, loop="none")
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        await self.flush_webhooks()
        if self._server is not None:
            self._server.should_exit = True
            assert self._task is not None
            await asyncio.wait_for(self._task, 10)

    async def flush_webhooks(self) -> None:
        while self._hooks:
            await asyncio.gather(*list(self._hooks), return_exceptions=True)

    def calls(self, method: str | None = None, path_prefix: str = "") -> list[Recorded]:
        return [r for r in self.requests
                if (method is None or r.method == method) and r.path.startswith(path_prefix)]

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = "<not json>"
        rec = Recorded(scope["method"], scope["path"], query, headers, body)
        self.requests.append(rec)
        status, payload, extra = self._dispatch(rec)
        rec.status = status
        data = json.dumps(payload).encode()
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        hdrs += [(k.encode(), str(v).encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": data})

    def _dispatch(self, rec: Recorded) -> tuple[int, Any, dict[str, Any]]:
        auth = rec.headers.get("authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else ""
        if key not in self.api_keys:
            return 401, _err("UnauthorizedException", "Invalid API key"), {}
        # rate limit: fixed window per key, like the Nest throttler
        now = time.monotonic()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self.window_seconds:
            start, count = now, 0
        count += 1
        self._windows[key] = (start, count)
        reset = max(1, int(round(self.window_seconds - (now - start) + 0.499)))
        limits = {"X-RateLimit-Limit-Default": self.rate_per_window,
                  "X-RateLimit-Remaining-Default": max(0, self.rate_per_window - count),
                  "X-RateLimit-Reset-Default": reset}
        if count > self.rate_per_window:
            return 429, _err("ThrottlerException", "ThrottlerException: Too Many Requests"), {
                **limits, "Retry-After": reset}
        if self.fail_next:
            code = self.fail_next.pop(0)
            return code, _err("InternalServerErrorException", "injected failure"), limits
        try:
            status, payload = self._route(rec)
        except ApiError as exc:
            return exc.status, _err(exc.code, exc.message), limits
        data = payload.get("data") if isinstance(payload, dict) else None
        if isinstance(data, dict):
            rec.result_uid = data.get("uid")
        if self.fail_after_apply and rec.method == "POST":
            code = self.fail_after_apply.pop(0)  # done, but the answer is lost
            return code, _err("InternalServerErrorException", "injected failure"), limits
        return status, payload, limits

    def _route(self, rec: Recorded) -> tuple[int, Any]:
        parts = [p for p in rec.path.split("/") if p]
        version = rec.headers.get("cal-api-version")
        if parts[:2] == ["v2", "event-types"] and len(parts) == 3 and rec.method == "GET":
            if version != EVENT_TYPES_VERSION:
                raise ApiError(400, "BadRequestException", "wrong cal-api-version for event types")
            et = self.event_types.get(int(parts[2])) if parts[2].isdigit() else None
            if et is None:
                raise ApiError(404, "NotFoundException", "Event type not found")
            return 200, {"status": "success", "data": {
                "id": et["id"], "title": et["title"], "slug": et["slug"],
                "lengthInMinutes": et["length"], "ownerId": et["owner_id"]}}
        if parts[:2] != ["v2", "bookings"]:
            raise ApiError(404, "NotFoundException", "Cannot find route")
        if version != BOOKINGS_VERSION:
            raise ApiError(400, "BadRequestException",
                           "cal-api-version 2024-08-13 is required for bookings (fake)")
        body = rec.body if isinstance(rec.body, dict) else {}
        if len(parts) == 2 and rec.method == "POST":
            return 201, {"status": "success", "data": self._out(self.create(body))}
        if len(parts) == 2 and rec.method == "GET":
            return 200, self._list(rec.query)
        booking = self.bookings.get(parts[2])
        if booking is None:
            raise ApiError(404, "NotFoundException", f"Booking with uid={parts[2]} not found")
        if len(parts) == 3 and rec.method == "GET":
            return 200, {"status": "success", "data": self._out(booking)}
        if len(parts) == 4 and rec.method == "POST" and parts[3] == "cancel":
            return 200, {"status": "success", "data": self._out(
                self.cancel(booking, body.get("cancellationReason")))}
        if len(parts) == 4 and rec.method == "POST" and parts[3] == "reschedule":
            return 201, {"status": "success", "data": self._out(self.reschedule(booking, body))}
        raise ApiError(404, "NotFoundException", "Cannot find route")

    # ------------------------------------------------------------------ booking logic
    def _uid(self) -> str:
        alphabet = string.ascii_letters + string.digits
        return "".join(self._rng.choice(alphabet) for _ in range(22))

    def _busy(self, host_id: int, start: datetime, end: datetime, exclude: str | None) -> bool:
        return any(b.host_id == host_id and b.status in ("accepted", "pending")
                   and b.uid != exclude and b.start < end and start < b.end
                   for b in self.bookings.values())

    def create(self, body: dict[str, Any], *, webhooks: bool = True,
               created_at: datetime | None = None) -> FakeBooking:
        problems = []
        attendee = body.get("attendee")
        if not isinstance(attendee, dict):
            problems.append("attendee must be an object")
            attendee = {}
        for key in ("name", "email", "timeZone"):
            if not isinstance(attendee.get(key), str) or not attendee.get(key):
                problems.append(f"attendee.{key} must be a string")
        try:
            start = _parse(str(body.get("start")))
        except ValueError:
            problems.append("start must be a valid ISO 8601 date string")
            start = _now()
        if problems:
            raise ApiError(400, "BadRequestException", "; ".join(problems))
        et = self.event_types.get(body.get("eventTypeId"))  # type: ignore[arg-type]
        if et is None:
            raise ApiError(404, "NotFoundException", "Event type not found")
        length = et["length"]
        if "lengthInMinutes" in body:
            if body["lengthInMinutes"] not in et["lengths"]:
                raise ApiError(400, "BadRequestException",
                               "Can't specify 'lengthInMinutes' because event type does not have "
                               "multiple possible lengths or the value is not one of them")
            length = body["lengthInMinutes"]
        end = start + timedelta(minutes=length)
        if start < _now() + timedelta(minutes=et["minimum_notice_minutes"]):
            raise ApiError(400, "BadRequestException",
                           "Booking notice violation: the start is too soon or in the past")
        if self._busy(et["owner_id"], start, end, None):
            raise ApiError(409, "ConflictException",
                           "User either already has booking at this time or is not available")
        self._next_id += 1
        uid = self._uid()
        host = self.users[et["owner_id"]]
        responses = {"name": attendee["name"], "email": attendee["email"]}
        responses.update(body.get("bookingFieldsResponses") or {})
        b = FakeBooking(
            id=self._next_id, uid=uid, host_id=et["owner_id"], event_type_id=et["id"],
            start=start, end=end,
            status="pending" if et["requires_confirmation"] else "accepted",
            attendees=[{"name": attendee["name"], "email": attendee["email"],
                        "timeZone": attendee["timeZone"],
                        "language": attendee.get("language") or "en", "absent": False,
                        "phoneNumber": attendee.get("phoneNumber")}],
            responses=responses, metadata=dict(body.get("metadata") or {}),
            location=et["location"],
            title=f"{et['title']} between {host['name']} and {attendee['name']}",
            created_at=created_at or _now(), ics_uid=f"{uid}@Cal.com",
        )
        self.bookings[uid] = b
        if webhooks:
            self._webhook("BOOKING_REQUESTED" if b.status == "pending" else "BOOKING_CREATED", b)
        return b

    def reschedule(self, old: FakeBooking, body: dict[str, Any], *, webhooks: bool = True) -> FakeBooking:
        if old.status == "cancelled":
            extra = f" It was rescheduled to {old.rescheduled_to}." if old.rescheduled_to else ""
            raise ApiError(400, "BadRequestException", f"Booking is cancelled and can't be rescheduled.{extra}")
        if old.status == "rejected":
            raise ApiError(400, "BadRequestException", "Booking was rejected; create a new booking")
        try:
            start = _parse(str(body.get("start")))
        except ValueError:
            raise ApiError(400, "BadRequestException", "start must be a valid ISO 8601 date string") from None
        et = self.event_types[old.event_type_id]
        end = start + (old.end - old.start)
        if start < _now() + timedelta(minutes=et["minimum_notice_minutes"]):
            raise ApiError(400, "BadRequestException",
                           "Booking notice violation: the start is too soon or in the past")
        if self._busy(old.host_id, start, end, old.uid):
            raise ApiError(409, "ConflictException",
                           "User either already has booking at this time or is not available")
        host = self.users[old.host_id]
        by = body.get("rescheduledBy")
        pending = et["requires_confirmation"] and by != host["email"]
        now = _now()
        self._next_id += 1
        new = FakeBooking(
            id=self._next_id, uid=self._uid(), host_id=old.host_id,
            event_type_id=old.event_type_id, start=start, end=end,
            status="pending" if pending else "accepted",
            attendees=[dict(a) for a in old.attendees], responses=dict(old.responses),
            metadata=dict(old.metadata), location=old.location, title=old.title,
            created_at=now, rescheduling_reason=body.get("reschedulingReason"),
            rescheduled_by=by, rescheduled_from=old.uid, ics_uid=old.ics_uid,
            ical_sequence=old.ical_sequence + 1,
        )
        old.status = "cancelled"
        old.rescheduled_to = new.uid
        old.rescheduled_by = by
        old.updated_at = now
        self.bookings[new.uid] = new
        if webhooks:
            self._webhook("BOOKING_REQUESTED" if pending else "BOOKING_RESCHEDULED", new, old=old)
        return new

    def cancel(self, b: FakeBooking, reason: str | None, *, by: str | None = None,
               webhooks: bool = True) -> FakeBooking:
        if b.status in ("cancelled", "rejected"):
            raise ApiError(400, "BadRequestException", "This booking has already been cancelled.")
        b.status = "cancelled"
        b.cancellation_reason = reason
        b.cancelled_by = by or self.users[b.host_id]["email"]
        b.updated_at = _now()
        if webhooks:
            self._webhook("BOOKING_CANCELLED", b)
        return b

    def mark_absent(self, b: FakeBooking, *, webhooks: bool = True) -> None:
        b.attendees[0]["absent"] = True
        b.updated_at = _now()
        if webhooks:
            self._send({"triggerEvent": "BOOKING_NO_SHOW_UPDATED", "createdAt": _iso_ms(_now()),
                        "payload": {"message": "x1 Attendee(s) marked as no-show",
                                    "attendees": [{"email": b.attendees[0]["email"], "noShow": True}],
                                    "bookingUid": b.uid, "bookingId": b.id}})

    # ------------------------------------------------------------------ listing
    def _list(self, q: dict[str, str]) -> dict[str, Any]:
        now = _now()
        items = list(self.bookings.values())
        statuses = [s for s in q.get("status", "").split(",") if s]

        def status_ok(b: FakeBooking) -> bool:
            if not statuses:
                return True
            tags = set()
            if b.status in ("cancelled", "rejected"):
                tags.add("cancelled")
            elif b.end < now:
                tags.add("past")
            elif b.status == "pending":
                tags.add("unconfirmed")
            else:
                tags.add("upcoming")
            return bool(tags & set(statuses))

        items = [b for b in items if status_ok(b)]
        if "attendeeEmail" in q:
            items = [b for b in items if any(a["email"] == q["attendeeEmail"] for a in b.attendees)]
        if "eventTypeId" in q:
            items = [b for b in items if str(b.event_type_id) == q["eventTypeId"]]
        if "afterUpdatedAt" in q:
            t = _parse(q["afterUpdatedAt"])
            items = [b for b in items if b.updated_at is not None and b.updated_at >= t]
        if "afterCreatedAt" in q:
            t = _parse(q["afterCreatedAt"])
            items = [b for b in items if b.created_at >= t]
        for key, attr in (("sortUpdatedAt", "updated_at"), ("sortCreated", "created_at"),
                          ("sortStart", "start")):
            if key in q:
                items.sort(key=lambda b: (getattr(b, attr) or b.created_at, b.id),
                           reverse=q[key] == "desc")
        take = int(q.get("take", "100"))
        skip = int(q.get("skip", "0"))
        if not 1 <= take <= 250:
            raise ApiError(400, "BadRequestException", "take must not be greater than 250")
        page = items[skip: skip + take]
        total = len(items)
        return {"status": "success", "data": [self._out(b) for b in page], "pagination": {
            "totalItems": total, "remainingItems": max(0, total - skip - len(page)),
            "returnedItems": len(page), "itemsPerPage": take,
            "currentPage": skip // take + 1, "totalPages": (total + take - 1) // take,
            "hasNextPage": skip + len(page) < total, "hasPreviousPage": skip > 0}}

    def _out(self, b: FakeBooking) -> dict[str, Any]:
        host = self.users[b.host_id]
        et = self.event_types[b.event_type_id]
        location = b.metadata.get("videoCallUrl") or b.location
        out: dict[str, Any] = {
            "id": b.id, "uid": b.uid, "title": b.title, "description": b.description,
            "hosts": [{**host, "displayEmail": host["email"]}], "status": b.status,
            "start": _iso_ms(b.start), "end": _iso_ms(b.end),
            "duration": int((b.end - b.start).total_seconds() // 60),
            "eventTypeId": b.event_type_id, "eventType": {"id": et["id"], "slug": et["slug"]},
            "meetingUrl": location, "location": location, "absentHost": False,
            "createdAt": _iso_ms(b.created_at),
            "updatedAt": _iso_ms(b.updated_at) if b.updated_at else None,
            "metadata": {k: v for k, v in b.metadata.items() if k != "videoCallUrl"},
            "icsUid": b.ics_uid,
            "attendees": [{**a, "displayEmail": a["email"]} for a in b.attendees],
            "guests": [], "bookingFieldsResponses": dict(b.responses),
        }
        for key, value in (("cancellationReason", b.cancellation_reason),
                           ("cancelledByEmail", b.cancelled_by),
                           ("reschedulingReason", b.rescheduling_reason),
                           ("rescheduledByEmail", b.rescheduled_by),
                           ("rescheduledFromUid", b.rescheduled_from),
                           ("rescheduledToUid", b.rescheduled_to)):
            if value is not None:
                out[key] = value
        return out

    # ------------------------------------------------------------------ webhooks
    def webhook_payload(self, trigger: str, b: FakeBooking, old: FakeBooking | None = None) -> dict[str, Any]:
        host = self.users[b.host_id]
        et = self.event_types[b.event_type_id]
        cancelled = trigger == "BOOKING_CANCELLED"
        fmt = (lambda d: d.astimezone(UTC).isoformat()) if cancelled else _iso_z
        labels = {"name": "your_name", "email": "email_address", "location": "location",
                  "notes": "additional_notes", "guests": "additional_guests"}
        responses = {k: {"label": labels.get(k, k), "value": v, "isHidden": False}
                     for k, v in b.responses.items()}
        a0 = b.attendees[0]
        payload: dict[str, Any] = {
            "type": et["slug"], "title": b.title, "description": b.description,
            "eventTitle": et["title"], "eventTypeId": et["id"], "length": et["length"],
            "startTime": fmt(b.start), "endTime": fmt(b.end),
            "organizer": {"id": host["id"], "name": host["name"], "email": host["email"],
                          "username": host["username"], "timeZone": host["timeZone"],
                          "language": {"locale": "en"}, "timeFormat": "h:mma", "utcOffset": 0},
            "attendees": [{"email": a0["email"], "name": a0["name"],
                           **({} if cancelled else {"firstName": "", "lastName": ""}),
                           "timeZone": a0["timeZone"], "phoneNumber": a0.get("phoneNumber"),
                           "language": {"locale": a0.get("language") or "en"}, "utcOffset": 0}],
            "responses": responses,
            "userFieldsResponses": {k: v for k, v in responses.items() if k not in labels},
            "customInputs": {}, "location": b.location, "uid": b.uid, "bookingId": b.id,
            "iCalUID": b.ics_uid, "iCalSequence": b.ical_sequence,
            "requiresConfirmation": et["requires_confirmation"],
            "status": {"accepted": "ACCEPTED", "pending": "PENDING", "cancelled": "CANCELLED",
                       "rejected": "REJECTED"}[b.status],
        }
        if not cancelled:
            payload["metadata"] = dict(b.metadata)
        else:
            payload.update(cancellationReason=b.cancellation_reason, cancelledBy=b.cancelled_by,
                           requestReschedule=False, destinationCalendar=[])
        if old is not None:
            payload.update(rescheduleUid=old.uid, rescheduleId=old.id,
                           rescheduleStartTime=_iso_z(old.start), rescheduleEndTime=_iso_z(old.end),
                           rescheduledBy=b.rescheduled_by)
        return payload

    def _webhook(self, trigger: str, b: FakeBooking, old: FakeBooking | None = None) -> None:
        self._send({"triggerEvent": trigger, "createdAt": _iso_ms(_now()),
                    "payload": self.webhook_payload(trigger, b, old)})

    def _send(self, envelope: dict[str, Any]) -> None:
        self.webhooks_sent.append(envelope)
        if self.webhook_url is None or self.drop_webhooks:
            return
        body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
        signature = hmac.new(self.webhook_secret.encode(), body, hashlib.sha256).hexdigest()

        async def post() -> None:
            with contextlib.suppress(httpx.HTTPError):  # at most once, like Cal.com
                async with httpx.AsyncClient(timeout=10) as client:
                    await client.post(self.webhook_url, content=body, headers={  # type: ignore[arg-type]
                        "Content-Type": "application/json", "X-Cal-Signature-256": signature,
                        "X-Cal-Webhook-Version": "2021-10-20"})

        task = asyncio.get_running_loop().create_task(post())
        self._hooks.add(task)
        task.add_done_callback(self._hooks.discard)


def _err(code: str, message: str) -> dict[str, Any]:
    return {"status": "error", "timestamp": _iso_ms(_now()), "path": "",
            "error": {"code": code, "message": message}}


def standard_fake(**kw: Any) -> FakeCalcom:
    """The clinic of the example channels and tests/fixtures: Dr Grace Testdoctor (4211) with the three patient event
    types, plus her dedicated 'EHR block' event type 990001 (30 min)."""
    fake = FakeCalcom(**kw)
    fake.add_user(4211, "Dr. Grace Testdoctor", "grace.testdoctor@clinic.example", "grace-testdoctor")
    fake.add_user(4212, "Dr. Cara Careful", "cara.careful@clinic.example", "cara-careful")
    fake.add_event_type(731042, 4211, "new-patient-visit", "New Patient Visit", 45,
                        location="Suite 210, 100 Example Medical Plaza, Springfield, ZZ 00000")
    fake.add_event_type(731043, 4211, "telehealth-follow-up", "Telehealth Follow-up", 20,
                        requires_confirmation=True, location="integrations:daily")
    fake.add_event_type(731044, 4211, "telehealth-visit", "Telehealth Visit", 20,
                        location="integrations:daily")
    fake.add_event_type(990001, 4211, "ehr-block", "EHR block", 30, lengths=(15, 30, 45, 60))
    fake.add_event_type(990002, 4212, "ehr-block-cara", "EHR block", 30)
    return fake
