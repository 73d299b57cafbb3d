"""The engine every third-party registry adapter shares.

An adapter only talks to its source: it reads instances and hands them over, per service
(`replace`) or all at once after a full listing (`replace_all`), and says when the source is
unreachable (`mark_unreachable`). The catalog does the rest, the same for every registry:

- converts instances to mesh Services and Endpoints with the mapping rules (one service port
  per port name; each endpoint keeps its own instance port);
- publishes only healthy instances, or all of them when none is healthy and the URL says
  `fallbackToAll=true`;
- compares the result with what it published before and asks for the smallest push: nothing
  when nothing changed, EDS for the hosts whose endpoints alone changed, a full push when
  services appeared, disappeared or changed ports;
- keeps the last known state while the source is unreachable — marked stale, never deleted —
  so a registry that blinks never takes healthy endpoints away; only the source itself, once
  back, can delete.

`ExternalRegistry` wraps a catalog into the `ServiceRegistry` interface and runs the adapter's
`watch()` with reconnection backoff.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshpilot.model import (
    Endpoint,
    HealthStatus,
    Port,
    PushRequest,
    Resolution,
    Service,
    ServiceLocation,
    TriggerReason,
)
from meshpilot.registry.base import Updater
from meshpilot.registry.mapping import Instance, MappingRules
from meshpilot.registry.urls import RegistryUrl

log = logging.getLogger("meshpilot.registry")

HostKey = tuple[str, str]


class RegistryError(Exception):
    """The source answered, but not with something usable (reported, then retried)."""


@dataclass(frozen=True, slots=True)
class _Published:
    service: Service
    endpoints: tuple[Endpoint, ...]


class Catalog:
    def __init__(
        self,
        rules: MappingRules,
        updater: Updater,
        *,
        fallback_to_all: bool = False,
        service_port: int | None = None,
    ) -> None:
        self.rules = rules
        self._updater = updater
        self._fallback_to_all = fallback_to_all
        self._service_port = service_port
        self._instances: dict[str, tuple[Instance, ...]] = {}
        self._published: dict[HostKey, _Published] = {}
        self._host_of: dict[str, HostKey] = {}

    # Reads --------------------------------------------------------------------------------------

    def services(self) -> list[Service]:
        return [p.service for p in self._published.values()]

    def endpoints(self, hostname: str, namespace: str) -> list[Endpoint]:
        published = self._published.get((namespace, hostname))
        return list(published.endpoints) if published else []

    def instance_count(self) -> int:
        return sum(len(v) for v in self._instances.values())

    # Writes from the adapter ------------------------------------------------------------------

    def replace(self, service: str, instances: Iterable[Instance]) -> None:
        """The complete current instance set of one service (empty means it is gone)."""
        self._apply({service: tuple(instances)}, remove_others=False)

    def remove(self, service: str) -> None:
        self._apply({service: ()}, remove_others=False)

    def replace_all(self, by_service: Mapping[str, Iterable[Instance]]) -> None:
        """A full listing: services not in it are deleted."""
        self._apply({k: tuple(v) for k, v in by_service.items()}, remove_others=True)

    # Conversion and diff ------------------------------------------------------------------------

    def _apply(self, changes: Mapping[str, tuple[Instance, ...]], remove_others: bool) -> None:
        if remove_others:
            for gone in set(self._instances) - set(changes):
                changes = {**changes, gone: ()}
        full = False
        eds: set[HostKey] = set()
        for name, instances in changes.items():
            if instances:
                self._instances[name] = instances
            else:
                self._instances.pop(name, None)
            before_key = self._host_of.get(name)
            before = self._published.pop(before_key, None) if before_key else None
            after = self._convert(instances) if instances else None
            if after is None:
                self._host_of.pop(name, None)
            else:
                key = (after.service.namespace, after.service.hostname)
                self._host_of[name] = key
                self._published[key] = after
            if before is None and after is None:
                continue
            if before is None or after is None or before.service != after.service:
                full = True
            elif before.endpoints != after.endpoints:
                eds.add((after.service.namespace, after.service.hostname))
        if full:
            self._updater.config_update(PushRequest(
                full=True, reasons=frozenset({TriggerReason.SERVICE})))
        elif eds:
            self._updater.config_update(PushRequest(
                full=False, eds_hosts=frozenset(eds), reasons=frozenset({TriggerReason.ENDPOINT})))

    def _convert(self, instances: tuple[Instance, ...]) -> _Published:
        rules = self.rules
        first = instances[0]
        host = rules.hostname(first)
        ports = self._service_ports(instances)
        service = Service(
            hostname=host,
            namespace=rules.namespace,
            ports=ports,
            resolution=Resolution.STATIC,
            location=ServiceLocation.MESH_INTERNAL,
            registry=rules.registry,
            source=f"{rules.registry} service {first.service}",
        )
        published = [i for i in instances if i.healthy]
        if not published and self._fallback_to_all:
            published = list(instances)
        endpoints = []
        for instance in sorted(published, key=lambda i: (i.address, i.id)):
            labels = rules.labels(instance)
            for port in ports:
                number = instance.ports.get(_port_key(port, instance))
                if number is None:
                    continue
                endpoints.append(Endpoint(
                    hostname=host,
                    namespace=rules.namespace,
                    service_port=port.number,
                    address=instance.address,
                    port=number,
                    labels=labels,
                    network=instance.metadata.get("network", rules.network),
                    cluster_id=rules.cluster_id,
                    locality=rules.locality(instance),
                    health=HealthStatus.HEALTHY,
                    weight=max(instance.weight, 1),
                    workload_name=instance.id,
                ))
        return _Published(service, tuple(endpoints))

    def _service_ports(self, instances: tuple[Instance, ...]) -> tuple[Port, ...]:
        """One port per port name; its number is the one most instances use (or `port=`)."""
        numbers: dict[str, collections.Counter[int]] = {}
        for instance in instances:
            for name, number in instance.ports.items():
                numbers.setdefault(name, collections.Counter())[number] += 1
        ports = []
        for name in sorted(numbers):
            counts = numbers[name]
            number = min(counts, key=lambda n: (-counts[n], n))
            if self._service_port is not None and len(numbers) == 1:
                number = self._service_port
            protocol = self.rules.protocol(instances[0], name)
            port_name = name or f"{protocol.value.lower()}-{number}"
            ports.append(Port(port_name, number, protocol, target_port=None))
        return tuple(ports)


def _port_key(port: Port, instance: Instance) -> str:
    """The instance's port name for a service port (`""` for single unnamed ports)."""
    return port.name if port.name in instance.ports else ""


class ExternalRegistry(abc.ABC):
    """A `ServiceRegistry` over a catalog, running an adapter's watch loop with backoff.

    Subclasses implement `watch()`: read the source, feed the catalog, call `self.synced()`
    after the first complete read, and keep watching; raise (OSError, RegistryError,
    TimeoutError…) when the source fails — the loop marks the data stale, waits (0.5 s doubling
    to 30 s) and calls `watch()` again.
    """

    default_protocol = "HTTP"

    def __init__(self, url: RegistryUrl, updater: Updater, rules: MappingRules) -> None:
        self.url = url
        self.catalog = Catalog(
            rules,
            updater,
            fallback_to_all=url.flag("fallbackToAll"),
            service_port=int(url.param("port")) if url.param("port").isdigit() else None,
        )
        self._synced = asyncio.Event()
        self.priority = int(url.number("priority", 0))
        """Order among registries publishing the same host (higher first)."""
        self.merge = url.flag("merge", default=True)
        """Whether its endpoints join a same-named service owned by a higher registry."""
        self.stale = False
        self.connected = False
        self.last_sync = 0.0
        self.last_error = ""
        self.failures = 0

    # ServiceRegistry ---------------------------------------------------------------------------

    @property
    def provider(self) -> str:
        return self.url.scheme

    @property
    def cluster_id(self) -> str:
        return self.catalog.rules.cluster_id

    def services(self) -> list[Service]:
        return self.catalog.services()

    def endpoints(self, hostname: str, namespace: str) -> list[Endpoint]:
        return self.catalog.endpoints(hostname, namespace)

    def has_synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def status(self) -> dict[str, Any]:
        return {
            "name": self.url.name,
            "provider": self.provider,
            "url": self.url.text,
            "connected": self.connected,
            "synced": self.has_synced(),
            "stale": self.stale,
            "lastSync": self.last_sync,
            "lastError": self.last_error,
            "failures": self.failures,
            "services": len(self.catalog.services()),
            "instances": self.catalog.instance_count(),
        }

    async def run(self) -> None:
        delay = 0.5
        while True:
            attempt = time.time()
            try:
                await self.watch()
                raise RegistryError("watch ended")
            except (OSError, TimeoutError, RegistryError, ValueError) as error:
                self.mark_unreachable(error)
            # Back off while the source keeps failing; start over once it had answered.
            delay = 0.5 if self.last_sync >= attempt else min(delay * 2, 30.0)
            await asyncio.sleep(delay)

    # For adapters -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def watch(self) -> None:
        """Read the source and follow its changes (the adapter's own loop)."""

    def synced(self) -> None:
        """The source answered completely: data is current again."""
        if self.stale:
            log.info("registry %s is reachable again", self.url.name)
        self.stale = False
        self.connected = True
        self.last_sync = time.time()
        self.last_error = ""
        self._synced.set()

    def mark_unreachable(self, error: BaseException) -> None:
        self.failures += 1
        self.connected = False
        self.last_error = f"{type(error).__name__}: {error}"
        if not self.stale:
            log.warning("registry %s unreachable (%s); keeping its last known %d instances",
                        self.url.name, self.last_error, self.catalog.instance_count())
        self.stale = True
