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
from tests.engine_harness import eventually, running_engine
from tests.test_delivery import fast_channels, received
from tests.test_operator import family_visit


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
