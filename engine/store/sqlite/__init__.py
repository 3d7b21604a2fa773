"""The embedded store: one SQLite file in the data directory, one writer thread, group commit
(core.py); a module per role, and `SQLiteStore`, which is all of them."""

from __future__ import annotations

from engine.store.sqlite.cluster import SQLiteCluster
from engine.store.sqlite.intake import SQLiteIntake
from engine.store.sqlite.operator import SQLiteOperator
from engine.store.sqlite.processing import SQLiteBatchReader, SQLiteProcessing


class SQLiteStore(SQLiteIntake, SQLiteProcessing, SQLiteCluster, SQLiteOperator):
    """Every role of the store on one SQLite file (see engine/store/roles.py)."""


__all__ = ["SQLiteBatchReader", "SQLiteStore"]
