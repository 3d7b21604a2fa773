"""What an EHR has, or may have, of an appointment: the rules behind the operator actions that
put a message back in its lane (`resend`, `reprocess`). Both stores read the rows in the
transaction that makes the change and decide here, so nothing can be sent in between.

- A change the EHR may hold under one MSH-10 must never go again under another one: the EHR
  cannot tell it is a repeat. It may hold it when a send of that MSH-10 was accepted, or when
  the EHR's last answer to it was not a refusal naming that MSH-10 (a timeout, a hang-up, a
  reply for another message, or a sender that stopped before it recorded an outcome).
- An older state of an appointment must never reach the EHR after a newer one (an S12 after
  the S15 re-creates a cancelled appointment): a later message of the same appointment to the
  same destination that the EHR has, or may have, blocks the older one.

Everything here names messages by id, type, MSH-10 and time: never by their content.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from engine.hl7.ack import parse_ack

# the EHR's answers that say it did not take the message (application error, reject, commit
# error or reject); an AE 205 the engine credited as delivered is recorded as delivered
_REFUSALS = frozenset({"AE", "AR", "CE", "CR"})


@dataclass(frozen=True, slots=True)
class Send:
    """One row of the attempt log."""

    control_id: str
    at: float
    outcome: str  # delivered | retry | dead
    ack: bytes | None


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """A message and its lane, as one transaction sees them."""

    id: int
    message_type: str
    control_id: str
    status: str
    acked_at: float | None
    claimed_by: str | None  # the lane's owner while this message is the lane's head
    lease_until: float | None
    sends: Sequence[Send] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Held:
    """A change the destination has or may have: which message, under which MSH-10, why."""

    message_id: int
    message_type: str
    control_id: str
    how: str  # what the record shows, e.g. "acknowledged AA"
    at: float | None

    def line(self) -> str:
        when = datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") \
            if self.at else "-"
        return (f"message {self.message_id}  {self.message_type}  MSH-10 {self.control_id}"
                f"  {self.how}  {when}")


class Refused(Exception):
    """An operator action was refused; nothing changed. `str()` says what to do instead."""


class InFlight(Refused):
    """The message is being sent right now: no operator change until its outcome is in."""

    def __init__(self, message_id: int, owner: str, lease_until: float | None) -> None:
        self.message_id, self.owner, self.lease_until = message_id, owner, lease_until
        until = datetime.fromtimestamp(lease_until, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") \
            if lease_until else "-"
        super().__init__(f"message {message_id} is being sent now (claimed by {owner} until"
                         f" {until})")


class MayBeHeld(Refused):
    """The EHR may hold this message's change under an MSH-10 it was sent with already."""

    def __init__(self, message_id: int, held: list[Held], later: list[Held]) -> None:
        # `later`: what LaterChangesSent would name too, so a --force warning names it all
        self.message_id, self.held, self.later = message_id, held, later
        super().__init__(f"message {message_id} may be at the EHR already: "
                         + "; ".join(h.line() for h in held))


class LaterChangesSent(Refused):
    """Later changes of the same appointment reached (or may have reached) the destination."""

    def __init__(self, message_id: int, later: list[Held]) -> None:
        self.message_id, self.later = message_id, later
        super().__init__(f"message {message_id} is older than changes the destination has: "
                         + "; ".join(h.line() for h in later))


def answer(send: Send) -> str | None:
    """The ACK code the EHR gave this send, when its reply names the MSH-10 that went out."""
    if not send.ack:
        return None
    info = parse_ack(bytes(send.ack))
    if info.code is None or (info.control_id or "") != send.control_id.strip():
        return None
    return info.code


def held_sends(message: MessageFacts, now: float) -> list[Held]:
    """The MSH-10s of `message` the EHR may hold, each with the send that decides it."""
    by_control_id: dict[str, list[Send]] = {}
    for send in message.sends:
        by_control_id.setdefault(send.control_id, []).append(send)
    out = []
    for sends in by_control_id.values():
        accepted = next((s for s in sends if s.outcome == "delivered"
                         or answer(s) in ("AA", "CA")), None)
        if accepted is not None:
            out.append(_held(message, accepted, f"accepted ({answer(accepted) or 'credited'})"))
            continue
        last = sends[-1]
        code = answer(last)
        if code not in _REFUSALS:
            how = "sent, no answer for it" if code is None else f"sent, answered {code}"
            out.append(_held(message, last, how))
    if message.claimed_by and (message.lease_until or 0) < now:
        # a sender claimed it and stopped before recording anything: it may have sent it
        out.append(Held(message.id, message.message_type, message.control_id,
                        f"claimed by {message.claimed_by}, which stopped without an outcome",
                        message.lease_until))
    return out


def being_sent(message: MessageFacts, now: float) -> bool:
    return bool(message.claimed_by) and (message.lease_until or 0) >= now


def later_held(later: Sequence[MessageFacts], now: float) -> list[Held]:
    """Of the later messages of an appointment to one destination, those the EHR has or may
    have (in queue order)."""
    out = []
    for m in later:
        if m.status == "acked":
            out.append(Held(m.id, m.message_type, m.control_id, "acknowledged", m.acked_at))
        elif being_sent(m, now):
            out.append(Held(m.id, m.message_type, m.control_id, "being sent now", now))
        else:
            out.extend(held_sends(m, now))
    return out


def _held(message: MessageFacts, send: Send, how: str) -> Held:
    return Held(message.id, message.message_type, send.control_id, how, send.at)


def check_reprocess(message: MessageFacts, later: Sequence[MessageFacts], now: float,
                    force: bool) -> list[Held]:
    """Raise when re-rendering `message` under a new MSH-10 could repeat or reorder a change;
    return what `force` passed over (for the audit trail)."""
    if being_sent(message, now):
        assert message.claimed_by is not None
        raise InFlight(message.id, message.claimed_by, message.lease_until)
    held = held_sends(message, now)
    newer = later_held(later, now)
    if not force:
        if held:
            raise MayBeHeld(message.id, held, newer)
        if newer:
            raise LaterChangesSent(message.id, newer)
    return held + newer


def check_resend(message: MessageFacts, later: Sequence[MessageFacts], now: float,
                 force: bool) -> list[Held]:
    """Raise when sending `message` again (same bytes, same MSH-10) would put it after a newer
    change of its appointment; return what `force` passed over."""
    newer = later_held(later, now)
    if newer and not force:
        raise LaterChangesSent(message.id, newer)
    return newer
