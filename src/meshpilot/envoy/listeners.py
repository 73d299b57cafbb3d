"""LDS: outbound listeners the application calls explicitly, and inbound listeners.

Sidecars run without traffic capture (Istio's capture mode NONE): the application sends its
requests to `<outbound bind>:<service port>` and the listener routes by Host (HTTP) or sends the
bytes to the port's one service (TCP). The inbound side binds the workload's own address on each
port it serves and hands traffic to the application.
"""

from __future__ import annotations

import logging

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf.message import Message

from meshpilot.envoy import authz, mtls, names, tcp_routes, telemetry, wasm
from meshpilot.envoy import passthrough as forward
from meshpilot.envoy.protos import ads_source, duration, pack
from meshpilot.envoy.route_policies import CORS_FILTER, FAULT_FILTER
from meshpilot.envoy.scope import ALLOW_ANY, Scope
from meshpilot.envoy.targets import inbound_ports
from meshpilot.model import Protocol, Proxy
from meshpilot.model.snapshot import Snapshot

log = logging.getLogger("meshpilot.envoy")

HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"


def listener_name(address: str, port: int) -> str:
    return f"{address}_{port}"


def inbound_listeners(snapshot: Snapshot, proxy: Proxy) -> list[listener_pb2.Listener]:
    out: dict[tuple[str, int], listener_pb2.Listener] = {}
    for inbound in inbound_ports(snapshot, proxy):
        if (inbound.bind, inbound.port) in out:
            continue
        listener = _listener(inbound.bind, inbound.port, base_pb2.INBOUND)
        cluster = names.inbound_cluster(inbound.port)
        if inbound.protocol.is_http:
            routes = route_pb2.RouteConfiguration(name=cluster)
            vhost = routes.virtual_hosts.add(name=cluster, domains=["*"])
            route = vhost.routes.add(name="default")
            route.match.prefix = "/"
            route.route.cluster = cluster
            route.route.timeout.CopyFrom(duration(0))
            # AuthorizationPolicy and RequestAuthentication act on the inbound side only.
            manager = _http_manager(
                f"inbound_{inbound.port}", first=authz.inbound_http_filters(snapshot, proxy)
            )
            telemetry.for_proxy(snapshot, proxy).apply(manager)  # server-side spans, logs
            wasm.apply(manager, snapshot, proxy, "SERVER", inbound.port)
            manager.route_config.CopyFrom(routes)
            _add_filter(listener, HCM, manager)
        else:
            for name, config in authz.network_filters(snapshot, proxy, inbound.port):
                _add_filter(listener, name, config)
            _add_filter(listener, TCP_PROXY, _tcp_proxy(f"inbound_{inbound.port}", cluster))
        # PeerAuthentication: which of plaintext and mTLS the port accepts (mtls.py).
        mtls.apply_inbound(listener, mtls.inbound_mode(snapshot, proxy, inbound.port))
        out[(inbound.bind, inbound.port)] = listener
    return [out[k] for k in sorted(out)]


def outbound_listeners(
    snapshot: Snapshot, proxy: Proxy, taken: set[tuple[str, int]], scope: Scope
) -> list[listener_pb2.Listener]:
    """One listener per service port the proxy may reach, bound where its Sidecar says (else
    its outbound address), skipping addresses the inbound side already binds."""
    http_ports: set[int] = set()
    tls_ports: set[int] = set()
    tcp_services: dict[int, str] = {}
    for host in sorted(snapshot.services):
        service = snapshot.services[host]
        for port in service.ports:
            if not scope.visible(service, port.number):
                continue
            if port.protocol.is_http:
                http_ports.add(port.number)
            elif port.protocol in (Protocol.HTTPS, Protocol.TLS):
                tls_ports.add(port.number)
            elif port.protocol != Protocol.UNSUPPORTED:
                tcp_services.setdefault(port.number, host)
    for number in sorted((http_ports | tls_ports) & set(tcp_services)):
        log.warning("port %d carries HTTP or TLS and TCP services; %s is unreachable on it",
                    number, tcp_services[number])
    out = []
    passthrough = scope.outbound_policy == ALLOW_ANY
    # One listener per port: HTTP wins a port shared with other protocols, then TLS.
    for number in sorted(http_ports | tls_ports | set(tcp_services)):
        bind = scope.bind_for(number, proxy.outbound_bind)
        if (bind, number) in taken:
            continue
        listener = _listener(bind, number, base_pb2.OUTBOUND)
        if number in http_ports:
            manager = _http_manager(f"outbound_{number}", passthrough=passthrough)
            telemetry.for_proxy(snapshot, proxy).apply(manager)
            wasm.apply(manager, snapshot, proxy, "CLIENT", number)
            manager.rds.route_config_name = str(number)
            manager.rds.config_source.CopyFrom(ads_source())
            _add_filter(listener, HCM, manager)
        elif number in tls_ports:
            listener.ClearField("filter_chains")
            listener.listener_filters.append(tcp_routes.tls_inspector())
            listener.filter_chains.extend(
                tcp_routes.tls_filter_chains(snapshot, proxy, number, scope)
            )
        else:
            tcp = tcp_routes.tcp_filter(snapshot, proxy, tcp_services[number], number)
            _add_filter(listener, TCP_PROXY, tcp)
        out.append(listener)
    return out


def _listener(address: str, port: int, direction: int) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(name=listener_name(address, port))
    listener.address.socket_address.address = address
    listener.address.socket_address.port_value = port
    listener.traffic_direction = direction
    listener.filter_chains.add()
    return listener


def _add_filter(listener: listener_pb2.Listener, name: str, config: Message) -> None:
    chain = listener.filter_chains[0]
    chain.filters.add(name=name).typed_config.CopyFrom(pack(config))


def http_filters(passthrough: bool = False) -> list[tuple[str, Message]]:
    """The HTTP filter chain of a connection manager, in order. CORS and fault filters are
    inert until a route configures them through `typed_per_filter_config`; the dynamic
    forward proxy acts only on requests routed to the passthrough cluster."""
    chain: list[tuple[str, Message]] = [
        (CORS_FILTER, cors_pb2.Cors()),
        (FAULT_FILTER, fault_pb2.HTTPFault()),
    ]
    if passthrough:
        chain.append((forward.FILTER, forward.http_filter()))
    chain.append((ROUTER, router_pb2.Router()))
    return chain


def _http_manager(
    stat_prefix: str, passthrough: bool = False, first: list[tuple[str, Message]] | None = None
) -> hcm_pb2.HttpConnectionManager:
    """A connection manager; `first` are filters placed before the standard chain."""
    manager = hcm_pb2.HttpConnectionManager(stat_prefix=stat_prefix)
    manager.codec_type = hcm_pb2.HttpConnectionManager.AUTO
    for name, config in [*(first or ()), *http_filters(passthrough)]:
        manager.http_filters.add(name=name).typed_config.CopyFrom(pack(config))
    return manager


def _tcp_proxy(stat_prefix: str, cluster: str) -> tcp_proxy_pb2.TcpProxy:
    return tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, cluster=cluster)
