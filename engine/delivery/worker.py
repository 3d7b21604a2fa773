"""Delivery: lane heads out over MLLP, ACKs back into the store.

One task per allowed connection of a destination. Each claims a batch of lane heads (only
the head of a lane is ever in flight), sends them one at a time on its connection, classifies
each reply, and records the outcome. Outcomes are committed in groups while the next
messages go out, so at a crash at most the message in flight and the outcomes not yet
committed (up to the destination's `commit_window`) are sent again, each under its original
MSH-10.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from engine.aio import sleep_or_stop
from engine.config.destinations import Destination, Outcome
from engine.delivery.policy import backoff_seconds, budget_exhausted, classify
from engine.hl7.ack import AckInfo, parse_ack
from engine.metrics import Metrics
from engine.mllp.client import Backoff, MLLPConnection, open_connection
from engine.mllp.errors import ConnectError, MLLPError, PeerClosed, ResponseTimeout
from engine.store.base import AttemptRecord, QueuedMessage
from engine.store.roles import DeliveryStore

log = logging.getLogger("calhl7.delivery")

_BATCH = 64  # lane heads per claim, at most
# a claim takes about this much sending (by the ACK times seen): a slow EHR's lanes spread
# over every allowed connection, a fast one's go out in full batches on one
_CLAIM_SECONDS = 0.25
_CLAIM_AHEAD = 4  # messages left in a batch when the next claim is made
_IDLE_POLL_SECONDS = 0.5  # operator actions from another process show up this fast
_MIN_IDLE_SECONDS = 0.05
_RECENT_IDS = 4096  # MSH-10s sent lately: an ACK naming one of them is an extra, set aside


class DestinationWorker:
    def __init__(
        self,
        name: str,
        destination: Callable[[], Destination],
        store: DeliveryStore,
        metrics: Metrics,
        node_id: str,
        status: dict[str, object] | None = None,
        settings: Destination | None = None,
    ) -> None:
        self.name = name
        self.destination = destination  # a getter: hot reload changes settings in place
        self.store = store
        self.metrics = metrics
        self.node_id = node_id
        self.settings = settings  # what it was started with: a reload that changes it restarts it
        # claims and slots are per worker instance: a replacement never inherits them
        self.instance = uuid.uuid4().hex[:6]
        # connections waiting for work, each with its own wake-up (see notify)
        self._idle_slots: dict[int, asyncio.Event] = {}
        self._notified = 0  # how many notices there have been (a slot's claim sees a count)
        self._reply_seconds: float | None = None  # a moving average of the EHR's reply time
        self.status = status if status is not None else {}
        self.status.setdefault("connections", 0)  # /readyz shows every destination
        self._connected: set[int] = set()
        # the per-destination series, looked up once instead of for every message
        self._ack_seconds = metrics.ack_seconds.labels(name)
        self._stale_acks = metrics.stale_acks.labels(name)
        # the MSH-10s this worker sent lately (answered or earlier in the lane): an ACK that
        # names one, while another message waits for its reply, is an extra to set aside
        self._sent_ids: OrderedDict[str, None] = OrderedDict()
        self._end_to_end_seconds = metrics.end_to_end_seconds.labels(name)

    def notify(self) -> None:
        """New messages are queued (or an operator freed a lane): wake one idle connection.
        Waking every connection for every commit would make each claim a few messages; one
        at a time keeps batches full, and a full claim wakes the next (see _slot)."""
        self._notified += 1
        for slot in sorted(self._idle_slots):  # the lowest first: traffic stays on few
            wake = self._idle_slots[slot]
            if not wake.is_set():
                wake.set()
                return

    async def run(self, stop: asyncio.Event) -> None:
        slots = self.destination().connection.max_connections
        async with asyncio.TaskGroup() as tasks:
            for slot in range(slots):
                tasks.create_task(self._slot(slot, stop))

    # ------------------------------------------------------------------ one connection
    async def _slot(self, slot: int, stop: asyncio.Event) -> None:
        owner = f"{self.node_id}/{self.name}/{slot}/{self.instance}"
        conn: MLLPConnection | None = None
        reconnect = Backoff.from_settings(self.destination().connection)
        held: int | None = None  # the destination connection slot this task holds
        landing: asyncio.Future[Any] | None = None  # the commits of a batch's last outcomes
        ahead: list[asyncio.Future[tuple[float, list[QueuedMessage]]]] = []  # the next claim

        async def let_go() -> None:
            """Our last outcomes land first, then every lane we still lease is released (the
            claim made ahead included)."""
            nonlocal landing
            if landing is not None:
                await landing
                landing = None
            if ahead:
                await ahead.pop()
            await self.store.release_claims(owner)

        try:
            while not stop.is_set():
                dest = self.destination()
                lease = max(3.0, 3 * dest.connection.response_timeout_seconds)
                now = time.time()
                renewed = time.monotonic()  # before the round trip: the lease may start late
                # max_connections holds for the whole cluster: hold a slot to send at all
                if held is None:
                    held = await self.store.acquire_slot(
                        self.name, dest.connection.max_connections, owner, lease, now)
                    if held is None:
                        await sleep_or_stop(stop, 1.0)
                        continue
                elif not await self.store.renew_slot(self.name, held, owner, lease, now):
                    held = None  # taken over while we were away: never send on it again
                    if conn is not None:
                        await conn.close()
                        conn = None
                    await let_go()  # nor the lanes we claimed for it
                    continue
                # the last batch's final outcomes may still be landing: a lane we lease is
                # never claimed, so the claim need not wait for them (one commit, not two);
                # usually it was made while the last messages of that batch went out
                notices = self._notified
                claimed_at, batch = await (ahead.pop() if ahead else self._claim(owner, lease))
                if landing is not None:
                    await landing
                    landing = None
                    if not batch:  # the lanes it advanced were still leased when we claimed
                        notices = self._notified
                        claimed_at, batch = await self._claim(owner, lease)
                if not batch:
                    if self._notified == notices:  # else: news came while we were claiming
                        await self._idle(slot, stop)
                    continue
                if len(batch) >= self._claim_size():  # more may wait: another connection helps
                    self.notify()
                if conn is None or conn.closed:
                    conn = await self._connect(dest, reconnect, slot)
                    if conn is None:
                        await self.store.release_claims(owner)
                        await sleep_or_stop(stop, reconnect.next())
                        continue
                # the lease, in memory: held until renewal + TTL - a margin that is longer
                # than any exchange (the write and its reply share one deadline, the response
                # timeout), so no write starts or finishes on a lease another node may hold.
                # Of the lanes and of the connection slot, from the older of the two
                deadline = (min(claimed_at, renewed) + lease
                            - _lease_margin(dest.connection.response_timeout_seconds))

                def claim_ahead(lease: float = lease) -> None:
                    if not ahead and not stop.is_set():
                        ahead.append(asyncio.ensure_future(self._claim(owner, lease)))

                used = conn
                conn, landing, every_one = await self._send_batch(conn, batch, dest, stop, slot,
                                                                  deadline, claim_ahead)
                if not every_one:  # the lanes the batch did not reach (and the next) go
                    await let_go()
                if used.replies:
                    reconnect.reset()
                elif conn is None:  # it closed without ever answering: reconnect slowly
                    await sleep_or_stop(stop, reconnect.next())
        finally:
            if landing is not None:
                with contextlib.suppress(Exception):
                    await landing
            if ahead:
                with contextlib.suppress(Exception):
                    await ahead.pop()
                    await self.store.release_claims(owner)
            if conn is not None:
                await conn.close()
            self._set_connected(slot, False)
            if held is not None:
                with contextlib.suppress(Exception):
                    await self.store.release_slot(self.name, held, owner)

    async def _claim(self, owner: str, lease: float) -> tuple[float, list[QueuedMessage]]:
        """The claimed lane heads, and when (monotonic, before the round trip) their lease
        began."""
        started, now = time.monotonic(), time.time()
        return started, await self.store.claim_lane_heads(self.name, self._claim_size(), owner,
                                                          lease, now)

    def _claim_size(self) -> int:
        if self._reply_seconds is None:  # nothing seen yet: one, and its reply decides
            return 1
        return max(1, min(_BATCH, int(_CLAIM_SECONDS / max(self._reply_seconds, 1e-6))))

    def _saw_reply_time(self, seconds: float) -> None:
        average = self._reply_seconds
        self._reply_seconds = seconds if average is None else 0.8 * average + 0.2 * seconds

    async def _connect(
        self, dest: Destination, reconnect: Backoff, slot: int
    ) -> MLLPConnection | None:
        try:
            conn = await open_connection(dest.host, dest.port, dest.connection)
        except ConnectError as exc:
            self.metrics.reconnects.labels(self.name, "failed").inc()
            self.status["last_error"] = str(exc)
            self.status["last_error_at"] = time.time()
            log.warning("connect failed", extra={"destination": self.name, "error": str(exc)})
            return None
        # the reconnect back-off is reset once the connection carries a reply, not here:
        # an EHR that accepts and hangs up at once must not be reconnected in a tight loop
        self.metrics.reconnects.labels(self.name, "connected").inc()
        self._set_connected(slot, True)
        return conn

    async def _send_batch(
        self,
        conn: MLLPConnection | None,
        batch: list[QueuedMessage],
        dest: Destination,
        stop: asyncio.Event,
        slot: int,
        deadline: float,
        claim_ahead: Callable[[], None] = lambda: None,
    ) -> tuple[MLLPConnection | None, asyncio.Future[Any], bool]:
        """Send the batch's messages one at a time. Outcomes are committed in groups while the
        next messages go out, and sending pauses once `commit_window` outcomes are waiting
        for their commit. That window bounds what a crash can repeat (the message in flight
        and the outcomes not yet committed, each under its original MSH-10).

        Returns the connection, the commits of the last outcomes (still landing: the caller
        awaits it before sending again), and whether every message got an outcome (if not,
        the caller releases the lanes the batch did not reach). `claim_ahead` is called when a
        few messages are left to send."""
        window = dest.connection.commit_window
        waiting: list[tuple[AttemptRecord, QueuedMessage]] = []
        # commits in flight, oldest first, with how many outcomes each holds. A batch has one
        # message per lane, so its groups touch different lanes and may land in any order
        committing: deque[tuple[asyncio.Task[None], int]] = deque()
        reached = 0
        try:
            for msg in batch:
                if stop.is_set() or conn is None or conn.closed or time.monotonic() > deadline:
                    break
                record, conn = await self._attempt(conn, msg, dest, deadline)
                if record is None:  # not sent: the caller releases it with the rest
                    if conn is None:
                        self._set_connected(slot, False)
                    break
                reached += 1
                if len(batch) - reached <= _CLAIM_AHEAD:
                    claim_ahead()  # the next claim's commit overlaps the last sends
                if conn is None:
                    self._set_connected(slot, False)
                waiting.append((record, msg))
                while committing and committing[0][0].done():
                    await committing.popleft()[0]
                # a group goes as soon as none is landing, or as a second one once half a
                # window waits: the writer's queue wait then overlaps sending
                if not committing or len(waiting) >= max(1, window // 2):
                    committing.append((asyncio.create_task(self._record(waiting, dest)),
                                       len(waiting)))
                    waiting = []
                while sum(n for _, n in committing) + len(waiting) > window:
                    await committing.popleft()[0]
        except BaseException:
            for task, _ in committing:
                await task
            if waiting:
                await self._record(waiting, dest)
            raise
        if waiting:
            committing.append((asyncio.create_task(self._record(waiting, dest)), len(waiting)))
        return conn, asyncio.gather(*(task for task, _ in committing)), reached == len(batch)

    async def _attempt(
        self, conn: MLLPConnection, msg: QueuedMessage, dest: Destination,
        lease_until: float = float("inf"),
    ) -> tuple[AttemptRecord | None, MLLPConnection | None]:
        """Send one message; return its outcome (None: it did not go out) and the
        connection, or None if it is gone. `lease_until` (monotonic) is when this node
        must consider its lease of the lane lost."""
        is_resend = False  # did these bytes go out before? (a duplicate key then = delivered)
        if msg.claims > 1 or msg.attempts > 0:
            again = await self._sent_before(msg)
            if again is not None:
                self.metrics.messages.labels(msg.channel, self.name, msg.message_type, again).inc()
            is_resend = again == "resent"
        current = msg.control_id.strip()
        kept: list[AckInfo] = []

        def stale(reply: bytes) -> bool:
            """An ACK naming a message sent before this one (a duplicate ACK, the AA after
            a CA) is set aside, counted and logged by ids only; reading goes on for ours."""
            info = parse_ack(reply, encoding=dest.codec)
            if info.control_id is not None and info.control_id != current \
                    and info.control_id in self._sent_ids:
                self._stale_acks.inc()
                log.info("extra ACK for an earlier message set aside", extra={
                    **_ids(msg, self.name), "ack_code": info.code,
                    "ack_for_control_id": info.control_id})
                return True
            kept.append(info)
            return False

        # the lease is checked here, after the last store read and with no await before the
        # write: a node stalled anywhere before this point finds its lease lost and does not
        # send (another node may hold the lane by now)
        if time.monotonic() >= lease_until:
            self.metrics.messages.labels(msg.channel, self.name, msg.message_type,
                                         "lease_lost").inc()
            log.warning("lease lost before sending; not sent", extra=_ids(msg, self.name))
            return None, conn
        sent_at = time.perf_counter()
        try:
            reply = await conn.send(msg.payload, stale=stale,
                                    timeout=dest.connection.response_timeout_seconds)
        except PeerClosed as exc:
            self.metrics.reconnects.labels(self.name, "peer_closed").inc()
            if not exc.sent:
                # it had hung up while the connection was idle: nothing went out, so no
                # attempt; the lane is released and goes again on a fresh connection
                return None, None
            # it hung up on this message: an attempt like a timeout, through the back-off
            # and within the message's budget (an EHR that hangs up on every message ends
            # in a dead letter, not a loop)
            return self._retry(msg, dest, "peer_closed", f"peer closed: {exc}", None, None), None
        except ResponseTimeout as exc:
            self._saw_reply_time(dest.connection.response_timeout_seconds)
            return self._retry(msg, dest, "timeout", str(exc), None, None), None
        except (MLLPError, OSError) as exc:
            await conn.close()
            return self._retry(msg, dest, "connection_error", str(exc), None, None), None
        finally:
            self._remember_sent(current)
        reply_seconds = time.perf_counter() - sent_at
        self._ack_seconds.observe(reply_seconds)
        self._saw_reply_time(reply_seconds)
        ack = kept[-1] if kept else parse_ack(reply, encoding=dest.codec)
        decision = classify(ack, sent_control_id=msg.control_id, is_resend=is_resend,
                            policy=dest.ack)
        now = time.time()
        # the EHR's own words go to the store for the analyst, never to a log line
        detail = f"{decision.reason}: {decision.ehr_text}" if decision.ehr_text else decision.reason
        if decision.outcome == Outcome.DELIVERED:
            return AttemptRecord(msg.id, msg.lane_id, msg.fence, "delivered", now, ack=reply,
                                 ack_code=ack.code, detail=decision.reason), conn
        if decision.outcome == Outcome.DEAD:
            label = "application_error" if ack.code == "AE" else "rejected"
            self.metrics.messages.labels(msg.channel, self.name, msg.message_type, label).inc()
            return AttemptRecord(msg.id, msg.lane_id, msg.fence, "dead", now, ack=reply,
                                 ack_code=ack.code, detail=detail,
                                 hold_lane=dest.ack.on_dead_letter == "hold"), conn
        if decision.outcome == Outcome.RESET:
            # never credit this reply; a fresh connection so a late ACK cannot land on the
            # next message; back off like any failure, within the message's budget
            await conn.close()
            return self._retry(msg, dest, "bad_reply", detail, reply, ack.code), None
        label = "rejected" if ack.code in ("AR", "CR") else "application_error"
        return self._retry(msg, dest, label, detail, reply, ack.code), conn

    def _remember_sent(self, control_id: str) -> None:
        ids = self._sent_ids
        ids[control_id] = None
        ids.move_to_end(control_id)
        if len(ids) > _RECENT_IDS:
            ids.popitem(last=False)

    async def _sent_before(self, msg: QueuedMessage) -> str | None:
        """Whether this message went out before: `resent` when its bytes did (an attempt
        that wrote the frame is on record, or a claim ended in neither an outcome nor a
        release: a crash that may have cut the record), `reprocessed` when only other
        MSH-10s did (an operator's fix), None when it never went out. Failed connects and
        broken batches release their claims, which then no longer count. attempts is 0
        with claims > 1 only after a crash or an operator's action, so the attempt log is
        read on that rare path only."""
        if msg.attempts > 0:  # recorded since the last operator action: each wrote the frame
            return "resent"
        detail = await self.store.message(msg.id)
        log_rows = (detail or {}).get("attempt_log", ())
        sent = {a["control_id"] for a in log_rows}
        if msg.control_id in sent:
            return "resent"
        if msg.claims - 1 > len(log_rows) and not sent:  # a lapsed claim: maybe written
            return "resent"
        return "reprocessed" if sent else None

    def _retry(
        self, msg: QueuedMessage, dest: Destination, label: str, detail: str,
        reply: bytes | None, ack_code: str | None,
    ) -> AttemptRecord:
        now = time.time()
        self.metrics.messages.labels(msg.channel, self.name, msg.message_type, label).inc()
        self.status["last_error"] = label  # a category only: detail may quote the EHR
        self.status["last_error_at"] = now
        if budget_exhausted(msg.attempts + 1, dest.retry):
            return AttemptRecord(msg.id, msg.lane_id, msg.fence, "dead", now, ack=reply,
                                 ack_code=ack_code,
                                 detail=f"retry budget exhausted after {msg.attempts + 1}"
                                        f" attempts; last: {detail}",
                                 hold_lane=dest.ack.on_dead_letter == "hold")
        delay = backoff_seconds(msg.attempts + 1, dest.retry)
        log.info("delivery failed; will retry", extra={
            **_ids(msg, self.name), "outcome": label, "ack_code": ack_code,
            "attempt": msg.attempts + 1, "retry_in_seconds": round(delay, 3)})
        return AttemptRecord(msg.id, msg.lane_id, msg.fence, "retry", now, ack=reply,
                             ack_code=ack_code, detail=detail, next_attempt_at=now + delay)

    async def _record(
        self, outcomes: list[tuple[AttemptRecord, QueuedMessage]], dest: Destination
    ) -> None:
        # each outcome under the MSH-10 that went out (a reprocess may have changed it since)
        await self.store.record_attempts([replace(record, control_id=msg.control_id)
                                          for record, msg in outcomes])
        for record, msg in outcomes:
            self._count_recorded(record, msg)

    def _count_recorded(self, record: AttemptRecord, msg: QueuedMessage) -> None:
        if record.outcome == "delivered":
            self.metrics.messages.labels(msg.channel, self.name, msg.message_type, "acked").inc()
            latency = time.time() - msg.accepted_at if msg.accepted_at else None
            if latency is not None:
                self._end_to_end_seconds.observe(latency)
            self.status["last_ack_at"] = record.at
            log.info("message delivered", extra={
                **_ids(msg, self.name), "ack_code": record.ack_code,
                "attempt": msg.attempts + 1,
                "end_to_end_seconds": round(latency, 3) if latency is not None else None})
        elif record.outcome == "dead":
            self.metrics.messages.labels(msg.channel, self.name, msg.message_type,
                                         "dead_lettered").inc()
            log.warning("dead letter", extra={**_ids(msg, self.name),
                                              "ack_code": record.ack_code,
                                              "attempt": msg.attempts + 1})

    # ------------------------------------------------------------------ helpers
    async def _idle(self, slot: int, stop: asyncio.Event) -> None:
        """Wait for a notice, the stop, or the next poll (operator actions from another
        process, a lane's back-off ending)."""
        wake = self._idle_slots[slot] = asyncio.Event()
        try:
            timeout = _IDLE_POLL_SECONDS
            ready_at = await self.store.next_ready_at(self.name)
            if ready_at is not None:  # a floor: never spin on a lane that is about to free up
                timeout = min(timeout, max(_MIN_IDLE_SECONDS, ready_at - time.time()))
            waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
        finally:
            del self._idle_slots[slot]

    def _set_connected(self, slot: int, up: bool) -> None:
        (self._connected.add if up else self._connected.discard)(slot)
        self.metrics.connections.labels(self.name).set(len(self._connected))
        self.status["connections"] = len(self._connected)


def _lease_margin(response_timeout: float) -> float:
    """How long before its lease runs out a node stops starting sends: longer than an
    exchange (the client bounds the write and the reply together by the response timeout)."""
    return 2 * response_timeout


def _ids(msg: QueuedMessage, destination: str) -> dict[str, object]:
    """What a delivery log line names: ids and codes, never the message or the EHR's words."""
    return {"destination": destination, "channel": msg.channel, "message_id": msg.id,
            "message_type": msg.message_type, "control_id": msg.control_id,
            "correlation_id": msg.correlation_id}

