"""Strict validation of a rendered SIU: hl7apy STRICT plus the checks hl7apy does not make.

Not on the hot path (hl7apy is slow): `check`, previews and tests use it.
- hl7apy 1.3.5 knows only SIU_S12 for v2.3, so v2.3 S13-S26 are validated as SIU_S12 (their
  structure is the same); v2.5.1 uses the structure MSH-9.3 names.
- hl7apy silently drops unknown/Z segments and accepts segments out of order: we compare the
  segment ids in and out, and check the order against the SIU_S12 grammar ourselves.
- CR-only separators, no empty segment, MSH-10 present and at most 20 characters.
"""

from __future__ import annotations

import re
from typing import Any

# SIU_S12 grammar as a regex over three-letter segment ids (one per "id," token).
_V251 = re.compile(
    r"MSH,SCH,(TQ1,)*(NTE,)*(PID,(PD1,)?(PV1,)?(PV2,)?(OBX,)*(DG1,)*)*"
    r"(RGS,(AIS,(NTE,)*)*(AIG,(NTE,)*)*(AIL,(NTE,)*)*(AIP,(NTE,)*)*)+"
)
_V23 = re.compile(
    r"MSH,SCH,(NTE,)*(PID,(PV1,)?(PV2,)?(OBX,)*(DG1,)*)*"
    r"(RGS,(AIS,(NTE,)*)*(AIG,(NTE,)*)*(AIL,(NTE,)*)*(AIP,(NTE,)*)*)+"
)
_SIU_TRIGGERS = {
    "S12", "S13", "S14", "S15", "S16", "S17", "S18", "S19", "S20", "S21", "S22", "S23", "S24", "S26"
}


def _segments_of(element: Any, out: list[str]) -> None:
    for child in element.children:
        if child.classname == "Segment":
            out.append(child.name)
        else:
            _segments_of(child, out)


def validate_strict(er7: str) -> list[str]:
    """Problems found in one ER7 SIU message; an empty list means valid."""
    from hl7apy.consts import VALIDATION_LEVEL  # lazy: hl7apy import is slow
    from hl7apy.parser import parse_message

    problems: list[str] = []
    if "\n" in er7:
        problems.append("LF found: segments must be separated by CR only")
    if not er7.endswith("\r"):
        problems.append("the last segment does not end with CR")
    segments = [s for s in er7.split("\r")]
    if segments and segments[-1] == "":
        segments.pop()
    if any(s == "" for s in segments):
        problems.append("empty segment (two CRs in a row)")
    segments = [s for s in segments if s]
    if not segments or not segments[0].startswith("MSH|"):
        return problems + ["the message does not start with MSH"]
    msh = segments[0].split("|")
    version = msh[11] if len(msh) > 11 else ""
    msh9 = (msh[8] if len(msh) > 8 else "").split("^")
    control_id = msh[9] if len(msh) > 9 else ""
    if not control_id:
        problems.append("MSH-10 is empty")
    elif len(control_id) > 20:
        problems.append(f"MSH-10 is {len(control_id)} characters (at most 20)")
    if msh9[0] != "SIU" or len(msh9) < 2 or msh9[1] not in _SIU_TRIGGERS:
        return problems + [f"MSH-9 is not a SIU message type: {'^'.join(msh9[:3])}"]
    ids = [s[:3] for s in segments]
    grammar = {"2.5.1": _V251, "2.3": _V23}.get(version)
    if grammar is None:
        return problems + [f"unsupported HL7 version {version!r} (2.5.1 or 2.3)"]
    if not grammar.fullmatch("".join(i + "," for i in ids)):
        problems.append(f"segment order does not follow SIU_S12: {' '.join(ids)}")

    text = er7
    if version == "2.3" and msh9[1] != "S12":
        # hl7apy has only SIU_S12 for 2.3; every SIU trigger shares that structure.
        fields = segments[0].split("|")
        fields[8] = "SIU^S12"
        text = "\r".join(["|".join(fields)] + segments[1:]) + "\r"
    try:
        parsed = parse_message(text.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.STRICT)
        parsed.validate()
    except Exception as exc:  # hl7apy raises many types; each is a finding, not a crash
        problems.append(f"hl7apy {version}: {type(exc).__name__}: {exc}")
        return problems
    found: list[str] = []
    _segments_of(parsed, found)
    if found != ids:
        dropped = [i for i in ids if i not in found] or ids
        problems.append(f"hl7apy dropped or moved segments: sent {' '.join(ids)}, "
                        f"parsed {' '.join(found)} (check {' '.join(sorted(set(dropped)))})")
    return problems
