"""ACK parsing and building (pure: bytes/str in, data out; no I/O).

Parsing splits on the separators declared in MSH-1/MSH-2 instead of building a full
python-hl7 tree: an ACK is 2-3 short segments and this sits on the delivery hot path.
`parse_ack` never raises; problems are reported in `AckInfo.parse_error`.

`build_ack` always writes standard delimiters (`|^~\\&`) and translates values copied from the
received MSH when that message used other ones; free text is escaped, so a `|` in an error
text can never split a segment.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

ACK_CODES: frozenset[str] = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
MAX_TEXT = 500  # cap on texts taken from a reply (a misbehaving peer can send megabytes)
MAX_MSA3 = 80  # MSA-3 is ST(80) in v2.5
_REMARKS = frozenset({"W", "I"})  # ERR-4 severities that are not errors (HL7 table 0516)

# HL7 table 0357 (message error condition codes)
ERROR_TEXTS: dict[str, str] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}


@dataclass(frozen=True, slots=True)
class AckInfo:
    """What a reply says. Texts come from the EHR and may contain PHI: store them, do not
    log them (code, control_id and error_codes are safe to log)."""

    code: str | None  # MSA-1 when it is one of ACK_CODES, else None
    control_id: str | None  # MSA-2: must equal the MSH-10 we sent
    text: str | None = None  # MSA-3, unescaped, capped
    # the error condition codes, from the most specific place that has any: ERR-3.1 (v2.5+),
    # else ERR-1.4.1 (v2.3/2.4), else MSA-6.1 (before ERR existed); warnings are left out
    error_codes: tuple[str, ...] = ()
    error_text: str | None = None  # ERR-8/ERR-7 (else ERR-3.2, else MSA-3), unescaped, capped
    # ERR segments were present and every one is ERR-4 W or I: the EHR filed the message
    # and only has remarks (an AE so marked is a success)
    warnings_only: bool = False
    parse_error: str | None = None  # why the reply could not be read (None when fine)
    message_type: str | None = None  # MSH-9 as sent, e.g. "ACK^S12^ACK"
    ack_control_id: str | None = None  # the ACK's own MSH-10
    version: str | None = None  # MSH-12

    @property
    def ok(self) -> bool:
        return self.parse_error is None and self.code is not None


@dataclass(frozen=True, slots=True)
class _Delims:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @classmethod
    def from_msh(cls, msh: str) -> _Delims | None:
        """Delimiters declared by an MSH segment, or None when MSH-1/MSH-2 are unusable."""
        if len(msh) < 4 or not msh.startswith("MSH"):
            return None
        fs = msh[3]
        enc = msh[4:].split(fs, 1)[0]
        if fs.isalnum() or fs in "\r\n" or not enc:
            return None
        comp = enc[0]
        rep = enc[1] if len(enc) > 1 else "~"
        esc = enc[2] if len(enc) > 2 else "\\"
        sub = enc[3] if len(enc) > 3 else "&"
        chars = [fs, comp, rep, esc, sub]
        if len(set(chars)) != 5 or any(c.isalnum() or c in "\r\n" for c in chars):
            return None
        return cls(fs, comp, rep, esc, sub)


STD = _Delims()
_STD_CHARS = ("|", "^", "~", "\\", "&")


def _segments(text: str) -> list[str]:
    # CR is the standard terminator; tolerate LF/CRLF from sloppy peers
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return [s for s in text.split("\r") if s]


def unescape(value: str, d: _Delims = STD) -> str:
    """Undo HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\, \\Xhh\\); others are dropped."""
    esc = d.escape
    if esc not in value:
        return value
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c != esc:
            out.append(c)
            i += 1
            continue
        j = value.find(esc, i + 1)
        if j < 0:
            out.append(value[i:])
            break
        seq = value[i + 1 : j]
        i = j + 1
        if seq == "F":
            out.append(d.field)
        elif seq == "S":
            out.append(d.component)
        elif seq == "T":
            out.append(d.subcomponent)
        elif seq == "R":
            out.append(d.repetition)
        elif seq == "E":
            out.append(d.escape)
        elif seq.startswith("X") and len(seq) % 2 == 1:
            try:
                out.append(bytes.fromhex(seq[1:]).decode("utf-8", "replace"))
            except ValueError:
                pass
        elif seq in (".br", ".sp"):
            out.append(" ")
        # other formatting sequences (\H\ \N\ ...) carry no text
    return "".join(out)


_ESCAPES = {"|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\", "\\": "\\E\\"}
_ESCAPE_TABLE = str.maketrans({**_ESCAPES, "\r": " ", "\n": " "})


def escape(value: str) -> str:
    """Escape a value for standard delimiters; CR/LF become spaces (they end segments)."""
    return value.translate(_ESCAPE_TABLE)


def _cap(value: str | None, limit: int = MAX_TEXT) -> str | None:
    if not value:
        return None
    value = " ".join(value.split())  # one line; no control characters from the peer
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _field(fields: list[str], i: int) -> str:
    return fields[i] if i < len(fields) else ""


def parse_ack(reply: bytes | str, encoding: str = "utf-8") -> AckInfo:
    """Read MSA/ERR from a reply payload (no MLLP framing, though stray framing bytes are
    tolerated). Never raises."""
    try:
        return _parse_ack(reply, encoding)
    except Exception as exc:  # a parser bug must not become a crash in the delivery worker
        return AckInfo(None, None, parse_error=f"unparsable reply ({type(exc).__name__})")


_BOM = b"\xef\xbb\xbf"


def _decode(data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding, "replace")
    except LookupError:  # a misconfigured charset name must not make every ACK unreadable
        return data.decode("utf-8", "replace")


def _parse_ack(reply: bytes | str, encoding: str) -> AckInfo:
    if isinstance(reply, bytes):
        if reply.startswith(_BOM):  # some EHRs put a UTF-8 byte order mark before MSH
            reply = reply[len(_BOM):]
        text = _decode(reply, encoding)
    else:
        text = reply
    text = text.strip("\x0b\x1c\r\n \t\x00\ufeff")
    if not text:
        return AckInfo(None, None, parse_error="empty reply")
    segs = _segments(text)
    msh = segs[0]
    if not msh.startswith("MSH"):
        found = next((s for s in segs if s.startswith("MSH")), None)
        if found is None:
            return AckInfo(None, None, parse_error="no MSH segment")
        msh = found
    d = _Delims.from_msh(msh)
    if d is None:
        return AckInfo(None, None, parse_error="MSH-1/MSH-2 separators unusable")
    fs = d.field
    mshf = msh.split(fs)  # mshf[i] is MSH-(i+1)
    message_type = _field(mshf, 8) or None
    ack_control_id = _field(mshf, 9) or None
    version = _field(mshf, 11).split(d.component, 1)[0] or None
    msa: list[str] | None = None
    errs: list[list[str]] = []
    for seg in segs:
        tag = seg[:3]
        if tag == "MSA" and msa is None and seg[3:4] in (fs, ""):
            msa = seg.split(fs)
        elif tag == "ERR" and seg[3:4] in (fs, ""):
            errs.append(seg.split(fs))
    if msa is None:
        return AckInfo(None, None, parse_error="no MSA segment", message_type=message_type,
                       ack_control_id=ack_control_id, version=version)
    raw_code = _field(msa, 1).strip().upper()
    control_id = _field(msa, 2).strip() or None
    msa_text = _cap(unescape(_field(msa, 3), d))
    # where the error condition is, most specific first: ERR-3 (v2.5+), ERR-1.4 (v2.3/2.4),
    # MSA-6 (v2.1-2.4, before ERR). When they disagree the most specific present wins
    err3_codes: list[str] = []
    eld_codes: list[str] = []
    texts: list[str] = []
    severities: list[str] = []
    for err in errs:
        severity = _field(err, 4).split(d.component, 1)[0].strip().upper()
        severities.append(severity)
        remark = severity in _REMARKS
        err3 = _field(err, 3)
        if err3:
            if not remark:
                for rep in err3.split(d.repetition):
                    comps = rep.split(d.component)
                    if comps[0].strip():
                        err3_codes.append(unescape(comps[0].strip(), d))
            # ERR-8 (user message) then ERR-7 (diagnostics); the table text only if neither
            given = [t for t in (_field(err, 8), _field(err, 7)) if t.strip()]
            if not given:
                given = [_field(rep.split(d.component), 1) for rep in err3.split(d.repetition)]
            texts.extend(unescape(t, d) for t in given if t.strip())
        # v2.3/2.4: ERR-1 ELD = segment^sequence^field^code&text&table, repeating
        for rep in _field(err, 1).split(d.repetition):
            comps = rep.split(d.component)
            if len(comps) >= 4 and comps[3]:
                sub = comps[3].split(d.subcomponent)
                if sub[0].strip() and not remark:
                    eld_codes.append(unescape(sub[0].strip(), d))
                if not err3 and len(sub) > 1 and sub[1].strip():
                    texts.append(unescape(sub[1], d))
    msa6 = _field(msa, 6).split(d.component)
    msa6_code = unescape(msa6[0].strip(), d)
    if msa6_code and not texts and len(msa6) > 1 and msa6[1].strip() and not msa_text:
        texts.append(unescape(msa6[1], d))
    codes = err3_codes or eld_codes or ([msa6_code] if msa6_code else [])
    warnings_only = bool(severities) and all(s in _REMARKS for s in severities)
    error_text = _cap("; ".join(dict.fromkeys(texts))) if texts else msa_text
    parse_error: str | None = None
    code: str | None = raw_code
    if raw_code not in ACK_CODES:
        code = None
        shown = "".join(ch for ch in raw_code[:4] if ch.isalnum())
        parse_error = f"MSA-1 '{shown}' is not an acknowledgment code" if shown else "MSA-1 empty"
    return AckInfo(
        code=code,
        control_id=control_id,
        text=msa_text,
        error_codes=tuple(c[:20] for c in codes[:10]),
        error_text=error_text,
        warnings_only=warnings_only,
        parse_error=parse_error,
        message_type=message_type,
        ack_control_id=ack_control_id,
        version=version,
    )


# ---------------------------------------------------------------------------- reading MSH


def read_msh10(frame: bytes) -> str | None:
    """MSH-10 of a message without parsing it (hot path: listener and simulator)."""
    start = frame.find(b"MSH")
    if start < 0 or start > 8:  # allow a little leading noise (framing bytes, newlines)
        return None
    end = frame.find(b"\r", start)
    seg = frame[start:end] if end >= 0 else frame[start:]
    if len(seg) < 4:
        return None
    parts = seg.split(seg[3:4], 10)
    if len(parts) < 10:
        return None
    value = parts[9].strip(b" \t\r\n\x0b\x1c")  # a frame cut after MSH-10 keeps its trailer
    return value.decode("utf-8", "replace") if value else None


def _first_msh(message: bytes | str, encoding: str) -> str:
    """The MSH segment (decoded), allowing a little leading noise; "" when there is none."""
    if isinstance(message, bytes):
        start = message.find(b"MSH", 0, 64)
        if start < 0:
            return ""
        end = message.find(b"\r", start)
        line = message[start : end if end >= 0 else len(message)]
        return _decode(line.split(b"\n", 1)[0], encoding)
    start = message.find("MSH", 0, 64)
    if start < 0:
        return ""
    end = message.find("\r", start)
    return message[start : end if end >= 0 else len(message)].split("\n", 1)[0]


def _translate(value: str, src: _Delims) -> str:
    """Re-express a raw field written with `src` delimiters using standard ones."""
    out: list[str] = []
    for c in value:
        if c == src.component:
            out.append("^")
        elif c == src.subcomponent:
            out.append("&")
        elif c == src.repetition:
            out.append("~")
        elif c == src.escape:
            out.append("\\")
        elif c in _ESCAPES:
            out.append(_ESCAPES[c])  # a standard delimiter that was plain data there
        else:
            out.append(c)
    return "".join(out)


def hl7_timestamp(now: datetime) -> str:
    """YYYYMMDDHHMMSS+ZZZZ (zone offset always present)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("build_ack needs an aware datetime (MSH-7 carries the zone offset)")
    return now.strftime("%Y%m%d%H%M%S%z")


_counter = itertools.count(1)


def _default_control_id(timestamp: str) -> str:
    # 18 characters: fits the 20-character MSH-10 of v2.3.1-2.5
    return f"A{timestamp[2:14]}{next(_counter) % 100_000:05d}"


def _old_err_style(version: str) -> bool:
    # ERR-2..12 exist from v2.5; before that only ERR-1 (ELD)
    parts = version.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return False
    return (major, minor) < (2, 5)


def _msa3_withdrawn(version: str) -> bool:
    parts = version.split(".")
    try:
        return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0) >= (2, 7)
    except ValueError:
        return False


def build_ack(
    message: bytes | str,
    code: str,
    *,
    error_code: str | None = None,
    error_text: str | None = None,
    error_location: Sequence[str | int] | None = None,  # e.g. ("AIP", 1, 3, 1, 1)
    sending_application: str | None = None,
    sending_facility: str | None = None,
    control_id: str | None = None,
    now: datetime,
    encoding: str = "utf-8",
    msa2: str | None = None,
    err_segment: bool = True,
    error_in_msa6: bool = False,
    severity: str = "E",
    charset: str | None = None,
) -> str:
    """An original-mode (or, with CA/CE/CR, commit) ACK for `message`, CR-terminated, no
    MLLP framing. Best effort on a broken MSH: what cannot be read is left empty.

    MSA-2 = the message's MSH-10 (or `msa2`, which exists for the simulator's wrong-MSA-2
    mode); `err_segment=False` leaves ERR out; sender/receiver are swapped unless
    `sending_application`/`sending_facility` are given; same version and processing id; for
    codes other than AA/CA an ERR segment (v2.5+: ERR-3 code^text^HL70357, ERR-4 `severity`,
    ERR-8 text; before v2.5: ERR-1) and MSA-3 (up to v2.6: v2.7 withdrew it, ERR-8 carries
    the text), or with `error_in_msa6` the code in MSA-6 and no ERR (the simulator's v2.3
    style). `charset` is written to MSH-18 (an HL7 table 0211 name: the caller encodes the
    result in it)."""
    code = code.upper()
    if code not in ACK_CODES:
        raise ValueError(f"unknown acknowledgment code {code!r}")
    msh = _first_msh(message, encoding)  # only MSH is needed: never decode the whole body
    src = _Delims.from_msh(msh) if msh else None
    if src is not None:
        f = msh.split(src.field)
        if (src.field, src.component, src.repetition, src.escape, src.subcomponent) == _STD_CHARS:
            get = lambda i: _field(f, i - 1)  # noqa: E731  MSH-i, nothing to translate
        else:
            get = lambda i: _translate(_field(f, i - 1), src)  # noqa: E731
        comp = src.component
        trigger = _field(_field(f, 8).split(comp), 1)
        msh10 = _field(f, 9).strip()
    else:
        get = lambda i: ""  # noqa: E731
        trigger, msh10 = "", ""
    version = get(12).split("^", 1)[0] or "2.5.1"
    old = _old_err_style(version)
    trigger = escape(trigger)
    if version in ("2.1", "2.2", "2.3"):
        mtype = f"ACK^{trigger}" if trigger else "ACK"  # MSH-9.3 appears in v2.3.1
    else:
        mtype = f"ACK^{trigger}^ACK" if trigger else "ACK"
    sending_app = escape(sending_application) if sending_application is not None else get(5)
    sending_fac = escape(sending_facility) if sending_facility is not None else get(6)
    ts = hl7_timestamp(now)
    msh_out = "|".join([
        "MSH", "^~\\&", sending_app, sending_fac, get(3), get(4), ts, "",
        mtype, escape(control_id or _default_control_id(ts)), get(11) or "P", version,
    ])
    if charset:
        msh_out += "|" * 6 + escape(charset)  # MSH-13..17 empty, then MSH-18
    echoed = escape(msa2 if msa2 is not None else msh10)
    out = [msh_out]
    if code in ("AA", "CA"):
        out.append(f"MSA|{code}|{echoed}")
    elif error_in_msa6:  # the error condition in MSA-6 and no ERR, as v2.1-2.4 EHRs may
        ecode = error_code or "207"
        detail = error_text or ERROR_TEXTS.get(ecode, "")
        out.append(f"MSA|{code}|{echoed}|{escape(detail[:MAX_MSA3])}|||"
                   f"{escape(ecode)}^{escape(ERROR_TEXTS.get(ecode, ''))}^HL70357")
    elif not err_segment:  # a bare reject, as some EHRs send
        tail = f"|{escape(error_text[:MAX_MSA3])}" if error_text else ""
        out.append(f"MSA|{code}|{echoed}{tail}")
    else:
        ecode = error_code or "207"
        etext_table = ERROR_TEXTS.get(ecode, "")
        detail = error_text or etext_table
        if _msa3_withdrawn(version):
            out.append(f"MSA|{code}|{echoed}")
        else:
            out.append(f"MSA|{code}|{echoed}|{escape(detail[:MAX_MSA3])}")
        loc = [escape(str(p)) for p in (error_location or ())]
        if old:
            eld = (loc[:3] + ["", "", ""])[:3]  # ELD: segment^sequence^field^code&text&table
            out.append(f"ERR|{'^'.join(eld)}^{escape(ecode)}&{escape(etext_table)}&HL70357")
        else:
            out.append("|".join([
                "ERR", "", "^".join(loc),
                f"{escape(ecode)}^{escape(etext_table)}^HL70357", escape(severity), "", "", "",
                escape(error_text or etext_table),
            ]))
    return "\r".join(out) + "\r"


__all__ = ["ACK_CODES", "AckInfo", "ERROR_TEXTS", "build_ack", "escape", "hl7_timestamp",
           "parse_ack", "read_msh10", "unescape"]
