"""LDS and RDS for routers: Istio Gateway servers and the VirtualServices bound to them.

A router (`meshpilot proxy router`, Istio's ingress gateway) gets no sidecar listeners. Its
config comes from the Gateways whose `selector` labels are all among the router's labels (a
Gateway without selector selects every router), in any namespace, as Istio selects gateway pods.
Their servers are grouped by port:

* plaintext HTTP servers (HTTP, HTTP2, GRPC) on a port share one filter chain whose connection
  manager asks RDS for `http.<port>`, as Istio names it;
* plaintext TCP servers get one TCP proxy, to the first matching `tcp` route of the
  VirtualServices bound to them;
* TLS servers (HTTPS and TLS) get a filter chain each, chosen by SNI (`server_names` = the
  server's hosts, none for `*`) with the listener's TLS inspector. A terminating HTTPS server
  carries its DownstreamTlsContext (see `tls`) and routes by `https.<port>.<portName>.<gateway>.
  <namespace>`; a terminating TLS server proxies by `tcp` routes; a PASSTHROUGH server never
  decrypts and gets one chain per `tls` route match, its `sniHosts` as `server_names`.

The first server's kind (plaintext HTTP, plaintext TCP or TLS) decides a port; servers of
another kind on the same port are reported and left out, as Istio does. Listeners keep Istio's
names (`0.0.0.0_<port>`, or `<bind>_<port>` for a server with `bind`) but bind the router's
`--outbound-bind` address, so several routers can share one machine on different loopbacks.

Route configurations hold one virtual host per host in both a server's `hosts` and a bound
VirtualService's `hosts` (the more specific of the two names when one is a wildcard), with that
VirtualService's HTTP routes for the gateway (`routes.virtual_service_routes`). A server host
`ns/host` admits only VirtualServices of namespace `ns`, `./host` those of the Gateway's own
namespace, `*/host` or a bare `host` any. Several VirtualServices for one host merge in order.
A plaintext server with `httpsRedirect` marks its virtual hosts `require_tls: ALL`, so Envoy
answers 301 to `https://`. Unknown hosts find no virtual host and get 404; a route
configuration without any gets a catch-all host with no routes, which answers 404 too.

Everything that cannot be applied (an unknown TLS mode, a missing credential, conflicting
servers) is logged once as a warning naming the Gateway, the field and the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshpilot.envoy import names, tls
from meshpilot.envoy.listeners import HCM, TCP_PROXY, http_filters
from meshpilot.envoy.protos import ads_source, pack
from meshpilot.envoy.routes import virtual_service_routes
from meshpilot.envoy.scope import destination_rule_for
from meshpilot.model import Config, Protocol, Proxy
from meshpilot.model.gateways import applies_to, gateway_key, match_gateways
from meshpilot.model.hosts import host_matches, resolve_short_name
from meshpilot.model.snapshot import Snapshot

log = logging.getLogger("meshpilot.envoy")

TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
ANY_ADDRESS = "0.0.0.0"

HTTP, TCP, TLS = "HTTP", "TCP", "TLS"
"""The three kinds of server a port can carry."""


# --- Servers --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Server:
    """One entry of a Gateway's `servers`, with what translation needs parsed out."""

    gateway: Config
    index: int
    spec: Mapping[str, Any]
    number: int
    port_name: str
    protocol: Protocol
    hosts: tuple[tuple[str, str], ...]
    """(namespace part, host): `*` for a bare host, `.` kept as written."""
    bind: str

    @property
    def gateway_name(self) -> str:
        return gateway_key(self.gateway)

    @property
    def path(self) -> str:
        return f"spec.servers[{self.index}]"

    @property
    def tls(self) -> Mapping[str, Any]:
        found: Mapping[str, Any] = self.spec.get("tls") or {}
        return found

    @property
    def kind(self) -> str:
        if self.protocol in (Protocol.HTTPS, Protocol.TLS):
            return TLS
        return HTTP if self.protocol.is_http else TCP

    @property
    def passthrough(self) -> bool:
        return self.kind == TLS and tls.tls_mode(self.tls) in tls.PASSTHROUGH_MODES

    @property
    def https_redirect(self) -> bool:
        return self.kind == HTTP and bool(self.tls.get("httpsRedirect"))

    @property
    def hostnames(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(host for _, host in self.hosts))

    @property
    def route_name(self) -> str:
        """Istio's RDS name for the server: shared by a port's HTTP servers, own for HTTPS."""
        suffix = f".{self.bind}" if self.bind else ""
        if self.kind == HTTP:
            return f"http.{self.number}{suffix}"
        if self.protocol == Protocol.HTTPS and not self.passthrough:
            return (f"https.{self.number}.{self.port_name}.{self.gateway.name}."
                    f"{self.gateway.namespace}{suffix}")
        return ""


def selects(gateway: Config, proxy: Proxy) -> bool:
    """Istio: every selector label must be among the router's; no selector selects all."""
    selector: Mapping[str, str] = gateway.spec.get("selector") or {}
    return all(proxy.labels.get(k) == str(v) for k, v in selector.items())


def servers_for(snapshot: Snapshot, proxy: Proxy) -> tuple[Server, ...]:
    """The servers of every Gateway selecting `proxy`, in snapshot then declaration order."""
    key = ("gateway-servers", frozenset(proxy.labels.items()))
    found: tuple[Server, ...] | None = snapshot.cache.get(key)
    if found is None:
        found = snapshot.cache[key] = tuple(
            server
            for gateway in snapshot.gateways
            if selects(gateway, proxy)
            for server in _servers(gateway)
        )
    return found


def _servers(gateway: Config) -> list[Server]:
    out = []
    for index, spec in enumerate(gateway.spec.get("servers") or ()):
        port: Mapping[str, Any] = spec.get("port") or {}
        protocol = Protocol.parse(str(port.get("protocol", "")))
        path = f"spec.servers[{index}]"
        bind = str(spec.get("bind") or "")
        if bind.startswith("unix://"):
            _warn(gateway, f"{path}.bind", "unix domain socket binds are not supported; "
                                           "the server is left out")
            continue
        if protocol == Protocol.UNSUPPORTED:
            _warn(gateway, f"{path}.port.protocol", "unsupported protocol; the server is left out")
            continue
        hosts = []
        for raw in spec.get("hosts") or ():
            namespace, slash, host = str(raw).rpartition("/")
            hosts.append((namespace if slash else "*", host.lower()))
        out.append(Server(gateway, index, spec, int(port.get("number", 0)),
                          str(port.get("name", "")), protocol, tuple(hosts), bind))
    return out


# --- VirtualServices bound to a server --------------------------------------------------------


def _exported_to(vs: Config, namespace: str) -> bool:
    export: Sequence[str] = vs.spec.get("exportTo") or ("*",)
    return any(e == "*" or e == namespace or (e == "." and vs.namespace == namespace)
               for e in export)


def bound_virtual_services(snapshot: Snapshot, gateway: str, namespace: str) -> list[Config]:
    """VirtualServices bound to `gateway` and visible to routers in `namespace`, in order."""
    key = ("gateway-vs", gateway, namespace)
    found: list[Config] | None = snapshot.cache.get(key)
    if found is None:
        found = snapshot.cache[key] = [
            vs for vs in snapshot.virtual_services
            if applies_to(vs, gateway) and _exported_to(vs, namespace)
        ]
    return found


def _admits(server: Server, selector: str, vs: Config) -> bool:
    """Whether a server host's namespace part lets `vs` attach to it."""
    if selector == "*":
        return True
    if selector == ".":
        return vs.namespace == server.gateway.namespace
    return vs.namespace == selector


def matching_hosts(server: Server, vs: Config) -> list[str]:
    """Hosts in both the server and `vs`; of two that match, the more specific one."""
    out: dict[str, None] = {}
    for raw in vs.spec.get("hosts") or ():
        vs_host = resolve_short_name(str(raw), vs.namespace).lower()
        for selector, server_host in server.hosts:
            if not _admits(server, selector, vs):
                continue
            if host_matches(server_host, vs_host):
                out.setdefault(vs_host)
            elif host_matches(vs_host, server_host):
                out.setdefault(server_host)
    return list(out)


def _server_virtual_services(
    snapshot: Snapshot, proxy: Proxy, server: Server
) -> list[tuple[Config, list[str]]]:
    found = []
    for vs in bound_virtual_services(snapshot, server.gateway_name, proxy.namespace):
        hosts = matching_hosts(server, vs)
        if hosts:
            found.append((vs, hosts))
    return found


# --- Routes (RDS) ---------------------------------------------------------------------------


def route_config(snapshot: Snapshot, proxy: Proxy, name: str) -> route_pb2.RouteConfiguration:
    """The route configuration `name` of a router; unknown names get an empty one."""
    config = route_pb2.RouteConfiguration(name=name)
    config.validate_clusters.value = False
    servers = [s for s in servers_for(snapshot, proxy) if s.route_name == name]
    if not servers:
        return config
    vhosts: dict[str, rc.VirtualHost] = {}
    merged: set[tuple[str, Any]] = set()
    for server in servers:
        for vs, hosts in _server_virtual_services(snapshot, proxy, server):
            routes = virtual_service_routes(vs, proxy, server.number, snapshot,
                                            server.gateway_name)
            for host in hosts:
                if (host, vs.key) in merged:
                    continue  # two HTTP servers of a port naming the same host
                merged.add((host, vs.key))
                existing = vhosts.get(host)
                if existing is not None:
                    # Istio merges every VirtualService for a host, earlier ones first.
                    existing.routes.extend(routes)
                    continue
                if not routes:
                    continue
                vhost = rc.VirtualHost(name=f"{host}:{server.number}", domains=[host])
                vhost.routes.extend(routes)
                if server.https_redirect:
                    vhost.require_tls = rc.VirtualHost.ALL
                vhosts[host] = vhost
        if server.https_redirect:
            # Every host of a redirecting server answers 301, with or without a VirtualService.
            for host in server.hostnames:
                vhosts.setdefault(host, rc.VirtualHost(
                    name=f"{host}:{server.number}", domains=[host],
                    require_tls=rc.VirtualHost.ALL,
                ))
    if not vhosts:
        # Envoy needs a virtual host to answer at all; one without routes answers 404.
        config.virtual_hosts.add(name=f"blackhole:{servers[0].number}", domains=["*"])
    config.virtual_hosts.extend(vhosts[h] for h in vhosts)
    return config


# --- Listeners (LDS) ------------------------------------------------------------------------


def listeners_for(snapshot: Snapshot, proxy: Proxy) -> list[listener_pb2.Listener]:
    """One listener per (bind address, port) of the servers selecting `proxy`."""
    by_port: dict[tuple[str, int], list[Server]] = {}
    for server in servers_for(snapshot, proxy):
        by_port.setdefault((server.bind, server.number), []).append(server)
    out = []
    for (bind, number), group in sorted(by_port.items()):
        kind = group[0].kind
        for other in group[1:]:
            if other.kind != kind:
                _warn(other.gateway, f"{other.path}.port",
                      f"port {number} already serves {kind} (from {group[0].gateway_name}); "
                      f"a {other.kind} server cannot share it and is left out")
        servers = [s for s in group if s.kind == kind]
        listener = listener_pb2.Listener(name=f"{bind or ANY_ADDRESS}_{number}")
        listener.address.socket_address.address = bind or proxy.outbound_bind
        listener.address.socket_address.port_value = number
        listener.traffic_direction = base_pb2.OUTBOUND
        if kind == HTTP:
            _http_chain(listener, servers[0].route_name, number)
        elif kind == TCP:
            _tcp_chain(snapshot, proxy, listener, servers)
        else:
            _tls_chains(snapshot, proxy, listener, servers)
            inspector = listener.listener_filters.add(name=TLS_INSPECTOR)
            inspector.typed_config.CopyFrom(pack(tls_inspector_pb2.TlsInspector()))
        if listener.filter_chains:
            out.append(listener)
        else:
            # Envoy rejects a listener without filter chains; nothing would be served anyway.
            log.debug("router %s: nothing routed on port %d; no listener", proxy.id, number)
    return out


def _http_manager(route_name: str, number: int) -> hcm_pb2.HttpConnectionManager:
    manager = hcm_pb2.HttpConnectionManager(stat_prefix=f"outbound_{ANY_ADDRESS}_{number}")
    manager.codec_type = hcm_pb2.HttpConnectionManager.AUTO
    for name, config in http_filters():
        manager.http_filters.add(name=name).typed_config.CopyFrom(pack(config))
    manager.rds.route_config_name = route_name
    manager.rds.config_source.CopyFrom(ads_source())
    # Clients write `Host: example.com:8443` or leave the port out; Istio gateways match the
    # name alone, so virtual hosts list bare names.
    manager.strip_any_host_port = True
    return manager


def _http_chain(listener: listener_pb2.Listener, route_name: str, number: int) -> None:
    chain = listener.filter_chains.add()
    chain.filters.add(name=HCM).typed_config.CopyFrom(pack(_http_manager(route_name, number)))


def _tcp_chain(
    snapshot: Snapshot, proxy: Proxy, listener: listener_pb2.Listener, servers: list[Server]
) -> None:
    for server in servers:
        proxy_config = _tcp_proxy_for(snapshot, proxy, server)
        if proxy_config is not None:
            chain = listener.filter_chains.add()
            chain.filters.add(name=TCP_PROXY).typed_config.CopyFrom(pack(proxy_config))
            return


class _SniClaims:
    """Server names already given to a filter chain of one listener: Envoy rejects two chains
    with the same match, so a later server may not take a name again."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.catch_all = False

    def claim(self, wanted: list[str]) -> list[str] | None:
        """The names still free (`[]` is the catch-all), or None if nothing is left."""
        if not wanted:
            if self.catch_all:
                return None
            self.catch_all = True
            return []
        free = [n for n in dict.fromkeys(wanted) if n not in self.names]
        self.names.update(free)
        return free or None


def _server_names(hosts: Sequence[str]) -> list[str]:
    # `*` cannot be an Envoy server name; a chain without names catches every SNI (and none).
    return [] if any(h == "*" for h in hosts) else list(hosts)


def _tls_chains(
    snapshot: Snapshot, proxy: Proxy, listener: listener_pb2.Listener, servers: list[Server]
) -> None:
    claims = _SniClaims()
    for server in servers:
        if server.passthrough:
            _passthrough_chains(snapshot, proxy, listener, server, claims)
            continue
        try:
            context = tls.downstream_tls_context(
                server.tls, http=server.protocol == Protocol.HTTPS,
                namespace=proxy.namespace, secrets=snapshot.secrets,
            )
        except tls.TlsConfigError as error:
            _warn(server.gateway, f"{server.path}.tls.{error.field}",
                  f"{error.message}; the server is left out")
            continue
        if server.protocol == Protocol.HTTPS:
            network_filter: tuple[str, Any] | None = (
                HCM, _http_manager(server.route_name, server.number)
            )
        else:
            tcp = _tcp_proxy_for(snapshot, proxy, server)
            network_filter = (TCP_PROXY, tcp) if tcp is not None else None
        if network_filter is None:
            continue
        sni = claims.claim(_server_names(server.hostnames))
        if sni is None:
            _warn(server.gateway, f"{server.path}.hosts",
                  f"another server on port {server.number} already takes these hosts; "
                  "the server is left out")
            continue
        chain = listener.filter_chains.add()
        chain.filter_chain_match.server_names.extend(sni)
        chain.transport_socket.CopyFrom(tls.transport_socket(context))
        chain.filters.add(name=network_filter[0]).typed_config.CopyFrom(pack(network_filter[1]))


def _passthrough_chains(
    snapshot: Snapshot,
    proxy: Proxy,
    listener: listener_pb2.Listener,
    server: Server,
    claims: _SniClaims,
) -> None:
    """One chain per `tls` route match of a bound VirtualService, selected by SNI; for
    AUTO_PASSTHROUGH (an east-west gateway) one chain per service, port and subset, selected by
    the SNI sidecars' mTLS sets, straight to that cluster (see envoy/networks.py)."""
    if tls.tls_mode(server.tls) == "AUTO_PASSTHROUGH":
        _auto_passthrough_chains(snapshot, proxy, listener, server, claims)
        return
    if tls.tls_mode(server.tls) != "PASSTHROUGH":
        _warn(server.gateway, f"{server.path}.tls.mode",
              f"{tls.tls_mode(server.tls)} needs Istio's mTLS identities, which meshpilot does "
              "not issue; the server is left out")
        return
    for vs, _ in _server_virtual_services(snapshot, proxy, server):
        for route in vs.spec.get("tls") or ():
            for match in route.get("match") or ():
                if not _l4_match_applies(vs, match, proxy, server):
                    continue
                wanted = [
                    h for h in (str(s).lower() for s in match.get("sniHosts") or ())
                    if any(host_matches(s, h) or host_matches(h, s) for s in server.hostnames)
                ]
                sni = claims.claim(wanted) if wanted else None
                if sni is None:
                    continue
                chain = listener.filter_chains.add()
                chain.filter_chain_match.server_names.extend(sni)
                chain.filters.add(name=TCP_PROXY).typed_config.CopyFrom(
                    pack(_tcp_proxy(vs, route.get("route") or (), server, snapshot))
                )


def auto_passthrough_hosts(snapshot: Snapshot, proxy: Proxy) -> list[str]:
    """The services an east-west gateway passes mesh mTLS through to (AUTO_PASSTHROUGH)."""
    patterns = [pattern for server in servers_for(snapshot, proxy) if server.passthrough
                and tls.tls_mode(server.tls) == "AUTO_PASSTHROUGH"
                for pattern in server.hostnames]
    return [host for host in sorted(snapshot.services)
            if any(host_matches(pattern, host) for pattern in patterns)]


def _auto_passthrough_chains(
    snapshot: Snapshot,
    proxy: Proxy,
    listener: listener_pb2.Listener,
    server: Server,
    claims: _SniClaims,
) -> None:
    for host in sorted(snapshot.services):
        if not any(host_matches(pattern, host) for pattern in server.hostnames):
            continue
        service = snapshot.services[host]
        rule = destination_rule_for(snapshot, host, proxy.namespace)
        subsets = [""] + [str(s["name"]) for s in (rule.spec.get("subsets") or () if rule else ())]
        for port in service.ports:
            for subset in subsets:
                cluster = names.sni_dnat_cluster(host, port.number, subset)
                sni = claims.claim([cluster])
                if sni is None:
                    continue
                chain = listener.filter_chains.add()
                chain.filter_chain_match.server_names.extend(sni)
                chain.filters.add(name=TCP_PROXY).typed_config.CopyFrom(
                    pack(tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster))
                )


# --- TCP routing ----------------------------------------------------------------------------


def _l4_match_applies(
    vs: Config, match: Mapping[str, Any] | None, proxy: Proxy, server: Server
) -> bool:
    """Istio's l4 match for gateways: port, gateways, source labels and namespace."""
    if server.gateway_name not in match_gateways(vs, match):
        return False
    if match is None:
        return True
    if match.get("port") and int(match["port"]) != server.number:
        return False
    labels: Mapping[str, str] = match.get("sourceLabels") or {}
    if any(proxy.labels.get(k) != str(v) for k, v in labels.items()):
        return False
    namespace = match.get("sourceNamespace")
    return not (namespace and namespace != proxy.namespace)


def _tcp_proxy_for(
    snapshot: Snapshot, proxy: Proxy, server: Server
) -> tcp_proxy_pb2.TcpProxy | None:
    """The first `tcp` route of the server's VirtualServices that matches, as Istio picks it."""
    for vs, _ in _server_virtual_services(snapshot, proxy, server):
        for route in vs.spec.get("tcp") or ():
            if any(_l4_match_applies(vs, m, proxy, server) for m in route.get("match") or [None]):
                return _tcp_proxy(vs, route.get("route") or (), server, snapshot)
    return None


def _tcp_proxy(
    vs: Config, destinations: Sequence[Mapping[str, Any]], server: Server, snapshot: Snapshot
) -> tcp_proxy_pb2.TcpProxy:
    weighted = [d for d in destinations if len(destinations) == 1 or int(d.get("weight", 0)) > 0]
    clusters = [_l4_cluster(d, vs, server.number, snapshot) for d in weighted]
    config = tcp_proxy_pb2.TcpProxy()
    if len(clusters) == 1:
        config.cluster = config.stat_prefix = clusters[0]
    elif clusters:
        config.stat_prefix = f"{server.gateway_name}_{server.number}"
        for dest, cluster in zip(weighted, clusters, strict=True):
            config.weighted_clusters.clusters.add(name=cluster, weight=int(dest["weight"]))
    else:
        config.cluster = config.stat_prefix = names.BLACKHOLE_CLUSTER
    return config


def _l4_cluster(
    destination: Mapping[str, Any], vs: Config, port: int, snapshot: Snapshot
) -> str:
    dest: Mapping[str, Any] = destination.get("destination") or {}
    host = resolve_short_name(str(dest.get("host", "")), vs.namespace)
    number = (dest.get("port") or {}).get("number")
    if number is None:
        # As for HTTP: the service's only port, else the port the gateway accepted on.
        svc = snapshot.services.get(host)
        number = svc.ports[0].number if svc is not None and len(svc.ports) == 1 else port
    return names.outbound_cluster(host, int(number), str(dest.get("subset", "")))


# --- Warnings -------------------------------------------------------------------------------

_warned: set[tuple[str, str, str, str]] = set()
_WARNED_LIMIT = 10_000


def _warn(gateway: Config, field: str, message: str) -> None:
    """Log once per Gateway version, field and message: translation runs on every push."""
    key = (str(gateway.key), gateway.resource_version or gateway.origin, field, message)
    if key in _warned:
        return
    if len(_warned) >= _WARNED_LIMIT:
        _warned.clear()
    _warned.add(key)
    where = f"{gateway.origin}: " if gateway.origin else ""
    log.warning("%s%s: %s: %s", where, gateway.key, field, message)
