"""One engine per SQLite data directory, with real processes: a second `serve` on the same
directory refuses to start and names the holder; operator commands still work beside the
running engine; after a kill -9 of the engine a new one starts at once (the kernel dropped
the lock)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port
from tests.engine_harness import eventually
from tests.test_crash_intake import SECRET


def serve(data: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--http", f"127.0.0.1:{port}",
         "--data", str(data), "--channels", str(REPO / "channels")],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, port


async def ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    async def up() -> bool:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(up, timeout=60, interval=0.1)


def calhl7(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.slow
async def test_a_second_engine_on_one_data_directory_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "CALHL7_WEBHOOK_SECRET": SECRET, "CALHL7_LOG_LEVEL": "warning",
           "EHR_MAIN_PORT": str(free_port()), "EHR_LEGACY_PORT": str(free_port())}
    first, first_port = serve(data, env)
    procs = [first]
    try:
        await ready(first_port, first)
        second, _ = serve(data, env)
        procs.append(second)
        _, err = second.communicate(timeout=60)
        assert second.returncode != 0
        text = err.decode()
        assert f"pid {first.pid}" in text and socket.gethostname() in text, text
        assert "in use by another calhl7 engine" in text and "--data" in text
        await ready(first_port, first)  # the first one runs on, untouched

        # read-only views, and the operator's write verbs, work beside the running engine
        for verb in (["queue", "--lanes"], ["audit"], ["dead-letters"],
                     ["pause", "family-medicine"], ["resume", "family-medicine"]):
            done = calhl7(*verb, "--data", str(data), env=env)
            assert done.returncode == 0, (verb, done.stderr)

        first.send_signal(signal.SIGKILL)
        first.wait(10)
        third, third_port = serve(data, env)  # the kernel released the lock with the process
        procs.append(third)
        await ready(third_port, third)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
