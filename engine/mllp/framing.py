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

from hl7.mllp.streams import CARRIAGE_RETURN, END_BLOCK, START_BLOCK

from .errors import FrameTooLarge, IncompleteFrame

SB: bytes = START_BLOCK  # 0x0B
EB: bytes = END_BLOCK  # 0x1C
TRAILER: bytes = END_BLOCK + CARRIAGE_RETURN  # 0x1C 0x0D
DEFAULT_MAX_FRAME_BYTES: int = 1_048_576
_CHUNK = 65_536


def frame(payload: bytes) -> bytes:
    """Wrap one message in MLLP framing."""
    return SB + payload + TRAILER


class FrameReader:
    """Reads MLLP frames from an asyncio.StreamReader.

    - bytes outside a frame (CR, LF, noise) are skipped up to the next 0x0B;
    - a 0x0B inside an unterminated frame starts a new frame (the sender gave up on the
      previous one; it gets no reply and will resend), counted in `restarted_frames`;
    - a frame over `max_frame_bytes` is discarded up to its trailer, then FrameTooLarge is
      raised: the next `read_frame()` continues with the following frame;
    - EOF mid-frame raises IncompleteFrame; EOF between frames returns None.

    Cancelling `read_frame()` (e.g. by a timeout) loses nothing: state lives in the object.
    """

    __slots__ = ("_reader", "_max", "_buf", "_in_frame", "_scan", "_discarding", "_discarded",
                 "skipped_bytes", "restarted_frames")

    def __init__(
        self, reader: asyncio.StreamReader, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> None:
        self._reader = reader
        self._max = max_frame_bytes
        self._buf = bytearray()
        self._in_frame = False  # buf[0] is the first payload byte of an open frame
        self._scan = 0  # payload bytes already searched for the trailer (avoids O(n^2))
        self._discarding = False  # inside an oversize frame, dropping bytes until its trailer
        self._discarded = 0
        self.skipped_bytes = 0  # stray bytes seen between frames (diagnostics)
        self.restarted_frames = 0

    @property
    def max_frame_bytes(self) -> int:
        return self._max

    def _next_frame(self) -> bytes | None:
        """Try to cut one frame out of the buffer; None means more bytes are needed.
        Raises FrameTooLarge once an oversize frame has been fully discarded."""
        buf = self._buf
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
            if self._discarding:
                end = buf.find(TRAILER)
                if end < 0:
                    # keep a last 0x1C: its 0x0D may be in the next chunk
                    keep = 1 if buf[-1:] == EB else 0
                    self._discarded += len(buf) - keep
                    del buf[: len(buf) - keep]
                    return None
                size = self._discarded + end
                del buf[: end + 2]
                self._discarding = False
                self._in_frame = False
                self._discarded = 0
                raise FrameTooLarge(size, self._max)
            lo = max(0, self._scan - 1)  # bytes before lo were already searched
            end = buf.find(TRAILER, lo)
            if end < 0:
                restart = buf.rfind(SB, lo)
                if restart >= 0:
                    self._restart(restart)
                    continue
                self._scan = len(buf)
                if len(buf) > self._max + 1:  # +1: a trailing 0x1C may begin the trailer
                    self._discarding = True
                    self._discarded = 0
                    continue
                return None
            restart = buf.rfind(SB, lo, end)
            if restart >= 0:
                self._restart(restart)
                continue
            if end > self._max:
                del buf[: end + 2]
                self._in_frame = False
                raise FrameTooLarge(end, self._max)
            payload = bytes(buf[:end])
            del buf[: end + 2]
            self._in_frame = False
            return payload

    def _restart(self, at: int) -> None:
        self.restarted_frames += 1
        del self._buf[: at + 1]
        self._scan = 0

    async def read_frame(self) -> bytes | None:
        """Next frame payload (without framing), or None at a clean EOF between frames."""
        while True:
            if self._buf:
                got = self._next_frame()
                if got is not None:
                    return got
            data = await self._reader.read(_CHUNK)
            if not data:
                if self._in_frame:
                    received = self._discarded + len(self._buf)
                    self._buf.clear()
                    self._in_frame = self._discarding = False
                    raise IncompleteFrame(received)
                self._buf.clear()
                return None
            self._buf += data
