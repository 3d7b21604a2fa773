"""engine.hl7.ack: parse the ACK fixtures, survive garbage, build -> parse round trips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from engine.hl7.ack import AckInfo, build_ack, parse_ack, read_msh10
from tests.conftest import FIXTURES

EXAMPLES = FIXTURES / "hl7"
NOW = datetime(2026, 10, 5, 9, 21, 11, tzinfo=timezone(timedelta(hours=-4)))


def example(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def segs(ack: str) -> dict[str, list[str]]:
    assert ack.endswith("\r") and "\n" not in ack
    return {s[:3]: s.split("|") for s in ack.split("\r") if s}


# ------------------------------------------------------------------ parse


def test_parse_aa_fixture() -> None:
    info = parse_ack(example("ack_aa_v251.hl7"))
    assert info == AckInfo(
        code="AA", control_id="S12-20261005-000017", message_type="ACK^S12^ACK",
        ack_control_id="MEHR-ACK-00081123", version="2.5.1",
    )
    assert info.ok


def test_parse_ae_fixture() -> None:
    info = parse_ack(example("ack_ae_v251.hl7"))
    assert info.code == "AE" and info.control_id == "S12-20261005-000017"
    assert info.text == "Unknown location resource"
    assert info.error_codes == ("204",)
    assert info.error_text == (
        "Appointment not filed: location not found; "
        "Location FAMMED/EXAM1 is not set up at facility MAIN_ST"
    )
    assert info.parse_error is None


def test_parse_ar_fixture() -> None:
    info = parse_ack(example("ack_ar_v251.hl7"))
    assert (info.code, info.control_id, info.error_codes) == ("AR", "S14-20261022-000031", ("201",))
    assert info.message_type == "ACK^S14^ACK"
    assert info.error_text == "This interface takes S12, S13 and S15 only"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"", "empty reply"),
        (b"\x00\xff\xfe garbage \x1c", "no MSH segment"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "no MSH segment"),
        (b"MSH", "MSH-1/MSH-2 separators unusable"),
        (b"MSH|", "MSH-1/MSH-2 separators unusable"),
        (b"MSHA^~\\&|x", "MSH-1/MSH-2 separators unusable"),
        (b"MSH|^~\\&|A|B|C|D|x||ACK|1|P|2.5.1\r", "no MSA segment"),
        (b"MSH|^~\\&|A|B|C|D|x||ACK|1|P|2.5.1\rMSA\r", "MSA-1 empty"),
        (b"MSH|^~\\&|A|B|C|D|x||ACK|1|P|2.5.1\rMSA|OK|S12-1\r", "MSA-1 'OK' is not an acknowledgment code"),
        (b"MSH|^~\\&|\rMSA|<script>|1", "MSA-1 'SCR' is not an acknowledgment code"),
        ("MSH|^~\\&|é\rMSA|\udcff".encode("utf-8", "surrogatepass"), "MSA-1 empty"),
    ],
)
def test_garbage_never_raises(reply: bytes, error: str) -> None:
    info = parse_ack(reply)
    assert info.code is None and not info.ok
    assert info.parse_error == error


def test_parse_tolerates_framing_lf_and_lowercase() -> None:
    raw = b"\x0bMSH|^~\\&|E|F|G|H|x||ACK|9|P|2.5.1\r\nMSA|aa|C-1\r\n\x1c\r"
    assert (parse_ack(raw).code, parse_ack(raw).control_id) == ("AA", "C-1")


def test_parse_v23_err1_and_other_delimiters() -> None:
    raw = "MSH#$~\\&#E#F#G#H#x##ACK$S12#9#P#2.3\rMSA#AR#C-1#Locked\rERR#SCH$1$1$206&Application record locked&HL70357\r"
    info = parse_ack(raw)
    assert (info.code, info.control_id, info.error_codes) == ("AR", "C-1", ("206",))
    assert info.error_text == "Application record locked"
    assert info.message_type == "ACK$S12" and info.version == "2.3"


def test_parse_caps_huge_texts_and_many_errs() -> None:
    raw = "MSH|^~\\&|E|F|G|H|x||ACK|9|P|2.5.1\rMSA|AE|C-1|" + "t" * 100_000 + "\r" + \
        "".join(f"ERR|||{200 + i}^x^HL70357|E\r" for i in range(50))
    info = parse_ack(raw)
    assert info.text is not None and len(info.text) <= 500
    assert len(info.error_codes) == 10 and info.error_codes[0] == "200"


def test_parse_enhanced_mode_codes() -> None:
    for code in ("CA", "CE", "CR"):
        assert parse_ack(f"MSH|^~\\&|E|F|G|H|x||ACK|9|P|2.5.1\rMSA|{code}|C-1\r").code == code


# ------------------------------------------------------------------ read_msh10


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b"MSH|^~\\&|A|B|C|D|20250101||SIU^S12|S12-1|P|2.5.1\rSCH|x\r", "S12-1"),
        (b"\x0bMSH|^~\\&|A|B|C|D|20250101||SIU^S12|S12-1|P|2.5.1", "S12-1"),
        (b"MSH#^~\\&#A#B#C#D#20250101##SIU^S12#X-9#P#2.3\r", "X-9"),
        (b"MSH|^~\\&|A|B|C|D|20250101||SIU^S12||P|2.5.1\r", None),
        (b"MSH|^~\\&|A|B\r", None),
        (b"PID|1\r", None),
        (b"", None),
    ],
)
def test_read_msh10(frame: bytes, expected: str | None) -> None:
    assert read_msh10(frame) == expected


def test_read_msh10_on_the_s12_fixture() -> None:
    assert read_msh10(example("siu_s12_v251.hl7")) == "S12-20261005-000017"


# ------------------------------------------------------------------ build


def test_build_aa_for_the_s12_fixture() -> None:
    ack = build_ack(example("siu_s12_v251.hl7"), "AA", now=NOW, control_id="ACK-1")
    s = segs(ack)
    assert s["MSH"][:12] == [
        "MSH", "^~\\&", "MAIN_EHR", "ACME_CLINIC", "CALCOM_HL7", "ACME_CLINIC",
        "20261005092111-0400", "", "ACK^S12^ACK", "ACK-1", "P", "2.5.1",
    ]
    assert s["MSA"] == ["MSA", "AA", "S12-20261005-000017"]
    assert "ERR" not in s
    info = parse_ack(ack)
    assert (info.code, info.control_id, info.error_codes, info.parse_error) == (
        "AA", "S12-20261005-000017", (), None,
    )


def test_build_v23_keeps_version_and_uses_err1() -> None:
    ack = build_ack(example("siu_s12_v23.hl7"), "AR", error_code="201", now=NOW)
    s = segs(ack)
    assert s["MSH"][8] == "ACK^S12" and s["MSH"][11] == "2.3"
    assert s["ERR"][1].endswith("^201&Unsupported event code&HL70357")
    assert parse_ack(ack).error_codes == ("201",)


@pytest.mark.parametrize("code", ["AE", "AR", "CE", "CR"])
def test_build_error_round_trip_with_err_segment(code: str) -> None:
    msg = example("siu_s12_v251.hl7")
    ack = build_ack(msg, code, error_code="204", error_text="Provider not mapped",
                    error_location=("AIP", 1, 3), now=NOW)
    s = segs(ack)
    assert s["ERR"][1:5] == ["", "AIP^1^3", "204^Unknown key identifier^HL70357", "E"]
    assert s["ERR"][8] == "Provider not mapped"
    info = parse_ack(ack)
    assert (info.code, info.control_id, info.error_codes) == (code, "S12-20261005-000017", ("204",))
    assert info.error_text == "Provider not mapped"


def test_build_escapes_delimiters_in_every_value() -> None:
    nasty = "O'Brien | Smith ^ & ~ \\ end\rPID|injected"
    msg = ("MSH|^~\\&|CAL\\F\\COM|FAC^X|EHR|EHRFAC|20250101||SIU^S12^SIU_S12|CTRL-1|P|2.5.1\r"
           "PID|1||1||" + "Testpatient^Ada" + "\r")
    ack = build_ack(msg, "AE", error_code="101", error_text=nasty,
                    sending_application="EHR|APP", sending_facility="A^B", now=NOW)
    lines = [line for line in ack.split("\r") if line]
    assert [line[:3] for line in lines] == ["MSH", "MSA", "ERR"]  # nothing injected
    s = segs(ack)
    assert len(s["MSH"]) == 12 and s["MSH"][2] == "EHR\\F\\APP" and s["MSH"][3] == "A\\S\\B"
    assert s["MSH"][4] == "CAL\\F\\COM" and s["MSH"][5] == "FAC^X"  # copied as written
    info = parse_ack(ack)
    assert info.error_text == "O'Brien | Smith ^ & ~ \\ end PID|injected"
    assert info.control_id == "CTRL-1"


def test_build_translates_nonstandard_delimiters() -> None:
    msg = "MSH#$~\\&#APP$X#FAC#EHR#EHRF#20250101##SIU$S14$SIU_S12#C-7#P#2.5.1\rSCH#a|b\r"
    ack = build_ack(msg, "AA", now=NOW)
    s = segs(ack)
    assert s["MSH"][4] == "APP^X" and s["MSH"][8] == "ACK^S14^ACK"
    assert parse_ack(ack).control_id == "C-7"


@pytest.mark.parametrize(
    "msg",
    [
        b"",
        b"garbage without any segment",
        b"MSH",
        b"MSH|^~",
        b"MSH|^~\\&|A|B",  # cut before MSH-10
        b"\x0bMSH|^~\\&|A|B|C|D|x||SIU^S12|ID-1\x1c\r",
        "MSH|^~\\&|Ä|B|C|D|x||SIU^S12|ID-2|P|2.4\r".encode("latin-1"),
    ],
)
def test_build_is_best_effort_on_broken_messages(msg: bytes) -> None:
    ack = build_ack(msg, "AR", error_code="207", now=NOW)
    info = parse_ack(ack)
    assert info.code == "AR" and info.parse_error is None
    assert info.control_id == read_msh10(msg)


def test_build_needs_aware_time_and_known_code() -> None:
    with pytest.raises(ValueError):
        build_ack(b"MSH|^~\\&|A", "AA", now=datetime(2025, 1, 1))
    with pytest.raises(ValueError):
        build_ack(b"MSH|^~\\&|A", "OK", now=NOW)


def test_build_default_control_id_fits_20_chars() -> None:
    a = segs(build_ack(b"MSH|^~\\&|A|B|C|D|x||SIU^S12|1|P|2.5.1", "AA", now=datetime.now(UTC)))
    b = segs(build_ack(b"MSH|^~\\&|A|B|C|D|x||SIU^S12|1|P|2.5.1", "AA", now=datetime.now(UTC)))
    assert len(a["MSH"][9]) <= 20 and a["MSH"][9] != b["MSH"][9]
    assert a["MSH"][6].endswith("+0000")


def test_unknown_charset_name_falls_back_to_utf8() -> None:
    raw = b"MSH|^~\\&|E|F|G|H|x||ACK|9|P|2.5.1\rMSA|AA|C-1\r"
    assert parse_ack(raw, encoding="UNICODE UTF-8").code == "AA"
    assert "MSA|AA|C-1" in build_ack(b"MSH|^~\\&|A|B|C|D|x||SIU^S12|C-1|P|2.5.1", "AA", now=NOW,
                                     encoding="no-such-codec")


def test_build_without_err_segment() -> None:
    ack = build_ack(b"MSH|^~\\&|A|B|C|D|x||SIU^S12|C-1|P|2.5.1", "AR", err_segment=False, now=NOW)
    assert [s[:3] for s in ack.split("\r") if s] == ["MSH", "MSA"]
    assert segs(ack)["MSA"] == ["MSA", "AR", "C-1"]


# ------------------------------------------------------------------ where the error condition is

_MSH23 = "MSH|^~\\&|EHR|CLINIC|CALCOM_HL7|ACME|20250314093016||ACK^S12|A1|P|2.3\r"
_MSH251 = "MSH|^~\\&|EHR|CLINIC|CALCOM_HL7|ACME|20250314093016||ACK^S12^ACK|A1|P|2.5.1\r"


@pytest.mark.parametrize(
    ("reply", "code", "errors", "warnings_only"),
    [
        # v2.3: MSA-6 only
        (_MSH23 + "MSA|AR|C1|Unsupported event|||201^Unsupported event code^HL70357\r",
         "AR", ("201",), False),
        (_MSH23 + "MSA|AE|C1||||205\r", "AE", ("205",), False),
        # v2.3/2.4: ERR-1.4 beats MSA-6
        (_MSH23 + "MSA|AE|C1||||207\rERR|PID^1^5^204&Unknown key&HL70357\r",
         "AE", ("204",), False),
        # v2.5: ERR-3 beats ERR-1.4 and MSA-6
        (_MSH251 + "MSA|AE|C1||||207\rERR|PID^1^5^204&x&HL70357||205^Duplicate^HL70357|E\r",
         "AE", ("205",), False),
        # v2.5: ERR-4 W / I are remarks, not errors
        (_MSH251 + "MSA|AE|C1\rERR|||102^Data type error^HL70357|W\r", "AE", (), True),
        (_MSH251 + "MSA|AE|C1\rERR|||0^Message accepted^HL70357|I\rERR|||103|W\r", "AE", (), True),
        (_MSH251 + "MSA|AE|C1\rERR|||103|W\rERR|||204|E\r", "AE", ("204",), False),
        (_MSH251 + "MSA|AE|C1\rERR|||207\r", "AE", ("207",), False),  # no ERR-4: an error
        (_MSH251 + "MSA|AA|C1\r", "AA", (), False),
        # a byte order mark before MSH, LF or CRLF line ends
        ("\ufeff" + _MSH251 + "MSA|AA|C1\r", "AA", (), False),
        ((_MSH251 + "MSA|AR|C1\rERR|||205|E\r").replace("\r", "\n"), "AR", ("205",), False),
        ("\ufeff" + (_MSH23 + "MSA|AR|C1||||201\r").replace("\r", "\r\n"), "AR", ("201",), False),
    ],
)
def test_error_condition_and_severity(
    reply: str, code: str, errors: tuple[str, ...], warnings_only: bool
) -> None:
    for raw in (reply, reply.encode("utf-8")):
        info = parse_ack(raw)
        assert (info.code, info.control_id, info.parse_error) == (code, "C1", None)
        assert (info.error_codes, info.warnings_only) == (errors, warnings_only)


def test_byte_order_mark_with_a_single_byte_charset() -> None:
    info = parse_ack(b"\xef\xbb\xbf" + (_MSH23 + "MSA|AA|C1\r").encode("ascii"), "latin-1")
    assert (info.code, info.control_id, info.parse_error) == ("AA", "C1", None)


def test_msa6_text_is_kept_for_the_analyst() -> None:
    info = parse_ack(_MSH23 + "MSA|AR|C1||||201^Unsupported event code^HL70357\r")
    assert info.error_text == "Unsupported event code"


def test_build_ack_error_in_msa6_and_warning_severity() -> None:
    s12 = _MSH23.replace("ACK^S12", "SIU^S12").replace("|A1|", "|C1|")
    legacy = parse_ack(build_ack(s12, "AR", error_code="201", error_in_msa6=True, now=NOW))
    assert (legacy.code, legacy.error_codes) == ("AR", ("201",))
    assert "ERR" not in build_ack(s12, "AR", error_code="201", error_in_msa6=True, now=NOW)
    warned = parse_ack(build_ack(s12.replace("|2.3", "|2.5.1"), "AE", error_code="102",
                                 severity="W", now=NOW))
    assert (warned.code, warned.error_codes, warned.warnings_only) == ("AE", (), True)
