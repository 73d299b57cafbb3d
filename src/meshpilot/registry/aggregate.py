"""Many registries behind the one read interface.

Services with the same hostname and namespace from several registries are merged: the first
registry (in the order given) defines the service, and endpoints from all of them are served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from meshpilot.model import Endpoint, Service
from meshpilot.registry.base import ServiceRegistry


class AggregateRegistry:
    def __init__(self, registries: Sequence[ServiceRegistry] = ()) -> None:
        self._registries: list[ServiceRegistry] = list(registries)

    @property
    def provider(self) -> str:
        return "aggregate"

    @property
    def cluster_id(self) -> str:
        return ""

    @property
    def registries(self) -> list[ServiceRegistry]:
        return list(self._registries)

    def add(self, registry: ServiceRegistry) -> None:
        self._registries.append(registry)

    def has_synced(self) -> bool:
        return all(r.has_synced() for r in self._registries)

    async def wait_synced(self) -> None:
        for registry in self._registries:
            await registry.wait_synced()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for registry in self._registries:
                group.create_task(registry.run(), name=f"registry-{registry.provider}")

    def services(self) -> list[Service]:
        merged: dict[tuple[str, str], Service] = {}
        for registry in self._registries:
            for svc in registry.services():
                merged.setdefault((svc.namespace, svc.hostname), svc)
        return list(merged.values())

    def endpoints(self, hostname: str, namespace: str) -> list[Endpoint]:
        return [ep for r in self._registries for ep in r.endpoints(hostname, namespace)]
