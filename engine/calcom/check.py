"""The cheap request-path check, run on every signed webhook before we answer.

Cal.com never retries, so a signed body is never refused: this only decides whether the stored
body goes on to normalization (`accept`), is kept for the record only (`ignore`), or waits for
an analyst (`quarantine`, with a reason naming the field path). json.loads and dict look-ups
only; the full pydantic validation happens later, off the request path.

Decision: BOOKING_RESCHEDULED without `rescheduleUid` is accepted. The new slot is a real
booking; normalization links it by iCalUID or, failing that, books it as a new appointment
(with an audit note). Holding a real appointment back from the EHR is worse than a missing link.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Disposition = Literal["accept", "ignore", "quarantine"]

# Triggers that carry the full booking payload and become appointment events.
BOOKING_TRIGGERS: frozenset[str] = frozenset(
    {
        "BOOKING_CREATED",
        "BOOKING_REQUESTED",
        "BOOKING_RESCHEDULED",
        "BOOKING_CANCELLED",
        "BOOKING_REJECTED",
    }
)
NO_SHOW_TRIGGER = "BOOKING_NO_SHOW_UPDATED"
_REQUIRED_BOOKING_TIMES = ("startTime", "endTime")


@dataclass(frozen=True, slots=True)
class WebhookCheck:
    disposition: Disposition
    trigger: str | None = None
    booking_uid: str | None = None
    reason: str | None = None  # PHI-free: a field path and what is wrong with it


def _is_json_type(content_type: str | None) -> bool:
    if content_type is None:
        return True  # no header: let the body decide
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _is_aware_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _any_uid(obj: dict[str, Any]) -> str | None:
    """Best-effort booking uid for the audit record of an ignored body."""
    payload = obj.get("payload")
    if isinstance(payload, dict):
        for key in ("uid", "bookingUid"):
            if _nonempty_str(payload.get(key)):
                return str(payload[key])
        evt = payload.get("evt")
        if isinstance(evt, dict) and _nonempty_str(evt.get("uid")):
            return str(evt["uid"])
    uid = obj.get("uid")  # flat MEETING_* row
    return uid if _nonempty_str(uid) else None


def check_object(obj: Any) -> WebhookCheck:
    """The rules of `check_webhook` on an already parsed body (normalize reuses them)."""
    if not isinstance(obj, dict):
        return WebhookCheck("quarantine", reason="body: not a JSON object")
    trigger = obj.get("triggerEvent")
    if not _nonempty_str(trigger):
        return WebhookCheck("quarantine", reason="triggerEvent: missing")
    assert isinstance(trigger, str)
    if trigger in BOOKING_TRIGGERS:
        payload = obj.get("payload")
        if not isinstance(payload, dict):
            return WebhookCheck("quarantine", trigger, reason="payload: missing")
        uid = payload.get("uid")
        if not _nonempty_str(uid):
            return WebhookCheck("quarantine", trigger, reason="payload.uid: missing")
        for key in _REQUIRED_BOOKING_TIMES:
            value = payload.get(key)
            if value is None:
                return WebhookCheck("quarantine", trigger, uid, f"payload.{key}: missing")
            if not _is_aware_time(value):
                return WebhookCheck(
                    "quarantine", trigger, uid, f"payload.{key}: not an ISO-8601 time with offset"
                )
        if not isinstance(payload.get("organizer"), dict):
            return WebhookCheck("quarantine", trigger, uid, "payload.organizer: missing")
        return WebhookCheck("accept", trigger, uid)
    if trigger == NO_SHOW_TRIGGER:
        payload = obj.get("payload")
        if not isinstance(payload, dict):
            return WebhookCheck("quarantine", trigger, reason="payload: missing")
        uid = payload.get("bookingUid")
        if not _nonempty_str(uid):
            return WebhookCheck("quarantine", trigger, reason="payload.bookingUid: missing")
        if not isinstance(payload.get("attendees"), list):
            return WebhookCheck("quarantine", trigger, uid, "payload.attendees: missing")
        return WebhookCheck("accept", trigger, uid)
    # PING, MEETING_*, payments, recordings, forms, automatic Cal Video no-show detection and
    # triggers newer than this code: stored for the record, nothing to send.
    return WebhookCheck(
        "ignore", trigger, _any_uid(obj), f"triggerEvent: {trigger[:64]} not handled"
    )


def parse_body(body: bytes, content_type: str | None) -> tuple[Any, WebhookCheck | None]:
    """Decode a webhook body: (parsed object, None) or (None, quarantine verdict)."""
    if not _is_json_type(content_type):
        media = (content_type or "").split(";", 1)[0].strip().lower()[:64]
        # form-encoded means a custom payloadTemplate that is not JSON: ask for the default body
        return None, WebhookCheck("quarantine", reason=f"content-type: {media} is not JSON")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None, WebhookCheck("quarantine", reason="body: not valid UTF-8")
    try:
        return json.loads(text), None
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return None, WebhookCheck("quarantine", reason="body: not valid JSON")


def check_webhook(body: bytes, content_type: str | None) -> WebhookCheck:
    obj, verdict = parse_body(body, content_type)
    if verdict is not None:
        return verdict
    return check_object(obj)
