"""The running configuration: channels, destinations and inbound files, loaded at start and
swapped whole on a change of their files or SIGHUP. A broken change keeps the running one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from engine.aio import sleep_or_stop
from engine.config.files import ConfigError
from engine.config.inbound import InboundConfig, load_inbound_config, own_applications_of
from engine.config.outbound import Config, config_fingerprint, load_config
from engine.metrics import Metrics

log = logging.getLogger("calhl7.app")  # the name operators already filter on


class LiveConfig:
    def __init__(self, directory: Path, metrics: Metrics,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.directory = directory
        self.metrics = metrics
        self.on_change = on_change  # after a successful reload (e.g. match the workers)
        self._config: Config | None = None
        self._inbound: InboundConfig | None = None
        self._fingerprint: object = None

    def config(self) -> Config:
        assert self._config is not None, "configuration not loaded"
        return self._config

    def inbound(self) -> InboundConfig:
        assert self._inbound is not None, "configuration not loaded"
        return self._inbound

    def load(self) -> None:
        """Load at start: a broken configuration raises ConfigError with every problem listed."""
        config = load_config(self.directory)
        self._inbound = load_inbound_config(self.directory, own_applications_of(config))
        self._config = config
        self._fingerprint = config_fingerprint(self.directory)

    def reload(self, reason: str) -> bool:
        """Swap the whole configuration at once; a broken one keeps the running one."""
        try:
            new = load_config(self.directory)
            inbound = load_inbound_config(self.directory, own_applications_of(new))
        except ConfigError as exc:
            self.metrics.config_reloads.labels("failed").inc()
            log.error("channel reload failed; keeping the running configuration",
                      extra={"reason": reason, "problems": str(exc)})
            return False
        self._config, self._inbound = new, inbound
        self._fingerprint = config_fingerprint(self.directory)
        self.metrics.config_reloads.labels("ok").inc()
        log.info("channels reloaded", extra={"reason": reason,
                                             "channels": len(new.channels),
                                             "destinations": len(new.destinations)})
        self.on_change()
        return True

    async def watch(self, stop: asyncio.Event, interval: float) -> None:
        """Reload when the files change (checked every `interval` seconds) until `stop`."""
        while not stop.is_set():
            await sleep_or_stop(stop, interval)
            with contextlib.suppress(OSError):
                if config_fingerprint(self.directory) != self._fingerprint:
                    self.reload("files changed")
