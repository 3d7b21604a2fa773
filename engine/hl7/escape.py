"""HL7 v2 escaping of values and the channel character set rule.

Pure and on the hot path: `escape` has a fast path for values with nothing to escape.

Choices (documented for analysts):
- Delimiters become `\\F\\ \\S\\ \\T\\ \\R\\ \\E\\` (MSH-1/MSH-2 are always `|^~\\&`).
- CR and LF (and every other C0 control, including the MLLP framing bytes 0x0B/0x1C) become
  hex escapes `\\X0D\\`, `\\X0A\\`, ... We use hex rather than `\\.br\\` because `\\.br\\` only
  means a line break in FT fields, while names and notes are ST/XPN components.
- Characters the destination charset cannot encode follow the channel rule:
  `escape` writes the character's UTF-8 bytes as one hex escape (`ë` -> `\\XC3AB\\`), lossless
  for the receiver that decodes hex as UTF-8; `transliterate` strips accents via Unicode
  decomposition (`Zoë` -> `Zoe`) and writes `?` for what has no Latin form (CJK, Arabic);
  `dead_letter` keeps the message out of the lane and names the field where it happened.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from typing import Literal

CharsetRule = Literal["escape", "transliterate", "dead_letter"]

_ESCAPES: dict[int, str] = {
    ord("\\"): "\\E\\",
    ord("|"): "\\F\\",
    ord("^"): "\\S\\",
    ord("&"): "\\T\\",
    ord("~"): "\\R\\",
}
for _c in list(range(0x20)) + [0x7F]:
    _ESCAPES[_c] = f"\\X{_c:02X}\\"
_TABLE = str.maketrans(_ESCAPES)
_NEEDS_ESCAPE = re.compile(r"[\\|^&~\x00-\x1f\x7f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def escape(value: str) -> str:
    """Escape one ST value so it can never add a field, component, repetition or segment."""
    if _NEEDS_ESCAPE.search(value) is None:  # the common case: nothing to do
        return value
    return value.translate(_TABLE)


# Characters NFKD does not decompose into ASCII but that have an accepted Latin spelling.
_TRANSLIT_EXTRA: dict[str, str] = {
    "ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O", "œ": "oe", "Œ": "OE",
    "đ": "d", "Đ": "D", "ł": "l", "Ł": "L", "þ": "th", "Þ": "Th", "ð": "d", "Ð": "D",
    "ı": "i", "‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"',
    "–": "-", "—": "-", "…": "...", "\u00a0": " ",
}

# HL7 table 0211 names for MSH-18 (v2.5+); "" means leave MSH-18 empty.
MSH18_NAMES: dict[str, str] = {"utf-8": "UNICODE UTF-8", "ascii": "ASCII", "latin-1": "8859/1"}


# HL7 table 0211 (MSH-18) -> Python codec, for the character sets that keep ASCII bytes as
# they are (MLLP framing and the ER7 delimiters are ASCII). UNICODE (UCS-2), UTF-16 and
# UTF-32 cannot travel in an MLLP frame as it is used here, and are not listed.
MSH18_CODECS: dict[str, str] = {
    "ASCII": "ascii", "ISO IR6": "ascii",
    "8859/1": "latin-1", "ISO IR100": "latin-1",
    **{f"8859/{n}": f"iso8859-{n}" for n in (2, 3, 4, 5, 6, 7, 8, 9, 15)},
    "UNICODE UTF-8": "utf-8",
    "GB 18030-2000": "gb18030", "KS X 1001": "euc_kr", "BIG-5": "big5",
}


def msh18_codec(value: str) -> str | None:
    """The Python codec for an MSH-18 value, or None when it is not one we can read."""
    return MSH18_CODECS.get(" ".join(value.split()).upper())


def codec_name(charset: str) -> str:
    """Python codec for a configured charset label ("UTF-8", "ASCII", "ISO-8859-1", ...)."""
    return codecs.lookup(charset).name.replace("iso8859-1", "latin-1")


def check_wire_charset(charset: str) -> str:
    """A charset label a channel file may name for MLLP: one Python knows, and one that keeps
    ASCII bytes as they are (the framing and the ER7 delimiters are ASCII on the wire)."""
    try:
        codecs.lookup(charset)
    except LookupError:
        raise ValueError(f"unknown charset {charset!r}") from None
    ascii_bytes = bytes(range(128))
    try:
        same = ascii_bytes.decode("ascii").encode(charset) == ascii_bytes
    except UnicodeError:
        same = False
    if not same:
        raise ValueError(f"charset {charset!r} does not keep ASCII as is; use an"
                         " ASCII-compatible one such as UTF-8 or ISO-8859-1")
    return charset


def _can_encode(ch: str, codec: str) -> bool:
    try:
        ch.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def _hex_escape(ch: str) -> str:
    return "\\X" + ch.encode("utf-8").hex().upper() + "\\"


def _transliterate(ch: str, codec: str) -> str:
    if ch in _TRANSLIT_EXTRA:
        return _TRANSLIT_EXTRA[ch]
    base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    if base and all(_can_encode(c, codec) for c in base):
        return escape(base)  # a compatibility form could contain a delimiter (e.g. fullwidth ｜)
    return "?"


def field_path(er7: str, pos: int) -> str:
    """`PID-5.2` for a character position in an ER7 message (for errors: names no value)."""
    seg_start = er7.rfind("\r", 0, pos) + 1
    segment = er7[seg_start:pos]
    seg_id = segment[:3]
    fields = segment.split("|")
    field_no = len(fields) - 1 + (1 if seg_id == "MSH" else 0)
    component = fields[-1].split("~")[-1].count("^") + 1
    return f"{seg_id}-{field_no}.{component}"


def apply_charset(er7: str, codec: str, rule: CharsetRule) -> tuple[str, bytes, str | None]:
    """Encode a rendered message for the wire: (er7 as sent, payload, error or None).

    Runs on the whole message after rendering: delimiters are ASCII, so every character a
    charset cannot encode comes from a value, and fixing it here equals fixing each value.
    """
    try:
        return er7, er7.encode(codec), None
    except UnicodeEncodeError as exc:
        first_bad = exc.start
    substitute = _transliterate if rule == "transliterate" else lambda ch, _codec: _hex_escape(ch)

    def fix(match: re.Match[str]) -> str:
        ch = match.group()
        return ch if _can_encode(ch, codec) else substitute(ch, codec)

    # every charset we allow encodes ASCII: only the other characters need a look
    fixed = _NON_ASCII.sub(fix, er7)
    if rule == "dead_letter":
        where = field_path(er7, first_bad)
        return fixed, fixed.encode(codec), f"character not encodable in {codec} at {where}"
    return fixed, fixed.encode(codec), None
