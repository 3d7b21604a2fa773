"""One engine per SQLite data directory, with real processes: a second `serve` on the same
directory refuses to start and names the holder; operator commands still work beside the
running engine; after a kill -9 of the engine a new one starts at once (the kernel dropped
the lock)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from load.harness import REPO, engine_command, free_port, start_engine, wait_ready
from tests.system.test_crash_intake import SECRET


def serve(data: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    return start_engine(data, port, env), port


async def ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    await wait_ready(port, proc, timeout=60)


def calhl7(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(engine_command(*args), env=env, cwd=REPO,
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
