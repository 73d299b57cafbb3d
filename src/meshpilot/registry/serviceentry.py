"""Services and endpoints from ServiceEntry and WorkloadEntry config.

Each ServiceEntry host becomes a Service. Its endpoints are either written inline or are the
WorkloadEntries in the same namespace whose labels match its `workloadSelector`. A change to a
WorkloadEntry only moves endpoints, so it asks for an EDS push of the hosts that select it;
a ServiceEntry change alters services and asks for a full push.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from meshpilot.config.store import ConfigStore, Event
from meshpilot.model import (
    Config,
    Endpoint,
    HealthStatus,
    Kind,
    Locality,
    Port,
    Protocol,
    PushRequest,
    Resolution,
    Service,
    ServiceLocation,
    TriggerReason,
)
from meshpilot.registry.base import Updater

log = logging.getLogger("meshpilot.registry")

PROVIDER = "serviceentry"


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _ports(spec: Mapping[str, Any]) -> tuple[Port, ...]:
    ports = []
    for raw in spec.get("ports") or []:
        name = str(raw.get("name", ""))
        proto = raw.get("protocol")
        protocol = Protocol.parse(str(proto)) if proto else Protocol.from_port_name(name)
        target = raw.get("targetPort")
        ports.append(Port(name, int(raw["number"]), protocol, int(target) if target else None))
    return tuple(ports)


def services_of(se: Config) -> list[Service]:
    spec = se.spec
    ports = _ports(spec)
    return [
        Service(
            hostname=host,
            namespace=se.namespace,
            ports=ports,
            # Unset and null both mean Istio's defaults.
            resolution=Resolution(spec.get("resolution") or "NONE"),
            location=ServiceLocation(spec.get("location") or "MESH_EXTERNAL"),
            addresses=tuple(spec.get("addresses") or ()),
            labels=dict(se.labels),
            export_to=tuple(spec.get("exportTo") or ()),
            registry=PROVIDER,
            source=f"{se.key}",
        )
        for host in spec.get("hosts") or []
    ]


def _workload_endpoints(
    service: Service, workload: Mapping[str, Any], workload_name: str = ""
) -> list[Endpoint]:
    """One Endpoint per service port for a workload (inline endpoint or WorkloadEntry spec)."""
    named_ports: Mapping[str, Any] = workload.get("ports") or {}
    address = str(workload["address"])
    out = []
    for port in service.ports:
        target = named_ports.get(port.name) or port.target_port or port.number
        out.append(
            Endpoint(
                hostname=service.hostname,
                namespace=service.namespace,
                service_port=port.number,
                address=address,
                port=int(target),
                labels=dict(workload.get("labels") or {}),
                network=str(workload.get("network", "")),
                locality=Locality.parse(str(workload.get("locality", ""))),
                service_account=str(workload.get("serviceAccount", "")),
                weight=int(workload.get("weight") or 1),
                health=HealthStatus.HEALTHY,
                workload_name=workload_name,
            )
        )
    return out


class ServiceEntryRegistry:
    """Reads ServiceEntry and WorkloadEntry from a config store and keeps an index of both."""

    def __init__(self, store: ConfigStore, updater: Updater, cluster_id: str = "") -> None:
        self._store = store
        self._updater = updater
        self._cluster_id = cluster_id
        store.register_handler(self._on_config)

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    def has_synced(self) -> bool:
        return self._store.has_synced()

    async def wait_synced(self) -> None:
        await self._store.wait_synced()

    async def run(self) -> None:
        # Everything arrives through the store's handlers; nothing of our own to watch.
        return None

    def services(self) -> list[Service]:
        seen: dict[tuple[str, str], Service] = {}
        for se in sorted(self._store.list(Kind.SERVICE_ENTRY), key=lambda c: c.key):
            for svc in services_of(se):
                # The same host in two ServiceEntries of one namespace: the first one's ports win.
                seen.setdefault((svc.namespace, svc.hostname), svc)
        return list(seen.values())

    def endpoints(self, hostname: str, namespace: str) -> list[Endpoint]:
        out: list[Endpoint] = []
        for se in sorted(self._store.list(Kind.SERVICE_ENTRY, namespace), key=lambda c: c.key):
            if hostname not in (se.spec.get("hosts") or ()):
                continue
            service = next(s for s in services_of(se) if s.hostname == hostname)
            out.extend(self._endpoints_of(se, service))
        return out

    def _endpoints_of(self, se: Config, service: Service) -> list[Endpoint]:
        selector = (se.spec.get("workloadSelector") or {}).get("labels")
        if selector is None:
            return [
                ep
                for raw in se.spec.get("endpoints") or []
                for ep in _workload_endpoints(service, raw)
            ]
        out = []
        for we in sorted(self._store.list(Kind.WORKLOAD_ENTRY, se.namespace), key=lambda c: c.key):
            if labels_match(selector, we.spec.get("labels") or {}):
                out.extend(_workload_endpoints(service, we.spec, we.name))
        return out

    def _hosts_selecting(self, we: Config) -> set[tuple[str, str]]:
        labels = we.spec.get("labels") or {}
        hosts: set[tuple[str, str]] = set()
        for se in self._store.list(Kind.SERVICE_ENTRY, we.namespace):
            selector = (se.spec.get("workloadSelector") or {}).get("labels")
            if selector is not None and labels_match(selector, labels):
                hosts.update((se.namespace, h) for h in se.spec.get("hosts") or ())
        return hosts

    def _on_config(self, old: Config | None, new: Config | None, event: Event) -> None:
        current = new or old
        assert current is not None
        if current.kind == Kind.SERVICE_ENTRY:
            self._updater.config_update(
                PushRequest(
                    full=True,
                    config_kinds=frozenset({Kind.SERVICE_ENTRY}),
                    reasons=frozenset({TriggerReason.SERVICE}),
                )
            )
        elif current.kind == Kind.WORKLOAD_ENTRY:
            hosts = set()
            for we in (old, new):
                if we is not None:
                    hosts |= self._hosts_selecting(we)
            log.debug("%s %s moves endpoints of %s", event, current.key, sorted(hosts))
            self._updater.config_update(
                PushRequest(
                    full=False,
                    config_kinds=frozenset({Kind.WORKLOAD_ENTRY}),
                    eds_hosts=frozenset(hosts),
                    reasons=frozenset({TriggerReason.ENDPOINT}),
                )
            )
