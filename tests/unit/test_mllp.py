"""engine.mllp over real TCP sockets on 127.0.0.1: framing, client errors, listener, TLS."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from engine.mllp import (
    Backoff,
    CloseConnection,
    ConnectFailed,
    ConnectTimeout,
    FrameReader,
    FrameTooLarge,
    IncompleteFrame,
    Peer,
    PeerClosed,
    ResponseTimeout,
    connection_count,
    frame,
    open_connection,
    serve,
    shutdown,
)
from engine.mllp.framing import VtInFrame
from engine.mllp.settings import ConnectionSettings, TlsSettings
from engine.mllp.tls import server_ssl_context
from load.harness import free_port
from tests.engine_harness import eventually

FAST = ConnectionSettings(connect_timeout_seconds=2, response_timeout_seconds=2)


async def echo(payload: bytes, peer: Peer) -> bytes:
    return b"ACK:" + payload


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Awaitable[asyncio.Server]]]:
    servers: list[asyncio.Server] = []

    async def _start(handler: Callable[[bytes, Peer], Awaitable[bytes | None]] = echo, **kw: object) -> asyncio.Server:
        server = await serve(handler, "127.0.0.1", 0, **kw)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield _start
    for s in servers:
        await shutdown(s)


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    return (await asyncio.wait_for(FrameReader(reader).read_frame(), 2)) or b""


# ------------------------------------------------------------------ FrameReader, fed bytes


async def frames_from(chunks: list[bytes], max_frame_bytes: int = 1024,
                      vt_in_frame: VtInFrame = "restart") -> list[object]:
    """Everything a FrameReader yields for a byte stream split into the given chunks."""
    reader = asyncio.StreamReader()
    for c in chunks:
        reader.feed_data(c)
    reader.feed_eof()
    fr = FrameReader(reader, max_frame_bytes, vt_in_frame=vt_in_frame)
    out: list[object] = []
    while True:
        try:
            got = await fr.read_frame()
        except (FrameTooLarge, IncompleteFrame) as exc:
            out.append(type(exc).__name__)
            continue
        if got is None:
            return out
        out.append(got)


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"\x0bA\x1c\r"], [b"A"]),
        ([b"\x0bA\x1c\r\r\n\x0bB\x1c\r"], [b"A", b"B"]),  # stray CR LF between frames
        ([b"junk\n\x0bA\x1c\r  "], [b"A"]),  # noise before, spaces after
        ([b"\x0bA", b"B\x1c", b"\rC"], [b"AB"]),  # trailer split across reads; C is noise
        ([b"\x0bA\x1c\r\x0bhalf"], [b"A", "IncompleteFrame"]),
        ([b"\x0bold-unterminated\x0bNEW\x1c\r"], [b"NEW"]),  # a new start block restarts
        # 0x1C followed by something other than CR ends the frame (senders that leave the CR
        # out); what follows, up to the next 0x0B, is noise between frames
        ([b"\x0bA\x1cX\x1c\r"], [b"A"]),
        ([b"\x0bA\x1c\x0bB\x1c"], [b"A", b"B"]),  # never a CR; the last one ends at EOF
        ([b"\x0b" + b"x" * 3000 + b"\x1c\r\x0bB\x1c\r"], ["FrameTooLarge", b"B"]),
        ([b"\x0b" + b"x" * 700, b"y" * 700, b"z" * 700 + b"\x1c", b"\r\x0bB\x1c\r"], ["FrameTooLarge", b"B"]),
        ([b"\x0b" + b"x" * 1024 + b"\x1c\r"], [b"x" * 1024]),  # exactly the limit is fine
        ([b"\x0b" + b"x" * 1025 + b"\x1c\r"], ["FrameTooLarge"]),
        ([b"\x0b" + b"x" * 3000], ["IncompleteFrame"]),  # oversize and cut off
        ([b"\r\n"], []),
    ],
)
async def test_frame_reader_streams(chunks: list[bytes], expected: list[object]) -> None:
    assert await frames_from(chunks) == expected


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"\x0bA\x0bB\x1c\r"], [b"A\x0bB"]),  # a 0x0B in the text is data
        ([b"\x0bA\x0b", b"B\x1c\r"], [b"A\x0bB"]),
        # 0x0B then MSH: the sender gave up on the frame and a new message begins
        ([b"\x0bMSH|cut\x0bMSH|NEW\x1c\r"], [b"MSH|NEW"]),
        ([b"\x0bMSH|cut\x0bM", b"SH|NEW\x1c\r"], [b"MSH|NEW"]),  # split across reads
        ([b"\x0bMSH|a\x0bnote\x1c\r\x0bMSH|b\x1c\r"], [b"MSH|a\x0bnote", b"MSH|b"]),
    ],
)
async def test_frame_reader_keeps_a_vertical_tab_as_data(chunks: list[bytes],
                                                         expected: list[object]) -> None:
    assert await frames_from(chunks, vt_in_frame="data") == expected


async def test_a_new_message_start_split_across_reads_is_still_seen() -> None:
    reader = asyncio.StreamReader()
    fr = FrameReader(reader, vt_in_frame="data")
    reader.feed_data(b"\x0bMSH|cut\x0bM")
    pending = asyncio.ensure_future(fr.read_frame())
    await asyncio.sleep(0.01)  # the reader has looked at the first bytes alone
    assert not pending.done()
    reader.feed_data(b"SH|NEW\x1c\r")
    reader.feed_eof()
    assert await asyncio.wait_for(pending, 2) == b"MSH|NEW"
    assert fr.restarted_frames == 1


async def test_frame_too_large_reports_size() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"\x0b" + b"Testpatient" * 500 + b"\x1c\r")
    reader.feed_eof()
    with pytest.raises(FrameTooLarge) as info:
        await FrameReader(reader, 1024).read_frame()
    assert info.value.size == 5500 and info.value.limit == 1024
    assert "Testpatient" not in str(info.value)  # sizes only, never content


# ------------------------------------------------------------------ listener over sockets


async def test_round_trip_and_stray_newline_between_frames(start: Callable[..., Awaitable[asyncio.Server]]) -> None:
    server = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    fr = FrameReader(reader)
    writer.write(frame(b"one") + b"\r\n" + b"\n" + frame(b"two"))
    assert await asyncio.wait_for(fr.read_frame(), 2) == b"ACK:one"
    assert await asyncio.wait_for(fr.read_frame(), 2) == b"ACK:two"
    writer.close()


async def test_oversize_is_rejected_then_same_connection_resyncs(start: Callable[..., Awaitable[asyncio.Server]]) -> None:
    seen: list[str] = []

    def on_oversize(peer: Peer, head: bytes) -> bytes:
        seen.append(str(peer))
        assert head.startswith(b"MMM")  # the frame's first bytes, to name it in the answer
        return b"REJECT:too-large"

    server = await start(max_frame_bytes=2048, on_oversize=on_oversize)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    fr = FrameReader(reader)
    big = frame(b"M" * 50_000)
    for i in range(0, len(big), 4096):  # dribble it so the reader sees it in pieces
        writer.write(big[i : i + 4096])
        await writer.drain()
    writer.write(frame(b"after"))
    assert await asyncio.wait_for(fr.read_frame(), 2) == b"REJECT:too-large"
    assert await asyncio.wait_for(fr.read_frame(), 2) == b"ACK:after"
    assert len(seen) == 1 and seen[0].startswith("127.0.0.1:")
    writer.close()


async def test_half_frame_then_disconnect_is_not_handled(start: Callable[..., Awaitable[asyncio.Server]]) -> None:
    handled: list[bytes] = []

    async def handler(payload: bytes, peer: Peer) -> bytes:
        handled.append(payload)
        return b"ok"

    server = await start(handler)
    _, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    writer.write(b"\x0bMSH|^~\\&|half a mess")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await eventually(lambda: connection_count(server) == 0, timeout=5)
    assert handled == []
    async with await open_connection("127.0.0.1", port_of(server), FAST) as conn:
        assert await conn.send(b"next") == b"ok"  # the listener is unaffected


async def test_many_concurrent_connections(start: Callable[..., Awaitable[asyncio.Server]]) -> None:
    async def slow_echo(payload: bytes, peer: Peer) -> bytes:
        await asyncio.sleep(0.001)
        return b"ACK:" + payload

    server = await start(slow_echo)
    port = port_of(server)

    async def one(i: int) -> list[bytes]:
        async with await open_connection("127.0.0.1", port, FAST) as conn:
            return [await conn.send(f"c{i}-m{j}".encode()) for j in range(20)]

    results = await asyncio.gather(*(one(i) for i in range(60)))
    for i, replies in enumerate(results):
        assert replies == [f"ACK:c{i}-m{j}".encode() for j in range(20)]


async def test_idle_timeout_closes_idle_connections(start: Callable[..., Awaitable[asyncio.Server]]) -> None:
    server = await start(idle_timeout=0.2)
    conn = await open_connection("127.0.0.1", port_of(server), FAST)
    assert await conn.send(b"x") == b"ACK:x"
    assert connection_count(server) == 1
    await eventually(lambda: connection_count(server) == 0, timeout=5)
    with pytest.raises(PeerClosed):
        await conn.send(b"y")  # the EHR side hung up: reconnect-and-resend, not a timeout
    await conn.close()


async def test_handler_error_closes_that_connection_only(start: Callable[..., Awaitable[asyncio.Server]]) -> None:
    async def handler(payload: bytes, peer: Peer) -> bytes:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        return b"ok"

    server = await start(handler)
    conn = await open_connection("127.0.0.1", port_of(server), FAST)
    with pytest.raises(PeerClosed):
        await conn.send(b"boom")
    assert conn.closed
    async with await open_connection("127.0.0.1", port_of(server), FAST) as again:
        assert await again.send(b"fine") == b"ok"


# ------------------------------------------------------------------ client errors


async def test_connect_refused_is_connect_failed() -> None:
    with pytest.raises(ConnectFailed):
        await open_connection("127.0.0.1", free_port(), FAST)  # a port nobody listens on


async def test_silent_peer_is_response_timeout_and_connection_closed(start: Callable[..., Awaitable[asyncio.Server]]) -> None:
    async def silent(payload: bytes, peer: Peer) -> None:
        return None

    server = await start(silent)
    conn = await open_connection(
        "127.0.0.1", port_of(server), ConnectionSettings(response_timeout_seconds=0.2)
    )
    t0 = time.perf_counter()
    with pytest.raises(ResponseTimeout):
        await conn.send(b"hello")
    assert 0.15 < time.perf_counter() - t0 < 10  # it fired (upper bound: a busy CI box)
    assert conn.closed  # a late ACK can never be read as the next message's answer
    with pytest.raises(PeerClosed):
        await conn.send(b"again")


async def test_peer_closing_after_read_is_peer_closed(start: Callable[..., Awaitable[asyncio.Server]]) -> None:
    async def hang_up(payload: bytes, peer: Peer) -> bytes:
        raise CloseConnection

    server = await start(hang_up)
    conn = await open_connection("127.0.0.1", port_of(server), FAST)
    with pytest.raises(PeerClosed) as info:
        await conn.send(b"hello")
    assert not info.value.partial_reply


async def test_peer_closing_mid_reply_is_peer_closed_partial() -> None:
    async def half_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await FrameReader(reader).read_frame()
        writer.write(b"\x0bMSH|^~\\&|half")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(half_reply, "127.0.0.1", 0)
    try:
        conn = await open_connection("127.0.0.1", port_of(server), FAST)
        with pytest.raises(PeerClosed) as info:
            await conn.send(b"hello")
        assert info.value.partial_reply
    finally:
        server.close()


async def test_client_rejects_oversize_reply() -> None:
    async def huge(payload: bytes, peer: Peer) -> bytes:
        return b"z" * 5000

    server = await serve(huge, "127.0.0.1", 0)
    try:
        conn = await open_connection(
            "127.0.0.1", port_of(server), ConnectionSettings(max_frame_bytes=1024)
        )
        with pytest.raises(FrameTooLarge):
            await conn.send(b"x")
        assert conn.closed
    finally:
        await shutdown(server)


def test_backoff_is_capped_exponential_with_jitter() -> None:
    b = Backoff(0.5, 30.0, rand=lambda: 0.5)  # rand 0.5 = no jitter
    assert [b.next() for _ in range(9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    b.reset()
    assert b.next() == 0.5
    low = Backoff(1.0, 100.0, jitter=0.2, rand=lambda: 0.0)
    high = Backoff(1.0, 100.0, jitter=0.2, rand=lambda: 0.999999)
    assert low.peek(3) == pytest.approx(3.2) and high.peek(3) == pytest.approx(4.8, rel=1e-4)
    assert high.peek(10_000) <= 100.0  # never above the cap, no overflow
    assert Backoff.from_settings(ConnectionSettings()).peek(1) <= 0.6


# ------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


async def test_tls_with_client_certificate(start: Callable[..., Awaitable[asyncio.Server]], certs: tuple[str, str]) -> None:
    cert, key = certs
    peers: list[Peer] = []

    async def handler(payload: bytes, peer: Peer) -> bytes:
        peers.append(peer)
        return b"ACK:" + payload

    ctx = server_ssl_context(cert, key, client_ca_file=cert, require_client_cert=True)
    server = await start(handler, ssl=ctx)
    tls = TlsSettings(enabled=True, ca_file=cert, cert_file=cert, key_file=key, server_hostname="localhost")
    async with await open_connection("127.0.0.1", port_of(server), ConnectionSettings(tls=tls)) as conn:
        assert await conn.send(b"secret") == b"ACK:secret"
        assert await conn.send(b"two") == b"ACK:two"
    assert peers[0].tls and peers[0].cert_subject == "localhost"


async def test_tls_untrusted_server_is_connect_failed(start: Callable[..., Awaitable[asyncio.Server]], certs: tuple[str, str]) -> None:
    cert, key = certs
    server = await start(ssl=server_ssl_context(cert, key))
    tls = TlsSettings(enabled=True)  # system CAs: our self-signed cert is not trusted
    with pytest.raises(ConnectFailed):
        await open_connection("127.0.0.1", port_of(server), ConnectionSettings(tls=tls))
    no_verify = TlsSettings(enabled=True, verify=False)  # explicit opt-out works
    async with await open_connection("127.0.0.1", port_of(server), ConnectionSettings(tls=no_verify)) as conn:
        assert await conn.send(b"x") == b"ACK:x"


async def test_stalled_tls_handshake_is_connect_timeout() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)  # accepts TCP, never speaks TLS

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    try:
        tls = TlsSettings(enabled=True, verify=False)
        settings = ConnectionSettings(connect_timeout_seconds=0.3, tls=tls)
        t0 = time.perf_counter()
        with pytest.raises(ConnectTimeout):
            await open_connection("127.0.0.1", port_of(server), settings)
        assert time.perf_counter() - t0 < 10  # the handshake timeout fired, not a hang
    finally:
        server.close()


# ------------------------------------------------------------------ speed

async def test_client_sets_tcp_keepalive(start: Callable[..., Awaitable[asyncio.Server]]) -> None:
    import socket

    server = await start()
    settings = ConnectionSettings(keepalive_idle_seconds=30, keepalive_interval_seconds=5, keepalive_count=3)
    async with await open_connection("127.0.0.1", port_of(server), settings) as conn:
        sock = conn._writer.get_extra_info("socket")  # noqa: SLF001 - inspecting the real socket
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    async with await open_connection("127.0.0.1", port_of(server), ConnectionSettings(keepalive=False)) as conn:
        sock = conn._writer.get_extra_info("socket")  # noqa: SLF001
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
