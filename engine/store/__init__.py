"""Persistence: one protocol per role (`roles.py`; `Store` is all of them), implemented by
SQLite (`sqlite/`) and PostgreSQL (`postgres/`)."""

from __future__ import annotations

from pathlib import Path

from engine.store.roles import Store


def open_store(url_or_data_dir: str, *, engine: bool = False) -> Store:
    """`postgresql://...` selects PostgreSQL; anything else is a data directory for SQLite.
    `engine`: the store of a running engine, which on SQLite holds the data directory for
    itself (store/lock.py; opening raises StoreInUse while another engine holds it)."""
    if url_or_data_dir.startswith(("postgresql://", "postgres://")):
        from engine.store.postgres import PostgresStore

        return PostgresStore(url_or_data_dir)
    from engine.store.sqlite import SQLiteStore

    return SQLiteStore(Path(url_or_data_dir) / "calhl7.sqlite3", exclusive=engine)
