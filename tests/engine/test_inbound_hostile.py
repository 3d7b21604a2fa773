"""The listener against EHRs that misbehave the way real ones do, over real MLLP sockets:
reused control ids, test-system messages, v2.7 encoding characters, other charsets, stray
0x0B bytes, trailers without CR, peers that never read their ACKs, connection floods."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from engine.hl7.ack import parse_ack
from engine.inbound.listener import start_listener
from engine.mllp.framing import frame
from engine.mllp.server import connection_count, shutdown
from tests.engine.test_inbound import (
    CHANNEL,
    Env,
    Raw,
    booking_calls,
    send_hl7,
    siu,
    slot,
)
from tests.engine.test_inbound import env as inbound_env  # noqa: F401 - a fixture, by this name
from tests.engine_harness import eventually


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


# ---------------------------------------------------------------------------- header checks
async def test_a_test_message_to_production_is_refused_and_never_written(ehr: Env) -> None:
    test_msg = siu("S12", "TST0001", "R3001", slot(3, 9)).replace("|P|2.5.1|", "|T|2.5.1|")
    ack = await send_hl7(ehr.port, test_msg)
    assert (ack.code, ack.error_codes, ack.control_id) == ("AR", ("202",), "TST0001")
    assert "MSH-11" in (ack.text or "")
    await ehr.worker.drain()
    assert (await ehr.store.inbound_counts())["inbound_messages"] == 0
    assert booking_calls(ehr.fake) == []
    # a listener set up for a test system takes T and refuses P
    server = await start_listener("127.0.0.1", 0, store=ehr.store,
                                  config_getter=lambda: ehr.config, metrics=ehr.metrics,
                                  processing_ids=("T",))
    try:
        port = server.sockets[0].getsockname()[1]
        assert (await send_hl7(port, test_msg)).code == "AA"
        prod = await send_hl7(port, siu("S12", "PRD0001", "R3002", slot(3, 10)))
        assert (prod.code, prod.error_codes) == ("AR", ("202",))
    finally:
        await shutdown(server)
    assert (await ehr.store.inbound_counts())["inbound_messages"] == 1


async def test_v27_encoding_characters_with_truncation_are_accepted(ehr: Env) -> None:
    text = siu("S12", "V27001", "R3101", slot(3, 11), enc="^~\\&#").replace(
        "|2.5.1|", "|2.7|", 1)
    raw = await Raw.open(ehr.port)
    await raw.send(frame(text.encode()))
    data = await asyncio.wait_for(raw.reader.readuntil(b"\x1c\r"), 5)
    await raw.close()
    ack = parse_ack(data.strip(b"\x0b\x1c\r"))
    assert (ack.code, ack.control_id, ack.version) == ("AA", "V27001", "2.7")
    assert strict_ack_problems(data.strip(b"\x0b\x1c\r").decode()) == []
    await ehr.worker.drain()
    assert booking_calls(ehr.fake) == ["POST /v2/bookings"]


async def test_msh18_decides_the_decoding_and_the_ack_answers_in_it(ehr: Env) -> None:
    # the channel says UTF-8; this sender declares ISO 8859-1 in MSH-18 and writes in it
    latin = siu("S12", "L18001", "R3201", slot(3, 12)).replace("UNICODE UTF-8", "8859/1")
    ack = await send_hl7_bytes(ehr.port, latin.replace("Ada", "Adé").encode("latin-1"))
    assert (ack[0].code, ack[0].control_id) == ("AA", "L18001")
    # an error text that quotes a value comes back in the sender's charset, saying which
    bad = siu("S12", "L18002", "R3202", slot(3, 13), provider="Dré").replace(
        "UNICODE UTF-8", "8859/1")
    ack, data = await send_hl7_bytes(ehr.port, bad.encode("latin-1"))
    assert (ack.code, ack.error_codes) == ("AE", ("204",))
    assert b"Dr\xe9" in data and "Dré".encode() not in data
    assert data.split(b"\r")[0].split(b"|")[17] == b"8859/1"
    assert strict_ack_problems(data.decode("latin-1")) == []
    # a declared charset the bytes do not fit is refused, with the control id
    ascii_msg = siu("S12", "A18001", "R3203", slot(3, 14)).replace("UNICODE UTF-8", "ASCII")
    ack, _ = await send_hl7_bytes(ehr.port, ascii_msg.replace("Ada", "Adé").encode("latin-1"))
    assert (ack.code, ack.control_id) == ("AE", "A18001") and "ASCII" in (ack.error_text or "")
    stored = await ehr.store.inbound_counts()
    assert stored["inbound_messages"] == 1


async def send_hl7_bytes(port: int, payload: bytes) -> tuple[Any, bytes]:
    """One framed message; the reply as read and its raw bytes (decoded as 8859-1 for
    parsing: the tests look at bytes, not at what a decoder made of them)."""
    raw = await Raw.open(port)
    try:
        await raw.send(frame(payload))
        data = await asyncio.wait_for(raw.reader.readuntil(b"\x1c\r"), 5)
    finally:
        await raw.close()
    body = data.strip(b"\x0b\x1c\r")
    return parse_ack(body, "latin-1"), body


def strict_ack_problems(er7: str) -> list[str]:
    """hl7apy STRICT over an ACK we sent (its own version's rules)."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    try:
        parse_message(er7.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.STRICT,
                      find_groups=False).validate()
    except Exception as exc:  # noqa: BLE001 - the problem is the answer
        return [f"{type(exc).__name__}: {exc}"]
    return []


# ---------------------------------------------------------------------------- framing
async def test_a_vertical_tab_inside_a_message_is_data_by_default(ehr: Env) -> None:
    # a line break pasted into a name field arrives as 0x0B inside the frame
    text = siu("S12", "VT0001", "R4001", slot(4, 9)).replace("Ada", "Ada\x0bMarie")
    ack, _ = await send_hl7_bytes(ehr.port, text.encode())
    assert (ack.code, ack.control_id) == ("AA", "VT0001")
    await ehr.worker.drain()
    jobs = await ehr.store.inbound_jobs(None, 10)
    assert [(j["control_id"], j["status"]) for j in jobs] == [("VT0001", "done")]
    # a sender that gives up on a frame and starts the next message: the cut one is not
    # mixed into the next (which is stored as sent) and gets no answer; it will be resent
    cut = siu("S12", "VTCUT1", "R4002", slot(4, 12)).encode()[:150]
    whole = siu("S15", "VTNEXT1", "R4003", slot(4, 13)).encode()
    ack, _ = await send_hl7_bytes(ehr.port, cut + b"\x0b" + whole)
    assert (ack.code, ack.control_id) == ("AA", "VTNEXT1")
    jobs = await ehr.store.inbound_jobs(None, 10)
    assert [(j["control_id"], j["ehr_appointment_id"], j["trigger"]) for j in jobs][1:] == [
        ("VTNEXT1", "R4003", "S15")]
    # the other choice, per listener: a 0x0B starts a new frame (the cut message gets no
    # answer, and what follows the 0x0B none it can match)
    server = await start_listener("127.0.0.1", 0, store=ehr.store,
                                  config_getter=lambda: ehr.config, metrics=ehr.metrics,
                                  vt_in_frame="restart")
    try:
        port = server.sockets[0].getsockname()[1]
        cut, _ = await send_hl7_bytes(port, text.replace("VT0001", "VT0002").encode())
        assert cut.code == "AE" and cut.control_id is None
    finally:
        await shutdown(server)
    assert (await ehr.store.inbound_counts())["inbound_messages"] == 2


async def test_frames_ended_without_a_cr_are_answered(ehr: Env) -> None:
    one = siu("S12", "NOCR01", "R4101", slot(4, 10)).encode()
    two = siu("S12", "NOCR02", "R4102", slot(4, 11)).encode()
    raw = await Raw.open(ehr.port)
    try:
        # the first ends where the next frame starts; the second is the last thing sent
        await raw.send(b"\x0b" + one + b"\x1c" + b"\x0b" + two + b"\x1c")
        got = [await raw.reply() for _ in range(2)]
    finally:
        await raw.close()
    assert [(a.code, a.control_id) for a in got] == [("AA", "NOCR01"), ("AA", "NOCR02")]
    assert (await ehr.store.inbound_counts())["inbound_messages"] == 2


async def test_an_error_answer_names_the_message_when_its_id_can_be_read(ehr: Env) -> None:
    raw = await Raw.open(ehr.port)
    try:
        big = b"MSH|^~\\&|MAIN_EHR|ACME_CLINIC|||||SIU^S12|BIG2|P|2.5.1\r" + b"X" * 2_000_000
        await raw.send(frame(big))
        r = await raw.reply()
        assert (r.code, r.control_id) == ("AE", "BIG2") and "limit" in (r.error_text or "")
        await raw.send(frame(siu("S12", "BADENC2", "R4201", enc="^^\\&").encode()))
        r = await raw.reply()
        assert (r.code, r.control_id) == ("AE", "BADENC2")
    finally:
        await raw.close()


# ---------------------------------------------------------------------------- slow peers
async def test_a_peer_that_never_reads_its_acks_is_let_go(ehr: Env) -> None:
    server = await start_listener("127.0.0.1", 0, store=ehr.store,
                                  config_getter=lambda: ehr.config, metrics=ehr.metrics,
                                  ack_write_timeout=0.5)
    try:
        port = server.sockets[0].getsockname()[1]
        # each message names a 60 KB facility, which its AR copies back: the ACKs pile up
        big = siu("S12", "SLOW", "R5001", facility="F" * 60_000).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.set_write_buffer_limits(high=2**30)  # no back-pressure here
        for _ in range(300):
            writer.write(frame(big))
        await eventually(lambda: connection_count(server) == 1, timeout=5)
        # never read: the listener gives up on its writes and lets the connection go
        await eventually(lambda: connection_count(server) == 0, timeout=10)
        assert ehr.metrics.listener_connections.labels("write_timeout")._value.get() == 1
        writer.transport.abort()
        # and serves others as before
        assert (await send_hl7(port, siu("S12", "AFTER1", "R5002", slot(5, 9)))).code == "AA"
    finally:
        await shutdown(server)


async def test_connections_over_the_cap_are_closed_and_counted(ehr: Env) -> None:
    server = await start_listener("127.0.0.1", 0, store=ehr.store,
                                  config_getter=lambda: ehr.config, metrics=ehr.metrics,
                                  max_connections=2)
    port = server.sockets[0].getsockname()[1]
    opened: list[Raw] = []
    try:
        opened = [await Raw.open(port) for _ in range(2)]
        await eventually(lambda: connection_count(server) == 2, timeout=5)
        extra = await Raw.open(port)
        assert await asyncio.wait_for(extra.reader.read(), 5) == b""  # closed at once
        await extra.close()
        assert ehr.metrics.listener_connections.labels("refused")._value.get() == 1
        # the two within the cap still work; once one leaves, a newcomer is taken
        await opened[0].send(frame(siu("S12", "CAP1", "R5101", slot(5, 10)).encode()))
        assert (await opened[0].reply()).code == "AA"
        await opened[1].close()
        await eventually(lambda: connection_count(server) == 1, timeout=5)
        assert (await send_hl7(port, siu("S12", "CAP2", "R5102", slot(5, 11)))).code == "AA"
    finally:
        for r in opened:
            await r.close()
        await shutdown(server)
