"""Cal.com API v2 client (httpx.AsyncClient): bookings, plus event types for reconciliation.

- Auth `Authorization: Bearer <key>`; key from CALHL7_CALCOM_API_KEY, base URL from
  CALHL7_CALCOM_API_URL (default https://api.cal.com; paths carry the `/v2` prefix).
- `cal-api-version` pinned per endpoint family: 2024-08-13 for /v2/bookings*, 2024-06-14 for
  /v2/event-types*. Without it Cal.com silently falls back to an older controller.
- One shared rate budget per key (token bucket, default 120 requests/min, Cal.com's default for
  API keys), used by every caller: the inbound worker's writes and reconciliation's reads.
  A 429 or `X-RateLimit-Remaining*: 0` pauses the whole bucket until the advertised reset.
- Retries with capped exponential back-off on 429 and 5xx and network errors for reads. Writes
  (POST) are retried in here only when Cal.com cannot have acted (429, connect errors); a
  timeout or 5xx on a write raises `CalcomUnavailable(maybe_applied=True)` so the caller can
  check what happened before trying again (a blind resend could book the time twice).
- Any other 4xx raises `CalcomRejected` carrying Cal.com's own message; 409 is
  `CalcomConflict`. Never retried.
- Metrics `calcom_calls{endpoint, outcome}`; logs name the endpoint family, status and attempt,
  never a body, an email or a name.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from engine.calcom.models import ApiBooking, ApiBookingListResponse, error_path
from engine.metrics import Metrics
from engine.settings import Settings

M = TypeVar("M", bound=BaseModel)

log = logging.getLogger("calhl7.calcom.api")

DEFAULT_BASE_URL = "https://api.cal.com"
BOOKINGS_VERSION = "2024-08-13"
EVENT_TYPES_VERSION = "2024-06-14"
MAX_MESSAGE = 300


class CalcomError(Exception):
    """Base class. `message` is Cal.com's own text (capped), safe to store and show."""

    def __init__(self, endpoint: str, status: int | None, message: str,
                 code: str | None = None) -> None:
        super().__init__(f"{endpoint}: {status or 'no response'}: {message}")
        self.endpoint = endpoint
        self.status = status
        self.message = message
        self.code = code


class CalcomRejected(CalcomError):
    """A 4xx other than 429: the request itself is wrong for Cal.com. Do not retry."""


class CalcomConflict(CalcomRejected):
    """409: the slot is taken (or the booking is in a state that forbids the change)."""


class CalcomNotFound(CalcomRejected):
    """404."""


class CalcomUnavailable(CalcomError):
    """429/5xx/network after the retries allowed here. Retry later.

    maybe_applied: the request may have reached Cal.com and been carried out (a write that
    timed out, or answered 5xx), so check before resending."""

    def __init__(self, endpoint: str, status: int | None, message: str, *,
                 maybe_applied: bool = False, retry_after: float | None = None) -> None:
        super().__init__(endpoint, status, message)
        self.maybe_applied = maybe_applied
        self.retry_after = retry_after


class CalcomAuthError(CalcomRejected):
    """401/403: wrong or missing API key, or no right on that booking."""


class RateBudget:
    """Token bucket shared by every caller of one API key.

    `acquire()` waits for a token; `pause_until(t)` blocks everyone until t (after a 429 or
    when Cal.com says the window is used up). Monotonic clock; fair enough by FIFO lock."""

    def __init__(self, per_minute: float = 120.0, burst: float | None = None) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        # Any 60 s window sees at most burst + rate * 60 requests: keep that at the limit, so a
        # long burst never trips Cal.com's throttler (which then blocks the key for a minute).
        self.capacity = burst if burst is not None else max(1.0, min(per_minute / 12.0, 10.0))
        self.rate = max(per_minute - self.capacity, per_minute / 2.0) / 60.0
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause_until(self, monotonic_deadline: float) -> None:
        if monotonic_deadline > self._paused_until:
            self._paused_until = monotonic_deadline
            self._tokens = 0.0

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    self._stamp = time.monotonic()
                    continue
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate)


def _header_seconds(headers: Mapping[str, str], *names: str) -> float | None:
    for name in names:
        value = headers.get(name)
        if value is None:
            continue
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:  # Retry-After may be an HTTP date
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            continue
    return None


def _reset_seconds(headers: Mapping[str, str]) -> float | None:
    """How long until the window resets: Retry-After, else X-RateLimit-Reset[-Default].
    A reset that looks like an epoch timestamp is converted to a delay."""
    wait = _header_seconds(headers, "retry-after")
    if wait is not None:
        return wait
    reset = _header_seconds(headers, "x-ratelimit-reset-default", "x-ratelimit-reset")
    if reset is not None and reset > 10 * 365 * 86400:
        reset = max(0.0, reset - time.time())
    if reset is not None and reset > 3600:  # milliseconds, or nonsense: cap
        reset = min(reset / 1000.0, 3600.0)
    return reset


def _remaining(headers: Mapping[str, str]) -> int | None:
    for name in ("x-ratelimit-remaining-default", "x-ratelimit-remaining"):
        value = headers.get(name)
        if value is not None:
            try:
                return int(float(value))
            except ValueError:
                return None
    return None


def _error_message(resp: httpx.Response) -> tuple[str, str | None]:
    """Cal.com's `{status: "error", error: {code, message}}`, or a short fallback."""
    try:
        doc = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}", None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        message = err.get("message")
        code = err.get("code")
        if isinstance(message, list):
            message = "; ".join(str(m) for m in message)
        return (str(message)[:MAX_MESSAGE] if message else f"HTTP {resp.status_code}",
                str(code)[:60] if code else None)
    if isinstance(doc, dict) and doc.get("message"):
        message = doc["message"]
        if isinstance(message, list):
            message = "; ".join(str(m) for m in message)
        return str(message)[:MAX_MESSAGE], None
    return f"HTTP {resp.status_code}", None


class CalcomApi:
    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        metrics: Metrics | None = None,
        budget: RateBudget | None = None,
        rate_per_minute: float = 120.0,
        timeout: float = 15.0,
        max_attempts: int = 5,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_wait: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("a Cal.com API key is required (CALHL7_CALCOM_API_KEY)")
        self.base_url = base_url.rstrip("/")
        self.metrics = metrics
        self.budget = budget or RateBudget(rate_per_minute)
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_wait = max_wait  # longest single wait on a 429 before giving the job back
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json",
                     "User-Agent": "calhl7"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
            follow_redirects=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None,
                      **kw: Any) -> CalcomApi | None:
        """The client the settings describe, or None without a key (no inbound writes, no
        reconciliation)."""
        if not settings.calcom_api_key:
            return None
        if settings.calcom_rate_per_minute is not None:
            kw.setdefault("rate_per_minute", settings.calcom_rate_per_minute)
        return cls(settings.calcom_api_key, settings.calcom_api_url or DEFAULT_BASE_URL,
                   metrics=metrics, **kw)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> CalcomApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ endpoints
    async def create_booking(self, body: dict[str, Any]) -> ApiBooking:
        doc = await self._request("bookings.create", "POST", "/v2/bookings", BOOKINGS_VERSION,
                                  json=body)
        return _read(ApiBooking, _one(doc), "bookings.create", maybe_applied=True)

    async def reschedule_booking(self, uid: str, body: dict[str, Any]) -> ApiBooking:
        doc = await self._request("bookings.reschedule", "POST",
                                  f"/v2/bookings/{_seg(uid)}/reschedule", BOOKINGS_VERSION,
                                  json=body)
        return _read(ApiBooking, _one(doc), "bookings.reschedule", maybe_applied=True)

    async def cancel_booking(self, uid: str, reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if reason:
            body["cancellationReason"] = reason
        doc = await self._request("bookings.cancel", "POST", f"/v2/bookings/{_seg(uid)}/cancel",
                                  BOOKINGS_VERSION, json=body)
        data = doc.get("data") if isinstance(doc, dict) else None
        return data if isinstance(data, dict) else {}

    async def get_booking(self, uid: str) -> ApiBooking:
        doc = await self._request("bookings.get", "GET", f"/v2/bookings/{_seg(uid)}",
                                  BOOKINGS_VERSION)
        return _read(ApiBooking, _one(doc), "bookings.get")

    async def list_bookings(self, params: Mapping[str, str | int]) -> ApiBookingListResponse:
        doc = await self._request("bookings.list", "GET", "/v2/bookings", BOOKINGS_VERSION,
                                  params={k: str(v) for k, v in params.items()})
        return _read(ApiBookingListResponse, doc, "bookings.list")

    async def get_event_type(self, event_type_id: int) -> dict[str, Any]:
        doc = await self._request("event_types.get", "GET", f"/v2/event-types/{int(event_type_id)}",
                                  EVENT_TYPES_VERSION)
        data = doc.get("data") if isinstance(doc, dict) else None
        return data if isinstance(data, dict) else {}

    # ------------------------------------------------------------------ the one request path
    async def _request(self, endpoint: str, method: str, path: str, version: str,
                       **kw: Any) -> Any:
        write = method != "GET"
        attempt = 0
        while True:
            attempt += 1
            await self.budget.acquire()
            try:
                resp = await self._client.request(
                    method, path, headers={"cal-api-version": version}, **kw
                )
            except httpx.ConnectError:  # never reached Cal.com: safe to repeat, even a write
                self._count(endpoint, "network_error")
                if attempt >= self.max_attempts:
                    raise CalcomUnavailable(endpoint, None, "could not connect") from None
                await self._backoff(endpoint, attempt, None)
                continue
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                self._count(endpoint, "network_error")
                if write:  # it may have been applied: the caller checks before resending
                    raise CalcomUnavailable(endpoint, None, type(exc).__name__,
                                            maybe_applied=True) from None
                if attempt >= self.max_attempts:
                    raise CalcomUnavailable(endpoint, None, type(exc).__name__) from None
                await self._backoff(endpoint, attempt, None)
                continue
            status = resp.status_code
            remaining = _remaining(resp.headers)
            if remaining is not None and remaining <= 0 and status != 429:
                wait = _reset_seconds(resp.headers)
                if wait:
                    self.budget.pause_until(time.monotonic() + min(wait, self.max_wait))
            if status < 300:
                self._count(endpoint, "ok")
                try:
                    return resp.json()
                except ValueError:
                    raise CalcomUnavailable(endpoint, status, "response is not JSON",
                                            maybe_applied=write) from None
            if status == 429:
                self._count(endpoint, "rate_limited")
                wait = _reset_seconds(resp.headers)
                wait = 60.0 if wait is None else wait
                self.budget.pause_until(time.monotonic() + min(wait, self.max_wait))
                log.warning("cal.com rate limit hit", extra={"endpoint": endpoint,
                                                             "wait_seconds": round(wait, 1),
                                                             "attempt": attempt})
                if attempt >= self.max_attempts or wait > self.max_wait:
                    raise CalcomUnavailable(endpoint, status, "rate limited", retry_after=wait)
                continue  # the bucket holds us until the reset
            message, code = _error_message(resp)
            if status >= 500:
                self._count(endpoint, "server_error")
                if write:
                    raise CalcomUnavailable(endpoint, status, message, maybe_applied=True)
                if attempt >= self.max_attempts:
                    raise CalcomUnavailable(endpoint, status, message)
                await self._backoff(endpoint, attempt, _header_seconds(resp.headers, "retry-after"))
                continue
            if status == 409:
                self._count(endpoint, "conflict")
                raise CalcomConflict(endpoint, status, message, code)
            self._count(endpoint, "client_error")
            if status in (401, 403):
                raise CalcomAuthError(endpoint, status, message, code)
            if status == 404:
                raise CalcomNotFound(endpoint, status, message, code)
            raise CalcomRejected(endpoint, status, message, code)

    async def _backoff(self, endpoint: str, attempt: int, hint: float | None) -> None:
        delay = min(self.backoff_max, self.backoff_initial * (2 ** (attempt - 1)))
        delay *= 0.8 + 0.4 * random.random()
        if hint is not None:
            delay = max(delay, min(hint, self.backoff_max))
        log.info("cal.com call retried", extra={"endpoint": endpoint, "attempt": attempt,
                                               "delay_seconds": round(delay, 2)})
        await asyncio.sleep(delay)

    def _count(self, endpoint: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.calcom_calls.labels(endpoint, outcome).inc()


def _read(model: type[M], doc: Any, endpoint: str, maybe_applied: bool = False) -> M:
    """A response in our model, or CalcomUnavailable naming the field path only: pydantic's
    own message quotes the input, which would put a booking's patient data in a log line."""
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise CalcomUnavailable(endpoint, None, f"unreadable response: {error_path(exc)}",
                                maybe_applied=maybe_applied) from None


def _one(doc: Any) -> dict[str, Any]:
    data = doc.get("data") if isinstance(doc, dict) else None
    if isinstance(data, list):  # a recurring series answers with a list
        data = data[0] if data else None
    if not isinstance(data, dict):
        raise CalcomUnavailable("response", None, "no booking in the response")
    return data


def _seg(uid: str) -> str:
    """A booking uid as one path segment (uids are url-safe; refuse anything else)."""
    if not uid or any(c in uid for c in "/?#% \t\r\n"):
        raise ValueError("not a booking uid")
    return uid
