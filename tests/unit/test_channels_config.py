"""Channel files: loading, every problem at once (file, path, line), env interpolation, schema."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import pydantic
import pytest

from engine.config.files import ConfigError
from engine.channels.models import Channel
from engine.config.outbound import Config, config_fingerprint, json_schema, load_config
from tests.conftest import FIXTURES, REPO

GOOD_DEST = """\
name: ehr-main
host: ${TEST_EHR_HOST:-127.0.0.1}
port: ${TEST_EHR_PORT:-2576}
charset: ASCII
"""
GOOD_CHANNEL = """\
name: fm
destination: ehr-main
match:
  event_types: [731042, telehealth-visit]
hl7:
  version: "2.3"
maps:
  providers:
    4211: [1234567893, Testdoctor, Grace, "", "", Dr]
  locations:
    in_person: [FAMMED, EXAM1]
  event_types:
    731042:
      visit_type: [NPV45, New patient visit, L]
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def problems_of(root: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(root)
    return [str(p) for p in info.value.problems]


def test_example_channels_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("EHR_MAIN_HOST", "EHR_MAIN_PORT", "EHR_LEGACY_HOST", "EHR_LEGACY_PORT"):
        monkeypatch.delenv(var, raising=False)
    config = load_config(REPO / "channels")
    assert [c.name for c in config.channels] == ["family-medicine", "main-street-front-desk", "physiotherapy"]
    main, legacy = config.destinations["ehr-main"], config.destinations["ehr-legacy"]
    assert (main.host, main.port, main.charset, main.codec) == ("127.0.0.1", 2576, "UTF-8", "utf-8")
    assert (legacy.port, legacy.codec) == (2577, "ascii")
    fm = config.channel("family-medicine")
    assert fm.maps.providers["4211"][0] == "1234567893"  # YAML int key and value -> text
    assert fm.maps.event_types["731042"].visit_type == ("NPV45", "New patient visit 45 min", "L")
    assert config.channel("main-street-front-desk").hl7.reschedule_as == "S14"
    assert set(config.templates) == {"family-medicine", "main-street-front-desk", "physiotherapy"}


def test_env_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, {"destinations/ehr-main.yaml": GOOD_DEST, "fm.yaml": GOOD_CHANNEL})
    monkeypatch.delenv("TEST_EHR_HOST", raising=False)
    monkeypatch.setenv("TEST_EHR_PORT", "3999")
    d = load_config(tmp_path).destinations["ehr-main"]
    assert (d.host, d.port) == ("127.0.0.1", 3999)
    monkeypatch.setenv("TEST_EHR_HOST", "ehr.example.internal")
    assert load_config(tmp_path).destinations["ehr-main"].host == "ehr.example.internal"
    monkeypatch.setenv("TEST_EHR_PORT", "not-a-port")
    assert any("destinations/ehr-main.yaml:3: port:" in p for p in problems_of(tmp_path))


@pytest.mark.parametrize("charset", ["UTF-16", "cp500"])
def test_a_charset_that_changes_ascii_bytes_is_refused(tmp_path: Path, charset: str) -> None:
    write(tmp_path, {"destinations/ehr-main.yaml": GOOD_DEST.replace("ASCII", charset),
                     "fm.yaml": GOOD_CHANNEL})
    assert problems_of(tmp_path) == [
        f"destinations/ehr-main.yaml:4: charset: Value error, charset {charset!r} does not keep"
        " ASCII as is; use an ASCII-compatible one such as UTF-8 or ISO-8859-1"]


def test_every_problem_is_reported_at_once_with_file_path_and_line(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_UNSET_VAR", raising=False)
    write(tmp_path, {
        "destinations/ehr-main.yaml": GOOD_DEST.replace("${TEST_EHR_PORT:-2576}", "70000"),
        "destinations/ehr-two.yaml": "name: ehr-two\nhost: ${TEST_UNSET_VAR}\nport: 1\ncharset: KLINGON\n",
        "fm.yaml": GOOD_CHANNEL.replace("destination: ehr-main", "destination: ehr-nowhere"),
        "second.yaml": GOOD_CHANNEL.replace("name: fm", "name: second")
        .replace('version: "2.3"', 'version: "2.4"\n  reschedule_as: S99')
        .replace("[FAMMED, EXAM1]", "FAMMED^EXAM1"),
        "broken.yaml": "name: broken\nmatch: [unclosed\n",
        "dup.yaml": "name: dup\ndestination: ehr-main\nenabled: true\nenabled: false\nsurprise: 1\n",
    })
    found = problems_of(tmp_path)
    expected = [
        "destinations/ehr-main.yaml:3: port: Input should be less than or equal to 65535",
        "destinations/ehr-two.yaml:2: host: environment variable TEST_UNSET_VAR is not set and has no default",
        "destinations/ehr-two.yaml:4: charset: Value error, unknown charset 'KLINGON'",
        "fm.yaml:2: destination: unknown destination 'ehr-nowhere' (known: ehr-main, ehr-two)",
        "second.yaml:6: hl7.version: Input should be '2.5.1' or '2.3'",
        "second.yaml:7: hl7.reschedule_as: Input should be 'S13', 'S14' or 'S15+S12'",
        "second.yaml:12: maps.locations.in_person: Value error, write components as a YAML list",
        "broken.yaml:3: <file>: YAML syntax",
        "dup.yaml:4: enabled: duplicate key",
        "dup.yaml:5: surprise: Extra inputs are not permitted",
    ]
    for e in expected:
        assert any(p.startswith(e) for p in found), f"missing {e!r} in:\n" + "\n".join(found)
    # ehr-two.yaml has two problems; the rest one each (fm's unknown destination included)
    assert len(found) == len(expected)


def test_config_is_immutable() -> None:
    config = load_config(REPO / "channels")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.channels = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.destinations["x"] = config.destinations["ehr-main"]  # type: ignore[index]
    with pytest.raises(pydantic.ValidationError):
        config.channel("family-medicine").enabled = False  # type: ignore[misc]


def test_fingerprint_changes_with_files(tmp_path: Path) -> None:
    root = write(tmp_path, {"destinations/ehr-main.yaml": GOOD_DEST, "fm.yaml": GOOD_CHANNEL})
    first = config_fingerprint(root)
    assert first == config_fingerprint(root) == load_config(root).fingerprint
    (root / "fm.yaml").write_text(GOOD_CHANNEL + "enabled: false\n", encoding="utf-8")
    second = config_fingerprint(root)
    assert second != first
    os.utime(root / "fm.yaml", ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    assert config_fingerprint(root) != second  # same size, new mtime
    third = config_fingerprint(root)
    (root / "notes.txt").write_text("not read by the loader")
    assert config_fingerprint(root) == third


def test_custom_template_is_compiled_and_probed(tmp_path: Path) -> None:
    shutil.copy(REPO / "hl7_templates" / "siu_v23.hl7.j2", tmp_path / "ok.j2")
    files = {"destinations/ehr-main.yaml": GOOD_DEST,
             "fm.yaml": GOOD_CHANNEL.replace('version: "2.3"', 'version: "2.3"\n  template: templates/ok.j2')}
    write(tmp_path, files)
    (tmp_path / "templates").mkdir()
    shutil.move(tmp_path / "ok.j2", tmp_path / "templates" / "ok.j2")
    assert load_config(tmp_path).templates["fm"].name.endswith("templates/ok.j2")
    (tmp_path / "templates" / "ok.j2").write_text("MSH|^~\\&|{{ sending_aplication }}\n")
    found = problems_of(tmp_path)
    assert len(found) == 1 and "fm.yaml: hl7.template:" in found[0] and "sending_aplication" in found[0]
    (tmp_path / "templates" / "ok.j2").write_text("MSH|{% if %}\n")
    found = problems_of(tmp_path)
    assert len(found) == 1 and found[0].startswith("fm.yaml:7: hl7.template:") and "ok.j2:1" in found[0]


def test_the_loader_runs_the_probe_it_is_handed(tmp_path: Path) -> None:
    write(tmp_path, {"destinations/ehr-main.yaml": GOOD_DEST, "fm.yaml": GOOD_CHANNEL})
    seen: list[str] = []

    def probe(config: Config, channel: Channel) -> str | None:
        seen.append(channel.name)
        return "refused by the probe" if channel.name == "fm" else None

    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path, probe=probe)
    assert seen == ["fm"]
    assert [str(p) for p in exc.value.problems] == ["fm.yaml: hl7.template: refused by the probe"]
    assert load_config(tmp_path, probe=lambda config, channel: None).channel("fm").name == "fm"


def test_json_schema_describes_both_files() -> None:
    schema = json_schema()
    json.dumps(schema)  # serialisable
    ch, dest = schema["channel"], schema["destination"]
    assert {"name", "destination", "match", "filters", "hl7", "maps", "unmapped"} <= set(ch["properties"])
    assert set(ch["required"]) == {"name", "destination"}
    hl7_props = ch["$defs"]["Hl7Options"]["properties"]
    assert hl7_props["reschedule_as"]["enum"] == ["S13", "S14", "S15+S12"]
    assert hl7_props["unencodable"]["enum"] == ["escape", "transliterate", "dead_letter"]
    assert {"host", "port", "connection", "ack", "retry", "charset", "lane_key"} <= set(dest["properties"])
    assert dest["properties"]["lane_key"]["enum"] == ["appointment", "patient", "destination"]


# --- the CLI verbs -----------------------------------------------------------------------

def run_cli(*argv: str) -> int:
    import argparse

    from engine.cli.channels import register

    parser = argparse.ArgumentParser(prog="calhl7")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("check", str(REPO / "channels")) == 0
    assert "OK: 3 channel(s)" in capsys.readouterr().out
    write(tmp_path, {"destinations/ehr-main.yaml": GOOD_DEST.replace("2576}", "0}"),
                     "fm.yaml": GOOD_CHANNEL.replace("fm", "x").replace("ehr-main", "nope")})
    assert run_cli("check", str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "destinations/ehr-main.yaml:3: port:" in err and "fm.yaml:2: destination:" in err
    assert "2 problem(s)" in err


def test_cli_check_validates_what_a_custom_template_renders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Renders fine, but the message has no SCH and no resource group: check must say so.
    write(tmp_path, {"destinations/ehr-main.yaml": GOOD_DEST,
                     "fm.yaml": GOOD_CHANNEL.replace('version: "2.3"', 'version: "2.3"\n  template: t.j2'),
                     "t.j2": "MSH|^~\\&|A|B|C|D|{{ message_time }}||SIU^S12|{{ control_id }}|P|2.3\nPID|1\n"})
    assert run_cli("check", str(tmp_path)) == 1
    assert "fm.yaml: hl7.template: sample booking:" in capsys.readouterr().err


def test_cli_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("schema", "--kind", "destination") == 0
    assert "lane_key" in json.loads(capsys.readouterr().out)["properties"]


def test_cli_render_preview(capsys: pytest.CaptureFixture[str]) -> None:
    hooks = FIXTURES / "calcom" / "webhooks"
    channel = str(REPO / "channels" / "family-medicine.yaml")
    assert run_cli("render", "--channel", channel, str(hooks / "booking_created.json"),
                   "--now", "2026-10-05T13:21:09+00:00") == 0
    out = capsys.readouterr().out
    assert ("\nMSH|^~\\&|CALCOM_HL7|ACME_CLINIC|MAIN_EHR|ACME_CLINIC|20261005092109-0400||"
            "SIU^S12^SIU_S12|") in out
    assert "\nSCH|EcVcNhWTKwptsHL3bfEcnZ^CALCOM|" in out
    assert run_cli("render", "--channel", channel, "--previous", str(hooks / "booking_created.json"),
                   str(hooks / "booking_rescheduled.json"), "--fields") == 0
    out = capsys.readouterr().out
    assert "SIU^S13^SIU_S12" in out
    assert "\nSCH-1.1 " in out and "= EcVcNhWTKwptsHL3bfEcnZ\n" in out  # the first uid kept
    assert "\nAIS-3.1 " in out and "= NPV45\n" in out
    assert "\nTQ1-7 " in out and "= 20261103090000-0500\n" in out  # after the clocks went back


def test_the_readme_render_example_works(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.hl7.validate import validate_strict

    for channel in ("family-medicine.yaml", "main-street-front-desk.yaml"):
        assert run_cli("render", "--channel", str(REPO / "channels" / channel),
                       str(REPO / "examples" / "booking_created.json")) == 0
        out = capsys.readouterr().out
        er7 = "".join(line + "\r" for line in out.splitlines() if line[3:4] == "|")
        assert er7.startswith("MSH|") and validate_strict(er7) == [], out


def test_an_inbound_channel_with_a_charset_that_changes_ascii_bytes_is_refused(
        tmp_path: Path) -> None:
    from engine.config.inbound import load_inbound_config

    shutil.copytree(REPO / "channels", tmp_path / "channels")
    inbound = tmp_path / "channels" / "inbound" / "ehr-main.yaml"
    inbound.write_text(inbound.read_text().replace("charset: UTF-8", "charset: UTF-16"))
    with pytest.raises(ConfigError) as info:
        load_inbound_config(tmp_path / "channels")
    assert any("charset 'UTF-16' does not keep ASCII as is" in str(p)
               for p in info.value.problems)
