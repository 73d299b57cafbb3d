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

from google.protobuf.message import Message

from meshpilot.envoy import clusters, endpoints, listeners, names, routes
from meshpilot.envoy.protos import pack
from meshpilot.model import Proxy, PushRequest
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
        shared = _cached_list(
            snapshot,
            ("cds-outbound",),
            lambda: [
                to_resource(c.name, c)
                for c in [*clusters.outbound_clusters(snapshot), *clusters.static_clusters()]
            ],
        )
        own = [to_resource(c.name, c) for c in clusters.inbound_clusters(snapshot, proxy)]
        return _select([*shared, *own], names)

    def concerns(self, request: PushRequest) -> bool:
        return request.full


class EndpointGenerator:
    type_url = names.ENDPOINT
    wildcard = False

    def generate(
        self, snapshot: Snapshot, proxy: Proxy, names: Collection[str] | None
    ) -> list[Resource]:
        if names is None:
            return []
        return [
            _cached(
                snapshot,
                ("eds", name),
                partial(_eds_resource, snapshot, name),
            )
            for name in sorted(names)
        ]

    def concerns(self, request: PushRequest) -> bool:
        return True


class ListenerGenerator:
    type_url = names.LISTENER
    wildcard = True

    def generate(
        self, snapshot: Snapshot, proxy: Proxy, names: Collection[str] | None
    ) -> list[Resource]:
        inbound = listeners.inbound_listeners(snapshot, proxy)
        taken = frozenset(
            (lst.address.socket_address.address, lst.address.socket_address.port_value)
            for lst in inbound
        )
        outbound = _cached_list(
            snapshot,
            ("lds-outbound", proxy.outbound_bind, taken),
            lambda: [
                to_resource(lst.name, lst)
                for lst in listeners.outbound_listeners(snapshot, proxy, set(taken))
            ],
        )
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
        # Routes depend on the proxy's namespace (short host names, sourceNamespace), and on its
        # labels only when some VirtualService matches on sourceLabels.
        labels = frozenset(proxy.labels.items()) if snapshot.routes_use_source_labels else None
        identity = (proxy.namespace, labels)
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


def _eds_resource(snapshot: Snapshot, name: str) -> Resource:
    return to_resource(name, endpoints.load_assignment(snapshot, name))


def _route_resource(snapshot: Snapshot, proxy: Proxy, name: str) -> Resource:
    return to_resource(name, routes.route_config(snapshot, proxy, name))


def _select(resources: list[Resource], names: Collection[str] | None) -> list[Resource]:
    if names is None:
        return resources
    wanted = set(names)
    return [r for r in resources if r.name in wanted]


GENERATORS: dict[str, Generator] = {
    g.type_url: g
    for g in (ClusterGenerator(), EndpointGenerator(), ListenerGenerator(), RouteGenerator())
}
