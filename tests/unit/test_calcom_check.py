"""The request-path check: accept / ignore / quarantine, with a PHI-free field-path reason."""

from __future__ import annotations

from typing import Any

import pytest

from engine.calcom.check import WebhookCheck, check_webhook
from tests.calcom_factory import DROP, PATIENT, booking_webhook, compact, envelope, load_sample, no_show_payload

JSON = "application/json"


@pytest.mark.parametrize(
    ("sample", "disposition", "uid"),
    [
        ("booking_created", "accept", "EcVcNhWTKwptsHL3bfEcnZ"),
        ("booking_requested", "accept", "LuGMkMC9TqsXYetaWTnMHr"),
        ("booking_rescheduled", "accept", "C8QPRP51WnF6WbzAtJoT7L"),
        ("booking_cancelled", "accept", "C8QPRP51WnF6WbzAtJoT7L"),
        ("booking_rejected", "accept", "LuGMkMC9TqsXYetaWTnMHr"),
        ("booking_no_show_updated", "accept", "XhqyqtppcWicWf7YUoCx97"),
        ("meeting_started", "ignore", "XhqyqtppcWicWf7YUoCx97"),
        ("meeting_ended", "ignore", "XhqyqtppcWicWf7YUoCx97"),
        ("meeting_ended.tasker_envelope", "ignore", "XhqyqtppcWicWf7YUoCx97"),
        ("ping", "ignore", None),
    ],
)
def test_samples(sample: str, disposition: str, uid: str) -> None:
    obj = load_sample(sample)
    result = check_webhook(compact(obj), JSON)
    assert result.disposition == disposition
    assert result.trigger == obj["triggerEvent"]
    assert result.booking_uid == uid


def _created(**kw: Any) -> bytes:
    kw.setdefault("uid", "chkUid1")
    return compact(booking_webhook("BOOKING_CREATED", **kw))


GOOD = _created()


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (GOOD[: len(GOOD) // 2], JSON, "body: not valid JSON"),  # truncated
        (b"", JSON, "body: not valid JSON"),
        (GOOD.replace(b"Testy", b"T\xffsty"), JSON, "body: not valid UTF-8"),
        (b"triggerEvent=BOOKING_CREATED&uid=x", "application/x-www-form-urlencoded", "content-type: application/x-www-form-urlencoded is not JSON"),
        (GOOD, "text/plain", "content-type: text/plain is not JSON"),
        (b"[1,2,3]", JSON, "body: not a JSON object"),
        (b'"BOOKING_CREATED"', JSON, "body: not a JSON object"),
        (b"[" * 100000, JSON, "body: not valid JSON"),  # absurd nesting
        (compact({"createdAt": "2026-01-01T00:00:00Z", "payload": {}}), JSON, "triggerEvent: missing"),
        (compact({"triggerEvent": 7, "payload": {}}), JSON, "triggerEvent: missing"),
        (compact({"triggerEvent": "BOOKING_CREATED"}), JSON, "payload: missing"),
        (_created(uid=""), JSON, "payload.uid: missing"),
        (_created(startTime=DROP), JSON, "payload.startTime: missing"),
        (_created(endTime=DROP), JSON, "payload.endTime: missing"),
        (_created(startTime="2026-05-04T14:00:00"), JSON, "payload.startTime: not an ISO-8601 time with offset"),
        (_created(endTime="soon"), JSON, "payload.endTime: not an ISO-8601 time with offset"),
        (_created(organizer=DROP), JSON, "payload.organizer: missing"),
        (_created(organizer="Dr. Someone"), JSON, "payload.organizer: missing"),
        (compact(envelope("BOOKING_NO_SHOW_UPDATED", {"attendees": []})), JSON, "payload.bookingUid: missing"),
        (compact(envelope("BOOKING_NO_SHOW_UPDATED", {"bookingUid": "x"})), JSON, "payload.attendees: missing"),
    ],
)
def test_quarantined(body: bytes, content_type: str, reason: str) -> None:
    result = check_webhook(body, content_type)
    assert result.disposition == "quarantine"
    assert result.reason == reason


def test_quarantine_reason_never_carries_phi() -> None:
    bad = _created(startTime="1990-02-03 for " + PATIENT["email"])
    result = check_webhook(bad, JSON)
    assert result.disposition == "quarantine" and result.booking_uid == "chkUid1"
    assert PATIENT["email"] not in str(result) and "1990" not in str(result)


@pytest.mark.parametrize(
    "trigger",
    ["PING", "MEETING_STARTED", "MEETING_ENDED", "BOOKING_PAID", "BOOKING_PAYMENT_INITIATED",
     "RECORDING_READY", "FORM_SUBMITTED", "AFTER_GUESTS_CAL_VIDEO_NO_SHOW", "SOMETHING_NEW_2027"],
)
def test_ignored_triggers(trigger: str) -> None:
    result = check_webhook(compact(envelope(trigger, {"type": "Test"})), JSON)
    assert result == WebhookCheck("ignore", trigger, None, f"triggerEvent: {trigger} not handled")


@pytest.mark.parametrize(
    ("first", "last"),
    [("Ada|Bad^Name~x\\y&z", "O'Test|patient"), ("小龙", "李"), ("ليلى", "الاختبار"), ("Zoë", "Ångström-Test")],
)
def test_any_characters_in_names_accepted(first: str, last: str) -> None:
    body = _created(first_name=first, last_name=last)
    assert check_webhook(body, "application/json; charset=utf-8").disposition == "accept"


@pytest.mark.parametrize("content_type", [None, "application/json", "Application/JSON; charset=UTF-8", "application/vnd.cal+json"])
def test_json_content_types(content_type: str | None) -> None:
    assert check_webhook(GOOD, content_type).disposition == "accept"


def test_reschedule_without_reschedule_uid_is_accepted() -> None:
    # Decision: a real new slot; normalize links it by iCalUID or books it as new.
    body = compact(booking_webhook("BOOKING_RESCHEDULED", uid="chkUid2"))
    assert check_webhook(body, JSON) == WebhookCheck("accept", "BOOKING_RESCHEDULED", "chkUid2")


def test_no_show_accepted() -> None:
    result = check_webhook(compact(envelope("BOOKING_NO_SHOW_UPDATED", no_show_payload("nsUid"))), JSON)
    assert result == WebhookCheck("accept", "BOOKING_NO_SHOW_UPDATED", "nsUid")
