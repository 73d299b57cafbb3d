"""CDS: one outbound cluster per service port and subset, one inbound cluster per served port.

Outbound clusters are the same for every sidecar, so they are built once per snapshot and
shared; only the inbound ones depend on the proxy. DestinationRule policies are applied by
`cluster_policies`.
"""

from __future__ import annotations

import logging

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from meshpilot.envoy import cluster_policies, ext_authz, metadata, mtls, names, passthrough
from meshpilot.envoy.endpoints import load_assignment
from meshpilot.envoy.protos import ads_source, duration
from meshpilot.envoy.scope import ALLOW_ANY, Scope, destination_rule_for
from meshpilot.envoy.targets import inbound_ports
from meshpilot.model import Port, Protocol, Proxy, Resolution, Service
from meshpilot.model.snapshot import Snapshot

log = logging.getLogger("meshpilot.envoy")

CONNECT_TIMEOUT = duration(10)


def outbound_clusters(snapshot: Snapshot, scope: Scope) -> list[cluster_pb2.Cluster]:
    out = []
    # ext_authz providers are called from the inbound side, whatever the Sidecar egress says.
    authorizers = ext_authz.provider_targets(snapshot)
    for host in sorted(snapshot.services):
        svc = snapshot.services[host]
        dr = destination_rule_for(snapshot, host, scope.namespace, scope.labels)
        subsets = [""] + [str(s["name"]) for s in (dr.spec.get("subsets") or () if dr else ())]
        for port in svc.ports:
            if not scope.visible(svc, port.number) and (host, port.number) not in authorizers:
                continue
            for subset in subsets:
                out.append(_outbound(snapshot, svc, port, subset, scope))
    if scope.outbound_policy == ALLOW_ANY:
        out.append(passthrough.cluster())
    return out


def sni_dnat_clusters(
    snapshot: Snapshot, scope: Scope, hosts: list[str]
) -> list[cluster_pb2.Cluster]:
    """An east-west gateway's clusters for AUTO_PASSTHROUGH: the outbound clusters of `hosts`,
    named by their mTLS SNI and without TLS of their own — the client's mTLS session passes
    through to the endpoint's sidecar unopened. Endpoints come from the same EDS resource."""
    out = []
    for host in hosts:
        svc = snapshot.services[host]
        dr = destination_rule_for(snapshot, host, scope.namespace, scope.labels)
        subsets = [""] + [str(s["name"]) for s in (dr.spec.get("subsets") or () if dr else ())]
        for port in svc.ports:
            for subset in subsets:
                cluster = _outbound(snapshot, svc, port, subset, scope)
                cluster.name = names.sni_dnat_cluster(host, port.number, subset)
                cluster.ClearField("transport_socket")
                cluster.ClearField("transport_socket_matches")
                out.append(cluster)
    return out


def inbound_clusters(snapshot: Snapshot, proxy: Proxy) -> list[cluster_pb2.Cluster]:
    out: dict[int, cluster_pb2.Cluster] = {}
    for inbound in inbound_ports(snapshot, proxy):
        out.setdefault(inbound.port, _inbound(inbound.port, inbound.protocol, inbound.app))
    return [out[p] for p in sorted(out)]


def static_clusters() -> list[cluster_pb2.Cluster]:
    blackhole = cluster_pb2.Cluster(name=names.BLACKHOLE_CLUSTER, connect_timeout=CONNECT_TIMEOUT)
    blackhole.type = cluster_pb2.Cluster.STATIC
    return [blackhole]


def _outbound(
    snapshot: Snapshot, svc: Service, port: Port, subset: str, scope: Scope
) -> cluster_pb2.Cluster:
    """One outbound cluster. Resolution NONE is served from endpoints like STATIC: without
    traffic capture there is no original destination to pass through to."""
    name = names.outbound_cluster(svc.hostname, port.number, subset)
    cluster = cluster_pb2.Cluster(name=name, connect_timeout=CONNECT_TIMEOUT)
    if svc.resolution in (Resolution.DNS, Resolution.DNS_ROUND_ROBIN):
        cluster.type = (
            cluster_pb2.Cluster.STRICT_DNS
            if svc.resolution == Resolution.DNS
            else cluster_pb2.Cluster.LOGICAL_DNS
        )
        # As Istio for IPv4 proxies (and as the passthrough's DNS cache): Envoy's default AUTO
        # prefers IPv6, so a name like `localhost` would resolve to ::1 where nothing listens.
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
        cluster.load_assignment.CopyFrom(_dns_assignment(snapshot, name, svc, port, scope))
    else:
        cluster.type = cluster_pb2.Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(ads_source())
        cluster.eds_cluster_config.service_name = name
    policy = cluster_policies.traffic_policy(
        snapshot, svc.hostname, port.number, subset, scope.namespace, scope.labels
    )
    cluster_policies.apply(cluster, policy, port.protocol)
    # ISTIO_MUTUAL and auto mTLS: the mesh's own transport (mtls.py).
    mtls.apply_upstream(cluster, snapshot, svc.hostname, port.number, subset, policy)
    rule = destination_rule_for(snapshot, svc.hostname, scope.namespace, scope.labels)
    metadata.mark_cluster(cluster, svc, rule, subset)
    return cluster


def _dns_assignment(
    snapshot: Snapshot, name: str, svc: Service, port: Port, scope: Scope
) -> endpoint_pb2.ClusterLoadAssignment:
    """DNS clusters carry their hostnames inline: the endpoints' (for a subset, the matching
    ones), or with no endpoints the service host itself."""
    cla = load_assignment(snapshot, name, scope.namespace, labels=scope.labels)
    if not cla.endpoints:
        lb = cla.endpoints.add().lb_endpoints.add()
        lb.endpoint.address.socket_address.address = svc.hostname
        lb.endpoint.address.socket_address.port_value = port.target_port or port.number
    return cla


def _inbound(port: int, protocol: Protocol, target: tuple[str, int]) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=names.inbound_cluster(port), connect_timeout=CONNECT_TIMEOUT
    )
    cluster.type = cluster_pb2.Cluster.STATIC
    cla = cluster.load_assignment
    cla.cluster_name = cluster.name
    lb = cla.endpoints.add().lb_endpoints.add()
    lb.endpoint.address.socket_address.address = target[0]
    lb.endpoint.address.socket_address.port_value = target[1]
    cluster_policies.apply(cluster, {}, protocol)
    return cluster
