"""Wiring only: builds the store, the configuration, the servers and the workers, and runs them.

Nothing here decides anything about bookings or HL7; each part gets what it needs handed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import ssl
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import uvicorn

from engine.aio import sleep_or_stop
from engine.calcom.api import CalcomApi
from engine.config.destinations import Destination
from engine.config.files import ConfigError
from engine.config.inbound import InboundConfig, load_inbound_config, own_applications_of
from engine.config.outbound import Config, config_fingerprint, load_config
from engine.delivery.worker import DestinationWorker
from engine.http.asgi import HttpSettings, Readiness, WebhookApp
from engine.http.protocol import bounded_http_protocol
from engine.inbound.listener import start_listener
from engine.inbound.worker import InboundWorker
from engine.metrics import Metrics
from engine.mllp.framing import VtInFrame
from engine.mllp.server import shutdown as shutdown_mllp
from engine.mllp.tls import server_ssl_context
from engine.processing import Processor, helper_process_init, warm_helper
from engine.reconcile import run_reconciler
from engine.store import open_store
from engine.store.roles import Store

log = logging.getLogger("calhl7.app")


@dataclass
class EngineSettings:
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    data_dir: Path = Path("var")
    channels_dir: Path = Path("channels")
    store_url: str | None = None  # postgresql://... ; None: SQLite in data_dir
    secrets: Mapping[str, Sequence[str]] = field(default_factory=dict)
    max_body_bytes: int = 1_048_576
    # HTTP edges: a request's headers, then its body, must arrive within these; connections
    # over the cap are answered 503 at once (each connection is a file descriptor)
    http_header_timeout_seconds: float = 10.0
    http_body_timeout_seconds: float = 15.0
    http_max_connections: int = 500
    insecure_unsigned: bool = False
    metrics_host: str | None = None  # a separate address for /metrics and health
    metrics_port: int | None = None
    node_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
    reload_interval_seconds: float = 1.0
    # the pure core (normalize, route, render) in helper processes: 0 runs it in the engine
    processing_processes: int = 0
    # the inbound MLLP listener (EHR -> Cal.com); None: no listener
    mllp_host: str = "127.0.0.1"
    mllp_port: int | None = None
    mllp_tls_cert: str | None = None
    mllp_tls_key: str | None = None
    mllp_tls_client_ca: str | None = None  # set: EHRs must present a certificate it signed
    mllp_max_frame_bytes: int = 1_048_576
    mllp_idle_timeout_seconds: float = 300.0
    mllp_processing_ids: tuple[str, ...] = ("P",)  # MSH-11 values taken; others get AR 202
    mllp_vt_in_frame: VtInFrame = "data"  # a 0x0B inside a frame is data (or: "restart")
    mllp_max_connections: int = 100  # more are closed at once (and counted)
    mllp_ack_write_timeout_seconds: float = 30.0  # an EHR not reading its ACKs is cut off
    reconcile_interval_seconds: float = 300.0  # 0: off; needs CALHL7_CALCOM_API_KEY
    heartbeat_seconds: float = 5.0


class Engine:
    def __init__(self, settings: EngineSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.store: Store = open_store(settings.store_url or str(settings.data_dir), engine=True)
        self.readiness = Readiness()
        self.stop = asyncio.Event()
        self._config: Config | None = None
        self._inbound: InboundConfig | None = None
        self._fingerprint: object = None
        self._workers: dict[str, tuple[DestinationWorker, asyncio.Task[None], asyncio.Event]] = {}
        self._worker_tasks: set[asyncio.Task[None]] = set()  # incl. ones being retired
        self._pool: ProcessPoolExecutor | None = None
        self.processor = Processor(
            self.store, self.config, self.metrics, self._wake_destinations,
            echo_map=lambda: self.inbound_config().echo_map(),
            node_id=settings.node_id,
        )
        self.http_port: int | None = None
        self.mllp_port: int | None = None

    # ------------------------------------------------------------------ configuration
    def config(self) -> Config:
        assert self._config is not None, "configuration not loaded"
        return self._config

    def inbound_config(self) -> InboundConfig:
        assert self._inbound is not None, "configuration not loaded"
        return self._inbound

    def load_channels(self) -> None:
        """Load at start: a broken configuration stops the engine with every problem listed."""
        config = load_config(self.settings.channels_dir)
        self._inbound = load_inbound_config(self.settings.channels_dir,
                                            own_applications_of(config))
        self._config = config
        self._fingerprint = config_fingerprint(self.settings.channels_dir)
        self.readiness.channels_loaded = True

    def reload_channels(self, reason: str) -> bool:
        """Swap the whole configuration at once; a broken one keeps the running one."""
        try:
            new = load_config(self.settings.channels_dir)
            inbound = load_inbound_config(self.settings.channels_dir, own_applications_of(new))
        except ConfigError as exc:
            self.metrics.config_reloads.labels("failed").inc()
            log.error("channel reload failed; keeping the running configuration",
                      extra={"reason": reason, "problems": str(exc)})
            return False
        self._config, self._inbound = new, inbound
        self._fingerprint = config_fingerprint(self.settings.channels_dir)
        self.metrics.config_reloads.labels("ok").inc()
        log.info("channels reloaded", extra={"reason": reason,
                                             "channels": len(new.channels),
                                             "destinations": len(new.destinations)})
        self._sync_workers()
        return True

    async def _watch_config(self) -> None:
        while not self.stop.is_set():
            await sleep_or_stop(self.stop, self.settings.reload_interval_seconds)
            with contextlib.suppress(OSError):
                if config_fingerprint(self.settings.channels_dir) != self._fingerprint:
                    self.reload_channels("files changed")

    # ------------------------------------------------------------------ workers
    def _destination(self, name: str) -> Destination:
        return self.config().destinations[name]

    def _sync_workers(self) -> None:
        """One worker per destination; a destination whose settings changed gets a new one,
        which starts only once the old one has stopped (never two senders on one lane)."""
        wanted = self.config().destinations
        retiring: dict[str, asyncio.Task[None]] = {}
        for name in list(self._workers):
            worker, task, stop = self._workers[name]
            if name not in wanted or worker.settings != wanted[name]:
                stop.set()
                retiring[name] = task
                del self._workers[name]
        for name, dest in wanted.items():
            if name in self._workers:
                continue
            stop = asyncio.Event()
            self.metrics.init_destination(name)
            status = self.readiness.destinations.setdefault(name, {})
            worker = DestinationWorker(
                name, partial(self._destination, name), self.store, self.metrics,
                self.settings.node_id, status, settings=dest,
            )
            task = asyncio.create_task(self._run_worker(worker, stop, retiring.get(name)),
                                       name=f"deliver-{name}")
            self._workers[name] = (worker, task, stop)
            self._worker_tasks.add(task)
            task.add_done_callback(self._worker_tasks.discard)

    async def _run_worker(self, worker: DestinationWorker, stop: asyncio.Event,
                          predecessor: asyncio.Task[None] | None = None) -> None:
        if predecessor is not None:
            await asyncio.wait([predecessor])
        both = asyncio.Event()

        async def relay() -> None:
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.stop.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            both.set()

        relay_task = asyncio.create_task(relay())
        while not both.is_set():
            try:
                await worker.run(both)
            except Exception:  # noqa: BLE001 - a worker must never die quietly
                log.exception("delivery worker failed; restarting", extra={
                    "destination": worker.name})
                await sleep_or_stop(both, 1.0)
        relay_task.cancel()

    def _wake_destinations(self, destinations: set[str]) -> None:
        for name in destinations:
            entry = self._workers.get(name)
            if entry:
                entry[0].notify()

    # ------------------------------------------------------------------ gauges
    async def refresh_gauges(self) -> None:
        """Queue gauges from the store: right after a restart, and the same on every node."""
        summary = await self.store.queue_summary(time.time())
        self.metrics.set_queue_gauges(summary, self.config().destinations,
                                      await self.store.quarantined_count())

    async def _refresh_gauges(self) -> None:
        while not self.stop.is_set():
            try:
                await self.refresh_gauges()
            except Exception as exc:  # noqa: BLE001 - readiness reports the store; keep trying
                log.warning("gauge refresh failed", extra={"error": type(exc).__name__})
            await sleep_or_stop(self.stop, 2.0)

    # ------------------------------------------------------------------ run
    async def run(self, ready: asyncio.Event | None = None) -> None:
        self.load_channels()
        await self.store.open()
        for single_node_reset in ("release_all_claims", "inbound_release_all_leases"):
            release = getattr(self.store, single_node_reset, None)
            if release is not None:  # single node: what was in flight at a crash goes again
                await release()
        if self.settings.processing_processes > 0:
            if self.settings.processing_processes > 1:
                log.warning("one processing helper process is used: each batch builds on the"
                            " one before, and the helper keeps its place between them",
                            extra={"asked": self.settings.processing_processes})
            self._pool = ProcessPoolExecutor(1,
                                             mp_context=multiprocessing.get_context("spawn"),
                                             initializer=helper_process_init)
            self.processor.pool = self._pool
            with contextlib.suppress(Exception):  # a helper that cannot start: work here
                await asyncio.get_running_loop().run_in_executor(
                    self._pool, warm_helper, str(self.config().directory),
                    self.config().fingerprint)
        await self.store.listen(lambda destination: self._wake_destinations({destination}))
        api = CalcomApi.from_env(self.metrics) if os.environ.get("CALHL7_CALCOM_API_KEY") else None
        inbound_worker = (InboundWorker(self.store, api, self.inbound_config, self.metrics)
                          if api is not None else None)
        listener = None
        if self.settings.mllp_port is not None:
            listener = await start_listener(
                self.settings.mllp_host, self.settings.mllp_port, store=self.store,
                config_getter=self.inbound_config, metrics=self.metrics,
                ssl=self._mllp_ssl(), max_frame_bytes=self.settings.mllp_max_frame_bytes,
                idle_timeout=self.settings.mllp_idle_timeout_seconds,
                on_accepted=inbound_worker.wake.set if inbound_worker else None,
                processing_ids=self.settings.mllp_processing_ids,
                vt_in_frame=self.settings.mllp_vt_in_frame,
                max_connections=self.settings.mllp_max_connections,
                ack_write_timeout=self.settings.mllp_ack_write_timeout_seconds,
            )
            self.mllp_port = listener.sockets[0].getsockname()[1]
        for source in self.settings.secrets:
            self.metrics.init_source(source)
        await self.refresh_gauges()  # the first scrape already shows what waits on disk
        http = WebhookApp(
            self.store, self.metrics,
            HttpSettings(self.settings.secrets, self.settings.max_body_bytes,
                         serve_metrics=self.settings.metrics_port is None,
                         insecure_unsigned=self.settings.insecure_unsigned,
                         body_timeout_seconds=self.settings.http_body_timeout_seconds),
            self.readiness, on_accepted=self.processor.note_intake,
        )
        servers = [self._uvicorn(http, self.settings.http_host, self.settings.http_port)]
        if self.settings.metrics_port is not None:
            ops = WebhookApp(self.store, self.metrics, HttpSettings({}), self.readiness)
            servers.append(self._uvicorn(ops, self.settings.metrics_host or "127.0.0.1",
                                         self.settings.metrics_port))
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.stop.set)
            loop.add_signal_handler(signal.SIGINT, self.stop.set)
            loop.add_signal_handler(signal.SIGHUP, lambda: self.reload_channels("SIGHUP"))
        try:
            async with asyncio.TaskGroup() as tg:
                serve_tasks = [tg.create_task(s.serve()) for s in servers]
                self._sync_workers()
                tg.create_task(self.processor.run(self.stop))
                tg.create_task(self._watch_config())
                tg.create_task(self._refresh_gauges())
                tg.create_task(self._heartbeat())
                if inbound_worker is not None:
                    tg.create_task(inbound_worker.run(self.stop))
                if api is not None and self.settings.reconcile_interval_seconds > 0:
                    tg.create_task(run_reconciler(
                        api, self.store, self.settings.reconcile_interval_seconds, self.stop,
                        self.metrics, source="default", on_fed=self.processor.wake.set,
                        may_run=lambda: self.store.try_lead(self.settings.node_id)))
                while not all(s.started for s in servers):
                    if any(t.done() for t in serve_tasks):
                        raise RuntimeError("HTTP server failed to start (address in use?)")
                    await asyncio.sleep(0.02)
                self.http_port = _bound_port(servers[0])
                log.info("engine ready", extra={"http_port": self.http_port,
                                                "mllp_port": self.mllp_port,
                                                "node": self.settings.node_id})
                if ready is not None:
                    ready.set()
                await self.stop.wait()
                for s in servers:
                    s.should_exit = True
                for _, _, stop in self._workers.values():
                    stop.set()
                if self._worker_tasks:  # let in-flight sends finish and their ACKs commit
                    await asyncio.wait(set(self._worker_tasks), timeout=15)
        finally:
            if listener is not None:
                await shutdown_mllp(listener, grace=2)
            if api is not None:
                await api.aclose()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
            await self.store.close()
            log.info("engine stopped")

    def _mllp_ssl(self) -> ssl.SSLContext | None:
        if not self.settings.mllp_tls_cert:
            return None
        return server_ssl_context(
            self.settings.mllp_tls_cert, self.settings.mllp_tls_key,
            client_ca_file=self.settings.mllp_tls_client_ca,
            require_client_cert=self.settings.mllp_tls_client_ca is not None)

    async def _heartbeat(self) -> None:
        """Several nodes on PostgreSQL: operators see who is alive (a no-op on SQLite)."""
        beat = getattr(self.store, "heartbeat", None)
        while beat is not None and not self.stop.is_set():
            with contextlib.suppress(Exception):
                await beat(self.settings.node_id, time.time())
            await sleep_or_stop(self.stop, self.settings.heartbeat_seconds)

    def _uvicorn(self, app: WebhookApp, host: str, port: int) -> uvicorn.Server:
        protocol = bounded_http_protocol(
            self.settings.http_header_timeout_seconds, self.settings.http_max_connections,
            lambda reason: self.metrics.http_connections_closed.labels(reason).inc())
        config = uvicorn.Config(
            app, host=host, port=port, lifespan="off", access_log=False, log_config=None,
            http=protocol, loop="none", timeout_graceful_shutdown=5,
            proxy_headers=False,  # nothing reads the client address: skip that layer
        )
        return _Server(config)


class _Server(uvicorn.Server):
    """The engine handles SIGTERM/SIGINT itself (drain, then stop): uvicorn must not take them
    for the duration of serve()."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bound_port(server: uvicorn.Server) -> int | None:
    for s in getattr(server, "servers", []):
        for sock in s.sockets:
            return sock.getsockname()[1]
    return None



def secrets_from_env(env: Mapping[str, str] = os.environ) -> dict[str, list[str]]:
    """CALHL7_WEBHOOK_SECRET for /webhooks/calcom; CALHL7_WEBHOOK_SECRET_<SOURCE> for
    /webhooks/calcom/<source>. A comma separates two secrets while one is being rotated."""
    out: dict[str, list[str]] = {}
    for key, value in env.items():
        if key == "CALHL7_WEBHOOK_SECRET":
            source = "default"
        elif key.startswith("CALHL7_WEBHOOK_SECRET_"):
            source = key.removeprefix("CALHL7_WEBHOOK_SECRET_").lower().replace("_", "-")
        else:
            continue
        secrets = [s.strip() for s in value.split(",") if s.strip()]
        if secrets:
            out[source] = secrets
    return out
