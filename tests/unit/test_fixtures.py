"""The fixtures are what their README says: spec-conformant HL7, synthetic people, all listed."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.hl7.validate import validate_strict
from tests.conftest import FIXTURES, REPO

HL7 = sorted((FIXTURES / "hl7").glob("*.hl7"))
SIU = [p for p in HL7 if p.name.startswith("siu_")]
ACK = [p for p in HL7 if p.name.startswith("ack_")]
JSON_FILES = sorted(FIXTURES.rglob("*.json")) + sorted((REPO / "examples").glob("*.json"))
# Domains reserved for examples (RFC 2606/6761) or Cal.com's own; nothing that could reach a person.
SAFE_EMAIL = re.compile(r"@(?:example\.com|clinic\.example|cal\.com)$", re.IGNORECASE)
EMAIL = re.compile(r"[\w.+-]+@[\w.-]+\w")


def er7(path: Path) -> str:
    return path.read_bytes().decode("utf-8")  # not read_text: that turns the CRs into LFs


def test_every_message_the_readme_lists_is_here() -> None:
    assert [p.name for p in SIU] == ["siu_s12_v23.hl7", "siu_s12_v251.hl7", "siu_s13_v251.hl7",
                                     "siu_s14_v251.hl7", "siu_s15_v251.hl7", "siu_s26_v251.hl7"]
    assert [p.name for p in ACK] == ["ack_aa_v251.hl7", "ack_ae_v251.hl7", "ack_ar_v251.hl7"]


@pytest.mark.parametrize("path", SIU, ids=lambda p: p.name)
def test_siu_fixture_passes_strict_validation(path: Path) -> None:
    text = er7(path)
    assert validate_strict(text) == []
    # and the same message without its SCH does not: the check above is not vacuous
    without_sch = "".join(s + "\r" for s in text.split("\r") if s and not s.startswith("SCH"))
    assert validate_strict(without_sch) != []


@pytest.mark.parametrize("path", HL7, ids=lambda p: p.name)
def test_every_fixture_passes_hl7apy_strict_for_its_version(path: Path) -> None:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    text = er7(path)
    assert "\n" not in text and text.endswith("\r")
    version = text.split("\r")[0].split("|")[11]
    if version == "2.3" and "SIU^S12|" not in text:
        pytest.fail("hl7apy knows only SIU_S12 for 2.3: keep v2.3 fixtures to S12")
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    message.validate()
    segments = [s[:3] for s in text.split("\r") if s]
    parsed: list[str] = []

    def walk(element: Any) -> None:
        for child in element.children:
            if child.classname == "Segment":
                parsed.append(child.name)
            else:
                walk(child)

    walk(message)
    assert parsed == segments  # hl7apy drops unknown segments silently; none was dropped


@pytest.mark.parametrize("path", ACK, ids=lambda p: p.name)
def test_each_ack_answers_an_siu_fixture(path: Path) -> None:
    control_ids = {er7(p).split("\r")[0].split("|")[9] for p in SIU}
    msa = next(s for s in er7(path).split("\r") if s.startswith("MSA|")).split("|")
    assert msa[2] in control_ids


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_json_fixture_people_are_synthetic(path: Path) -> None:
    text = path.read_text("utf-8")
    json.loads(text)
    emails = set(EMAIL.findall(text))
    assert emails and all(SAFE_EMAIL.search(e) for e in emails), emails
    phones = set(re.findall(r"\+1\d{10}", text))
    assert all(p[2:5] == "555" and p[5:8] == "555" and p[8:10] == "01" for p in phones), phones


def test_the_readme_describes_every_fixture() -> None:
    readme = (FIXTURES / "README.md").read_text("utf-8")
    files = [p for p in FIXTURES.rglob("*") if p.is_file() and p.name != "README.md"]
    assert len(files) >= 20
    missing = [p.name for p in files if f"`{p.name}`" not in readme]
    assert missing == []


def _keys(obj: dict[str, Any]) -> dict[str, Any]:
    """The key tree of a JSON object (values dropped; lists by their first element)."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, list):
            value = value[0] if value else None
        nested = isinstance(value, dict) and key != "bookingFieldsResponses"  # answers vary
        out[key] = _keys(value) if nested else None
    return out


async def test_the_fake_calcom_answers_in_the_shape_of_the_api_v2_fixtures() -> None:
    import httpx

    from tests.calcom_factory import load_sample
    from tests.fake_calcom import BOOKINGS_VERSION, standard_fake

    fake = await standard_fake().start()
    try:
        start = (datetime.now(UTC) + timedelta(days=3)).replace(hour=20, minute=0, second=0,
                                                                microsecond=0)
        headers = {"Authorization": "Bearer cal_test_key", "cal-api-version": BOOKINGS_VERSION}
        async with httpx.AsyncClient(base_url=fake.base_url, headers=headers) as client:
            made = await client.post("/v2/bookings", json={
                "start": start.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "eventTypeId": 731044,
                "attendee": {"name": "Lena Probewell", "email": "lena.probewell@example.com",
                             "timeZone": "America/New_York", "phoneNumber": "+15555550168"}})
            assert made.status_code == 201, made.text
            fake.mark_absent(fake.bookings[made.json()["data"]["uid"]], webhooks=False)
            got = (await client.get(f"/v2/bookings/{made.json()['data']['uid']}")).json()
            listed = (await client.get("/v2/bookings", params={
                "attendeeEmail": "lena.probewell@example.com", "sortStart": "asc"})).json()
    finally:
        await fake.stop()
    fixture_get = load_sample("booking_get", "api-v2")
    assert _keys(got) == _keys(fixture_get)
    fixture_list = load_sample("bookings_list", "api-v2")
    assert _keys(listed) == _keys({**fixture_list, "data": [fixture_get["data"]]})
