"""A small, fast HTTP/1.1 load client for benchmarks (keep-alive, one request in flight per
connection). httpx costs more CPU per request than the server we measure; this does not."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    async def exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       request: bytes, since: float | None = None) -> None:
        """One request, its answer, and the bookkeeping; latency counted from `since` (when
        the request was due) or from now."""
        t0 = time.perf_counter() if since is None else since
        writer.write(request)
        self.sent += 1
        status = await _read_response(reader)
        self.latencies.append(time.perf_counter() - t0)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            self.ok += 1

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(p / 100 * len(data)))] * 1000

    def summary(self) -> str:
        return (f"{self.ok} ok / {self.sent} sent in {self.seconds:.1f}s = {self.rate:,.0f}/s; "
                f"p50 {self.pct(50):.2f} ms, p99 {self.pct(99):.2f} ms; statuses {self.statuses}")


def build_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed")
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def closed_loop(host: str, port: int, requests: Iterator[bytes], connections: int,
                      seconds: float) -> LoadResult:
    """`connections` clients, each sending as soon as its previous answer came."""
    result = LoadResult()
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                try:
                    await result.exchange(reader, writer, next(requests))
                except (ConnectionError, asyncio.IncompleteReadError):
                    result.errors += 1
                    return
        finally:
            writer.close()

    return await _run_clients(result, client, connections)


async def open_loop(host: str, port: int, requests: Iterator[bytes], rate: float,
                    seconds: float, connections: int = 64) -> LoadResult:
    """Requests at a fixed rate, whatever the answers do (latency without coordinated
    omission: measured from when each request was due)."""
    result = LoadResult()
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (item := await queue.get()) is not None:
                due, req = item
                await result.exchange(reader, writer, req, since=due)
        finally:
            writer.close()

    tasks = [asyncio.create_task(client()) for _ in range(connections)]
    start = time.perf_counter()
    for i in itertools.count():
        due = start + i / rate
        if due - start >= seconds:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, next(requests)))
    for _ in tasks:
        queue.put_nowait(None)
    await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - start
    return result


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def send_all(host: str, port: int, requests: Sequence[bytes], connections: int
                   ) -> LoadResult:
    """Send every request of the list exactly once over `connections` keep-alive
    connections (closed loop), as fast as the answers come."""
    result = LoadResult()
    it = iter(requests)

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for req in it:
                await result.exchange(reader, writer, req)
        finally:
            writer.close()

    return await _run_clients(result, client, connections)


async def _run_clients(result: LoadResult, client: Callable[[], Awaitable[None]],
                       connections: int) -> LoadResult:
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    result.seconds = time.perf_counter() - start
    return result
