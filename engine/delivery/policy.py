"""What an ACK means for a message, and how long to wait before the next try.

Pure: `classify` turns a parsed ACK (or its absence) into an outcome; `backoff_seconds` gives
capped exponential back-off with jitter. The delivery worker does the I/O. The policies
themselves are part of a destination's file (`engine.config.destinations`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from engine.backoff import backoff_delay
from engine.config.destinations import AckPolicy, Outcome, RetryPolicy
from engine.hl7.ack import AckInfo

# --------------------------------------------------------------------------- classification

# HL7 table 0357 groups, as they bear on "would the same bytes fail again?"
CONFIG_REJECT_CODES = frozenset({"200", "201", "202", "203"})  # unsupported type/event/id/version
CONTENT_ERROR_CODES = frozenset({"100", "101", "102", "103", "204"})  # the message itself is wrong
TRANSIENT_CODES = frozenset({"206", "207"})  # record locked, internal error: passing conditions
DUPLICATE_KEY = "205"


@dataclass(frozen=True, slots=True)
class Decision:
    """`reason` is ours and PHI-free (codes, control ids): safe to log and to show.
    `ehr_text` is the EHR's own words (ERR-8/7, MSA-3): store it for the analyst, never log it."""

    outcome: Outcome
    reason: str
    ehr_text: str | None = None


def _codes(ack: AckInfo) -> str:
    return f" ERR-3 {','.join(ack.error_codes)}" if ack.error_codes else ""


def classify(
    ack: AckInfo | None, *, sent_control_id: str, is_resend: bool, policy: AckPolicy
) -> Decision:
    """Outcome of one send, from the parsed reply.

    The error condition is read where the ACK's version puts it: ERR-3 (v2.5+), ERR-1.4
    (v2.3/2.4) or MSA-6 (before ERR); when an ACK carries more than one and they disagree,
    the most specific present wins, in that order (see engine.hl7.ack). ERR segments whose
    ERR-4 severity is W or I are remarks, not errors. `is_resend` must mean "these bytes
    went out before": a duplicate key (205) is success only then.

    A reply we cannot credit to this message (unparsable, no MSA, MSA-2 != the MSH-10 we
    sent) is RESET whatever the overrides say: overrides tune the meaning of a *valid* ACK,
    they can never turn someone else's ACK into a success."""
    if ack is None:
        return Decision(Outcome.RESET, "no reply to classify")
    if ack.parse_error is not None or ack.code is None:
        return Decision(Outcome.RESET, f"unusable reply: {ack.parse_error or 'no MSA-1'}")
    if ack.control_id != sent_control_id.strip():
        return Decision(
            Outcome.RESET,
            f"MSA-2 {_safe_id(ack.control_id)!r} does not match sent MSH-10 "
            f"{_safe_id(sent_control_id)!r}",
        )
    code, errs, text = ack.code, ack.error_codes, ack.error_text
    if code == "AE" and ack.warnings_only and not errs:
        # every ERR is ERR-4 W or I: the EHR filed the message and only remarks on it
        return Decision(Outcome.DELIVERED, "AE with warnings only (ERR-4 W/I): filed", text)
    for key in [f"{code}:{e}" for e in errs] + [code]:
        if key in policy.overrides:
            return Decision(policy.overrides[key], f"{code}{_codes(ack)}: override {key}", text)
    if code in ("AA", "CA"):
        return Decision(Outcome.DELIVERED, f"{code}")
    if code == "AE":
        if DUPLICATE_KEY in errs and is_resend and policy.duplicate_key_is_delivered:
            return Decision(
                Outcome.DELIVERED, "AE ERR-3 205 duplicate key on a resend: the EHR has it", text
            )
        return Decision(Outcome.DEAD, f"AE{_codes(ack)}: application error", text)
    if code == "AR":
        if DUPLICATE_KEY in errs:  # as with AE: the EHR has it, or a real conflict
            if is_resend and policy.duplicate_key_is_delivered:
                return Decision(Outcome.DELIVERED,
                                "AR ERR-3 205 duplicate key on a resend: the EHR has it", text)
            return Decision(Outcome.DEAD, f"AR{_codes(ack)}: duplicate key", text)
        err_set = set(errs)
        if err_set & CONFIG_REJECT_CODES:
            return Decision(Outcome.DEAD, f"AR{_codes(ack)}: interface configuration reject", text)
        if err_set & CONTENT_ERROR_CODES:
            return Decision(Outcome.DEAD, f"AR{_codes(ack)}: content reject", text)
        if not errs:
            return Decision(Outcome.RETRY, "AR without ERR: passing condition, retry", text)
        # 206/207 and local codes we do not know: retry within the per-message budget
        return Decision(Outcome.RETRY, f"AR{_codes(ack)}: retry", text)
    if code == "CE":
        return Decision(Outcome.RETRY, f"CE{_codes(ack)}: commit error, retry", text)
    return Decision(Outcome.DEAD, f"CR{_codes(ack)}: commit reject", text)  # CR


def _safe_id(value: str | None) -> str:
    # control ids are safe to log, but a garbage MSA-2 could hold anything: keep it short
    return "" if value is None else value[:24].encode("ascii", "replace").decode()


def backoff_seconds(
    attempt: int, policy: RetryPolicy, rand: Callable[[], float] = random.random
) -> float:
    """Delay before retry number `attempt` (1 = after the first failed send)."""
    return backoff_delay(attempt, policy.initial_seconds, policy.max_seconds, policy.multiplier,
                         policy.jitter, rand)


def budget_exhausted(attempts: int, policy: RetryPolicy) -> bool:
    """True once `attempts` sends were made and the per-message budget allows no more."""
    return attempts >= policy.max_attempts
