"""MLLP framing: <VT> payload <FS><CR>  (0x0B ... 0x1C 0x0D), bytes only.

Why not python-hl7's `MLLPStreamReader.readblock`: it reads with `readuntil(b"\\x1c\\r")` and
then insists the block starts with 0x0B, so a stray CR/LF between frames (common from legacy
senders) raises InvalidBlockError; on oversize it clears the whole buffer, which loses the
frame boundary and any following frame; its HL7 reader/writer default to ASCII; it has no
timeouts. So the reader below keeps its own buffer. The framing bytes themselves are
python-hl7's constants, so both sides agree on the wire format by construction.
Charset decoding is the caller's business: frames are returned as bytes.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from hl7.mllp.streams import CARRIAGE_RETURN, END_BLOCK, START_BLOCK

from .errors import FrameTooLarge, IncompleteFrame

SB: bytes = START_BLOCK  # 0x0B
EB: bytes = END_BLOCK  # 0x1C
CR: bytes = CARRIAGE_RETURN  # 0x0D
TRAILER: bytes = END_BLOCK + CARRIAGE_RETURN  # 0x1C 0x0D
DEFAULT_MAX_FRAME_BYTES: int = 1_048_576
# a frame whose 0x1C is the last byte received so far ends there if no CR follows this soon
DEFAULT_END_GRACE_SECONDS: float = 0.2
_CHUNK = 65_536
_HEAD = 1024  # bytes of an oversize frame kept for its answer (enough for the MSH)
_NEW_MESSAGE = SB + b"MSH"

# What a 0x0B inside an open frame means:
# - "data": a byte of the message (a line break pasted into a note by some EHR front ends);
#   the frame still ends at its 0x1C. The listener's default: the message is kept. Except a
#   0x0B followed by "MSH", which no note holds: the sender abandoned the frame and a new
#   message begins (else the cut message's MSH would be stored with the next one's body).
# - "restart": the sender gave up on the frame and began another; the cut frame gets no reply
#   and the sender resends it. What a client reading replies uses: an ACK holds no free text.
VtInFrame = Literal["data", "restart"]


def frame(payload: bytes) -> bytes:
    """Wrap one message in MLLP framing."""
    return SB + payload + TRAILER


class FrameReader:
    """Reads MLLP frames from an asyncio.StreamReader.

    - bytes outside a frame (CR, LF, noise) are skipped up to the next 0x0B;
    - a 0x0B inside an open frame is data or starts a new frame, per `vt_in_frame` (above;
      with "data", a 0x0B followed by "MSH" still starts one); restarts are counted in
      `restarted_frames`;
    - a frame ends at 0x1C 0x0D; a 0x1C followed by anything else, or by nothing for
      `end_grace_seconds`, ends it too (senders that leave the CR out);
    - a frame over `max_frame_bytes` is discarded up to its end, then FrameTooLarge is raised
      (with the frame's first bytes): the next `read_frame()` continues with the next frame;
    - EOF mid-frame raises IncompleteFrame; EOF between frames returns None.

    Cancelling `read_frame()` (e.g. by a timeout) loses nothing: state lives in the object.
    """

    __slots__ = ("_reader", "_max", "_buf", "_in_frame", "_scan", "_discarding", "_discarded",
                 "_head", "_restart", "_grace", "_end_pending", "_end_expired",
                 "skipped_bytes", "restarted_frames")

    def __init__(self, reader: asyncio.StreamReader,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, *,
                 vt_in_frame: VtInFrame = "restart",
                 end_grace_seconds: float = DEFAULT_END_GRACE_SECONDS) -> None:
        if vt_in_frame not in ("data", "restart"):
            raise ValueError(f"vt_in_frame must be 'data' or 'restart', not {vt_in_frame!r}")
        self._reader = reader
        self._max = max_frame_bytes
        self._buf = bytearray()
        self._in_frame = False  # buf[0] is the first payload byte of an open frame
        self._scan = 0  # payload bytes already searched for the end (avoids O(n^2))
        self._discarding = False  # inside an oversize frame, dropping bytes until its end
        self._discarded = 0
        self._head = b""
        self._restart = vt_in_frame == "restart"
        self._grace = end_grace_seconds
        self._end_pending = False  # the buffer ends with a frame's 0x1C: is a CR coming?
        self._end_expired = False  # ... no: end the frame there
        self.skipped_bytes = 0  # stray bytes seen between frames (diagnostics)
        self.restarted_frames = 0

    @property
    def max_frame_bytes(self) -> int:
        return self._max

    def _next_frame(self) -> bytes | None:
        """Try to cut one frame out of the buffer; None means more bytes are needed.
        Raises FrameTooLarge once an oversize frame has been fully discarded."""
        buf = self._buf
        self._end_pending = False
        while True:
            if not self._in_frame:
                start = buf.find(SB)
                if start < 0:
                    self.skipped_bytes += len(buf)
                    buf.clear()
                    return None
                if start:
                    self.skipped_bytes += start
                del buf[: start + 1]
                self._in_frame = True
                self._scan = 0
            end = buf.find(EB, self._scan)
            if not self._discarding:
                limit = end if end >= 0 else len(buf)
                if self._restart:
                    restart = buf.rfind(SB, self._scan, limit)
                else:  # "MSH" cannot hold the 0x1C, so the search may run past `end`
                    restart = buf.rfind(_NEW_MESSAGE, self._scan, min(limit + 3, len(buf)))
                if restart >= 0:
                    self.restarted_frames += 1
                    del buf[: restart + 1]
                    self._scan = 0
                    continue
            if end < 0:
                if self._discarding:
                    self._discarded += len(buf)
                    buf.clear()
                    self._scan = 0
                elif len(buf) > self._max:
                    self._discarding = True
                    self._head = bytes(buf[:_HEAD])
                    self._discarded = len(buf)
                    buf.clear()
                    self._scan = 0
                else:
                    # the last bytes again next time: a 0x0B whose "MSH" has not come yet
                    self._scan = len(buf) if self._restart else max(0, len(buf) - 3)
                return None
            if end + 1 == len(buf) and not self._end_expired:
                self._scan = end  # found again next time
                self._end_pending = True
                return None
            self._end_expired = False
            tail = 2 if buf[end + 1 : end + 2] == CR else 1
            size = self._discarded + end
            if self._discarding or end > self._max:
                head = self._head or bytes(buf[:_HEAD])
                del buf[: end + tail]
                self._in_frame = self._discarding = False
                self._discarded = 0
                self._head = b""
                raise FrameTooLarge(size, self._max, head)
            payload = bytes(buf[:end])
            del buf[: end + tail]
            self._in_frame = False
            return payload

    async def read_frame(self) -> bytes | None:
        """Next frame payload (without framing), or None at a clean EOF between frames."""
        while True:
            if self._buf:
                got = self._next_frame()
                if got is not None:
                    return got
            if self._end_pending:
                try:
                    async with asyncio.timeout(self._grace):
                        data = await self._reader.read(_CHUNK)
                except TimeoutError:
                    data = None
                if not data:  # no CR came (or the peer closed): the 0x1C ends the frame
                    self._end_expired = True
                    continue
            else:
                data = await self._reader.read(_CHUNK)
            if not data:
                if self._in_frame:
                    received = self._discarded + len(self._buf)
                    self._buf.clear()
                    self._in_frame = self._discarding = False
                    self._discarded = 0
                    raise IncompleteFrame(received)
                self._buf.clear()
                return None
            self._buf += data
