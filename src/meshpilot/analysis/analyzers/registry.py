"""meshpilot's own analyzers (MP codes): what only a multi-registry control plane can check.

meshpilot merges services from several registries. From files, two of them are visible: the
Kubernetes one (Services selecting Pods) and meshpilot's ServiceEntry registry (ServiceEntries
with inline endpoints or selected WorkloadEntries). These analyzers compare them, and look at
endpoints the way meshpilot's registries will publish them:

- `meshpilot.RegistryProtocolAnalyzer`: a host and port published by a Kubernetes Service and
  by a ServiceEntry with different protocols (MP0001; ServiceEntries among themselves are
  IST0177's business).
- `meshpilot.ServiceEntryCollisionAnalyzer`: a ServiceEntry host that is also a Kubernetes
  Service's name, so two registries define one service (MP0002).
- `meshpilot.UnhealthyEndpointsAnalyzer`: a ServiceEntry whose selected WorkloadEntries all
  report a `Healthy` condition of `False` and that has no inline endpoint (MP0003).
- `meshpilot.SubsetEndpointsAnalyzer`: a DestinationRule subset of a ServiceEntry host that
  selects none of its endpoints, inline or WorkloadEntry (MP0004). Pods are
  `destinationrule.SubsetSelectPodAnalyzer`'s business.
- `meshpilot.RegistryPortsAnalyzer`: one host published by two registries, or by one registry
  in two clusters, with different port numbers (MP0006): the server keeps the first one's
  ports, so the other's instances on the missing ports get no traffic.
- `meshpilot.NetworkGatewayAnalyzer`: with MeshNetworks configured, an endpoint in a network
  that has no gateway cannot be reached from other networks (MP0005).

Live (in the server, or `meshpilot analyze --use-kube=true`) the external registries' services
(`ctx.registries`: Consul, Eureka, Nacos, ZooKeeper, etcd) take part in every check: a
ServiceEntry or Kubernetes Service colliding with one, two registries disagreeing on a port's
protocol, a registry service whose endpoints are all unhealthy, a subset matching none of the
endpoints any registry publishes for the host (the server merges endpoints of one host from
every registry), an endpoint in a network without gateway. Findings about a registry service
are reported on a `RegistryService namespace/host` pseudo-resource, which has no file.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from meshpilot.analysis.analyzers.common import (
    fqdn,
    mapping,
    mappings,
    number,
    selector_matches,
    string_map,
    strings,
    text,
)
from meshpilot.analysis.analyzers.service import port_protocol
from meshpilot.analysis.analyzers.services import ServiceIndex
from meshpilot.analysis.context import Context, ResourceSet
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.registries import REGISTRY_SERVICE, RegistryService
from meshpilot.analysis.resource import (
    DESTINATION_RULE,
    SERVICE,
    SERVICE_ENTRY,
    WORKLOAD_ENTRY,
    Collection,
    Resource,
)

PROTOCOL_CONFLICT = message_type("RegistryHostPortConflict")
SHADOWS_SERVICE = message_type("ServiceEntryShadowsRegistryService")
NO_HEALTHY_ENDPOINTS = message_type("ServiceWithoutHealthyEndpoints")
SUBSET_WITHOUT_ENDPOINTS = message_type("SubsetSelectsNoRegistryEndpoint")
NETWORK_WITHOUT_GATEWAY = message_type("EndpointNetworkWithoutGateway")
PORTS_DIFFER = message_type("RegistryServicePortsDiffer")


@dataclass(frozen=True)
class Endpoint:
    """An endpoint as the ServiceEntry registry publishes it."""

    name: str
    labels: Mapping[str, str]
    network: str
    healthy: bool
    source: Resource
    field: str
    """Path of the endpoint in its source: `spec.endpoints[i]`, or `spec` of a WorkloadEntry."""


def kubernetes_services(ctx: Context) -> dict[str, Resource]:
    return {fqdn(s.namespace, s.name): s for s in ctx.for_each(SERVICE)}


def entry_endpoints(ctx: Context, entry: Resource) -> Iterator[Endpoint]:
    """Inline endpoints, and WorkloadEntries of the entry's namespace its selector selects."""
    for index, endpoint in mappings(entry.spec.get("endpoints")):
        yield Endpoint(text(endpoint.get("address")), string_map(endpoint.get("labels")),
                       text(endpoint.get("network")), True, entry,
                       f"spec.endpoints[{index}]")
    selector = entry.spec.get("workloadSelector")
    if selector is None:
        return
    labels = string_map(mapping(selector).get("labels"))
    for workload in _workloads(ctx).select(entry.namespace, labels):
        yield workload_endpoint(workload)


class _WorkloadIndex:
    """WorkloadEntries by namespace and by label, built once per resource set. Matching every
    ServiceEntry's selector against every WorkloadEntry was quadratic: 40 s of analysis for
    1,000 entries and 10,000 workloads, on every change of a running server."""

    def __init__(self, ctx: Context) -> None:
        self.size = len(ctx.resources)
        self.workloads: dict[str, list[tuple[Resource, dict[str, str]]]] = {}
        self.by_label: dict[tuple[str, str, str], list[int]] = {}
        for workload in ctx.for_each(WORKLOAD_ENTRY):
            labels = {**workload.labels, **string_map(workload.spec.get("labels"))}
            found = self.workloads.setdefault(workload.namespace, [])
            for key, value in labels.items():
                self.by_label.setdefault((workload.namespace, key, value), []).append(len(found))
            found.append((workload, labels))

    def select(self, namespace: str, selector: Mapping[str, str]) -> Iterator[Resource]:
        """The namespace's workloads the selector selects, in resource order."""
        workloads = self.workloads.get(namespace, [])
        if not selector:
            yield from (w for w, _ in workloads)
            return
        # Only workloads carrying the rarest of the selector's labels can match.
        fewest = min((self.by_label.get((namespace, k, v), []) for k, v in selector.items()),
                     key=len)
        for position in fewest:
            workload, labels = workloads[position]
            if selector_matches(selector, labels):
                yield workload


_INDEXES: weakref.WeakKeyDictionary[ResourceSet, _WorkloadIndex] = weakref.WeakKeyDictionary()


def _workloads(ctx: Context) -> _WorkloadIndex:
    # Each analyzer gets a fresh Context over the same ResourceSet: index the set.
    index = _INDEXES.get(ctx.resources)
    if index is None or index.size != len(ctx.resources):
        index = _INDEXES[ctx.resources] = _WorkloadIndex(ctx)
    return index


def workload_endpoint(workload: Resource) -> Endpoint:
    return Endpoint(workload.full_name,
                    {**workload.labels, **string_map(workload.spec.get("labels"))},
                    text(workload.spec.get("network")), _healthy(workload), workload, "spec")


def _healthy(workload: Resource) -> bool:
    for _, condition in mappings(mapping(workload.body.get("status")).get("conditions")):
        if text(condition.get("type")) == "Healthy":
            return text(condition.get("status")) != "False"
    return True


def _entry_ports(entry: Resource) -> Iterator[tuple[int, str]]:
    for _, port in mappings(entry.spec.get("ports")):
        port_number = number(port.get("number"))
        if port_number is not None:
            yield port_number, text(port.get("protocol")).upper() or _by_name(port)


def _by_name(port: Mapping[str, Any]) -> str:
    return port_protocol({"name": port.get("name")}).upper()


def _external_ports(service: RegistryService) -> dict[int, str]:
    return {p.number: p.protocol.upper() for p in service.ports}


def _mismatches(ours: dict[int, str], theirs: dict[int, str]) -> Iterator[tuple[int, str, str]]:
    for port_number, protocol in sorted(ours.items()):
        other = theirs.get(port_number)
        if other and protocol and other != protocol:
            yield port_number, protocol, other


def externals_for(ctx: Context, namespace: str, host: str) -> list[RegistryService]:
    """External registry services of a host as written in `namespace` (short names qualified)."""
    name = fqdn(namespace, host)
    return [s for s in ctx.registries if s.hostname == name]


class RegistryProtocolAnalyzer:
    name = "meshpilot.RegistryProtocolAnalyzer"
    description = (
        "Checks that registries publishing the same host and port agree on its protocol"
    )
    inputs: tuple[Collection, ...] = (SERVICE, SERVICE_ENTRY)

    def analyze(self, ctx: Context) -> None:
        services = kubernetes_services(ctx)
        for entry in ctx.for_each(SERVICE_ENTRY):
            for host in strings(entry.spec.get("hosts")):
                service = services.get(fqdn(entry.namespace, host))
                if service is None:
                    continue
                theirs = {
                    number(p.get("port")): port_protocol(p).upper()
                    for _, p in mappings(service.spec.get("ports"))
                }
                for port_number, protocol in _entry_ports(entry):
                    other = theirs.get(port_number)
                    if other and protocol and other != protocol:
                        ctx.report(entry, PROTOCOL_CONFLICT, host, port_number,
                                   f"{protocol} (ServiceEntry {entry.full_name}), {other} "
                                   f"(Service {service.full_name})", field="spec.ports")
        self._externals(ctx, services)

    @staticmethod
    def _externals(ctx: Context, services: dict[str, Resource]) -> None:
        for entry in ctx.for_each(SERVICE_ENTRY):
            ours = dict(_entry_ports(entry))
            for host in strings(entry.spec.get("hosts")):
                for external in externals_for(ctx, entry.namespace, host):
                    for port, protocol, other in _mismatches(ours, _external_ports(external)):
                        ctx.report(entry, PROTOCOL_CONFLICT, host, port,
                                   f"{protocol} (ServiceEntry {entry.full_name}), {other} "
                                   f"({external.label})", field="spec.ports")
        seen: list[RegistryService] = []
        for external in ctx.registries:
            theirs = _external_ports(external)
            service = services.get(external.hostname)
            if service is not None:
                ours = {number(p.get("port")) or 0: port_protocol(p).upper()
                        for _, p in mappings(service.spec.get("ports"))}
                for port, protocol, other in _mismatches(ours, theirs):
                    ctx.report(service, PROTOCOL_CONFLICT, external.hostname, port,
                               f"{protocol} (Service {service.full_name}), {other} "
                               f"({external.label})", field="spec.ports")
            for earlier in seen:
                if earlier.hostname != external.hostname or earlier.registry == external.registry:
                    continue
                for port, protocol, other in _mismatches(_external_ports(earlier), theirs):
                    ctx.report(external.resource(), PROTOCOL_CONFLICT, external.hostname, port,
                               f"{protocol} ({earlier.label}), {other} ({external.label})")
            seen.append(external)


class RegistryPortsAnalyzer:
    name = "meshpilot.RegistryPortsAnalyzer"
    description = "Checks that registries and clusters publishing one host agree on its ports"
    inputs: tuple[Collection, ...] = ()

    def analyze(self, ctx: Context) -> None:
        seen: list[RegistryService] = []
        for external in ctx.registries:
            ports = sorted(_external_ports(external))
            for earlier in seen:
                same_source = (earlier.registry, earlier.cluster) == (external.registry,
                                                                      external.cluster)
                if earlier.hostname != external.hostname or same_source:
                    continue
                theirs = sorted(_external_ports(earlier))
                if theirs != ports:
                    ctx.report(external.resource(), PORTS_DIFFER, external.hostname,
                               f"{_port_list(theirs)} ({_where(earlier)}), "
                               f"{_port_list(ports)} ({_where(external)})")
            seen.append(external)


def _port_list(ports: list[int]) -> str:
    return "/".join(str(p) for p in ports) or "none"


def _where(service: RegistryService) -> str:
    return service.label + (f" in cluster {service.cluster}" if service.cluster else "")


class ServiceEntryCollisionAnalyzer:
    name = "meshpilot.ServiceEntryCollisionAnalyzer"
    description = "Checks for ServiceEntry hosts that a service registry already publishes"
    inputs: tuple[Collection, ...] = (SERVICE, SERVICE_ENTRY)

    def analyze(self, ctx: Context) -> None:
        services = kubernetes_services(ctx)
        for entry in ctx.for_each(SERVICE_ENTRY):
            for index, host in enumerate(strings(entry.spec.get("hosts"))):
                service = services.get(fqdn(entry.namespace, host))
                if service is not None:
                    ctx.report(entry, SHADOWS_SERVICE, host,
                               f"Kubernetes Service {service.full_name}",
                               field=f"spec.hosts[{index}]")
                for external in externals_for(ctx, entry.namespace, host):
                    ctx.report(entry, SHADOWS_SERVICE, host,
                               f"the {external.registry} registry ({external.label})",
                               field=f"spec.hosts[{index}]")


class UnhealthyEndpointsAnalyzer:
    name = "meshpilot.UnhealthyEndpointsAnalyzer"
    description = "Checks for services whose every endpoint is unhealthy"
    inputs: tuple[Collection, ...] = (SERVICE_ENTRY, WORKLOAD_ENTRY)

    def analyze(self, ctx: Context) -> None:
        for entry in ctx.for_each(SERVICE_ENTRY):
            endpoints = list(entry_endpoints(ctx, entry))
            if endpoints and not any(e.healthy for e in endpoints):
                for host in strings(entry.spec.get("hosts")):
                    ctx.report(entry, NO_HEALTHY_ENDPOINTS, len(endpoints), host,
                               field="spec.workloadSelector")
        for external in ctx.registries:
            addresses = {(e.address, e.port) for e in external.endpoints}
            if addresses and not any(e.healthy for e in external.endpoints):
                ctx.report(external.resource(), NO_HEALTHY_ENDPOINTS, len(addresses),
                           external.hostname)


class SubsetEndpointsAnalyzer:
    name = "meshpilot.SubsetEndpointsAnalyzer"
    description = "Checks that DestinationRule subsets select an endpoint of some registry"
    inputs: tuple[Collection, ...] = (DESTINATION_RULE, SERVICE_ENTRY, WORKLOAD_ENTRY)

    def analyze(self, ctx: Context) -> None:
        index = ServiceIndex(ctx)
        for rule in ctx.for_each(DESTINATION_RULE):
            host = text(rule.spec.get("host"))
            known = index.lookup(rule.namespace, host, strings(rule.spec.get("exportTo")))
            if known is None:
                continue
            source = known.source
            if source.collection == SERVICE_ENTRY:
                if source.spec.get("workloadSelector") is None \
                        and not source.spec.get("endpoints"):
                    continue  # DNS resolution of the host itself: nothing to subset
                labels_found = [e.labels for e in entry_endpoints(ctx, source)]
            elif source.collection != REGISTRY_SERVICE:
                continue  # Kubernetes Services: destinationrule.SubsetSelectPodAnalyzer's
            else:
                labels_found = []
            # The server merges the endpoints every registry publishes for one host.
            labels_found.extend(
                e.labels for s in ctx.registries
                if s.hostname == fqdn(rule.namespace, host) and s.namespace == source.namespace
                for e in s.endpoints
            )
            for subset_index, subset in mappings(rule.spec.get("subsets")):
                labels = string_map(subset.get("labels"))
                if not any(selector_matches(labels, found) for found in labels_found):
                    ctx.report(rule, SUBSET_WITHOUT_ENDPOINTS, text(subset.get("name")), host,
                               field=f"spec.subsets[{subset_index}]")


class NetworkGatewayAnalyzer:
    name = "meshpilot.NetworkGatewayAnalyzer"
    description = "Checks that every endpoint's network has a gateway in MeshNetworks"
    inputs: tuple[Collection, ...] = (SERVICE_ENTRY, WORKLOAD_ENTRY)

    def analyze(self, ctx: Context) -> None:
        networks = ctx.mesh.networks
        if not networks:
            return
        with_gateway = {
            str(name) for name, definition in networks.items()
            if mapping(definition).get("gateways")
        }
        endpoints: list[Endpoint] = [workload_endpoint(w) for w in ctx.for_each(WORKLOAD_ENTRY)]
        for entry in ctx.for_each(SERVICE_ENTRY):
            endpoints.extend(e for e in entry_endpoints(ctx, entry) if e.source is entry)
        for endpoint in endpoints:
            if endpoint.network and endpoint.network not in with_gateway:
                ctx.report(endpoint.source, NETWORK_WITHOUT_GATEWAY, endpoint.name,
                           endpoint.network, field=f"{endpoint.field}.network")
        for external in ctx.registries:
            for address, port, network in sorted({(e.address, e.port, e.network)
                                                  for e in external.endpoints}):
                if network and network not in with_gateway:
                    ctx.report(external.resource(), NETWORK_WITHOUT_GATEWAY,
                               f"{address}:{port}", network)
