"""X-Cal-Signature-256 verification against the published vectors in shared/calcom/README.md."""

from __future__ import annotations

import pytest

from engine.calcom.signature import NO_SECRET_PROVIDED, sign, verify_signature
from tests.calcom_factory import compact, load_sample

SECRET = "test-secret-do-not-use"
CREATED_SIG = "e313d3e03ee88f2bcede36af1e2b8d23c62048dfea02b3b4fd1b4ac0b5951ceb"
NO_SHOW_SIG = "cc7c065f642501d974c1e489d920eda0fe20a08cbb30e5dbb18738e52d94feb3"


@pytest.mark.parametrize(
    ("sample", "size", "expected"),
    [("booking_created", 3325, CREATED_SIG), ("booking_no_show_updated", 277, NO_SHOW_SIG)],
)
def test_published_vectors(sample: str, size: int, expected: str) -> None:
    body = compact(load_sample(sample))
    assert len(body) == size
    assert sign(body, SECRET) == expected
    assert verify_signature(body, expected, [SECRET])


def test_uppercase_and_padded_header_accepted() -> None:
    body = compact(load_sample("booking_no_show_updated"))
    assert verify_signature(body, f"  {NO_SHOW_SIG.upper()} ", [SECRET])


def test_rotation_either_secret_verifies() -> None:
    body = b'{"triggerEvent":"PING"}'
    old, new = "old-secret", "new-secret"
    assert verify_signature(body, sign(body, old), [new, old])
    assert verify_signature(body, sign(body, new), [new, old])
    assert not verify_signature(body, sign(body, "third"), [new, old])


@pytest.mark.parametrize(
    "header",
    [None, "", NO_SECRET_PROVIDED, "NO-SECRET-PROVIDED", "sha256=" + CREATED_SIG, CREATED_SIG[:-1], "é" * 64],
)
def test_bad_headers_rejected(header: str | None) -> None:
    body = compact(load_sample("booking_created"))
    assert not verify_signature(body, header, [SECRET])


def test_tampered_body_rejected() -> None:
    body = compact(load_sample("booking_created"))
    assert not verify_signature(body.replace(b"18:00:00Z", b"19:00:00Z", 1), CREATED_SIG, [SECRET])


def test_empty_secrets_never_verify() -> None:
    body = b"{}"
    assert not verify_signature(body, sign(body, ""), [""])
    assert not verify_signature(body, sign(body, ""), [])
