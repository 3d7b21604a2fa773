"""The uvicorn server the webhook app runs in, with the engine in charge of signals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence

import uvicorn

from engine.http.asgi import WebhookApp
from engine.http.protocol import bounded_http_protocol


class _Server(uvicorn.Server):
    """The engine handles SIGTERM/SIGINT itself (drain, then stop): uvicorn must not take them
    for the duration of serve()."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def http_server(app: WebhookApp, host: str, port: int, *, header_timeout: float,
                max_connections: int, on_close: Callable[[str], None]) -> uvicorn.Server:
    """`on_close(reason)` counts the connections the edge bounds end (engine/http/protocol)."""
    protocol = bounded_http_protocol(header_timeout, max_connections, on_close)
    config = uvicorn.Config(
        app, host=host, port=port, lifespan="off", access_log=False, log_config=None,
        http=protocol, loop="none", timeout_graceful_shutdown=5,
        proxy_headers=False,  # nothing reads the client address: skip that layer
    )
    return _Server(config)


async def started(servers: Sequence[uvicorn.Server],
                  tasks: Sequence[asyncio.Task[None]]) -> None:
    """Wait until every server listens; raise if one stopped first."""
    while not all(s.started for s in servers):
        if any(t.done() for t in tasks):
            raise RuntimeError("HTTP server failed to start (address in use?)")
        await asyncio.sleep(0.02)


def bound_port(server: uvicorn.Server) -> int | None:
    for s in getattr(server, "servers", []):
        for sock in s.sockets:
            return int(sock.getsockname()[1])
    return None
