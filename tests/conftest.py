"""Shared fixtures: real stores (SQLite file, the machine's PostgreSQL), free ports."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PG_URL = os.environ.get("CALHL7_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
STORE_KINDS = ["sqlite"]
try:  # the PostgreSQL store joins the same suite as soon as it exists
    import engine.store.postgres  # noqa: F401

    STORE_KINDS.append("postgres")
except ImportError:
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _pg_schema_url() -> str:
    """A fresh schema per test, so tests never see each other's rows."""
    import asyncpg

    schema = "t_" + uuid.uuid4().hex[:12]
    try:
        conn = await asyncpg.connect(PG_URL, timeout=5)
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CALHL7_REQUIRE_POSTGRES"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[object]:
    if request.param == "sqlite":
        from engine.store.sqlite import SQLiteStore

        s = SQLiteStore(tmp_path / "store.sqlite3")
    else:
        from engine.store.postgres import PostgresStore

        s = PostgresStore(await _pg_schema_url())
    await s.open()
    try:
        yield s
    finally:
        await s.close()
