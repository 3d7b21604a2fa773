"""`calhl7 init DIR`: the starter files pass `calhl7 check`, show every option of their kind,
use the site's own copy of the templates, and never overwrite a folder by surprise."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from engine.channels.models import Channel
from engine.cli import main
from engine.config.destinations import Destination
from engine.config.inbound import InboundChannel, load_inbound_config
from engine.config.outbound import load_config
from engine.hl7.render import shipped_templates


def option_names(schema: dict[str, Any]) -> set[str]:
    """Every property name in a JSON Schema, nested models included."""
    defs = schema.get("$defs", {})
    names: set[str] = set()
    seen: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                name = ref.rsplit("/", 1)[1]
                if name not in seen:
                    seen.add(name)
                    walk(defs[name])
            for key, value in node.get("properties", {}).items():
                names.add(key)
                walk(value)
            for key in ("items", "additionalProperties", "anyOf", "allOf", "prefixItems"):
                walk(node.get(key))
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)
    return names


def test_init_writes_a_site_that_check_passes(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    assert main(["init", str(site)]) == 0
    out = capsys.readouterr().out
    assert f"calhl7 check {site}" in out
    files = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    assert files == {"clinic.yaml", "destinations/ehr.yaml", "inbound/ehr.yaml",
                     "templates/README.md", "templates/siu_v23.hl7.j2",
                     "templates/siu_v251.hl7.j2"}
    for name in ("siu_v23.hl7.j2", "siu_v251.hl7.j2", "README.md"):
        assert (site / "templates" / name).read_bytes() == \
            shipped_templates().joinpath(name).read_bytes()
    assert main(["check", str(site)]) == 0
    assert "OK: 1 channel(s) (1 enabled), 1 destination(s), 1 inbound channel(s)" in \
        capsys.readouterr().out


@pytest.mark.parametrize(("path", "model"), [
    ("clinic.yaml", Channel),
    ("destinations/ehr.yaml", Destination),
    ("inbound/ehr.yaml", InboundChannel),
])
def test_starter_files_show_every_option(tmp_path: Path, path: str, model: Any) -> None:
    assert main(["init", str(tmp_path / "site")]) == 0
    text = (tmp_path / "site" / path).read_text()
    # an option is shown as a key, set or commented out (`# key:`), in block or flow style
    missing = sorted(name for name in option_names(model.model_json_schema())
                     if not re.search(rf"(^|[\s{{#-]){re.escape(name)}:", text, flags=re.M))
    assert not missing, f"{path} does not show: {missing}"


def test_the_starter_channel_renders_with_the_sites_template(tmp_path: Path) -> None:
    site = tmp_path / "site"
    assert main(["init", str(site)]) == 0
    template = site / "templates" / "siu_v251.hl7.j2"
    template.write_text(template.read_text().replace("|{{ processing_id }}|", "|T|"))
    config = load_config(site)
    assert config.templates["clinic"].name == str(site / "templates" / "siu_v251.hl7.j2")
    from engine.channels.routing import probe_message

    msh = probe_message(config, config.channel("clinic")).split("\r")[0].split("|")
    assert msh[10] == "T"  # MSH-11 from the site's edited copy, not the shipped one
    inbound = load_inbound_config(site)
    assert inbound.channel_for("EHR", "MY_CLINIC") is not None


def test_init_refuses_a_folder_that_is_not_empty(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "clinic.yaml").write_text("# ours\n")
    assert main(["init", str(site)]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--force" in err
    assert (site / "clinic.yaml").read_text() == "# ours\n"
    assert sorted(p.name for p in site.iterdir()) == ["clinic.yaml"]
    (tmp_path / "afile").write_text("x")
    assert main(["init", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_init_force_replaces_starter_files_and_keeps_the_rest(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "destinations").mkdir(parents=True)
    (site / "clinic.yaml").write_text("# ours\n")
    (site / "destinations" / "other.yaml").write_text("name: other\nhost: h\nport: 1\n")
    assert main(["init", "--force", str(site)]) == 0
    assert (site / "clinic.yaml").read_text().startswith("# A channel:")
    assert (site / "destinations" / "other.yaml").read_text() == "name: other\nhost: h\nport: 1\n"
    assert main(["init", str(tmp_path / "empty")]) == 0  # a new folder needs no --force
    (tmp_path / "blank").mkdir()
    assert main(["init", str(tmp_path / "blank")]) == 0  # nor does an empty one


def test_check_reports_problems_in_inbound_files(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    assert main(["init", str(site)]) == 0
    inbound = site / "inbound" / "ehr.yaml"
    inbound.write_text(inbound.read_text().replace("timezone: America/New_York",
                                                   "timezone: Mars/Olympus"))
    capsys.readouterr()
    assert main(["check", str(site)]) == 1
    err = capsys.readouterr().err
    assert "inbound/ehr.yaml:" in err and "timezone" in err and "1 problem(s)" in err
