"""Services of a running server's registries, as analysis sees them.

The discovery server merges services from several registries (the ServiceEntry registry, and
Consul, Eureka, Nacos, ZooKeeper, etcd adapters). Analysis gets config as resources, so the
services the ServiceEntry registry derives from ServiceEntries and WorkloadEntries are already
there, recomputed from the resources (which is what lets a file overlaid in live mode replace
them). What config does not hold is everything an external registry publishes: those services
reach analysis as `RegistryService` records, one per registry and host, with their ports and
endpoints, unmerged, so analyzers can compare what two registries say about the same host.

Records cross the wire as JSON (the server's `/debug/analysis_inputs` topic, read by `meshpilot
analyze --use-kube=true` over xDS), so `to_json`/`from_json` are the one serialization both
sides use. A service is "derived from config" when its `source` names a config kind
(`ServiceEntry default/reviews`); those are dropped by `external_services`.

Messages about a registry service need a resource to carry them: `RegistryService.resource()`
is a pseudo-resource of kind `RegistryService` (`RegistryService default/orders.default.consul`)
with no file, so it never gets a file:line reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshpilot.analysis.resource import Collection, Resource

REGISTRY_SERVICE = Collection("registry.meshpilot.io", "RegistryService")
CONFIG_SOURCES = frozenset({"ServiceEntry", "WorkloadEntry"})
"""Kinds whose registry services analysis rebuilds from the resources themselves."""
HEALTHY = "HEALTHY"


@dataclass(frozen=True, slots=True)
class RegistryPort:
    name: str
    number: int
    protocol: str


@dataclass(frozen=True, slots=True)
class RegistryEndpoint:
    address: str
    port: int
    service_port: int
    labels: Mapping[str, str] = field(default_factory=dict)
    network: str = ""
    health: str = HEALTHY
    workload: str = ""

    @property
    def healthy(self) -> bool:
        return self.health == HEALTHY


@dataclass(frozen=True, slots=True)
class RegistryService:
    registry: str
    """The registry that published it (`consul`, `eureka`, `serviceentry`, …)."""
    hostname: str
    namespace: str
    ports: tuple[RegistryPort, ...] = ()
    endpoints: tuple[RegistryEndpoint, ...] = ()
    source: str = ""
    """What defined it: `ServiceEntry default/reviews`, `consul service orders`, …"""
    export_to: tuple[str, ...] = ()
    cluster: str = ""

    @property
    def from_config(self) -> bool:
        return is_config_source(self.source)

    @property
    def label(self) -> str:
        """How messages name it: `consul service orders`, else `<registry> registry`."""
        return self.source or f"{self.registry} registry"

    def resource(self) -> Resource:
        body = {
            "apiVersion": f"{REGISTRY_SERVICE.group}/v1",
            "kind": REGISTRY_SERVICE.kind,
            "metadata": {"name": self.hostname, "namespace": self.namespace},
            "spec": {"registry": self.registry, "source": self.source},
        }
        return Resource(REGISTRY_SERVICE, "v1", self.hostname, self.namespace, body)


def is_config_source(source: str) -> bool:
    """A registry service's `source` names a config resource (`ServiceEntry ns/name`)."""
    return source.split(" ", 1)[0] in CONFIG_SOURCES


def external_services(services: Iterable[RegistryService]) -> tuple[RegistryService, ...]:
    return tuple(s for s in services if not s.from_config)


# --- The server side: reading live registries --------------------------------------------------


class _Registry(Protocol):
    """What is read from a live registry (the `ServiceRegistry` protocol's read side)."""

    @property
    def provider(self) -> str: ...

    def services(self) -> list[Any]: ...

    def endpoints(self, hostname: str, namespace: str) -> list[Any]: ...


def read_registries(registry: _Registry, *, config_derived: bool = True) -> list[RegistryService]:
    """Every service of every registry, per registry (an aggregate is opened up, not merged);
    without the ones derived from config when `config_derived` is False (analysis rebuilds
    those from the resources, so reading their endpoints would be wasted work).

    Must run on the event loop thread: registries are mutated there.
    """
    members: Sequence[_Registry] = getattr(registry, "registries", None) or [registry]
    out: list[RegistryService] = []
    for member in members:
        for service in member.services():
            if not config_derived and is_config_source(service.source):
                continue
            endpoints = member.endpoints(service.hostname, service.namespace)
            out.append(RegistryService(
                registry=str(getattr(service, "registry", "") or member.provider),
                hostname=service.hostname,
                namespace=service.namespace,
                ports=tuple(RegistryPort(p.name, p.number, str(p.protocol))
                            for p in service.ports),
                endpoints=tuple(
                    RegistryEndpoint(e.address, e.port, e.service_port, dict(e.labels),
                                     e.network, str(e.health), e.workload_name)
                    for e in endpoints
                ),
                source=service.source,
                export_to=tuple(service.export_to),
                cluster=str(getattr(member, "cluster_id", "") or ""),
            ))
    return out


# --- JSON, the wire form ------------------------------------------------------------------------


def to_json(service: RegistryService) -> dict[str, Any]:
    return {
        "registry": service.registry,
        "cluster": service.cluster,
        "hostname": service.hostname,
        "namespace": service.namespace,
        "source": service.source,
        "exportTo": list(service.export_to),
        "ports": [{"name": p.name, "number": p.number, "protocol": p.protocol}
                  for p in service.ports],
        "endpoints": [
            {"address": e.address, "port": e.port, "servicePort": e.service_port,
             "labels": dict(e.labels), "network": e.network, "health": e.health,
             "workload": e.workload}
            for e in service.endpoints
        ],
    }


def from_json(data: Mapping[str, Any]) -> RegistryService:
    """The inverse of `to_json`; ValueError on a record that is not one."""
    try:
        return RegistryService(
            registry=str(data["registry"]),
            hostname=str(data["hostname"]),
            namespace=str(data["namespace"]),
            ports=tuple(RegistryPort(str(p["name"]), int(p["number"]), str(p["protocol"]))
                        for p in data.get("ports", ())),
            endpoints=tuple(
                RegistryEndpoint(str(e["address"]), int(e["port"]), int(e["servicePort"]),
                                 {str(k): str(v) for k, v in (e.get("labels") or {}).items()},
                                 str(e.get("network", "")), str(e.get("health", HEALTHY)),
                                 str(e.get("workload", "")))
                for e in data.get("endpoints", ())
            ),
            source=str(data.get("source", "")),
            export_to=tuple(str(x) for x in data.get("exportTo", ())),
            cluster=str(data.get("cluster", "")),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"not a registry service record: {error!r}") from error
