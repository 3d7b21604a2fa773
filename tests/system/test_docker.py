"""What can be checked of docker/ without a Docker engine: the compose file parses and
references only files that exist, Prometheus scrapes every engine node, and the image's entry
command and health check run here, outside Docker, with the image's environment."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

from load.harness import free_port
from tests.conftest import REPO

DOCKER = REPO / "docker"


def dockerfile_env() -> dict[str, str]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_compose_references_only_files_that_exist() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "engine-1", "engine-2", "ehr-main", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = DOCKER / build["context"]
            assert (context / build["dockerfile"]).is_file(), name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: {source}"
    for engine in ("engine-1", "engine-2"):
        env = services[engine]["environment"]
        assert env["CALHL7_STORE"].startswith("postgresql://")
        assert "WEBHOOK_SECRET" in json.dumps(env)


def test_dockerfile_copies_what_exists_and_runs_as_non_root() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.M):
        assert (REPO / source).exists(), source
    assert re.search(r"^USER (?!root)\S+", text, flags=re.M)
    assert "HEALTHCHECK" in text


def test_prometheus_scrapes_every_engine_node() -> None:
    prom = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    port = dockerfile_env()["CALHL7_METRICS"].rsplit(":", 1)[1]
    assert targets == {f"engine-1:{port}", f"engine-2:{port}"}


def test_image_entry_command_and_health_check_run_here(tmp_path: Path) -> None:
    env = {**os.environ, **dockerfile_env()}
    http, metrics = free_port(), free_port()
    env.update({"CALHL7_HTTP": f"127.0.0.1:{http}", "CALHL7_METRICS": f"127.0.0.1:{metrics}",
                "CALHL7_DATA": str(tmp_path), "CALHL7_CHANNELS": str(REPO / "channels"),
                "CALHL7_WEBHOOK_SECRET": "docker-test", "CALHL7_LOG_LEVEL": "warning"})
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, flags=re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (.+)$", text, flags=re.M).group(1))
    health = json.loads(re.search(r"HEALTHCHECK .*?CMD (\[.+\])", text).group(1))
    health = [sys.executable if a == "python" else a.replace("9464", str(metrics))
              for a in health]
    assert entry == ["calhl7"]
    script = Path(sys.executable).with_name(entry[0])  # the console script pip installed
    engine = subprocess.Popen([str(script), *cmd], env=env, cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if subprocess.run(health, capture_output=True).returncode == 0:
                break
            assert engine.poll() is None, engine.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        assert subprocess.run(health, capture_output=True).returncode == 0
    finally:
        engine.terminate()
        assert engine.wait(15) == 0
