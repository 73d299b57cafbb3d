"""RDS: one RouteConfiguration per outbound HTTP port, one virtual host per service on it.

VirtualService http routes become Envoy routes in order (first match wins, as in Istio); a host
with no VirtualService gets a single default route to its cluster. Unsupported VirtualService
fields are reported once per config by the caller, never dropped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2

from meshpilot.envoy import cluster_policies, delegation, metadata, names
from meshpilot.envoy import route_policies as policies
from meshpilot.envoy.matchers import string_matcher
from meshpilot.envoy.protos import duration, pack, parse_duration
from meshpilot.envoy.scope import ALLOW_ANY, Scope, scope_for, virtual_service_for
from meshpilot.model import Config, Proxy, Service
from meshpilot.model.gateways import MESH, match_gateways
from meshpilot.model.hosts import DOMAIN_SUFFIX, resolve_short_name
from meshpilot.model.snapshot import Snapshot

log = logging.getLogger("meshpilot.envoy")

# Istio's default retry policy for routes without `retries`.
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_RETRY_ATTEMPTS = 2
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"


def route_config(
    snapshot: Snapshot, proxy: Proxy, name: str, scope: Scope | None = None
) -> route_pb2.RouteConfiguration:
    """The routes for outbound port `name`; an unknown name gets an empty configuration.

    One virtual host per service the proxy may reach on the port, then a catch-all for other
    hosts by the outbound traffic policy: passthrough (ALLOW_ANY) or 502 (REGISTRY_ONLY).
    """
    scope = scope or scope_for(snapshot, proxy)
    config = route_pb2.RouteConfiguration(name=name)
    config.validate_clusters.value = False
    if not name.isdigit():
        return config
    port = int(name)
    taken: set[str] = set()
    for host in sorted(snapshot.services):
        svc = snapshot.services[host]
        svc_port = svc.port(port)
        if svc_port is None or not svc_port.protocol.is_http or not scope.visible(svc, port):
            continue
        # Envoy compares domains case-insensitively and rejects duplicates.
        domains = [
            d for d in domains_for(svc, port, proxy.namespace) if d.lower() not in taken
        ]
        if not domains:
            continue
        taken.update(d.lower() for d in domains)
        vhost = config.virtual_hosts.add(name=f"{host}:{port}", domains=domains)
        vs = virtual_service_for(snapshot, host, proxy.namespace)
        if vs is None:
            vhost.routes.append(
                default_route(host, port, snapshot, proxy.namespace, proxy.labels)
            )
        else:
            vhost.routes.extend(virtual_service_routes(vs, proxy, port, snapshot))
    config.virtual_hosts.append(_catch_all(scope.outbound_policy))
    return config


def _catch_all(policy: str) -> rc.VirtualHost:
    route = rc.Route(name=policy.lower())
    route.match.prefix = "/"
    if policy == ALLOW_ANY:
        vhost = rc.VirtualHost(name="allow_any", domains=["*"])
        route.route.cluster = names.PASSTHROUGH_CLUSTER
        route.route.timeout.CopyFrom(duration(0))
    else:
        vhost = rc.VirtualHost(name="block_all", domains=["*"])
        route.direct_response.status = 502
    vhost.routes.append(route)
    return vhost


def domains_for(svc: Service, port: int, proxy_namespace: str) -> list[str]:
    """Names a client may put in Host for this service, as Istio generates them.

    Kubernetes-style hosts (`name.ns.svc.cluster.local`) also answer to their shorter forms;
    the bare `name` only for clients in the same namespace.
    """
    hosts = [svc.hostname]
    suffix = f".{svc.namespace}.{DOMAIN_SUFFIX}"
    if svc.hostname.endswith(suffix):
        short = svc.hostname[: -len(suffix)]
        hosts += [f"{short}.{svc.namespace}", f"{short}.{svc.namespace}.svc"]
        if proxy_namespace == svc.namespace:
            hosts.append(short)
    hosts += list(svc.addresses)
    return [d for h in hosts for d in (h, f"{h}:{port}")]


def default_route(
    host: str,
    port: int,
    snapshot: Snapshot | None = None,
    namespace: str = "",
    labels: Mapping[str, str] | None = None,
) -> rc.Route:
    """The route of a service without a VirtualService; with the snapshot it also carries the
    consistent-hash policy of the service's DestinationRule."""
    route = rc.Route(name="default")
    route.match.prefix = "/"
    cluster = names.outbound_cluster(host, port)
    route.route.cluster = cluster
    _istio_defaults(route.route)
    if snapshot is not None and (
        hashing := _hash_policy([cluster], snapshot, namespace, labels)
    ):
        route.route.hash_policy.append(hashing)
    return route


def virtual_service_routes(
    vs: Config, proxy: Proxy, port: int, snapshot: Snapshot, gateway: str = MESH
) -> list[rc.Route]:
    """Routes of `vs` for proxies of `gateway`: `mesh` (sidecars) or a Gateway `ns/name`.

    A route that delegates is replaced by the delegate's routes (see `delegation`); their
    destinations are read in the delegate's namespace."""
    out = []
    for http in vs.spec.get("http") or ():
        if "delegate" in http:
            delegate = delegation.find_delegate(snapshot, vs, http["delegate"])
            if delegate is None:
                continue
            pairs = [
                (own_http, delegate, match)
                for own_http, match in delegation.delegated_routes(http, delegate)
            ]
        else:
            pairs = [(http, vs, match) for match in http.get("match") or [None]]
        for route_http, owner, match in pairs:
            if match is not None and not _match_applies(match, proxy, port):
                continue
            if gateway not in match_gateways(vs, match):
                continue  # `gateways` (the match's, else the VirtualService's) excludes it
            route = rc.Route(name=str(route_http.get("name", "")))
            route.match.CopyFrom(_route_match(match))
            _apply_action(
                route, route_http, owner, port, snapshot, proxy.namespace, proxy.labels
            )
            metadata.mark_route(route, vs)
            out.append(route)
    return out


def _match_applies(match: Mapping[str, Any], proxy: Proxy, port: int) -> bool:
    """Match conditions decided per proxy rather than per request."""
    if "port" in match and int(match["port"]) != port:
        return False
    source_labels: Mapping[str, str] = match.get("sourceLabels") or {}
    if any(proxy.labels.get(k) != v for k, v in source_labels.items()):
        return False
    source_ns = match.get("sourceNamespace")
    return not (source_ns and source_ns != proxy.namespace)


def _route_match(match: Mapping[str, Any] | None) -> rc.RouteMatch:
    m = rc.RouteMatch()
    uri: Mapping[str, Any] = (match or {}).get("uri") or {}
    ignore_case = bool((match or {}).get("ignoreUriCase", False))
    if "exact" in uri:
        m.path = str(uri["exact"])
    elif "regex" in uri:
        m.safe_regex.regex = str(uri["regex"])
    else:
        m.prefix = str(uri.get("prefix", "/"))
    if ignore_case:
        m.case_sensitive.value = False
    if match is None:
        return m
    pseudo = {"authority": ":authority", "method": ":method", "scheme": ":scheme"}
    for field, header in pseudo.items():
        if field in match:
            m.headers.add(name=header, string_match=string_matcher(match[field]))
    for name, spec in (match.get("headers") or {}).items():
        header = m.headers.add(name=name)
        if not spec:
            header.present_match = True
        else:
            header.string_match.CopyFrom(string_matcher(spec))
    for name, spec in (match.get("withoutHeaders") or {}).items():
        header = m.headers.add(name=name, invert_match=True)
        if not spec:
            header.present_match = True
        else:
            # As Istio: an absent header counts as empty, so "without x: exact prod" matches.
            header.treat_missing_header_as_empty = True
            header.string_match.CopyFrom(string_matcher(spec))
    for name, spec in (match.get("queryParams") or {}).items():
        query = m.query_parameters.add(name=name)
        if not spec:
            query.present_match = True
        else:
            query.string_match.CopyFrom(string_matcher(spec))
    return m


def _apply_action(
    route: rc.Route,
    http: Mapping[str, Any],
    vs: Config,
    port: int,
    snapshot: Snapshot,
    namespace: str = "",
    labels: Mapping[str, str] | None = None,
) -> None:
    """Fill a route's action from an Istio http route; `namespace` and `labels` are the
    client's, which decide the DestinationRule that supplies consistent-hash settings."""
    if "directResponse" in http:
        direct = http["directResponse"]
        route.direct_response.status = int(direct.get("status", 200))
        body = (direct.get("body") or {}).get("string")
        if body is not None:
            route.direct_response.body.inline_string = str(body)
        return
    if "redirect" in http:
        _redirect(route.redirect, http["redirect"])
        return
    action = route.route
    destinations = [
        d for d in http.get("route") or () if len(http["route"]) == 1 or d.get("weight", 0) > 0
    ]
    clusters = [_destination_cluster(d, vs, port, snapshot) for d in destinations]
    if len(clusters) == 1:
        action.cluster = clusters[0]
        _headers(route, destinations[0].get("headers") or {})
    elif clusters:
        for dest, cluster in zip(destinations, clusters, strict=True):
            weighted = action.weighted_clusters.clusters.add(name=cluster)
            weighted.weight.value = int(dest["weight"])
            _headers(weighted, dest.get("headers") or {})
    else:
        action.cluster = names.BLACKHOLE_CLUSTER
    _istio_defaults(action)
    if "timeout" in http:
        action.timeout.CopyFrom(parse_duration(str(http["timeout"])))
    _retries(action, http.get("retries"))
    rewrite: Mapping[str, Any] = http.get("rewrite") or {}
    if "uri" in rewrite:
        action.prefix_rewrite = str(rewrite["uri"])
    if "uriRegexRewrite" in rewrite:
        action.regex_rewrite.pattern.regex = str(rewrite["uriRegexRewrite"]["match"])
        action.regex_rewrite.substitution = str(rewrite["uriRegexRewrite"]["rewrite"])
    if "authority" in rewrite:
        action.host_rewrite_literal = str(rewrite["authority"])
    _headers(route, http.get("headers") or {})
    action.request_mirror_policies.extend(
        policies.mirror_policies(
            http, lambda dest: _destination_cluster({"destination": dest}, vs, port, snapshot)
        )
    )
    if (fault := policies.fault(http.get("fault"))) is not None:
        route.typed_per_filter_config[policies.FAULT_FILTER].CopyFrom(pack(fault))
    if (cors := policies.cors(http.get("corsPolicy"))) is not None:
        route.typed_per_filter_config[policies.CORS_FILTER].CopyFrom(pack(cors))
    if (hashing := _hash_policy(clusters, snapshot, namespace, labels)) is not None:
        action.hash_policy.append(hashing)


def _hash_policy(
    clusters: list[str],
    snapshot: Snapshot,
    namespace: str,
    labels: Mapping[str, str] | None = None,
) -> rc.RouteAction.HashPolicy | None:
    """Consistent hashing needs the route to say what to hash: take it from the destinations'
    DestinationRule, as long as they all agree (Istio does the same)."""
    if not clusters:
        return None
    found = set()
    for cluster in clusters:
        parsed = names.ClusterName.parse(cluster)
        if parsed is None:
            return None
        lb = cluster_policies.load_balancer(
            snapshot, parsed.host, parsed.port, parsed.subset, namespace, labels
        )
        found.add(repr(lb.get("consistentHash")))
        if len(found) > 1 or "consistentHash" not in lb:
            return None
    lb = cluster_policies.load_balancer(
        snapshot, *_host_port_subset(clusters[0]), namespace, labels
    )
    return policies.hash_policy(lb["consistentHash"])


def _host_port_subset(cluster: str) -> tuple[str, int, str]:
    parsed = names.ClusterName.parse(cluster)
    assert parsed is not None
    return parsed.host, parsed.port, parsed.subset


def _destination_cluster(
    destination: Mapping[str, Any], vs: Config, port: int, snapshot: Snapshot
) -> str:
    dest = destination.get("destination") or {}
    host = resolve_short_name(str(dest.get("host", "")), vs.namespace)
    number = (dest.get("port") or {}).get("number")
    if number is None:
        svc = snapshot.services.get(host)
        # Istio: a destination without a port uses the service's only port, else the request's.
        number = svc.ports[0].number if svc is not None and len(svc.ports) == 1 else port
    return names.outbound_cluster(host, int(number), str(dest.get("subset", "")))


def _istio_defaults(action: rc.RouteAction) -> None:
    # Istio disables Envoy's 15 s route timeout and retries connection-level failures twice.
    action.timeout.CopyFrom(duration(0))
    action.retry_policy.retry_on = DEFAULT_RETRY_ON
    action.retry_policy.num_retries.value = DEFAULT_RETRY_ATTEMPTS
    predicate = action.retry_policy.retry_host_predicate.add(name=PREVIOUS_HOSTS)
    predicate.typed_config.CopyFrom(pack(previous_hosts_pb2.PreviousHostsPredicate()))
    action.retry_policy.host_selection_retry_max_attempts = 5
    action.retry_policy.retriable_status_codes.append(503)


def _retries(action: rc.RouteAction, retries: Mapping[str, Any] | None) -> None:
    if retries is None:
        return
    attempts = int(retries.get("attempts", 0))
    if attempts == 0:
        action.ClearField("retry_policy")
        return
    policy = action.retry_policy
    policy.num_retries.value = attempts
    if "retryOn" in retries:
        retry_on = [c.strip() for c in str(retries["retryOn"]).split(",") if c.strip()]
        codes = [c for c in retry_on if c.isdigit()]
        policy.retry_on = ",".join(
            [c for c in retry_on if not c.isdigit()] + (["retriable-status-codes"] if codes else [])
        )
        del policy.retriable_status_codes[:]
        policy.retriable_status_codes.extend(int(c) for c in codes)
    if "perTryTimeout" in retries:
        policy.per_try_timeout.CopyFrom(parse_duration(str(retries["perTryTimeout"])))
    if retries.get("retryRemoteLocalities"):
        policies.retry_remote_localities(policy)


def _redirect(redirect: rc.RedirectAction, spec: Mapping[str, Any]) -> None:
    if "uri" in spec:
        redirect.path_redirect = str(spec["uri"])
    if "authority" in spec:
        redirect.host_redirect = str(spec["authority"])
    if "scheme" in spec:
        redirect.scheme_redirect = str(spec["scheme"])
    if "port" in spec:
        redirect.port_redirect = int(spec["port"])
    codes = {
        301: rc.RedirectAction.MOVED_PERMANENTLY,
        302: rc.RedirectAction.FOUND,
        303: rc.RedirectAction.SEE_OTHER,
        307: rc.RedirectAction.TEMPORARY_REDIRECT,
        308: rc.RedirectAction.PERMANENT_REDIRECT,
    }
    redirect.response_code = codes.get(int(spec.get("redirectCode", 301)), codes[301])


def _headers(route: Any, spec: Mapping[str, Any]) -> None:
    """Header operations on a Route or a weighted cluster (both carry the same fields)."""
    request: Mapping[str, Any] = spec.get("request") or {}
    for op in ("set", "add"):
        for name, value in (request.get(op) or {}).items():
            if name.lower() in ("host", ":authority"):
                action = route.route if isinstance(route, rc.Route) else route
                action.host_rewrite_literal = str(value)
    response: Mapping[str, Any] = spec.get("response") or {}
    _header_ops(route.request_headers_to_add, route.request_headers_to_remove, request)
    _header_ops(route.response_headers_to_add, route.response_headers_to_remove, response)


def _header_ops(add: Any, remove: Any, spec: Mapping[str, Any]) -> None:
    """Envoy refuses to touch `host` and pseudo-headers in these lists (it would reject the
    whole route configuration), so they are left out here; `_headers` turns a request `host`
    into an authority rewrite, as Istio does."""
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    append = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
    for name, value in (spec.get("set") or {}).items():
        if _modifiable(name):
            add.add(header=base_pb2.HeaderValue(key=name, value=str(value)),
                    append_action=overwrite)
    for name, value in (spec.get("add") or {}).items():
        if _modifiable(name):
            add.add(header=base_pb2.HeaderValue(key=name, value=str(value)), append_action=append)
    remove.extend(name for name in spec.get("remove") or () if _modifiable(name))


def _modifiable(name: str) -> bool:
    if name.lower() == "host" or name.startswith(":"):
        log.warning("header %r cannot be set, added or removed; use rewrite.authority", name)
        return False
    return True
