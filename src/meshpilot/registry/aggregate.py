"""Many registries behind the one read interface.

Registries are consulted in priority order (a registry's `priority`, higher first — the URL's
`priority=` for third-party ones, 0 by default — then the order they were given). When several
publish the same hostname in the same namespace:

- the first one defines the service (its ports and protocols);
- endpoints from every registry are served, so instances registered in Consul and in Nacos
  under one name all receive traffic — unless a lower registry says `merge=false`, in which
  case the winner's endpoints alone are served;
- if the definitions disagree (different ports or protocols), the conflict is logged once and
  listed by `conflicts()` for the debug pages; endpoints of ports the winner lacks are dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from meshpilot.model import Endpoint, Service
from meshpilot.registry.base import ServiceRegistry

log = logging.getLogger("meshpilot.registry")


def _priority(registry: ServiceRegistry) -> int:
    return int(getattr(registry, "priority", 0))


def _merges(registry: ServiceRegistry) -> bool:
    return bool(getattr(registry, "merge", True))


class AggregateRegistry:
    def __init__(self, registries: Sequence[ServiceRegistry] = ()) -> None:
        self._registries: list[ServiceRegistry] = []
        self._reported: set[str] = set()
        self._conflicts: list[str] = []
        for registry in registries:
            self.add(registry)

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
        # Stable sort: equal priorities keep the order they were given in.
        self._registries.sort(key=lambda r: -_priority(r))

    def has_synced(self) -> bool:
        return all(r.has_synced() for r in self._registries)

    async def wait_synced(self) -> None:
        for registry in self._registries:
            await registry.wait_synced()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for registry in self._registries:
                group.create_task(registry.run(), name=f"registry-{registry.provider}")

    def status(self) -> dict[str, Any]:
        return {
            "name": "aggregate",
            "registries": [r.status() for r in self._registries],
            "conflicts": list(self._conflicts),
        }

    def conflicts(self) -> list[str]:
        return list(self._conflicts)

    def services(self) -> list[Service]:
        merged: dict[tuple[str, str], tuple[Service, ServiceRegistry]] = {}
        conflicts = []
        for registry in self._registries:
            for svc in registry.services():
                key = (svc.namespace, svc.hostname)
                first = merged.get(key)
                if first is None:
                    merged[key] = (svc, registry)
                elif _ports(first[0]) != _ports(svc):
                    conflicts.append(
                        f"{svc.hostname} in {svc.namespace}: {first[1].provider} publishes "
                        f"ports {_ports(first[0])}, {registry.provider} {_ports(svc)}; "
                        f"{first[1].provider}'s ports are used"
                    )
        self._conflicts = conflicts
        for text in conflicts:
            if text not in self._reported:
                self._reported.add(text)
                log.warning("registry conflict: %s", text)
        return [svc for svc, _ in merged.values()]

    def endpoints(self, hostname: str, namespace: str) -> list[Endpoint]:
        out: list[Endpoint] = []
        owner: ServiceRegistry | None = None
        for registry in self._registries:
            found = registry.endpoints(hostname, namespace)
            if not found:
                continue
            if owner is None:
                owner = registry
            elif not _merges(registry):
                continue  # this registry yields the name to the higher-priority one
            out.extend(found)
        return out


def _ports(service: Service) -> list[tuple[int, str]]:
    return sorted((p.number, p.protocol.value) for p in service.ports)
