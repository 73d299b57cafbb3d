"""Which endpoints a proxy itself serves: the basis of its inbound side.

A proxy is matched to endpoints by workload name and namespace (the WorkloadEntry it runs as),
or by its instance IPs. Both indexes are built once per snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshpilot.envoy.scope import scope_for
from meshpilot.model import Endpoint, Protocol, Proxy
from meshpilot.model.snapshot import Snapshot

_INDEX = "targets-index"

Index = tuple[dict[tuple[str, str], list[Endpoint]], dict[str, list[Endpoint]]]


def _index(snapshot: Snapshot) -> Index:
    cached: Index | None = snapshot.cache.get(_INDEX)
    if cached is not None:
        return cached
    by_workload: dict[tuple[str, str], list[Endpoint]] = {}
    by_address: dict[str, list[Endpoint]] = {}
    for group in snapshot.endpoints.values():
        for ep in group:
            if ep.workload_name:
                by_workload.setdefault((ep.namespace, ep.workload_name), []).append(ep)
            by_address.setdefault(ep.address, []).append(ep)
    snapshot.cache[_INDEX] = (by_workload, by_address)
    return by_workload, by_address


def service_targets(snapshot: Snapshot, proxy: Proxy) -> tuple[Endpoint, ...]:
    """Endpoints served by this proxy's workload, in a stable order."""
    by_workload, by_address = _index(snapshot)
    found = {
        (ep.hostname, ep.service_port, ep.address, ep.port): ep
        for ep in by_workload.get((proxy.namespace, proxy.workload_name), [])
    }
    for ip in proxy.ip_addresses:
        for ep in by_address.get(ip, []):
            found.setdefault((ep.hostname, ep.service_port, ep.address, ep.port), ep)
    return tuple(found[k] for k in sorted(found))


@dataclass(frozen=True, slots=True)
class InboundPort:
    """One port the proxy accepts traffic on for its own workload."""

    bind: str
    port: int
    protocol: Protocol
    app: tuple[str, int]
    """Where the application listens behind it."""


def inbound_ports(snapshot: Snapshot, proxy: Proxy) -> list[InboundPort]:
    """The proxy's inbound side: a Sidecar's `ingress` listeners when it has some (each
    forwarding to its `defaultEndpoint`), else one port per endpoint the workload serves,
    forwarding to the proxy's app address."""
    sidecar = scope_for(snapshot, proxy).sidecar
    ingress = (sidecar.spec.get("ingress") or ()) if sidecar is not None else ()
    if ingress:
        bind = proxy.ip_addresses[0] if proxy.ip_addresses else "127.0.0.1"
        out = []
        for item in ingress:
            port = item["port"]
            number = int(port["number"])
            protocol = (
                Protocol.parse(str(port["protocol"])) if port.get("protocol")
                else Protocol.from_port_name(str(port.get("name", "")))
            )
            app = _address(str(item.get("defaultEndpoint") or ""), number)
            out.append(InboundPort(str(item.get("bind") or bind), number, protocol, app))
        return out
    seen: dict[tuple[str, int], InboundPort] = {}
    for ep in service_targets(snapshot, proxy):
        if (ep.address, ep.port) in seen:
            continue
        svc_port = snapshot.services[ep.hostname].port(ep.service_port)
        assert svc_port is not None
        seen[(ep.address, ep.port)] = InboundPort(
            ep.address, ep.port, svc_port.protocol, _address(proxy.app_address, ep.port)
        )
    return [seen[k] for k in sorted(seen)]


def _address(text: str, port: int) -> tuple[str, int]:
    """`host:port` (or empty for 127.0.0.1:<port>)."""
    if not text:
        return "127.0.0.1", port
    host, _, app_port = text.rpartition(":")
    return host, int(app_port)
