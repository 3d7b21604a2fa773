"""The MLLP listener for SIU from the EHRs: check, commit durably, and only then answer AA.

Per frame, in order:
1. MSH present and usable (field separator, four distinct encoding characters, or five from
   v2.7: `^~\\&#`) -> else AE; MSH-18, when given, names a character set we read -> else
   AE 103.
2. MSH-3 is our own sending application -> AA and nothing else (an echo of our own SIU).
3. MSH-9 is SIU -> else AR 200; MSH-11 is a processing id this listener takes (`P` unless set
   up otherwise) -> else AR 202, nothing stored; the sender (MSH-3.1 / MSH-4.1) has an inbound
   channel -> else AR 200; the trigger is one that channel takes -> else AR 201.
4. MSH-10 present; body decodes in its charset (MSH-18, else the channel's: the ACK is
   written in the same one and echoes MSH-18); SCH-1/2 appointment id, times (for
   S12/S13/S14) and a provider we map (AIP-3.1 / SCH-16.1) -> else AE (ERR-3 101/102/204).
5. The message and its Cal.com job are committed in one grouped transaction; then AA with
   MSA-2 = MSH-10. A resend (same sender, MSH-10 and content, MSH-7 aside) gets the same AA
   and no second job; the same MSH-10 with other content is a new message (stored, AA,
   counted and logged as a reused control id).
   A store failure answers AR 207 (a passing condition: the EHR resends).
An oversize frame is answered AE (the framing layer resyncs on the next frame) and the
connection stays open. Nothing here closes a connection instead of answering.

Logs carry channel, trigger, MSH-10 and error codes only: never a field value of the message.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_mod
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from engine.config.inbound import InboundConfig
from engine.hl7.ack import build_ack, read_msh10
from engine.hl7.escape import codec_name, msh18_codec
from engine.inbound.siu import MshInfo, SiuError, read_content, read_msh, segments
from engine.metrics import Metrics
from engine.mllp.framing import DEFAULT_MAX_FRAME_BYTES, VtInFrame
from engine.mllp.server import DEFAULT_MAX_CONNECTIONS, DEFAULT_WRITE_TIMEOUT, Peer, serve
from engine.store.inbound_records import InboundMessage
from engine.store.roles import InboundStore

log = logging.getLogger("calhl7.inbound.listener")

_ZONES: dict[str, ZoneInfo] = {}
_TIMED_ACTIONS = frozenset({"create", "move", "move_if_times_changed"})
# MSH-11 values a listener takes unless told otherwise: production only, so a test system
# pointed at production is refused (AR 202) instead of blocking real calendars
DEFAULT_PROCESSING_IDS = ("P",)


def _zone(name: str) -> ZoneInfo:
    z = _ZONES.get(name)
    if z is None:
        z = _ZONES[name] = ZoneInfo(name)
    return z


class InboundHandler:
    """The per-frame logic, separate from the socket so it can be driven directly too."""

    def __init__(self, store: InboundStore, config_getter: Callable[[], InboundConfig],
                 metrics: Metrics, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 processing_ids: Iterable[str] = DEFAULT_PROCESSING_IDS) -> None:
        self.store = store
        self.processing_ids = tuple(processing_ids)
        self.config = config_getter
        self.metrics = metrics
        self.max_frame_bytes = max_frame_bytes
        self.on_accepted: Callable[[], None] = lambda: None  # wakes the worker
        self._counters: dict[str, Any] = {}
        self._ts_second = 0
        self._ts = ""
        self._seq = 0

    def _ack(self, frame: bytes | str, code: str, outcome: str, *, error: SiuError | None = None,
             cs: _Charset | None = None, msa2: str | None = None) -> bytes:
        """An ACK in the sender's character set (MSH-18 echoed when the sender gave one)."""
        self._counter(outcome).inc()
        cs = cs or _UTF8
        now = datetime.now(UTC)
        if error is None:
            text = build_ack(frame, code, now=now, encoding=cs.codec, charset=cs.msh18, msa2=msa2)
        else:
            text = build_ack(frame, error.ack, error_code=error.code, error_text=error.text,
                             error_location=error.location or None, now=now,
                             encoding=cs.codec, charset=cs.msh18, msa2=msa2)
        return text.encode(cs.codec, "replace")

    def _counter(self, outcome: str) -> Any:
        c = self._counters.get(outcome)
        if c is None:
            c = self._counters[outcome] = self.metrics.listener.labels(outcome)
        return c

    def _fast_aa(self, msh: MshInfo, outcome: str, cs: _Charset) -> bytes:
        """The AA of the hot path, for messages written with the standard delimiters: the
        same bytes build_ack makes (sender/receiver swapped, version and processing id kept),
        without parsing the MSH a second time. Field values are copied as they came: with
        standard delimiters they are already valid ER7, and as the MSH was read as 8859-1,
        encoding in 8859-1 gives back the sender's own bytes, in the sender's charset."""
        self._counter(outcome).inc()
        f = msh.fields
        second = int(time.time())
        if second != self._ts_second:
            self._ts_second = second
            self._ts = datetime.fromtimestamp(second, UTC).strftime("%Y%m%d%H%M%S%z")
        ts = self._ts
        version = msh.version or "2.5.1"
        trigger = msh.trigger
        if version in ("2.1", "2.2", "2.3"):
            mtype = f"ACK^{trigger}" if trigger else "ACK"
        else:
            mtype = f"ACK^{trigger}^ACK" if trigger else "ACK"
        self._seq = (self._seq + 1) % 100_000
        control = f"L{ts[2:14]}{self._seq:05d}"

        def g(i: int) -> str:
            return f[i - 1] if i - 1 < len(f) else ""

        processing = g(11) or "P"
        msh18 = f"||||||{cs.msh18}" if cs.msh18 else ""
        return (f"MSH|^~\\&|{g(5)}|{g(6)}|{g(3)}|{g(4)}|{ts}||{mtype}|{control}|{processing}|"
                f"{version}{msh18}\rMSA|AA|{msh.control_id}\r").encode("latin-1")

    def oversize(self, peer: Peer, head: bytes) -> bytes:
        err = SiuError("AE", "102", f"frame exceeds the {self.max_frame_bytes}-byte limit: not "
                                    "stored; send it in smaller messages")
        log.warning("inbound frame too large", extra={"peer": str(peer)})
        # answered for the message it began with (its MSH, MSH-10), so the sender can match it
        msh = head if head.lstrip(b"\r\n\x00 ").startswith(b"MSH") else b""
        return self._ack(msh, "AE", "oversize", error=err, msa2=(read_msh10(head) or "")[:199])

    async def handle(self, frame: bytes, peer: Peer) -> bytes:
        try:
            return await self._handle(frame)
        except Exception as exc:  # noqa: BLE001 - answer, never hang up silently
            log.error("inbound handler failed", extra={"error": type(exc).__name__})
            err = SiuError("AR", "207", "internal error; resend later")
            try:
                return self._ack(frame, "AR", "error", error=err)
            except Exception:  # noqa: BLE001 - even the MSH was unusable
                return self._ack(b"", "AR", "error", error=err)

    async def _handle(self, frame: bytes) -> bytes:
        ascii_only = frame.isascii()
        try:
            msh, segs = read_msh(frame.decode("latin-1"))  # latin-1 never fails: MSH is ASCII
        except SiuError as e:
            log.info("inbound message unreadable", extra={"code": e.code})
            return self._ack(frame if frame.lstrip(b"\r\n\x00 ").startswith(b"MSH") else b"",
                             "AE", "error", error=e, msa2=(read_msh10(frame) or "")[:199])
        cs = _UTF8
        if msh.charset:  # MSH-18 says how this message is written: it wins over the channel's
            codec = msh18_codec(msh.charset)
            if codec is None:
                return self._error(frame, SiuError(
                    "AE", "103", f"MSH-18 character set {msh.charset[:20]} is not supported; "
                                 "send ASCII, 8859/n or UNICODE UTF-8", ("MSH", 1, 18)))
            cs = _Charset(codec, msh.charset, msh.charset)
        cfg = self.config()
        if msh.application in cfg.own_applications:
            return self._ack(frame, "AA", "echo", cs=cs)  # our own SIU came back: not processed
        if msh.message_type != "SIU":
            return self._reject(frame, SiuError(
                "AR", "200", f"message type {msh.message_type[:10] or '(empty)'} is not taken "
                             "on this interface", ("MSH", 1, 9, 1)), cs)
        if msh.processing_id not in self.processing_ids:
            return self._reject(frame, SiuError(
                "AR", "202", f"MSH-11 processing id {msh.processing_id[:3] or '(empty)'} is not "
                             f"taken here (this listener takes {'/'.join(self.processing_ids)})",
                ("MSH", 1, 11)), cs)
        channel = cfg.channel_for(msh.application, msh.facility)
        if channel is None:
            return self._reject(frame, SiuError(
                "AR", "200", f"no inbound channel for sending application "
                             f"{msh.application[:40] or '(empty)'} / facility "
                             f"{msh.facility[:40] or '(empty)'}", ("MSH", 1, 3)), cs)
        if not msh.charset:
            cs = _Charset(codec_name(channel.charset), None, channel.charset)
        if msh.trigger not in channel.message_types:
            return self._reject(frame, SiuError(
                "AR", "201", f"trigger event {msh.trigger[:10] or '(empty)'} is not taken on "
                             "this interface", ("MSH", 1, 9, 2)), cs)
        if not msh.control_id:
            return self._error(frame, SiuError("AE", "101", "MSH-10 message control id missing",
                                               ("MSH", 1, 10)), cs)
        if len(msh.control_id) > 199:
            return self._error(frame, SiuError("AE", "102", "MSH-10 longer than 199 characters",
                                               ("MSH", 1, 10)), cs)
        if not ascii_only and cs.codec != "latin-1":
            try:
                segs = segments(frame.decode(cs.codec).strip("\x0b\x1c\x00 \t\r\n"))
            except UnicodeDecodeError:
                return self._error(frame, SiuError("AE", "102", f"message is not valid {cs.label}"),
                                   cs)
        action = channel.action(msh.trigger)
        try:
            content = read_content(segs, msh, _zone(channel.timezone),
                                   need_time=action in _TIMED_ACTIONS)
        except SiuError as e:
            return self._error(frame, e, cs)
        provider = None
        if content.provider_id is not None:
            provider = channel.providers.get(content.provider_id)
            if provider is None:
                return self._error(frame, SiuError(
                    "AE", "204", f"provider {content.provider_id[:40]} has no Cal.com mapping on "
                                 f"channel {channel.name}", ("AIP", 1, 3, 1, 1)), cs)
        elif action in _TIMED_ACTIONS:
            return self._error(frame, SiuError("AE", "101", "provider missing (AIP-3, SCH-16)",
                                               ("AIP", 1, 3)), cs)
        params = None
        if action != "ignore":
            params = {
                "action": action,
                "start": content.start.isoformat() if content.start else None,
                "end": content.end.isoformat() if content.end else None,
                "duration": content.duration_minutes,
                "provider_id": content.provider_id,
                "location_code": content.location_code,
            }
        msg = InboundMessage(
            channel=channel.name, sender=f"{msh.application}|{msh.facility}",
            control_id=msh.control_id, trigger=msh.trigger,
            ehr_appointment_id=content.appointment_id, payload=frame,
            received_at=time.time(), ack_code="AA", job_params=params,
        )
        try:
            result = await self.store.accept_inbound(msg)
        except Exception as exc:  # noqa: BLE001 - not stored: the EHR must resend
            log.error("inbound message not stored", extra={"error": type(exc).__name__,
                                                           "channel": channel.name})
            return self._ack(frame, "AR", "store_error", cs=cs,
                             error=SiuError("AR", "207", "could not store the message; resend"))
        if result.duplicate:
            log.info("inbound duplicate", extra={"channel": channel.name,
                                                 "control_id": msh.control_id})
            if result.ack_code == "AA" and _standard(msh):
                return self._fast_aa(msh, "duplicate", cs)
            return self._ack(frame, result.ack_code, "duplicate", cs=cs)
        if result.reused_id:
            # the EHR's counter wrapped or was reset: stored as its own message
            self.metrics.listener_reused_ids.labels(channel.name).inc()
            log.warning("inbound control id reused", extra={
                "channel": channel.name, "control_id": msh.control_id, "trigger": msh.trigger})
        if params is not None:
            self.on_accepted()
        if _standard(msh):
            return self._fast_aa(msh, "accepted", cs)
        return self._ack(frame, "AA", "accepted", cs=cs)

    def _reject(self, frame: bytes, e: SiuError, cs: _Charset | None = None) -> bytes:
        log.info("inbound message rejected", extra={"code": e.code})
        return self._ack(frame, "AR", "rejected", error=e, cs=cs)

    def _error(self, frame: bytes, e: SiuError, cs: _Charset | None = None) -> bytes:
        log.info("inbound message refused", extra={"code": e.code})
        return self._ack(frame, "AE", "error", error=e, cs=cs)


@dataclass(frozen=True, slots=True)
class _Charset:
    """How a message is written and its ACK answered: the Python codec, the MSH-18 to echo
    (None when the sender gave none) and the name an error text uses."""

    codec: str
    msh18: str | None
    label: str


_UTF8 = _Charset("utf-8", None, "UTF-8")


def _standard(msh: MshInfo) -> bool:
    d = msh.delims
    found = (d.field, d.component, d.repetition, d.escape, d.subcomponent)
    return found == ("|", "^", "~", "\\", "&")


async def start_listener(
    host: str,
    port: int,
    *,
    store: InboundStore,
    config_getter: Callable[[], InboundConfig],
    metrics: Metrics,
    ssl: ssl_mod.SSLContext | None = None,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    idle_timeout: float | None = 300.0,
    on_accepted: Callable[[], None] | None = None,
    processing_ids: Iterable[str] = DEFAULT_PROCESSING_IDS,
    vt_in_frame: VtInFrame = "data",
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
    ack_write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
) -> asyncio.Server:
    """Listen for SIU; returns the started server (port 0: read the bound port from
    server.sockets[0]). Stop with engine.mllp.server.shutdown(server)."""
    handler = InboundHandler(store, config_getter, metrics, max_frame_bytes=max_frame_bytes,
                             processing_ids=processing_ids)
    if on_accepted is not None:
        handler.on_accepted = on_accepted
    return await serve(handler.handle, host, port, ssl=ssl, max_frame_bytes=max_frame_bytes,
                       idle_timeout=idle_timeout, on_oversize=handler.oversize,
                       vt_in_frame=vt_in_frame, max_connections=max_connections,
                       write_timeout=ack_write_timeout,
                       on_event=lambda what: metrics.listener_connections.labels(what).inc())
