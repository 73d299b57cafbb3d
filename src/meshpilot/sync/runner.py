"""The registry-sync loop: registries in, Istio config out, whenever they change.

    registries ──(their updater)──► changed ─► debounce ─► to_groups ─► target.apply

The registries are the same adapters `meshpilot discovery --registry` uses, found by URL
scheme. Their change notifications only set a flag; after a short quiet period the whole
desired state is recomputed and handed to the target, which writes what differs. A registry
that is unreachable keeps its last known instances (see `registry.catalog`), so its services
are not deleted from the target while it is away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from meshpilot.election import Elector
from meshpilot.model import PushRequest
from meshpilot.registry.aggregate import AggregateRegistry
from meshpilot.registry.plugins import create_registry
from meshpilot.sync.convert import Groups, flatten, to_groups
from meshpilot.sync.targets import Target

log = logging.getLogger("meshpilot.sync")


class _Changed:
    """The updater registries call: it only notes that something changed."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.count = 0

    def config_update(self, request: PushRequest) -> None:
        self.count += 1
        self.event.set()


@dataclass
class SyncStatus:
    source: str
    syncs: int = 0
    last_sync: float = 0.0
    last_counts: dict[str, int] = field(default_factory=dict)
    resources: int = 0
    last_error: str = ""

    def as_dict(self, registries: AggregateRegistry) -> dict[str, Any]:
        return {
            "source": self.source,
            "syncs": self.syncs,
            "lastSync": self.last_sync,
            "lastChanges": self.last_counts,
            "resources": self.resources,
            "lastError": self.last_error,
            "registries": [r.status() for r in registries.registries],
        }


class RegistrySync:
    def __init__(
        self,
        urls: list[str],
        target: Target,
        *,
        workload_entries: bool = False,
        quiet: float = 0.2,
        elector: Elector | None = None,
    ) -> None:
        self.elector = elector
        """With several replicas: only the lease holder writes (kube.leader, etcd.leader)."""
        self._changed = _Changed()
        self.registries = AggregateRegistry([create_registry(u, self._changed) for u in urls])
        self.source = ",".join(urls)
        self.target = target
        self.workload_entries = workload_entries
        self.quiet = quiet
        self.status = SyncStatus(self.source)

    def desired(self) -> Groups:
        return to_groups(self.registries, self.source, self.workload_entries)

    async def sync_once(self) -> dict[str, int]:
        groups = self.desired()
        counts = await self.target.apply(groups)
        self.status.syncs += 1
        self.status.last_sync = time.time()
        self.status.last_counts = counts
        self.status.resources = len(flatten(groups))
        changed = {k: v for k, v in counts.items() if v and k != "unchanged"}
        if changed:
            log.info("synced %d resources: %s", self.status.resources, changed)
        return counts

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            # Every replica follows the registries, so a new leader starts from a warm view.
            group.create_task(self.registries.run(), name="registries")
            if self.elector is None:
                group.create_task(self._leading(), name="sync")
            else:
                group.create_task(self.elector.run(), name="leader-election")
                group.create_task(self.elector.while_leading(self._leading), name="sync")

    async def _leading(self) -> None:
        """The writer's work: sync on every change, and on drift where the target reports it."""
        watch = getattr(self.target, "watch", None)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._loop(), name="sync-loop")
            if watch is not None:
                group.create_task(watch(self._changed.event.set), name="target-watch")

    async def wait_synced(self) -> None:
        await self.registries.wait_synced()

    async def _loop(self) -> None:
        await self.registries.wait_synced()
        while True:
            self._changed.event.clear()
            await self.sync_once()
            await self._changed.event.wait()
            await asyncio.sleep(self.quiet)  # let a burst of changes settle into one sync
