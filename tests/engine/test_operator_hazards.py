"""Operator actions that could make the EHR see a change twice or out of order, over the real
engine, the real stores and a simulated EHR on a real socket: `message` counts every send,
`resend` and `reprocess` refuse to put an older state of an appointment after a newer one the
EHR has, and `reprocess` refuses a message the EHR may hold under its MSH-10 already."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine import cli
from engine.sim.bookings import StoryTeller
from engine.sim.ehr import SimPolicy, simulator_of
from tests.engine.test_delivery import received
from tests.engine.test_operator import family_visit
from tests.engine_harness import eventually, fast_channels, running_engine


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


def store_args(tmp_path: Path, store_url: str | None) -> list[str]:
    return ["--store", store_url] if store_url else ["--data", str(tmp_path / "data")]


async def test_message_header_counts_every_send(tmp_path: Path, store_url: str | None,
                                                capsys) -> None:  # noqa: ANN001
    """An AE'd S12, resent once the EHR is fixed: two sends, and the header says two (it used
    to say one: the retry budget, which a resend starts again, was printed as the count)."""
    async with running_engine(tmp_path, store_url=store_url, channels_dir=fast_channels(tmp_path),
                              main_policy=SimPolicy(ae_every=1)) as eng:
        _, hook = family_visit(StoryTeller(seed=41))
        await eng.post(hook)
        (dead,) = await eventually(lambda: eng.store.dead_letters(10))
        simulator_of(eng.sims["main_server"]).policy = SimPolicy()
        args = store_args(tmp_path, store_url)
        assert await run_cli("resend", str(dead["id"]), *args) == 0
        await eng.settle(10)
        capsys.readouterr()
        assert await run_cli("message", str(dead["id"]), *args) == 0
        out = capsys.readouterr().out
        assert len(received(tmp_path / "main.jsonl")) == 2
        header = out.splitlines()[1]
        assert "attempts 2" in header, header


def family_story(seed: int) -> tuple[StoryTeller, object, dict]:
    teller = StoryTeller(seed=seed)
    b, hook = family_visit(teller)
    return teller, b, hook


async def test_resend_refuses_to_undo_a_cancellation(tmp_path: Path, store_url: str | None,
                                                     capsys) -> None:  # noqa: ANN001
    """The S12 is AE'd and holds its lane; the analyst releases the lane, the S13 and the S15
    reach the EHR; a resend of the S12 would book the cancelled appointment again."""
    async with running_engine(tmp_path, store_url=store_url, channels_dir=fast_channels(tmp_path),
                              main_policy=SimPolicy(ae_every=1)) as eng:
        teller, b, hook = family_story(42)
        for h in (hook, teller.rescheduled(b), teller.cancelled(b)):
            assert (await eng.post(h)).status_code == 200
        (dead,) = await eventually(lambda: eng.store.dead_letters(10))
        await eventually(lambda: _queued_behind(eng, 2))
        simulator_of(eng.sims["main_server"]).policy = SimPolicy()
        args = store_args(tmp_path, store_url)
        assert await run_cli("release", str(dead["lane"]), *args) == 0
        counts = await eng.settle(10)
        assert counts.get("messages_acked") == 2 and not counts.get("messages_queued")
        later = [m for m in [await eng.store.message(dead["id"] + i) for i in (1, 2)] if m]
        assert [m["message_type"] for m in later] == ["SIU^S13", "SIU^S15"]
        capsys.readouterr()

        assert await run_cli("resend", str(dead["id"]), *args) == 1
        err = capsys.readouterr().err
        for m in later:  # what the EHR has since: ids, types, MSH-10s (no patient data)
            assert f"message {m['id']}" in err and m["message_type"] in err
            assert m["control_id"] in err
        assert "--force" in err and "Zo" not in err
        assert (await eng.store.message(dead["id"]))["status"] == "skipped"
        assert not (await eng.store.counts()).get("messages_queued")

        assert await run_cli("resend", str(dead["id"]), "--force", *args) == 0
        err = capsys.readouterr().err
        assert "warning" in err and all(m["control_id"] in err for m in later)
        await eng.settle(10)
        seen = [(r["type"].split("^")[1], r["msh10"]) for r in received(tmp_path / "main.jsonl")]
        assert seen[-1] == ("S12", dead["control_id"])  # forced: after the S15, as asked
        (op,) = [e for e in await eng.store.audit(None, None, 200)
                 if e["kind"] == "operator" and e["trigger"] == "resend"]
        assert op["detail"]["forced_after"] == [m["id"] for m in later]


async def _queued_behind(eng, n: int) -> bool:  # noqa: ANN001
    return (await eng.store.counts()).get("messages_queued") == n


async def test_reprocess_refuses_a_message_being_sent(tmp_path: Path, store_url: str | None,
                                                      capsys) -> None:  # noqa: ANN001
    """While the EHR holds the S12 unanswered (slow), a reprocess would send the same booking
    again under a new MSH-10: refused, and the EHR gets it once."""
    channels = fast_channels(tmp_path, connection={"response_timeout_seconds": 10})
    async with running_engine(tmp_path, store_url=store_url, channels_dir=channels,
                              main_policy=SimPolicy(delay_ms=2000)) as eng:
        _, _, hook = family_story(43)
        await eng.post(hook)
        sim = simulator_of(eng.sims["main_server"])
        await eventually(lambda: sim.received >= 1, interval=0.01)  # on the wire
        assert await run_cli("reprocess", "1", "--channels", str(channels),
                             *store_args(tmp_path, store_url)) == 1
        err = capsys.readouterr().err
        assert "being sent now" in err and "calhl7 pause family-medicine" in err
        counts = await eng.settle(15)
        assert counts.get("messages_acked") == 1
        msg = await eng.store.message(1)
        assert {r["msh10"] for r in received(tmp_path / "main.jsonl")} == {msg["control_id"]}


async def test_reprocess_refuses_a_message_the_ehr_never_answered(
        tmp_path: Path, store_url: str | None, capsys) -> None:  # noqa: ANN001
    """An S12 sent to a silent EHR may have been applied: a new MSH-10 could apply it twice.
    Refused, pointing at resend; --force goes, with a warning naming the MSH-10 sent."""
    channels = fast_channels(tmp_path)
    async with running_engine(tmp_path, store_url=store_url, channels_dir=channels,
                              main_policy=SimPolicy(silent=True)) as eng:
        _, _, hook = family_story(44)
        await eng.post(hook)
        args = store_args(tmp_path, store_url)
        await eventually(lambda: _attempted(eng, 1))
        assert await run_cli("pause", "family-medicine", *args) == 0

        async def unclaimed() -> bool:
            return all(lane["owner"] is None for lane in await eng.store.lanes("ehr-main", 10))

        await eventually(unclaimed)
        sent = await eng.store.message(1)
        capsys.readouterr()
        reprocess = ["reprocess", "1", "--channels", str(channels), *args]
        assert await run_cli(*reprocess) == 1
        err = capsys.readouterr().err
        assert sent["control_id"] in err and "calhl7 resend 1" in err and "--force" in err
        assert (await eng.store.message(1))["control_id"] == sent["control_id"]
        assert await run_cli(*reprocess, "--force") == 0
        assert "warning" in capsys.readouterr().err
        assert (await eng.store.message(1))["control_id"] != sent["control_id"]


async def _attempted(eng, n: int) -> bool:  # noqa: ANN001
    msg = await eng.store.message(1)
    return msg is not None and len(msg["attempt_log"]) >= n
