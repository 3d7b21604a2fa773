"""engine.delivery.policy: ACK outcome tables, back-off, budget."""

from __future__ import annotations

import pytest

from engine.config.destinations import AckPolicy, Outcome, RetryPolicy
from engine.delivery.policy import Decision, backoff_seconds, budget_exhausted, classify
from engine.hl7.ack import AckInfo, parse_ack
from tests.conftest import FIXTURES

SENT = "S12-20261005-000017"  # MSH-10 of tests/fixtures/hl7/siu_s12_v251.hl7
D, R, X, Z = Outcome.DELIVERED, Outcome.RETRY, Outcome.DEAD, Outcome.RESET


def ack(code: str | None, *errs: str, control_id: str | None = SENT, text: str | None = None) -> AckInfo:
    return AckInfo(code=code, control_id=control_id, error_codes=tuple(errs), error_text=text)


@pytest.mark.parametrize(
    ("info", "is_resend", "expected"),
    [
        # accepted
        (ack("AA"), False, D),
        (ack("AA"), True, D),
        (ack("CA"), False, D),
        # application error: the same bytes fail again...
        (ack("AE"), False, X),
        (ack("AE", "204"), False, X),
        (ack("AE", "207"), False, X),
        (ack("AE", "205"), False, X),  # a duplicate key on a first send is a real conflict
        # ...except a duplicate key on a resend: the EHR already has it
        (ack("AE", "205"), True, D),
        (ack("AE", "101", "205"), True, D),
        # application reject: configuration -> dead, passing condition -> retry
        (ack("AR", "200"), False, X),
        (ack("AR", "201"), False, X),
        (ack("AR", "202"), True, X),
        (ack("AR", "203"), False, X),
        (ack("AR", "206"), False, R),
        (ack("AR", "207"), False, R),
        (ack("AR"), False, R),
        (ack("AR", "207", "201"), False, X),  # any configuration code wins
        (ack("AR", "101"), False, X),  # content codes under AR still fail again
        (ack("AR", "204"), False, X),
        (ack("AR", "Z99"), False, R),  # unknown local code: retry within the budget
        # enhanced mode commit acks
        (ack("CE"), False, R),
        (ack("CE", "207"), False, R),
        (ack("CR"), False, X),
        (ack("CR", "203"), False, X),
        # replies we cannot credit to this message: never success
        (None, False, Z),
        (ack("AA", control_id="S12-20261005-000018"), False, Z),  # someone else's (late) ACK
        (ack("AA", control_id=None), False, Z),
        (ack("AA", control_id=""), False, Z),
        (ack(None), False, Z),
        (AckInfo(None, None, parse_error="empty reply"), False, Z),
        (AckInfo("AA", SENT, parse_error="weird"), False, Z),
        (AckInfo(None, None, parse_error="no MSA segment"), True, Z),
        (ack("AE", "205", control_id="OTHER"), True, Z),
    ],
)
def test_classify_defaults(info: AckInfo | None, is_resend: bool, expected: Outcome) -> None:
    decision = classify(info, sent_control_id=SENT, is_resend=is_resend, policy=AckPolicy())
    assert isinstance(decision, Decision)
    assert decision.outcome is expected, decision.reason
    assert decision.reason


@pytest.mark.parametrize(
    ("overrides", "dup_ok", "info", "is_resend", "expected"),
    [
        ({"AE": Outcome.RETRY}, True, ack("AE", "204"), False, R),
        ({"AE:207": Outcome.RETRY}, True, ack("AE", "207"), False, R),
        ({"AE:207": Outcome.RETRY}, True, ack("AE", "204"), False, X),  # other codes keep default
        ({"AE:207": Outcome.RETRY, "AE": Outcome.DELIVERED}, True, ack("AE", "207"), False, R),  # specific first
        ({"AE": Outcome.DELIVERED}, True, ack("AE", "204"), False, D),
        ({"AR": Outcome.DEAD}, True, ack("AR"), False, X),
        ({"AR:206": Outcome.DEAD}, True, ack("AR", "206"), False, X),
        ({"AR:201": Outcome.RETRY}, True, ack("AR", "201"), False, R),
        ({"CE": Outcome.DEAD}, True, ack("CE"), False, X),
        ({"CR": Outcome.RETRY}, True, ack("CR"), False, R),
        ({"AA": Outcome.DEAD}, True, ack("AA"), False, X),
        # overrides never credit a reply that is not ours
        ({"AA": Outcome.DELIVERED}, True, ack("AA", control_id="X"), False, Z),
        ({"AE": Outcome.DELIVERED}, True, AckInfo(None, None, parse_error="no MSA segment"), False, Z),
        # duplicate key switched off: a resend's 205 is an error like any other
        ({}, False, ack("AE", "205"), True, X),
    ],
)
def test_classify_policy(
    overrides: dict[str, Outcome], dup_ok: bool, info: AckInfo, is_resend: bool, expected: Outcome
) -> None:
    policy = AckPolicy(overrides=overrides, duplicate_key_is_delivered=dup_ok)
    assert classify(info, sent_control_id=SENT, is_resend=is_resend, policy=policy).outcome is expected


def test_overrides_load_from_config_strings() -> None:
    policy = AckPolicy.model_validate({"overrides": {"AE:207": "retry"}})
    assert classify(ack("AE", "207"), sent_control_id=SENT, is_resend=False, policy=policy).outcome is R


def test_decision_keeps_ehr_text_out_of_reason() -> None:
    info = ack("AE", "204", text="Patient Ada Testpatient not found")
    decision = classify(info, sent_control_id=SENT, is_resend=False, policy=AckPolicy())
    assert decision.outcome is X
    assert "204" in decision.reason and "Testpatient" not in decision.reason  # reason is loggable
    assert decision.ehr_text == "Patient Ada Testpatient not found"  # for the analyst


def test_classify_the_ack_fixtures_end_to_end() -> None:
    ex = FIXTURES / "hl7"
    cases = [("ack_aa_v251.hl7", SENT, D), ("ack_ae_v251.hl7", SENT, X),
             ("ack_ar_v251.hl7", "S14-20261022-000031", X), ("ack_aa_v251.hl7", "S12-OTHER", Z)]
    for name, sent, expected in cases:
        info = parse_ack((ex / name).read_bytes())
        assert classify(info, sent_control_id=sent, is_resend=False, policy=AckPolicy()).outcome is expected


# ------------------------------------------------------------------ back-off and budget

NO_JITTER = lambda: 0.5  # noqa: E731  rand 0.5 -> factor 1.0


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 256.0), (10, 300.0), (50, 300.0),
     (10_000, 300.0), (10**12, 300.0)],
)
def test_backoff_capped_exponential(attempt: int, expected: float) -> None:
    assert backoff_seconds(attempt, RetryPolicy(), rand=NO_JITTER) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("rand", "attempt", "expected"),
    [(lambda: 0.0, 3, 3.2), (lambda: 1.0, 3, 4.8), (lambda: 0.0, 20, 240.0), (lambda: 1.0, 20, 300.0)],
)
def test_backoff_jitter_bounds(rand: object, attempt: int, expected: float) -> None:
    assert backoff_seconds(attempt, RetryPolicy(), rand=rand) == pytest.approx(expected)  # type: ignore[arg-type]


def test_backoff_random_spread_stays_in_bounds() -> None:
    policy = RetryPolicy(initial_seconds=0.5, max_seconds=60, multiplier=3, jitter=0.5)
    for attempt in range(1, 30):
        base = min(0.5 * 3 ** (attempt - 1), 60)
        for _ in range(50):
            d = backoff_seconds(attempt, policy)
            assert base * 0.5 - 1e-9 <= d <= min(base * 1.5, 60) + 1e-9


def test_backoff_constant_when_multiplier_is_one() -> None:
    policy = RetryPolicy(initial_seconds=5, max_seconds=300, multiplier=1.0, jitter=0)
    assert {backoff_seconds(a, policy) for a in range(1, 100)} == {5.0}


def test_backoff_initial_above_cap_is_capped() -> None:
    policy = RetryPolicy(initial_seconds=10, max_seconds=3, jitter=0)
    assert backoff_seconds(1, policy) == 3.0


@pytest.mark.parametrize(("attempts", "max_attempts", "expected"),
                         [(0, 3, False), (2, 3, False), (3, 3, True), (4, 3, True), (1, 1, True)])
def test_budget_exhausted(attempts: int, max_attempts: int, expected: bool) -> None:
    assert budget_exhausted(attempts, RetryPolicy(max_attempts=max_attempts)) is expected


def _w(code: str, *errs: str, warnings_only: bool = False) -> AckInfo:
    return AckInfo(code=code, control_id=SENT, error_codes=tuple(errs),
                   warnings_only=warnings_only)


@pytest.mark.parametrize(
    ("info", "is_resend", "expected"),
    [
        (_w("AE", warnings_only=True), False, D),  # only ERR-4 W/I: filed, with remarks
        (_w("AE", "204", warnings_only=False), False, X),
        (_w("AR", "205"), True, D),  # duplicate key on a resend, as with AE
        (_w("AR", "205"), False, X),  # on a first send: a real conflict, as with AE
        (_w("AR", "201"), False, X),
        (_w("AR", warnings_only=True), False, R),  # a reject is a reject
    ],
)
def test_warnings_and_reject_duplicate_key(
    info: AckInfo, is_resend: bool, expected: Outcome
) -> None:
    assert classify(info, sent_control_id=SENT, is_resend=is_resend,
                    policy=AckPolicy()).outcome == expected


def test_msa6_reject_from_the_wire_is_a_dead_letter() -> None:
    reply = ("MSH|^~\\&|EHR|C|CAL|A|20250314093016||ACK^S12|A1|P|2.3\r"
             f"MSA|AR|{SENT}||||201^Unsupported event code^HL70357\r")
    assert classify(parse_ack(reply), sent_control_id=SENT, is_resend=False,
                    policy=AckPolicy()).outcome == X
