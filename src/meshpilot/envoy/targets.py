"""Which endpoints a proxy itself serves: the basis of its inbound side.

A proxy is matched to endpoints by workload name and namespace (the WorkloadEntry it runs as),
or by its instance IPs. Both indexes are built once per snapshot.
"""

from __future__ import annotations

from meshpilot.model import Endpoint, Proxy
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
