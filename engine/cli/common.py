"""What the verbs share: one way to open a store and name the operator, and plain output."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from engine.operator import OperatorService
from engine.settings import env, operator_name, store_location
from engine.store.roles import Store


def store_args() -> argparse.ArgumentParser:
    """--data and --store, for every verb that opens a store."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data", default=env("DATA", "var"),
                   help="data directory of the embedded store (default ./var)")
    p.add_argument("--store", default=env("STORE"),
                   help="store URL, e.g. postgresql://user@host/db (default: SQLite in --data)")
    return p


def open_store_of(args: argparse.Namespace) -> Store:
    from engine.store import open_store

    return open_store(store_location(args.store, args.data))


def with_service(fn: Callable[[OperatorService, argparse.Namespace], Awaitable[int]]
                 ) -> Callable[[argparse.Namespace], int]:
    """A verb that acts through the operator service: the store opened from --data/--store,
    the actor named by CALHL7_OPERATOR (else the login name)."""
    def runner(args: argparse.Namespace) -> int:
        async def main() -> int:
            store = open_store_of(args)
            await store.open()
            try:
                return await fn(OperatorService(store, operator_name()), args)
            finally:
                await store.close()

        return asyncio.run(main())

    return runner


def fmt_time(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "")) if r.get(c) is not None else "-" for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def run_fast(coro: Any) -> Any:
    """Run on uvloop when it is there (it comes with uvicorn[standard]), else asyncio's loop."""
    # the store's writer thread takes the GIL between statements: hand it back sooner, so a
    # webhook waiting on the event loop is not held up by a big commit
    sys.setswitchinterval(0.0005)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def sqlite_ok() -> bool:
    """Whether this Python's SQLite can hold the embedded store; if not, say why and what to do
    (before anything is opened, rather than a traceback from inside the store)."""
    from engine.store.sqlite_version import sqlite_problem

    try:
        problem = sqlite_problem()
    except ValueError as exc:  # CALHL7_MIN_SQLITE is not a version
        problem = f"CALHL7_MIN_SQLITE: {exc}"
    if problem:
        print(f"calhl7: {problem}", file=sys.stderr)
    return problem is None
