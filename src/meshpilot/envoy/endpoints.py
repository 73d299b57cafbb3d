"""EDS: a ClusterLoadAssignment per outbound cluster, grouped by locality.

A subset cluster gets the endpoints whose labels match the subset's labels in the
DestinationRule. Locality groups carry a weight too, which proxyless gRPC requires.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from meshpilot.envoy import locality_lb, mtls, networks
from meshpilot.envoy.cluster_policies import traffic_policy
from meshpilot.envoy.names import OUTBOUND, ClusterName
from meshpilot.envoy.scope import destination_rule_for
from meshpilot.model import Endpoint, HealthStatus, Locality, Proxy
from meshpilot.model.snapshot import Snapshot

_HEALTH = {
    HealthStatus.HEALTHY: health_check_pb2.HEALTHY,
    HealthStatus.UNHEALTHY: health_check_pb2.UNHEALTHY,
    HealthStatus.DRAINING: health_check_pb2.DRAINING,
}


def subset_labels(
    snapshot: Snapshot,
    host: str,
    subset: str,
    namespace: str = "",
    labels: Mapping[str, str] | None = None,
) -> Mapping[str, str] | None:
    """Labels a subset selects (for clients in `namespace`), or None when the applicable
    DestinationRule does not define it."""
    dr = destination_rule_for(snapshot, host, namespace, labels)
    for s in (dr.spec.get("subsets") or ()) if dr else ():
        if s.get("name") == subset:
            selected: Mapping[str, str] = s.get("labels") or {}
            return selected
    return None


def load_assignment(
    snapshot: Snapshot,
    name: str,
    namespace: str = "",
    client: Locality | None = None,
    labels: Mapping[str, str] | None = None,
    network: str | None = None,
    cluster_id: str | None = None,
    failover_client: Mapping[str, str] | None = None,
) -> endpoint_pb2.ClusterLoadAssignment:
    """The assignment for a cluster name; unknown clusters get an empty one, as Envoy expects.

    With the client's locality, locality-aware balancing shapes it (see `locality_lb`); with
    its network, endpoints elsewhere become their network's gateways (see `networks`)."""
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    parsed = ClusterName.parse(name)
    if parsed is None or parsed.direction != OUTBOUND:
        return cla
    endpoints = snapshot.service_endpoints(parsed.host, parsed.port)
    if parsed.subset:
        selector = subset_labels(snapshot, parsed.host, parsed.subset, namespace, labels)
        if selector is None:
            return cla
        endpoints = tuple(
            ep for ep in endpoints if all(ep.labels.get(k) == v for k, v in selector.items())
        )
    if cluster_id is not None and snapshot.mesh.cluster_local(parsed.host):
        endpoints = tuple(ep for ep in endpoints if ep.cluster_id == cluster_id)
    if network is not None and networks.active(snapshot):
        endpoints = tuple(networks.split_horizon(snapshot, endpoints, network,
                                                 mtls.enabled(snapshot)))
    policy = traffic_policy(snapshot, parsed.host, parsed.port, parsed.subset, namespace, labels)
    rules = locality_lb.failover_priority(policy) if failover_client is not None else []

    def rank(ep: Endpoint) -> int:
        """failoverPriority's priority of an endpoint for this client (0 without rules)."""
        if not rules or failover_client is None:
            return 0
        where = locality_lb.topology_labels(ep.labels, networks.network_of(snapshot, ep),
                                            ep.cluster_id, ep.locality)
        return locality_lb.label_priority(rules, failover_client, where)

    # Groups by locality, and apart for another network's gateways: those come after local
    # endpoints (a lower priority), so a service present here is served here first.
    by_locality: dict[tuple[Locality, bool, int], list[Endpoint]] = {}
    for ep in endpoints:
        key = (ep.locality, networks.GATEWAY_LABEL in ep.labels, rank(ep))
        by_locality.setdefault(key, []).append(ep)
    has_local = any(not remote for _, remote, _ in by_locality)
    for locality, remote, ranked in sorted(by_locality, key=lambda k: (k[2], k[1], str(k[0]))):
        group = cla.endpoints.add()
        group.priority = ranked * 2 + (1 if remote and has_local else 0)
        group.locality.region = locality.region
        group.locality.zone = locality.zone
        group.locality.sub_zone = locality.subzone
        total = 0
        for ep in by_locality[(locality, remote, ranked)]:
            lb = group.lb_endpoints.add()
            lb.endpoint.address.socket_address.address = ep.address
            lb.endpoint.address.socket_address.port_value = ep.port
            lb.health_status = _HEALTH[ep.health]
            lb.load_balancing_weight.value = max(ep.weight, 1)
            mtls.mark_endpoint(snapshot, ep, lb.metadata)  # auto mTLS: `tlsMode: istio`
            if networks.GATEWAY_LABEL in ep.labels:  # another network: only over mTLS
                lb.metadata.filter_metadata[mtls.SOCKET_MATCH].update({mtls.TLS_MODE: mtls.ISTIO})
            total += max(ep.weight, 1)
        group.load_balancing_weight.value = total
    if client is not None:
        locality_lb.apply(cla, policy, client)
    _compact_priorities(cla)
    return cla


def _compact_priorities(cla: endpoint_pb2.ClusterLoadAssignment) -> None:
    """Envoy wants priorities without gaps (0, 1, 2…), whatever produced them."""
    used = sorted({group.priority for group in cla.endpoints})
    dense = {priority: index for index, priority in enumerate(used)}
    for group in cla.endpoints:
        group.priority = dense[group.priority]


ClientShape = tuple[Locality | None, frozenset[tuple[str, str]] | None]
"""What of a client shapes its assignment for one cluster: its locality (locality-aware
balancing) and its values of the failoverPriority labels; None where the policy ignores them.
Part of the EDS cache key, so proxies that differ in them never share a shaped result."""


def client_shape(snapshot: Snapshot, name: str, proxy: Proxy) -> ClientShape:
    parsed = ClusterName.parse(name)
    if parsed is None or parsed.direction != OUTBOUND:
        return None, None
    policy = traffic_policy(snapshot, parsed.host, parsed.port, parsed.subset, proxy.namespace,
                            proxy.labels)
    locality = proxy.locality if locality_lb.uses_locality(policy) else None
    rules = locality_lb.failover_priority(policy)
    if not rules:
        return locality, None
    where = locality_lb.topology_labels(proxy.labels, proxy.network, proxy.cluster_id,
                                        proxy.locality)
    keys = {rule.partition("=")[0] for rule in rules}
    return locality, frozenset((k, v) for k, v in where.items() if k in keys)
