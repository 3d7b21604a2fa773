"""Run the real engine (real HTTP server, real store, real MLLP) inside a test's event loop."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from engine.app import Engine, build_engine
from engine.metrics import Metrics
from engine.settings import Settings
from engine.sim.bookings import compact, sign
from engine.sim.ehr import SimPolicy, run_sim, simulator_of, stop_sim
from load.harness import free_port
from tests.conftest import REPO

SECRET = "test-secret-do-not-use"


class Running:
    def __init__(self, engine: Engine, client: httpx.AsyncClient, sims: dict[str, Any]) -> None:
        self.engine = engine
        self.client = client
        self.sims = sims

    @property
    def store(self) -> Any:
        return self.engine.store

    async def post(self, hook: dict[str, Any] | bytes, *, secret: str = SECRET,
                   path: str = "/webhooks/calcom", **headers: str) -> httpx.Response:
        body = hook if isinstance(hook, bytes) else compact(hook)
        h = {"Content-Type": "application/json", "X-Cal-Signature-256": sign(body, secret)}
        h.update(headers)
        return await self.client.post(path, content=body, headers=h)

    async def settle(self, timeout: float = 20.0) -> dict[str, int]:
        """Wait until nothing is pending or queued (or the timeout), return the counts."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            counts = await self.store.counts()
            if not counts.get("events_pending") and not counts.get("messages_queued"):
                return counts
            if loop.time() > deadline:
                return counts
            await asyncio.sleep(0.05)


@asynccontextmanager
async def running_engine(
    tmp_path: Path,
    *,
    channels_dir: Path | None = None,
    main_policy: SimPolicy | None = None,
    legacy_policy: SimPolicy | None = None,
    start_sims: bool = True,
    store_url: str | None = None,
    **settings: Any,
) -> AsyncIterator[Running]:
    """The engine with the example channels, and two simulated EHRs on free ports."""
    ports = {"main": free_port(), "legacy": free_port()}
    os.environ.update({"EHR_MAIN_HOST": "127.0.0.1", "EHR_MAIN_PORT": str(ports["main"]),
                       "EHR_LEGACY_HOST": "127.0.0.1", "EHR_LEGACY_PORT": str(ports["legacy"])})
    sims: dict[str, Any] = {}
    if start_sims:
        sims["main"] = await run_sim("127.0.0.1", ports["main"], main_policy or SimPolicy(),
                                     tmp_path / "main.jsonl")
        sims["legacy"] = await run_sim(
            "127.0.0.1", ports["legacy"], legacy_policy or SimPolicy(encoding="ascii"),
            tmp_path / "legacy.jsonl")
    engine = build_engine(Settings.from_env(
        http_port=free_port(), data_dir=tmp_path / "data",
        channels_dir=channels_dir or REPO / "channels", store_url=store_url,
        secrets=settings.pop("secrets", {"default": [SECRET]}), **settings,
    ), metrics=Metrics())
    ready = asyncio.Event()
    task = asyncio.create_task(engine.run(ready))
    done, _ = await asyncio.wait([task, asyncio.ensure_future(ready.wait())],
                                 timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raise what stopped it
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{engine.http_port}",
                                     timeout=30) as client:
            yield Running(engine, client, {k: simulator_of(v) or v for k, v in sims.items()}
                          | {f"{k}_server": v for k, v in sims.items()} | {"ports": ports})
    finally:
        engine.stop.set()
        await asyncio.wait_for(task, 30)
        for server in [v for k, v in sims.items()]:
            await stop_sim(server)


async def eventually(condition: Any, timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll `condition()` (sync or async) until it returns something truthy; fail after
    `timeout`. Tests wait for a condition, never for a fixed time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout:g}s")
        await asyncio.sleep(interval)


def fast_channels(tmp_path: Path, **overrides: Any) -> Path:
    """The example channels with timeouts and back-off short enough for tests."""
    target = tmp_path / "channels"
    shutil.copytree(REPO / "channels", target)
    for dest in (target / "destinations").glob("*.yaml"):
        doc = yaml.safe_load(dest.read_text())
        doc.setdefault("connection", {}).update(
            {"response_timeout_seconds": 0.5, "connect_timeout_seconds": 0.5,
             "reconnect_initial_seconds": 0.05, "reconnect_max_seconds": 0.2})
        doc.setdefault("retry", {}).update(
            {"initial_seconds": 0.05, "max_seconds": 0.2, "max_attempts": 50})
        for key, value in overrides.items():
            doc.setdefault(key, {}).update(value)
        dest.write_text(yaml.safe_dump(doc))
    return target
