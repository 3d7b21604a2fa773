"""The shared store: several engine nodes on one PostgreSQL database (core.py: the pool,
transactions, migrations; a module per role; `PostgresStore` is all of them).

Same semantics as the SQLite store (tests/store/test_store.py runs on both); what several nodes add:
- intake group commit: concurrent `accept_webhook` calls queue up while a flush is in
  flight and the next flush stores all of them in one statement (one commit, one round trip);
  identical bodies from two nodes at once leave one row, the second sees a duplicate; a
  statement that lost its connection is tried again (it is idempotent: Cal.com never retries);
- lanes are claimed with `FOR UPDATE SKIP LOCKED` and a lease; the lane's fence is bumped at
  every claim and an outcome only counts while its fence is current (a node whose lease
  lapsed decides nothing); every statement that changes a lane locks its row first;
  `record_attempts` is one round trip (calhl7_record_attempt in sql/postgres/0001_initial.sql);
- a destination's connection limit holds for the cluster (`destination_slots`, leased);
- `commit_processed` NOTIFYs `calhl7_outbound` with each destination that got messages, and
  `listen()` relays those on a dedicated connection;
- `try_lead()` holds a session advisory lock on a dedicated connection, so only one node
  normalizes at a time (appointment precedence holds across nodes);
- `commit_processed` only marks events that are still pending and fails whole otherwise
  (`NotPending`): a node whose lead lapsed mid-batch cannot queue a second set of messages;
- migrations run under `pg_advisory_xact_lock`, so nodes may start at the same moment;
- nothing releases other nodes' claims at start (there is no `release_all_claims`): the
  leases of a dead node expire and its lanes are taken over.

PostgreSQL text cannot hold NUL characters, which JSON may carry ("\\u0000"): text values are
stored with NUL replaced by U+FFFD, the same way on writes and lookups, so nothing is refused.
"""

from __future__ import annotations

from engine.store.postgres.cluster import PostgresCluster
from engine.store.postgres.common import NOTIFY_CHANNEL
from engine.store.postgres.delivery import PostgresDelivery
from engine.store.postgres.inbound import PostgresInbound
from engine.store.postgres.intake import PostgresIntake
from engine.store.postgres.operator import PostgresOperator
from engine.store.postgres.processing import PostgresProcessing
from engine.store.records import NotPending


class PostgresStore(PostgresIntake, PostgresProcessing, PostgresDelivery, PostgresCluster,
                    PostgresInbound, PostgresOperator):
    """Every role of the store on one PostgreSQL schema (see engine/store/roles.py)."""


__all__ = ["NOTIFY_CHANNEL", "NotPending", "PostgresStore"]
