"""MLLP client: one connection, one message in flight, typed failures.

`send()` writes one frame and waits for one reply frame. Every failure closes the connection
first (except ConnectError, where there is none), so a late or stray reply can never be read
as the answer to the next message: the caller opens a new connection and resends the same
bytes with the same MSH-10.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import struct
from collections.abc import Callable

from engine.backoff import backoff_delay
from engine.mllp.settings import ConnectionSettings

from .errors import (
    ConnectFailed,
    ConnectTimeout,
    FrameTooLarge,
    IncompleteFrame,
    MLLPError,
    PeerClosed,
    ResponseTimeout,
)
from .framing import FrameReader, frame
from .tls import client_ssl_context

log = logging.getLogger(__name__)


def set_keepalive(sock: socket.socket | None, settings: ConnectionSettings) -> None:
    """Enable TCP keepalive with our timings where the platform supports them."""
    if sock is None or not settings.keepalive:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", settings.keepalive_idle_seconds),
        ("TCP_KEEPINTVL", settings.keepalive_interval_seconds),
        ("TCP_KEEPCNT", settings.keepalive_count),
    ):
        opt = getattr(socket, name, None)
        if opt is not None:
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)


class MLLPConnection:
    """An open MLLP connection. Not safe for concurrent `send()`s: one message in flight
    per connection is the protocol (original-mode ACKs carry no ordering of their own);
    a lock makes accidental concurrent use wait rather than interleave."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: ConnectionSettings,
        peer: str,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._frames = FrameReader(reader, settings.max_frame_bytes)
        self._settings = settings
        self._lock = asyncio.Lock()
        self._closed = False
        self.peer = peer  # "host:port", safe to log
        self.replies = 0  # replies received on this connection
        self.stale_replies = 0  # replies the caller's `stale` test set aside

    @property
    def closed(self) -> bool:
        return self._closed or self._writer.is_closing()

    async def send(
        self,
        payload: bytes,
        *,
        timeout: float | None = None,
        stale: Callable[[bytes], bool] | None = None,
    ) -> bytes:
        """Send one message (unframed bytes), return the reply payload (unframed bytes).

        One deadline (`timeout`, else the response timeout) bounds the whole exchange: the
        write, however slowly the peer reads, and the reply. A reply for which `stale(reply)`
        is true (an extra or late answer to an earlier message) is set aside and reading goes
        on within the same deadline.

        Raises PeerClosed (its `sent` says whether the frame was written), ResponseTimeout
        (the write or the reply did not finish in time), FrameTooLarge (reply too big) or
        MLLPError; the connection is closed after any of them."""
        async with self._lock:
            if self.closed:
                raise PeerClosed(f"connection to {self.peer} is already closed", sent=False)
            if self._reader.at_eof():  # the peer hung up while we were idle: nothing sent
                await self._abort()
                raise PeerClosed(f"{self.peer} had closed the connection", sent=False)
            wait = self._settings.response_timeout_seconds if timeout is None else timeout
            written = False
            try:
                async with asyncio.timeout(wait):
                    self._writer.write(frame(payload))
                    # drain only when the kernel buffer pushed back: saves a task switch per
                    # message; a peer that never reads then meets the deadline here
                    if self._writer.transport.get_write_buffer_size() > 65_536:
                        await self._writer.drain()
                    written = True
                    while True:
                        reply = await self._frames.read_frame()
                        if reply is None or stale is None or not stale(reply):
                            break
                        self.stale_replies += 1
            except TimeoutError:
                await self._abort()
                if not written:
                    raise ResponseTimeout(
                        f"{self.peer} did not take the message within {wait:g}s") from None
                raise ResponseTimeout(f"no reply from {self.peer} within {wait:g}s") from None
            except IncompleteFrame:
                await self._abort()
                raise PeerClosed(f"{self.peer} closed mid-reply", partial_reply=True) from None
            except FrameTooLarge:
                await self._abort()
                raise
            except (ConnectionError, OSError) as exc:
                await self._abort()
                raise PeerClosed(f"{self.peer}: {type(exc).__name__}") from None
            if reply is None:
                await self._abort()
                raise PeerClosed(f"{self.peer} closed the connection before replying")
            self.replies += 1
            return reply

    async def _abort(self) -> None:
        self._closed = True
        transport = self._writer.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a reset: what the kernel still holds is dropped, not sent late
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()  # no graceful close: unread/late bytes must not linger

    async def close(self) -> None:
        """Close gracefully (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        except (TimeoutError, OSError, ssl.SSLError):
            self._writer.transport.abort()

    async def __aenter__(self) -> MLLPConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_connection(
    host: str,
    port: int,
    settings: ConnectionSettings | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> MLLPConnection:
    """Connect (TCP, then TLS when settings.tls.enabled or ssl_context is given).

    Raises ConnectTimeout or ConnectFailed (refused, unreachable, TLS handshake failed)."""
    settings = settings or ConnectionSettings()
    ctx = ssl_context if ssl_context is not None else client_ssl_context(settings.tls)
    peer = f"{host}:{port}"
    kwargs: dict[str, object] = {}
    if ctx is not None:
        kwargs["ssl"] = ctx
        kwargs["server_hostname"] = settings.tls.server_hostname or host
        kwargs["ssl_handshake_timeout"] = settings.connect_timeout_seconds
    # asyncio's reader limit is irrelevant: FrameReader enforces max_frame_bytes itself
    try:
        async with asyncio.timeout(settings.connect_timeout_seconds):
            # arg-type: the TLS keywords are only passed with a context, so they sit in a dict
            reader, writer = await asyncio.open_connection(host, port, **kwargs)  # type: ignore[arg-type]
    except TimeoutError:
        raise ConnectTimeout(
            f"connect to {peer} timed out after {settings.connect_timeout_seconds:g}s"
        ) from None
    except ssl.SSLError as exc:
        raise ConnectFailed(f"TLS handshake with {peer} failed: {exc.reason}") from None
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConnectFailed(f"connect to {peer} failed: {why}") from None
    try:
        set_keepalive(writer.get_extra_info("socket"), settings)
    except OSError:  # keepalive is best effort, never a reason to fail a connection
        log.debug("could not set TCP keepalive for %s", peer)
    return MLLPConnection(reader, writer, settings, peer)


class Backoff:
    """Reconnect back-off: capped exponential with +/- jitter.

    `next()` returns the delay before the next attempt and advances; `reset()` after a
    success. Jitter spreads reconnects of many lanes after an EHR restart."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        multiplier: float = 2.0,
        jitter: float = 0.2,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if initial <= 0 or maximum <= 0 or multiplier < 1 or not 0 <= jitter <= 1:
            raise ValueError("invalid back-off parameters")
        self.initial, self.maximum = initial, maximum
        self.multiplier, self.jitter = multiplier, jitter
        self._rand = rand
        self.attempt = 0

    @classmethod
    def from_settings(cls, settings: ConnectionSettings, **kw: object) -> Backoff:
        # arg-type: **kw passes the remaining keyword arguments of __init__ through unchanged
        return cls(settings.reconnect_initial_seconds, settings.reconnect_max_seconds, **kw)  # type: ignore[arg-type]

    def peek(self, attempt: int | None = None) -> float:
        """Delay for `attempt` (1-based; default the next one) without advancing."""
        n = self.attempt + 1 if attempt is None else max(1, attempt)
        return backoff_delay(n, self.initial, self.maximum, self.multiplier, self.jitter,
                             self._rand)

    def next(self) -> float:
        delay = self.peek()
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


__all__ = [
    "Backoff",
    "MLLPConnection",
    "MLLPError",
    "open_connection",
    "set_keepalive",
]
