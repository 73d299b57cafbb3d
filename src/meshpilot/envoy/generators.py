"""One generator per xDS type, each behind the same method, registered by type URL.

A generator turns (snapshot, proxy, requested names) into packed resources. Everything that
does not depend on the proxy is serialized once per snapshot and kept in `snapshot.cache`, so
a push to N identical proxies costs one serialization per resource, not N.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from meshpilot.envoy import (
    clusters,
    endpoints,
    envoyfilter,
    gateway,
    listeners,
    names,
    networks,
    proxyless,
    routes,
    sds,
    telemetry,
    wasm,
)
from meshpilot.envoy.names import ClusterName
from meshpilot.envoy.protos import pack
from meshpilot.envoy.scope import destination_rule_for, scope_for
from meshpilot.model import NodeType, Proxy, PushRequest
from meshpilot.model.snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class Resource:
    name: str
    body: Any
    """A packed `google.protobuf.Any`."""
    version: str
    """Digest of the serialized body: equal versions mean identical resources."""


def to_resource(name: str, message: Message) -> Resource:
    body = pack(message)
    return Resource(name, body, hashlib.blake2b(body.value, digest_size=8).hexdigest())


def _cached(snapshot: Snapshot, key: tuple[Any, ...], build: Callable[[], Resource]) -> Resource:
    found: Resource | None = snapshot.cache.get(key)
    if found is None:
        found = snapshot.cache[key] = build()
    return found


def _cached_list(
    snapshot: Snapshot, key: tuple[Any, ...], build: Callable[[], Iterable[Resource]]
) -> list[Resource]:
    found: list[Resource] | None = snapshot.cache.get(key)
    if found is None:
        found = snapshot.cache[key] = list(build())
    return found


class Generator(Protocol):
    type_url: str
    wildcard: bool
    """True for types a client subscribes to as a whole (CDS, LDS)."""

    def generate(
        self, snapshot: Snapshot, proxy: Proxy, names: Collection[str] | None
    ) -> list[Resource]:
        """Resources for the requested names; `None` asks for everything (wildcard)."""
        ...

    def concerns(self, request: PushRequest) -> bool:
        """Whether a push for `request` can change what this type sends."""
        ...


class ClusterGenerator:
    type_url = names.CLUSTER
    wildcard = True

    def generate(
        self, snapshot: Snapshot, proxy: Proxy, names: Collection[str] | None
    ) -> list[Resource]:
        scope = scope_for(snapshot, proxy)
        shared = _cached_list(
            snapshot,
            ("cds-outbound", scope.key, sds.from_agent(proxy.metadata)),
            lambda: [
                to_resource(c.name, c)
                for c in [*clusters.outbound_clusters(snapshot, scope), *clusters.static_clusters()]
            ],
        )
        own = [to_resource(c.name, c) for c in clusters.inbound_clusters(snapshot, proxy)]
        if proxy.type == NodeType.ROUTER:
            passthrough = gateway.auto_passthrough_hosts(snapshot, proxy)
            own += [to_resource(c.name, c)
                    for c in clusters.sni_dnat_clusters(snapshot, scope, passthrough)]
        if not own and names is None:
            return shared  # the shared list itself: the server caches per list (xds/encoding)
        return _select([*shared, *own], names)

    def concerns(self, request: PushRequest) -> bool:
        return request.full and not request.routing_only


class EndpointGenerator:
    type_url = names.ENDPOINT
    wildcard = False

    def generate(
        self, snapshot: Snapshot, proxy: Proxy, names: Collection[str] | None
    ) -> list[Resource]:
        if names is None:
            return []
        if isinstance(names, frozenset):
            # A whole subscription (not the few names of an endpoint-only push): proxies with
            # the same subscription, namespace, locality, labels, network and cluster get one
            # shared list. Those are everything the per-name cache key below depends on.
            key = ("eds-set", names, proxy.namespace, proxy.locality,
                   frozenset(proxy.labels.items()), proxy.network, proxy.cluster_id)
            return _cached_list(snapshot, key, partial(self._generate, snapshot, proxy, names))
        return self._generate(snapshot, proxy, names)

    def _generate(
        self, snapshot: Snapshot, proxy: Proxy, names: Collection[str]
    ) -> list[Resource]:
        return [
            _cached(
                snapshot,
                (
                    "eds", name, _subset_rule(snapshot, name, proxy),
                    *(shape := endpoints.client_shape(snapshot, name, proxy)),
                    proxy.network if networks.active(snapshot) else None,
                    proxy.cluster_id if _cluster_local(snapshot, name) else None,
                ),
                partial(_eds_resource, snapshot, name, proxy, shape),
            )
            for name in sorted(names)
        ]

    def concerns(self, request: PushRequest) -> bool:
        return not request.routing_only


class ListenerGenerator:
    type_url = names.LISTENER
    wildcard = True

    def generate(
        self, snapshot: Snapshot, proxy: Proxy, names: Collection[str] | None
    ) -> list[Resource]:
        if proxy.type == NodeType.ROUTER:
            return _select(_router_listeners(snapshot, proxy), names)
        inbound = listeners.inbound_listeners(snapshot, proxy)
        scope = scope_for(snapshot, proxy)
        # Only inbound addresses on an outbound bind address can collide; keying the cache by
        # those alone lets proxies with different workloads share their outbound listeners.
        binds = {proxy.outbound_bind, *(e.bind for e in scope.egress if e.bind)}
        taken = frozenset(
            (lst.address.socket_address.address, lst.address.socket_address.port_value)
            for lst in inbound
            if lst.address.socket_address.address in binds
        )
        outbound = _cached_list(
            snapshot,
            (
                "lds-outbound", proxy.outbound_bind, taken, scope.key,
                sds.from_agent(proxy.metadata),
                _labels_key(snapshot, proxy), telemetry.for_proxy(snapshot, proxy).key,
                wasm.key(snapshot, proxy),
            ),
            lambda: [
                to_resource(lst.name, lst)
                for lst in listeners.outbound_listeners(snapshot, proxy, set(taken), scope)
            ],
        )
        if not inbound and names is None:
            return outbound  # the shared list itself: the server caches per list (xds/encoding)
        return _select([*outbound, *(to_resource(lst.name, lst) for lst in inbound)], names)

    def concerns(self, request: PushRequest) -> bool:
        return request.full


class RouteGenerator:
    type_url = names.ROUTE
    wildcard = False

    def generate(
        self, snapshot: Snapshot, proxy: Proxy, names: Collection[str] | None
    ) -> list[Resource]:
        if names is None:
            return []
        if proxy.type == NodeType.ROUTER:
            return [_router_route(snapshot, proxy, name) for name in sorted(names)]
        # Routes depend on the proxy's namespace (short host names, sourceNamespace), and on its
        # labels only when some VirtualService matches on sourceLabels.
        identity = (proxy.namespace, _labels_key(snapshot, proxy), scope_for(snapshot, proxy).key)
        if isinstance(names, frozenset):
            # A whole subscription: one shared list per (names, identity), as for EDS.
            return _cached_list(
                snapshot, ("rds-set", names, identity),
                partial(self._generate, snapshot, proxy, names, identity),
            )
        return self._generate(snapshot, proxy, names, identity)

    def _generate(
        self, snapshot: Snapshot, proxy: Proxy, names: Collection[str], identity: tuple[Any, ...]
    ) -> list[Resource]:
        return [
            _cached(
                snapshot,
                ("rds", name, identity),
                partial(_route_resource, snapshot, proxy, name),
            )
            for name in sorted(names)
        ]

    def concerns(self, request: PushRequest) -> bool:
        return request.full


class SecretGenerator:
    """SDS: the proxy's workload certificate and the mesh root (envoy/sds.py), cached per
    snapshot by identity and serial, so a rotation changes only this type's resources."""

    type_url = names.SECRET
    wildcard = False

    def generate(
        self, snapshot: Snapshot, proxy: Proxy, names: Collection[str] | None
    ) -> list[Resource]:
        if names is None or proxy.proxyless:
            return []
        return [
            _cached(snapshot, key, partial(_built_resource, name, build))
            for key, name, build in sds.secrets(snapshot, proxy, names)
        ]

    def concerns(self, request: PushRequest) -> bool:
        return request.full


def _built_resource(name: str, build: Callable[[], Message]) -> Resource:
    return to_resource(name, build())


def _labels_key(snapshot: Snapshot, proxy: Proxy) -> frozenset[tuple[str, str]] | None:
    """A proxy's labels matter to its routes and listeners only where some VirtualService
    matches on sourceLabels; otherwise proxies of a namespace share them."""
    return frozenset(proxy.labels.items()) if snapshot.routes_use_source_labels else None


def _eds_resource(
    snapshot: Snapshot, name: str, proxy: Proxy, shape: endpoints.ClientShape
) -> Resource:
    client, failover = shape
    assignment = endpoints.load_assignment(
        snapshot, name, proxy.namespace, client, proxy.labels, proxy.network, proxy.cluster_id,
        dict(failover) if failover is not None else None,
    )
    return to_resource(name, assignment)


def _cluster_local(snapshot: Snapshot, name: str) -> bool:
    parsed = ClusterName.parse(name)
    return parsed is not None and snapshot.mesh.cluster_local(parsed.host)


def _subset_rule(snapshot: Snapshot, name: str, proxy: Proxy) -> str:
    """Which DestinationRule defines a subset cluster's endpoints for this client: part of the
    EDS cache key, so clients that see different rules never share a result."""
    parsed = ClusterName.parse(name)
    if parsed is None or not parsed.subset:
        return ""
    rule = destination_rule_for(snapshot, parsed.host, proxy.namespace, proxy.labels)
    return str(rule.key) if rule is not None else ""


def _route_resource(snapshot: Snapshot, proxy: Proxy, name: str) -> Resource:
    return to_resource(name, routes.route_config(snapshot, proxy, name))


# Routers (ingress gateways) get Gateway listeners and routes instead of the sidecar ones. What
# they receive depends on the Gateways their labels select, their namespace (credentials,
# exportTo), the address they bind and their labels (sourceLabels): replicas of one router
# share every resource.


def _router_identity(proxy: Proxy) -> tuple[Any, ...]:
    return (proxy.namespace, proxy.outbound_bind, frozenset(proxy.labels.items()))


def _router_listeners(snapshot: Snapshot, proxy: Proxy) -> list[Resource]:
    return _cached_list(
        snapshot,
        ("lds-router", _router_identity(proxy), sds.from_agent(proxy.metadata)),
        lambda: [to_resource(lst.name, lst) for lst in gateway.listeners_for(snapshot, proxy)],
    )


def _router_route(snapshot: Snapshot, proxy: Proxy, name: str) -> Resource:
    return _cached(
        snapshot,
        ("rds-router", name, _router_identity(proxy)),
        lambda: to_resource(name, gateway.route_config(snapshot, proxy, name)),
    )


def _select(resources: list[Resource], names: Collection[str] | None) -> list[Resource]:
    if names is None:
        return resources
    wanted = set(names)
    return [r for r in resources if r.name in wanted]


GENERATORS: dict[str, Generator] = {
    g.type_url: g
    for g in (
        ClusterGenerator(), EndpointGenerator(), ListenerGenerator(), RouteGenerator(),
        SecretGenerator(),
    )
}


# Proxyless gRPC clients (node metadata GENERATOR=grpc) get envoy/proxyless.py's resources
# instead. Each is derived from what the Envoy generators above produce for the same proxy, so
# Sidecar scoping and VirtualService/DestinationRule semantics are decided in one place, and is
# converted once per snapshot and source version: identical sources are converted once.


class ProxylessDispatch:
    """One type's generator for both kinds of client: Envoy proxies and gRPC channels."""

    def __init__(self, envoy: Generator) -> None:
        self.envoy = envoy
        self.type_url = envoy.type_url
        self.wildcard = envoy.wildcard

    def generate(
        self, snapshot: Snapshot, proxy: Proxy, names: Collection[str] | None
    ) -> list[Resource]:
        build = _PROXYLESS.get(self.type_url) if proxy.proxyless else None
        if build is None:
            # EDS is the same for both: gRPC reads ClusterLoadAssignments as Envoy does.
            return self.envoy.generate(snapshot, proxy, names)
        return build(snapshot, proxy, names)

    def concerns(self, request: PushRequest) -> bool:
        return self.envoy.concerns(request)


_ABSENT = object()


def _cached_optional(
    snapshot: Snapshot, key: tuple[Any, ...], build: Callable[[], Resource | None]
) -> Resource | None:
    found = snapshot.cache.get(key, _ABSENT)
    if found is _ABSENT:
        found = snapshot.cache[key] = build()
    assert found is None or isinstance(found, Resource)
    return found


def _visible_clusters(snapshot: Snapshot, proxy: Proxy, wanted: Collection[str] | None) -> set[str]:
    """Outbound cluster names an Envoy in this proxy's place would get: what it may reach."""
    prefix = f"{names.OUTBOUND}|"
    return {
        r.name
        for r in _ENVOY[names.CLUSTER].generate(snapshot, proxy, wanted)
        if r.name.startswith(prefix)
    }


def _grpc_clusters(
    snapshot: Snapshot, proxy: Proxy, wanted: Collection[str] | None
) -> list[Resource]:
    out = []
    for source in _ENVOY[names.CLUSTER].generate(snapshot, proxy, wanted):
        if not source.name.startswith(f"{names.OUTBOUND}|"):
            continue  # inbound and static clusters mean nothing to a gRPC channel
        found = _cached_optional(
            snapshot, ("grpc-cds", source.name, source.version), partial(_grpc_cluster, source)
        )
        if found is not None:
            out.append(found)
    return out


def _grpc_cluster(source: Resource) -> Resource | None:
    cluster = cluster_pb2.Cluster()
    source.body.Unpack(cluster)
    converted = proxyless.grpc_cluster(cluster)
    return to_resource(converted.name, converted) if converted is not None else None


def _grpc_listeners(
    snapshot: Snapshot, proxy: Proxy, wanted: Collection[str] | None
) -> list[Resource]:
    if wanted is None:
        # Not something gRPC asks for, but a wildcard request (e.g. from a debugging tool)
        # gets one listener per reachable service port.
        targets: dict[str, tuple[str, int]] = {}
        for cluster in _visible_clusters(snapshot, proxy, None):
            parsed = ClusterName.parse(cluster)
            if parsed is not None and not parsed.subset:
                targets[f"{parsed.host}:{parsed.port}"] = (parsed.host, parsed.port)
    else:
        index = _target_index(snapshot, proxy.namespace)
        targets = {n: index[n.lower()] for n in wanted if n.lower() in index}
    visible = _visible_clusters(
        snapshot, proxy, [proxyless.route_name(host, port) for host, port in targets.values()]
    )
    return [
        _cached(snapshot, ("grpc-lds", name, host, port), partial(_grpc_listener, name, host, port))
        for name, (host, port) in sorted(targets.items())
        if proxyless.route_name(host, port) in visible
    ]


def _grpc_listener(name: str, host: str, port: int) -> Resource:
    return to_resource(name, proxyless.api_listener(name, host, port))


def _target_index(snapshot: Snapshot, namespace: str) -> proxyless.TargetIndex:
    key = ("grpc-targets", namespace)
    found: proxyless.TargetIndex | None = snapshot.cache.get(key)
    if found is None:
        found = snapshot.cache[key] = proxyless.target_index(snapshot.services.values(), namespace)
    return found


def _grpc_routes(
    snapshot: Snapshot, proxy: Proxy, wanted: Collection[str] | None
) -> list[Resource]:
    if wanted is None:
        return []
    out = []
    for name in sorted(wanted):
        parsed = ClusterName.parse(name)
        if parsed is None or parsed.direction != names.OUTBOUND or parsed.subset:
            out.append(to_resource(name, route_pb2.RouteConfiguration(name=name)))
            continue
        # The sidecar configuration of the port, and whether this proxy may reach the service.
        (source,) = _ENVOY[names.ROUTE].generate(snapshot, proxy, [str(parsed.port)])
        reachable = bool(_visible_clusters(snapshot, proxy, [name]))
        out.append(
            _cached(
                snapshot,
                ("grpc-rds", name, source.version, reachable),
                partial(_grpc_route_config, snapshot, name, parsed, source, reachable),
            )
        )
    return out


def _grpc_route_config(
    snapshot: Snapshot, name: str, target: ClusterName, source: Resource, reachable: bool
) -> Resource:
    key = ("grpc-rds-source", source.version)
    hosts: dict[str, route_pb2.VirtualHost] | None = snapshot.cache.get(key)
    if hosts is None:
        config = route_pb2.RouteConfiguration()
        source.body.Unpack(config)
        hosts = snapshot.cache[key] = proxyless.virtual_hosts_by_domain(config)
    vhost = hosts.get(target.host)
    if vhost is not None:
        found: list[Any] = list(vhost.routes)
    else:
        # No sidecar virtual host: a port that is not HTTP to Envoy (gRPC speaks HTTP/2 to it
        # all the same) gets the default route; a service out of reach gets no routes.
        found = [routes.default_route(target.host, target.port)] if reachable else []
    where = f"{target.host}:{target.port}"
    return to_resource(name, proxyless.route_config(name, found, where))


class ExtensionConfigGenerator:
    """ECDS: WasmPlugin filter configs by name (envoy/wasm.py), the same for every proxy."""

    type_url = names.EXTENSION
    wildcard = False

    def generate(
        self, snapshot: Snapshot, proxy: Proxy, names: Collection[str] | None
    ) -> list[Resource]:
        every = _cached_list(
            snapshot, ("ecds",),
            lambda: [to_resource(c.name, c) for c in wasm.extension_configs(snapshot, None)],
        )
        return _select(every, names)

    def concerns(self, request: PushRequest) -> bool:
        return request.full


GENERATORS[names.EXTENSION] = ExtensionConfigGenerator()


_ENVOY: dict[str, Generator] = dict(GENERATORS)
_PROXYLESS: dict[str, Callable[[Snapshot, Proxy, Collection[str] | None], list[Resource]]] = {
    names.CLUSTER: _grpc_clusters,
    names.LISTENER: _grpc_listeners,
    names.ROUTE: _grpc_routes,
}
GENERATORS = {url: ProxylessDispatch(generator) for url, generator in _ENVOY.items()}


class EnvoyFilterStage:
    """EnvoyFilter patches on top of everything else (envoy/envoyfilter.py). A proxy no
    EnvoyFilter selects gets the shared, cached resources untouched."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner
        self.type_url = inner.type_url
        self.wildcard = inner.wildcard

    def generate(
        self, snapshot: Snapshot, proxy: Proxy, names: Collection[str] | None
    ) -> list[Resource]:
        resources = self.inner.generate(snapshot, proxy, names)
        if proxy.proxyless or not snapshot.envoy_filters:
            return resources
        filters = envoyfilter.filters_for(snapshot, proxy)
        if not filters:
            return resources
        # Patching reads the resources, the EnvoyFilters that select the proxy and its type
        # (the patch context): proxies equal in those share one patched list, so their
        # responses stay shared too (xds/encoding) instead of one copy per proxy.
        key = (
            "envoyfilter", self.type_url, id(resources),
            tuple((str(f.key), f.resource_version) for f in filters), proxy.type,
            None if names is None else frozenset(names),
        )
        found: tuple[list[Resource], list[Resource]] | None = snapshot.cache.get(key)
        if found is not None and found[0] is resources:
            return found[1]
        patched = envoyfilter.apply(snapshot, proxy, self.type_url, resources, names)
        result = resources if patched is None else [
            to_resource(name, message) for name, message in patched
        ]
        snapshot.cache[key] = (resources, result)  # `resources` kept: its id stays unique
        return result

    def concerns(self, request: PushRequest) -> bool:
        return self.inner.concerns(request)


GENERATORS = {url: EnvoyFilterStage(generator) for url, generator in GENERATORS.items()}


class SecretSourceStage:
    """Builds a proxy's resources with its secrets' source (envoy/sds.py): ADS, or its agent's
    local SDS. The shared caches above carry the same choice in their keys."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner
        self.type_url = inner.type_url
        self.wildcard = inner.wildcard

    def generate(
        self, snapshot: Snapshot, proxy: Proxy, names: Collection[str] | None
    ) -> list[Resource]:
        if not sds.from_agent(proxy.metadata):
            return self.inner.generate(snapshot, proxy, names)  # ADS: the default source
        with sds.secrets_source(True):
            return self.inner.generate(snapshot, proxy, names)

    def concerns(self, request: PushRequest) -> bool:
        return self.inner.concerns(request)


GENERATORS = {url: SecretSourceStage(generator) for url, generator in GENERATORS.items()}
