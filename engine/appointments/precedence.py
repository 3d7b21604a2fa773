"""Precedence: what a delivery means for the appointment it belongs to, decided per booking uid
from what we hold, never by arrival order.

Pure. Follows reschedule chains (`rescheduleUid`, then the iCalUID), orders crossed reschedules
by `iCalSequence`, keeps terminal statuses terminal, and applies no-show marks to the event we
hold. The event's fields come from `fields.snapshot`; the decisions are listed in `normalize`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from engine.appointments.fields import fold_email, snapshot
from engine.appointments.model import AppointmentEvent, EventKind
from engine.appointments.state import (
    REPLACED,
    STATUS_RANK,
    TERMINAL_STATUSES,
    AppointmentState,
    status_rank,
)
from engine.calcom.models import BookingPayload, BookingWebhook, NoShowWebhook, error_path
from engine.texts import quoted

Disposition = Literal["event", "ignored", "quarantined", "no_change"]
Lookup = Callable[[str], AppointmentState | None]

_TRIGGER_STATUS = {"BOOKING_CANCELLED": "CANCELLED", "BOOKING_REJECTED": "REJECTED"}


@dataclass(frozen=True, slots=True)
class Normalization:
    disposition: Disposition
    event: AppointmentEvent | None = None
    state: AppointmentState | None = None  # to upsert; set whenever what we hold changed
    # booking uid / iCalUID -> appointment_id
    uid_links: dict[str, str] = field(default_factory=dict)
    reason: str | None = None  # PHI-free; a field path when quarantined
    notes: tuple[str, ...] = ()  # PHI-free audit notes



# --- booking triggers ---------------------------------------------------------------------


def booking(
    obj: Any, trigger: str, source: str, received_at: datetime, lookup: Lookup
) -> Normalization:
    try:
        hook = BookingWebhook.model_validate(obj)
    except ValidationError as exc:
        return Normalization("quarantined", reason=error_path(exc))
    p = hook.payload
    status = _TRIGGER_STATUS.get(trigger) or (p.status or "").upper()
    if not status:
        status = "PENDING" if trigger == "BOOKING_REQUESTED" else "ACCEPTED"
    if status not in STATUS_RANK:
        return Normalization("quarantined", reason="payload.status: unsupported value")
    notes: list[str] = []
    draft = snapshot(
        p, trigger, status, hook.createdAt or received_at, source, received_at.date(), notes
    )

    held = lookup(p.uid)
    if held is not None:
        return _known_booking(draft, held, p, notes)
    prev: AppointmentState | None = None
    if p.rescheduleUid:
        prev = lookup(p.rescheduleUid)
    if prev is None and p.iCalUID:
        prev = lookup(p.iCalUID)
        if prev is not None:
            notes.append("linked to its appointment by iCalUID")
    if prev is None:
        if p.rescheduleUid:
            notes.append(f"reschedule of unseen booking {quoted(p.rescheduleUid)}: sent as a new"
                         " appointment")
        return _first_seen(draft, p, notes, chain_from=p.rescheduleUid)
    return _continuation(draft, prev, p, notes)


def _first_seen(
    draft: AppointmentEvent, p: BookingPayload, notes: list[str], *, chain_from: str | None
) -> Normalization:
    """Open an appointment: its id is `chain_from` (an unseen original) or the booking's uid."""
    appointment_id = chain_from or p.uid
    uids: tuple[str, ...] = (p.uid,)
    statuses = {p.uid: draft.status}
    if chain_from:
        uids = (chain_from, p.uid)
        statuses = {chain_from: REPLACED, p.uid: draft.status}
    kind = EventKind.CANCEL if draft.status in TERMINAL_STATUSES else EventKind.NEW
    event = replace(
        draft,
        kind=kind,
        appointment_id=appointment_id,
        previous_booking_uid=p.rescheduleUid,
        previous_start=p.rescheduleStartTime,
        previous_end=p.rescheduleEndTime,
    )
    state = AppointmentState(
        appointment_id=appointment_id,
        uids=uids,
        current_uid=p.uid,
        statuses=statuses,
        ical_uid=p.iCalUID,
        ical_sequence=p.iCalSequence,
        last_event=event,
    )
    return _changed(event, state, notes)


def _continuation(
    draft: AppointmentEvent, prev: AppointmentState, p: BookingPayload, notes: list[str]
) -> Normalization:
    """A booking uid we have not seen that continues an appointment we hold."""
    if (
        p.iCalSequence is not None
        and prev.ical_sequence is not None
        and p.iCalSequence <= prev.ical_sequence
        and p.rescheduleUid != prev.current_uid
    ):
        # Crossed in flight: an older step of the chain. Remember the uid so its later
        # deliveries resolve here too, but the appointment already moved past it.
        state = replace(
            prev.with_status(p.uid, REPLACED),
            uids=_append(prev.uids, p.uid),
        )
        return Normalization(
            "no_change",
            state=state,
            uid_links=_links(state),
            reason=f"superseded: iCalSequence {quoted(p.iCalSequence)} <="
                   f" {prev.ical_sequence} held",
            notes=tuple(notes),
        )
    if prev.current_status in TERMINAL_STATUSES:
        # Host "request reschedule": the EHR holds the old placer id as cancelled, for good.
        notes.append(
            f"continues cancelled appointment {prev.appointment_id}: sent as a new appointment"
        )
        return _first_seen(draft, p, notes, chain_from=None)
    if p.rescheduleUid and p.rescheduleUid != prev.current_uid:
        notes.append(f"rescheduleUid {quoted(p.rescheduleUid)} is not the current booking"
                     f" {prev.current_uid}")
    last = prev.last_event
    kind = EventKind.CANCEL if draft.status in TERMINAL_STATUSES else EventKind.RESCHEDULE
    event = replace(
        draft,
        kind=kind,
        appointment_id=prev.appointment_id,
        previous_booking_uid=prev.current_uid,
        previous_start=last.start if last else p.rescheduleStartTime,
        previous_end=last.end if last else p.rescheduleEndTime,
    )
    uids = prev.uids
    statuses = {**prev.statuses, prev.current_uid: REPLACED}
    if p.rescheduleUid and p.rescheduleUid not in uids:
        uids = _append(uids, p.rescheduleUid)  # an intermediate step we never saw
        statuses[p.rescheduleUid] = REPLACED
    statuses[p.uid] = draft.status
    state = AppointmentState(
        appointment_id=prev.appointment_id,
        uids=_append(uids, p.uid),
        current_uid=p.uid,
        statuses=statuses,
        ical_uid=prev.ical_uid or p.iCalUID,
        ical_sequence=p.iCalSequence if p.iCalSequence is not None else prev.ical_sequence,
        last_event=event,
    )
    return _changed(event, state, notes)


def _known_booking(
    draft: AppointmentEvent, held: AppointmentState, p: BookingPayload, notes: list[str]
) -> Normalization:
    """Another delivery for a booking uid we hold: apply it by precedence, not arrival."""
    if p.uid != held.current_uid:
        return Normalization(
            "no_change", reason=f"booking {p.uid} superseded by {held.current_uid}",
            notes=tuple(notes),
        )
    stored = held.statuses.get(p.uid, "")
    incoming, current = status_rank(draft.status), status_rank(stored)
    if incoming < current:
        return Normalization(
            "no_change", reason=f"stale: {draft.status} after {stored}", notes=tuple(notes)
        )
    if incoming == current and (
        stored in TERMINAL_STATUSES or _same_details(draft, held.last_event)
    ):
        return Normalization("no_change", reason=f"already held: {stored}", notes=tuple(notes))
    last = held.last_event
    if draft.status in TERMINAL_STATUSES:
        kind = EventKind.CANCEL
    elif last is not None and (last.start, last.end) != (draft.start, draft.end):
        kind = EventKind.RESCHEDULE  # same uid, new times (an edit without a new booking)
    else:
        kind = EventKind.MODIFICATION  # confirmation (PENDING -> ACCEPTED) or changed details
    actor = draft.actor
    if stored == "PENDING" and draft.status == "ACCEPTED":
        actor = "organizer"  # only the host confirms
    event = replace(
        draft,
        kind=kind,
        appointment_id=held.appointment_id,
        actor=actor,
        previous_booking_uid=None,
        previous_start=last.start if last and kind is EventKind.RESCHEDULE else None,
        previous_end=last.end if last and kind is EventKind.RESCHEDULE else None,
    )
    state = replace(
        held.with_status(p.uid, draft.status),
        ical_uid=held.ical_uid or p.iCalUID,
        ical_sequence=p.iCalSequence if p.iCalSequence is not None else held.ical_sequence,
        last_event=event,
    )
    return _changed(event, state, notes)


def _changed(event: AppointmentEvent, state: AppointmentState, notes: list[str]) -> Normalization:
    return Normalization(
        "event", event=event, state=state, uid_links=_links(state), notes=tuple(notes)
    )


def _links(state: AppointmentState) -> dict[str, str]:
    links = {uid: state.appointment_id for uid in state.uids}
    if state.ical_uid:
        links[state.ical_uid] = state.appointment_id  # second key: lookup(iCalUID) works too
    return links


def _append(uids: tuple[str, ...], uid: str) -> tuple[str, ...]:
    return uids if uid in uids else (*uids, uid)


def _same_details(a: AppointmentEvent, b: AppointmentEvent | None) -> bool:
    """True when `a` describes what `b` already said (who, when, where, what, answers)."""
    if b is None:
        return False
    fields = ("status", "start", "end", "timezone", "patient", "provider", "location", "event_type",
              "team_id", "team_name", "answers")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


# --- no-show ------------------------------------------------------------------------------


def no_show(
    obj: Any, trigger: str, source: str, received_at: datetime, lookup: Lookup
) -> Normalization:
    try:
        hook = NoShowWebhook.model_validate(obj)
    except ValidationError as exc:
        return Normalization("quarantined", reason=error_path(exc))
    uid = hook.payload.bookingUid
    held = lookup(uid)
    if held is None or held.last_event is None:
        # Reprocessable: once reconciliation has fetched the booking, a replay completes it.
        return Normalization("quarantined", reason="payload.bookingUid: booking not held yet")
    if uid != held.current_uid:
        return Normalization("no_change", reason=f"booking {uid} superseded by {held.current_uid}")
    if held.current_status in TERMINAL_STATUSES:
        return Normalization("no_change", reason=f"appointment is {held.current_status}")
    last = held.last_event
    flag = _patient_no_show_flag(hook.payload.attendees, last)
    if flag is None:
        return Normalization(
            "ignored",
            reason="payload.attendees: no entry for the patient (host or guest no-show)",
        )
    if flag == held.no_show:
        return Normalization("no_change", reason=f"no-show already {'marked' if flag else 'clear'}")
    event = replace(
        last,
        kind=EventKind.NO_SHOW if flag else EventKind.NO_SHOW_WITHDRAWN,
        trigger=trigger,
        occurred_at=hook.createdAt or received_at,
        source=source,
        actor="organizer",  # only the host marks attendance
        previous_booking_uid=None,
        previous_start=None,
        previous_end=None,
        cancellation_reason=None,
    )
    state = replace(held, no_show=flag, last_event=event)
    return Normalization("event", event=event, state=state, uid_links={})


def _patient_no_show_flag(attendees: list[Any], last: AppointmentEvent) -> bool | None:
    """The patient's flag in a no-show payload, or None when the mark is about someone else."""
    patient = fold_email(last.patient.email)
    host = fold_email(last.provider.email)
    flag: bool | None = None
    for a in attendees:
        email = fold_email(a.email)
        if (patient and email == patient) or (not patient and email and email != host):
            flag = a.noShow
    return flag
