"""An MLLP sender for Locust: the EHR's front desk sending SIU to an MLLP listener.

`MllpClient` is small and synchronous on purpose: under Locust the `socket` module is
gevent's (monkey-patched), so blocking calls yield to the other users. One message in flight
per connection, an ACK read up to its <FS><CR> trailer (partial reads handled), a timeout on
every read. `MllpUser` fires Locust's `events.request` per message, named by trigger; success
only when MSA-1 is in the success set and MSA-2 equals the MSH-10 it sent.

The listener target is `--mllp-target HOST:PORT` (the engine's `calhl7 serve --mllp` when it
has one; `calhl7 sim-ehr` answers the same way and serves as a stand-in).
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import time
from datetime import UTC, datetime, timedelta

from engine.hl7.ack import parse_ack
from engine.mllp.framing import SB, TRAILER

SUCCESS = frozenset({"AA", "CA"})


class MllpError(Exception):
    pass


class MllpClient:
    def __init__(self, host: str, port: int, timeout: float = 10.0, encoding: str = "utf-8") -> None:
        self.host, self.port, self.timeout, self.encoding = host, port, timeout, encoding
        self.sock: socket.socket | None = None
        self._buf = bytearray()

    def connect(self) -> None:
        self.close()
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf.clear()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def send(self, payload: bytes) -> bytes:
        """Send one message and return the reply frame's payload (bytes between SB and EB)."""
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        self.sock.sendall(SB + payload + TRAILER)
        return self._read_frame()

    def _read_frame(self) -> bytes:
        assert self.sock is not None
        deadline = time.monotonic() + self.timeout
        while True:
            start = self._buf.find(SB)
            if start >= 0:
                end = self._buf.find(TRAILER, start)
                if end >= 0:
                    reply = bytes(self._buf[start + 1:end])
                    del self._buf[:end + len(TRAILER)]
                    return reply
            elif self._buf:
                self._buf.clear()  # noise between frames
            left = deadline - time.monotonic()
            if left <= 0:
                raise MllpError("ACK timeout")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError as exc:
                raise MllpError("ACK timeout") from exc
            if not chunk:
                raise MllpError("connection closed before the ACK")
            self._buf += chunk


_counter = itertools.count(1)


def siu(trigger: str, appointment: str, control_id: str, start: datetime, minutes: int = 30,
        sending_application: str = "MAIN_EHR", sending_facility: str = "ACME_CLINIC",
        provider: str = "1234567893", location: str = "FAMMED") -> bytes:
    """An SIU as an EHR's front desk sends it (v2.5.1, times with offsets, synthetic data)."""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    ts = start.strftime("%Y%m%d%H%M%S+0000")
    te = (start + timedelta(minutes=minutes)).strftime("%Y%m%d%H%M%S+0000")
    status = "Cancelled" if trigger == "S15" else "Booked"
    segs = [
        f"MSH|^~\\&|{sending_application}|{sending_facility}|CALCOM_HL7|ACME_CLINIC|{now}||"
        f"SIU^{trigger}^SIU_S12|{control_id}|P|2.5.1|||AL|NE||UNICODE UTF-8",
        f"SCH|{appointment}^EHR|{appointment}^EHR|||||ROUTINE^Routine^HL70276|Normal|{minutes}|"
        f"min^minutes^ISO+|^^M{minutes}^{ts}^{te}|||||{provider}^Testdoctor^Grace||||"
        f"FRONTDESK^Front desk|||||{status}^{status}^HL70278",
        f"TQ1|1||||||{ts}|{te}",
        "PID|1||EHRPAT0001^^^ACME^MR||Testpatient^Ada||19840712|F",
        "RGS|1|A",
        f"AIS|1|A|BLOCK^Blocked time^L|{ts}|||{minutes}|min",
        f"AIL|1|A|{location}^EXAM1^^MAIN_ST",
        f"AIP|1|A|{provider}^Testdoctor^Grace^^^Dr|ATTENDING",
    ]
    return ("\r".join(segs) + "\r").encode("utf-8")


try:  # the Locust part: only when Locust is there (the client above works without it)
    from locust import User, between, task
    from locust.exception import StopUser
except ImportError:  # pragma: no cover
    User = object  # type: ignore[misc,assignment]


if User is not object:

    class MllpUser(User):  # type: ignore[misc,valid-type]
        """A front desk booking, moving and cancelling blocks of time in the EHR."""

        abstract = True  # made concrete by the locustfile when --mllp-target is given
        wait_time = between(0.0, 0.0)
        target: tuple[str, int] = ("127.0.0.1", 2575)
        sending_application = os.environ.get("LOAD_MLLP_APP", "MAIN_EHR")
        sending_facility = os.environ.get("LOAD_MLLP_FACILITY", "ACME_CLINIC")
        provider = os.environ.get("LOAD_MLLP_PROVIDER", "1234567893")

        def on_start(self) -> None:
            self.client = MllpClient(*self.target)
            self.rng = random.Random()
            self.pid = os.getpid()

        def on_stop(self) -> None:
            self.client.close()

        def _send(self, trigger: str, appointment: str, start: datetime) -> None:
            cid = f"L{self.pid % 10000:04d}{next(_counter):010d}"  # <= 20 characters
            payload = siu(trigger, appointment, cid, start,
                          sending_application=self.sending_application,
                          sending_facility=self.sending_facility, provider=self.provider)
            t0 = time.perf_counter()
            exc: Exception | None = None
            length = 0
            try:
                reply = self.client.send(payload)
                length = len(reply)
                ack = parse_ack(reply)
                if ack.code not in SUCCESS:
                    exc = MllpError(f"MSA-1 {ack.code or ack.parse_error} "
                                    f"{','.join(ack.error_codes)}".strip())
                elif ack.control_id != cid:
                    exc = MllpError("MSA-2 does not echo MSH-10")
            except (OSError, MllpError) as e:
                exc = e if isinstance(e, MllpError) else MllpError(type(e).__name__)
                self.client.close()  # reconnect on the next message
            self.environment.events.request.fire(
                request_type="MLLP", name=f"SIU^{trigger}",
                response_time=(time.perf_counter() - t0) * 1000, response_length=length,
                exception=exc, context={})

        @task
        def front_desk_booking(self) -> None:
            appt = f"E{self.pid % 1000:03d}{next(_counter):09d}"
            start = datetime(2026, 6, 15, 13, 0, tzinfo=UTC) + timedelta(
                days=self.rng.randrange(0, 20), minutes=30 * self.rng.randrange(0, 16))
            self._send("S12", appt, start)
            roll = self.rng.random()
            if roll < 0.3:
                self._send("S13", appt, start + timedelta(days=1))
            elif roll < 0.5:
                self._send("S15", appt, start)

    __all__ = ["MllpClient", "MllpUser", "siu", "StopUser"]
