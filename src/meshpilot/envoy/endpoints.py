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
from meshpilot.model import Endpoint, HealthStatus, Locality
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
    # Groups by locality, and apart for another network's gateways: those come after local
    # endpoints (a lower priority), so a service present here is served here first.
    by_locality: dict[tuple[Locality, bool], list[Endpoint]] = {}
    for ep in endpoints:
        by_locality.setdefault((ep.locality, networks.GATEWAY_LABEL in ep.labels), []).append(ep)
    has_local = any(not remote for _, remote in by_locality)
    for locality, remote in sorted(by_locality, key=lambda k: (k[1], str(k[0]))):
        group = cla.endpoints.add()
        group.priority = 1 if remote and has_local else 0
        group.locality.region = locality.region
        group.locality.zone = locality.zone
        group.locality.sub_zone = locality.subzone
        total = 0
        for ep in by_locality[(locality, remote)]:
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
        policy = traffic_policy(
            snapshot, parsed.host, parsed.port, parsed.subset, namespace, labels
        )
        locality_lb.apply(cla, policy, client)
    return cla


def client_locality(
    snapshot: Snapshot,
    name: str,
    namespace: str,
    client: Locality,
    labels: Mapping[str, str] | None = None,
) -> Locality | None:
    """The client's locality when its assignment for `name` depends on it, else None: the
    part of the EDS cache key that keeps proxies elsewhere from sharing a shaped result."""
    parsed = ClusterName.parse(name)
    if parsed is None or parsed.direction != OUTBOUND:
        return None
    policy = traffic_policy(snapshot, parsed.host, parsed.port, parsed.subset, namespace, labels)
    return client if locality_lb.uses_locality(policy) else None
