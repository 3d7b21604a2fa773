"""The listener against EHRs that misbehave the way real ones do, over real MLLP sockets:
reused control ids, test-system messages, v2.7 encoding characters, other charsets, stray
0x0B bytes, trailers without CR, peers that never read their ACKs, connection floods."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.test_inbound import (
    CHANNEL,
    Env,
    booking_calls,
    send_hl7,
    siu,
    slot,
)
from tests.test_inbound import env as inbound_env  # noqa: F401 - a fixture, by this name


@pytest.fixture
async def ehr(inbound_env: Env) -> Env:  # noqa: F811 - the listener, its store and Cal.com
    return inbound_env


# ---------------------------------------------------------------------------- reused MSH-10
async def test_a_reused_control_id_with_new_content_is_stored_as_new(
        ehr: Env, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="calhl7.inbound.listener")
    # the EHR's counter wrapped: two different messages, both MSH-10 00042
    first = siu("S12", "00042", "R2001", slot(3, 9))
    other = siu("S15", "00042", "R2002", slot(3, 11))
    assert (await send_hl7(ehr.port, first)).code == "AA"
    ack = await send_hl7(ehr.port, other)
    assert (ack.code, ack.control_id) == ("AA", "00042")
    counts = await ehr.store.inbound_counts()
    assert counts["inbound_messages"] == 2
    jobs = await ehr.store.inbound_jobs(None, 10)
    assert sorted(j["ehr_appointment_id"] for j in jobs) == ["R2001", "R2002"]
    assert ehr.metrics.listener.labels("accepted")._value.get() == 2
    assert ehr.metrics.listener_reused_ids.labels(CHANNEL)._value.get() == 1
    reused = [r for r in caplog.records if r.message == "inbound control id reused"]
    assert len(reused) == 1 and getattr(reused[0], "control_id", None) == "00042"
    assert "Testpatient" not in caplog.text and "R2002" not in caplog.text


async def test_a_resend_with_a_new_msh7_is_still_a_repeat(ehr: Env) -> None:
    start = slot(3, 14)
    text = siu("S12", "RS0001", "R2101", start)
    resent = text.replace(text.split("|")[6], "20200101000000-0500", 1)
    assert resent != text
    assert (await send_hl7(ehr.port, text)).code == "AA"
    ack = await send_hl7(ehr.port, resent)
    assert (ack.code, ack.control_id) == ("AA", "RS0001")
    # and the same bytes with LF line ends, as some interfaces resend them
    assert (await send_hl7(ehr.port, text.replace("\r", "\n"))).code == "AA"
    await ehr.worker.drain()
    counts = await ehr.store.inbound_counts()
    assert counts["inbound_messages"] == 1
    assert booking_calls(ehr.fake) == ["POST /v2/bookings"]
    assert ehr.metrics.listener.labels("duplicate")._value.get() == 2
    assert ehr.metrics.listener_reused_ids.labels(CHANNEL)._value.get() == 0
