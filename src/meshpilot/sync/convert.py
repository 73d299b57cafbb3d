"""A registry's services as Istio ServiceEntries (and optionally WorkloadEntries).

One ServiceEntry per service, named after its host (already a valid DNS name) in the service's
mesh namespace, with the service's ports and either its endpoints inline or, with
`workload_entries=True`, a `workloadSelector` and one WorkloadEntry per instance address. Every
resource carries ownership labels, so a sync only ever changes or deletes what it wrote:

    app.kubernetes.io/managed-by: meshpilot-registry-sync
    meshpilot.io/sync-source: <name of the sync, e.g. the registries it reads>
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from meshpilot.model import Config, Endpoint, Kind, Service
from meshpilot.registry.base import ServiceRegistry

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "meshpilot-registry-sync"
SOURCE = "meshpilot.io/sync-source"
SELECTOR = "meshpilot.io/service"


def owner_labels(source: str) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, SOURCE: _label_value(source)}


def _label_value(text: str) -> str:
    """Label values are at most 63 characters of [A-Za-z0-9._-]; keep it readable."""
    clean = "".join(c if c.isalnum() or c in "._-" else "-" for c in text).strip("-._")
    if len(clean) <= 63:
        return clean
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{clean[:54]}-{digest}"


def _name(host: str) -> str:
    if len(host) <= 253:
        return host
    return host[:244] + "-" + hashlib.sha1(host.encode()).hexdigest()[:8]


Groups = dict[tuple[str, str], list[Config]]
"""(namespace, ServiceEntry name) → the ServiceEntry and its WorkloadEntries."""


def to_groups(
    registry: ServiceRegistry, source: str, workload_entries: bool = False
) -> Groups:
    groups: Groups = {}
    for service in sorted(registry.services(), key=lambda s: (s.namespace, s.hostname)):
        endpoints = registry.endpoints(service.hostname, service.namespace)
        configs = service_configs(service, endpoints, source, workload_entries)
        groups[(service.namespace, configs[0].name)] = configs
    return groups


def flatten(groups: Groups) -> list[Config]:
    return [config for key in sorted(groups) for config in groups[key]]


def service_configs(
    service: Service, endpoints: Iterable[Endpoint], source: str, workload_entries: bool
) -> list[Config]:
    labels = owner_labels(source)
    name = _name(service.hostname)
    spec: dict[str, Any] = {
        "hosts": [service.hostname],
        "ports": [
            {"number": p.number, "name": p.name, "protocol": p.protocol.value}
            for p in service.ports
        ],
        "location": service.location.value,
        "resolution": "STATIC",
    }
    workloads = _workloads(service, endpoints)
    configs: list[Config] = []
    if workload_entries:
        selector = {SELECTOR: _label_value(name)}
        spec["workloadSelector"] = {"labels": selector}
        for address, workload in sorted(workloads.items()):
            workload["labels"] = {**workload.get("labels", {}), **selector}
            configs.append(Config(
                kind=Kind.WORKLOAD_ENTRY, name=_name(f"{name}-{address.replace(':', '-')}"),
                namespace=service.namespace, spec=workload, labels=labels,
            ))
    else:
        spec["endpoints"] = [workloads[a] for a in sorted(workloads)]
    return [Config(kind=Kind.SERVICE_ENTRY, name=name, namespace=service.namespace, spec=spec,
                   labels=labels), *configs]


def _workloads(service: Service, endpoints: Iterable[Endpoint]) -> dict[str, dict[str, Any]]:
    """One workload per address, with the instance port for each service port name."""
    by_port = {p.number: p.name for p in service.ports}
    workloads: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        entry = workloads.setdefault(ep.address, {"address": ep.address, "ports": {}})
        entry["ports"][by_port.get(ep.service_port, str(ep.service_port))] = ep.port
        if ep.labels:
            entry["labels"] = dict(ep.labels)
        if str(ep.locality):
            entry["locality"] = str(ep.locality)
        if ep.network:
            entry["network"] = ep.network
        if ep.weight and ep.weight != 1:
            entry["weight"] = ep.weight
        if ep.service_account:
            entry["serviceAccount"] = ep.service_account
    return workloads
