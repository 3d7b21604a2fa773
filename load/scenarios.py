"""What the load users send, and what each EHR should therefore receive.

Shared by the Locust users (which send stories and write a ledger of every webhook and its
answer) and the correctness check (which turns the 2xx'd part of each story into the SIU
triggers each destination should see, from the channel files actually used for the run).

A story is one appointment's life from `engine.sim.bookings.StoryTeller`: new, requested then
confirmed (or rejected), reschedule chains, cancellations, no-shows, across both example
providers, in person and by video, with the hard synthetic names. The load mix adds:
  - redeliveries: the same body again (Cal.com does that; the engine must produce nothing);
  - pings (Cal.com's "test webhook" button) and unrouted bookings (an event type no channel
    maps): answered 2xx, produce nothing.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.sim.bookings import CLINIC_ADDRESS, StoryTeller

# an event type that no example channel maps: routed nowhere ("unrouted"), answered 2xx
UNROUTED_EVENT_TYPE = ("family", 739999, "dermatology-consult", "Dermatology Consult", 30,
                       CLINIC_ADDRESS, False)

# kinds a webhook can have in a story (what the engine should make of it)
NEW, PENDING, CONFIRMED, RESCHEDULE, CANCEL, NO_SHOW = (
    "new", "pending", "confirmed", "reschedule", "cancel", "no_show")
DUP, PING, UNROUTED = "dup", "ping", "unrouted"   # produce nothing


@dataclass
class Hook:
    body: dict[str, Any]
    kind: str
    trigger: str


@dataclass
class LoadStory:
    key: str                    # unique per run: "<user>-<n>"
    appointment: str            # first booking uid = SCH-1 on every example channel
    event_type_id: int
    location: str               # in_person | telehealth
    hooks: list[Hook] = field(default_factory=list)


def _kind_of(trigger: str, seen: list[str]) -> str:
    if trigger == "BOOKING_REQUESTED":
        return PENDING
    if trigger == "BOOKING_CREATED":
        return CONFIRMED if PENDING in seen else NEW
    if trigger == "BOOKING_RESCHEDULED":
        return RESCHEDULE
    if trigger in ("BOOKING_CANCELLED", "BOOKING_REJECTED"):
        return CANCEL
    if trigger == "BOOKING_NO_SHOW_UPDATED":
        return NO_SHOW
    return UNROUTED


def _load_story(key: str, teller_story: Any) -> LoadStory:
    first = teller_story.webhooks[0]["payload"]
    location = "in_person" if first.get("location") == CLINIC_ADDRESS else "telehealth"
    story = LoadStory(key, teller_story.appointment_uid, int(first["eventTypeId"]), location)
    seen: list[str] = []
    for body in teller_story.webhooks:
        trigger = body["triggerEvent"]
        kind = _kind_of(trigger, seen)
        seen.append(kind)
        story.hooks.append(Hook(body, kind, trigger))
    return story


class StoryMix:
    """An endless, seeded supply of load stories for one user."""

    def __init__(self, seed: int, prefix: str, dup_rate: float = 0.02, ping_rate: float = 0.005,
                 unrouted_rate: float = 0.01) -> None:
        self.teller = StoryTeller(seed=seed)
        self.rng = random.Random(seed ^ 0x5EED)
        self.prefix = prefix
        self.n = 0
        self.dup_rate, self.ping_rate, self.unrouted_rate = dup_rate, ping_rate, unrouted_rate

    def _key(self) -> str:
        self.n += 1
        return f"{self.prefix}-{self.n}"

    def next(self) -> LoadStory:
        roll = self.rng.random()
        if roll < self.ping_rate:
            body = {"triggerEvent": "PING", "createdAt": "2026-06-01T12:00:00.000Z",
                    "payload": {"type": "Test", "title": "Test trigger event",
                                "uid": f"ping-{self.prefix}-{self.n}"}}
            story = LoadStory(self._key(), "", 0, "")
            story.hooks.append(Hook(body, PING, "PING"))
            return story
        if roll < self.ping_rate + self.unrouted_rate:
            b = self.teller._booking(UNROUTED_EVENT_TYPE)  # noqa: SLF001 - a custom event type
            body = self.teller._envelope("BOOKING_CREATED", b.payload("ACCEPTED"))  # noqa: SLF001
            story = LoadStory(self._key(), b.uid, UNROUTED_EVENT_TYPE[1], "in_person")
            story.hooks.append(Hook(body, UNROUTED, "BOOKING_CREATED"))
            return story
        story = _load_story(self._key(), self.teller.story())
        if self.rng.random() < self.dup_rate:  # a redelivery of one of its webhooks
            i = self.rng.randrange(len(story.hooks))
            h = story.hooks[i]
            story.hooks.insert(i + 1, Hook(h.body, DUP, h.trigger))
        return story

    def mass_cancellation(self, count: int) -> list[LoadStory]:
        return [_load_story(self._key(), s) for s in self.teller.mass_cancellation(count)]


# ---------------------------------------------------------------------- the ledger
class Ledger:
    """Every webhook a load user sent, with its answer; written as JSON lines.

    Writes are plain appends from gevent greenlets (no yield inside), flushed at the end.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def record(self, story: LoadStory, index: int, hook: Hook, status: int | None,
               **extra: Any) -> None:
        if self.path is None:
            return
        rec = {"story": story.key, "appt": story.appointment, "i": index, "kind": hook.kind,
               "trigger": hook.trigger, "et": story.event_type_id, "loc": story.location,
               "status": status, "t": round(time.time(), 3), **extra}
        with self._lock:
            self.lines.append(json.dumps(rec, separators=(",", ":")))
            if len(self.lines) >= 2000:
                self.flush()

    def flush(self) -> None:
        if self.path is None or not self.lines:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write("\n".join(self.lines) + "\n")
        self.lines.clear()


def read_ledger(path: str | Path) -> Iterator[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return
    with p.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


# ---------------------------------------------------------------------- the expectation
@dataclass(frozen=True)
class ChannelRule:
    """What the correctness model needs from one channel file."""

    name: str
    destination: str
    event_types: frozenset[str]       # ids and slugs the channel maps, with a matching specialty
    locations: frozenset[str]         # empty: any
    pending: str                      # tentative | wait
    no_shows: bool
    reschedule_as: str                # S13 | S14 | S15+S12


def channel_rules(channels_dir: str | Path) -> list[ChannelRule]:
    from engine.config.outbound import load_config

    config = load_config(channels_dir)
    rules = []
    for ch in config.channels:
        if not ch.enabled:
            continue
        specialties = set(ch.match.specialties)
        types = {key for key, et in ch.maps.event_types.items()
                 if not specialties or et.specialty in specialties}
        if ch.match.event_types:
            types &= set(ch.match.event_types) if types else set(ch.match.event_types)
        rules.append(ChannelRule(ch.name, ch.destination, frozenset(types),
                                 frozenset(ch.match.locations), ch.filters.pending,
                                 ch.filters.no_shows, ch.hl7.reschedule_as))
    return rules


def _slug_of(event_type_id: int) -> str | None:
    from engine.sim.bookings import EVENT_TYPES

    for et in EVENT_TYPES:
        if et[1] == event_type_id:
            return et[2]
    return None


def expected_triggers(kinds: Iterable[str], event_type_id: int, location: str,
                      rules: Iterable[ChannelRule]) -> dict[str, list[str]]:
    """destination -> the SIU triggers (S12, S13, ...) it should receive, in order."""
    kinds = [k for k in kinds if k not in (DUP, PING, UNROUTED)]
    keys = {str(event_type_id), _slug_of(event_type_id) or ""}
    out: dict[str, list[str]] = {}
    for rule in rules:
        if not (keys & rule.event_types):
            continue
        if rule.locations and location not in rule.locations:
            continue
        got = out.setdefault(rule.destination, [])
        sent = False
        for kind in kinds:
            if kind == PENDING:
                if rule.pending == "tentative":
                    got.append("S12")
                    sent = True
            elif kind in (NEW, CONFIRMED):
                got.append("S14" if sent else "S12")
                sent = True
            elif kind == RESCHEDULE:
                if not sent:
                    got.append("S12")
                    sent = True
                elif rule.reschedule_as == "S15+S12":
                    got += ["S15", "S12"]
                else:
                    got.append(rule.reschedule_as)
            elif kind == CANCEL:
                if sent:
                    got.append("S15")
            elif kind == NO_SHOW:
                if rule.no_shows and sent:
                    got.append("S26")
    return {d: t for d, t in out.items() if t}


def expected_from_ledger(records: Iterable[Mapping[str, Any]], rules: list[ChannelRule]
                         ) -> tuple[dict[tuple[str, str], list[str]],
                                    dict[tuple[str, str], list[str]], dict[str, int]]:
    """(destination, appointment) -> triggers for the 2xx'd prefix of each story, and the same
    with the story's first unanswered webhook included (an answer lost in transit when the
    load stopped may still have been committed), plus counts."""
    stories: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        stories.setdefault(r["story"], []).append(r)
    sure: dict[tuple[str, str], list[str]] = {}
    maybe: dict[tuple[str, str], list[str]] = {}
    counts = {"stories": len(stories), "webhooks": 0, "webhooks_2xx": 0, "webhooks_failed": 0}
    for recs in stories.values():
        recs.sort(key=lambda r: r["i"])
        ok: list[str] = []
        uncertain: str | None = None
        for r in recs:
            counts["webhooks"] += 1
            status = r.get("status")
            if status is not None and 200 <= status < 300:
                counts["webhooks_2xx"] += 1
                ok.append(r["kind"])
                continue
            counts["webhooks_failed"] += 1
            uncertain = r["kind"] if status is None else None
            break  # the user abandons a story at its first failure
        first = recs[0]
        if not first.get("appt"):
            continue
        for dest, triggers in expected_triggers(ok, first["et"], first["loc"], rules).items():
            sure[(dest, first["appt"])] = triggers
        alt = ok + [uncertain] if uncertain else ok
        for dest, triggers in expected_triggers(alt, first["et"], first["loc"], rules).items():
            maybe[(dest, first["appt"])] = triggers
    return sure, maybe, counts
