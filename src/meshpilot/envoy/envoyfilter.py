"""Istio's EnvoyFilter: patches applied to a proxy's generated Envoy config, last of all.

An EnvoyFilter in the root namespace without a selector applies to every proxy; one in a
proxy's namespace applies to the proxies there (all of them, or those its `workloadSelector`
matches). They apply root namespace first, then by `priority`, then by name, and each
`configPatch` in order:

- `applyTo` CLUSTER, LISTENER, FILTER_CHAIN, NETWORK_FILTER, HTTP_FILTER, LISTENER_FILTER,
  ROUTE_CONFIGURATION, VIRTUAL_HOST or HTTP_ROUTE;
- `match`: `context` (SIDECAR_INBOUND, SIDECAR_OUTBOUND, GATEWAY, ANY) and the object's
  identity (listener port and name, filter chain SNI and transport protocol, filter and
  sub-filter names; route configuration port, name and virtual host and route names; cluster
  port, service, subset and name);
- `patch.operation` MERGE (proto merge, reaching into typed configs of the same type), ADD,
  REMOVE, INSERT_BEFORE, INSERT_AFTER, INSERT_FIRST or REPLACE, with `value` in Envoy's proto
  JSON (`@type` for typed configs).

A patch that matches nothing in a proxy's config is logged once per config version, naming the
EnvoyFilter, the patch and the proxy: the usual reason an EnvoyFilter "does nothing". Patched
resources are built per proxy, so only proxies an EnvoyFilter selects pay for it. Route
patches apply to routes delivered by RDS (sidecar outbound and gateway routes).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format
from google.protobuf.message import Message

from meshpilot.envoy import names
from meshpilot.model import Config, NodeType, Proxy
from meshpilot.model.snapshot import Snapshot

log = logging.getLogger("meshpilot.envoy")

KIND = "EnvoyFilter"
HCM = "envoy.filters.network.http_connection_manager"

_MESSAGES: dict[str, type[Message]] = {
    names.CLUSTER: cluster_pb2.Cluster,
    names.LISTENER: listener_pb2.Listener,
    names.ROUTE: route_pb2.RouteConfiguration,
}
_APPLIES_TO = {
    names.CLUSTER: {"CLUSTER"},
    names.LISTENER: {"LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER",
                     "LISTENER_FILTER"},
    names.ROUTE: {"ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE"},
}
_warned: set[tuple[Any, ...]] = set()


@dataclass(frozen=True, slots=True)
class Patch:
    source: Config
    index: int
    apply_to: str
    match: Mapping[str, Any]
    operation: str
    value: Mapping[str, Any]

    @property
    def where(self) -> str:
        return f"EnvoyFilter {self.source.namespace}/{self.source.name} configPatches[{self.index}]"


def filters_for(snapshot: Snapshot, proxy: Proxy) -> list[Config]:
    root = snapshot.mesh.root_namespace
    chosen = []
    for config in snapshot.envoy_filters:
        selector = (config.spec.get("workloadSelector") or {}).get("labels") or {}
        if selector and not all(proxy.labels.get(k) == v for k, v in selector.items()):
            continue
        if config.namespace == root or config.namespace == proxy.namespace:
            chosen.append(config)
    return sorted(chosen, key=lambda c: (c.namespace != root, int(c.spec.get("priority") or 0),
                                         c.name))


def patches_for(snapshot: Snapshot, proxy: Proxy, type_url: str) -> list[Patch]:
    wanted = _APPLIES_TO.get(type_url, set())
    out = []
    for config in filters_for(snapshot, proxy):
        for index, raw in enumerate(config.spec.get("configPatches") or ()):
            if raw.get("applyTo") in wanted:
                patch = raw.get("patch") or {}
                out.append(Patch(config, index, str(raw["applyTo"]), raw.get("match") or {},
                                 str(patch.get("operation", "MERGE")), patch.get("value") or {}))
    return out


def apply(
    snapshot: Snapshot, proxy: Proxy, type_url: str, resources: list[Any],
    names_wanted: Collection[str] | None,
) -> list[tuple[str, Message]] | None:
    """The patched resources as (name, message), or None when no patch applies."""
    patches = patches_for(snapshot, proxy, type_url)
    if not patches:
        return None
    kind = _MESSAGES[type_url]
    messages: list[Any] = []
    for resource in resources:
        message = kind()
        resource.body.Unpack(message)
        messages.append(message)
    for patch in patches:
        matched = _apply_one(patch, proxy, type_url, messages, names_wanted)
        once = (patch.source.key, patch.index, proxy.id, str(patch.match), str(patch.value))
        if not matched and once not in _warned:
            _warned.add(once)
            log.warning("%s (%s %s, context %s) matched nothing in the config of %s",
                        patch.where, patch.operation, patch.apply_to,
                        patch.match.get("context", "ANY"), proxy.id)
    return [(str(m.name), m) for m in messages]


# --- Matching ----------------------------------------------------------------------------------


def _context_ok(match: Mapping[str, Any], proxy: Proxy, direction: str) -> bool:
    context = str(match.get("context", "ANY"))
    if context == "ANY":
        return True
    if context == "GATEWAY":
        return proxy.type == NodeType.ROUTER
    if proxy.type == NodeType.ROUTER:
        return False
    return context == f"SIDECAR_{direction}"


def _listener_direction(listener: Any) -> str:
    return "INBOUND" if listener.traffic_direction == base_pb2.INBOUND else "OUTBOUND"


def _listener_ok(match: Mapping[str, Any], listener: Any) -> bool:
    spec: Mapping[str, Any] = match.get("listener") or {}
    if "portNumber" in spec and listener.address.socket_address.port_value != int(
            spec["portNumber"]):
        return False
    return not ("name" in spec and listener.name != spec["name"])


def _chain_ok(spec: Mapping[str, Any], chain: Any) -> bool:
    fcm = chain.filter_chain_match
    if "name" in spec and chain.name != spec["name"]:
        return False
    if "sni" in spec and spec["sni"] not in fcm.server_names:
        return False
    if "transportProtocol" in spec and fcm.transport_protocol != spec["transportProtocol"]:
        return False
    return not ("destinationPort" in spec and fcm.destination_port.value != int(
        spec["destinationPort"]))


def _cluster_ok(match: Mapping[str, Any], cluster: Any, proxy: Proxy) -> bool:
    spec: Mapping[str, Any] = match.get("cluster") or {}
    parsed = names.ClusterName.parse(cluster.name)
    direction = "INBOUND" if parsed is not None and parsed.direction == names.INBOUND \
        else "OUTBOUND"
    if not _context_ok(match, proxy, direction):
        return False
    if "name" in spec and cluster.name != spec["name"]:
        return False
    if parsed is None:
        return not ({"portNumber", "service", "subset"} & spec.keys())
    if "portNumber" in spec and parsed.port != int(spec["portNumber"]):
        return False
    if "service" in spec and parsed.host != spec["service"]:
        return False
    return not ("subset" in spec and parsed.subset != spec["subset"])


def _route_config_ok(match: Mapping[str, Any], config: Any, proxy: Proxy) -> bool:
    if not _context_ok(match, proxy, "OUTBOUND"):
        return False
    spec: Mapping[str, Any] = match.get("routeConfiguration") or {}
    if "name" in spec and config.name != spec["name"]:
        return False
    name = str(config.name)
    port = str(spec.get("portNumber", ""))
    # Sidecar route configurations are named by port (`9080`), gateway ones end with it.
    return not port or name == port or name.split(".")[1:2] == [port]


# --- Applying ----------------------------------------------------------------------------------


def _apply_one(patch: Patch, proxy: Proxy, type_url: str, messages: list[Any],
               names_wanted: Collection[str] | None) -> bool:
    op, to, match = patch.operation, patch.apply_to, patch.match
    if to == "CLUSTER":
        if op == "ADD":
            if _context_ok(match, proxy, "OUTBOUND"):
                added = _parse(patch.value, cluster_pb2.Cluster)
                if names_wanted is None or added.name in names_wanted:
                    messages.append(added)
                return True
            return False
        hits = [m for m in messages if _cluster_ok(match, m, proxy)]
        return _on_elements(patch, messages, hits)
    if to == "LISTENER":
        if op == "ADD":
            messages.append(_parse(patch.value, listener_pb2.Listener))
            return True
        hits = [m for m in messages if _context_ok(match, proxy, _listener_direction(m))
                and _listener_ok(match, m)]
        return _on_elements(patch, messages, hits)
    if type_url == names.LISTENER:
        return _listener_parts(patch, proxy, messages)
    return _route_parts(patch, proxy, messages)


def _on_elements(patch: Patch, container: list[Any], hits: list[Any]) -> bool:
    """MERGE or REMOVE (or REPLACE) top-level resources."""
    for hit in hits:
        if patch.operation == "MERGE":
            _merge(hit, patch.value)
        elif patch.operation == "REMOVE":
            container.remove(hit)
        elif patch.operation == "REPLACE":
            container[container.index(hit)] = _parse(patch.value, type(hit))
    return bool(hits)


def _listener_parts(patch: Patch, proxy: Proxy, listeners: list[Any]) -> bool:
    chain_spec: Mapping[str, Any] = (patch.match.get("listener") or {}).get("filterChain") or {}
    filter_spec: Mapping[str, Any] = chain_spec.get("filter") or {}
    matched = False
    for listener in listeners:
        if not (_context_ok(patch.match, proxy, _listener_direction(listener))
                and _listener_ok(patch.match, listener)):
            continue
        if patch.apply_to == "LISTENER_FILTER":
            matched |= _sequence(patch, listener.listener_filters,
                                 listener_components_pb2.ListenerFilter, None)
            continue
        chains = [c for c in listener.filter_chains if _chain_ok(chain_spec, c)]
        if patch.apply_to == "FILTER_CHAIN":
            if patch.operation == "ADD":
                listener.filter_chains.append(
                    _parse(patch.value, listener_components_pb2.FilterChain))
                matched = True
            else:
                for chain in chains:
                    matched = True
                    if patch.operation == "MERGE":
                        _merge(chain, patch.value)
                    elif patch.operation == "REMOVE":
                        listener.filter_chains.remove(chain)
            continue
        for chain in chains:
            if patch.apply_to == "NETWORK_FILTER":
                matched |= _sequence(patch, chain.filters, listener_components_pb2.Filter,
                                     filter_spec.get("name"))
            elif patch.apply_to == "HTTP_FILTER":
                matched |= _http_filter(patch, chain, filter_spec)
    return matched


def _http_filter(patch: Patch, chain: Any, filter_spec: Mapping[str, Any]) -> bool:
    if filter_spec.get("name", HCM) != HCM:
        return False
    matched = False
    for network_filter in chain.filters:
        if network_filter.name != HCM:
            continue
        manager = hcm_pb2.HttpConnectionManager()
        network_filter.typed_config.Unpack(manager)
        sub = (filter_spec.get("subFilter") or {}).get("name")
        if _sequence(patch, manager.http_filters, hcm_pb2.HttpFilter, sub):
            matched = True
            network_filter.typed_config.Pack(manager)
    return matched


def _sequence(patch: Patch, items: Any, kind: type[Message], anchor: str | None) -> bool:
    """Insert, add, merge, replace or remove within a list of named elements."""
    op = patch.operation
    index = next((i for i, item in enumerate(items) if anchor is None or item.name == anchor),
                 None)
    if op in ("ADD", "INSERT_FIRST"):
        value = _parse(patch.value, kind)
        if op == "ADD":
            items.append(value)
        else:
            items.insert(0, value)
        return True
    if index is None:
        return False
    if op in ("INSERT_BEFORE", "INSERT_AFTER"):
        items.insert(index + (op == "INSERT_AFTER"), _parse(patch.value, kind))
    elif op == "MERGE":
        _merge(items[index], patch.value)
    elif op == "REMOVE":
        del items[index]
    elif op == "REPLACE":
        items[index].CopyFrom(_parse(patch.value, kind))
    return True


def _route_parts(patch: Patch, proxy: Proxy, configs: list[Any]) -> bool:
    spec: Mapping[str, Any] = patch.match.get("routeConfiguration") or {}
    vhost_spec: Mapping[str, Any] = spec.get("vhost") or {}
    matched = False
    for config in configs:
        if not _route_config_ok(patch.match, config, proxy):
            continue
        if patch.apply_to == "ROUTE_CONFIGURATION":
            matched = True
            _merge(config, patch.value)
            continue
        if patch.apply_to == "VIRTUAL_HOST" and patch.operation == "ADD":
            config.virtual_hosts.append(_parse(patch.value, route_components_pb2.VirtualHost))
            matched = True
            continue
        hosts = [v for v in config.virtual_hosts
                 if "name" not in vhost_spec or v.name == vhost_spec["name"]]
        for vhost in hosts:
            if patch.apply_to == "VIRTUAL_HOST":
                matched = True
                if patch.operation == "MERGE":
                    _merge(vhost, patch.value)
                elif patch.operation == "REMOVE":
                    config.virtual_hosts.remove(vhost)
            else:
                anchor = (vhost_spec.get("route") or {}).get("name")
                matched |= _sequence(patch, vhost.routes, route_components_pb2.Route, anchor)
    return matched


# --- Proto JSON --------------------------------------------------------------------------------


def _parse(value: Mapping[str, Any], kind: type[Message]) -> Any:
    _load_types(value)
    return json_format.ParseDict(dict(value), kind())


def _merge(message: Any, value: Mapping[str, Any]) -> None:
    """Proto merge semantics, but reaching into Any fields of the same type (as Istio does):
    merging `typed_config` of an HCM changes one HCM field, not the whole config."""
    _load_types(value)
    merged = _deep_merge(json_format.MessageToDict(message, preserving_proto_field_name=True),
                         _snake(value))
    message.Clear()
    json_format.ParseDict(merged, message)


def _deep_merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        if "@type" in patch and base.get("@type") not in (None, patch["@type"]):
            return patch  # a different type replaces the whole Any
        out = dict(base)
        for key, value in patch.items():
            out[key] = _deep_merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list):
        return [*base, *patch]  # repeated fields append, as in proto merge
    return patch


def _snake(value: Any) -> Any:
    """Proto JSON accepts camelCase; merging compares with snake_case field names."""
    if isinstance(value, dict):
        return {(k if k.startswith("@") or "_" in k else _to_snake(k)): _snake(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_snake(v) for v in value]
    return value


def _to_snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _load_types(value: Any) -> None:
    """Import the proto modules of every `@type` in a value, so JSON can name any Envoy type."""
    if isinstance(value, Mapping):
        type_url = value.get("@type")
        if isinstance(type_url, str):
            package = type_url.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            try:
                module = importlib.import_module(package)
                for info in pkgutil.iter_modules(module.__path__):
                    if info.name.endswith("_pb2"):
                        importlib.import_module(f"{package}.{info.name}")
            except ImportError:
                pass  # ParseDict then names the unknown type
        for item in value.values():
            _load_types(item)
    elif isinstance(value, list):
        for item in value:
            _load_types(item)
