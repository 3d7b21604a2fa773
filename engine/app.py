"""Wiring only: hands each part what it needs, starts them, and stops them in order.

Nothing here decides anything about bookings or HL7. The parts are built from one `Settings`
(`build_engine`), so a test, the demo and `calhl7 serve` run the same engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import ssl
from concurrent.futures import ProcessPoolExecutor
from functools import partial

from engine.calcom.api import CalcomApi
from engine.config.inbound import InboundConfig
from engine.config.outbound import Config
from engine.delivery.supervisor import Supervisor
from engine.http.asgi import HttpSettings, Readiness, WebhookApp
from engine.http.server import bound_port, http_server, started
from engine.inbound.listener import start_listener
from engine.inbound.worker import InboundWorker
from engine.live_config import LiveConfig
from engine.metrics import Metrics
from engine.mllp.server import shutdown as shutdown_mllp
from engine.mllp.tls import server_ssl_context
from engine.node import heartbeat, keep_gauges, refresh_gauges
from engine.processing import Processor, helper_process_init, warm_helper
from engine.reconcile import run_reconciler
from engine.settings import Settings
from engine.store import open_store
from engine.store.roles import Store

log = logging.getLogger("calhl7.app")


def build_engine(settings: Settings, metrics: Metrics | None = None) -> Engine:
    metrics = metrics or Metrics()
    store = open_store(settings.store_location(), engine=True)
    return Engine(settings, store, metrics, CalcomApi.from_settings(settings, metrics))


class Engine:
    """Owns what it is handed from run() on: it opens and closes the store and the API."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics,
                 calcom_api: CalcomApi | None = None) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.calcom_api = calcom_api
        self.readiness = Readiness()
        self.stop = asyncio.Event()
        self.live = LiveConfig(settings.channels_dir, metrics)
        self.supervisor = Supervisor(store, metrics, settings.node_id,
                                     lambda: self.config().destinations,
                                     self.readiness.destinations, self.stop)
        self.live.on_change = self.supervisor.sync
        self.processor = Processor(
            store, self.config, metrics, self.supervisor.wake,
            echo_map=lambda: self.inbound_config().echo_map(), node_id=settings.node_id,
        )
        self._pool: ProcessPoolExecutor | None = None
        self.http_port: int | None = None
        self.mllp_port: int | None = None

    def config(self) -> Config:
        return self.live.config()

    def inbound_config(self) -> InboundConfig:
        return self.live.inbound()

    def reload_channels(self, reason: str) -> bool:
        return self.live.reload(reason)

    async def refresh_gauges(self) -> None:
        await refresh_gauges(self.store, self.metrics, self.config().destinations)

    async def run(self, ready: asyncio.Event | None = None) -> None:
        s, api = self.settings, self.calcom_api
        try:
            self.live.load()
        except BaseException:
            if api is not None:
                await api.aclose()
            raise
        self.readiness.channels_loaded = True
        await self.store.open()
        await self.store.recover_single_node()  # one node: what was in flight goes again
        await self._start_helper()
        await self.store.listen(lambda destination: self.supervisor.wake({destination}))
        inbound_worker = (InboundWorker(self.store, api, self.inbound_config, self.metrics)
                          if api is not None else None)
        listener = None
        if s.mllp_port is not None:
            listener = await start_listener(
                s.mllp_host, s.mllp_port, store=self.store,
                config_getter=self.inbound_config, metrics=self.metrics,
                ssl=self._mllp_ssl(), max_frame_bytes=s.mllp_max_frame_bytes,
                idle_timeout=s.mllp_idle_timeout_seconds,
                on_accepted=inbound_worker.wake.set if inbound_worker else None,
                processing_ids=s.mllp_processing_ids, vt_in_frame=s.mllp_vt_in_frame,
                max_connections=s.mllp_max_connections,
                ack_write_timeout=s.mllp_ack_write_timeout_seconds,
            )
            self.mllp_port = listener.sockets[0].getsockname()[1]
        for source in s.secrets:
            self.metrics.init_source(source)
        await self.refresh_gauges()  # the first scrape already shows what waits on disk
        http = WebhookApp(
            self.store, self.metrics,
            HttpSettings(s.secrets, s.max_body_bytes, serve_metrics=s.metrics_port is None,
                         insecure_unsigned=s.insecure_unsigned,
                         body_timeout_seconds=s.http_body_timeout_seconds),
            self.readiness, on_accepted=self.processor.note_intake,
        )
        bounded = partial(
            http_server, header_timeout=s.http_header_timeout_seconds,
            max_connections=s.http_max_connections,
            on_close=lambda why: self.metrics.http_connections_closed.labels(why).inc())
        servers = [bounded(http, s.http_host, s.http_port)]
        if s.metrics_port is not None:
            ops = WebhookApp(self.store, self.metrics, HttpSettings({}), self.readiness)
            servers.append(bounded(ops, s.metrics_host or "127.0.0.1", s.metrics_port))
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.stop.set)
            loop.add_signal_handler(signal.SIGINT, self.stop.set)
            loop.add_signal_handler(signal.SIGHUP, lambda: self.reload_channels("SIGHUP"))
        try:
            async with asyncio.TaskGroup() as tg:
                serve_tasks = [tg.create_task(server.serve()) for server in servers]
                self.supervisor.sync()
                tg.create_task(self.processor.run(self.stop))
                tg.create_task(self.live.watch(self.stop, s.reload_interval_seconds))
                tg.create_task(keep_gauges(self.refresh_gauges, self.stop))
                tg.create_task(heartbeat(self.store, s.node_id, self.stop, s.heartbeat_seconds))
                if inbound_worker is not None:
                    tg.create_task(inbound_worker.run(self.stop))
                if api is not None and s.reconcile_interval_seconds > 0:
                    tg.create_task(run_reconciler(
                        api, self.store, s.reconcile_interval_seconds, self.stop,
                        self.metrics, source="default", on_fed=self.processor.wake.set,
                        may_run=lambda: self.store.try_lead(s.node_id)))
                await started(servers, serve_tasks)
                self.http_port = bound_port(servers[0])
                log.info("engine ready", extra={"http_port": self.http_port,
                                                "mllp_port": self.mllp_port, "node": s.node_id})
                if ready is not None:
                    ready.set()
                await self.stop.wait()
                for server in servers:
                    server.should_exit = True
                await self.supervisor.drain(timeout=15)  # in-flight sends finish, ACKs commit
        finally:
            if listener is not None:
                await shutdown_mllp(listener, grace=2)
            if api is not None:
                await api.aclose()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
            await self.store.close()
            log.info("engine stopped")

    async def _start_helper(self) -> None:
        """The pure core in a helper process; one that cannot start leaves the work here."""
        asked = self.settings.processing_processes
        if asked <= 0:
            return
        if asked > 1:
            log.warning("one processing helper process is used: each batch builds on the"
                        " one before, and the helper keeps its place between them",
                        extra={"asked": asked})
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=helper_process_init)
        self.processor.pool = self._pool
        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(
                self._pool, warm_helper, str(self.config().directory), self.config().fingerprint)

    def _mllp_ssl(self) -> ssl.SSLContext | None:
        s = self.settings
        if not s.mllp_tls_cert:
            return None
        return server_ssl_context(s.mllp_tls_cert, s.mllp_tls_key,
                                  client_ca_file=s.mllp_tls_client_ca,
                                  require_client_cert=s.mllp_tls_client_ca is not None)
