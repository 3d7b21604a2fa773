"""MLLP listener: many connections, frames handled in order per connection.

`handler(frame, peer)` returns the reply payload (framed here), or None for no reply.
Raising CloseConnection from the handler closes that connection without a reply (used by
the simulator to emulate an EHR that hangs up mid-exchange). Any other exception from the
handler is logged by type only (no message content) and closes the connection: the sender
gets no ACK and resends, which is safer than answering for a message we did not handle.

Not python-hl7's `start_hl7_server`: its protocol starts the per-connection coroutine with
`create_task` and keeps no reference to it (a task may then be garbage-collected mid-run), and
its reader is the `readblock` one that cannot skip stray bytes or resync after an oversize
frame (see framing.py). asyncio's own `start_server` plus FrameReader avoids both.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_mod
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .errors import FrameTooLarge, IncompleteFrame
from .framing import DEFAULT_MAX_FRAME_BYTES, FrameReader, VtInFrame, frame

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end; str() is "host:port", safe to log."""

    host: str
    port: int
    tls: bool = False
    cert_subject: str | None = None  # client certificate subject CN, when one was presented

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class CloseConnection(Exception):
    """Raised by a handler to close the connection without replying."""


Handler = Callable[[bytes, Peer], Awaitable[bytes | None]]
OversizeHook = Callable[[Peer, bytes], bytes | None]  # (peer, the frame's first bytes)

DEFAULT_MAX_CONNECTIONS = 100  # EHR interfaces open a handful; more is a flood or a leak
DEFAULT_WRITE_TIMEOUT = 30.0  # seconds a reply may wait for a peer that does not read

# connection tasks per server, so shutdown() can end them (Server.close() only stops accepting)
_CONNECTIONS: weakref.WeakKeyDictionary[asyncio.Server, set[asyncio.Task[None]]] = (
    weakref.WeakKeyDictionary()
)


def _peer_of(writer: asyncio.StreamWriter) -> Peer:
    addr = writer.get_extra_info("peername")
    host, port = (str(addr[0]), int(addr[1])) if isinstance(addr, tuple) else (str(addr), 0)
    sslobj = writer.get_extra_info("ssl_object")
    subject: str | None = None
    if sslobj is not None:
        cert = sslobj.getpeercert()
        if cert:
            for rdn in cert.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        subject = value
    return Peer(host, port, sslobj is not None, subject)


async def serve(
    handler: Handler,
    host: str,
    port: int,
    *,
    ssl: ssl_mod.SSLContext | None = None,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    idle_timeout: float | None = 300.0,
    on_oversize: OversizeHook | None = None,
    on_connect: Callable[[Peer], None] | None = None,
    backlog: int = 100,
    vt_in_frame: VtInFrame = "data",
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
    write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
    on_event: Callable[[str], None] | None = None,
) -> asyncio.Server:
    """Start listening; returns the started asyncio.Server (port 0 picks a free port:
    read it from server.sockets[0].getsockname()). Stop with `shutdown(server)`.
    `vt_in_frame`: what a 0x0B inside a frame is (framing.py); a listener keeps the message.
    A connection over `max_connections` is closed at once; a peer that leaves its replies
    unread for `write_timeout` seconds is cut off. `on_event("refused" | "write_timeout")`
    counts both."""
    conns: set[asyncio.Task[None]] = set()

    def event(name: str) -> None:
        if on_event is not None:
            on_event(name)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = _peer_of(writer)
        if max_connections is not None and len(conns) >= max_connections:
            log.warning("mllp connection from %s refused: %d connections already open",
                        peer.host, len(conns))
            event("refused")
            writer.close()
            return
        # a strong reference: asyncio (3.11) keeps none for this task, and shutdown() needs it
        conns.add(task)
        try:
            if on_connect is not None:
                on_connect(peer)
            await _connection(reader, writer, peer, handler, max_frame_bytes, idle_timeout,
                              on_oversize, vt_in_frame, write_timeout)
        except asyncio.CancelledError:
            pass  # shutdown
        except _WriteTimeout:
            log.warning("mllp connection %s: replies unread for %gs, closing", peer,
                        write_timeout)
            event("write_timeout")
        except (ConnectionError, OSError, ssl_mod.SSLError) as exc:
            log.debug("mllp connection %s ended: %s", peer, type(exc).__name__)
        except Exception as exc:  # the handler's bug: name the type, never the content
            log.error("mllp handler failed for %s: %s", peer, type(exc).__name__)
        finally:
            conns.discard(task)
            if not writer.is_closing():
                if writer.transport.get_write_buffer_size():
                    # replies the peer is not reading: close() would wait for them forever
                    writer.transport.abort()
                else:
                    writer.close()  # sends TLS close_notify

    server = await asyncio.start_server(
        on_client, host, port, ssl=ssl, backlog=backlog, limit=65_536
    )
    _CONNECTIONS[server] = conns
    return server


async def _connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    peer: Peer,
    handler: Handler,
    max_frame_bytes: int,
    idle_timeout: float | None,
    on_oversize: OversizeHook | None,
    vt_in_frame: VtInFrame,
    write_timeout: float | None,
) -> None:
    frames = FrameReader(reader, max_frame_bytes, vt_in_frame=vt_in_frame)
    while True:
        try:
            if idle_timeout is None:
                payload = await frames.read_frame()
            else:
                async with asyncio.timeout(idle_timeout):
                    payload = await frames.read_frame()
        except TimeoutError:
            log.info("mllp connection %s idle for %gs: closing", peer, idle_timeout)
            return
        except FrameTooLarge as exc:
            log.warning("mllp frame from %s too large (%d > %d bytes): discarded",
                        peer, exc.size, exc.limit)
            reply = on_oversize(peer, exc.head) if on_oversize is not None else None
            if reply is not None:
                await _send(writer, frame(reply), write_timeout, always_drain=True)
            continue
        except IncompleteFrame as exc:
            log.info("mllp connection %s closed mid-frame (%d bytes)", peer, exc.received)
            return
        if payload is None:
            return  # clean EOF
        try:
            reply = await handler(payload, peer)
        except CloseConnection:
            return
        if reply is not None:
            await _send(writer, frame(reply), write_timeout)


class _WriteTimeout(Exception):
    """The peer left our replies unread past the write deadline."""


async def _send(writer: asyncio.StreamWriter, data: bytes, write_timeout: float | None, *,
                always_drain: bool = False) -> None:
    writer.write(data)
    # drain only under back-pressure: one fewer await per message on the fast path
    if not always_drain and writer.transport.get_write_buffer_size() <= 65_536:
        return
    if write_timeout is None:
        await writer.drain()
        return
    try:
        async with asyncio.timeout(write_timeout):
            await writer.drain()
    except TimeoutError:
        raise _WriteTimeout() from None


async def shutdown(server: asyncio.Server, *, grace: float = 0.0) -> None:
    """Stop accepting, give open connections `grace` seconds, then cancel them."""
    server.close()
    conns = _CONNECTIONS.get(server, set())
    if grace > 0 and conns:
        await asyncio.wait(list(conns), timeout=grace)
    for task in list(conns):
        task.cancel()
    if conns:
        await asyncio.gather(*conns, return_exceptions=True)
    await server.wait_closed()


def connection_count(server: asyncio.Server) -> int:
    """Open connections right now (for metrics and tests)."""
    return len(_CONNECTIONS.get(server, ()))
