"""EHR SIU in over real MLLP -> stored -> AA -> Cal.com API calls on a real (fake) Cal.com."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import hl7
import hl7.mllp
import pytest
import uvicorn

from engine.calcom.api import CalcomApi, RateBudget
from engine.config.inbound import InboundConfig, load_inbound_config
from engine.hl7.ack import parse_ack
from engine.http.asgi import HttpSettings, Readiness, WebhookApp
from engine.inbound.echo import echo_origin, echo_uids
from engine.inbound.listener import start_listener
from engine.inbound.worker import InboundWorker
from engine.metrics import Metrics
from engine.mllp.framing import frame
from engine.mllp.server import shutdown
from engine.store.sqlite import SQLiteStore
from load.harness import free_port
from tests.conftest import REPO, STORE_KINDS, _pg_schema_url
from tests.engine_harness import eventually
from tests.fake_calcom import FakeCalcom, standard_fake

KEY = "cal_test_key"
NY = ZoneInfo("America/New_York")
PROVIDER = "1234567893"
CHANNEL = "ehr-main-inbound"


def slot(days: int, hour: int, minute: int = 0) -> datetime:
    d = (datetime.now(NY) + timedelta(days=days)).date()
    return datetime(d.year, d.month, d.day, hour, minute, tzinfo=NY)


def hl7_ts(dt: datetime) -> str:
    return dt.strftime("%Y%m%d%H%M%S%z")


def siu(trigger: str, control_id: str, appt: str, start: datetime | None = None, *,
        minutes: int = 30, provider: str = PROVIDER, app: str = "MAIN_EHR",
        facility: str = "ACME_CLINIC", mtype: str = "SIU", enc: str = "^~\\&") -> str:
    start = start or slot(3, 10)
    end = start + timedelta(minutes=minutes)
    s, e = hl7_ts(start), hl7_ts(end)
    status = "Cancelled" if trigger == "S15" else "Booked"
    segs = [
        f"MSH|{enc}|{app}|{facility}|CALCOM_HL7|ACME_CLINIC|{hl7_ts(datetime.now(NY))}||"
        f"{mtype}^{trigger}^SIU_S12|{control_id}|P|2.5.1||||||UNICODE UTF-8",
        f"SCH|{appt}^EHR|{appt}^EHR||||ROUTINE^Routine^HL70276|FU30^Follow-up^L|Normal|{minutes}|"
        f"min^minutes^ISO+|^^M{minutes}^{s}^{e}|||||{provider}^Careful^Cara^^^Dr^^^NPI|||||"
        f"FRONTDESK^Front desk|||||{status}",
        f"TQ1|1|||||{minutes}^min&minutes&ISO+|{s}|{e}",
        "PID|1||TP0001234^^^ACME^MR||Testpatient^Ada^^^^^L||19840712|F",
        "RGS|1|A",
        f"AIS|1|A|FU30^Follow-up visit 30 min^L|{s}|0|min|{minutes}|min||{status}",
        f"AIL|1|A|FAMMED^EXAM1^^ACME_CLINIC|||{s}|0|min|{minutes}|min||{status}",
        f"AIP|1|A|{provider}^Careful^Cara^^^Dr^^^NPI|ATT^Attending^L||{s}|0|min|{minutes}|min||{status}",
    ]
    return "\r".join(segs) + "\r"


@dataclass
class Env:
    fake: FakeCalcom
    store: Any
    api: CalcomApi
    worker: InboundWorker
    server: asyncio.Server
    port: int
    metrics: Metrics
    config: InboundConfig


async def open_store(kind: str, tmp_path: Path) -> Any:
    if kind == "sqlite":
        store: Any = SQLiteStore(tmp_path / "store.sqlite3")
    else:
        from engine.store.postgres import PostgresStore

        store = PostgresStore(await _pg_schema_url())
    await store.open()
    return store


@pytest.fixture(params=STORE_KINDS)
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    env_holder: dict[str, Any] = {}
    store = await open_store(request.param, tmp_path)
    fake = await standard_fake().start()
    metrics = Metrics()
    holder: dict[str, InboundConfig] = {"config": load_inbound_config(REPO / "channels")}
    api = CalcomApi(KEY, fake.base_url, metrics=metrics, rate_per_minute=6000,
                    backoff_initial=0.01)
    worker = InboundWorker(store, api, lambda: holder["config"], metrics, backoff_initial=0.05,
                           backoff_max=0.2, poll_seconds=0.05)
    server = await start_listener("127.0.0.1", 0, store=store,
                                  config_getter=lambda: holder["config"], metrics=metrics,
                                  max_frame_bytes=1_048_576, idle_timeout=30,
                                  on_accepted=worker.wake.set)
    port = server.sockets[0].getsockname()[1]
    config = holder["config"]
    env_holder.update(holder=holder)
    try:
        e = Env(fake, store, api, worker, server, port, metrics, config)
        e.holder = env_holder["holder"]  # type: ignore[attr-defined]
        yield e
    finally:
        await shutdown(server)
        await api.aclose()
        await store.close()
        await fake.stop()


async def send_hl7(port: int, text: str) -> Any:
    """With python-hl7's MLLP streams (encoding set: they default to ASCII)."""
    reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", port, encoding="utf-8")
    try:
        writer.writemessage(hl7.parse(text))
        await writer.drain()
        reply = await asyncio.wait_for(reader.readmessage(), 5)
        return parse_ack(str(reply))
    finally:
        writer.close()


class Raw:
    """A raw socket client: bytes out, unframed reply payloads in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", port, limit=2**24))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> Any:
        data = await asyncio.wait_for(self.reader.readuntil(b"\x1c\r"), 10)
        return parse_ack(data.strip(b"\x0b\x1c\r"))

    async def close(self) -> None:
        self.writer.close()


def booking_calls(fake: FakeCalcom) -> list[str]:
    return [f"{r.method} {r.path}" for r in fake.calls(path_prefix="/v2/bookings")
            if r.method == "POST"]


# ---------------------------------------------------------------------------- happy path
async def test_s12_s13_s15_block_move_free(env: Env) -> None:
    start = slot(3, 10)
    ack = await send_hl7(env.port, siu("S12", "EHR0001", "A1001", start))
    assert (ack.code, ack.control_id) == ("AA", "EHR0001")
    await env.worker.drain()
    block = await env.store.inbound_block(CHANNEL, "A1001")
    assert block is not None and block.status == "accepted"
    first_uid = block.current_uid
    booking = env.fake.bookings[first_uid]
    assert booking.start == start.astimezone(UTC)
    assert booking.event_type_id == 990001
    create = env.fake.calls("POST", "/v2/bookings")[0]
    assert create.body["attendee"]["name"] == "EHR booking"
    assert create.body["attendee"]["email"].startswith("ehr-block+")
    assert create.body["attendee"]["email"].endswith("@ehr-blocks.invalid")
    assert create.body["lengthInMinutes"] == 30
    sent = repr([r.body for r in env.fake.requests])
    for phi in ("Testpatient", "Ada", "19840712", "TP0001234"):
        assert phi not in sent  # the patient never leaves the EHR for Cal.com

    moved = slot(4, 11)
    ack = await send_hl7(env.port, siu("S13", "EHR0002", "A1001", moved))
    assert ack.code == "AA"
    await env.worker.drain()
    block = await env.store.inbound_block(CHANNEL, "A1001")
    assert block is not None and block.current_uid != first_uid  # a reschedule is a new uid
    assert env.fake.bookings[first_uid].status == "cancelled"
    assert env.fake.bookings[first_uid].rescheduled_to == block.current_uid
    assert env.fake.bookings[block.current_uid].start == moved.astimezone(UTC)
    second_uid = block.current_uid

    ack = await send_hl7(env.port, siu("S15", "EHR0003", "A1001", moved))
    assert ack.code == "AA"
    await env.worker.drain()
    assert env.fake.bookings[second_uid].status == "cancelled"
    assert booking_calls(env.fake) == [
        "POST /v2/bookings", f"POST /v2/bookings/{first_uid}/reschedule",
        f"POST /v2/bookings/{second_uid}/cancel"]
    origins = await env.store.inbound_origins([first_uid, second_uid, "someone-else"])
    assert origins == {first_uid: CHANNEL, second_uid: CHANNEL}


async def test_s14_moves_only_when_times_changed(env: Env) -> None:
    start = slot(5, 9)
    assert (await send_hl7(env.port, siu("S12", "M1", "A2001", start))).code == "AA"
    assert (await send_hl7(env.port, siu("S14", "M2", "A2001", start))).code == "AA"
    await env.worker.drain()
    assert booking_calls(env.fake) == ["POST /v2/bookings"]  # same times: nothing to do
    assert (await send_hl7(env.port, siu("S14", "M3", "A2001", start + timedelta(hours=2)))).code == "AA"
    await env.worker.drain()
    calls = booking_calls(env.fake)
    assert len(calls) == 2 and calls[1].endswith("/reschedule")
    jobs = await env.store.inbound_jobs(None, 10)
    assert [j["result"]["did"] for j in jobs] == ["created", "nothing", "moved"]


async def test_duplicate_msh10_is_acked_again_and_processed_once(env: Env) -> None:
    text = siu("S12", "DUP0001", "A3001", slot(6, 14))
    first = await send_hl7(env.port, text)
    second = await send_hl7(env.port, text)
    assert (first.code, second.code) == ("AA", "AA")
    assert first.control_id == second.control_id == "DUP0001"
    await env.worker.drain()
    assert booking_calls(env.fake) == ["POST /v2/bookings"]
    counts = await env.store.inbound_counts()
    assert counts["inbound_messages"] == 1 and counts["inbound_jobs_done"] == 1
    assert env.metrics.listener.labels("duplicate")._value.get() == 1


async def test_our_own_application_is_not_processed(env: Env) -> None:
    ack = await send_hl7(env.port, siu("S12", "ECHO1", "A4001", app="CALCOM_HL7"))
    assert ack.code == "AA"
    assert (await env.store.inbound_counts())["inbound_messages"] == 0
    assert env.metrics.listener.labels("echo")._value.get() == 1


# ---------------------------------------------------------------------------- bad input
async def test_bad_input_gets_clear_answers_and_the_listener_keeps_serving(env: Env) -> None:
    c = await Raw.open(env.port)
    # garbage
    await c.send(frame(b"this is not HL7 at all"))
    r = await c.reply()
    assert r.code == "AE" and "MSH" in (r.error_text or "")
    # a stray newline between two frames: both answered
    good1 = siu("S12", "OK0001", "B1", slot(3, 8)).encode()
    good2 = siu("S12", "OK0002", "B2", slot(3, 9)).encode()
    await c.send(frame(good1) + b"\r\n" + frame(good2))
    assert [(await c.reply()).control_id for _ in range(2)] == ["OK0001", "OK0002"]
    # wrong encoding characters (MSH-2 repeats a separator)
    await c.send(frame(siu("S12", "BADENC", "B3", enc="^^\\&").encode()))
    r = await c.reply()
    assert r.code == "AE" and "MSH-2" in (r.error_text or "")
    # an unknown provider
    await c.send(frame(siu("S12", "UNKPROV", "B4", provider="999").encode()))
    r = await c.reply()
    assert (r.code, r.error_codes, r.control_id) == ("AE", ("204",), "UNKPROV")
    # a message type and a trigger we do not take, an unknown sender
    await c.send(frame(siu("A04", "ADT1", "B5", mtype="ADT").encode()))
    r = await c.reply()
    assert (r.code, r.error_codes) == ("AR", ("200",))
    await c.send(frame(siu("S26", "NOSHOW1", "B6").encode()))
    r = await c.reply()
    assert (r.code, r.error_codes) == ("AR", ("201",))
    await c.send(frame(siu("S12", "STRANGER", "B7", app="OTHER_EHR").encode()))
    r = await c.reply()
    assert (r.code, r.error_codes) == ("AR", ("200",))
    # not UTF-8
    await c.send(frame(siu("S12", "LATIN1", "B8").encode().replace(b"Ada", b"Ad\xe9")))
    r = await c.reply()
    assert r.code == "AE" and "UTF-8" in (r.error_text or "")
    # a 10 MB frame: refused, the connection stays usable
    await c.send(frame(b"MSH|^~\\&|MAIN_EHR|ACME_CLINIC|||||SIU^S12|BIG|P|2.5.1\r" + b"X" * 10_000_000))
    r = await c.reply()
    assert r.code == "AE" and "limit" in (r.error_text or "")
    await c.send(frame(siu("S12", "AFTERBIG", "B9", slot(3, 12)).encode()))
    r = await c.reply()
    assert (r.code, r.control_id) == ("AA", "AFTERBIG")

    # half a frame, then the sender disappears: nothing stored, others unaffected
    half = await Raw.open(env.port)
    await half.send(b"\x0b" + siu("S12", "HALF", "B10").encode()[:80])
    await half.close()
    other = await Raw.open(env.port)
    await other.send(frame(siu("S12", "OTHERCONN", "B11", slot(3, 13)).encode()))
    assert (await other.reply()).code == "AA"
    await other.close()
    await c.close()

    await env.worker.drain()
    jobs = await env.store.inbound_jobs(None, 100)
    assert sorted(j["control_id"] for j in jobs) == ["AFTERBIG", "OK0001", "OK0002", "OTHERCONN"]
    assert all(j["status"] == "done" for j in jobs)


# ---------------------------------------------------------------------------- failures
async def test_taken_slot_dead_letters_with_calcoms_message(env: Env, caplog: Any) -> None:
    start = slot(7, 10)
    env.fake.create({"start": start.astimezone(UTC).isoformat(), "eventTypeId": 990001,
                     "attendee": {"name": "Someone", "email": "x@example.com",
                                  "timeZone": "UTC"}}, webhooks=False)
    caplog.set_level(logging.ERROR, logger="calhl7.inbound.worker")
    assert (await send_hl7(env.port, siu("S12", "T1", "A5001", start))).code == "AA"
    assert (await send_hl7(env.port, siu("S15", "T2", "A5001", start))).code == "AA"
    await env.worker.drain()
    jobs = await env.store.inbound_jobs(None, 10)
    assert [j["status"] for j in jobs] == ["dead", "done"]
    assert "already has booking" in jobs[0]["error"]
    assert jobs[1]["result"]["did"] == "nothing"  # nothing held, nothing to free
    alerts = [r for r in caplog.records if r.message == "inbound job dead-lettered"]
    assert len(alerts) == 1 and alerts[0].levelno == logging.ERROR
    assert "Testpatient" not in caplog.text


async def test_5xx_is_retried_then_succeeds_without_a_double_booking(env: Env) -> None:
    env.fake.fail_next = [500]  # the create's answer is lost: maybe applied
    assert (await send_hl7(env.port, siu("S12", "R1", "A6001", slot(8, 10)))).code == "AA"
    await env.worker.drain()
    jobs = await env.store.inbound_jobs(None, 10)
    assert jobs[0]["status"] == "done" and jobs[0]["attempts"] == 2
    assert len(env.fake.bookings) == 1


async def test_create_applied_but_answer_lost_is_adopted_not_doubled(env: Env) -> None:
    env.fake.fail_after_apply = [502]  # Cal.com booked it, we never heard
    start = slot(8, 15)
    assert (await send_hl7(env.port, siu("S12", "L1", "A6101", start))).code == "AA"
    await env.worker.drain()
    assert len(env.fake.bookings) == 1
    uid = next(iter(env.fake.bookings))
    block = await env.store.inbound_block(CHANNEL, "A6101")
    assert block is not None and block.current_uid == uid
    assert await env.store.inbound_origins([uid]) == {uid: CHANNEL}


async def test_burst_of_cancels_drains_in_order_under_the_budget(env: Env) -> None:
    n = 60
    env.fake.rate_per_window, env.fake.window_seconds = 600, 60.0
    env.worker.api.budget = RateBudget(600)  # 10/s: the 120/min production budget, x5 for CI
    c = await Raw.open(env.port)
    for i in range(n):
        await c.send(frame(siu("S12", f"C{i:04d}", f"BURST{i}", slot(9 + i // 8, 8 + i % 8)).encode()))
        assert (await c.reply()).code == "AA"
    for i in range(n):
        await c.send(frame(siu("S15", f"X{i:04d}", f"BURST{i}", slot(9 + i // 8, 8 + i % 8)).encode()))
        assert (await c.reply()).code == "AA"
    await c.close()
    await env.worker.drain(timeout=90)
    assert all(b.status == "cancelled" for b in env.fake.bookings.values())
    assert len(env.fake.bookings) == n
    assert not [r for r in env.fake.requests if r.status == 429]
    # per appointment: created, then cancelled; the cancels follow the S15 order per lane
    position = {}
    for i, r in enumerate(env.fake.calls("POST", "/v2/bookings")):
        if r.path == "/v2/bookings":
            position[("create", r.result_uid)] = i
        else:
            position[("cancel", r.path.split("/")[3])] = i
    for uid in env.fake.bookings:
        assert position[("create", uid)] < position[("cancel", uid)]
    jobs = await env.store.inbound_jobs("done", 1000)
    assert len(jobs) == 2 * n


# ---------------------------------------------------------------------------- no echo
async def test_webhooks_for_our_blocks_are_recognised(env: Env) -> None:
    """Cal.com's webhooks for the bookings we made go through the real intake; every one of
    them (created, rescheduled, cancelled) maps back to the EHR that asked for it."""
    metrics = Metrics()
    app = WebhookApp(env.store, metrics, HttpSettings({"default": ["test-secret-do-not-use"]}),
                     Readiness())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           access_log=False, log_config=None, loop="none"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, interval=0.01)
    env.fake.webhook_url = f"http://127.0.0.1:{port}/webhooks/calcom"
    try:
        start = slot(10, 10)
        for trig, cid, when in (("S12", "N1", start), ("S13", "N2", start + timedelta(hours=1)),
                                ("S15", "N3", start + timedelta(hours=1))):
            assert (await send_hl7(env.port, siu(trig, cid, "A7001", when))).code == "AA"
            await env.worker.drain()
        await env.fake.flush_webhooks()
        events = await env.store.pending_events(100)
        assert [e.trigger for e in events] == ["BOOKING_CREATED", "BOOKING_RESCHEDULED",
                                               "BOOKING_CANCELLED"]
        origins = await env.store.inbound_origins([u for e in events for u in echo_uids(e.body)])
        assert [echo_origin(e.body, origins) for e in events] == [CHANNEL] * 3
        # the created webhook is recognised even before the worker stored the uid
        assert echo_origin(events[0].body, {}) == CHANNEL
        assert env.config.echo_destinations(CHANNEL) == {"ehr-main"}
    finally:
        server.should_exit = True
        await task


async def test_reschedule_on_a_confirmation_type_comes_back_pending_and_is_chained(env: Env) -> None:
    from engine.config.inbound import InboundChannel, build_config

    base = env.config.channels[CHANNEL]
    cara = InboundChannel.model_validate({
        **base.model_dump(), "providers": {
            "1112223334": {"calcom_user_id": 4212, "event_type_id": 990002}}})
    env.holder["config"] = build_config([cara])  # type: ignore[attr-defined]
    env.fake.event_types[990002]["requires_confirmation"] = True
    start = slot(11, 10)
    assert (await send_hl7(env.port, siu("S12", "P1", "A8001", start, provider="1112223334"))).code == "AA"
    assert (await send_hl7(env.port, siu("S13", "P2", "A8001", start + timedelta(hours=3),
                                         provider="1112223334"))).code == "AA"
    await env.worker.drain()
    block = await env.store.inbound_block(CHANNEL, "A8001")
    assert block is not None and block.status == "pending"  # no owner e-mail: host must confirm
    new = env.fake.bookings[block.current_uid]
    assert new.rescheduled_from is not None and new.status == "pending"
    origins = await env.store.inbound_origins([new.uid, new.rescheduled_from])
    assert set(origins) == {new.uid, new.rescheduled_from}
    assert (await send_hl7(env.port, siu("S15", "P3", "A8001", start, provider="1112223334"))).code == "AA"
    await env.worker.drain()
    assert env.fake.bookings[new.uid].status == "cancelled"


# ---------------------------------------------------------------------------- parsing
def test_siu_reading_v23_timing_and_local_times() -> None:
    from engine.inbound.siu import read_content, read_msh

    text = ("MSH|^~\\&|MAIN_EHR|ACME_CLINIC|CALCOM_HL7|ACME_CLINIC|20250314093015||SIU^S12|"
            "X1|P|2.3\r"
            "SCH|PL1^EHR|||||R|FU30|Normal|45|min|^^M45^20250321140000^20250321144500|||||"
            "1234567893^Careful^Cara|||||FRONTDESK|||||Booked\r"
            "AIP|1|A|1234567893^Careful^Cara|ATT||20250321140000\r")
    msh, segs = read_msh(text)
    assert (msh.application, msh.facility, msh.trigger, msh.control_id, msh.version) == (
        "MAIN_EHR", "ACME_CLINIC", "S12", "X1", "2.3")
    c = read_content(segs, msh, NY, need_time=True)
    assert c.appointment_id == "PL1"  # SCH-2 empty: SCH-1
    assert c.provider_id == "1234567893"
    assert c.start == datetime(2025, 3, 21, 18, 0, tzinfo=UTC)  # New York, after the DST switch
    assert c.end == datetime(2025, 3, 21, 18, 45, tzinfo=UTC)
    assert c.duration_minutes == 45


async def test_ack_shape_mirrors_the_message(env: Env) -> None:
    ack = await send_hl7(env.port, siu("S12", "SHAPE1", "A9001", slot(12, 10)))
    assert ack.code == "AA" and ack.message_type == "ACK^S12^ACK" and ack.version == "2.5.1"
    raw = await Raw.open(env.port)
    await raw.send(frame(siu("S12", "SHAPE1", "A9001", slot(12, 10)).encode()))
    data = await asyncio.wait_for(raw.reader.readuntil(b"\x1c\r"), 5)
    await raw.close()
    msh = data.strip(b"\x0b\x1c\r").split(b"\r")[0].split(b"|")
    assert msh[2:6] == [b"CALCOM_HL7", b"ACME_CLINIC", b"MAIN_EHR", b"ACME_CLINIC"]
    assert len(msh[9]) <= 20  # our own MSH-10 fits v2.3.1-2.5


async def test_blocks_changed_in_calcom_itself_are_followed(env: Env) -> None:
    start = slot(13, 10)
    assert (await send_hl7(env.port, siu("S12", "H1", "A9101", start))).code == "AA"
    assert (await send_hl7(env.port, siu("S12", "H2", "A9102", start + timedelta(hours=2)))).code == "AA"
    await env.worker.drain()
    moved_block = await env.store.inbound_block(CHANNEL, "A9101")
    gone_block = await env.store.inbound_block(CHANNEL, "A9102")
    assert moved_block and gone_block
    # the host moves one block and deletes the other in Cal.com's own UI
    there = env.fake.reschedule(env.fake.bookings[moved_block.current_uid],
                                {"start": (start + timedelta(hours=4)).isoformat()}, webhooks=False)
    env.fake.cancel(env.fake.bookings[gone_block.current_uid], "host", webhooks=False)
    # then the EHR moves both
    assert (await send_hl7(env.port, siu("S13", "H3", "A9101", start + timedelta(hours=5)))).code == "AA"
    assert (await send_hl7(env.port, siu("S13", "H4", "A9102", start + timedelta(hours=6)))).code == "AA"
    await env.worker.drain()
    jobs = {j["control_id"]: j for j in await env.store.inbound_jobs(None, 10)}
    assert jobs["H3"]["status"] == "done" and jobs["H3"]["result"]["did"] == "moved"
    assert jobs["H4"]["status"] == "done" and jobs["H4"]["result"]["did"] == "created"
    now_a = await env.store.inbound_block(CHANNEL, "A9101")
    assert now_a and env.fake.bookings[now_a.current_uid].rescheduled_from == there.uid
    assert env.fake.bookings[now_a.current_uid].start == (start + timedelta(hours=5)).astimezone(UTC)
    assert set(await env.store.inbound_origins([there.uid, now_a.current_uid])) == {
        there.uid, now_a.current_uid}
    # and a cancel of a block already deleted in Cal.com is simply done
    env.fake.cancel(env.fake.bookings[now_a.current_uid], "host", webhooks=False)
    assert (await send_hl7(env.port, siu("S15", "H5", "A9101", start))).code == "AA"
    await env.worker.drain()
    last = (await env.store.inbound_jobs(None, 10))[-1]
    assert last["status"] == "done" and last["result"]["did"] == "nothing"
