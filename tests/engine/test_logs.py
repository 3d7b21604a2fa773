"""Every log line, at DEBUG, of the demo and of a run with every failure: JSON with stable
keys, a correlation id that follows a booking from the webhook to the ACK, and no PHI."""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

from engine import logs
from engine.cli.channels import register
from engine.demo import _demo
from engine.sim.bookings import StoryTeller, compact
from engine.sim.ehr import SimPolicy, simulator_of
from tests.engine.test_metrics import quiet
from tests.engine_harness import eventually, fast_channels, running_engine

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LEVELS = {"debug", "info", "warning", "error", "critical"}
MESSAGE_MARKERS = ("MSH|", "PID|", "SCH|", "MSA|", "AIL|", "\rPID", "\x0b", "\x1c")


@contextmanager
def captured(level: str = "debug") -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    quiet_levels = {name: logging.getLogger(name).level for name in logs._QUIET}
    stream = io.StringIO()
    logs.configure(level, stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, lvl in quiet_levels.items():
            logging.getLogger(name).setLevel(lvl)


def phi_of(hooks: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """What the synthetic patients gave Cal.com: (substrings, short words) that must never
    be logged. Names whole and in pieces, emails, phones, dates of birth (also as HL7 dates),
    and the booking uids (not PHI, but they lead to a person)."""
    text: set[str] = set()
    words: set[str] = set()

    def name(value: Any) -> None:
        if not isinstance(value, str):
            return
        text.add(value)
        for piece in re.split(r"[\W_]+", value):
            if len(piece) >= 4:
                text.add(piece)
            elif len(piece) >= 2:  # a short piece counts as a whole word only
                words.add(piece)

    for hook in hooks:
        p = hook["payload"]
        for a in p.get("attendees", []):
            if isinstance(a.get("email"), str):
                text.add(a["email"])
            for key in ("name", "firstName", "lastName"):
                name(a.get(key))
            if a.get("phoneNumber"):
                text.update({a["phoneNumber"], a["phoneNumber"].lstrip("+")})
        name(p.get("organizer", {}).get("name"))  # not PHI, and not logged either
        for key in ("uid", "bookingUid", "rescheduleUid"):
            if p.get(key):
                text.add(p[key])
        responses = p.get("responses") if isinstance(p.get("responses"), dict) else {}
        dob = responses.get("dateOfBirth", {}).get("value")
        if dob:
            text.update({dob, dob.replace("-", "")})
        if p.get("title"):
            text.add(p["title"])
    text.update({"@example.com", "@clinic.example"})
    return text, words


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def check_lines(raw: str, hooks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lines = raw.splitlines()
    assert lines, "nothing was logged"
    text, words = phi_of(hooks)
    word_re = re.compile("|".join(rf"(?<!\w){re.escape(w)}(?!\w)" for w in sorted(words)))
    parsed = []
    keys_of: dict[tuple[str, str], set[frozenset[str]]] = defaultdict(set)
    for line in lines:
        doc = json.loads(line)  # every line is one JSON object
        assert isinstance(doc, dict), line
        assert list(doc)[:4] == ["ts", "level", "logger", "event"], line
        assert TS.match(doc["ts"]) and doc["level"] in LEVELS, line
        assert isinstance(doc["event"], str) and doc["event"], line
        assert not any("\x1b" in v for v in strings(doc)), f"terminal colour codes: {line}"
        keys_of[doc["logger"], doc["event"]].add(frozenset(doc))
        for s in [line, *strings(doc)]:
            for marker in MESSAGE_MARKERS:
                assert marker not in s, f"a message body was logged: {line}"
            for t in text:
                assert t not in s, f"PHI {t!r} logged: {line}"
            assert not word_re.search(s), f"PHI {word_re.search(s)} logged: {line}"
        parsed.append(doc)
    # stable keys: one kind of line always carries the same fields
    unstable = {k: v for k, v in keys_of.items() if len(v) > 1 and k[0].startswith("calhl7")}
    assert not unstable, unstable
    return parsed


def demo_hooks() -> list[dict[str, Any]]:
    teller = StoryTeller(seed=2026)  # what engine.demo posts
    return [h for _ in range(24) for h in teller.story().webhooks]


async def test_demo_logs_at_debug_are_json_and_phi_free(tmp_path: Path) -> None:
    with captured("debug") as stream:
        assert await _demo(tmp_path / "demo", quiet=True) == 0
    lines = check_lines(stream.getvalue(), demo_hooks())
    events = {(d["logger"], d["event"]) for d in lines}
    for expected in [("calhl7.http", "webhook accepted"), ("calhl7.http", "webhook duplicate"),
                     ("calhl7.http", "webhook refused: bad signature"),
                     ("calhl7.processing", "event processed"),
                     ("calhl7.processing", "message queued"),
                     ("calhl7.delivery", "message delivered")]:
        assert expected in events, expected
    # the body the demo's last line offers to preview: written, and it renders an S12
    booking = tmp_path / "demo" / "first_booking.json"
    parser = argparse.ArgumentParser(prog="calhl7")
    register(parser.add_subparsers(required=True))
    channel = tmp_path / "demo" / "channels" / "family-medicine.yaml"  # the demo's own copy
    args = parser.parse_args(["render", "--channel", str(channel), str(booking)])
    with redirect_stdout(io.StringIO()) as out:
        assert args.func(args) == 0
    assert "SIU^S12^SIU_S12" in out.getvalue()


async def test_failures_are_logged_without_phi_and_a_booking_can_be_followed(
        tmp_path: Path) -> None:
    teller = StoryTeller(seed=7)
    stories = [teller.story() for _ in range(12)]  # every synthetic patient, hard names too
    hooks = [h for s in stories for h in s.webhooks]
    b, created = teller.created()
    while b.event_type[1] != 731042:  # in person, family medicine: both EHRs get it
        b, created = teller.created()
    hooks.append(created)
    # signed but unusable, full of PHI: quarantined at intake, and at normalization
    no_start = json.loads(compact(created))
    no_start["payload"]["uid"] += "x"
    del no_start["payload"]["startTime"]
    bad_shape = json.loads(compact(created))
    bad_shape["payload"]["uid"] += "y"
    bad_shape["payload"]["attendees"] = [{"name": {"first": "Ada"}, "email": ["Testpatient"]}]
    bad_shape["payload"]["responses"] = "Ada Testpatient 1951-02-02"
    hooks += [no_start, bad_shape]

    with captured("debug") as stream:
        async with running_engine(
                tmp_path, channels_dir=fast_channels(tmp_path),
                main_policy=SimPolicy(ae_every=4),
                legacy_policy=SimPolicy(encoding="ascii", silent=True),
                max_body_bytes=32 * 1024) as eng:
            replies = [await eng.post(h) for h in hooks]
            follow = replies[len(hooks) - 3].json()["correlation_id"]  # `created`
            await eng.post(hooks[0])  # a redelivery
            await eng.post(hooks[0], secret="forged")
            await eng.post(compact({**created, "pad": "x" * 40_000}))  # too large
            legacy = simulator_of(eng.sims["legacy_server"])
            await eventually(lambda: legacy.received >= 2)  # it says nothing: a timeout, a resend
            simulator_of(eng.sims["legacy_server"]).policy = SimPolicy(encoding="ascii")
            await quiet(eng)
    lines = check_lines(stream.getvalue(), hooks)

    events = {(d["logger"], d["event"]): d["level"] for d in lines}
    assert events["calhl7.http", "webhook quarantined"] == "warning"
    assert events["calhl7.http", "webhook refused: body too large"] == "warning"
    assert events["calhl7.delivery", "delivery failed; will retry"] == "info"
    assert events["calhl7.delivery", "dead letter"] == "warning"
    assert events["calhl7.delivery", "message delivered"] == "info"
    assert events["calhl7.http", "webhook accepted"] == "debug"
    retries = [d for d in lines if d["event"] == "delivery failed; will retry"]
    assert {d["outcome"] for d in retries} >= {"timeout"}

    # one booking, followed by its correlation id from the webhook to each EHR's ACK
    trail = [d for d in lines if d.get("correlation_id") == follow]
    steps = [(d["logger"], d["event"], d.get("destination")) for d in trail]
    assert steps[0] == ("calhl7.http", "webhook accepted", None)
    assert ("calhl7.processing", "event processed", None) in steps
    for destination in ("ehr-main", "ehr-legacy"):
        assert ("calhl7.processing", "message queued", destination) in steps
        assert any(s[2] == destination and s[1] in ("message delivered", "dead letter")
                   for s in steps), steps
    delivered = [d for d in trail if d["event"] == "message delivered"]
    assert all(d["control_id"] and d["ack_code"] and d["end_to_end_seconds"] is not None
               for d in delivered)


def test_fields_never_overwrite_the_stable_keys() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonLines())
    log = logging.getLogger("calhl7.test")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("something", extra={"event": "spoof", "level": "x", "ids": [1, 2],
                                        "obj": object()})
        try:
            raise ValueError("Ada Testpatient 1951-02-02")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    first, second = (json.loads(x) for x in stream.getvalue().splitlines())
    assert first["event"] == "something" and first["level"] == "warning"
    assert first["event_"] == "spoof" and first["level_"] == "x" and first["ids"] == [1, 2]
    assert isinstance(first["obj"], str)
    assert second["error_type"] == "ValueError" and second["where"]
    assert "Testpatient" not in stream.getvalue()  # an exception's message is never logged


async def test_info_level_still_shows_each_ack(tmp_path: Path) -> None:
    with captured("info") as stream:
        async with running_engine(tmp_path) as eng:
            r = await eng.post(StoryTeller(seed=1).created()[1])
            cid = r.json()["correlation_id"]
            await eng.settle()
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert not [d for d in lines if d["level"] == "debug"]
    assert [d for d in lines if d["event"] == "message delivered" and d["correlation_id"] == cid]


async def test_a_lost_task_exception_is_logged_without_its_message() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonLines())
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addHandler(handler)

    async def fails() -> None:
        raise ValueError("Ada Testpatient 1951-02-02")

    try:
        task = asyncio.get_running_loop().create_task(fails())
        await asyncio.sleep(0)  # it runs and fails; nobody ever awaits it
        assert task.done()
        del task
        gc.collect()  # asyncio reports the lost exception when the task goes away
    finally:
        asyncio_log.removeHandler(handler)
    (line,) = (json.loads(x) for x in stream.getvalue().splitlines())
    assert line["logger"] == "asyncio" and line["error_type"] == "ValueError"
    assert line["event"] == "Task exception was never retrieved"
    assert "Testpatient" not in stream.getvalue()
