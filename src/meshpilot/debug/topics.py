"""The debug topics: each a function from the live server (and query parameters) to JSON data.

Served over HTTP by `debug/http.py` and over ADS by `debug/xds.py`, so both always agree.
`TOPICS` lists each path once with a description; `/debug/list` shows them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from meshpilot.agent.node import SERVICE_ACCOUNT
from meshpilot.analysis.live import server_inputs
from meshpilot.analysis.meshconfig import MeshConfig
from meshpilot.debug import syncz
from meshpilot.debug.configdump import config_dump_json
from meshpilot.debug.routestatus import route_status
from meshpilot.envoy import networks
from meshpilot.envoy.names import SHORT_NAMES
from meshpilot.xds.connection import Connection
from meshpilot.xds.discovery import DiscoveryServer

Params = Mapping[str, str]
Topic = Callable[[DiscoveryServer, Params], Any]


class TopicError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _require_snapshot(server: DiscoveryServer) -> None:
    if server.snapshot is None:
        raise TopicError(503, "not synced yet: waiting for config and registries")


def find_connection(server: DiscoveryServer, proxy_id: str) -> Connection:
    """The newest connection of a proxy, by node id or by `workload.namespace`."""
    matches = [c for c in server.connections.values() if c.proxy.id == proxy_id]
    if not matches:
        matches = [c for c in server.connections.values() if c.proxy.short_name == proxy_id]
    if not matches:
        raise TopicError(404, f"proxy {proxy_id!r} is not connected")
    ids = {c.proxy.id for c in matches}
    if len(ids) > 1:
        raise TopicError(400, f"{proxy_id!r} names several proxies: {', '.join(sorted(ids))}")
    return max(matches, key=lambda c: c.connected_at)


# Topics ------------------------------------------------------------------------------------


def configz(server: DiscoveryServer, _: Params) -> Any:
    return {
        "configs": [
            {
                "kind": c.kind,
                "apiVersion": f"{c.group}/{c.version}",
                "namespace": c.namespace,
                "name": c.name,
                "origin": c.origin,
                "labels": dict(c.labels),
                "spec": c.spec,
                "status": "valid",
                "analysis": _analysis_of(server, c.kind, c.namespace, c.name),
            }
            for c in sorted(server.store.all(), key=lambda c: c.key)
        ],
        "errors": [_error(e) for e in server.store.errors()],
    }


def _analysis_of(server: DiscoveryServer, kind: str, namespace: str, name: str) -> Any:
    """The latest analysis messages about one resource; None when analysis is off."""
    if server.analysis is None:
        return None
    return server.analysis.for_resource(kind, namespace, name)


def analyze(server: DiscoveryServer, _: Params) -> Any:
    if server.analysis is None:
        raise TopicError(404, "analysis is turned off (meshpilot discovery --no-analysis)")
    return server.analysis.topic()


def analysis_inputs(server: DiscoveryServer, _: Params) -> Any:
    _require_snapshot(server)  # before the first sync the config would be partial
    mesh = getattr(server, "mesh", None)  # the server's --mesh-config, when it has one
    return server_inputs(server.store.all(), server.registry,
                         mesh if isinstance(mesh, MeshConfig) else None)


def config_errors(server: DiscoveryServer, _: Params) -> Any:
    return [_error(e) for e in server.store.errors()]


def _error(e: Any) -> dict[str, Any]:
    return {
        "file": e.file,
        "line": e.line,
        "resource": str(e.key) if e.key else "",
        "field": e.field,
        "message": e.message,
        "text": str(e),
        "status": "rejected",
    }


def syncz_topic(server: DiscoveryServer, params: Params) -> Any:
    namespace = params.get("namespace", "")
    return [
        syncz.sync_status_json(c) for c in syncz.connections(server.connections.values(), namespace)
    ]


def config_dump(server: DiscoveryServer, params: Params) -> Any:
    proxy_id = params.get("proxyID", "")
    if not proxy_id:
        raise TopicError(400, "give the proxy: /debug/config_dump?proxyID=<node id>")
    _require_snapshot(server)
    return config_dump_json(server, find_connection(server, proxy_id).proxy)


def adsz(server: DiscoveryServer, _: Params) -> Any:
    now = time.time()
    return {
        "totalClients": len(server.connections),
        "clients": [
            {
                "connectionId": c.id,
                "proxy": c.proxy.id,
                "peer": c.peer,
                "variant": "delta" if c.delta else "sotw",
                "connectedAt": c.connected_at,
                "connectedFor": round(now - c.connected_at, 1),
                "type": str(c.proxy.type),
                "namespace": c.proxy.namespace,
                "workload": c.proxy.workload_name,
                "labels": dict(c.proxy.labels),
                "ips": list(c.proxy.ip_addresses),
                "clusterId": c.proxy.cluster_id,
                "network": c.proxy.network,
                "locality": str(c.proxy.locality),
                "adminAddress": c.proxy.admin_address,
                "serviceAccount": str(c.proxy.metadata.get(SERVICE_ACCOUNT) or ""),
                "pushes": c.pushes,
                "watches": {
                    SHORT_NAMES.get(t, t): sorted(s.names) if not s.wildcard else ["*"]
                    for t, s in c.watches.items()
                },
            }
            for c in sorted(server.connections.values(), key=lambda c: c.proxy.id)
        ],
    }


def registryz(server: DiscoveryServer, _: Params) -> Any:
    _require_snapshot(server)
    snapshot = server.snapshot
    assert snapshot is not None
    return {
        "version": snapshot.version,
        # Each registry's own state: connected, synced, stale (serving last known), errors.
        "registries": [r.status() for r in getattr(server.registry, "registries", [])],
        "conflicts": list(getattr(server.registry, "conflicts", list)()),
        # How networks meet (meshNetworks): describe explains cross-network paths with it.
        "meshNetworks": dict(snapshot.mesh.networks),
        # Whether workloads get certificates, and of which trust domain: describe decides
        # identities and mTLS modes with it.
        "security": None
        if snapshot.security is None
        else {
            "trustDomain": snapshot.security.trust_domain,
            "certificates": snapshot.security.certificates is not None,
        },
        "services": [
            {
                "hostname": s.hostname,
                "namespace": s.namespace,
                "registry": s.registry,
                "source": s.source,
                "resolution": s.resolution,
                "location": s.location,
                "addresses": list(s.addresses),
                "ports": [
                    {"name": p.name, "port": p.number, "protocol": p.protocol} for p in s.ports
                ],
                "endpoints": [
                    {
                        "address": e.address,
                        "port": e.port,
                        "servicePort": e.service_port,
                        "labels": dict(e.labels),
                        "health": e.health,
                        "workload": e.workload_name,
                        "namespace": e.namespace,
                        "serviceAccount": e.service_account,
                        "clusterId": e.cluster_id,
                        "network": networks.network_of(snapshot, e),
                        "locality": str(e.locality),
                    }
                    for p in s.ports
                    for e in snapshot.service_endpoints(s.hostname, p.number)
                ],
            }
            for s in sorted(snapshot.services.values(), key=lambda s: s.hostname)
        ],
    }


def push_status(server: DiscoveryServer, _: Params) -> Any:
    snapshot = server.snapshot
    record = server.metrics.last_push
    proxies: dict[str, dict[str, int]] = {}
    for connection in server.connections.values():
        for short, status in syncz.proxy_statuses(connection).items():
            counts = proxies.setdefault(short, {})
            counts[str(status.status)] = counts.get(str(status.status), 0) + 1
    return {
        "version": snapshot.version if snapshot is not None else "",
        "pushes": server.push_count,
        "services": len(snapshot.services) if snapshot is not None else 0,
        "virtualServices": len(snapshot.virtual_services) if snapshot is not None else 0,
        "destinationRules": len(snapshot.destination_rules) if snapshot is not None else 0,
        "connectedProxies": len(server.connections),
        "lastPush": None
        if record is None
        else {
            "start": record.at,
            "debounceSeconds": round(record.debounce_seconds, 6),
            "full": record.request.full,
            "reasons": sorted(record.request.reasons),
            "configKinds": sorted(record.request.config_kinds),
            "edsHosts": sorted(f"{ns}/{host}" for ns, host in record.request.eds_hosts),
            "events": record.request.count,
        },
        "proxyStatus": proxies,
        "configErrors": len(server.store.errors()),
    }


def routestatus(server: DiscoveryServer, _: Params) -> Any:
    # Only a TranslatingStore (foreign APIs) has route status; other stores have no routes.
    return route_status(getattr(server.store, "route_status", {}))


def debug_list(_: DiscoveryServer, __: Params) -> Any:
    return {path: description for path, description in DESCRIPTIONS.items()}


TOPICS: dict[str, tuple[Topic, str]] = {
    "/debug/list": (debug_list, "every endpoint with a description"),
    "/debug/configz": (configz, "all config with its origin and validation state"),
    "/debug/config_errors": (config_errors, "rejected documents with file, line and reason"),
    "/debug/syncz": (
        syncz_topic,
        "per proxy and type: SYNCED, NOT SENT, STALE or ERROR with Envoy's text "
        "(Istio's SyncStatus; ?namespace=NS)",
    ),
    "/debug/config_dump": (
        config_dump,
        "the Envoy config the server would send a proxy now (?proxyID=<node id>)",
    ),
    "/debug/adsz": (adsz, "connected proxies and their subscriptions"),
    "/debug/routestatus": (
        routestatus,
        "Gateway API routes' status.parents[].conditions (Accepted, ResolvedRefs) per route",
    ),
    "/debug/registryz": (registryz, "services and endpoints by registry"),
    "/debug/push_status": (push_status, "the last push and a summary of proxy sync states"),
    "/debug/analyze": (
        analyze,
        "configuration analysis of the served config (istioctl analyze's messages), per "
        "resource with file and line; rejected documents as IST0106",
    ),
    "/debug/analysis_inputs": (
        analysis_inputs,
        "what analysis reads: every config with origin and field lines, and every "
        "registry's services and endpoints (used by meshpilot analyze --use-kube=true)",
    ),
}

DESCRIPTIONS: dict[str, str] = {
    "/ready": "200 once every config source and registry has synced",
    "/metrics": "Prometheus metrics (Istio's names: pilot_xds, pilot_xds_pushes, …)",
    **{path: description for path, (_, description) in TOPICS.items()},
}


def render_topic(server: DiscoveryServer, path: str, params: Params) -> Any:
    entry = TOPICS.get(path.rstrip("/") or path)
    if entry is None:
        raise TopicError(404, f"no debug topic {path!r}; see /debug/list")
    return entry[0](server, params)
