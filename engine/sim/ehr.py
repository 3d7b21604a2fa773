"""The EHR simulator: an MLLP listener that answers SIU like a legacy EHR, with faults on
demand: slow, AE every Nth (with errors or only warnings), AR on a field match, silent, wrong
MSA-2, hang-up (on every message or on a match), hang-up mid-ACK, duplicate ACKs, CA then AA,
a byte order mark and LF line ends, the error condition in MSA-6 (v2.3 style), duplicate key,
and at the socket: never read, read one byte a second, accept then reset.

Built for benchmarks too: MSH-10, MSH-9 and SCH-1 are cut from the bytes; a field is only
looked up when an `ar_match` rule asks for it. The JSON-lines log holds what the simulator
received (synthetic test data; the raw message only with `log_raw`).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import socket
import struct
import weakref
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.hl7.ack import build_ack, read_msh10
from engine.mllp.errors import FrameTooLarge, IncompleteFrame
from engine.mllp.framing import SB, FrameReader, frame
from engine.mllp.server import CloseConnection, Peer

_BOM = b"\xef\xbb\xbf"

_encode_str = json.encoder.encode_basestring_ascii


def _js(value: str | None) -> str:
    return "null" if value is None else str(_encode_str(value))


class SimPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delay_ms: int = Field(0, ge=0, description="wait this long before answering")
    ae_every: int = Field(0, ge=0, description="answer AE to every Nth message (0: never)")
    ae_error_code: str = Field("204", description="ERR-3 for the AE-every-Nth answers")
    ar_match: list[str] = Field(
        default_factory=list, description='AR when a field matches: "MSH-9.2=S26", "PID-5.1=Reject"'
    )
    ar_error_code: str | None = Field("201", description="ERR-3 of those ARs; None: AR without ERR")
    silent: bool = Field(False, description="read, never answer")
    wrong_msa2: bool = Field(False, description="answer AA with an MSA-2 that is not the MSH-10")
    close_after_read: bool = Field(False, description="read the message, then hang up")
    close_match: list[str] = Field(
        default_factory=list, description='hang up without answering when a field matches')
    close_mid_ack: bool = Field(False, description="send half of the ACK frame, then hang up")
    duplicate_ack: bool = Field(False, description="send every ACK twice")
    commit_then_app_ack: bool = Field(
        False, description="enhanced mode: a commit ACK (CA) and then the application ACK")
    bom: bool = Field(False, description="a UTF-8 byte order mark before the ACK's MSH")
    lf_line_ends: bool = Field(False, description="end the ACK's segments with LF, not CR")
    error_in_msa6: bool = Field(
        False, description="error condition in MSA-6 and no ERR segment (v2.1-2.4 style)")
    ae_severity: str = Field(
        "E", pattern="^[EWIF]$", description="ERR-4 of the AE answers: W or I are warnings")
    never_read: bool = Field(False, description="accept connections, never read from them")
    read_bytes_per_second: float = Field(
        0, ge=0, description="read this slowly, one byte at a time (0: at full speed)")
    accept_then_reset: bool = Field(False, description="accept, then reset the connection")
    duplicate_key_ae: bool = Field(
        False,
        description="AE ERR-3 205 for an MSH-10 already seen (default: AA, logged as a repeat)",
    )
    log_raw: bool = Field(
        False, description="include the raw message in the log (synthetic data only)"
    )
    sending_application: str = "LEGACY_EHR"
    sending_facility: str = "ACME_CLINIC"
    encoding: str = "utf-8"
    max_frame_bytes: int = Field(1_048_576, ge=1024)
    idle_timeout_seconds: float | None = Field(None, gt=0)

    @field_validator("encoding")
    @classmethod
    def _check_encoding(cls, name: str) -> str:
        try:  # refused at load time rather than failing on every message
            codecs.lookup(name)
        except LookupError:
            raise ValueError(f"unknown encoding {name!r}") from None
        return name

    @field_validator("ar_match", "close_match")
    @classmethod
    def _check_rules(cls, rules: list[str]) -> list[str]:
        for rule in rules:
            FieldRule.parse(rule)
        return rules


@dataclass(frozen=True, slots=True)
class FieldRule:
    """SEG-F[.C[.S]]=VALUE against the first such segment, first repetition."""

    segment: str
    field: int
    component: int | None
    subcomponent: int | None
    value: str

    @classmethod
    def parse(cls, text: str) -> FieldRule:
        path, sep, value = text.partition("=")
        seg, dash, rest = path.strip().partition("-")
        parts = rest.split(".")
        numeric = all(p.isdigit() for p in parts) and len(parts) <= 3
        if not sep or not dash or len(seg) != 3 or not seg.isalnum() or not numeric:
            raise ValueError(
                f"bad field rule {text!r}; expected e.g. MSH-9.2=S26 or PID-5.1=Reject"
            )
        nums = [int(p) for p in parts] + [0, 0]
        if nums[0] < 1:
            raise ValueError(f"bad field number in {text!r}")
        return cls(seg.upper(), nums[0], nums[1] or None, nums[2] or None, value)

    def matches(self, message: bytes, encoding: str) -> bool:
        found = field_value(
            message, self.segment, self.field, self.component, self.subcomponent, encoding
        )
        return found == self.value


def _segment(message: bytes, name: str, fs: bytes) -> bytes | None:
    if name == "MSH":
        end = message.find(b"\r")
        return message[: end if end >= 0 else len(message)]
    key = b"\r" + name.encode() + fs
    start = message.find(key)
    if start < 0:
        return None
    start += 1
    end = message.find(b"\r", start)
    return message[start : end if end >= 0 else len(message)]


def field_value(
    message: bytes,
    segment: str,
    field: int,
    component: int | None = None,
    subcomponent: int | None = None,
    encoding: str = "utf-8",
) -> str | None:
    """Raw value at SEG-F.C.S (first segment, first repetition), None when absent."""
    if len(message) < 8 or not message.startswith(b"MSH"):
        return None
    fs = message[3:4]
    enc = message[4:8].decode("ascii", "replace")
    seg = _segment(message, segment, fs)
    if seg is None:
        return None
    fields = seg.split(fs)
    idx = field - 1 if segment == "MSH" else field  # MSH-1 is the separator itself
    if segment == "MSH" and field == 1:
        return fs.decode()
    if idx >= len(fields):
        return None
    value = fields[idx].decode(encoding, "replace")
    if segment == "MSH" and field == 2:
        return value
    value = value.split(enc[1], 1)[0] if len(enc) > 1 else value
    if component is not None:
        comps = value.split(enc[0])
        if component > len(comps):
            return None
        value = comps[component - 1]
        if subcomponent is not None:
            subs = value.split(enc[3]) if len(enc) > 3 else [value]
            if subcomponent > len(subs):
                return None
            value = subs[subcomponent - 1]
    return value


class EhrSimulator:
    """Message handler + log; `start()` puts it on a socket."""

    def __init__(self, policy: SimPolicy, log_path: str | Path | None = None) -> None:
        self.policy = policy
        self._tz: tzinfo | None = datetime.now().astimezone().tzinfo  # local zone, once
        self._log_fd: int | None = (
            os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if log_path is not None
            else None
        )
        self.seen: set[str] = set()
        self.received = 0
        self.acks: dict[str, int] = {}  # ack code (or silent/closed) -> count
        self.connections = 0  # accepted, in all
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def policy(self) -> SimPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: SimPolicy) -> None:
        # swappable while running (tests turn a fault off mid-run); rules compiled once here
        self._policy = policy
        self._rules = [FieldRule.parse(r) for r in policy.ar_match]
        self._close_rules = [FieldRule.parse(r) for r in policy.close_match]
        self._delay = policy.delay_ms / 1000.0
        self._multi = policy.close_mid_ack or policy.commit_then_app_ack or policy.duplicate_ack

    async def handle(self, message: bytes, peer: Peer) -> bytes | None:
        """The reply payload for one message (None: no reply); raises CloseConnection to
        hang up. Replies that are more than one frame, or part of one, are `answer`'s."""
        p = self.policy
        self.received += 1
        n = self.received
        msh10 = read_msh10(message)
        repeat = msh10 is not None and msh10 in self.seen
        if msh10 is not None:
            self.seen.add(msh10)
        code: str | None
        err: str | None = None
        if p.close_after_read or (
                self._close_rules and any(r.matches(message, p.encoding)
                                          for r in self._close_rules)):
            self._record(message, peer, msh10, "closed", repeat)
            raise CloseConnection
        if p.silent:
            self._record(message, peer, msh10, "silent", repeat)
            return None
        if self._delay:
            await asyncio.sleep(self._delay)
        msa2: str | None = None
        if p.wrong_msa2:
            code, msa2 = "AA", f"WRONG-{n}"
        elif repeat and p.duplicate_key_ae:
            code, err = "AE", "205"
        elif self._rules and any(r.matches(message, p.encoding) for r in self._rules):
            code, err = "AR", p.ar_error_code
        elif p.ae_every and n % p.ae_every == 0:
            code, err = "AE", p.ae_error_code
        else:
            code = "AA"
        ack = build_ack(
            message,
            code,
            error_code=err,
            sending_application=p.sending_application,
            sending_facility=p.sending_facility,
            now=datetime.now(self._tz),
            encoding=p.encoding,
            msa2=msa2,
            err_segment=err is not None or code == "AE",
            error_in_msa6=p.error_in_msa6 and err is not None,
            severity=p.ae_severity if code == "AE" else "E",
        )
        self._record(message, peer, msh10, code, repeat)
        return self._shape(ack)

    def _shape(self, ack: str) -> bytes:
        p = self.policy
        if p.lf_line_ends:
            ack = ack.replace("\r", "\n")
        data = ack.encode(p.encoding)
        return _BOM + data if p.bom else data

    async def answer(self, message: bytes, peer: Peer) -> list[bytes] | None:
        """The frames (framed bytes) to write for one message; None: hang up."""
        try:
            reply = await self.handle(message, peer)
        except CloseConnection:
            return None
        if reply is None:
            return []
        p = self.policy
        if not self._multi:
            return [frame(reply)]
        if p.close_mid_ack:
            return [SB + reply[: max(1, len(reply) // 2)], b""]  # b"": then hang up
        if p.commit_then_app_ack:
            msa2 = read_msh10(message) or ""
            commit = build_ack(message, "CA", sending_application=p.sending_application,
                               sending_facility=p.sending_facility,
                               now=datetime.now(self._tz), encoding=p.encoding,
                               msa2=None if not p.wrong_msa2 else f"WRONG-{msa2}")
            return [frame(self._shape(commit)), frame(reply)]
        if p.duplicate_ack:
            return [frame(reply), frame(reply)]
        return [frame(reply)]

    def _record(
        self, message: bytes, peer: Peer, msh10: str | None, ack: str, repeat: bool
    ) -> None:
        self.acks[ack] = self.acks.get(ack, 0) + 1
        if self._log_fd is None:
            return
        enc = self.policy.encoding
        # hand-built JSON (C string encoder) + one unbuffered write: a third of json.dumps +
        # write + flush, and every line is on disk when the reply leaves
        line = (
            f'{{"time":{_js(datetime.now(self._tz).isoformat(timespec="milliseconds"))}'
            f',"peer":{_js(str(peer))},"msh10":{_js(msh10)}'
            f',"type":{_js(field_value(message, "MSH", 9, encoding=enc))}'
            f',"sch1":{_js(field_value(message, "SCH", 1, encoding=enc))}'
            f',"ack":{_js(ack)},"repeat":{"true" if repeat else "false"}'
        )
        if self.policy.log_raw:
            line += f',"raw":{_js(message.decode(enc, "replace"))}'
        os.write(self._log_fd, (line + "}\n").encode("ascii"))

    async def start(self, host: str, port: int) -> asyncio.Server:
        # its own connection loop, not engine.mllp.server's: the faults below the message
        # (half frames, two frames, never reading, resets) need the socket
        server = await asyncio.start_server(self._connection, host, port, backlog=100,
                                            limit=65_536)
        _SIMS[server] = self
        return server

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # a strong reference, and stop() ends it
        self.connections += 1
        addr = writer.get_extra_info("peername")
        peer = Peer(str(addr[0]), int(addr[1])) if isinstance(addr, tuple) else Peer(str(addr), 0)
        try:
            await self._converse(reader, writer, peer)
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            if not writer.is_closing():
                writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        peer: Peer) -> None:
        p = self.policy
        if p.accept_then_reset:
            _reset(writer)
            return
        transport = cast(asyncio.Transport, writer.transport)
        if p.never_read:
            transport.pause_reading()  # what the kernel buffers, and no more
            await asyncio.Event().wait()  # until stopped
        source: asyncio.StreamReader | _SlowReader = reader
        if p.read_bytes_per_second:
            transport.pause_reading()
            source = _SlowReader(reader, transport, p.read_bytes_per_second)
        frames = FrameReader(source, p.max_frame_bytes)  # type: ignore[arg-type]
        while True:
            idle = self.policy.idle_timeout_seconds
            try:
                if idle is None:  # no timeout context per message on the benchmarks' path
                    payload = await frames.read_frame()
                else:
                    async with asyncio.timeout(idle):
                        payload = await frames.read_frame()
            except (TimeoutError, IncompleteFrame):
                return
            except FrameTooLarge:
                continue
            if payload is None:
                return
            replies = await self.answer(payload, peer)
            if replies is None:
                return
            for reply in replies:
                if not reply:  # the half frame went out: hang up
                    await writer.drain()
                    _reset(writer)
                    return
                writer.write(reply)
            if writer.transport.get_write_buffer_size() > 65_536:
                await writer.drain()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def close(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None


_SIMS: weakref.WeakKeyDictionary[asyncio.Server, EhrSimulator] = weakref.WeakKeyDictionary()


async def run_sim(
    host: str, port: int, policy: SimPolicy, log_path: str | Path | None = None
) -> asyncio.Server:
    """Start a simulated EHR; stop it with `stop_sim(server)` (closes the log too)."""
    return await EhrSimulator(policy, log_path).start(host, port)


def simulator_of(server: asyncio.Server) -> EhrSimulator | None:
    """The simulator behind a server from run_sim (counters, seen MSH-10s)."""
    return _SIMS.get(server)


async def stop_sim(server: asyncio.Server) -> None:
    server.close()
    sim = _SIMS.pop(server, None)
    if sim is not None:
        await sim.stop()
        sim.close()
    await server.wait_closed()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), dropping whatever is unsent."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _SlowReader:
    """A reader that takes one byte per 1/rate seconds from the socket: the transport is
    paused and resumed for each byte, so the sender's data waits in the kernel buffers."""

    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.Transport,
                 rate: float) -> None:
        self._reader = reader
        self._transport = transport
        self._interval = 1.0 / rate

    async def read(self, n: int = -1) -> bytes:
        await asyncio.sleep(self._interval)
        if not self._reader._buffer and not self._reader.at_eof():  # type: ignore[attr-defined]
            self._transport.resume_reading()
            data = await self._reader.read(1)
            self._transport.pause_reading()
            return data
        return await self._reader.read(1)
