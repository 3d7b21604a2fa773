"""The store by role: each role protocol is implemented, with the same signatures, by both
dialects; each dialect's operator queries are named queries in its own SQL file, all of them
used and none missing; and every module of engine/store stays small enough to read."""

from __future__ import annotations

import inspect
import re

import pytest

from engine.store import roles
from engine.store.postgres import PostgresStore
from engine.store.queries import load_queries, parse_queries
from engine.store.sqlite import SQLiteStore
from tests.conftest import REPO

ROLES = [roles.IntakeStore, roles.ReconcileStore, roles.ProcessingStore, roles.DeliveryStore,
         roles.InboundStore, roles.OperatorStore, roles.ClusterStore, roles.Lifecycle]
DIALECTS = {"sqlite": SQLiteStore, "postgres": PostgresStore}


def _declared(role: type) -> dict[str, inspect.Signature]:
    out = {}
    for klass in reversed(role.__mro__):
        for name, value in vars(klass).items():
            if inspect.isfunction(value) and not name.startswith("_"):
                out[name] = inspect.signature(value)
    return out


def _shape(sig: inspect.Signature) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.__name__)
def test_each_dialect_implements_each_role(dialect: str, role: type) -> None:
    store = DIALECTS[dialect]
    declared = _declared(role)
    assert declared, f"{role.__name__} declares no methods"
    for name, sig in declared.items():
        impl = getattr(store, name, None)
        assert impl is not None, f"{store.__name__} lacks {role.__name__}.{name}"
        assert inspect.iscoroutinefunction(impl) == inspect.iscoroutinefunction(
            getattr(role, name)), f"{store.__name__}.{name}: async in one, not the other"
        # an implementation may take more optional arguments than its role asks for
        shape = _shape(inspect.signature(impl))
        assert shape[:len(_shape(sig))] == _shape(sig), f"{store.__name__}.{name}{sig}"
        assert all(p[2] is not inspect.Parameter.empty for p in shape[len(_shape(sig)):])


def test_store_is_every_role() -> None:
    for role in ROLES:
        assert set(_declared(role)) <= set(_declared(roles.Store)), role.__name__


@pytest.mark.parametrize("dialect", DIALECTS)
def test_named_queries_are_all_used_and_all_there(dialect: str) -> None:
    queries = load_queries(dialect)
    used: set[str] = set()
    for module in (REPO / "engine" / "store" / dialect).glob("*.py"):
        used |= set(re.findall(r"\bQ\.([a-z_][a-z0-9_]*)", module.read_text(encoding="utf-8")))
    assert used, "the dialect runs no named query"
    assert used - set(queries) == set(), f"missing from sql/{dialect}/queries.sql"
    assert set(queries) - used == set(), f"unused in sql/{dialect}/queries.sql"


def test_query_files_are_parsed_by_name() -> None:
    text = "-- the file's own comment\n\n-- name: one\n-- what it is for\nSELECT 1\n  FROM t;\n" \
           "-- name: two\nSELECT 2;\n"
    assert parse_queries(text) == {"one": "SELECT 1 FROM t", "two": "SELECT 2"}
    with pytest.raises(ValueError, match=r"queries.sql:3: a second query named 'one'"):
        parse_queries("-- name: one\nSELECT 1;\n-- name: one\nSELECT 2;\n")
    with pytest.raises(ValueError, match="before the first"):
        parse_queries("SELECT 1;\n-- name: one\nSELECT 2;\n")
    with pytest.raises(ValueError, match="'empty' is empty"):
        parse_queries("-- name: empty\n-- nothing\n")


def test_no_module_of_the_store_is_over_500_lines() -> None:
    files = sorted((REPO / "engine" / "store").rglob("*.py"))
    assert len(files) > 10
    lines = {str(f.relative_to(REPO)): len(f.read_text(encoding="utf-8").splitlines())
             for f in files}
    long = {name: n for name, n in lines.items() if n >= 500}
    assert not long, f"split these modules of engine/store (lines): {long}"
