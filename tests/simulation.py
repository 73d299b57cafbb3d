"""A small evaluator of the Envoy config meshpilot generates, in the spirit of Istio's
pilot/pkg/simulation: "this request, sent by that proxy, ends up there".

    sim = Simulation(snapshot_of(configs), sidecar())
    result = sim.run(Request("127.0.0.1", 9080, "reviews", headers={"end-user": "jason"}))
    assert result.cluster == "outbound|9080|v2|reviews.default.svc.cluster.local"

The simulator asks meshpilot's own generators for the proxy's listeners, clusters, routes and
endpoints, unpacks them, and applies Envoy's documented semantics to them:

* the listener is the one bound exactly to the request's address and port;
* its single network filter is a TCP proxy (the result is its cluster) or an HTTP connection
  manager whose routes come from RDS or are inline, with the router as last HTTP filter and
  before it only filters that leave routing alone (CORS and fault without per-route config,
  the dynamic forward proxy for passthrough clusters);
* the virtual host is chosen by Host: exact domain, then the longest `*suffix` wildcard, then
  the longest `prefix*` wildcard, then `*`, all case-insensitively and with the port as written;
* routes are tried in order and the first whose path, headers and query parameters match wins.

It models only what meshpilot emits. Any field outside that set raises `UnsupportedConfig`
rather than being guessed at, and config Envoy itself would reject (duplicate domains, a route
without an action, headers that may not be modified, ...) raises `RejectedConfig`. A request
Envoy would refuse or answer 404 raises a `NoMatch` subclass.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.clusters.dynamic_forward_proxy.v3 import cluster_pb2 as dfp_cluster_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.dynamic_forward_proxy.v3 import (
    dynamic_forward_proxy_pb2 as dfp_filter_pb2,
)
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf.message import Message

from meshpilot.config.store import MemoryStore
from meshpilot.envoy import names
from meshpilot.envoy.generators import GENERATORS
from meshpilot.model import Config, NodeType, Proxy, PushRequest
from meshpilot.model.snapshot import Snapshot
from meshpilot.registry.serviceentry import ServiceEntryRegistry
from meshpilot.xds.discovery import ROUTING_KINDS

__all__ = [
    "MissingResource",
    "NoListener",
    "NoMatch",
    "NoRoute",
    "NoVirtualHost",
    "Redirect",
    "RejectedConfig",
    "Request",
    "Result",
    "Simulation",
    "SimulationError",
    "UnsupportedConfig",
    "sidecar",
    "snapshot_of",
]

M = TypeVar("M", bound=Message)


# --- Errors ------------------------------------------------------------------------------------


class SimulationError(Exception):
    """Base of everything the simulator raises."""


class UnsupportedConfig(SimulationError):
    """Config the simulator does not model; it refuses to guess what Envoy would do."""


class RejectedConfig(SimulationError):
    """Config Envoy would reject (NACK) or fail to serve."""


class MissingResource(SimulationError):
    """A resource referenced by name (RDS, EDS, CDS) that the generators do not serve."""


class NoMatch(SimulationError):
    """Envoy would refuse the connection or answer with a local 404."""


class NoListener(NoMatch):
    """No listener binds the request's address and port: the connection is refused."""


class NoVirtualHost(NoMatch):
    """No virtual host answers to the Host: Envoy replies 404."""


class NoRoute(NoMatch):
    """A virtual host matched but none of its routes did: Envoy replies 404 (NR)."""


# --- Inputs and outputs ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the application sends it to its sidecar.

    `path` may carry a query string; `query` is appended to it as written (no encoding), which
    is also how Envoy reads query parameters for route matching (no decoding).
    """

    address: str
    port: int
    host: str = ""
    path: str = "/"
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    scheme: str = "http"

    @property
    def full_path(self) -> str:
        """`:path` as Envoy sees it: path plus query string."""
        if not self.query:
            return self.path
        joined = "&".join(f"{k}={v}" if v != "" else k for k, v in self.query.items())
        return f"{self.path}{'&' if '?' in self.path else '?'}{joined}"


@dataclass(frozen=True, slots=True)
class Redirect:
    code: int
    location: str


@dataclass(frozen=True, slots=True)
class Result:
    """Where a request went. Exactly one of cluster, weighted_clusters, direct_response and
    redirect is set for HTTP; TCP results carry only `listener`, `tcp` and `cluster`."""

    listener: str
    tcp: bool = False
    route_config: str = ""
    virtual_host: str = ""
    route_name: str = ""
    cluster: str = ""
    weighted_clusters: Mapping[str, int] = field(default_factory=dict)
    direct_response: int | None = None
    body: str | None = None
    redirect: Redirect | None = None
    upstream_host: str = ""
    """`:authority` sent upstream (after `host_rewrite_literal`)."""
    upstream_path: str = ""
    """`:path` sent upstream (after `prefix_rewrite`)."""
    upstream_headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Request headers sent upstream, after the route's header mutations (lower-case names)."""
    response_headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """The route's response header mutations applied to an empty response."""
    mirrors: tuple[str, ...] = ()
    """Clusters a copy of the request is sent to (fire and forget)."""
    unknown_clusters: tuple[str, ...] = ()
    """Clusters this result sends to that CDS does not define (Envoy answers 503 NC)."""
    route: Any = field(default=None, compare=False, repr=False)
    """The matched `envoy.config.route.v3.Route`, for timeouts, retries and the like."""

    @property
    def clusters(self) -> frozenset[str]:
        return frozenset(self.weighted_clusters) | ({self.cluster} if self.cluster else set())


# --- Building inputs ---------------------------------------------------------------------------


class _NoPushes:
    def config_update(self, request: PushRequest) -> None:
        pass


def snapshot_of(configs: Iterable[Config], version: str = "sim") -> Snapshot:
    """The snapshot the discovery server would build from `configs` (via the SE registry)."""
    configs = list(configs)
    store = MemoryStore()
    registry = ServiceEntryRegistry(store, _NoPushes())
    for config in configs:
        store.apply(config)
    services = registry.services()
    endpoints = [ep for s in services for ep in registry.endpoints(s.hostname, s.namespace)]
    routing = [c for c in configs if c.kind in ROUTING_KINDS]
    return Snapshot.build(version, services, endpoints, routing)


def sidecar(
    name: str = "client",
    namespace: str = "default",
    labels: Mapping[str, str] | None = None,
    ips: Sequence[str] = (),
    outbound_bind: str = "127.0.0.1",
    app_address: str = "",
) -> Proxy:
    """A sidecar proxy for workload `name` (labels default to `app: <name>`)."""
    return Proxy(
        id=f"sidecar~{name}.{namespace}",
        type=NodeType.SIDECAR,
        namespace=namespace,
        workload_name=name,
        labels=dict(labels) if labels is not None else {"app": name},
        ip_addresses=tuple(ips),
        outbound_bind=outbound_bind,
        app_address=app_address,
    )


# --- The simulation ----------------------------------------------------------------------------

_LISTENER = frozenset({"name", "address", "filter_chains", "traffic_direction"})
_FILTER_CHAIN = frozenset({"filters"})
_FILTER = frozenset({"name", "typed_config"})
_TCP_PROXY = frozenset({"stat_prefix", "cluster"})
_HCM = frozenset({
    "stat_prefix", "codec_type", "http_filters", "rds", "route_config",
    "strip_matching_host_port", "strip_any_host_port",
})
_RDS = frozenset({"route_config_name", "config_source"})
_ROUTE_CONFIG = frozenset({
    "name", "virtual_hosts", "validate_clusters", "ignore_port_in_host_matching",
})
_VIRTUAL_HOST = frozenset({"name", "domains", "routes"})
_ROUTE = frozenset({
    "name", "match", "route", "redirect", "direct_response", "request_headers_to_add",
    "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
    "typed_per_filter_config",
    # Which VirtualService made the route (Istio's filter_metadata); routing ignores it.
    "metadata",
})
_ROUTE_MATCH = frozenset({
    "prefix", "path", "safe_regex", "case_sensitive", "headers", "query_parameters",
})
_HEADER_MATCHER = frozenset({
    "name", "exact_match", "safe_regex_match", "present_match", "prefix_match",
    "suffix_match", "contains_match", "string_match", "invert_match",
    "treat_missing_header_as_empty",
})
_QUERY_MATCHER = frozenset({"name", "string_match", "present_match"})
_STRING_MATCHER = frozenset({"exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"})
_REGEX = frozenset({"regex", "google_re2"})
_ROUTE_ACTION = frozenset({
    "cluster", "weighted_clusters", "timeout", "retry_policy", "prefix_rewrite", "regex_rewrite",
    "host_rewrite_literal",
    # Neither changes where the request itself goes.
    "hash_policy", "request_mirror_policies",
})
_WEIGHTED = frozenset({"clusters", "total_weight"})
_CLUSTER_WEIGHT = frozenset({"name", "weight"})
"""Per-cluster header operations are refused: which cluster is picked is random."""
_MIRROR = frozenset({"cluster", "runtime_fraction"})


def _type_url(kind: Any) -> str:
    return f"type.googleapis.com/{kind.DESCRIPTOR.full_name}"


_FAULT = _type_url(fault_pb2.HTTPFault)
_CORS_POLICY = _type_url(cors_pb2.CorsPolicy)
_REDIRECT = frozenset({
    "path_redirect", "host_redirect", "scheme_redirect", "port_redirect", "response_code",
    "https_redirect", "strip_query",
})
_DIRECT = frozenset({"status", "body"})
_HEADER_OPTION = frozenset({"header", "append_action", "append", "keep_empty_value"})

_REDIRECT_CODES = {
    rc.RedirectAction.MOVED_PERMANENTLY: 301,
    rc.RedirectAction.FOUND: 302,
    rc.RedirectAction.SEE_OTHER: 303,
    rc.RedirectAction.TEMPORARY_REDIRECT: 307,
    rc.RedirectAction.PERMANENT_REDIRECT: 308,
}
_RE2_UNSUPPORTED = re.compile(r"\(\?<?[=!]|\\[1-9]")
"""Lookaround and back-references: Python accepts them, RE2 (Envoy) rejects the config."""

Headers = dict[str, list[str]]


class Simulation:
    """The config one proxy receives from one snapshot, and requests evaluated against it."""

    def __init__(self, snapshot: Snapshot, proxy: Proxy) -> None:
        self.snapshot = snapshot
        self.proxy = proxy
        self.listeners: dict[str, Any] = {
            lst.name: lst for lst in self._fetch(names.LISTENER, None, listener_pb2.Listener)
        }
        self.clusters: dict[str, Any] = {
            c.name: c for c in self._fetch(names.CLUSTER, None, cluster_pb2.Cluster)
        }
        self._bound: dict[tuple[str, int], Any] = {}
        for lst in self.listeners.values():
            where = (lst.address.socket_address.address, lst.address.socket_address.port_value)
            if where in self._bound:
                raise RejectedConfig(f"listeners {self._bound[where].name} and {lst.name} both "
                                     f"bind {where[0]}:{where[1]}")
            self._bound[where] = lst
        self._routes: dict[str, Any] = {}

    # Requests -----------------------------------------------------------------------------

    def run(self, request: Request) -> Result:
        listener = self._bound.get((request.address, request.port))
        if listener is None:
            raise NoListener(f"nothing listens on {request.address}:{request.port}; listeners: "
                             f"{sorted(self.listeners)}")
        _only(listener, _LISTENER, f"listener {listener.name}")
        if len(listener.filter_chains) != 1:
            raise UnsupportedConfig(f"listener {listener.name} has "
                                    f"{len(listener.filter_chains)} filter chains")
        chain = listener.filter_chains[0]
        _only(chain, _FILTER_CHAIN, f"listener {listener.name} filter chain")
        if len(chain.filters) != 1:
            raise UnsupportedConfig(f"listener {listener.name} has {len(chain.filters)} "
                                    "network filters")
        network_filter = chain.filters[0]
        _only(network_filter, _FILTER, f"listener {listener.name} filter")
        type_url = network_filter.typed_config.type_url
        if type_url == _type_url(tcp_proxy_pb2.TcpProxy):
            tcp = _unpack(network_filter.typed_config, tcp_proxy_pb2.TcpProxy)
            _only(tcp, _TCP_PROXY, f"listener {listener.name} tcp_proxy")
            if not tcp.cluster:
                raise RejectedConfig(f"listener {listener.name}: tcp_proxy without a cluster")
            return Result(listener=listener.name, tcp=True, cluster=tcp.cluster,
                          unknown_clusters=self._unknown([tcp.cluster]))
        manager = _unpack(network_filter.typed_config, hcm_pb2.HttpConnectionManager)
        return self._http(listener, manager, request)

    def _http(self, listener: Any, manager: Any, request: Request) -> Result:
        where = f"listener {listener.name} http_connection_manager"
        _only(manager, _HCM, where)
        dns_caches = _check_http_filters(manager, where)
        if manager.HasField("rds"):
            _only(manager.rds, _RDS, f"{where} rds")
            config = self.route_config(manager.rds.route_config_name)
        elif manager.HasField("route_config"):
            config = manager.route_config
            _check_route_config(config)
        else:
            raise RejectedConfig(f"{where}: neither rds nor route_config")
        if not request.host:
            raise SimulationError("an HTTP request needs a Host")
        for name in request.headers:
            if name.startswith(":") or name.lower() == "host":
                raise SimulationError(f"give {name!r} through Request fields, not headers")
        host = request.host
        strip = manager.strip_any_host_port or config.ignore_port_in_host_matching or (
            manager.strip_matching_host_port and host.endswith(f":{request.port}")
        )
        if strip:
            host = _strip_port(host)
        vhost = _virtual_host(config, host)
        headers: Headers = {k.lower(): [v] for k, v in request.headers.items()}
        pseudo = {":authority": host, ":method": request.method, ":scheme": request.scheme,
                  ":path": request.full_path}
        every = {**headers, **{k: [v] for k, v in pseudo.items()}}
        params = _query_params(request.full_path)
        for route in vhost.routes:
            matched = _matched_path(route.match, request.full_path)
            if matched is not None and _matches(route.match, every, params):
                result = self._result(listener, config, vhost, route, request, host, headers,
                                      matched)
                for cluster in sorted(result.clusters - set(result.unknown_clusters)):
                    cache = self._forward_proxy_cache(cluster)
                    if cache is not None and cache not in dns_caches:
                        raise RejectedConfig(
                            f"{where}: route {route.name!r} sends to dynamic forward proxy "
                            f"cluster {cluster} but no HTTP filter fills DNS cache {cache!r}")
                return result
        raise NoRoute(f"no route of {config.name}/{vhost.name} matches {request}")

    def _result(
        self, listener: Any, config: Any, vhost: Any, route: Any, request: Request,
        host: str, headers: Headers, matched: str,
    ) -> Result:
        result = Result(
            listener=listener.name, route_config=config.name, virtual_host=vhost.name,
            route_name=route.name, route=route,
            response_headers=_frozen(_mutate({}, route.response_headers_to_add,
                                              route.response_headers_to_remove)),
        )
        _check_per_filter_config(route, request)
        action = route.WhichOneof("action")
        if action == "direct_response":
            body = route.direct_response.body
            text = body.inline_string if body.HasField("inline_string") else None
            return replace(result, direct_response=route.direct_response.status, body=text)
        if action == "redirect":
            return replace(result, redirect=_redirect(route.redirect, request, host))
        forward = route.route  # the only other action _check_route lets through
        path = request.full_path
        if forward.prefix_rewrite:
            path = forward.prefix_rewrite + path[len(matched):]
        elif forward.HasField("regex_rewrite"):
            bare = re.split(r"[?#]", path, maxsplit=1)[0]
            query = path[len(bare):]
            rewrite = forward.regex_rewrite
            path = re.sub(rewrite.pattern.regex, rewrite.substitution, bare) + query
        result = replace(
            result,
            upstream_host=forward.host_rewrite_literal or host,
            upstream_path=path,
            upstream_headers=_frozen(_mutate(headers, route.request_headers_to_add,
                                             route.request_headers_to_remove)),
            mirrors=tuple(m.cluster for m in forward.request_mirror_policies),
        )
        if forward.WhichOneof("cluster_specifier") == "cluster":
            return replace(result, cluster=forward.cluster,
                           unknown_clusters=self._unknown([forward.cluster]))
        weights = {c.name: c.weight.value for c in forward.weighted_clusters.clusters}
        return replace(result, weighted_clusters=weights, unknown_clusters=self._unknown(weights))

    def _unknown(self, clusters: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted(c for c in clusters if c not in self.clusters))

    # Resources ----------------------------------------------------------------------------

    def route_config(self, name: str) -> Any:
        """The RouteConfiguration RDS serves this proxy under `name`, checked."""
        if name not in self._routes:
            found = self._fetch(names.ROUTE, [name], route_pb2.RouteConfiguration)
            if not found:
                raise MissingResource(f"RDS serves no route configuration {name!r}")
            _check_route_config(found[0])
            self._routes[name] = found[0]
        return self._routes[name]

    def cluster(self, name: str) -> Any:
        if name not in self.clusters:
            raise MissingResource(f"CDS defines no cluster {name!r}")
        return self.clusters[name]

    def _forward_proxy_cache(self, cluster_name: str) -> str | None:
        """The DNS cache of a dynamic forward proxy cluster, or None for other clusters."""
        cluster = self.clusters[cluster_name]
        if cluster.WhichOneof("cluster_discovery_type") != "cluster_type":
            return None
        config = _unpack(cluster.cluster_type.typed_config, dfp_cluster_pb2.ClusterConfig)
        name: str = config.dns_cache_config.name
        return name

    def load_assignment(self, cluster_name: str) -> Any:
        """A cluster's ClusterLoadAssignment: inline for STATIC/DNS clusters, else from EDS."""
        cluster = self.cluster(cluster_name)
        if cluster.WhichOneof("cluster_discovery_type") not in (None, "type"):
            raise UnsupportedConfig(f"cluster {cluster_name} is a {cluster.cluster_type.name} "
                                    "cluster: it resolves hosts per request")
        if cluster.type in (cluster_pb2.Cluster.STATIC, cluster_pb2.Cluster.STRICT_DNS,
                            cluster_pb2.Cluster.LOGICAL_DNS):
            return cluster.load_assignment
        if cluster.type != cluster_pb2.Cluster.EDS:
            kind = cluster_pb2.Cluster.DiscoveryType.Name(cluster.type)
            raise UnsupportedConfig(f"cluster {cluster_name} is {kind}: it has no endpoints "
                                    "of its own")
        eds = cluster.eds_cluster_config
        if not eds.eds_config.HasField("ads"):
            raise UnsupportedConfig(f"cluster {cluster_name}: EDS from somewhere other than ADS")
        service = eds.service_name or cluster.name
        found = self._fetch(names.ENDPOINT, [service], endpoint_pb2.ClusterLoadAssignment)
        if not found:
            raise MissingResource(f"EDS serves no assignment {service!r}")
        return found[0]

    def endpoints(self, cluster_name: str) -> list[tuple[str, int]]:
        """Addresses a cluster sends to, sorted, over every locality."""
        cla = self.load_assignment(cluster_name)
        return sorted(
            (lb.endpoint.address.socket_address.address,
             lb.endpoint.address.socket_address.port_value)
            for group in cla.endpoints
            for lb in group.lb_endpoints
        )

    def _fetch(self, type_url: str, wanted: list[str] | None, kind: type[M]) -> list[M]:
        key = "cluster_name" if kind is endpoint_pb2.ClusterLoadAssignment else "name"
        out: list[M] = []
        seen: set[str] = set()
        for resource in GENERATORS[type_url].generate(self.snapshot, self.proxy, wanted):
            message = _unpack(resource.body, kind)
            if getattr(message, key) != resource.name:
                raise RejectedConfig(f"resource {resource.name!r} holds a "
                                     f"{kind.DESCRIPTOR.name} named {getattr(message, key)!r}")
            if resource.name in seen:
                raise RejectedConfig(f"{names.SHORT_NAMES[type_url]} sends {resource.name!r} "
                                     "twice")
            seen.add(resource.name)
            out.append(message)
        return out


# --- Checks ------------------------------------------------------------------------------------


def _only(message: Any, allowed: frozenset[str], where: str) -> None:
    extra = sorted(f.name for f, _ in message.ListFields() if f.name not in allowed)
    if extra:
        raise UnsupportedConfig(f"{where}: {message.DESCRIPTOR.name} sets {', '.join(extra)}, "
                                "which the simulator does not model")


def _unpack(packed: Any, kind: type[M]) -> M:
    message = kind()
    if not packed.Unpack(message):
        raise UnsupportedConfig(f"expected {kind.DESCRIPTOR.full_name}, got {packed.type_url}")
    return message


def _check_http_filters(manager: Any, where: str) -> set[str]:
    """The router last, and before it only filters that leave routing alone: CORS and fault
    (inert without per-route config) and the dynamic forward proxy (which acts only on
    requests routed to a dynamic forward proxy cluster). Returns the forward proxy's DNS
    caches."""
    filters = list(manager.http_filters)
    if not filters:
        raise RejectedConfig(f"{where}: no HTTP filters (the router must be last)")
    for http_filter in filters:
        _only(http_filter, _FILTER, f"{where} http filter {http_filter.name}")
    *before, last = filters
    _unpack(last.typed_config, router_pb2.Router)
    caches: set[str] = set()
    for http_filter in before:
        type_url = http_filter.typed_config.type_url
        at = f"{where} http filter {http_filter.name}"
        if type_url == _type_url(cors_pb2.Cors):
            _only(_unpack(http_filter.typed_config, cors_pb2.Cors), frozenset(), at)
        elif type_url == _type_url(fault_pb2.HTTPFault):
            _only(_unpack(http_filter.typed_config, fault_pb2.HTTPFault), frozenset(), at)
        elif type_url == _type_url(dfp_filter_pb2.FilterConfig):
            config = _unpack(http_filter.typed_config, dfp_filter_pb2.FilterConfig)
            _only(config, frozenset({"dns_cache_config"}), at)
            caches.add(config.dns_cache_config.name)
        else:
            raise UnsupportedConfig(f"{where}: HTTP filter {http_filter.name} ({type_url})")
    return caches


def _check_route_config(config: Any) -> None:
    """Every field the simulator reads, and Envoy's own checks on domains and actions."""
    where = f"route configuration {config.name!r}"
    _only(config, _ROUTE_CONFIG, where)
    domains: dict[str, str] = {}
    for vhost in config.virtual_hosts:
        at = f"{where} virtual host {vhost.name!r}"
        _only(vhost, _VIRTUAL_HOST, at)
        if not vhost.domains:
            raise RejectedConfig(f"{at}: no domains")
        for domain in vhost.domains:
            if domain.lower() in domains:
                raise RejectedConfig(f"{at}: domain {domain!r} is also in virtual host "
                                     f"{domains[domain.lower()]!r}")
            domains[domain.lower()] = vhost.name
        for route in vhost.routes:
            _check_route(route, f"{at} route {route.name!r}")


def _check_route(route: Any, where: str) -> None:
    _only(route, _ROUTE, where)
    match = route.match
    _only(match, _ROUTE_MATCH, f"{where} match")
    specifier = match.WhichOneof("path_specifier")
    if specifier is None:
        raise RejectedConfig(f"{where}: match has no prefix, path or safe_regex")
    if specifier == "safe_regex":
        _check_regex(match.safe_regex, f"{where} match")
    for header in match.headers:
        _only(header, _HEADER_MATCHER, f"{where} header {header.name}")
        if not header.name:
            raise RejectedConfig(f"{where}: header matcher without a name")
        if header.HasField("string_match"):
            _check_string_matcher(header.string_match, f"{where} header {header.name}")
        if header.HasField("safe_regex_match"):
            _check_regex(header.safe_regex_match, f"{where} header {header.name}")
    for query in match.query_parameters:
        _only(query, _QUERY_MATCHER, f"{where} query {query.name}")
        if query.HasField("string_match"):
            _check_string_matcher(query.string_match, f"{where} query {query.name}")
    action = route.WhichOneof("action")
    if action == "route":
        _check_route_action(route.route, where)
    elif action == "redirect":
        _only(route.redirect, _REDIRECT, f"{where} redirect")
    elif action == "direct_response":
        _only(route.direct_response, _DIRECT, f"{where} direct_response")
        if not 100 <= route.direct_response.status <= 599:
            raise RejectedConfig(f"{where}: direct response status "
                                 f"{route.direct_response.status}")
    else:
        raise RejectedConfig(f"{where}: no route, redirect or direct_response")
    for options, removed in ((route.request_headers_to_add, route.request_headers_to_remove),
                             (route.response_headers_to_add, route.response_headers_to_remove)):
        for option in options:
            _only(option, _HEADER_OPTION, f"{where} header option")
            _check_modifiable(option.header.key, where, "modified")
        for name in removed:
            _check_modifiable(name, where, "removed")


def _check_per_filter_config(route: Any, request: Request) -> None:
    """Per-route filter config on the route taken: CORS only acts on requests with an Origin,
    and fault injection is left to tests that inspect the route itself."""
    for name, config in route.typed_per_filter_config.items():
        if config.type_url == _CORS_POLICY:
            if any(h.lower() == "origin" for h in request.headers):
                raise UnsupportedConfig(f"route {route.name!r}: CORS handling of an Origin")
        elif config.type_url == _FAULT:
            raise UnsupportedConfig(f"route {route.name!r}: fault injection is probabilistic")
        else:
            raise UnsupportedConfig(f"route {route.name!r}: per-filter config for {name}")


def _check_route_action(action: Any, where: str) -> None:
    _only(action, _ROUTE_ACTION, f"{where} route")
    specifier = action.WhichOneof("cluster_specifier")
    if specifier == "cluster":
        if not action.cluster:
            raise RejectedConfig(f"{where}: empty cluster name")
    elif specifier == "weighted_clusters":
        weighted = action.weighted_clusters
        _only(weighted, _WEIGHTED, f"{where} weighted_clusters")
        for entry in weighted.clusters:
            _only(entry, _CLUSTER_WEIGHT, f"{where} weighted cluster {entry.name}")
        total = sum(c.weight.value for c in weighted.clusters)
        if total == 0:
            raise RejectedConfig(f"{where}: weighted clusters sum to 0")
        if weighted.total_weight.value and weighted.total_weight.value != total:
            raise RejectedConfig(f"{where}: weights sum to {total}, total_weight says "
                                 f"{weighted.total_weight.value}")
    else:
        raise RejectedConfig(f"{where}: route action without a cluster")
    for mirror in action.request_mirror_policies:
        _only(mirror, _MIRROR, f"{where} mirror")
    if action.HasField("regex_rewrite"):
        if action.prefix_rewrite:
            raise RejectedConfig(f"{where}: both prefix_rewrite and regex_rewrite")
        _check_regex(action.regex_rewrite.pattern, f"{where} regex_rewrite")


def _check_string_matcher(matcher: Any, where: str) -> None:
    _only(matcher, _STRING_MATCHER, where)
    kind = matcher.WhichOneof("match_pattern")
    if kind is None:
        raise RejectedConfig(f"{where}: string matcher without a pattern")
    if kind == "safe_regex":
        _check_regex(matcher.safe_regex, where)


def _check_regex(regex: Any, where: str) -> None:
    _only(regex, _REGEX, f"{where} regex")
    if _RE2_UNSUPPORTED.search(regex.regex):
        raise RejectedConfig(f"{where}: {regex.regex!r} is not RE2 syntax")
    try:
        re.compile(regex.regex)
    except re.error as err:
        raise RejectedConfig(f"{where}: invalid regex {regex.regex!r}: {err}") from err


def _check_modifiable(name: str, where: str, verb: str) -> None:
    if not name or name.startswith(":") or name.lower() == "host":
        raise RejectedConfig(f"{where}: header {name!r} may not be {verb} "
                             "(':'-prefixed and host headers are protected)")


# --- Matching ----------------------------------------------------------------------------------


def _strip_port(host: str) -> str:
    start = host.rfind(":")
    if start == -1 or host.rfind("]") > start or not host[start + 1:].isdigit():
        return host
    return host[:start]


def _virtual_host(config: Any, host: str) -> Any:
    """Envoy's domain search: exact, longest `*suffix`, longest `prefix*`, then `*`."""
    host = host.lower()
    exact: dict[str, Any] = {}
    suffixes: list[tuple[str, Any]] = []
    prefixes: list[tuple[str, Any]] = []
    default = None
    for vhost in config.virtual_hosts:
        for domain in (d.lower() for d in vhost.domains):
            if domain == "*":
                default = vhost
            elif domain.startswith("*"):
                suffixes.append((domain[1:], vhost))
            elif domain.endswith("*"):
                prefixes.append((domain[:-1], vhost))
            else:
                exact[domain] = vhost
    if host in exact:
        return exact[host]
    # A wildcard never matches the empty string: `*.a.com` does not answer for `.a.com`.
    for suffix, vhost in sorted(suffixes, key=lambda s: -len(s[0])):
        if len(host) > len(suffix) and host.endswith(suffix):
            return vhost
    for prefix, vhost in sorted(prefixes, key=lambda p: -len(p[0])):
        if len(host) > len(prefix) and host.startswith(prefix):
            return vhost
    if default is not None:
        return default
    raise NoVirtualHost(f"no virtual host of {config.name!r} answers to {host!r}")


def _matched_path(match: Any, full_path: str) -> str | None:
    """The part of `:path` the route's path specifier matched, or None.

    Path matching ignores the query string and fragment, as in Envoy.
    """
    path = re.split(r"[?#]", full_path, maxsplit=1)[0]
    sensitive = not match.HasField("case_sensitive") or match.case_sensitive.value
    fold = (lambda s: s) if sensitive else str.lower
    kind = match.WhichOneof("path_specifier")
    if kind == "prefix":
        return path[: len(match.prefix)] if fold(path).startswith(fold(match.prefix)) else None
    if kind == "path":
        return path if fold(path) == fold(match.path) else None
    # safe_regex: a full match of the path; case_sensitive does not apply to regexes.
    return path if re.fullmatch(match.safe_regex.regex, path) else None


def _matches(match: Any, headers: Headers, params: Mapping[str, str]) -> bool:
    return all(_header_matches(h, headers) for h in match.headers) and all(
        _query_matches(q, params) for q in match.query_parameters
    )


def _header_matches(matcher: Any, headers: Headers) -> bool:
    """Envoy's HeaderMatcher, including its rules for absent headers and `invert_match`."""
    values = headers.get(matcher.name.lower())
    kind = matcher.WhichOneof("header_match_specifier")
    wants_present = matcher.present_match if kind == "present_match" else True
    if values is None and not matcher.treat_missing_header_as_empty:
        # Absent: only a presence matcher can match, inverted or not.
        if kind in (None, "present_match"):
            return wants_present if matcher.invert_match else not wants_present
        return False
    value = ",".join(values or [""])
    if kind in (None, "present_match"):
        matched = wants_present
    elif kind == "string_match":
        matched = _string_matches(matcher.string_match, value)
    elif kind == "exact_match":
        matched = not matcher.exact_match or value == matcher.exact_match
    elif kind == "safe_regex_match":
        matched = re.fullmatch(matcher.safe_regex_match.regex, value) is not None
    elif kind == "prefix_match":
        matched = value.startswith(matcher.prefix_match)
    elif kind == "suffix_match":
        matched = value.endswith(matcher.suffix_match)
    elif kind == "contains_match":
        matched = matcher.contains_match in value
    else:
        raise UnsupportedConfig(f"header matcher {kind}")
    return bool(matched) != bool(matcher.invert_match)


def _query_params(full_path: str) -> dict[str, str]:
    """First value of each query parameter, undecoded, as Envoy's route matching reads them."""
    query = full_path.partition("?")[2].partition("#")[0]
    params: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        name, _, value = item.partition("=")
        params.setdefault(name, value)
    return params


def _query_matches(matcher: Any, params: Mapping[str, str]) -> bool:
    if matcher.name not in params:
        return False
    if matcher.present_match or not matcher.HasField("string_match"):
        return True
    return _string_matches(matcher.string_match, params[matcher.name])


def _string_matches(matcher: Any, value: str) -> bool:
    kind = matcher.WhichOneof("match_pattern")
    if kind == "safe_regex":  # ignore_case does not apply to regexes
        return re.fullmatch(matcher.safe_regex.regex, value) is not None
    expected: str = getattr(matcher, kind)
    if matcher.ignore_case:
        value, expected = value.lower(), expected.lower()
    if kind == "exact":
        return value == expected
    if kind == "prefix":
        return value.startswith(expected)
    if kind == "suffix":
        return value.endswith(expected)
    return expected in value


# --- Actions -----------------------------------------------------------------------------------


def _frozen(headers: Headers) -> dict[str, tuple[str, ...]]:
    return {k: tuple(v) for k, v in sorted(headers.items())}


def _mutate(headers: Headers, options: Iterable[Any], removed: Iterable[str]) -> Headers:
    """Envoy's order: removals first, then overwrites, then appends; empty values are skipped
    unless `keep_empty_value`."""
    out = {k: list(v) for k, v in headers.items()}
    for name in removed:
        out.pop(name.lower(), None)
    overwrite: list[tuple[str, str]] = []
    append: list[tuple[str, str]] = []
    actions = base_pb2.HeaderValueOption
    for option in options:
        key, value = option.header.key.lower(), option.header.value
        if not value and not option.keep_empty_value:
            continue
        action = option.append_action
        if option.HasField("append"):  # the deprecated boolean wins when set
            action = (actions.APPEND_IF_EXISTS_OR_ADD if option.append.value
                      else actions.OVERWRITE_IF_EXISTS_OR_ADD)
        if action == actions.APPEND_IF_EXISTS_OR_ADD:
            append.append((key, value))
        elif action == actions.ADD_IF_ABSENT:
            if key not in out:
                append.append((key, value))
        elif action == actions.OVERWRITE_IF_EXISTS_OR_ADD or key in out:
            overwrite.append((key, value))
    for key, value in overwrite:
        out[key] = [value]
    for key, value in append:
        out.setdefault(key, []).append(value)
    return out


def _redirect(action: Any, request: Request, host: str) -> Redirect:
    """The Location Envoy builds for a RedirectAction."""
    scheme = action.scheme_redirect or ("https" if action.https_redirect else request.scheme)
    port = f":{action.port_redirect}" if action.port_redirect else ""
    if action.host_redirect:
        new_host = action.host_redirect
    else:
        new_host = host
        bare = _strip_port(host)
        if bare != host:
            old_port = host[len(bare):]
            default = {"http": ":80", "https": ":443"}.get(request.scheme)
            if port or (scheme != request.scheme and old_port == default):
                new_host = bare
    full = request.full_path
    path, own_query = full, False
    if action.path_redirect:
        # A query in path_redirect replaces the request's and survives strip_query.
        path, own_query = action.path_redirect, "?" in action.path_redirect
        if not own_query and "?" in full:
            path += full[full.index("?"):]
    if not path.startswith("/"):
        path = "/" + path
    if action.strip_query and not own_query:
        path = path.partition("?")[0]
    return Redirect(_REDIRECT_CODES[action.response_code], f"{scheme}://{new_host}{port}{path}")
