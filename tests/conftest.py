"""Shared fixtures: real stores (SQLite file, the machine's PostgreSQL), free ports.

The tests come in tiers, one folder each, marked by folder (`pytest -m unit`):
- tests/unit: pure code, no database (a store, when needed, is SQLite in a temporary folder);
  runs in seconds with PostgreSQL down: nothing here connects before a test asks for it.
- tests/store: the store contract, on both stores.
- tests/engine: the engine in this process, over real sockets.
- tests/system: real processes (crash, failover, load smoke, packaging), started with
  load/harness.py like the benchmarks."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # synthetic Cal.com bodies and HL7 examples (README there)
PG_URL = os.environ.get("CALHL7_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
STORE_KINDS = ["sqlite", "postgres"]  # every store and pipeline test runs on both


TIERS = ("unit", "store", "engine", "system")


_ON_POSTGRES = {"store", "store_url"}  # fixtures parametrized over both stores


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test gets the marker of its tier's folder; a unit test asking for a store that
    runs on PostgreSQL too is refused at collection."""
    for item in items:
        parts = Path(str(item.path)).relative_to(REPO / "tests").parts
        if len(parts) > 1 and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
        wants = _ON_POSTGRES & set(getattr(item, "fixturenames", ()))
        if parts[0] == "unit" and wants:
            raise pytest.UsageError(
                f"{item.nodeid} uses {', '.join(sorted(wants))}, which runs on PostgreSQL too;"
                " tests/unit needs no database: open SQLiteStore(tmp_path / 'store.sqlite3')"
                " there, or move the test to tests/store or tests/engine")


_SCHEMAS: list[str] = []


async def _create_schema() -> str:
    """A fresh, empty schema: tests never see each other's rows. Skips the test when
    PostgreSQL is down, unless CALHL7_REQUIRE_POSTGRES (CI), where that is a failure."""
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
    return schema


def _url(schema: str) -> str:
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


async def _pg_schema_url() -> str:
    """A fresh schema that lives until the end of the test session."""
    schema = await _create_schema()
    _SCHEMAS.append(schema)
    return _url(schema)


@pytest.fixture(scope="session", autouse=True)
def _drop_session_schemas() -> Iterator[None]:
    yield
    if not _SCHEMAS:
        return

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_URL, timeout=5)
        try:
            for schema in _SCHEMAS:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:  # no event loop may be running here
        pool.submit(asyncio.run, drop()).result()


@asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """A fresh schema for one test, dropped afterwards."""
    import asyncpg

    schema = await _create_schema()
    try:
        yield _url(schema)
    finally:
        conn = await asyncpg.connect(PG_URL, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await conn.close()


@pytest.fixture(params=STORE_KINDS)
async def store_url(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """None: the engine's default SQLite store; else a PostgreSQL URL of a fresh schema."""
    if request.param == "sqlite":
        yield None
        return
    async with pg_schema() as url:
        yield url


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[object]:
    if request.param == "sqlite":
        from engine.store.sqlite import SQLiteStore

        s = SQLiteStore(tmp_path / "store.sqlite3")
        await s.open()
        try:
            yield s
        finally:
            await s.close()
        return
    from engine.store.postgres import PostgresStore

    async with pg_schema() as url:
        s = PostgresStore(url)
        await s.open()
        try:
            yield s
        finally:
            await s.close()
