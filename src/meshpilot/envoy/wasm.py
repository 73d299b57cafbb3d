"""Istio's WasmPlugin, delivered through extension config discovery (ECDS).

A plugin applies to proxies its `selector.matchLabels` (or, without one, its namespace; the
root namespace's apply everywhere) select, on the traffic `match` names: `mode` CLIENT
(outbound and gateway listeners), SERVER (inbound) or both, optionally only some `ports`.
Each HTTP connection manager it applies to gets a filter entry that names the plugin
(`<namespace>.<name>`) and asks for its config over ECDS, placed by `phase` — AUTHN first,
AUTHZ before the RBAC filter, STATS and unspecified just before the router — then by
`priority` (higher first). The config itself, a `TypedExtensionConfig` holding Envoy's Wasm
filter config with the module's bytes inline and `pluginConfig` as JSON, is its own xDS
resource: changing a plugin sends that resource alone, and listeners stay as they are.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from envoy.config.core.v3 import config_source_pb2, extension_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as wasm_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import wrappers_pb2

from meshpilot.envoy.protos import duration, pack
from meshpilot.model import Config, NodeType, Proxy
from meshpilot.model.snapshot import Snapshot

WASM_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
ROUTER = "envoy.filters.http.router"
RBAC = "envoy.filters.http.rbac"


def resource_name(plugin: Config) -> str:
    return f"{plugin.namespace}.{plugin.name}"


def _module(snapshot: Snapshot, plugin: Config) -> bytes | None:
    return snapshot.wasm_modules.get(
        (str(plugin.spec.get("url", "")), str(plugin.spec.get("sha256", "")))
    )


def plugins_for(snapshot: Snapshot, proxy: Proxy, mode: str, port: int) -> list[Config]:
    """Plugins for one connection manager (mode CLIENT or SERVER), whose module is loaded."""
    root = snapshot.mesh.root_namespace
    chosen = []
    for plugin in snapshot.wasm_plugins:
        selector: Mapping[str, str] = (plugin.spec.get("selector") or {}).get(
            "matchLabels") or {}
        if plugin.namespace not in (proxy.namespace, root):
            continue
        if not all(proxy.labels.get(k) == v for k, v in selector.items()):
            continue
        if str(plugin.spec.get("type", "HTTP")).upper() != "HTTP":
            continue
        if not _traffic_matches(plugin, mode, port) or _module(snapshot, plugin) is None:
            continue
        chosen.append(plugin)
    return chosen


def _traffic_matches(plugin: Config, mode: str, port: int) -> bool:
    rules = plugin.spec.get("match") or [{}]
    for rule in rules:
        wanted = str(rule.get("mode", "CLIENT_AND_SERVER"))
        ports = [int(p["number"]) for p in rule.get("ports") or ()]
        if wanted in (mode, "CLIENT_AND_SERVER", "UNDEFINED") and (not ports or port in ports):
            return True
    return False


def key(snapshot: Snapshot, proxy: Proxy) -> tuple[Any, ...]:
    """What a proxy's listeners depend on: which plugins select it."""
    if not snapshot.wasm_plugins:
        return ()
    return tuple(sorted(resource_name(p) for p in snapshot.wasm_plugins
                        if p.namespace in (proxy.namespace, snapshot.mesh.root_namespace)))


def apply(manager: hcm_pb2.HttpConnectionManager, snapshot: Snapshot, proxy: Proxy,
          mode: str, port: int) -> None:
    """Insert ECDS filter entries for the plugins that apply, by phase and priority."""
    if proxy.type == NodeType.ROUTER:
        mode = "CLIENT"
    plugins = sorted(plugins_for(snapshot, proxy, mode, port),
                     key=lambda p: -int(p.spec.get("priority") or 0))
    for plugin in plugins:
        entry = hcm_pb2.HttpFilter(name=resource_name(plugin))
        discovery = entry.config_discovery
        discovery.config_source.ads.SetInParent()
        discovery.config_source.resource_api_version = config_source_pb2.V3
        discovery.config_source.initial_fetch_timeout.CopyFrom(duration(10))
        discovery.type_urls.append(WASM_FILTER_TYPE)
        names = [f.name for f in manager.http_filters]
        phase = str(plugin.spec.get("phase", "UNSPECIFIED_PHASE"))
        if phase == "AUTHN":
            index = 0
        elif phase == "AUTHZ" and RBAC in names:
            index = names.index(RBAC)
        else:
            index = names.index(ROUTER) if ROUTER in names else len(names)
        manager.http_filters.insert(index, entry)


def extension_configs(snapshot: Snapshot, names: Collection[str] | None
                      ) -> list[extension_pb2.TypedExtensionConfig]:
    out = []
    for plugin in snapshot.wasm_plugins:
        name = resource_name(plugin)
        module = _module(snapshot, plugin)
        if module is None or (names is not None and name not in names):
            continue
        config = wasm_filter_pb2.Wasm()
        plugin_config = config.config
        plugin_config.name = name
        plugin_config.root_id = str(plugin.spec.get("pluginName") or "")
        vm = plugin_config.vm_config
        vm.runtime = "envoy.wasm.runtime.v8"
        vm.vm_id = name
        vm.code.local.inline_bytes = module
        for env in ((plugin.spec.get("vmConfig") or {}).get("env") or ()):
            if env.get("value") is not None:
                vm.environment_variables.key_values[str(env["name"])] = str(env["value"])
        if plugin.spec.get("pluginConfig") is not None:
            value = plugin.spec["pluginConfig"]
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            plugin_config.configuration.CopyFrom(pack(wrappers_pb2.StringValue(value=text)))
        plugin_config.fail_open = str(plugin.spec.get("failStrategy", "FAIL_CLOSE")) == (
            "FAIL_OPEN")
        out.append(extension_pb2.TypedExtensionConfig(name=name, typed_config=pack(config)))
    return out
