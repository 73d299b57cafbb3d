"""DestinationRule traffic policy → Envoy cluster settings.

The policy for a cluster is Istio's merge: the rule's top-level `trafficPolicy`, overridden by
its `portLevelSettings` entry for the port, then by the subset's own policy (and the subset's
port-level entry). Each section then maps onto the cluster: `loadBalancer` (including
consistent hashing; the route side lives in route_policies), `connectionPool` (circuit
breakers, timeouts, HTTP options), `outlierDetection` and `tls` (certificates from files;
ISTIO_MUTUAL and auto mTLS are mtls.py's).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from meshpilot.envoy import locality_lb
from meshpilot.envoy.protos import pack, parse_duration
from meshpilot.envoy.scope import destination_rule_for
from meshpilot.model import Protocol
from meshpilot.model.snapshot import Snapshot

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS_SOCKET = "envoy.transport_sockets.tls"
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
UNLIMITED = 4294967295
"""Istio lifts Envoy's default circuit-breaker limits (1024) unless a policy sets them."""

_LB_POLICIES = {
    "ROUND_ROBIN": cluster_pb2.Cluster.ROUND_ROBIN,
    "LEAST_CONN": cluster_pb2.Cluster.LEAST_REQUEST,
    "LEAST_REQUEST": cluster_pb2.Cluster.LEAST_REQUEST,
    "RANDOM": cluster_pb2.Cluster.RANDOM,
    "UNSPECIFIED": cluster_pb2.Cluster.LEAST_REQUEST,
}

Policy = Mapping[str, Any]


PORT_LEVEL_FIELDS = ("loadBalancer", "connectionPool", "outlierDetection", "tls")


def _port_level(policy: Policy, port: int) -> Policy:
    """A port-level entry replaces these four sections outright (Istio does not inherit the
    top-level ones into it: what it leaves out takes the defaults)."""
    for level in policy.get("portLevelSettings") or ():
        if (level.get("port") or {}).get("number") == port:
            kept = {k: v for k, v in policy.items() if k not in PORT_LEVEL_FIELDS}
            return {**kept, **{k: level[k] for k in PORT_LEVEL_FIELDS if k in level}}
    return policy


def traffic_policy(
    snapshot: Snapshot,
    host: str,
    port: int,
    subset: str = "",
    namespace: str = "",
    labels: Mapping[str, str] | None = None,
) -> Policy:
    """The merged traffic policy that applies to one cluster, for clients in `namespace`
    (with `labels`, which matter to DestinationRules with a workloadSelector)."""
    rule = destination_rule_for(snapshot, host, namespace, labels)
    if rule is None:
        return {}
    policy = _port_level(rule.spec.get("trafficPolicy") or {}, port)
    if subset:
        for entry in rule.spec.get("subsets") or ():
            if entry.get("name") == subset and entry.get("trafficPolicy"):
                own = _port_level(entry["trafficPolicy"], port)
                policy = {**policy, **own}
    return policy


def load_balancer(
    snapshot: Snapshot,
    host: str,
    port: int,
    subset: str = "",
    namespace: str = "",
    labels: Mapping[str, str] | None = None,
) -> Policy:
    policy = traffic_policy(snapshot, host, port, subset, namespace, labels)
    lb: Policy = policy.get("loadBalancer") or {}
    return lb


def apply(cluster: cluster_pb2.Cluster, policy: Policy, protocol: Protocol) -> None:
    """Apply a merged policy to an outbound cluster (EDS, DNS or static)."""
    _load_balancer(cluster, policy.get("loadBalancer") or {})
    if locality_lb.needs_locality_weights(policy):
        cluster.common_lb_config.locality_weighted_lb_config.SetInParent()
    _circuit_breakers(cluster, (policy.get("connectionPool") or {}))
    _http_options(cluster, policy.get("connectionPool") or {}, protocol)
    if "outlierDetection" in policy:
        _outlier_detection(cluster, policy["outlierDetection"] or {})
    if "tls" in policy:
        _tls(cluster, policy["tls"] or {})


def _load_balancer(cluster: cluster_pb2.Cluster, lb: Policy) -> None:
    if cluster.type == cluster_pb2.Cluster.ORIGINAL_DST:
        return  # the original destination decides; no policy applies
    hashing: Policy | None = lb.get("consistentHash")
    if hashing is not None:
        if "maglev" in hashing:
            cluster.lb_policy = cluster_pb2.Cluster.MAGLEV
            size = (hashing["maglev"] or {}).get("tableSize")
            if size:
                cluster.maglev_lb_config.table_size.value = int(size)
        else:
            cluster.lb_policy = cluster_pb2.Cluster.RING_HASH
            size = (hashing.get("ringHash") or {}).get("minimumRingSize") or hashing.get(
                "minimumRingSize"
            )
            if size:
                cluster.ring_hash_lb_config.minimum_ring_size.value = int(size)
        return
    # Istio's default is LEAST_REQUEST, not Envoy's ROUND_ROBIN.
    simple = str(lb.get("simple") or "LEAST_REQUEST").upper()
    if simple in _LB_POLICIES:
        cluster.lb_policy = _LB_POLICIES[simple]


def _circuit_breakers(cluster: cluster_pb2.Cluster, pool: Policy) -> None:
    tcp: Policy = pool.get("tcp") or {}
    http: Policy = pool.get("http") or {}
    limits = cluster.circuit_breakers.thresholds.add()
    limits.max_connections.value = int(tcp.get("maxConnections") or UNLIMITED)
    limits.max_pending_requests.value = int(http.get("http1MaxPendingRequests") or UNLIMITED)
    limits.max_requests.value = int(http.get("http2MaxRequests") or UNLIMITED)
    limits.max_retries.value = int(http.get("maxRetries") or UNLIMITED)
    limits.track_remaining = True
    if "connectTimeout" in tcp:
        cluster.connect_timeout.CopyFrom(parse_duration(str(tcp["connectTimeout"])))
    keepalive: Policy | None = tcp.get("tcpKeepalive")
    if keepalive is not None:
        options = cluster.upstream_connection_options.tcp_keepalive
        if "probes" in keepalive:
            options.keepalive_probes.value = int(keepalive["probes"])
        if "time" in keepalive:
            options.keepalive_time.value = parse_duration(str(keepalive["time"])).seconds
        if "interval" in keepalive:
            options.keepalive_interval.value = parse_duration(str(keepalive["interval"])).seconds


def _http_options(cluster: cluster_pb2.Cluster, pool: Policy, protocol: Protocol) -> None:
    """One HttpProtocolOptions per cluster: the upstream protocol plus pool settings."""
    http: Policy = pool.get("http") or {}
    tcp: Policy = pool.get("tcp") or {}
    upgrade = str(http.get("h2UpgradePolicy", "")).upper() == "UPGRADE"
    http2 = protocol in (Protocol.HTTP2, Protocol.GRPC) or (protocol == Protocol.HTTP and upgrade)
    common = "idleTimeout" in http or "maxRequestsPerConnection" in http \
        or "maxConnectionDuration" in tcp
    if not (http2 or common):
        return
    options = http_protocol_options_pb2.HttpProtocolOptions()
    if http2:
        h2 = protocol_pb2.Http2ProtocolOptions()
        if "maxConcurrentStreams" in http:
            h2.max_concurrent_streams.value = int(http["maxConcurrentStreams"])
        options.explicit_http_config.http2_protocol_options.CopyFrom(h2)
    else:
        options.explicit_http_config.http_protocol_options.SetInParent()
    if "idleTimeout" in http:
        options.common_http_protocol_options.idle_timeout.CopyFrom(
            parse_duration(str(http["idleTimeout"]))
        )
    if "maxRequestsPerConnection" in http:
        options.common_http_protocol_options.max_requests_per_connection.value = int(
            http["maxRequestsPerConnection"]
        )
    if "maxConnectionDuration" in tcp:
        options.common_http_protocol_options.max_connection_duration.CopyFrom(
            parse_duration(str(tcp["maxConnectionDuration"]))
        )
    cluster.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(pack(options))


def _outlier_detection(cluster: cluster_pb2.Cluster, spec: Policy) -> None:
    detection = cluster.outlier_detection
    # Istio enforces only what the rule asks for: Envoy's own default (5 consecutive 5xx,
    # enforced) is switched off unless consecutive5xxErrors is set.
    five_xx = spec.get("consecutive5xxErrors", spec.get("consecutiveErrors"))
    if five_xx is not None:
        detection.consecutive_5xx.value = int(five_xx)
        detection.enforcing_consecutive_5xx.value = 100
    else:
        detection.enforcing_consecutive_5xx.value = 0
    if "consecutiveGatewayErrors" in spec:
        detection.consecutive_gateway_failure.value = int(spec["consecutiveGatewayErrors"])
        detection.enforcing_consecutive_gateway_failure.value = 100
    if spec.get("splitExternalLocalOriginErrors"):
        detection.split_external_local_origin_errors = True
        if "consecutiveLocalOriginFailures" in spec:
            detection.consecutive_local_origin_failure.value = int(
                spec["consecutiveLocalOriginFailures"]
            )
            detection.enforcing_consecutive_local_origin_failure.value = 100
    if "interval" in spec:
        detection.interval.CopyFrom(parse_duration(str(spec["interval"])))
    if "baseEjectionTime" in spec:
        detection.base_ejection_time.CopyFrom(parse_duration(str(spec["baseEjectionTime"])))
    if "maxEjectionPercent" in spec:
        detection.max_ejection_percent.value = int(spec["maxEjectionPercent"])
    if "minHealthPercent" in spec:
        cluster.common_lb_config.healthy_panic_threshold.value = float(spec["minHealthPercent"])


def _tls(cluster: cluster_pb2.Cluster, spec: Policy) -> None:
    mode = str(spec.get("mode", "DISABLE")).upper()
    if mode == "DISABLE":
        return
    if mode == "ISTIO_MUTUAL":
        return  # the mesh's own certificates, over SDS: mtls.apply_upstream
    context = tls_pb2.UpstreamTlsContext()
    common = context.common_tls_context
    if spec.get("sni"):
        context.sni = str(spec["sni"])
    if mode == "MUTUAL":
        certificate = common.tls_certificates.add()
        certificate.certificate_chain.filename = str(spec["clientCertificate"])
        certificate.private_key.filename = str(spec["privateKey"])
    if spec.get("caCertificates"):
        common.validation_context.trusted_ca.filename = str(spec["caCertificates"])
    elif not spec.get("insecureSkipVerify") and Path(SYSTEM_CA_BUNDLE).exists():
        # As Istio (VERIFY_CERTIFICATE_AT_CLIENT): without a CA, verify against the system's.
        common.validation_context.trusted_ca.filename = SYSTEM_CA_BUNDLE
    for name in spec.get("subjectAltNames") or ():
        san = common.validation_context.match_typed_subject_alt_names.add()
        san.san_type = common_pb2.SubjectAltNameMatcher.DNS
        san.matcher.exact = str(name)
    if spec.get("insecureSkipVerify"):
        common.ClearField("validation_context")
    cluster.transport_socket.name = TLS_SOCKET
    cluster.transport_socket.typed_config.CopyFrom(pack(context))
