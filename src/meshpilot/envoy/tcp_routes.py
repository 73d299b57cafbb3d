"""Outbound TCP and TLS ports: VirtualService `tcp` and `tls` routes for sidecars.

A TCP port carries one service (the first by name, as meshpilot binds one listener per port);
the VirtualService for that host may send its bytes elsewhere with weighted `tcp` routes, the
first route whose match applies to the proxy (port, sourceLabels, sourceNamespace) winning.
`destinationSubnets` cannot be judged without traffic capture (the destination is always the
proxy's own listener), so matches that rely on it are skipped with a warning.

A TLS port (protocol HTTPS or TLS) is routed by SNI, without terminating TLS: one filter chain
per service on the port, matching its host name, and `tls` routes whose `sniHosts` add names
and send them to their destinations.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshpilot.envoy import names
from meshpilot.envoy.protos import pack
from meshpilot.envoy.scope import Scope, virtual_service_for
from meshpilot.model import Config, Proxy
from meshpilot.model.hosts import resolve_short_name
from meshpilot.model.snapshot import Snapshot

log = logging.getLogger("meshpilot.envoy")

TCP_PROXY = "envoy.filters.network.tcp_proxy"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"


def _match_applies(match: Mapping[str, Any], proxy: Proxy, port: int) -> bool:
    if "port" in match and int(match["port"]) != port:
        return False
    labels: Mapping[str, str] = match.get("sourceLabels") or {}
    if any(proxy.labels.get(k) != v for k, v in labels.items()):
        return False
    if match.get("sourceNamespace") and match["sourceNamespace"] != proxy.namespace:
        return False
    if match.get("destinationSubnets"):
        log.warning("destinationSubnets cannot be matched without traffic capture; "
                    "skipping that match")
        return False
    return True


def _routes_for(routes: Sequence[Mapping[str, Any]], proxy: Proxy, port: int) -> Any:
    """The first route (tcp or tls) whose match list is empty or has an applicable entry."""
    for route in routes:
        matches = route.get("match") or [None]
        if any(m is None or _match_applies(m, proxy, port) for m in matches):
            return route
    return None


def _destination_cluster(destination: Mapping[str, Any], vs: Config, port: int) -> str:
    host = resolve_short_name(str(destination.get("host", "")), vs.namespace)
    number = int((destination.get("port") or {}).get("number") or port)
    return names.outbound_cluster(host, number, str(destination.get("subset", "")))


def tcp_proxy(
    stat_prefix: str,
    default_cluster: str,
    route: Mapping[str, Any] | None = None,
    vs: Config | None = None,
    port: int = 0,
) -> tcp_proxy_pb2.TcpProxy:
    """A TCP proxy to the default cluster, or to a VirtualService route's destinations."""
    proxy_config = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
    entries = list((route or {}).get("route") or ())
    destinations = [d for d in entries if len(entries) == 1 or d.get("weight", 0) > 0]
    if vs is None or not destinations:
        proxy_config.cluster = default_cluster
    elif len(destinations) == 1:
        proxy_config.cluster = _destination_cluster(destinations[0]["destination"], vs, port)
    else:
        for dest in destinations:
            weighted = proxy_config.weighted_clusters.clusters.add(
                name=_destination_cluster(dest["destination"], vs, port)
            )
            weighted.weight = int(dest["weight"])
    return proxy_config


def tcp_filter(snapshot: Snapshot, proxy: Proxy, host: str, port: int) -> tcp_proxy_pb2.TcpProxy:
    """The TCP proxy for service `host` on an outbound TCP port."""
    cluster = names.outbound_cluster(host, port)
    vs = virtual_service_for(snapshot, host, proxy.namespace)
    route = _routes_for(vs.spec.get("tcp") or (), proxy, port) if vs is not None else None
    return tcp_proxy(cluster, cluster, route, vs, port)


def tls_inspector() -> Any:
    listener_filter = listener_components_pb2.ListenerFilter(name=TLS_INSPECTOR)
    listener_filter.typed_config.CopyFrom(pack(tls_inspector_pb2.TlsInspector()))
    return listener_filter


def tls_filter_chains(
    snapshot: Snapshot, proxy: Proxy, port: int, scope: Scope
) -> list[listener_components_pb2.FilterChain]:
    """SNI-routed filter chains for an outbound TLS port."""
    chains: list[listener_components_pb2.FilterChain] = []
    claimed: set[str] = set()
    for host in sorted(snapshot.services):
        service = snapshot.services[host]
        svc_port = service.port(port)
        if svc_port is None or svc_port.protocol.is_http or not scope.visible(service, port):
            continue
        vs = virtual_service_for(snapshot, host, proxy.namespace)
        if vs is not None:
            for route in vs.spec.get("tls") or ():
                sni = [
                    name
                    for m in route.get("match") or ()
                    if _match_applies(m, proxy, port)
                    for h in m.get("sniHosts") or ()
                    if (name := resolve_short_name(str(h), vs.namespace)) not in claimed
                ]
                if sni:
                    claimed.update(sni)
                    chains.append(_chain(sni, tcp_proxy(host, "", route, vs, port)))
        if host not in claimed:
            claimed.add(host)
            cluster = names.outbound_cluster(host, port)
            chains.append(_chain([host], tcp_proxy(cluster, cluster)))
    return chains


def _chain(server_names: list[str], proxy_config: tcp_proxy_pb2.TcpProxy) -> Any:
    chain = listener_components_pb2.FilterChain()
    chain.filter_chain_match.server_names.extend(server_names)
    chain.filters.add(name=TCP_PROXY).typed_config.CopyFrom(pack(proxy_config))
    return chain
