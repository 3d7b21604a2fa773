"""The HTTP face of the engine, as a plain ASGI app served by uvicorn.

Only the signature, the hash check and one grouped insert happen before a webhook is answered;
normalization and everything after it run later, from the store. A plain ASGI callable (no
framework) keeps the request path short: this endpoint is the one Cal.com hammers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engine.calcom.check import check_webhook
from engine.calcom.signature import verify_signature
from engine.metrics import Metrics, trigger_label
from engine.store import base
from engine.store.base import IncomingWebhook
from engine.store.roles import IntakeStore

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_PROBE_OWNER = "readyz-probe"  # owns no lane: releasing its claims is a write that changes nothing

log = logging.getLogger("calhl7.http")


@dataclass
class HttpSettings:
    secrets: Mapping[str, Sequence[str]]  # source -> accepted secrets (two while rotating)
    max_body_bytes: int = 1_048_576
    serve_metrics: bool = True  # False when metrics/health have their own address
    insecure_unsigned: bool = False  # development only: accept bodies without a signature
    body_timeout_seconds: float = 15.0  # the whole body, from the end of the headers


@dataclass
class Readiness:
    """What /readyz reports; the app keeps it current."""

    channels_loaded: bool = False
    destinations: dict[str, dict[str, Any]] = field(default_factory=dict)


class BodyTooLarge(Exception):
    pass


class WebhookApp:
    def __init__(
        self,
        store: IntakeStore,
        metrics: Metrics,
        settings: HttpSettings,
        readiness: Readiness,
        on_accepted: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.readiness = readiness
        self.on_accepted = on_accepted

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/webhooks/calcom" or path.startswith("/webhooks/calcom/"):
            if method != "POST":
                await _json(send, 405, {"error": "use POST"})
                return
            source = path[len("/webhooks/calcom/"):] if path != "/webhooks/calcom" else "default"
            await self._webhook(scope, receive, send, source or "default")
        elif path == "/healthz":
            await _json(send, 200, {"status": "alive"})
        elif path == "/readyz":
            await self._ready(send)
        elif path == "/metrics" and self.settings.serve_metrics:
            await _respond(send, 200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
        else:
            await _json(send, 404, {"error": "not found"})

    # ------------------------------------------------------------------ webhooks
    async def _webhook(
        self, scope: dict[str, Any], receive: Receive, send: Send, source: str
    ) -> None:
        started = time.perf_counter()
        count = self.metrics.webhooks
        secrets = self.settings.secrets.get(source)
        if not secrets and not self.settings.insecure_unsigned:
            count.labels("unknown", "other", "unknown_source").inc()
            log.warning("webhook refused: unknown source")  # the path is not ours to log
            await _json(send, 404, {"error": "unknown webhook source; configure its secret"})
            return
        # only configured sources become label values (--insecure-dev takes any path)
        label = source if source in self.settings.secrets else "unconfigured"
        headers = _headers(scope)
        try:
            async with asyncio.timeout(self.settings.body_timeout_seconds):
                body = await _read_body(receive, headers, self.settings.max_body_bytes)
        except TimeoutError:
            count.labels(label, "other", "timeout").inc()
            log.warning("webhook refused: body not received in time", extra={
                "source": label, "timeout_seconds": self.settings.body_timeout_seconds})
            await _json(send, 408, {"error": "the body did not arrive within "
                                             f"{self.settings.body_timeout_seconds:g}s"},
                        close=True)
            return
        except ConnectionError:
            return  # the client hung up mid-body: nothing was stored, nobody to answer
        except BodyTooLarge:
            count.labels(label, "other", "too_large").inc()
            log.warning("webhook refused: body too large", extra={
                "source": label, "limit_bytes": self.settings.max_body_bytes})
            await _json(send, 413, {"error": f"body over {self.settings.max_body_bytes} bytes"},
                        close=True)
            return
        if secrets and not verify_signature(body, headers.get("x-cal-signature-256"), secrets):
            count.labels(label, "other", "rejected_signature").inc()
            log.warning("webhook refused: bad signature", extra={"source": label})
            await _json(send, 401, {"error": "missing or wrong X-Cal-Signature-256"})
            return
        check = check_webhook(body, headers.get("content-type"))
        webhook = IncomingWebhook.from_check(source, body, headers.get("content-type"), check,
                                             correlation_id=os.urandom(8).hex())
        state = webhook.state
        try:
            result = await self.store.accept_webhook(webhook)
        except Exception as exc:  # noqa: BLE001 - not stored: Cal.com must see a failure
            count.labels(label, trigger_label(check.trigger), "store_error").inc()
            log.error("webhook not stored: answered 503", extra={
                "source": label, "trigger": trigger_label(check.trigger),
                "correlation_id": webhook.correlation_id, "error": type(exc).__name__})
            await _json(send, 503, {"error": "could not store the event; not accepted"})
            return
        trigger = trigger_label(check.trigger)
        fields = {"source": label, "trigger": trigger, "event_id": result.event_id,
                  "correlation_id": webhook.correlation_id}
        if result.duplicate:
            count.labels(label, trigger, "duplicate").inc()
            # the correlation id that counts is the first delivery's, stored with event_id
            log.info("webhook duplicate", extra={k: v for k, v in fields.items()
                                                 if k != "correlation_id"})
            await _json(send, 200, {"status": "duplicate", "event": result.event_id})
        elif state == base.QUARANTINED:
            count.labels(label, trigger, "quarantined").inc()
            # the reason names a field path, never a value
            log.warning("webhook quarantined", extra={**fields, "reason": check.reason})
            await _json(send, 202, {"status": "quarantined", "event": result.event_id,
                                    "reason": check.reason})
        elif state == base.IGNORED:
            count.labels(label, trigger, "ignored").inc()
            log.debug("webhook ignored", extra={**fields, "reason": check.reason})
            await _json(send, 200, {"status": "ignored", "event": result.event_id,
                                    "reason": check.reason})
        else:
            count.labels(label, trigger, "accepted").inc()
            log.debug("webhook accepted", extra=fields)
            self.on_accepted()
            await _json(send, 200, {"status": "accepted", "event": result.event_id,
                                    "correlation_id": webhook.correlation_id})
        self.metrics.webhook_seconds.observe(time.perf_counter() - started)

    async def _ready(self, send: Send) -> None:
        store_ok = True
        try:  # a write that changes nothing: a read-only or wedged store is not ready
            await asyncio.wait_for(self.store.release_claims(_PROBE_OWNER), timeout=2.0)
        except Exception as exc:  # noqa: BLE001
            store_ok = False
            log.warning("readiness: store not writable", extra={"error": type(exc).__name__})
        ready = store_ok and self.readiness.channels_loaded
        await _json(send, 200 if ready else 503, {
            "ready": ready,
            "store": "ok" if store_ok else "unavailable",
            "channels_loaded": self.readiness.channels_loaded,
            "destinations": self.readiness.destinations,
        })


# ---------------------------------------------------------------------- ASGI plumbing
def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def _read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge  # refuse before reading a byte of it
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyTooLarge if size > limit else ConnectionError("client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, content_type: str,
                   close: bool = False) -> None:
    headers = [(b"content-type", content_type.encode()),
               (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, payload: dict[str, Any], close: bool = False) -> None:
    await _respond(send, status, json.dumps(payload).encode(), "application/json", close)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
