"""CDS: one outbound cluster per service port and subset, one inbound cluster per served port.

Outbound clusters are the same for every sidecar, so they are built once per snapshot and
shared; only the inbound ones depend on the proxy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from meshpilot.envoy import names
from meshpilot.envoy.protos import ads_source, duration, pack
from meshpilot.envoy.targets import service_targets
from meshpilot.model import Port, Protocol, Proxy, Resolution, Service
from meshpilot.model.snapshot import Snapshot

log = logging.getLogger("meshpilot.envoy")

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
CONNECT_TIMEOUT = duration(10)

_LB_POLICIES = {
    "ROUND_ROBIN": cluster_pb2.Cluster.ROUND_ROBIN,
    "LEAST_CONN": cluster_pb2.Cluster.LEAST_REQUEST,
    "LEAST_REQUEST": cluster_pb2.Cluster.LEAST_REQUEST,
    "RANDOM": cluster_pb2.Cluster.RANDOM,
    "UNSPECIFIED": cluster_pb2.Cluster.ROUND_ROBIN,
}


def outbound_clusters(snapshot: Snapshot) -> list[cluster_pb2.Cluster]:
    out = []
    for host in sorted(snapshot.services):
        svc = snapshot.services[host]
        dr = snapshot.destination_rule_for(host)
        dr_spec: Mapping[str, Any] = dr.spec if dr else {}
        for port in svc.ports:
            out.append(_outbound(svc, port, "", _policy(dr_spec, port.number)))
            for subset in dr_spec.get("subsets") or ():
                policy = _merge_policy(_policy(dr_spec, port.number), subset, port.number)
                out.append(_outbound(svc, port, str(subset["name"]), policy))
    return out


def inbound_clusters(snapshot: Snapshot, proxy: Proxy) -> list[cluster_pb2.Cluster]:
    out: dict[int, cluster_pb2.Cluster] = {}
    for ep in service_targets(snapshot, proxy):
        if ep.port in out:
            continue
        svc = snapshot.services[ep.hostname]
        port = svc.port(ep.service_port)
        assert port is not None
        out[ep.port] = _inbound(ep.port, port.protocol, app_address(proxy, ep.port))
    return [out[p] for p in sorted(out)]


def static_clusters() -> list[cluster_pb2.Cluster]:
    blackhole = cluster_pb2.Cluster(name=names.BLACKHOLE_CLUSTER, connect_timeout=CONNECT_TIMEOUT)
    blackhole.type = cluster_pb2.Cluster.STATIC
    return [blackhole]


def app_address(proxy: Proxy, port: int) -> tuple[str, int]:
    """Where the application listens behind the inbound listener on `port`."""
    if proxy.app_address:
        host, _, app_port = proxy.app_address.rpartition(":")
        return host, int(app_port)
    return "127.0.0.1", port


def _policy(dr_spec: Mapping[str, Any], port: int) -> Mapping[str, Any]:
    policy: Mapping[str, Any] = dr_spec.get("trafficPolicy") or {}
    for level in policy.get("portLevelSettings") or ():
        if (level.get("port") or {}).get("number") == port:
            return {**policy, **level}
    return policy


def _merge_policy(
    base: Mapping[str, Any], subset: Mapping[str, Any], port: int
) -> Mapping[str, Any]:
    own = _policy(subset, port)
    return {**base, **own} if own else base


def _outbound(
    svc: Service, port: Port, subset: str, policy: Mapping[str, Any]
) -> cluster_pb2.Cluster:
    name = names.outbound_cluster(svc.hostname, port.number, subset)
    cluster = cluster_pb2.Cluster(name=name, connect_timeout=CONNECT_TIMEOUT)
    if svc.resolution in (Resolution.DNS, Resolution.DNS_ROUND_ROBIN):
        cluster.type = (
            cluster_pb2.Cluster.STRICT_DNS
            if svc.resolution == Resolution.DNS
            else cluster_pb2.Cluster.LOGICAL_DNS
        )
        cluster.load_assignment.CopyFrom(_dns_assignment(name, svc, port))
    elif svc.resolution == Resolution.NONE and not port.protocol.is_http:
        cluster.type = cluster_pb2.Cluster.ORIGINAL_DST
        cluster.lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED
    else:
        cluster.type = cluster_pb2.Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(ads_source())
        cluster.eds_cluster_config.service_name = name
    simple = str((policy.get("loadBalancer") or {}).get("simple", "")).upper()
    if simple in _LB_POLICIES and cluster.type != cluster_pb2.Cluster.ORIGINAL_DST:
        cluster.lb_policy = _LB_POLICIES[simple]
    if port.protocol in (Protocol.HTTP2, Protocol.GRPC):
        _use_http2(cluster)
    return cluster


def _dns_assignment(name: str, svc: Service, port: Port) -> endpoint_pb2.ClusterLoadAssignment:
    """DNS clusters carry their hostnames inline; with no endpoints, the service host itself."""
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    group = cla.endpoints.add()
    lb = group.lb_endpoints.add()
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
    if protocol in (Protocol.HTTP2, Protocol.GRPC):
        _use_http2(cluster)
    return cluster


def _use_http2(cluster: cluster_pb2.Cluster) -> None:
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.explicit_http_config.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
    cluster.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(pack(options))
