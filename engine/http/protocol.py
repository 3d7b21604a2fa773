"""uvicorn's httptools protocol with the two bounds uvicorn does not have.

uvicorn times out idle keep-alive connections, but not a request whose headers never finish
(a connection that sends half a request line, or nothing, stays open for good) and it has no
cap on open connections. Both are added here, per connection, without touching the request
path: a timer from the first byte of a request (or from the connect) to the end of its
headers, and a count checked when a connection is made. The body has its own deadline in the
ASGI app (asgi.py), where a 408 can be answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("calhl7.http")

_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
         b"connection: close\r\ncontent-length: 47\r\n\r\n"
         b'{"error": "too many connections; retry later"}\n')


def bounded_http_protocol(header_timeout: float, max_connections: int,
                          on_close: Callable[[str], None]) -> type[HttpToolsProtocol]:
    """A protocol class for uvicorn.Config(http=...). `on_close(reason)` counts the
    connections it ends: "over_cap" (answered 503) or "header_timeout"."""

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("http connection refused: %d connections open", max_connections)
                on_close("over_cap")
                transport.write(_BUSY)
                transport.close()
                return
            self._arm()  # a connection that never sends a byte is bounded too

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                on_close("header_timeout")
                self.transport.close()

    return BoundedHttpToolsProtocol
