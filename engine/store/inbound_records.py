"""Plain records the inbound path (EHR -> Cal.com) hands to the store and gets back."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

# inbound_jobs.status
JOB_QUEUED = "queued"
JOB_DONE = "done"
JOB_DEAD = "dead"

# inbound_blocks.status
BLOCK_ACCEPTED = "accepted"
BLOCK_PENDING = "pending"
BLOCK_CANCELLED = "cancelled"


def content_digest(payload: bytes) -> str:
    """What makes two SIU with one MSH-10 the same message: the bytes, with MSH-7 (some
    senders stamp it anew on a resend) blanked and line ends made CR."""
    body = payload.strip(b"\x0b\x1c\x00 \t\r\n")
    if b"\n" in body:
        body = body.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    end = body.find(b"\r")
    msh, rest = (body, b"") if end < 0 else (body[:end], body[end:])
    if msh.startswith(b"MSH") and len(msh) > 3:
        parts = msh.split(msh[3:4], 7)  # parts[6] is MSH-7
        if len(parts) > 6:
            parts[6] = b""
            msh = msh[3:4].join(parts)
    return hashlib.sha256(msh + rest).hexdigest()


@dataclass(frozen=True, slots=True)
class InboundMessage:
    channel: str
    sender: str  # MSH-3.1 "|" MSH-4.1
    control_id: str  # MSH-10
    trigger: str  # S12 ... S15
    ehr_appointment_id: str
    payload: bytes  # the frame as received
    received_at: float
    ack_code: str = "AA"
    job_params: dict[str, Any] | None = None  # None: stored, nothing to do in Cal.com


@dataclass(frozen=True, slots=True)
class InboundAccept:
    message_id: int
    duplicate: bool
    ack_code: str  # what we answered the first time
    # stored as new although this sender already used its MSH-10 for other content
    reused_id: bool = False


@dataclass(frozen=True, slots=True)
class HeldBlock:
    """The Cal.com booking that currently blocks an EHR appointment's time."""

    channel: str
    ehr_appointment_id: str
    current_uid: str | None
    status: str  # accepted | pending | cancelled
    start: str | None = None  # ISO UTC
    end: str | None = None
    provider_id: str | None = None
    event_type_id: int | None = None

    @property
    def active(self) -> bool:
        return self.current_uid is not None and self.status in (BLOCK_ACCEPTED, BLOCK_PENDING)


@dataclass(frozen=True, slots=True)
class InboundJob:
    id: int
    message_id: int
    channel: str
    ehr_appointment_id: str
    trigger: str
    params: dict[str, Any]
    attempts: int
    lease: int  # fence: the outcome only counts while this claim is current
    held: HeldBlock | None = None


@dataclass(frozen=True, slots=True)
class UidRecord:
    uid: str
    previous_uid: str | None
    status: str


@dataclass(frozen=True, slots=True)
class JobOutcome:
    job_id: int
    lease: int
    outcome: str  # done | retry | dead
    at: float
    detail: str | None = None  # dead: Cal.com's message; retry: why
    next_attempt_at: float | None = None
    held: HeldBlock | None = None  # the block after this job (upserted)
    uids: tuple[UidRecord, ...] = field(default_factory=tuple)
    result: dict[str, Any] | None = None
