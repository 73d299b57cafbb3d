"""Gateway translation: which router a Gateway selects, the listeners and filter chains its
servers become, and where requests into the router go.

Plain HTTP gateway listeners go through `tests.simulation`; TLS and TCP chains (several filter
chains, SNI, transport sockets) are checked on the protos, and every router config is also
loaded by a real Envoy in validate mode (`tests.envoy_check`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshpilot.config.secrets import scan_secrets
from meshpilot.config.support import unsupported_fields
from meshpilot.envoy import names
from meshpilot.envoy.generators import GENERATORS
from meshpilot.envoy.names import outbound_cluster
from meshpilot.model import Config, Kind, NodeType, Proxy
from meshpilot.model.credential import Credential
from meshpilot.model.gateways import resolve_gateway_name
from meshpilot.model.snapshot import Snapshot
from tests.configs import service_entry
from tests.envoy_check import envoy_rejects
from tests.gateway_certs import issue, make_ca
from tests.simulation import NoRoute, NoVirtualHost, Request, Simulation, sidecar, snapshot_of

REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings.shop.svc.cluster.local"
DB = "db.default.svc.cluster.local"
SECURE = "secure.default.svc.cluster.local"
BIND = "127.0.0.5"

SERVICES = [
    service_entry("reviews", [REVIEWS], endpoints=[{"address": "10.0.0.1"}]),
    service_entry(
        "ratings", [RATINGS], namespace="shop",
        ports=[{"number": 8080, "name": "http", "protocol": "HTTP"}],
        endpoints=[{"address": "10.0.1.1"}],
    ),
    service_entry(
        "db", [DB], ports=[{"number": 27017, "name": "tcp", "protocol": "TCP"}],
        endpoints=[{"address": "10.0.2.1"}],
    ),
    service_entry(
        "secure", [SECURE], ports=[{"number": 8443, "name": "tls", "protocol": "TLS"}],
        endpoints=[{"address": "10.0.3.1"}],
    ),
]


def router(
    labels: Mapping[str, str] | None = None, namespace: str = "istio-system", bind: str = BIND
) -> Proxy:
    return Proxy(
        id=f"router~{bind}~ingress.{namespace}~{namespace}.svc.cluster.local",
        type=NodeType.ROUTER,
        namespace=namespace,
        workload_name="ingress",
        labels=dict(labels if labels is not None else {"istio": "ingressgateway"}),
        outbound_bind=bind,
    )


def gateway(
    name: str, servers: list[dict[str, Any]], namespace: str = "istio-system",
    selector: dict[str, str] | None = None,
) -> Config:
    spec: dict[str, Any] = {"servers": servers}
    spec["selector"] = {"istio": "ingressgateway"} if selector is None else selector
    return Config(kind=Kind.GATEWAY, name=name, namespace=namespace, spec=spec)


def vs(name: str, namespace: str = "default", **spec: Any) -> Config:
    return Config(kind=Kind.VIRTUAL_SERVICE, name=name, namespace=namespace, spec=spec)


def http_server(hosts: list[str], number: int = 80, **extra: Any) -> dict[str, Any]:
    return {"port": {"number": number, "name": "http", "protocol": "HTTP"}, "hosts": hosts,
            **extra}


def to(host: str, port: int | None = None, weight: int | None = None) -> dict[str, Any]:
    dest: dict[str, Any] = {"destination": {"host": host}}
    if port is not None:
        dest["destination"]["port"] = {"number": port}
    if weight is not None:
        dest["weight"] = weight
    return dest


def snapshot(
    configs: Iterable[Config], secrets: Mapping[str, Credential] | None = None
) -> Snapshot:
    snap = snapshot_of([*SERVICES, *configs])
    return dataclasses.replace(snap, secrets=dict(secrets or {}))


def listeners(snap: Snapshot, proxy: Proxy) -> dict[str, listener_pb2.Listener]:
    out = {}
    for resource in GENERATORS[names.LISTENER].generate(snap, proxy, None):
        listener = listener_pb2.Listener()
        resource.body.Unpack(listener)
        out[listener.name] = listener
    return out


def route(snap: Snapshot, proxy: Proxy, name: str) -> route_pb2.RouteConfiguration:
    (resource,) = GENERATORS[names.ROUTE].generate(snap, proxy, [name])
    config = route_pb2.RouteConfiguration()
    resource.body.Unpack(config)
    return config


def manager(chain: Any) -> hcm_pb2.HttpConnectionManager:
    (network_filter,) = chain.filters
    found = hcm_pb2.HttpConnectionManager()
    assert network_filter.typed_config.Unpack(found)
    return found


def tcp(chain: Any) -> tcp_proxy_pb2.TcpProxy:
    (network_filter,) = chain.filters
    found = tcp_proxy_pb2.TcpProxy()
    assert network_filter.typed_config.Unpack(found)
    return found


def tls_context(chain: Any) -> tls_pb2.DownstreamTlsContext:
    found = tls_pb2.DownstreamTlsContext()
    assert chain.transport_socket.typed_config.Unpack(found)
    return found


BOOKINFO_GW = gateway("bookinfo", [http_server(["bookinfo.example.com", "*.shop.example.com"])])
BOOKINFO_VS = vs(
    "bookinfo", hosts=["bookinfo.example.com"], gateways=["istio-system/bookinfo"],
    http=[
        {"match": [{"uri": {"prefix": "/ratings"}}], "route": [to(RATINGS)]},
        {"route": [to(REVIEWS)]},
    ],
)


# --- Names and selection ----------------------------------------------------------------------


@pytest.mark.parametrize(("written", "resolved"), [
    ("mesh", "mesh"),
    ("gw", "default/gw"),
    ("./gw", "default/gw"),
    ("other/gw", "other/gw"),
    ("gw.other.svc.cluster.local", "other/gw"),
])
def test_gateway_names_resolve_as_istio(written: str, resolved: str) -> None:
    assert resolve_gateway_name(written, "default") == resolved


def test_selector_picks_routers_by_label_in_any_namespace() -> None:
    snap = snapshot([
        gateway("selected", [http_server(["a.example.com"], 80)], namespace="edge"),
        gateway("other", [http_server(["b.example.com"], 81)], selector={"istio": "egress"}),
        gateway("everyone", [http_server(["c.example.com"], 82)], selector={}),
    ])
    assert sorted(listeners(snap, router())) == ["0.0.0.0_80", "0.0.0.0_82"]
    assert sorted(listeners(snap, router({"istio": "egress"}))) == ["0.0.0.0_81", "0.0.0.0_82"]


def test_router_listeners_bind_the_outbound_address_under_istio_names() -> None:
    snap = snapshot([BOOKINFO_GW, BOOKINFO_VS])
    (listener,) = listeners(snap, router()).values()
    assert listener.name == "0.0.0.0_80"
    assert listener.address.socket_address.address == BIND
    assert listener.address.socket_address.port_value == 80
    (chain,) = listener.filter_chains
    hcm = manager(chain)
    assert hcm.rds.route_config_name == "http.80"
    assert hcm.strip_any_host_port


def test_a_server_bind_gets_its_own_listener_and_route_name() -> None:
    snap = snapshot([gateway("bound", [http_server(["*"], 8080, bind="127.0.0.9")])])
    (listener,) = listeners(snap, router()).values()
    assert listener.name == "127.0.0.9_8080"
    assert listener.address.socket_address.address == "127.0.0.9"
    assert manager(listener.filter_chains[0]).rds.route_config_name == "http.8080.127.0.0.9"


# --- HTTP routing -----------------------------------------------------------------------------


def test_http_host_routing_through_the_gateway() -> None:
    sim = Simulation(snapshot([BOOKINFO_GW, BOOKINFO_VS]), router())
    assert sim.run(Request(BIND, 80, "bookinfo.example.com")).cluster == \
        outbound_cluster(REVIEWS, 9080)
    # The port in Host is ignored, as on Istio's gateways.
    result = sim.run(Request(BIND, 80, "bookinfo.example.com:80", "/ratings/1"))
    assert result.cluster == outbound_cluster(RATINGS, 8080)
    assert result.route_config == "http.80"
    assert result.virtual_host == "bookinfo.example.com:80"


def test_unknown_host_gets_404() -> None:
    sim = Simulation(snapshot([BOOKINFO_GW, BOOKINFO_VS]), router())
    with pytest.raises(NoVirtualHost):
        sim.run(Request(BIND, 80, "nobody.example.com"))


def test_route_config_without_virtual_services_answers_404_everywhere() -> None:
    config = route(snapshot([BOOKINFO_GW]), router(), "http.80")
    (vhost,) = config.virtual_hosts
    assert list(vhost.domains) == ["*"] and not vhost.routes
    with pytest.raises(NoRoute):
        Simulation(snapshot([BOOKINFO_GW]), router()).run(Request(BIND, 80, "anything"))


def test_virtual_hosts_are_the_intersection_of_server_and_virtual_service_hosts() -> None:
    shop = vs("shop", namespace="shop", hosts=["*.example.com", "elsewhere.org"],
              gateways=["istio-system/bookinfo"], http=[{"route": [to(RATINGS)]}])
    config = route(snapshot([BOOKINFO_GW, shop]), router(), "http.80")
    # The wildcard VS host narrows to the server's hosts; elsewhere.org is not served.
    assert sorted(d for v in config.virtual_hosts for d in v.domains) == [
        "*.shop.example.com", "bookinfo.example.com",
    ]


def test_server_host_namespaces_admit_virtual_services() -> None:
    gw = gateway("ns", [http_server(["shop/a.example.com", "./b.example.com", "*/c.example.com"])])
    services = [
        vs(f"{h}-{ns}", namespace=ns, hosts=[f"{h}.example.com"], gateways=["istio-system/ns"],
           http=[{"route": [to(REVIEWS)]}])
        for h in "abc" for ns in ("default", "shop", "istio-system")
    ]
    config = route(snapshot([gw, *services]), router(), "http.80")
    by_host = {v.domains[0]: len(v.routes) for v in config.virtual_hosts}
    # a: only from namespace shop; b: only from the Gateway's namespace; c: from all three.
    assert by_host == {"a.example.com": 1, "b.example.com": 1, "c.example.com": 3}


def test_several_virtual_services_for_one_host_merge_in_order() -> None:
    first = vs("first", hosts=["bookinfo.example.com"], gateways=["istio-system/bookinfo"],
               http=[{"match": [{"uri": {"prefix": "/one"}}], "route": [to(RATINGS)]}])
    second = vs("second", hosts=["bookinfo.example.com"], gateways=["istio-system/bookinfo"],
                http=[{"route": [to(REVIEWS)]}])
    sim = Simulation(snapshot([BOOKINFO_GW, first, second]), router())
    assert sim.run(Request(BIND, 80, "bookinfo.example.com", "/one")).cluster == \
        outbound_cluster(RATINGS, 8080)
    assert sim.run(Request(BIND, 80, "bookinfo.example.com", "/two")).cluster == \
        outbound_cluster(REVIEWS, 9080)


def test_https_redirect_marks_every_host_require_tls() -> None:
    gw = gateway("redirect", [http_server(["bookinfo.example.com", "plain.example.com"],
                                          tls={"httpsRedirect": True})])
    bound = dataclasses.replace(BOOKINFO_VS, spec={**BOOKINFO_VS.spec,
                                                   "gateways": ["istio-system/redirect"]})
    config = route(snapshot([gw, bound]), router(), "http.80")
    vhosts = {v.domains[0]: v for v in config.virtual_hosts}
    assert set(vhosts) == {"bookinfo.example.com", "plain.example.com"}
    assert all(v.require_tls == rc.VirtualHost.ALL for v in vhosts.values())


# --- gateways: mesh vs named ------------------------------------------------------------------


def test_sidecars_do_not_get_gateway_bound_virtual_services() -> None:
    gateway_only = vs("edge", hosts=[REVIEWS], gateways=["istio-system/bookinfo"],
                      http=[{"route": [to(RATINGS)]}])
    assert sidecar_routes(snapshot([BOOKINFO_GW, gateway_only]), REVIEWS) == [
        ("/", outbound_cluster(REVIEWS, 9080)),
    ]


def sidecar_routes(snap: Snapshot, host: str, port: int = 9080) -> list[tuple[str, str]]:
    """(prefix, cluster) of each route a sidecar has for `host`."""
    config = route(snap, sidecar(), str(port))
    (vhost,) = [v for v in config.virtual_hosts if host in v.domains]
    return [(r.match.prefix, r.route.cluster) for r in vhost.routes]


def test_routers_do_not_get_mesh_only_virtual_services() -> None:
    mesh_only = vs("mesh", hosts=["bookinfo.example.com"], http=[{"route": [to(RATINGS)]}])
    config = route(snapshot([BOOKINFO_GW, mesh_only]), router(), "http.80")
    assert [v.name for v in config.virtual_hosts] == ["blackhole:80"]


def test_virtual_service_bound_to_both_serves_both() -> None:
    both = vs("both", hosts=[REVIEWS, "bookinfo.example.com"],
              gateways=["mesh", "istio-system/bookinfo"],
              http=[{"match": [{"uri": {"prefix": "/edge"}, "gateways": ["istio-system/bookinfo"]}],
                     "route": [to(RATINGS)]},
                    {"route": [to(REVIEWS, 9080)]}])
    snap = snapshot([BOOKINFO_GW, both])
    at_edge = Simulation(snap, router()).run(Request(BIND, 80, "bookinfo.example.com", "/edge"))
    assert at_edge.cluster == outbound_cluster(RATINGS, 8080)
    # The /edge match names only the gateway: sidecars skip it.
    assert sidecar_routes(snap, REVIEWS) == [("/", outbound_cluster(REVIEWS, 9080))]


def test_short_gateway_name_resolves_in_the_virtual_service_namespace() -> None:
    gw = gateway("local", [http_server(["*"])], namespace="default")
    short = vs("short", hosts=["x.example.com"], gateways=["local"],
               http=[{"route": [to(REVIEWS)]}])
    sim = Simulation(snapshot([gw, short]), router())
    assert sim.run(Request(BIND, 80, "x.example.com")).cluster == outbound_cluster(REVIEWS, 9080)


# --- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca("test ca")
    issue(ca, "bookinfo.example.com", ["bookinfo.example.com"]).write(root / "files")
    (root / "files" / "ca.crt").write_bytes(ca.cert_pem)
    secrets = root / "secrets"
    issue(ca, "global", ["global.example.com"]).write(secrets / "global-cred")
    issue(ca, "scoped", ["scoped.example.com"]).write(secrets / "istio-system" / "scoped-cred")
    (secrets / "scoped-cred-cacert").mkdir()
    (secrets / "scoped-cred-cacert" / "ca.crt").write_bytes(ca.cert_pem)
    return {"files": root / "files", "secrets": secrets}


def https_server(hosts: list[str], tls: dict[str, Any], number: int = 443,
                 name: str = "https") -> dict[str, Any]:
    return {"port": {"number": number, "name": name, "protocol": "HTTPS"}, "hosts": hosts,
            "tls": tls}


def test_https_simple_from_files_and_mutual_from_a_credential(pki: dict[str, Path]) -> None:
    files = pki["files"]
    gw = gateway("secure", [
        https_server(["bookinfo.example.com"], {
            "mode": "SIMPLE", "serverCertificate": str(files / "tls.crt"),
            "privateKey": str(files / "tls.key"),
        }),
        https_server(["scoped.example.com"], {"mode": "MUTUAL", "credentialName": "scoped-cred"},
                     name="mtls"),
    ])
    bound = vs("secure", hosts=["bookinfo.example.com", "scoped.example.com"],
               gateways=["istio-system/secure"], http=[{"route": [to(REVIEWS)]}])
    snap = snapshot([gw, bound], scan_secrets(pki["secrets"]))
    (listener,) = listeners(snap, router()).values()
    assert listener.name == "0.0.0.0_443"
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    simple, mutual = listener.filter_chains
    assert list(simple.filter_chain_match.server_names) == ["bookinfo.example.com"]
    assert manager(simple).rds.route_config_name == "https.443.https.secure.istio-system"
    context = tls_context(simple)
    (certificate,) = context.common_tls_context.tls_certificates
    assert certificate.certificate_chain.filename == str(files / "tls.crt")
    assert not context.require_client_certificate.value
    assert list(context.common_tls_context.alpn_protocols) == ["h2", "http/1.1"]

    assert manager(mutual).rds.route_config_name == "https.443.mtls.secure.istio-system"
    context = tls_context(mutual)
    (certificate,) = context.common_tls_context.tls_certificates
    scoped = (pki["secrets"] / "istio-system" / "scoped-cred" / "tls.crt").read_bytes()
    assert certificate.certificate_chain.inline_bytes == scoped
    assert context.require_client_certificate.value
    # The CA came from the separate `<name>-cacert` credential.
    ca = (pki["secrets"] / "scoped-cred-cacert" / "ca.crt").read_bytes()
    assert context.common_tls_context.validation_context.trusted_ca.inline_bytes == ca

    config = route(snap, router(), "https.443.mtls.secure.istio-system")
    assert [v.domains[0] for v in config.virtual_hosts] == ["scoped.example.com"]
    assert envoy_rejects(snap, router()) == ""


def test_credentials_are_looked_up_in_the_router_namespace_first(pki: dict[str, Path]) -> None:
    gw = gateway("scoped", [https_server(["*"], {"mode": "SIMPLE",
                                                  "credentialName": "scoped-cred"})],
                 selector={})
    secrets = scan_secrets(pki["secrets"])
    assert sorted(secrets) == ["global-cred", "istio-system/scoped-cred", "scoped-cred-cacert"]
    snap = snapshot([gw], secrets)
    assert listeners(snap, router())["0.0.0.0_443"].filter_chains
    # A router in another namespace cannot see istio-system's credential: no listener at all.
    assert listeners(snap, router(namespace="edge")) == {}


def test_missing_credential_leaves_only_that_server_out(
    pki: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    gw = gateway("partial", [
        https_server(["a.example.com"], {"mode": "SIMPLE", "credentialName": "nope"}),
        https_server(["b.example.com"], {"mode": "SIMPLE", "credentialName": "global-cred"},
                     name="b"),
    ])
    snap = snapshot([gw], scan_secrets(pki["secrets"]))
    (chain,) = listeners(snap, router())["0.0.0.0_443"].filter_chains
    assert list(chain.filter_chain_match.server_names) == ["b.example.com"]
    assert "spec.servers[0].tls.credentialName" in caplog.text
    assert "'nope' is not in the secrets directory" in caplog.text


def test_passthrough_routes_by_sni_from_tls_routes() -> None:
    gw = gateway("pass", [{"port": {"number": 8443, "name": "tls", "protocol": "TLS"},
                           "hosts": ["*.example.com"], "tls": {"mode": "PASSTHROUGH"}}])
    bound = vs("pass", hosts=["secure.example.com", "db.example.com"],
               gateways=["istio-system/pass"],
               tls=[{"match": [{"sniHosts": ["secure.example.com"]}], "route": [to(SECURE)]},
                    {"match": [{"sniHosts": ["db.example.com"], "port": 9999}],
                     "route": [to(DB)]}])
    snap = snapshot([gw, bound])
    listener = listeners(snap, router())["0.0.0.0_8443"]
    (chain,) = listener.filter_chains  # the port-9999 match does not apply to port 8443
    assert list(chain.filter_chain_match.server_names) == ["secure.example.com"]
    assert not chain.HasField("transport_socket")
    assert tcp(chain).cluster == outbound_cluster(SECURE, 8443)
    assert envoy_rejects(snap, router()) == ""


def test_tcp_server_proxies_to_the_first_matching_tcp_route() -> None:
    gw = gateway("tcp", [{"port": {"number": 31400, "name": "tcp", "protocol": "TCP"},
                          "hosts": ["*"]}])
    bound = vs("tcp", hosts=["*"], gateways=["istio-system/tcp"],
               tcp=[{"match": [{"port": 1}], "route": [to(REVIEWS)]},
                    {"match": [{"port": 31400}],
                     "route": [to(DB, weight=75), to(SECURE, weight=25)]}])
    snap = snapshot([gw, bound])
    (chain,) = listeners(snap, router())["0.0.0.0_31400"].filter_chains
    weighted = {c.name: c.weight for c in tcp(chain).weighted_clusters.clusters}
    assert weighted == {outbound_cluster(DB, 27017): 75, outbound_cluster(SECURE, 8443): 25}
    assert envoy_rejects(snap, router()) == ""


def test_tls_terminated_tcp_server_uses_tcp_routes(pki: dict[str, Path]) -> None:
    gw = gateway("tlsdb", [{"port": {"number": 5443, "name": "tls", "protocol": "TLS"},
                            "hosts": ["db.example.com"],
                            "tls": {"mode": "SIMPLE", "credentialName": "global-cred"}}])
    bound = vs("tlsdb", hosts=["db.example.com"], gateways=["istio-system/tlsdb"],
               tcp=[{"route": [to(DB)]}])
    snap = snapshot([gw, bound], scan_secrets(pki["secrets"]))
    (chain,) = listeners(snap, router())["0.0.0.0_5443"].filter_chains
    assert tcp(chain).cluster == outbound_cluster(DB, 27017)
    assert tls_context(chain).common_tls_context.tls_certificates
    assert not tls_context(chain).common_tls_context.alpn_protocols


def test_a_port_keeps_the_kind_of_its_first_server(caplog: pytest.LogCaptureFixture) -> None:
    gw = gateway("mixed", [
        http_server(["a.example.com"], 8000),
        {"port": {"number": 8000, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]},
    ])
    (chain,) = listeners(snapshot([gw, BOOKINFO_VS]), router())["0.0.0.0_8000"].filter_chains
    assert manager(chain).rds.route_config_name == "http.8000"
    assert "a TCP server cannot share it" in caplog.text


def test_duplicate_sni_across_servers_is_dropped_not_rejected(pki: dict[str, Path]) -> None:
    cred = {"mode": "SIMPLE", "credentialName": "global-cred"}
    gw = gateway("dup", [https_server(["a.example.com"], cred, name="one"),
                         https_server(["a.example.com", "b.example.com"], cred, name="two")])
    snap = snapshot([gw], scan_secrets(pki["secrets"]))
    chains = listeners(snap, router())["0.0.0.0_443"].filter_chains
    assert [list(c.filter_chain_match.server_names) for c in chains] == [
        ["a.example.com"], ["b.example.com"],
    ]
    assert envoy_rejects(snap, router()) == ""


def test_router_resources_are_shared_by_replicas_and_cached() -> None:
    snap = snapshot([BOOKINFO_GW, BOOKINFO_VS])
    first = GENERATORS[names.LISTENER].generate(snap, router(), None)
    replica = dataclasses.replace(router(), id="router~other")
    assert first[0] is GENERATORS[names.LISTENER].generate(snap, replica, None)[0]
    (http_80,) = GENERATORS[names.ROUTE].generate(snap, router(), ["http.80"])
    assert http_80 is GENERATORS[names.ROUTE].generate(snap, replica, ["http.80"])[0]
    # A router on another address shares nothing.
    moved = GENERATORS[names.LISTENER].generate(snap, router(bind="127.0.0.6"), None)
    assert moved[0] is not first[0]


def test_unapplied_gateway_fields_are_named() -> None:
    applied = https_server(["*"], {
        "mode": "MUTUAL", "credentialName": "c", "subjectAltNames": ["x"],
        "minProtocolVersion": "TLSV1_3", "cipherSuites": ["ECDHE-ECDSA-AES128-GCM-SHA256"],
    })
    gw = gateway("fields", [
        {**applied, "name": "main", "bind": "127.0.0.9"},
        {**http_server(["*"]), "defaultEndpoint": "127.0.0.1:8080"},
    ])
    assert unsupported_fields(gw) == ["spec.servers[1].defaultEndpoint"]


def test_two_servers_of_a_port_naming_one_host_do_not_repeat_routes() -> None:
    gw = gateway("twice", [http_server(["bookinfo.example.com"]),
                           http_server(["*.example.com"], name="second")])
    bound = dataclasses.replace(BOOKINFO_VS, spec={**BOOKINFO_VS.spec,
                                                   "gateways": ["istio-system/twice"]})
    (vhost,) = route(snapshot([gw, bound]), router(), "http.80").virtual_hosts
    assert len(vhost.routes) == 2
