"""What we hold about one appointment: the chain of Cal.com bookings behind it.

A reschedule in Cal.com creates a new booking uid; the EHR must see one appointment moved. The
state ties every uid of the chain to one stable `appointment_id` (the first uid), remembers the
status of each uid (precedence is applied per uid, not per arrival), and keeps the last full
event so a no-show or a late cancel can be completed without Cal.com's help.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from engine.appointments.model import AppointmentEvent

# Precedence per booking uid: a delivery may only move a uid forward. CANCELLED and REJECTED are
# terminal (same rank), so a CREATED that arrives after its CANCELLED cannot resurrect it.
STATUS_RANK: dict[str, int] = {"PENDING": 1, "ACCEPTED": 2, "CANCELLED": 3, "REJECTED": 3}
TERMINAL_STATUSES: frozenset[str] = frozenset({"CANCELLED", "REJECTED"})
REPLACED = "CANCELLED"  # Cal.com sets a rescheduled-away booking to CANCELLED


def status_rank(status: str) -> int:
    return STATUS_RANK.get(status, 0)


@dataclass(frozen=True, slots=True)
class AppointmentState:
    appointment_id: str  # uid of the first booking of the chain: the EHR's placer id
    uids: tuple[str, ...]  # every booking uid of the chain, in the order we linked them
    current_uid: str  # the booking that holds the appointment now
    statuses: dict[str, str] = field(default_factory=dict)  # uid -> Cal.com status
    ical_uid: str | None = None
    ical_sequence: int | None = None  # of current_uid: orders reschedules that arrive crossed
    no_show: bool = False  # patient marked absent (host no-shows are not recorded here)
    last_event: AppointmentEvent | None = None  # the last full snapshot of current_uid

    @property
    def current_status(self) -> str | None:
        return self.statuses.get(self.current_uid)

    def with_status(self, uid: str, status: str) -> AppointmentState:
        return replace(self, statuses={**self.statuses, uid: status})

    def to_dict(self) -> dict[str, Any]:
        return {
            **self._head(),
            "last_event": self.last_event.to_dict() if self.last_event else None,
        }

    def to_json(self, last_event_json: str | None = None) -> str:
        """`json.dumps(self.to_dict())`, with `last_event_json` (the last event, already
        encoded by the caller) spliced in instead of encoding the event a second time."""
        if self.last_event is None or last_event_json is None:
            return json.dumps(self.to_dict())
        return f'{json.dumps(self._head())[:-1]}, "last_event": {last_event_json}}}'

    def _head(self) -> dict[str, Any]:
        return {
            "appointment_id": self.appointment_id,
            "uids": list(self.uids),
            "current_uid": self.current_uid,
            "statuses": dict(self.statuses),
            "ical_uid": self.ical_uid,
            "ical_sequence": self.ical_sequence,
            "no_show": self.no_show,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AppointmentState:
        last = data.get("last_event")
        return cls(
            appointment_id=data["appointment_id"],
            uids=tuple(data["uids"]),
            current_uid=data["current_uid"],
            statuses=dict(data.get("statuses") or {}),
            ical_uid=data.get("ical_uid"),
            ical_sequence=data.get("ical_sequence"),
            no_show=bool(data.get("no_show", False)),
            last_event=AppointmentEvent.from_dict(last) if last else None,
        )
