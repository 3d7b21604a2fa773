"""Which SQLite library the embedded store can run on, checked before anything is opened.

The store's SQL needs `RETURNING` (SQLite 3.35.0; 3.34 answers it with a syntax error),
`UPDATE ... FROM` (3.33.0), upserts (3.24.0) and the JSON functions (`json_each`,
`json_group_array`): built in from 3.38.0, a compile-time option before that which most builds
of 3.35-3.37 include, so they are probed rather than inferred from the version. Python uses
the SQLite it was built with (or the system's libsqlite3), which some enterprise distributions
keep old.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing

MIN_SQLITE: tuple[int, int, int] = (3, 35, 0)


def parse_version(text: str) -> tuple[int, ...]:
    """`3.40.1` -> (3, 40, 1); missing parts count as 0, so `3.35` is (3, 35, 0)."""
    parts = text.strip().split(".")
    if not text.strip() or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a SQLite version: {text!r} (expected e.g. 3.35.0)")
    numbers = tuple(int(p) for p in parts)
    return numbers + (0,) * (3 - len(numbers))


def below(version: str, minimum: tuple[int, ...]) -> bool:
    """True when `version` (as `sqlite3.sqlite_version` spells it) is older than `minimum`."""
    return parse_version(version) < minimum


def required() -> tuple[int, ...]:
    """MIN_SQLITE, or a higher floor from CALHL7_MIN_SQLITE (a site holding its fleet to a
    newer library, and the tests of the refusal). It can only raise the floor."""
    raised = os.environ.get("CALHL7_MIN_SQLITE", "").strip()
    return max(MIN_SQLITE, parse_version(raised)) if raised else MIN_SQLITE


def sqlite_problem(version: str | None = None) -> str | None:
    """Why this Python's SQLite cannot hold the embedded store (what to do included), or None."""
    version = version or sqlite3.sqlite_version
    minimum = required()
    advice = ("Run calhl7 on a Python built with a newer SQLite (python.org builds and current "
              "distributions are), or use PostgreSQL with --store postgresql://...")
    if below(version, minimum):
        return (f"the embedded store needs SQLite {'.'.join(map(str, minimum))} or newer; this "
                f"Python uses SQLite {version}. {advice}")
    with closing(sqlite3.connect(":memory:")) as conn:
        try:
            conn.execute("SELECT json_group_array(value) FROM json_each('[1]')").fetchone()
        except sqlite3.OperationalError:
            return (f"this Python's SQLite {version} was built without the JSON functions the "
                    f"embedded store needs. {advice}")
    return None
