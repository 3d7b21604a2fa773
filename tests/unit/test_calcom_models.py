"""Every Cal.com fixture parses into its model; timestamps become aware datetimes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from engine.calcom.models import (
    ApiBookingListResponse,
    ApiBookingResponse,
    BookingPayload,
    BookingWebhook,
    MeetingRowWebhook,
    NoShowWebhook,
    TaskerMeetingWebhook,
)
from tests.calcom_factory import booking_payload, load_sample

# The fixtures' story (tests/fixtures/README.md): A moved to B, C requested then declined, E.
A, B, C, E = "EcVcNhWTKwptsHL3bfEcnZ", "C8QPRP51WnF6WbzAtJoT7L", "LuGMkMC9TqsXYetaWTnMHr", "XhqyqtppcWicWf7YUoCx97"
BOOKING_SAMPLES = [
    ("booking_created", A, datetime(2026, 10, 29, 14, 15, tzinfo=UTC)),
    ("booking_requested", C, datetime(2026, 11, 17, 16, 40, tzinfo=UTC)),
    ("booking_rescheduled", B, datetime(2026, 11, 3, 14, 0, tzinfo=UTC)),
    ("booking_cancelled", B, datetime(2026, 11, 3, 14, 0, tzinfo=UTC)),  # +00:00
    ("booking_rejected", C, datetime(2026, 11, 17, 16, 40, tzinfo=UTC)),  # .000Z
]


@pytest.mark.parametrize(("name", "uid", "start"), BOOKING_SAMPLES)
def test_booking_samples_parse(name: str, uid: str, start: datetime) -> None:
    hook = BookingWebhook.model_validate(load_sample(name))
    p = hook.payload
    assert p.uid == uid
    assert p.startTime == start and p.startTime.tzinfo is not None
    assert p.endTime > p.startTime
    assert p.organizer.timeZone == "America/New_York"
    assert p.attendees and p.attendees[0].email
    assert hook.createdAt is not None and hook.createdAt.tzinfo is not None
    # unknown keys survive (extra="allow"): Cal.com adds fields between releases
    assert p.model_extra is not None and "bookerUrl" in p.model_extra


def test_rescheduled_sample_links_the_old_booking() -> None:
    p = BookingWebhook.model_validate(load_sample("booking_rescheduled")).payload
    assert p.rescheduleUid == A
    assert p.rescheduleId == 6310412
    assert p.rescheduleStartTime == datetime(2026, 10, 29, 14, 15, tzinfo=UTC)
    assert p.iCalUID == f"{A}@Cal.com" and p.iCalSequence == 1
    assert p.organizer.utcOffset == -300  # at the new time, after the clocks went back
    assert p.responses["name"].value == {"firstName": "Lena", "lastName": "Probewell"}
    assert p.userFieldsResponses["mrn"].value is None  # unanswered: label only


def test_cancelled_and_rejected_extras() -> None:
    cancelled = BookingWebhook.model_validate(load_sample("booking_cancelled")).payload
    assert cancelled.status == "CANCELLED" and cancelled.cancelledBy and cancelled.requestReschedule is False
    assert cancelled.metadata == {}  # absent in the cancel path: defaults, no error
    rejected = BookingWebhook.model_validate(load_sample("booking_rejected")).payload
    assert rejected.status == "REJECTED" and rejected.rejectionReason


def test_no_show_sample() -> None:
    hook = NoShowWebhook.model_validate(load_sample("booking_no_show_updated"))
    assert hook.payload.bookingUid == E
    assert [a.noShow for a in hook.payload.attendees] == [True]


@pytest.mark.parametrize(("name", "trigger"), [("meeting_started", "MEETING_STARTED"),
                                               ("meeting_ended", "MEETING_ENDED")])
def test_flat_meeting_samples(name: str, trigger: str) -> None:
    hook = MeetingRowWebhook.model_validate(load_sample(name))
    assert hook.triggerEvent == trigger
    assert hook.uid == E
    assert hook.startTime == datetime(2026, 12, 1, 20, 0, tzinfo=UTC)
    assert hook.updatedAt is None
    assert hook.user is not None and hook.user.timeZone == "America/New_York"
    assert hook.attendees[0].noShow is False
    assert hook.responses["dateOfBirth"] == "1991-09-27"  # raw answers, no labels


def test_tasker_meeting_ended_sample() -> None:
    hook = TaskerMeetingWebhook.model_validate(load_sample("meeting_ended.tasker_envelope"))
    assert hook.payload.evt.uid == E
    assert hook.payload.evt.videoCallData is not None
    assert hook.payload.evt.videoCallData.url and hook.payload.evt.videoCallData.url.startswith("https://")
    assert hook.payload.responses["mrn"] == "SYN-031907"


def test_api_v2_get() -> None:
    resp = ApiBookingResponse.model_validate(load_sample("booking_get", "api-v2"))
    b = resp.data
    assert resp.status == "success"
    assert b.uid == E and b.status == "accepted"
    assert b.start == datetime(2026, 12, 1, 20, 0, tzinfo=UTC)
    assert b.attendees[0].absent is True and b.attendees[0].language == "en"
    assert b.eventType is not None and b.eventType.slug == "telehealth-visit"
    assert b.bookingFieldsResponses["patientType"] == "returning"


def test_api_v2_list_with_pagination_and_chain_links() -> None:
    resp = ApiBookingListResponse.model_validate(load_sample("bookings_list", "api-v2"))
    assert [b.status for b in resp.data] == ["cancelled", "cancelled", "rejected", "accepted"]
    by_uid = {b.uid: b for b in resp.data}
    assert by_uid[A].rescheduledToUid == B
    assert by_uid[B].rescheduledFromUid == A
    assert resp.pagination.totalItems == 4 and resp.pagination.hasNextPage is False


@pytest.mark.parametrize(
    "spelling", ["2026-05-04T14:00:00Z", "2026-05-04T14:00:00+00:00", "2026-05-04T14:00:00.000Z", "2026-05-04T09:00:00-05:00"]
)
def test_every_timestamp_spelling_is_the_same_instant(spelling: str) -> None:
    p = BookingPayload.model_validate(booking_payload(start=spelling, end="2026-05-04T14:30:00Z"))
    assert p.startTime == datetime(2026, 5, 4, 14, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ({"startTime": "2026-05-04T14:00:00"}, "startTime"),  # naive: no offset
        ({"startTime": "next tuesday"}, "startTime"),
        ({"uid": ""}, "uid"),
        ({"organizer": None}, "organizer"),
        ({"bookingId": "not-a-number"}, "bookingId"),
    ],
)
def test_invalid_payloads_name_the_field(override: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as err:
        BookingPayload.model_validate({**booking_payload(), **override})
    assert err.value.errors()[0]["loc"][0] == path


@pytest.mark.parametrize(
    "model",
    [BookingWebhook, NoShowWebhook, MeetingRowWebhook, TaskerMeetingWebhook, ApiBookingResponse],
)
def test_models_are_frozen(model: type[BaseModel]) -> None:
    assert model.model_config.get("frozen") is True
