"""An analyst's day over the real engine: a mapping is missing, the message is dead-lettered
with the key it lacks, the channel file is fixed (hot reload), the message is reprocessed and
delivered; a broken edit keeps the running configuration; pause and resume a channel."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import yaml

from engine import cli
from engine.sim.bookings import StoryTeller
from tests.engine.test_delivery import received
from tests.engine_harness import eventually, fast_channels, running_engine


def family_visit(teller: StoryTeller) -> tuple[object, dict]:
    b, hook = teller.created()
    while b.event_type[1] != 731044:  # a family-medicine video visit: only ehr-main gets it
        b, hook = teller.created()
    return b, hook


async def _queued(eng) -> bool:  # noqa: ANN001
    return (await eng.store.counts()).get("messages_queued") == 1


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


async def test_unmapped_provider_then_fix_then_reprocess(tmp_path: Path,
                                                         store_url: str | None) -> None:
    channels = fast_channels(tmp_path)
    family = channels / "family-medicine.yaml"
    original = family.read_text()
    doc = yaml.safe_load(original)
    doc["maps"]["providers"] = {9999: ["X", "Nobody"]}
    family.write_text(yaml.safe_dump(doc))
    store_args = ["--store", store_url] if store_url else ["--data", str(tmp_path / "data")]
    async with running_engine(tmp_path, channels_dir=channels, store_url=store_url) as eng:
        teller = StoryTeller(seed=21)
        b, hook = family_visit(teller)
        assert (await eng.post(hook)).status_code == 200
        assert (await eng.post(teller.rescheduled(b))).status_code == 200
        await eng.settle(5)
        dead = await eng.store.dead_letters(10)
        assert [d["message_type"] for d in dead] == ["SIU^S12", "SIU^S13"]
        assert all("4211" in d["error"] for d in dead)  # names the missing key, not the patient
        lanes = [lane for lane in await eng.store.lanes("ehr-main", 10) if lane["held"]]
        assert len(lanes) == 1 and lanes[0]["head"] == dead[0]["id"]
        assert received(tmp_path / "main.jsonl") == []

        family.write_text(original)  # the analyst adds the mapping; the engine reloads
        await eventually(
            lambda: "4211" in eng.engine.config().channel("family-medicine").maps.providers)
        for d in dead:
            assert await run_cli("reprocess", str(d["id"]), "--channels", str(channels),
                                 *store_args) == 0
        counts = await eng.settle(10)
        assert counts.get("messages_queued", 0) == 0 and counts.get("messages_dead", 0) == 0
        seen = received(tmp_path / "main.jsonl")
        assert [r["type"].split("^")[1] for r in seen] == ["S12", "S13"]
        assert seen[0]["msh10"] != dead[0]["control_id"]  # new content, new MSH-10
        ops = [e for e in await eng.store.audit(None, None, 100) if e["kind"] == "operator"]
        assert ops and ops[-1]["trigger"] == "reprocess"


async def test_broken_edit_keeps_the_running_configuration(tmp_path: Path) -> None:
    channels = fast_channels(tmp_path)
    async with running_engine(tmp_path, channels_dir=channels) as eng:
        before = eng.engine.config()
        (channels / "family-medicine.yaml").write_text("name: [broken\n")
        registry = eng.engine.metrics.registry
        await eventually(lambda: registry.get_sample_value(
            "calhl7_config_reloads_total", {"outcome": "failed"}))  # it tried, and refused
        assert eng.engine.config() is before
        teller = StoryTeller(seed=22)
        _, hook = family_visit(teller)
        await eng.post(hook)
        counts = await eng.settle(10)
        assert counts.get("messages_acked") == 1  # still routed with the running channels


async def test_pause_and_resume_a_channel(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    channels = fast_channels(tmp_path)
    async with running_engine(tmp_path, channels_dir=channels) as eng:
        data = ["--data", str(tmp_path / "data")]
        assert await run_cli("pause", "family-medicine", *data) == 0
        teller = StoryTeller(seed=23)
        _, hook = family_visit(teller)
        await eng.post(hook)
        await eventually(lambda: _queued(eng))
        await asyncio.sleep(1.0)  # two idle polls of the worker: a paused channel stays put
        assert (await eng.store.counts()).get("messages_queued") == 1
        assert received(tmp_path / "main.jsonl") == []
        assert await run_cli("queue", "--lanes", *data) == 0
        out = capsys.readouterr().out
        assert "ehr-main" in out and "oldest_age_seconds".upper() in out
        assert await run_cli("resume", "family-medicine", *data) == 0
        counts = await eng.settle(10)
        assert counts.get("messages_acked") == 1
        actions = [(e["trigger"], e["actor"]) for e in await eng.store.audit(None, None, 100)
                   if e["kind"] == "operator"]
        assert [a for a, _ in actions] == ["pause", "resume"]
        assert all(who for _, who in actions)


async def test_queue_and_message_commands_print_what_an_analyst_needs(
        tmp_path: Path, capsys) -> None:  # noqa: ANN001
    async with running_engine(tmp_path, channels_dir=fast_channels(tmp_path)) as eng:
        teller = StoryTeller(seed=24)
        _, hook = family_visit(teller)
        await eng.post(hook)
        await eng.settle(10)
        data = ["--data", str(tmp_path / "data")]
        assert await run_cli("message", "1", *data) == 0
        out = capsys.readouterr().out
        assert "SIU^S12" in out and "AA" in out and "MSH|" in out
        assert await run_cli("audit", "--json", *data) == 0
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
        assert {e["kind"] for e in lines} >= {"change", "sent"}
