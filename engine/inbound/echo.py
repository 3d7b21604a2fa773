"""No echo: recognise the Cal.com webhooks about bookings that an EHR's own SIU made.

The inbound worker stores every booking uid it gets from Cal.com (creates, and every uid of a
reschedule chain) with the inbound channel it came from; `store.inbound_origins(uids)` answers
uid -> channel. For a webhook, the uids to ask about are its `uid`, `rescheduleUid` (a
reschedule's new uid is only known once Cal.com answers, but it always names the old one) and
`bookingUid` (no-show). BOOKING_CANCELLED carries no metadata, so uids are the key; for a
BOOKING_CREATED that overtakes the worker's commit of the new uid, the booking's metadata
`calhl7_origin` (set on every block we create) is the second key.

Usage in the processor (per batch):
    uids = [u for e in events for u in echo_uids(e.body)]
    origins = await store.inbound_origins(uids)
    channel = echo_origin(event.body, origins)           # None: not ours
    skip = inbound_config.echo_destinations(channel)     # do not send SIU there
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_KEYS = ("uid", "rescheduleUid", "bookingUid")


def webhook_payload(body: bytes) -> dict[str, Any] | None:
    """The booking part of a webhook body (enveloped or flat), or None; no validation."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    payload = doc.get("payload")
    return payload if isinstance(payload, dict) else doc


def _payload(body: bytes | Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """Callers that already parsed the body hand in its payload: parse once per event."""
    return webhook_payload(body) if isinstance(body, bytes | bytearray) else body


def echo_uids(body: bytes | Mapping[str, Any] | None) -> list[str]:
    p = _payload(body)
    if p is None:
        return []
    return [v for v in (p.get(k) for k in _KEYS) if isinstance(v, str) and v]


def echo_origin(body: bytes | Mapping[str, Any] | None,
                origins: Mapping[str, str]) -> str | None:
    """The inbound channel whose SIU produced this booking, or None."""
    p = _payload(body)
    if p is None:
        return None
    for key in _KEYS:
        uid = p.get(key)
        if isinstance(uid, str) and uid in origins:
            return origins[uid]
    # Booking metadata can be set by a booker too (booking-page URL parameters): only trust it
    # together with the placeholder attendee address that carries the same reference.
    metadata = p.get("metadata")
    if not isinstance(metadata, dict):
        return None
    origin, ref = metadata.get("calhl7_origin"), metadata.get("calhl7_ref")
    attendees = p.get("attendees")
    first = attendees[0] if isinstance(attendees, list) and attendees else None
    email = first.get("email") if isinstance(first, dict) else None
    if (isinstance(origin, str) and isinstance(ref, str) and ref and isinstance(email, str)
            and email.startswith(f"ehr-block+{ref}@")):
        return origin
    return None
