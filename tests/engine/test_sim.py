"""The EHR simulator over real sockets, driven by engine.mllp's client."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from engine.cli.sim import policy_from_args, register
from engine.hl7.ack import AckInfo, parse_ack
from engine.mllp import PeerClosed, ResponseTimeout, open_connection
from engine.mllp.client import MLLPConnection
from engine.mllp.settings import ConnectionSettings
from engine.sim.ehr import FieldRule, SimPolicy, field_value, run_sim, simulator_of, stop_sim
from tests.conftest import FIXTURES

S12_FIXTURE = FIXTURES / "hl7" / "siu_s12_v251.hl7"
SETTINGS = ConnectionSettings(connect_timeout_seconds=2, response_timeout_seconds=2)


def s12() -> bytes:
    return S12_FIXTURE.read_bytes()


def msg(control_id: str, *, event: str = "S12", family: str = "Probewell") -> bytes:
    m = s12().replace(b"S12-20261005-000017", control_id.encode(), 1)
    m = m.replace(b"SIU^S12^", f"SIU^{event}^".encode(), 1)
    return m.replace(b"Probewell^Lena", f"{family}^Lena".encode(), 1)


Sim = Callable[..., Awaitable[tuple[MLLPConnection, Path]]]


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Sim]:
    servers: list[asyncio.Server] = []
    conns: list[MLLPConnection] = []

    async def _start(settings: ConnectionSettings = SETTINGS, **policy: object) -> tuple[MLLPConnection, Path]:
        log = tmp_path / f"sim{len(servers)}.jsonl"
        server = await run_sim("127.0.0.1", 0, SimPolicy(**policy), log)  # type: ignore[arg-type]
        servers.append(server)
        conn = await open_connection("127.0.0.1", server.sockets[0].getsockname()[1], settings)
        conns.append(conn)
        return conn, log

    yield _start
    for c in conns:
        await c.close()
    for s in servers:
        await stop_sim(s)


def lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text("utf-8").splitlines()]


async def send(conn: MLLPConnection, control_id: str, **kw: str) -> AckInfo:
    return parse_ack(await conn.send(msg(control_id, **kw)))


async def test_default_acks_aa_and_logs_without_raw(sim: Sim) -> None:
    conn, log = await sim()
    info = await send(conn, "C-1")
    assert (info.code, info.control_id, info.parse_error) == ("AA", "C-1", None)
    assert info.message_type == "ACK^S12^ACK" and info.version == "2.5.1"
    [entry] = lines(log)
    assert entry["msh10"] == "C-1" and entry["type"] == "SIU^S12^SIU_S12"
    assert entry["sch1"] == "EcVcNhWTKwptsHL3bfEcnZ^CALCOM"
    assert entry["ack"] == "AA" and entry["repeat"] is False
    assert str(entry["peer"]).startswith("127.0.0.1:") and "T" in str(entry["time"])
    assert "raw" not in entry and "Probewell" not in log.read_text()


async def test_log_raw_when_asked(sim: Sim) -> None:
    conn, log = await sim(log_raw=True)
    await send(conn, "C-1")
    assert "Probewell^Lena" in str(lines(log)[0]["raw"])


async def test_ae_every_nth(sim: Sim) -> None:
    conn, log = await sim(ae_every=3)
    codes = [(await send(conn, f"C-{i}")) for i in range(1, 10)]
    assert [c.code for c in codes] == ["AA", "AA", "AE"] * 3
    assert codes[2].error_codes == ("204",) and codes[2].control_id == "C-3"
    assert [e["ack"] for e in lines(log)] == ["AA", "AA", "AE"] * 3


@pytest.mark.parametrize(
    ("rule", "hit", "miss"),
    [
        ("MSH-9.2=S26", {"event": "S26"}, {"event": "S12"}),
        ("PID-5.1=Reject", {"family": "Reject"}, {"family": "Probewell"}),
    ],
)
async def test_ar_when_field_matches(sim: Sim, rule: str, hit: dict[str, str], miss: dict[str, str]) -> None:
    conn, _ = await sim(ar_match=[rule])
    rejected = await send(conn, "C-1", **hit)
    assert (rejected.code, rejected.control_id, rejected.error_codes) == ("AR", "C-1", ("201",))
    assert (await send(conn, "C-2", **miss)).code == "AA"


async def test_ar_without_err_when_code_is_none(sim: Sim) -> None:
    conn, _ = await sim(ar_match=["MSH-9.2=S26"], ar_error_code=None)
    info = await send(conn, "C-1", event="S26")
    assert (info.code, info.error_codes) == ("AR", ())


async def test_silent_is_response_timeout(sim: Sim, tmp_path: Path) -> None:
    conn, log = await sim(ConnectionSettings(response_timeout_seconds=0.3), silent=True)
    with pytest.raises(ResponseTimeout):
        await send(conn, "C-1")
    assert conn.closed
    assert lines(log)[0]["ack"] == "silent"


async def test_wrong_msa2(sim: Sim) -> None:
    conn, _ = await sim(wrong_msa2=True)
    info = await send(conn, "C-1")
    assert info.code == "AA" and info.control_id not in (None, "C-1")


async def test_close_after_read_is_peer_closed(sim: Sim) -> None:
    conn, log = await sim(close_after_read=True)
    with pytest.raises(PeerClosed):
        await send(conn, "C-1")
    assert lines(log)[0] == {**lines(log)[0], "msh10": "C-1", "ack": "closed"}


async def test_delay(sim: Sim) -> None:
    conn, _ = await sim(delay_ms=150)
    t0 = asyncio.get_running_loop().time()
    assert (await send(conn, "C-1")).code == "AA"
    assert asyncio.get_running_loop().time() - t0 >= 0.14


async def test_repeats_are_acked_and_recorded_by_default(sim: Sim) -> None:
    conn, log = await sim()
    assert [(await send(conn, c)).code for c in ("C-1", "C-2", "C-1")] == ["AA", "AA", "AA"]
    assert [e["repeat"] for e in lines(log)] == [False, False, True]


async def test_duplicate_key_ae(sim: Sim) -> None:
    conn, log = await sim(duplicate_key_ae=True)
    assert (await send(conn, "C-1")).code == "AA"
    again = await send(conn, "C-1")
    assert (again.code, again.control_id, again.error_codes) == ("AE", "C-1", ("205",))
    assert [(e["ack"], e["repeat"]) for e in lines(log)] == [("AA", False), ("AE", True)]


async def test_counters_and_many_connections(tmp_path: Path) -> None:
    server = await run_sim("127.0.0.1", 0, SimPolicy(), tmp_path / "log.jsonl")
    port = server.sockets[0].getsockname()[1]
    try:
        async def client(i: int) -> list[str | None]:
            async with await open_connection("127.0.0.1", port, SETTINGS) as c:
                return [(await send(c, f"K{i}-{j}")).code for j in range(10)]

        results = await asyncio.gather(*(client(i) for i in range(10)))
        assert all(r == ["AA"] * 10 for r in results)
        sim_obj = simulator_of(server)
        assert sim_obj is not None and sim_obj.received == 100 and sim_obj.acks == {"AA": 100}
        assert len(sim_obj.seen) == 100
    finally:
        await stop_sim(server)
    assert len(lines(tmp_path / "log.jsonl")) == 100


# ------------------------------------------------------------------ fields, config, CLI


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("MSH", 1), "|"), (("MSH", 2), "^~\\&"), (("MSH", 9), "SIU^S12^SIU_S12"),
        (("MSH", 9, 2), "S12"), (("MSH", 10), "S12-20261005-000017"),
        (("PID", 5, 1), "Probewell"), (("PID", 3, 1), "SYN-031907"),  # first repetition
        (("PID", 3, 4, 1), "ACME"), (("ZZZ", 1), None), (("PID", 99), None), (("PID", 5, 40), None),
    ],
)
def test_field_value(path: tuple[object, ...], expected: str | None) -> None:
    assert field_value(s12(), *path) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["PID5=1", "PID-x=1", "PI-5=1", "PID-5.1", "PID-0=1", "PID-1.2.3.4=x"])
def test_bad_rules_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        FieldRule.parse(bad)
    with pytest.raises(ValueError):
        SimPolicy(ar_match=[bad])


def test_cli_register_and_policy() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args([
        "sim-ehr", "--port", "0", "--delay-ms", "5", "--ae-every", "4", "--ar-match", "MSH-9.2=S26",
        "--ar-match", "PID-5.1=Reject", "--silent", "--wrong-msa2", "--close-after-read",
        "--duplicate-key-ae", "--log", "x.jsonl",
    ])
    assert callable(args.func) and args.log == "x.jsonl" and args.host == "127.0.0.1"
    p = policy_from_args(args)
    assert (p.delay_ms, p.ae_every, p.ar_match) == (5, 4, ["MSH-9.2=S26", "PID-5.1=Reject"])
    assert p.silent and p.wrong_msa2 and p.close_after_read and p.duplicate_key_ae


async def test_cli_process_runs_until_sigterm(tmp_path: Path) -> None:
    import sys

    log = tmp_path / "cli.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.cli.sim", "sim-ehr", "--port", "0", "--log", str(log),
        cwd=Path(__file__).resolve().parents[2], stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 10)).decode()
        port = int(line.strip().rsplit(":", 1)[1])
        async with await open_connection("127.0.0.1", port, SETTINGS) as conn:
            assert (await send(conn, "CLI-1")).code == "AA"
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert lines(log)[0]["msh10"] == "CLI-1"


async def test_policy_can_be_swapped_while_running(tmp_path: Path) -> None:
    server = await run_sim("127.0.0.1", 0, SimPolicy(ar_match=["MSH-9.2=S12"]), None)
    try:
        async with await open_connection("127.0.0.1", server.sockets[0].getsockname()[1], SETTINGS) as c:
            assert (await send(c, "C-1")).code == "AR"
            sim_obj = simulator_of(server)
            assert sim_obj is not None
            sim_obj.policy = SimPolicy()
            assert (await send(c, "C-2")).code == "AA"
    finally:
        await stop_sim(server)


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError):
        SimPolicy(encoding="no-such-codec")


# ------------------------------------------------------------------ hostile EHRs, raw socket


async def raw_exchange(
    port: int, payload: bytes, *, frames: int = 1, timeout: float = 3.0
) -> list[bytes | None]:
    """Write one frame with a plain socket; read up to `frames` reply frames (None: EOF)."""
    from engine.mllp.framing import FrameReader, frame

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(frame(payload))
        await writer.drain()
        got: list[bytes | None] = []
        frames_in = FrameReader(reader)
        async with asyncio.timeout(timeout):
            for _ in range(frames):
                got.append(await frames_in.read_frame())
        return got
    finally:
        writer.transport.abort()


@pytest.fixture
async def sim_port(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def _start(**policy: object) -> int:
        sim_policy = SimPolicy(**policy)  # type: ignore[arg-type]
        server = await run_sim("127.0.0.1", 0, sim_policy, tmp_path / "raw.jsonl")
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield _start
    for s in servers:
        await stop_sim(s)


async def test_duplicate_ack_sends_the_same_ack_twice(
        sim_port: Callable[..., Awaitable[int]]) -> None:
    first, second = await raw_exchange(await sim_port(duplicate_ack=True), msg("D-1"), frames=2)
    assert first == second and parse_ack(first or b"").control_id == "D-1"


async def test_commit_then_application_ack(sim_port: Callable[..., Awaitable[int]]) -> None:
    ca, aa = await raw_exchange(await sim_port(commit_then_app_ack=True), msg("E-1"), frames=2)
    assert [(a.code, a.control_id) for a in map(parse_ack, (ca or b"", aa or b""))] == [
        ("CA", "E-1"), ("AA", "E-1")]


async def test_close_mid_ack_leaves_half_a_frame(sim_port: Callable[..., Awaitable[int]]) -> None:
    from engine.mllp.errors import IncompleteFrame

    with pytest.raises((IncompleteFrame, ConnectionResetError)):
        await raw_exchange(await sim_port(close_mid_ack=True), msg("H-1"))


async def test_close_match_hangs_up_on_that_message_only(
        sim_port: Callable[..., Awaitable[int]]) -> None:
    port = await sim_port(close_match=["MSH-9.2=S15"])
    assert await raw_exchange(port, msg("M-1", event="S15")) == [None]
    [reply] = await raw_exchange(port, msg("M-2"))
    assert parse_ack(reply or b"").code == "AA"


async def test_bom_and_lf_line_ends(sim_port: Callable[..., Awaitable[int]]) -> None:
    [reply] = await raw_exchange(await sim_port(bom=True, lf_line_ends=True), msg("B-1"))
    assert reply is not None and reply.startswith(b"\xef\xbb\xbfMSH|") and b"\r" not in reply
    assert b"\nMSA|AA|B-1" in reply


async def test_error_condition_in_msa6(sim_port: Callable[..., Awaitable[int]]) -> None:
    port = await sim_port(ar_match=["MSH-9.2=S12"], ar_error_code="201", error_in_msa6=True)
    [reply] = await raw_exchange(port, msg("V-1"))
    segments = (reply or b"").decode().split("\r")
    msa = next(s for s in segments if s.startswith("MSA")).split("|")
    assert msa[1:3] == ["AR", "V-1"] and msa[6].split("^")[0] == "201"
    assert not any(s.startswith("ERR") for s in segments)


async def test_ae_with_warnings_only(sim_port: Callable[..., Awaitable[int]]) -> None:
    [reply] = await raw_exchange(await sim_port(ae_every=1, ae_severity="W"), msg("W-1"))
    err = next(s for s in (reply or b"").decode().split("\r") if s.startswith("ERR"))
    assert err.split("|")[4] == "W"


async def test_accept_then_reset(sim_port: Callable[..., Awaitable[int]]) -> None:
    port = await sim_port(accept_then_reset=True)
    try:
        got = await raw_exchange(port, msg("R-1"))
    except (ConnectionResetError, BrokenPipeError):
        return  # reset
    assert got == [None]  # no answer either way


async def test_never_read_leaves_a_large_write_pending(
        sim_port: Callable[..., Awaitable[int]]) -> None:
    port = await sim_port(never_read=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\x0b" + b"x" * 16_000_000)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await writer.drain()
    finally:
        writer.transport.abort()


async def test_slow_reader_answers_only_after_reading_every_byte(
        sim_port: Callable[..., Awaitable[int]]) -> None:
    port = await sim_port(read_bytes_per_second=50)  # a message of ~300 bytes: ~6 s
    with pytest.raises(TimeoutError):
        await raw_exchange(port, msg("S-1"), timeout=0.5)


def test_cli_hostile_flags() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="verb"))
    p = policy_from_args(parser.parse_args([
        "sim-ehr", "--close-match", "MSH-9.2=S15", "--close-mid-ack", "--duplicate-ack",
        "--ca-then-aa", "--bom", "--lf", "--msa6", "--ae-severity", "W", "--never-read",
        "--read-bytes-per-second", "1", "--accept-then-reset",
    ]))
    assert p.close_match == ["MSH-9.2=S15"] and p.close_mid_ack and p.duplicate_ack
    assert p.commit_then_app_ack and p.bom and p.lf_line_ends and p.error_in_msa6
    assert p.ae_severity == "W" and p.never_read and p.read_bytes_per_second == 1
    assert p.accept_then_reset
