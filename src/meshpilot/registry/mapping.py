"""Mapping rules: how a third-party registry's instances become mesh services and endpoints.

Every adapter reads its source into `Instance` records (a service name, an address and ports,
metadata) and hands them to the catalog; the rules here decide, the same way for every
registry, what the mesh sees:

- **host name**: `host=` template from the URL, default `{service}.{namespace}.{registry}`
  (e.g. `orders.default.consul`); `{service}`, `{namespace}`, `{registry}`, `{group}` and
  `{datacenter}` are filled in. Names are lower-cased and anything that is not a DNS label
  character becomes `-`; a name that had to change is logged once.
- **namespace**: `namespace=` (default `default`), the mesh namespace of every service.
- **protocol** of each port: the instance's `protocol` metadata or tag (`protocol=grpc`), else
  the port name's prefix (`http-…`, `grpc-…`), else the registry's convention (`protocol=`
  URL parameter, or the adapter's default: HTTP for Consul, Eureka and Nacos, TCP for Dubbo).
- **labels**: instance metadata and `key=value` tags; plain tags become `tag.<tag>: "true"`.
- **weight**, **locality** (`region/zone/subzone`, from metadata `locality`, or `region`,
  `zone` and `subzone`, or the registry's `datacenter`), **network** and **cluster id**: from
  metadata, else from the URL's `network=` and `cluster=`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshpilot.model import HealthStatus, Locality, Protocol
from meshpilot.registry.urls import RegistryUrl

log = logging.getLogger("meshpilot.registry")

DEFAULT_HOST_TEMPLATE = "{service}.{namespace}.{registry}"
_LABEL_INVALID = re.compile(r"[^a-z0-9-]+")
_warned_names: set[str] = set()


@dataclass(frozen=True, slots=True)
class Instance:
    """One registered instance, as any registry describes it."""

    service: str
    id: str
    address: str
    ports: Mapping[str, int]
    """Port name → number. A registry with one unnamed port uses the name `""`."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    healthy: bool = True
    weight: int = 1
    group: str = ""
    datacenter: str = ""


@dataclass(frozen=True, slots=True)
class MappingRules:
    registry: str
    """The registry kind, used in host names: consul, eureka, nacos, zookeeper, etcd."""
    namespace: str = "default"
    host_template: str = DEFAULT_HOST_TEMPLATE
    default_protocol: Protocol = Protocol.HTTP
    network: str = ""
    cluster_id: str = ""

    @classmethod
    def from_url(cls, url: RegistryUrl, default_protocol: Protocol) -> MappingRules:
        protocol = url.param("protocol")
        return cls(
            registry=url.scheme,
            namespace=url.param("meshNamespace") or url.param("mesh-namespace") or "default",
            host_template=url.param("host") or DEFAULT_HOST_TEMPLATE,
            default_protocol=Protocol.parse(protocol) if protocol else default_protocol,
            network=url.param("network"),
            cluster_id=url.param("cluster") or url.name,
        )

    def hostname(self, instance: Instance) -> str:
        raw = self.host_template.format(
            service=instance.service,
            namespace=self.namespace,
            registry=self.registry,
            group=instance.group or "default",
            datacenter=instance.datacenter or "dc",
        )
        return sanitize_host(raw)

    def labels(self, instance: Instance) -> dict[str, str]:
        labels = {k: str(v) for k, v in instance.metadata.items()}
        for tag in instance.tags:
            key, sep, value = tag.partition("=")
            labels[key if sep else f"tag.{tag}"] = value if sep else "true"
        return labels

    def protocol(self, instance: Instance, port_name: str) -> Protocol:
        declared = instance.metadata.get("protocol") or self.labels(instance).get("protocol")
        if declared:
            parsed = Protocol.parse(declared)
            if parsed is not Protocol.UNSUPPORTED:
                return parsed
        if port_name:
            by_name = Protocol.from_port_name(port_name)
            if by_name is not Protocol.UNSUPPORTED:
                return by_name
        return self.default_protocol

    def locality(self, instance: Instance) -> Locality:
        meta = instance.metadata
        if meta.get("locality"):
            return Locality.parse(meta["locality"])
        if meta.get("region") or meta.get("zone"):
            return Locality(meta.get("region", ""), meta.get("zone", ""), meta.get("subzone", ""))
        return Locality(instance.datacenter) if instance.datacenter else Locality()

    def health(self, instance: Instance) -> HealthStatus:
        return HealthStatus.HEALTHY if instance.healthy else HealthStatus.UNHEALTHY


def sanitize_host(raw: str) -> str:
    """A valid DNS name from any service name: lower case, labels of [a-z0-9-]."""
    labels = [
        _LABEL_INVALID.sub("-", label.lower()).strip("-") or "x" for label in raw.split(".")
    ]
    host = ".".join(label[:63] for label in labels)
    if host != raw and raw not in _warned_names:
        _warned_names.add(raw)
        log.warning("registry service name %r is not a valid host; using %r", raw, host)
    return host
