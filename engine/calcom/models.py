"""Pydantic models for what Cal.com sends us: webhook bodies and API v2 booking responses.

Attribute names are Cal.com's own (camelCase) so a validation error path reads exactly like the
JSON an analyst sees (`payload.startTime`). Unknown keys are kept (`extra="allow"`): Cal.com adds
fields between releases and we must never refuse a body for that. Timestamps accept every
spelling Cal.com uses (`...Z`, `...+00:00`, `....000Z`) and must carry an offset.

Shapes (examples of each in tests/fixtures/calcom, described in tests/fixtures/README.md):
- `BookingWebhook`: `{triggerEvent, createdAt, payload: BookingPayload}` for BOOKING_* triggers.
- `NoShowWebhook`: BOOKING_NO_SHOW_UPDATED, the small `{message, attendees, bookingUid}` payload.
- `MeetingRowWebhook`: MEETING_STARTED/ENDED, flat (no envelope): trigger + booking DB row.
- `TaskerMeetingWebhook`: the newest meeting-trigger shape, enveloped, calendar event in `evt`.
- `ApiBookingResponse` / `ApiBookingListResponse`: API v2 (`cal-api-version: 2024-08-13`).
"""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

CalTime = AwareDatetime  # `Z`, `+00:00` and `.000Z` all parse; a naive time is an error


class CalModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


# --- webhook building blocks --------------------------------------------------------------


class Language(CalModel):
    locale: str | None = None


class Organizer(CalModel):
    id: int | None = None
    name: str | None = None
    email: str | None = None
    username: str | None = None
    usernameInOrg: str | None = None
    timeZone: str | None = None
    timeFormat: str | None = None
    language: Language | None = None
    utcOffset: int | None = None


class Attendee(CalModel):
    email: str | None = None
    name: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    timeZone: str | None = None
    phoneNumber: str | None = None
    language: Language | None = None
    utcOffset: int | None = None
    noShow: bool | None = None


class FormResponse(CalModel):
    """One booking-form answer as webhooks send it; `value` is absent when unanswered."""

    label: str | None = None
    value: Any = None
    isHidden: bool | None = None


class Team(CalModel):
    id: int | None = None
    name: str | None = None
    members: list[Any] = Field(default_factory=list)


class VideoCallData(CalModel):
    type: str | None = None
    id: str | None = None
    url: str | None = None


class BookingPayload(CalModel):
    """`payload` of BOOKING_CREATED/REQUESTED/RESCHEDULED/CANCELLED/REJECTED (and `evt`)."""

    uid: str = Field(min_length=1)
    startTime: CalTime
    endTime: CalTime
    organizer: Organizer
    attendees: list[Attendee] = Field(default_factory=list)
    bookingId: int | None = None
    eventTypeId: int | None = None
    type: str | None = None  # event-type slug (the title on some old/host paths)
    title: str | None = None
    eventTitle: str | None = None
    eventDescription: str | None = None
    description: str | None = None
    additionalNotes: str | None = None
    length: int | None = None
    responses: dict[str, FormResponse] = Field(default_factory=dict)
    userFieldsResponses: dict[str, FormResponse] = Field(default_factory=dict)
    customInputs: dict[str, Any] = Field(default_factory=dict)
    location: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    videoCallData: VideoCallData | None = None
    team: Team | None = None
    status: str | None = None
    iCalUID: str | None = None
    iCalSequence: int | None = None
    requiresConfirmation: bool | None = None
    # BOOKING_RESCHEDULED (and a reschedule arriving as REQUESTED/CREATED)
    rescheduleUid: str | None = None
    rescheduleId: int | None = None
    rescheduleStartTime: CalTime | None = None
    rescheduleEndTime: CalTime | None = None
    rescheduledBy: str | None = None
    # BOOKING_CANCELLED
    cancellationReason: str | None = None
    cancelledBy: str | None = None
    requestReschedule: bool | None = None
    # BOOKING_REJECTED
    rejectionReason: str | None = None


class BookingWebhook(CalModel):
    triggerEvent: str
    createdAt: CalTime | None = None
    payload: BookingPayload


class NoShowAttendee(CalModel):
    email: str | None = None
    noShow: bool


class NoShowPayload(CalModel):
    bookingUid: str = Field(min_length=1)
    attendees: list[NoShowAttendee]
    bookingId: int | None = None
    message: str | None = None


class NoShowWebhook(CalModel):
    triggerEvent: str
    createdAt: CalTime | None = None
    payload: NoShowPayload


# --- meeting-time triggers ----------------------------------------------------------------


class RowUser(CalModel):
    email: str | None = None
    name: str | None = None
    timeZone: str | None = None
    username: str | None = None


class RowAttendee(CalModel):
    id: int | None = None
    email: str | None = None
    name: str | None = None
    timeZone: str | None = None
    phoneNumber: str | None = None
    locale: str | None = None
    bookingId: int | None = None
    noShow: bool | None = None


class MeetingRowWebhook(CalModel):
    """Flat MEETING_* body: the trigger merged into the stored booking row (raw responses)."""

    triggerEvent: str
    uid: str
    startTime: CalTime
    endTime: CalTime
    id: int | None = None
    userId: int | None = None
    eventTypeId: int | None = None
    title: str | None = None
    status: str | None = None
    location: str | None = None
    createdAt: CalTime | None = None  # the booking's, not the delivery's
    updatedAt: CalTime | None = None
    responses: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    iCalUID: str | None = None
    iCalSequence: int | None = None
    noShowHost: bool | None = None
    user: RowUser | None = None
    attendees: list[RowAttendee] = Field(default_factory=list)


class TaskerMeetingPayload(CalModel):
    bookingId: int | None = None
    eventTypeId: int | None = None
    userId: int | None = None
    teamId: int | None = None
    responses: dict[str, Any] = Field(default_factory=dict)
    evt: BookingPayload


class TaskerMeetingWebhook(CalModel):
    triggerEvent: str
    createdAt: CalTime | None = None
    payload: TaskerMeetingPayload


# --- API v2 (cal-api-version 2024-08-13) --------------------------------------------------


class ApiHost(CalModel):
    id: int | None = None
    name: str | None = None
    email: str | None = None
    displayEmail: str | None = None
    username: str | None = None
    timeZone: str | None = None


class ApiAttendee(CalModel):
    name: str | None = None
    email: str | None = None
    displayEmail: str | None = None
    timeZone: str | None = None
    language: str | None = None  # a plain locale here, an object in webhooks
    absent: bool | None = None
    phoneNumber: str | None = None


class ApiEventType(CalModel):
    id: int | None = None
    slug: str | None = None


class ApiBooking(CalModel):
    id: int
    uid: str
    start: CalTime
    end: CalTime
    status: str  # lowercase: accepted | cancelled | rejected | pending
    title: str | None = None
    description: str | None = None
    hosts: list[ApiHost] = Field(default_factory=list)
    cancellationReason: str | None = None
    cancelledByEmail: str | None = None
    reschedulingReason: str | None = None
    rescheduledByEmail: str | None = None
    rescheduledFromUid: str | None = None
    rescheduledToUid: str | None = None
    duration: int | None = None
    eventTypeId: int | None = None
    eventType: ApiEventType | None = None
    meetingUrl: str | None = None
    location: str | None = None
    absentHost: bool | None = None
    createdAt: CalTime | None = None
    updatedAt: CalTime | None = None  # null on rows never updated
    metadata: dict[str, Any] = Field(default_factory=dict)
    rating: int | None = None
    icsUid: str | None = None
    attendees: list[ApiAttendee] = Field(default_factory=list)
    guests: list[Any] = Field(default_factory=list)
    bookingFieldsResponses: dict[str, Any] = Field(default_factory=dict)  # raw, no labels


class Pagination(CalModel):
    totalItems: int
    remainingItems: int
    returnedItems: int
    itemsPerPage: int
    currentPage: int
    totalPages: int
    hasNextPage: bool
    hasPreviousPage: bool


class ApiBookingResponse(CalModel):
    status: str
    data: ApiBooking


class ApiBookingListResponse(CalModel):
    status: str
    data: list[ApiBooking]
    pagination: Pagination


def error_path(exc: ValidationError) -> str:
    """`payload.attendees[0].email: string_type`: the path and the error type, never the input
    (pydantic's own message quotes the input, which is patient data)."""
    err = exc.errors(include_url=False, include_input=False)[0]
    path = ""
    for part in err["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return f"{path or 'body'}: {err['type']}"
