"""What several nodes need, on the one node SQLite allows: nothing to notify, always the
leader, no heartbeat; and at start, whatever was in flight at a crash goes again."""

from __future__ import annotations

from collections.abc import Callable

from engine.store.sqlite.delivery import SQLiteDelivery
from engine.store.sqlite.inbound import SQLiteInbound


class SQLiteCluster(SQLiteDelivery, SQLiteInbound):
    async def listen(self, callback: Callable[[str], None]) -> None:
        """One node: the processor wakes its workers directly."""

    async def try_lead(self, node_id: str) -> bool:
        return True

    async def heartbeat(self, node_id: str, now: float) -> None:
        """One node: there is no cluster to show."""

    async def recover_single_node(self) -> None:
        """At start: the lanes and inbound jobs this node had claimed when it stopped are free
        again (same MSH-10; Cal.com is checked first on a retry)."""
        await self.release_all_claims()
        await self.inbound_release_all_leases()
