"""Services and endpoints: what every registry converts its own data into.

A Service is a hostname with ports; an Endpoint is one address:port that serves one port of one
service. Registries (ServiceEntry, Consul, ZooKeeper, …) produce both; nothing downstream knows
which registry a service came from except through `Service.registry` for diagnostics.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class Protocol(enum.StrEnum):
    HTTP = "HTTP"
    HTTP2 = "HTTP2"
    GRPC = "GRPC"
    HTTPS = "HTTPS"
    TLS = "TLS"
    TCP = "TCP"
    MONGO = "MONGO"
    REDIS = "REDIS"
    MYSQL = "MYSQL"
    UNSUPPORTED = "UNSUPPORTED"

    @classmethod
    def parse(cls, value: str) -> Protocol:
        """Istio's protocol names are case-insensitive; unknown names are UNSUPPORTED."""
        try:
            return cls(value.upper())
        except ValueError:
            return cls.UNSUPPORTED

    @classmethod
    def from_port_name(cls, name: str) -> Protocol:
        """Istio's port-naming convention: `http-web`, `grpc`, `tcp-db`, …"""
        prefix = name.split("-", 1)[0]
        proto = cls.parse(prefix)
        return proto

    @property
    def is_http(self) -> bool:
        return self in (Protocol.HTTP, Protocol.HTTP2, Protocol.GRPC)


class Resolution(enum.StrEnum):
    NONE = "NONE"
    STATIC = "STATIC"
    DNS = "DNS"
    DNS_ROUND_ROBIN = "DNS_ROUND_ROBIN"


class ServiceLocation(enum.StrEnum):
    MESH_EXTERNAL = "MESH_EXTERNAL"
    MESH_INTERNAL = "MESH_INTERNAL"


class HealthStatus(enum.StrEnum):
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    DRAINING = "DRAINING"


@dataclass(frozen=True, slots=True)
class Port:
    name: str
    number: int
    protocol: Protocol
    target_port: int | None = None


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    subzone: str = ""

    @classmethod
    def parse(cls, value: str) -> Locality:
        """Istio writes locality as `region/zone/subzone`."""
        parts = [*value.split("/"), "", "", ""][:3] if value else ["", "", ""]
        return cls(parts[0], parts[1], parts[2])

    def __str__(self) -> str:
        return "/".join(p for p in (self.region, self.zone, self.subzone) if p)


@dataclass(frozen=True, slots=True)
class Service:
    hostname: str
    namespace: str
    ports: tuple[Port, ...]
    resolution: Resolution = Resolution.STATIC
    location: ServiceLocation = ServiceLocation.MESH_INTERNAL
    addresses: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    export_to: tuple[str, ...] = ()
    registry: str = ""
    """Which registry published this service (for diagnostics only)."""
    source: str = ""
    """The config that defined it, e.g. `ServiceEntry default/reviews`."""

    def port(self, number: int) -> Port | None:
        return next((p for p in self.ports if p.number == number), None)

    def port_by_name(self, name: str) -> Port | None:
        return next((p for p in self.ports if p.name == name), None)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address serving one port of one service."""

    hostname: str
    """The service this endpoint belongs to."""
    namespace: str
    service_port: int
    """The service port this endpoint serves (the cluster it lands in)."""
    address: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)
    network: str = ""
    cluster_id: str = ""
    locality: Locality = Locality()
    service_account: str = ""
    health: HealthStatus = HealthStatus.HEALTHY
    weight: int = 1
    workload_name: str = ""
    """Name of the workload behind the endpoint (WorkloadEntry name), used to match proxies."""
