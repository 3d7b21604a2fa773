"""A batch's inputs, gathered as a generator of lookups so the engine (awaiting the store) and
a helper process (on its own connection) run the same steps."""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from engine.inbound.echo import echo_origin, echo_uids, webhook_payload
from engine.processing.core import Batch
from engine.store.base import StoredEvent

_UID_KEYS = ("uid", "rescheduleUid", "bookingUid", "iCalUID", "fromReschedule")


def _uids_of(payload: Mapping[str, Any] | None) -> list[str]:
    """The booking uids an event may need to look up (cheap: no validation)."""
    if payload is None:
        return []
    found = [payload.get(k) for k in _UID_KEYS]
    return [u for u in found if isinstance(u, str) and u and _encodable(u)]


def _encodable(text: str) -> bool:
    """False for a lone surrogate (valid JSON, not UTF-8): no store could look it up."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# the reads a batch needs, in order; each answer decides what the next one asks
Lookup = tuple[str, list[str]]  # ("states" | "holding" | "origins", keys)


def gather_inputs(
    events: Sequence[StoredEvent],
    overlay_states: Mapping[str, str],
    overlay_holding: AbstractSet[tuple[str, str]],
    echo_destinations: Callable[[str], frozenset[str]],
    with_origins: bool = True,
) -> Generator[Lookup, Any, Batch]:
    """A batch's inputs, without I/O: yields each lookup it needs and is sent the answer, so
    the engine (awaiting the store) and a helper process (on its own connection) run the
    same steps. The overlay is what the commit in flight will write."""
    payloads = {e.id: webhook_payload(e.body) for e in events}  # parsed once, used thrice
    uids = [u for e in events for u in _uids_of(payloads[e.id])]
    states: dict[str, str] = (yield ("states", uids)) if uids else {}
    states.update({u: overlay_states[u] for u in uids if u in overlay_states})
    appointments = list({json.loads(s)["appointment_id"] for s in states.values()})
    holding: set[tuple[str, str]] = (yield ("holding", appointments)) if appointments else set()
    holding |= overlay_holding
    echo: dict[int, frozenset[str]] = {}
    if with_origins:
        echo_keys = [u for e in events for u in echo_uids(payloads[e.id]) if _encodable(u)]
        origins = (yield ("origins", echo_keys)) if echo_keys else {}
        for e in events:
            channel = echo_origin(payloads[e.id], origins)
            if channel is not None:
                echo[e.id] = echo_destinations(channel)
    return Batch(tuple(events), states, frozenset(holding), echo)
