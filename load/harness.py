"""Real processes for the benchmarks and the system tests: free ports, `python -m engine`
subprocesses (serve, sim-ehr) and waiting until they listen. One copy, so a benchmark and a
crash test start the engine the same way."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]

_Out = int | IO[Any] | None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 30) -> None:
    """Until something accepts connections on 127.0.0.1:`port`; SystemExit when `proc` exits
    first or after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"process {proc.args[:4]} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listening on 127.0.0.1:{port}")


def engine_command(*args: str) -> list[str]:
    """`calhl7 ARGS` as this interpreter runs it from the checkout."""
    return [sys.executable, "-m", "engine", *args]


def engine_has_mllp_listener() -> bool:
    """Whether this checkout's `calhl7 serve` takes --mllp."""
    out = subprocess.run(engine_command("serve", "--help"), cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    return "--mllp" in out.stdout


def start(args: list[str], env: dict[str, str] | None = None, *,
          stdout: _Out = subprocess.DEVNULL, stderr: _Out = subprocess.PIPE
          ) -> subprocess.Popen[bytes]:
    """`calhl7 ARGS` in its own process, run from the repository root. By default its stderr
    is kept for `wait_ready` to show when it exits early."""
    return subprocess.Popen(engine_command(*args), env=env, cwd=REPO, stdout=stdout,
                            stderr=stderr)


def serve_args(data: Path, http_port: int, channels: Path | None = None,
               extra: list[str] | None = None) -> list[str]:
    """`serve` on 127.0.0.1:`http_port` with the embedded store in `data`."""
    return ["serve", "--http", f"127.0.0.1:{http_port}", "--data", str(data), "--channels",
            str(channels or REPO / "channels"), *(extra or [])]


def engine_env(secret: str, **extra: str) -> dict[str, str]:
    """This environment plus the webhook secret, quiet logs and the example destinations
    pointed at ports nobody listens on (override with EHR_MAIN_PORT=... in `extra`)."""
    return {**os.environ, "CALHL7_WEBHOOK_SECRET": secret, "CALHL7_LOG_LEVEL": "warning",
            "EHR_MAIN_PORT": str(free_port()), "EHR_LEGACY_PORT": str(free_port()), **extra}


def start_engine(data: Path, port: int, env: dict[str, str], *, channels: Path | None = None,
                 stdout: _Out = subprocess.DEVNULL, stderr: _Out = subprocess.PIPE
                 ) -> subprocess.Popen[bytes]:
    """`calhl7 serve` on a data directory; returns at once (see `wait_port`, `wait_ready`)."""
    return start(serve_args(data, port, channels), env, stdout=stdout, stderr=stderr)


async def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Until the engine's /healthz answers 200; AssertionError with its stderr when it exits
    first (started with stderr=PIPE) or after `timeout` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise AssertionError(f"engine exited: {err[-2000:]}")
            try:
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("engine did not start")


def sim_log(path: Path) -> list[dict[str, object]]:
    """The records a `calhl7 sim-ehr --log` wrote so far."""
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


class Procs:
    """The processes this run started; stopped by their own pid only."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[Any]]] = []

    def start(self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None
              ) -> subprocess.Popen[Any]:
        f = log.open("wb")
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        self.procs.append((name, p))
        return p

    def stop(self) -> None:
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in reversed(self.procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
