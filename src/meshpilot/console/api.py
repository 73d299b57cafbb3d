"""The data behind each console page, as JSON: what `/api/...` answers.

Every function reads the live server at request time (the snapshot, the stores, the
connections, the analysis report, the push history, the stats collector); none keeps a copy.
Pages are thin views of these answers, so tests check the numbers here and the browser tests
check that the pages show them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshpilot.console.graph import ProxyView, build, service_id, workload_id
from meshpilot.console.stats import StatsCollector, Traffic, total_traffic
from meshpilot.debug import syncz
from meshpilot.debug.topics import configz
from meshpilot.envoy.names import ClusterName
from meshpilot.envoy.scope import destination_rule_for, virtual_service_for
from meshpilot.envoy.targets import service_targets
from meshpilot.model import Config, ConfigKey, Kind
from meshpilot.model.hosts import host_matches, resolve_short_name
from meshpilot.xds.connection import Connection
from meshpilot.xds.discovery import DiscoveryServer


class NotFound(LookupError):
    pass


def proxy_views(server: DiscoveryServer, stats: StatsCollector) -> list[ProxyView]:
    """The connected proxies with their traffic: captured on the event loop, where both live."""
    seen: dict[str, ProxyView] = {}
    for connection in sorted(server.connections.values(), key=lambda c: c.connected_at):
        proxy = connection.proxy
        seen[proxy.id] = ProxyView(proxy, stats.proxy_traffic(proxy.id))
    return list(seen.values())


def overview(server: DiscoveryServer, stats: StatsCollector) -> dict[str, Any]:
    snapshot = server.snapshot
    analysis = server.analysis.topic() if server.analysis is not None else None
    return {
        "synced": snapshot is not None,
        "version": snapshot.version if snapshot is not None else "",
        "services": len(snapshot.services) if snapshot is not None else 0,
        "proxies": len({c.proxy.id for c in server.connections.values()}),
        "configs": len(server.store.all()),
        "configErrors": len(server.store.errors()),
        "analysis": analysis["counts"] if analysis is not None else None,
        "stats": stats.status(),
    }


# Services --------------------------------------------------------------------------------------


def services(server: DiscoveryServer, stats: StatsCollector) -> list[dict[str, Any]]:
    snapshot = server.snapshot
    if snapshot is None:
        return []
    graph = build(snapshot, proxy_views(server, stats))
    inbound: dict[str, Traffic] = {}
    for (_, target), edge in graph.edges.items():
        if edge.kind == "traffic" and target.startswith("svc:"):
            inbound.setdefault(target, Traffic()).add(edge.traffic)
    out = []
    for svc in sorted(snapshot.services.values(), key=lambda s: (s.namespace, s.hostname)):
        sid = service_id(svc.namespace, svc.hostname)
        out.append({
            "id": sid,
            "host": svc.hostname,
            "namespace": svc.namespace,
            "registry": svc.registry,
            "ports": [f"{p.number}/{p.protocol}" for p in svc.ports],
            "endpoints": sum(len(snapshot.service_endpoints(svc.hostname, p.number))
                             for p in svc.ports),
            "traffic": inbound.get(sid, Traffic()).to_json(),
        })
    return out


def _registries(server: DiscoveryServer) -> list[Any]:
    found = getattr(server.registry, "registries", None)
    return list(found) if found is not None else [server.registry]


def _config_entry(
    server: DiscoveryServer, config: Config, applies: bool | None = None, why: str = ""
) -> dict[str, Any]:
    messages = (server.analysis.for_resource(config.kind, config.namespace, config.name)
                if server.analysis is not None else None)
    entry: dict[str, Any] = {
        "kind": config.kind,
        "namespace": config.namespace,
        "name": config.name,
        "origin": config.origin,
        "spec": config.spec,
        "analysis": messages,
    }
    if applies is not None:
        entry["applies"] = applies
        entry["why"] = why
    return entry


def _routes_to(vs: Config, host: str) -> bool:
    for kind in ("http", "tcp", "tls"):
        for route in vs.spec.get(kind) or ():
            for dest in route.get("route") or ():
                name = str((dest.get("destination") or {}).get("host", ""))
                if name and resolve_short_name(name, vs.namespace) == host:
                    return True
    return False


def service(server: DiscoveryServer, stats: StatsCollector, namespace: str,
            host: str) -> dict[str, Any]:
    snapshot = server.snapshot
    if snapshot is None:
        raise NotFound("not synced yet: waiting for config and registries")
    svc = snapshot.services.get(host)
    if svc is None or svc.namespace != namespace:
        raise NotFound(f"no service {host} in namespace {namespace}")
    endpoints = []
    for registry in _registries(server):
        for ep in registry.endpoints(host, namespace):
            endpoints.append({
                "registry": getattr(registry, "provider", ""),
                "cluster": ep.cluster_id or getattr(registry, "cluster_id", ""),
                "address": ep.address,
                "port": ep.port,
                "servicePort": ep.service_port,
                "labels": dict(ep.labels),
                "health": str(ep.health),
                "workload": ep.workload_name,
                "workloadId": workload_id(ep.namespace, ep.workload_name or ep.address),
                "locality": str(ep.locality),
                "weight": ep.weight,
                "network": ep.network,
                "serviceAccount": ep.service_account,
            })
    served = {(e.address, e.port, e.service_port)
              for p in svc.ports for e in snapshot.service_endpoints(host, p.number)}
    for entry in endpoints:
        entry["served"] = (entry["address"], entry["port"], entry["servicePort"]) in served

    configs: list[dict[str, Any]] = []
    store = server.store
    if svc.source:
        kind, _, ref = svc.source.partition(" ")
        ns, _, name = ref.partition("/")
        source = store.get(ConfigKey(kind, ns, name))
        if source is not None:
            configs.append(_config_entry(server, source, True, "defines the service"))
    entries = {(e["workload"], e["address"]) for e in endpoints}
    for workload, _ in sorted(entries):
        if workload:
            found = store.get(ConfigKey(Kind.WORKLOAD_ENTRY, namespace, workload))
            if found is not None:
                configs.append(_config_entry(server, found, True, "an endpoint of the service"))
    chosen_vs = virtual_service_for(snapshot, host, namespace)
    for vs in store.list(Kind.VIRTUAL_SERVICE):
        names = [resolve_short_name(str(h), vs.namespace) for h in vs.spec.get("hosts") or ()]
        if any(host_matches(n, host) for n in names):
            chosen = chosen_vs is not None and chosen_vs.key == vs.key
            why = ("routes the host for clients in its namespace" if chosen else
                   "names the host, but another VirtualService takes it, or it is not bound "
                   "to the mesh or exported")
            configs.append(_config_entry(server, vs, chosen, why))
        elif _routes_to(vs, host):
            configs.append(_config_entry(server, vs, True, "routes traffic to the service"))
    chosen_dr = destination_rule_for(snapshot, host, namespace)
    for dr in store.list(Kind.DESTINATION_RULE):
        if host_matches(resolve_short_name(str(dr.spec.get("host", "")), dr.namespace), host):
            chosen = chosen_dr is not None and chosen_dr.key == dr.key
            why = ("the traffic policy for clients in the service's namespace" if chosen else
                   "matches the host, but another rule takes precedence for clients in the "
                   "service's namespace (it may still apply to clients elsewhere)")
            configs.append(_config_entry(server, dr, chosen, why))

    graph = build(snapshot, proxy_views(server, stats))
    sid = service_id(namespace, host)
    callers = [
        {"id": s, **e.traffic.to_json()}
        for (s, t), e in sorted(graph.edges.items()) if t == sid and e.kind == "traffic"
    ]
    workloads = [
        {"id": t, "kind": e.kind, "proxies": graph.nodes[t].proxies, **e.traffic.to_json()}
        for (s, t), e in sorted(graph.edges.items()) if s == sid
    ]
    return {
        "id": sid,
        "host": host,
        "namespace": namespace,
        "registry": svc.registry,
        "source": svc.source,
        "resolution": str(svc.resolution),
        "location": str(svc.location),
        "addresses": list(svc.addresses),
        "ports": [{"name": p.name, "port": p.number, "protocol": str(p.protocol),
                   "targetPort": p.target_port} for p in svc.ports],
        "endpoints": endpoints,
        "configs": configs,
        "callers": callers,
        "workloads": workloads,
        "traffic": total_traffic(
            e.traffic for (_, t), e in graph.edges.items() if t == sid and e.kind == "traffic"
        ).to_json(),
    }


# Proxies ---------------------------------------------------------------------------------------


def _newest(server: DiscoveryServer, proxy_id: str) -> Connection:
    matches = [c for c in server.connections.values() if c.proxy.id == proxy_id]
    if not matches:
        raise NotFound(f"proxy {proxy_id!r} is not connected")
    return max(matches, key=lambda c: c.connected_at)


def _status_json(connection: Connection) -> dict[str, Any]:
    return {
        short: {
            "status": str(status.status),
            "since": status.since or None,
            "error": status.error,
            "versionSent": status.version_sent,
            "versionAcked": status.version_acked,
        }
        for short, status in syncz.proxy_statuses(connection).items()
    }


def proxies(server: DiscoveryServer, stats: StatsCollector) -> list[dict[str, Any]]:
    out = []
    for connection in syncz.connections(server.connections.values()):
        proxy = connection.proxy
        out.append({
            "id": proxy.id,
            "workload": proxy.short_name,
            "workloadId": workload_id(proxy.namespace, proxy.workload_name or proxy.id),
            "namespace": proxy.namespace,
            "type": str(proxy.type),
            "variant": "delta" if connection.delta else "sotw",
            "adminAddress": proxy.admin_address,
            "connectedAt": connection.connected_at,
            "pushes": connection.pushes,
            "sync": {k: v["status"] for k, v in _status_json(connection).items()},
            "statsError": stats.errors.get(proxy.id, ""),
        })
    return out


def proxy(server: DiscoveryServer, stats: StatsCollector, proxy_id: str) -> dict[str, Any]:
    connection = _newest(server, proxy_id)
    p = connection.proxy
    snapshot = server.snapshot
    outbound: dict[str, Traffic] = {}
    inbound: dict[str, Traffic] = {}
    for cluster, traffic in stats.proxy_traffic(p.id).items():
        parsed = ClusterName.parse(cluster)
        if parsed is None:
            continue
        side = outbound if parsed.direction == "outbound" else inbound
        side.setdefault(cluster, Traffic()).add(traffic)
    serves = sorted({f"{t.hostname}:{t.service_port}"
                     for t in service_targets(snapshot, p)}) if snapshot is not None else []
    return {
        "id": p.id,
        "workload": p.short_name,
        "workloadId": workload_id(p.namespace, p.workload_name or p.id),
        "namespace": p.namespace,
        "type": str(p.type),
        "labels": dict(p.labels),
        "ips": list(p.ip_addresses),
        "adminAddress": p.admin_address,
        "locality": str(p.locality),
        "connection": connection.id,
        "peer": connection.peer,
        "variant": "delta" if connection.delta else "sotw",
        "connectedAt": connection.connected_at,
        "pushes": connection.pushes,
        "serves": serves,
        "sync": _status_json(connection),
        "history": [e.to_json() for e in server.push_history.events(p.id)],
        "clusters": {
            "outbound": {k: v.to_json() for k, v in sorted(outbound.items())},
            "inbound": {k: v.to_json() for k, v in sorted(inbound.items())},
        },
        "statsError": stats.errors.get(p.id, ""),
    }


# Config ----------------------------------------------------------------------------------------


def config(server: DiscoveryServer) -> dict[str, Any]:
    data: dict[str, Any] = configz(server, {})
    analysis = server.analysis.topic() if server.analysis is not None else None
    return {
        "configs": data["configs"],
        "errors": data["errors"],
        "analysis": analysis,
    }


def dashboards(links: Mapping[str, str]) -> dict[str, str]:
    return dict(sorted(links.items()))
