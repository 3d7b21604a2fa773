"""Rendering: every event kind x both versions x example channels, adversarial values, escaping,
charset rules, control ids, patient ids. Every message must pass validate_strict and parse back
with python-hl7 to the values we put in."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import date, datetime, timezone
from pathlib import Path

import hl7
import pytest

from engine.appointments.model import EventKind, Patient
from engine.config.outbound import Config, load_config
from engine.channels.routing import OutboundMessage
from engine.hl7.controlid import new_control_id
from engine.hl7.escape import apply_charset, escape, field_path
from engine.hl7.render import SiuTemplate, TemplateError, format_ts, hl7_value, patient_identifier
from engine.hl7.validate import validate_strict
from tests.conftest import REPO
from tests.unit.test_routing import A, B, make_event, physio, run, telehealth, with_channel


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "channels")


def parse(m: OutboundMessage) -> hl7.Message:
    return hl7.parse(m.er7)


def value(msg: hl7.Message, segment: str, fld: int, comp: int | None = None) -> str:
    """Unescaped value of SEG-fld(.comp), first repetition."""
    f = msg.segment(segment)(fld)
    if comp is not None:
        f = f(1)(comp) if isinstance(f, hl7.Repetition) or isinstance(f(1), hl7.Repetition) else f(comp)
    return msg.unescape(str(f))


def pid_name(msg: hl7.Message) -> tuple[str, str]:
    name = msg.segment("PID")(5)(1)
    return msg.unescape(str(name(1))), msg.unescape(str(name(2)))


# --- every kind x version x example channel ------------------------------------------------

KINDS = [EventKind.NEW, EventKind.RESCHEDULE, EventKind.MODIFICATION, EventKind.CANCEL,
         EventKind.NO_SHOW, EventKind.NO_SHOW_WITHDRAWN]
FACTORIES = {"family-medicine": make_event, "main-street-front-desk": make_event, "physiotherapy": physio}


@pytest.mark.parametrize("channel", sorted(FACTORIES))
@pytest.mark.parametrize("kind", KINDS, ids=[k.value for k in KINDS])
def test_every_kind_on_every_example_channel_is_strictly_valid(config: Config, channel: str, kind: EventKind) -> None:
    messages = [m for m in run(FACTORIES[channel](kind), config, has=True)[0] if m.channel == channel]
    if kind in (EventKind.NO_SHOW, EventKind.NO_SHOW_WITHDRAWN) and not config.channel(channel).filters.no_shows:
        assert messages == []
        return
    assert messages, "the example channel should send something"
    version = config.channel(channel).hl7.version
    for m in messages:
        assert m.error is None
        assert validate_strict(m.er7) == [], m.er7.replace("\r", "\n")
        msg = parse(m)
        assert str(msg.segment("MSH")(12)) == version
        assert str(msg.segment("MSH")(9)) == (f"SIU^{m.trigger}^SIU_S12" if version == "2.5.1" else f"SIU^{m.trigger}")
        assert value(msg, "SCH", 1, 1) == A  # stable id across every kind
        assert m.payload == m.er7.encode(config.destinations[m.destination].codec)
        ids = [s[:3] for s in m.er7.split("\r") if s]
        assert ("TQ1" in ids) == (version == "2.5.1")
        status = value(msg, "SCH", 25, 1)
        assert status == {"S12": "Booked", "S13": "Booked", "S14": "Booked", "S15": "Cancelled",
                          "S26": "Noshow"}[m.trigger]


def test_v251_new_booking_fields(config: Config) -> None:
    m = [m for m in run(make_event(), config)[0] if m.channel == "family-medicine"][0]
    msg = parse(m)
    assert m.er7.endswith("\r") and "\n" not in m.er7
    assert value(msg, "MSH", 3) == "CALCOM_HL7" and value(msg, "MSH", 5) == "MAIN_EHR"
    assert value(msg, "MSH", 7) == "20260220104217-0500"  # MSH-7 in the clinic zone, with offset
    assert str(msg.segment("MSH")(15)) == "" and str(msg.segment("MSH")(16)) == ""
    assert value(msg, "MSH", 18) == "UNICODE UTF-8"
    assert str(msg.segment("SCH")(2)) == f"{A}^CALCOM"
    assert str(msg.segment("SCH")(6)) == "BOOKING_CREATED^Booked online via Cal.com^L"
    assert str(msg.segment("SCH")(7)) == "ROUTINE^Routine appointment^HL70276"
    assert value(msg, "SCH", 8, 1) == "Normal"
    assert str(msg.segment("SCH")(9)) == "45"
    assert str(msg.segment("SCH")(11)) == "^^M45^20260310140000-0400^20260310144500-0400"  # DST: -0400
    assert str(msg.segment("SCH")(16)) == "1234567893^Testdoctor^Grace^^^Dr^^^NPI^L^^^NPI"
    assert str(msg.segment("SCH")(20)) == "CALCOM^Online Booking^Cal.com"
    assert str(msg.segment("TQ1")(7)) == "20260310140000-0400"
    assert str(msg.segment("NTE")(3)) == "new"  # notes: [patientType]
    assert str(msg.segment("PID")(3)) == f"{patient_identifier(make_event().patient)}^^^CALHL7^PI"
    assert str(msg.segment("PID")(7)) == "19840712"
    assert str(msg.segment("PID")(8)) == "F"  # "female" through sex_codes
    assert str(msg.segment("PID")(13)) == "^PRN^PH^^1^555^5550123~^NET^Internet^ada.testpatient@example.com"
    assert str(msg.segment("AIS")(3)) == "NPV45^New patient visit 45 min^L"
    assert str(msg.segment("AIG")(3)) == "EXAMRM1^Exam room 1^L"
    assert str(msg.segment("AIL")(3)) == "FAMMED^EXAM1^^MAIN_ST"
    assert str(msg.segment("PV1")(3)) == "FAMMED^EXAM1^^MAIN_ST"
    assert str(msg.segment("AIP")(3)) == str(msg.segment("PV1")(7)) == str(msg.segment("SCH")(16))
    assert str(msg.segment("RGS")(2)) == "A"


def test_v23_legacy_fields(config: Config) -> None:
    m = [m for m in run(make_event(patient=replace(make_event().patient, mrn="TP0001234")), config)[0]
         if m.channel == "main-street-front-desk"][0]
    msg = parse(m)
    msh = m.er7.split("\r")[0]
    assert msh.endswith("|P|2.3")  # two-part MSH-9, no MSH-18
    assert str(msg.segment("MSH")(9)) == "SIU^S12"
    assert str(msg.segment("SCH")(2)) == ""  # fill_sch2: false
    assert str(msg.segment("SCH")(11)) == "^^M45^20260310140000^20260310144500"  # no offset
    assert value(msg, "MSH", 7) == "20260220104217-0500"  # MSH-7 keeps its offset
    assert str(msg.segment("PID")(3)) == (f"TP0001234^^^ACME^MR~{patient_identifier(make_event().patient)}"
                                          "^^^CALHL7^PI")


def test_sch1_kept_across_reschedule_and_s15_plus_s12(config: Config) -> None:
    first = [m for m in run(make_event(), config)[0] if m.channel == "family-medicine"][0]
    moved = [m for m in run(make_event(EventKind.RESCHEDULE), config, has=True)[0] if m.channel == "family-medicine"][0]
    assert moved.trigger == "S13"
    assert str(parse(first).segment("SCH")(1)) == str(parse(moved).segment("SCH")(1)) == f"{A}^CALCOM"
    assert str(parse(moved).segment("RGS")(2)) == "U"
    cfg = with_channel(config, "family-medicine", **{"hl7.reschedule_as": "S15+S12"})
    s15, s12 = [m for m in run(make_event(EventKind.RESCHEDULE), cfg, has=True)[0] if m.channel == "family-medicine"]
    assert (s15.trigger, s12.trigger) == ("S15", "S12")
    assert validate_strict(s15.er7) == [] and validate_strict(s12.er7) == []
    assert str(parse(s15).segment("SCH")(1)) == f"{A}^CALCOM"
    assert str(parse(s12).segment("SCH")(1)) == f"{B}^CALCOM"
    assert s15.lane_key == s12.lane_key == A  # same lane: the S15 goes first


# --- adversarial values --------------------------------------------------------------------

HOSTILE = [
    ("delimiters", "O|Brien^&~\\Smith", "Ann&Lee"),
    ("segment break", "Evil\rPID|1||X", "Line\nFeed"),
    ("framing bytes", "A\x0bB\x1cC", "Tab\tBed"),
    ("escape lookalike", "\\F\\", "\\X0D\\"),
    ("chinese", "张", "伟"),
    ("arabic", "العربي", "محمد"),
    ("accents", "Zoë", "Renée"),
]


@pytest.mark.parametrize("channel", ["family-medicine", "main-street-front-desk"])
@pytest.mark.parametrize("label,last,first", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_names_cannot_break_the_message(config: Config, channel: str, label: str, last: str,
                                                first: str) -> None:
    cfg = with_channel(config, channel, **{"hl7.unencodable": "escape"})
    patient = replace(make_event().patient, last_name=last, first_name=first, mrn="M|1^2")
    event = make_event(patient=patient, cancellation_reason=last, answers={"patientType": first})
    for kind in (EventKind.NEW, EventKind.CANCEL):
        m = [m for m in run(replace(event, kind=kind), cfg, has=kind is EventKind.CANCEL)[0] if m.channel == channel][0]
        assert m.error is None
        assert validate_strict(m.er7) == [], m.er7.replace("\r", "\n")
        segs = [s[:3] for s in m.er7.split("\r") if s]
        assert segs.count("PID") == 1 and "X" not in segs
        msg = parse(m)
        got_last, got_first = pid_name(msg)
        codec = config.destinations[m.destination].codec
        if codec == "utf-8":
            assert (got_last, got_first) == (last, first)  # delimiters round-trip exactly
        else:
            # \XC3AB\-style hex escapes carry UTF-8 bytes; python-hl7 turns each into a char
            assert got_last.encode("latin-1").decode("utf-8") == last
            assert got_first.encode("latin-1").decode("utf-8") == first
        assert msg.unescape(str(msg.segment("PID")(3)(1)(1))) == "M|1^2"
        if kind is EventKind.CANCEL:
            reason = msg.unescape(str(msg.segment("SCH")(6)(1)(2)))
            if codec == "utf-8":
                assert reason == "Cancelled: " + last


def test_zoe_on_the_ascii_channel_under_each_rule(config: Config) -> None:
    patient = replace(make_event().patient, first_name="Zoë", last_name="Testpatient")
    results = {}
    for rule in ("escape", "transliterate", "dead_letter"):
        cfg = with_channel(config, "main-street-front-desk", **{"hl7.unencodable": rule})
        m = [m for m in run(make_event(patient=patient), cfg)[0] if m.channel == "main-street-front-desk"][0]
        m.payload.decode("ascii")  # whatever the rule, the bytes are ASCII
        results[rule] = m
    assert "Testpatient^Zo\\XC3AB\\^" in results["escape"].er7 and results["escape"].error is None
    assert "Testpatient^Zoe^" in results["transliterate"].er7 and results["transliterate"].error is None
    dead = results["dead_letter"]
    assert dead.error == "character not encodable in ascii at PID-5.2"
    assert "Zo" not in dead.error
    for m in results.values():
        assert validate_strict(m.er7) == []


def test_transliteration_of_scripts_without_latin_form(config: Config) -> None:
    patient = replace(make_event().patient, first_name="伟", last_name="Straße")
    m = [m for m in run(make_event(patient=patient), config)[0] if m.channel == "main-street-front-desk"][0]
    assert pid_name(parse(m)) == ("Strasse", "?")


def test_utf8_channel_keeps_every_script(config: Config) -> None:
    patient = replace(make_event().patient, first_name="محمد", last_name="张")
    m = [m for m in run(make_event(patient=patient), config)[0] if m.channel == "family-medicine"][0]
    assert m.payload.decode("utf-8") == m.er7 and "张^محمد" in m.er7


def test_template_cannot_bypass_escaping(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text(
        "MSH|^~\\&|{{ name|safe }}|{{ name ~ '' }}|{{ name|upper }}|{% for n in [name] %}{{ n }}{% endfor %}\n\n"
        "NTE|1|{{ parts }}|{{ parts|join('-') }}\n", encoding="utf-8")
    t = SiuTemplate(tmp_path / "t.j2")
    out = t.render({"name": "a|b^c\rd", "parts": ["x^y", "z|w"]})
    assert out == ("MSH|^~\\&|a\\F\\b\\S\\c\\X0D\\d|a\\F\\b\\S\\c\\X0D\\d|A\\F\\B\\S\\C\\X0D\\D|a\\F\\b\\S\\c\\X0D\\d\r"
                   "NTE|1|x\\S\\y^z\\F\\w|x\\S\\y-z\\F\\w\r")


def test_template_errors_name_the_template(tmp_path: Path) -> None:
    (tmp_path / "bad.j2").write_text("MSH|{{ oops \n", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"bad\.j2:1"):
        SiuTemplate(tmp_path / "bad.j2")
    (tmp_path / "undef.j2").write_text("MSH|{{ not_a_key }}\n", encoding="utf-8")
    with pytest.raises(TemplateError, match="not_a_key"):
        SiuTemplate(tmp_path / "undef.j2").render({})


# --- escape, charset, time, ids ------------------------------------------------------------

@pytest.mark.parametrize("raw,escaped", [
    ("plain text 123", "plain text 123"),
    ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"), ("\\", "\\E\\"),
    ("a\r\nb", "a\\X0D\\\\X0A\\b"), ("\x0b\x1c", "\\X0B\\\\X1C\\"),
    ("\\F\\", "\\E\\F\\E\\"),
])
def test_escape(raw: str, escaped: str) -> None:
    assert escape(raw) == escaped
    assert hl7.parse("MSH|^~\\&|x\r").unescape(escaped) == raw


def test_hl7_value_components_escape_each_component() -> None:
    assert hl7_value(["1234567893", "O|Brien", None, 7]) == "1234567893^O\\F\\Brien^^7"
    assert hl7_value(None) == "" and hl7_value(45) == "45"


def test_field_path_and_dead_letter_position() -> None:
    er7 = "MSH|^~\\&|A|B\rPID|1||id^^^X^PI||Testpatient^Zoë\r"
    assert field_path(er7, er7.index("ë")) == "PID-5.2"
    assert field_path(er7, er7.index("B")) == "MSH-4.1"
    assert apply_charset(er7, "ascii", "dead_letter")[2] == "character not encodable in ascii at PID-5.2"
    assert apply_charset(er7, "latin-1", "dead_letter")[2] is None  # ë exists in Latin-1


def test_format_ts_uses_the_clinic_zone_and_dst() -> None:
    from zoneinfo import ZoneInfo
    ny = ZoneInfo("America/New_York")
    assert format_ts(datetime(2026, 3, 10, 18, 0, tzinfo=timezone.utc), ny) == "20260310140000-0400"
    assert format_ts(datetime(2026, 3, 6, 18, 0, tzinfo=timezone.utc), ny) == "20260306130000-0500"
    assert format_ts(datetime(2026, 3, 6, 18, 0, tzinfo=timezone.utc), ZoneInfo("Asia/Kolkata")) == "20260306233000+0530"
    assert format_ts(datetime(2026, 3, 6, 18, 0, tzinfo=timezone.utc), ny, False) == "20260306130000"


def test_control_ids_are_short_unique_and_sorted() -> None:
    ids = [new_control_id() for _ in range(20000)]
    assert all(len(i) == 20 and i.isalnum() and i == i.upper() for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # in issue order within a process
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    ms = 0
    for ch in ids[0][:10]:  # 50 bits: the 48-bit millisecond clock, then 2 random bits
        ms = ms * 32 + alphabet.index(ch)
    ms >>= 2
    assert abs(ms - time.time() * 1000) < 60_000


def test_patient_identifier_is_stable_and_uses_only_valid_dob() -> None:
    a = Patient(email="Ada.Testpatient@Example.com ", dob=date(1984, 7, 12))
    assert patient_identifier(a) == patient_identifier(Patient(email="ada.testpatient@example.com", dob=date(1984, 7, 12)))
    assert patient_identifier(a) != patient_identifier(replace(a, dob=date(1984, 7, 13)))
    assert patient_identifier(replace(a, dob=date(1066, 1, 1))) == patient_identifier(replace(a, dob=None))
    pid = patient_identifier(a)
    assert len(pid) == 17 and pid.startswith("P") and "ada" not in pid.lower()
    no_email = Patient(full_name="Ada Testpatient", phone="+1 555 555 0123")
    assert patient_identifier(no_email) == patient_identifier(replace(no_email, phone="+15555550123"))


def test_pending_renders_tentative_and_strictly_valid(config: Config) -> None:
    m = [m for m in run(telehealth(status="PENDING", trigger="BOOKING_REQUESTED"), config)[0]][0]
    assert validate_strict(m.er7) == []
    msg = parse(m)
    assert value(msg, "SCH", 8, 1) == "Tentative" and value(msg, "SCH", 25, 1) == "Pending"
    assert str(msg.segment("AIL")(3)) == "TELE^VIRTUAL^^ACME_CLINIC"


def test_validate_strict_catches_what_hl7apy_misses(config: Config) -> None:
    m = [m for m in run(make_event(), config)[0] if m.channel == "family-medicine"][0]
    assert validate_strict(m.er7) == []
    assert any("dropped" in p for p in validate_strict(m.er7.replace("\rPID|", "\rZXX|1\rPID|")))
    segs = m.er7.split("\r")
    swapped = "\r".join([segs[0], segs[1], segs[3], segs[2]] + segs[4:])
    assert any("order" in p for p in validate_strict(swapped))
    assert any("LF" in p for p in validate_strict(m.er7.replace("\r", "\r\n")))
    long_id = m.er7.replace(m.control_id, "X" * 21)
    assert any("MSH-10" in p for p in validate_strict(long_id))
