"""Exceptions of the MLLP layer.

Messages carry sizes, peer addresses and timeouts only: never frame contents (PHI).
"""

from __future__ import annotations


class MLLPError(Exception):
    """Base of every error raised by engine.mllp."""


class FramingError(MLLPError):
    """The byte stream broke the MLLP framing rules."""


class FrameTooLarge(FramingError):
    """A frame exceeded max_frame_bytes. The reader has already discarded the rest of that
    frame (up to its 0x1C 0x0D), so the same connection can keep going."""

    def __init__(self, size: int, limit: int, head: bytes = b"") -> None:
        super().__init__(f"MLLP frame of at least {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit
        # the frame's first bytes, so its answer can name the message (MSH-10); never logged
        self.head = head


class IncompleteFrame(FramingError):
    """EOF arrived after a start block (0x0B) but before the end block (0x1C 0x0D)."""

    def __init__(self, received: int) -> None:
        super().__init__(f"connection closed mid-frame after {received} bytes")
        self.received = received


class ConnectError(MLLPError):
    """Could not open a connection (base of ConnectTimeout and ConnectFailed)."""


class ConnectTimeout(ConnectError):
    """The TCP connect (or TLS handshake) did not finish within connect_timeout_seconds."""


class ConnectFailed(ConnectError):
    """The connect was refused, unreachable, or the TLS handshake failed."""


class PeerClosed(MLLPError):
    """The peer closed (or reset) the connection before or while replying.

    Not an ACK timeout: the caller reconnects and resends the same bytes (same MSH-10).
    `sent` is False when the close was seen before the frame was written (nothing went out)."""

    def __init__(self, message: str, *, partial_reply: bool = False, sent: bool = True) -> None:
        super().__init__(message)
        self.partial_reply = partial_reply
        self.sent = sent


class ResponseTimeout(MLLPError):
    """The write and a complete reply did not both finish within the deadline (a silent
    peer, or one that does not read). The connection is reset by then, so a late reply can
    never be read as the answer to the next message, nor a late write go out."""
