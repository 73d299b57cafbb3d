"""Proxyless gRPC: the xDS resources a gRPC client with an `xds:///host:port` target gets.

A gRPC channel speaks xDS itself (gRFC A27) and asks for exactly what it needs, by name:

    LDS  reviews.default.svc.cluster.local:9080           the target's authority, as written
         └─ an API listener: HttpConnectionManager without an address, routes over RDS
    RDS  outbound|9080||reviews.default.svc.cluster.local  one virtual host for the service
         └─ the service's routes, as a sidecar would route them
    CDS  outbound|9080|v1|reviews.default.svc.cluster.local  each cluster a route names
    EDS  the same names, shared with sidecars (with the locality weights gRPC requires)

Nothing here translates Istio config a second time. The Envoy translation of the same proxy is
the source: the routes come from the virtual host a sidecar in the client's place would get
(so VirtualService matching, weights, Sidecar scoping and exportTo are decided in one place,
routes.py), the clusters from its CDS, and a target resolves only to a service whose outbound
cluster that sidecar would see.

gRPC implements a subset of Envoy and rejects (NACKs) a whole resource that carries a required
piece it does not know: an unknown HTTP filter or per-route filter config, a cluster type other
than EDS or LOGICAL_DNS, an LB policy other than ROUND_ROBIN or RING_HASH, TLS without
certificate providers, a retry count of zero. So no Envoy resource is passed on as it is: each
is rebuilt from only the fields gRPC implements (gRFC A28 routing, A31 timeouts, A32 circuit
breaking, A33 fault injection, A42 ring hash, A44 retries). Anything an Istio user wrote that
gRPC cannot apply is reported once as a warning naming the Istio field, never dropped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from meshpilot.envoy import names
from meshpilot.envoy.protos import ads_source, pack
from meshpilot.envoy.routes import domains_for
from meshpilot.model import Service

log = logging.getLogger("meshpilot.envoy")

GENERATOR = "grpc"
"""Node metadata `GENERATOR` of proxyless gRPC clients (Istio's convention)."""

FAULT_FILTER = "envoy.filters.http.fault"
ROUTER_FILTER = "envoy.filters.http.router"
GRPC_FILTERS = frozenset({FAULT_FILTER, ROUTER_FILTER})
"""The HTTP filters gRPC clients are sent. The fault filter is inert until a route configures
it through `typed_per_filter_config`, which is how VirtualService `fault` reaches gRPC."""

GRPC_RETRY_ON = frozenset(
    {"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}
)
"""The `retry_on` conditions gRPC understands (A44): gRPC status codes only."""

MAX_RING_SIZE = 8_388_608
"""gRPC's upper bound for ring hash sizes; larger values are NACKed."""

TargetIndex = Mapping[str, tuple[str, int]]
"""Target authority (`host:port`, or `host` for a single-port service) → (hostname, port)."""


# Targets and listeners ---------------------------------------------------------------------


def target_index(services: Iterable[Service], namespace: str) -> dict[str, tuple[str, int]]:
    """Every authority a client in `namespace` may put in `xds:///…` for each service port.

    The same names a sidecar answers to in Host (routes.domains_for): the hostname, its shorter
    Kubernetes forms, the bare name from the same namespace, and the service's VIPs, each with
    `:port`. Without a port the name resolves only when the service has a single port, since
    gRPC does not add a default port to xDS targets.
    """
    index: dict[str, tuple[str, int]] = {}
    for svc in sorted(services, key=lambda s: s.hostname):
        for port in svc.ports:
            for domain in domains_for(svc, port.number, namespace):
                if domain.endswith(f":{port.number}") or len(svc.ports) == 1:
                    index.setdefault(domain.lower(), (svc.hostname, port.number))
    return index


def route_name(host: str, port: int) -> str:
    """The RDS name an API listener points at: the default cluster's name, as Istio does."""
    return names.outbound_cluster(host, port)


def api_listener(name: str, host: str, port: int) -> listener_pb2.Listener:
    """The listener for target `name`: no address or filter chains, only an API listener whose
    HttpConnectionManager fetches the service's routes over ADS."""
    manager = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    manager.rds.route_config_name = route_name(host, port)
    manager.rds.config_source.CopyFrom(ads_source())
    # gRPC requires the router to be the last filter; each filter must be one it implements.
    manager.http_filters.add(name=FAULT_FILTER).typed_config.CopyFrom(pack(fault_pb2.HTTPFault()))
    manager.http_filters.add(name=ROUTER_FILTER).typed_config.CopyFrom(pack(router_pb2.Router()))
    listener = listener_pb2.Listener(name=name)
    listener.api_listener.api_listener.CopyFrom(pack(manager))
    return listener


# Routes ------------------------------------------------------------------------------------


def virtual_hosts_by_domain(
    config: route_pb2.RouteConfiguration,
) -> dict[str, route_pb2.VirtualHost]:
    """The virtual hosts of a sidecar route configuration by domain. A service's hostname is
    one of the domains of its own virtual host, so this finds the routes a sidecar applies to
    it; the first virtual host claiming a domain wins, as in Envoy."""
    index: dict[str, route_pb2.VirtualHost] = {}
    for vhost in config.virtual_hosts:
        for domain in vhost.domains:
            index.setdefault(domain, vhost)
    return index


def route_config(
    name: str, routes: Iterable[rc.Route], where: str
) -> route_pb2.RouteConfiguration:
    """A configuration with one virtual host for the service behind `name`.

    It matches every authority (`*`): the configuration belongs to one service, and each of the
    service's target names reaches it through its own listener.
    """
    config = route_pb2.RouteConfiguration(name=name)
    vhost = config.virtual_hosts.add(name=name, domains=["*"])
    for route in routes:
        converted = grpc_route(route, where)
        if converted is not None:
            vhost.routes.append(converted)
    return config


def grpc_route(route: rc.Route, where: str) -> rc.Route | None:
    """The part of a sidecar route gRPC implements, or None for a route gRPC cannot match."""
    context = f"{where} route {route.name or '(unnamed)'}"
    if route.match.query_parameters:
        # gRPC skips such routes itself; skipping them here says so.
        _unsupported(context, "match.queryParams", "gRPC requests have no query string; the "
                     "route is left out for gRPC clients")
        return None
    if route.match.WhichOneof("path_specifier") not in ("prefix", "path", "safe_regex"):
        _unsupported(context, "match.uri", "gRPC matches paths by prefix, exact or regex only")
        return None
    out = rc.Route(name=route.name)
    out.match.CopyFrom(route.match)
    action = route.WhichOneof("action")
    if action == "route":
        converted = _route_action(route.route, context)
        if converted is None:
            return None
        out.route.CopyFrom(converted)
    elif action == "redirect":
        _unsupported(context, "redirect", "gRPC fails calls matching it with UNAVAILABLE")
        out.redirect.CopyFrom(route.redirect)
    elif action == "direct_response":
        _unsupported(context, "directResponse", "gRPC fails calls matching it with UNAVAILABLE")
        out.direct_response.CopyFrom(route.direct_response)
    else:
        return None
    _copy_filter_configs(route.typed_per_filter_config, out.typed_per_filter_config, context)
    if _has_header_ops(route):
        _unsupported(context, "headers", "gRPC does not rewrite metadata")
    return out


def _route_action(action: rc.RouteAction, context: str) -> rc.RouteAction | None:
    out = rc.RouteAction()
    target = action.WhichOneof("cluster_specifier")
    if target == "cluster":
        out.cluster = action.cluster
    elif target == "weighted_clusters":
        for weighted in action.weighted_clusters.clusters:
            # gRPC rejects an entry without a weight and skips zero weights (A28).
            if weighted.weight.value == 0:
                continue
            entry = out.weighted_clusters.clusters.add(name=weighted.name)
            entry.weight.value = weighted.weight.value
            _copy_filter_configs(
                weighted.typed_per_filter_config, entry.typed_per_filter_config, context
            )
            if _has_header_ops(weighted):
                _unsupported(context, "route.headers", "gRPC does not rewrite metadata")
        if not out.weighted_clusters.clusters:
            return None
    else:
        return None
    # A31: gRPC takes the route's deadline from max_stream_duration; it ignores `timeout`.
    # Zero means no limit in both, so only a set timeout is carried over.
    if action.HasField("timeout") and (action.timeout.seconds or action.timeout.nanos):
        out.max_stream_duration.max_stream_duration.CopyFrom(action.timeout)
    if action.HasField("retry_policy"):
        _retry_policy(action.retry_policy, out, context)
    for policy in action.hash_policy:
        # A42: gRPC hashes on headers (and its own channel id); others it ignores.
        if policy.WhichOneof("policy_specifier") == "header":
            out.hash_policy.append(policy)
        else:
            field = policy.WhichOneof("policy_specifier") or "policy"
            _unsupported(context, f"consistentHash ({field})", "gRPC hashes on headers only")
    if action.prefix_rewrite or action.HasField("regex_rewrite") \
            or action.WhichOneof("host_rewrite_specifier"):
        _unsupported(context, "rewrite", "gRPC does not rewrite paths or authorities")
    if action.request_mirror_policies:
        _unsupported(context, "mirror", "gRPC does not mirror calls")
    return out


def _retry_policy(policy: rc.RetryPolicy, out: rc.RouteAction, context: str) -> None:
    """A44: gRPC retries on gRPC status codes; it NACKs `num_retries: 0`."""
    conditions = [c.strip() for c in policy.retry_on.split(",")]
    codes = [c for c in conditions if c in GRPC_RETRY_ON]
    retries = policy.num_retries.value if policy.HasField("num_retries") else 1
    if policy.HasField("per_try_timeout"):
        _unsupported(context, "retries.perTryTimeout", "gRPC has no per-attempt timeout")
    if policy.HasField("retry_priority"):
        _unsupported(context, "retries.retryRemoteLocalities",
                     "gRPC picks retry hosts by its LB policy")
    if not codes or retries == 0:
        return
    out.retry_policy.retry_on = ",".join(codes)
    out.retry_policy.num_retries.value = retries
    backoff = policy.retry_back_off
    if policy.HasField("retry_back_off") and backoff.HasField("base_interval"):
        out.retry_policy.retry_back_off.CopyFrom(backoff)


def _copy_filter_configs(source: Any, target: Any, context: str) -> None:
    """Per-route filter configs (protobuf maps of name → Any) gRPC knows: the fault filter's.
    Anything else would make gRPC NACK the whole route configuration."""
    for name, config in source.items():
        if name == FAULT_FILTER:
            target[name].CopyFrom(config)
        else:
            field = "corsPolicy" if name == "envoy.filters.http.cors" else name
            _unsupported(context, field, "gRPC does not implement this HTTP filter")


def _has_header_ops(entry: rc.Route | rc.WeightedCluster.ClusterWeight) -> bool:
    return bool(
        entry.request_headers_to_add
        or entry.request_headers_to_remove
        or entry.response_headers_to_add
        or entry.response_headers_to_remove
    )


# Clusters ----------------------------------------------------------------------------------


def grpc_cluster(cluster: cluster_pb2.Cluster) -> cluster_pb2.Cluster | None:
    """The part of a sidecar's outbound cluster gRPC implements, or None when gRPC cannot use
    the cluster at all (static, original-destination and extension cluster types)."""
    if cluster.WhichOneof("cluster_discovery_type") != "type":
        return None
    out = cluster_pb2.Cluster(name=cluster.name)
    context = f"cluster {cluster.name}"
    if cluster.type == cluster_pb2.Cluster.EDS:
        out.type = cluster_pb2.Cluster.EDS
        out.eds_cluster_config.CopyFrom(cluster.eds_cluster_config)
    elif cluster.type in (cluster_pb2.Cluster.STRICT_DNS, cluster_pb2.Cluster.LOGICAL_DNS):
        # gRPC resolves one DNS name per cluster (LOGICAL_DNS with exactly one endpoint).
        hosts = [lb for group in cluster.load_assignment.endpoints for lb in group.lb_endpoints]
        if not hosts:
            return None
        if len(hosts) > 1:
            _unsupported(context, "endpoints", "gRPC resolves only the first DNS endpoint")
        out.type = cluster_pb2.Cluster.LOGICAL_DNS
        assignment = out.load_assignment
        assignment.cluster_name = cluster.name
        endpoint = assignment.endpoints.add().lb_endpoints.add().endpoint
        endpoint.address.CopyFrom(hosts[0].endpoint.address)
    else:
        return None
    _lb_policy(cluster, out, context)
    for limits in cluster.circuit_breakers.thresholds:
        # A32: gRPC reads max_requests of the DEFAULT priority only.
        if limits.priority == 0 and limits.HasField("max_requests"):
            out.circuit_breakers.thresholds.add().max_requests.CopyFrom(limits.max_requests)
            break
    if cluster.HasField("outlier_detection"):
        _unsupported(context, "trafficPolicy.outlierDetection",
                     "gRPC ejects by success rate and failure percentage, not consecutive errors")
    if cluster.HasField("transport_socket"):
        _unsupported(context, "trafficPolicy.tls",
                     "gRPC takes TLS from xDS certificate providers, not files")
    return out


def _lb_policy(cluster: cluster_pb2.Cluster, out: cluster_pb2.Cluster, context: str) -> None:
    policy = cluster.lb_policy
    if policy in (cluster_pb2.Cluster.RING_HASH, cluster_pb2.Cluster.MAGLEV):
        if policy == cluster_pb2.Cluster.MAGLEV:
            _unsupported(context, "loadBalancer.consistentHash.maglev",
                         "gRPC has ring hash only; ring hash is used")
        out.lb_policy = cluster_pb2.Cluster.RING_HASH
        ring = cluster.ring_hash_lb_config
        if ring.HasField("minimum_ring_size"):
            size = min(max(ring.minimum_ring_size.value, 1), MAX_RING_SIZE)
            out.ring_hash_lb_config.minimum_ring_size.value = size
        return
    out.lb_policy = cluster_pb2.Cluster.ROUND_ROBIN
    # gRPC's xDS client has no least-request policy. Least request is also Istio's default
    # for Envoy, so it is no sign of a user's choice: round robin, as Istio gives gRPC, and no
    # warning (the README says so). RANDOM, by contrast, someone wrote.
    quiet = (
        cluster_pb2.Cluster.ROUND_ROBIN,
        cluster_pb2.Cluster.LEAST_REQUEST,
        cluster_pb2.Cluster.CLUSTER_PROVIDED,
    )
    if policy not in quiet:
        simple = cluster_pb2.Cluster.LbPolicy.Name(policy)
        _unsupported(context, f"loadBalancer.simple ({simple})",
                     "gRPC balances round robin or by ring hash; round robin is used")


# Reporting ---------------------------------------------------------------------------------

_reported: set[str] = set()
_REPORT_LIMIT = 10_000


def _unsupported(context: str, field: str, why: str) -> None:
    """Warn once per process about an Istio field gRPC clients do not get."""
    message = f"proxyless gRPC clients: {context}: {field} is not applied ({why})"
    if message in _reported:
        return
    if len(_reported) >= _REPORT_LIMIT:
        _reported.clear()  # a bound on memory; the worst case is a repeated warning
    _reported.add(message)
    log.warning("%s", message)
