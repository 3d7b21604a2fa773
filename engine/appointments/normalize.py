"""The pure core: one stored Cal.com webhook body -> one appointment event (or a reason not to).

`normalize` does no I/O. The caller passes `lookup(key)`, which returns the state of the
appointment a booking uid (or an iCalUID, see `uid_links`) belongs to, and upserts the returned
state and links after the event is committed. Deliveries arrive in any order and at most once,
so every decision is made from what we hold, by precedence per booking uid, never by arrival.
`precedence` makes those decisions; `fields` extracts the event's fields from the payload.

Decisions (see also tests/unit/test_normalize.py, which pins each one):
- Appointment id = uid of the first booking of the chain. A reschedule is followed through
  `rescheduleUid`; if that uid is unknown, the iCalUID (stable across reschedules) is tried.
- A reschedule whose original we never saw becomes a NEW appointment whose id is the
  `rescheduleUid` (the chain's first uid, and the local part of its iCalUID), so a late copy of
  the original, or a later reconciliation of it, lands on the same appointment. It is sent as
  `new` because the EHR never received the original from us.
- A new booking that continues an appointment we hold as cancelled (host "request reschedule":
  CANCELLED first, then the patient picks a time) starts a new appointment with its own uid:
  legacy EHRs treat a cancelled placer id as final.
- Two reschedules crossing in flight are ordered by `iCalSequence`: the older one is linked into
  the chain as replaced and is `no_change`.
- A no-show for a booking we do not hold is `quarantined` (not ignored): reconciliation may
  fetch the booking later and an analyst, or the reprocess job, can replay the body then.
- A no-show mark for anyone other than the patient (host, guest) is `ignored` with a reason.
- The actor is derived from the `cancelledBy` / `rescheduledBy` email: the organizer's (or a
  team member's) -> organizer, an attendee's -> attendee, anyone else -> api. Emails are not kept.
- Free-text clinical answers never enter `answers` (notes, reasons, descriptions, and any answer
  longer than `MAX_ANSWER_CHARS`); `cancellation_reason` is kept for cancels and rejections.
"""

from __future__ import annotations

from datetime import datetime

from engine.appointments.fields import MAX_AGE_YEARS, MAX_ANSWER_CHARS, parse_dob
from engine.appointments.precedence import Disposition, Lookup, Normalization, booking, no_show
from engine.calcom.check import NO_SHOW_TRIGGER, check_object, parse_body

__all__ = [
    "MAX_AGE_YEARS",
    "MAX_ANSWER_CHARS",
    "Disposition",
    "Lookup",
    "Normalization",
    "normalize",
    "parse_dob",
]


def normalize(
    body: bytes,
    *,
    source: str,
    received_at: datetime,
    lookup: Lookup,
) -> Normalization:
    obj, verdict = parse_body(body, None)
    if verdict is None:
        verdict = check_object(obj)
    if verdict.disposition == "quarantine":
        return Normalization("quarantined", reason=verdict.reason)
    if verdict.disposition == "ignore":
        return Normalization("ignored", reason=verdict.reason)
    assert verdict.trigger is not None
    if verdict.trigger == NO_SHOW_TRIGGER:
        return no_show(obj, verdict.trigger, source, received_at, lookup)
    return booking(obj, verdict.trigger, source, received_at, lookup)
