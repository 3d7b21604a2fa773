"""The store's records: what the engine hands to the store and gets back.

SQLite (embedded, default; store/sqlite/) and PostgreSQL (several nodes on one database;
store/postgres/) both take and return these. Callers never see SQL or connections; each
consumer types its store by the role it uses (store/roles.py, where `Store` is all of them).
The inbound path's records are in inbound_records.py.

Vocabulary:
- a *received event* is a webhook body exactly as Cal.com sent it, stored before we answer;
- an *appointment state* is the JSON the normalizer keeps per appointment (opaque here);
- an *outbound message* is one rendered SIU for one destination, waiting in a *lane*
  (destination, ordering key); only the head of a lane is ever in flight.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

# received_events.state
PENDING = "pending"  # accepted, not yet normalized
PROCESSED = "processed"
QUARANTINED = "quarantined"  # signed but unusable: kept raw for a fix and a reprocess
IGNORED = "ignored"  # PING, triggers we do not act on

# outbound.status
QUEUED = "queued"
ACKED = "acked"
DEAD = "dead"
SKIPPED = "skipped"  # a dead letter the lane moved past (channel chose skip), or released


class NotPending(RuntimeError):
    """commit_processed found events already processed (another node did them): nothing of
    the batch was written."""


class Verdict(Protocol):
    """What the request-path check found in a signed body (`engine.calcom.check` decides)."""

    @property
    def disposition(self) -> str: ...  # accept | quarantine | ignore
    @property
    def trigger(self) -> str | None: ...
    @property
    def booking_uid(self) -> str | None: ...
    @property
    def reason(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class IncomingWebhook:
    source: str
    body: bytes
    body_sha256: bytes
    content_type: str | None
    trigger: str | None
    booking_uid: str | None
    received_at: float  # epoch seconds: the start of end-to-end latency
    correlation_id: str
    state: str  # PENDING, QUARANTINED or IGNORED, decided by the request-path check
    reason: str | None = None

    @classmethod
    def from_check(cls, source: str, body: bytes, content_type: str | None,
                   check: Verdict, correlation_id: str) -> IncomingWebhook:
        """What intake keeps of a signed body (from HTTP or from reconciliation): the bytes as
        received, and the check's findings as lookup columns."""
        return cls(
            source=source, body=body, body_sha256=hashlib.sha256(body).digest(),
            content_type=content_type, trigger=_storable(check.trigger),
            booking_uid=_storable(check.booking_uid), received_at=time.time(),
            correlation_id=correlation_id, state=_CHECK_TO_STATE[check.disposition],
            reason=_storable(check.reason),
        )


_CHECK_TO_STATE = {"accept": PENDING, "quarantine": QUARANTINED, "ignore": IGNORED}


def _storable(text: str | None) -> str | None:
    """A lone surrogate (valid in JSON, not in UTF-8) must not make the insert fail: the body
    itself is kept byte for byte; only these lookup columns are made encodable."""
    if text is None:
        return None
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


@dataclass(frozen=True, slots=True)
class AcceptResult:
    event_id: int
    duplicate: bool
    state: str


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    source: str
    body: bytes
    content_type: str | None
    trigger: str | None
    booking_uid: str | None
    received_at: float
    correlation_id: str
    state: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class NewMessage:
    channel: str
    destination: str
    lane_key: str
    appointment_id: str
    message_type: str  # e.g. SIU^S12
    control_id: str  # MSH-10
    payload: bytes  # the exact bytes that go on the wire
    event_json: str  # the appointment event it was rendered from (for reprocess)
    error: str | None = None  # set: straight to the error queue (unmapped key...)
    hold_lane: bool = True  # when dead, does it hold the rest of its lane?


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    kind: str  # change | sent | operator | note
    appointment_id: str | None = None
    actor: str | None = None
    trigger: str | None = None
    source: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProcessedEvent:
    """Everything one received event leads to, committed in one transaction."""

    event_id: int
    state: str  # PROCESSED, QUARANTINED or IGNORED
    reason: str | None = None
    appointment_id: str | None = None
    appointment_state: str | None = None  # JSON to upsert, None when unchanged
    uid_links: dict[str, str] = field(default_factory=dict)  # booking uid -> appointment id
    messages: tuple[NewMessage, ...] = ()
    audit: tuple[AuditEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: int
    lane_id: int
    destination: str
    channel: str
    appointment_id: str
    message_type: str
    control_id: str
    payload: bytes
    attempts: int
    accepted_at: float | None
    correlation_id: str | None
    fence: int  # lane claim token: an outcome only counts while this claim is current
    claims: int = 1  # how often it was claimed, this time included: >1 means maybe sent before


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    message_id: int
    lane_id: int
    fence: int
    outcome: str  # delivered | retry | dead
    at: float
    ack: bytes | None = None
    ack_code: str | None = None
    detail: str | None = None
    next_attempt_at: float | None = None  # for retry
    hold_lane: bool = True  # for dead
    # the MSH-10 that went out; None: the message's current one. An operator's reprocess can
    # give the message a new MSH-10 while the old bytes are on the wire
    control_id: str | None = None

