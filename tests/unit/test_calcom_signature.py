"""X-Cal-Signature-256 verification against vectors computed outside calhl7 (openssl; see
tests/fixtures/README.md)."""

from __future__ import annotations

import pytest

from engine.calcom.signature import NO_SECRET_PROVIDED, sign, verify_signature
from tests.calcom_factory import compact, load_sample

SECRET = "test-secret-do-not-use"
CREATED_SIG = "b97eaec29471917e1eed4a10ec6998446982fb0c2701618b94630c6785cfa5b7"
NO_SHOW_SIG = "636b0f6d1690d9a788250787cc94f9d777f03e36140da3322a1d40ee3e99ad13"


@pytest.mark.parametrize(
    ("sample", "size", "expected"),
    [("booking_created", 3331, CREATED_SIG), ("booking_no_show_updated", 275, NO_SHOW_SIG)],
)
def test_vectors_computed_with_openssl(sample: str, size: int, expected: str) -> None:
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
    assert not verify_signature(body.replace(b"14:15:00Z", b"15:15:00Z", 1), CREATED_SIG, [SECRET])


def test_empty_secrets_never_verify() -> None:
    body = b"{}"
    assert not verify_signature(body, sign(body, ""), [""])
    assert not verify_signature(body, sign(body, ""), [])
