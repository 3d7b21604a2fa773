"""The offline install, as a hospital without internet would do it: `./dev wheelhouse DIR`
builds calhl7 and every locked dependency as wheels; a fresh virtual environment outside the
repository installs from that folder alone (`--no-index`, no pip configuration) and runs
`calhl7 init`, `check`, `render` and `demo` with nothing of the checkout beside it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.calcom_factory import ORGANIZER, booking_webhook, compact
from tests.conftest import REPO


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{cmd}: {result.returncode}\n{result.stderr[-3000:]}"
    return result


def locked_names() -> set[str]:
    text = (REPO / "requirements.lock").read_text()
    return {m.group(1).lower().replace("_", "-")
            for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", text, flags=re.M)}


def test_wheelhouse_installs_offline_and_runs_outside_the_repository(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    run([str(REPO / "dev"), "wheelhouse", str(wheels)], cwd=REPO, timeout=600)
    built = {p.name.split("-")[0].lower().replace("_", "-") for p in wheels.glob("*.whl")}
    assert "calhl7" in built
    assert locked_names() <= built, f"no wheel for {sorted(locked_names() - built)}"

    # pip as on a server without internet: this folder only, no index, no site configuration
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
         "--find-links", str(wheels), "calhl7"], cwd=tmp_path, env=env)
    where = run([str(venv / "bin" / "python"), "-c", "import engine; print(engine.__file__)"],
                cwd=tmp_path, env=env).stdout
    assert where.startswith(str(venv)), where  # the installed copy, not the checkout

    calhl7 = str(venv / "bin" / "calhl7")
    run([calhl7, "init", "site"], cwd=tmp_path, env=env)
    out = run([calhl7, "check", "site"], cwd=tmp_path, env=env).stdout
    assert "OK: 1 channel(s) (1 enabled), 1 destination(s), 1 inbound channel(s)" in out

    body = booking_webhook("BOOKING_CREATED", uid="wheelhouseBooking0001", event_type_id=731042,
                           organizer={**ORGANIZER, "id": 4211})
    (tmp_path / "booking.json").write_bytes(compact(body))
    out = run([calhl7, "render", "--channel", "site/clinic.yaml", "booking.json",
               "--now", "2026-04-01T12:00:00+00:00"], cwd=tmp_path, env=env).stdout
    segments = [line for line in out.splitlines() if not line.startswith("#") and line]
    assert segments[0].startswith("MSH|^~\\&|CALCOM_HL7|MY_CLINIC|EHR|MY_CLINIC|")
    assert "|SIU^S12^SIU_S12|PREVIEW000001|P|2.5.1" in segments[0]
    assert segments[1].startswith("SCH|wheelhouseBooking0001^CALCOM|")
    assert any(s.startswith("AIS|1|A|NPV45^New patient visit 45 min^L|") for s in segments)

    # the demo: the example channels and templates come out of the installed package
    out = run([calhl7, "demo", "--data", "demo"], cwd=tmp_path, env=env, timeout=180).stdout
    # what it suggests next works where it ran: the installed command, not the checkout's ./dev
    assert "  calhl7 render --channel " in out and "./dev" not in out
    assert (tmp_path / "demo" / "channels" / "family-medicine.yaml").is_file()
    log = (tmp_path / "demo" / "ehr-main.jsonl").read_text().splitlines()
    received = [json.loads(line) for line in log if line.strip()]
    assert len(received) > 10 and {r["ack"] for r in received} == {"AA"}
