"""Istio config → Envoy config, checked as "this request from that proxy hits that cluster".

Every request goes through `tests.simulation`, which evaluates the listeners, routes, clusters
and endpoints meshpilot generates with Envoy's semantics.
"""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from meshpilot.envoy.names import PASSTHROUGH_CLUSTER, inbound_cluster, outbound_cluster
from meshpilot.envoy.routes import DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_ON
from meshpilot.model import Config, Kind, Proxy
from tests.configs import destination_rule, service_entry, virtual_service, workload_entry
from tests.simulation import (
    NoListener,
    NoRoute,
    Redirect,
    Request,
    Result,
    Simulation,
    sidecar,
    snapshot_of,
)

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings.default.svc.cluster.local"
DETAILS = "details.default.svc.cluster.local"
ALL = outbound_cluster(REVIEWS, 9080)
V1, V2, V3 = (outbound_cluster(REVIEWS, 9080, v) for v in ("v1", "v2", "v3"))

HTTP_9080 = {"number": 9080, "name": "http", "protocol": "HTTP"}

MESH = [
    service_entry("reviews", [REVIEWS], selector={"app": "reviews"}),
    *(
        workload_entry(f"reviews-{v}", f"10.0.0.{i}", {"app": "reviews", "version": v})
        for i, v in enumerate(("v1", "v2", "v3"), start=1)
    ),
    destination_rule(
        "reviews", REVIEWS, [{"name": v, "labels": {"version": v}} for v in ("v1", "v2", "v3")]
    ),
    service_entry(
        "ratings", [RATINGS], ports=[{"number": 8080, "name": "http", "protocol": "HTTP"}],
        endpoints=[{"address": "10.0.1.1"}],
    ),
    service_entry(
        "details", [DETAILS],
        ports=[HTTP_9080, {"number": 9090, "name": "http-admin", "protocol": "HTTP"}],
        endpoints=[{"address": "10.0.2.1"}],
    ),
]
CLIENT = sidecar()


def simulate(*configs: Config, proxy: Proxy = CLIENT, mesh: bool = True) -> Simulation:
    return Simulation(snapshot_of([*MESH, *configs] if mesh else configs), proxy)


def send(
    *configs: Config, host: str = "reviews", path: str = "/", port: int = 9080,
    proxy: Proxy = CLIENT, **request: Any,
) -> Result:
    """Send one request from `proxy`'s application through its sidecar."""
    result = simulate(*configs, proxy=proxy).run(
        Request(proxy.outbound_bind, port, host, path, **request)
    )
    assert not result.unknown_clusters, f"routes to clusters CDS lacks: {result}"
    return result


def to(subset: str = "", weight: int | None = None, host: str = "reviews",
       port: int | None = None) -> dict[str, Any]:
    destination: dict[str, Any] = {"host": host}
    if subset:
        destination["subset"] = subset
    if port is not None:
        destination["port"] = {"number": port}
    return {"destination": destination} if weight is None else {
        "destination": destination, "weight": weight}


def on(match: dict[str, Any], subset: str, name: str = "matched") -> dict[str, Any]:
    return {"name": name, "match": [match], "route": [to(subset)]}


REST = {"name": "rest", "route": [to("v1")]}


def routes(*http: dict[str, Any], host: str = "reviews", namespace: str = "default") -> Config:
    return virtual_service(f"vs-{host}", [host], list(http), namespace=namespace)


def rule(host: str, spec: dict[str, Any]) -> Config:
    return Config(kind=Kind.DESTINATION_RULE, name=f"dr-{host}", namespace="default",
                  spec={"host": host, **spec})


# --- Routing without VirtualServices -------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "cluster"),
    [
        ("reviews", 9080, ALL),
        ("ratings:8080", 8080, outbound_cluster(RATINGS, 8080)),
        (f"{DETAILS}:9090", 9090, outbound_cluster(DETAILS, 9090)),
    ],
)
def test_default_route_per_service(host: str, port: int, cluster: str) -> None:
    result = send(host=host, port=port)
    assert (result.cluster, result.route_name, result.upstream_path) == (cluster, "default", "/")


REGISTRY_ONLY = Config(kind=Kind.SIDECAR, name="default", namespace="default", spec={
    "egress": [{"hosts": ["*/*"]}], "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}})


def test_unknown_host_passes_through_by_default() -> None:
    result = send(host="nothing.example.com")
    assert (result.virtual_host, result.cluster) == ("allow_any", PASSTHROUGH_CLUSTER)


def test_unknown_host_is_refused_with_registry_only() -> None:
    assert send(REGISTRY_ONLY, host="nothing.example.com").direct_response == 502
    assert send(REGISTRY_ONLY).cluster == ALL


def test_port_without_a_service_has_no_listener() -> None:
    with pytest.raises(NoListener):
        send(port=7000)


@pytest.mark.parametrize(
    "host",
    ["reviews", "reviews:9080", "reviews.default", "reviews.default:9080", "reviews.default.svc",
     REVIEWS, f"{REVIEWS}:9080", "Reviews.DEFAULT.svc.Cluster.Local"],
)
def test_domains_for_a_same_namespace_client(host: str) -> None:
    assert send(host=host).cluster == ALL


@pytest.mark.parametrize(
    ("host", "cluster"),
    [("reviews.default", ALL), (REVIEWS, ALL), ("reviews", PASSTHROUGH_CLUSTER),
     ("reviews:9080", PASSTHROUGH_CLUSTER)],
)
def test_bare_name_only_for_same_namespace_clients(host: str, cluster: str) -> None:
    assert send(host=host, proxy=sidecar(namespace="other")).cluster == cluster


def test_host_with_another_port_is_not_the_service() -> None:
    assert send(host="reviews:8080").cluster == PASSTHROUGH_CLUSTER


def test_service_vip_and_wildcard_hosts_are_domains() -> None:
    vip = Config(kind=Kind.SERVICE_ENTRY, name="vip", namespace="default", spec={
        "hosts": ["vip.example.com"], "addresses": ["240.0.0.10"], "ports": [HTTP_9080],
        "resolution": "STATIC", "endpoints": [{"address": "10.0.3.1"}]})
    wild = service_entry("wild", ["*.wild.example.com"], endpoints=[{"address": "10.0.3.2"}])
    assert send(vip, host="240.0.0.10:9080").cluster == outbound_cluster("vip.example.com", 9080)
    assert send(wild, host="a.b.wild.example.com").cluster == outbound_cluster(
        "*.wild.example.com", 9080)


# --- VirtualService: destinations and weights --------------------------------------------------


@pytest.mark.parametrize(
    ("destinations", "weights"),
    [
        ([to("v1", 75), to("v2", 25)], {V1: 75, V2: 25}),
        ([to("v1", 1), to("v2", 3)], {V1: 1, V2: 3}),
        ([to("v1", 50), to("v2", 50), to("v3", 0)], {V1: 50, V2: 50}),
    ],
)
def test_weighted_subsets_carry_weights_as_written(
    destinations: list[dict[str, Any]], weights: dict[str, int]
) -> None:
    assert send(routes({"route": destinations})).weighted_clusters == weights


@pytest.mark.parametrize(
    "destinations",
    [[to("v2")], [to("v2", 100)], [to("v2", 100), to("v1", 0)], [to("v2", 0)]],
)
def test_single_remaining_destination_is_a_plain_cluster(
    destinations: list[dict[str, Any]]
) -> None:
    result = send(routes({"route": destinations}))
    assert (result.cluster, result.weighted_clusters) == (V2, {})


@pytest.mark.parametrize(
    ("destination", "cluster"),
    [
        (to(host="ratings"), outbound_cluster(RATINGS, 8080)),  # its only port
        (to(host="details"), outbound_cluster(DETAILS, 9080)),  # several ports: the request's
        (to(host="details", port=9090), outbound_cluster(DETAILS, 9090)),
        (to("v3", host=REVIEWS), V3),
    ],
)
def test_destination_port_defaulting(destination: dict[str, Any], cluster: str) -> None:
    assert send(routes({"route": [destination]})).cluster == cluster


def test_short_virtual_service_host_is_in_its_own_namespace() -> None:
    elsewhere = routes({"directResponse": {"status": 503}}, namespace="other")
    assert send(elsewhere).cluster == ALL
    assert send(routes({"directResponse": {"status": 503}})).direct_response == 503


@pytest.mark.parametrize(("gateways", "applies"),
                         [(["ingress"], False), (["ingress", "mesh"], True), ([], True)])
def test_virtual_service_bound_to_gateways_only_does_not_route_sidecars(
    gateways: list[str], applies: bool
) -> None:
    vs = routes({"directResponse": {"status": 418}})
    bound = Config(kind=vs.kind, name=vs.name, namespace=vs.namespace,
                   spec={**vs.spec, "gateways": gateways})
    assert send(bound).direct_response == (418 if applies else None)


# --- VirtualService: request matching ----------------------------------------------------------

JASON = {"headers": {"end-user": {"exact": "jason"}}}


@pytest.mark.parametrize(
    ("match", "request_", "hits"),
    [
        (JASON, {"headers": {"end-user": "jason"}}, True),
        (JASON, {"headers": {"End-User": "jason"}}, True),
        (JASON, {"headers": {"end-user": "Jason"}}, False),
        (JASON, {}, False),
        ({"headers": {"x-env": {"prefix": "stag"}}}, {"headers": {"x-env": "staging"}}, True),
        ({"headers": {"x-env": {"prefix": "stag"}}}, {"headers": {"x-env": "prod"}}, False),
        ({"headers": {"x-ver": {"regex": "v[0-9]+"}}}, {"headers": {"x-ver": "v12"}}, True),
        ({"headers": {"x-ver": {"regex": "v[0-9]+"}}}, {"headers": {"x-ver": "v1-beta"}}, False),
        ({"headers": {"x-debug": {}}}, {"headers": {"x-debug": ""}}, True),
        ({"headers": {"x-debug": {}}}, {}, False),
        ({"withoutHeaders": {"x-debug": {}}}, {}, True),
        ({"withoutHeaders": {"x-debug": {}}}, {"headers": {"x-debug": "1"}}, False),
        ({"withoutHeaders": {"x-env": {"exact": "prod"}}}, {"headers": {"x-env": "dev"}}, True),
        ({"withoutHeaders": {"x-env": {"exact": "prod"}}}, {"headers": {"x-env": "prod"}}, False),
        ({"uri": {"exact": "/api"}}, {"path": "/api"}, True),
        ({"uri": {"exact": "/api"}}, {"path": "/api?page=2"}, True),
        ({"uri": {"exact": "/api"}}, {"path": "/api/"}, False),
        ({"uri": {"exact": "/api"}}, {"path": "/API"}, False),
        ({"uri": {"exact": "/api"}, "ignoreUriCase": True}, {"path": "/API"}, True),
        ({"uri": {"prefix": "/api"}}, {"path": "/api/v1"}, True),
        ({"uri": {"prefix": "/api"}}, {"path": "/API/v1"}, False),
        ({"uri": {"prefix": "/api"}, "ignoreUriCase": True}, {"path": "/API/v1"}, True),
        ({"uri": {"regex": "/items/[0-9]+"}}, {"path": "/items/42?x=1"}, True),
        ({"uri": {"regex": "/items/[0-9]+"}}, {"path": "/items/42/x"}, False),
        ({"queryParams": {"q": {"exact": "a"}}}, {"query": {"q": "a"}}, True),
        ({"queryParams": {"q": {"exact": "a"}}}, {"query": {"q": "ab"}}, False),
        ({"queryParams": {"q": {"prefix": "a"}}}, {"query": {"q": "ab"}}, True),
        ({"queryParams": {"id": {"regex": "[0-9]+"}}}, {"path": "/?id=12"}, True),
        ({"queryParams": {"id": {"regex": "[0-9]+"}}}, {"path": "/?id=12a"}, False),
        ({"queryParams": {"debug": {}}}, {"query": {"debug": ""}}, True),
        ({"queryParams": {"debug": {}}}, {}, False),
        ({"method": {"exact": "POST"}}, {"method": "POST"}, True),
        ({"method": {"exact": "POST"}}, {}, False),
        ({"authority": {"exact": "reviews"}}, {}, True),
        ({"authority": {"exact": "reviews"}}, {"host": "reviews:9080"}, False),
        ({"authority": {"prefix": "reviews.default"}}, {"host": REVIEWS}, True),
        ({"scheme": {"exact": "http"}}, {}, True),
        ({**JASON, "uri": {"prefix": "/api"}}, {"headers": {"end-user": "jason"}}, False),
        ({**JASON, "uri": {"prefix": "/api"}},
         {"headers": {"end-user": "jason"}, "path": "/api"}, True),
    ],
)
def test_request_match(match: dict[str, Any], request_: dict[str, Any], hits: bool) -> None:
    result = send(routes(on(match, "v2"), REST), **request_)
    assert (result.cluster, result.route_name) == ((V2, "matched") if hits else (V1, "rest"))


def test_match_less_route_catches_the_rest_and_without_it_nothing_matches() -> None:
    assert send(routes(on(JASON, "v2"), REST)).route_name == "rest"
    with pytest.raises(NoRoute):
        send(routes(on(JASON, "v2")))


def test_first_matching_route_wins() -> None:
    vs = routes(on(JASON, "v2", "first"), on({"uri": {"prefix": "/"}}, "v3", "second"), REST)
    assert send(vs, headers={"end-user": "jason"}).route_name == "first"
    assert send(vs).route_name == "second"


@pytest.mark.parametrize("request_", [{"headers": {"end-user": "jason"}}, {"path": "/beta/x"}])
def test_match_entries_of_one_route_are_alternatives(request_: dict[str, Any]) -> None:
    either = {"match": [JASON, {"uri": {"prefix": "/beta"}}], "route": [to("v2")]}
    assert send(routes(either, REST), **request_).cluster == V2


def test_port_match_applies_to_that_port_only() -> None:
    vs = routes({"match": [{"port": 9090}], "directResponse": {"status": 204}},
                {"route": [to(host="details")]}, host="details")
    assert send(vs, host="details:9090", port=9090).direct_response == 204
    assert send(vs, host="details").cluster == outbound_cluster(DETAILS, 9080)


@pytest.mark.parametrize(
    ("proxy", "cluster"),
    [
        (sidecar(labels={"app": "client", "track": "canary"}), V2),
        (sidecar(labels={"app": "client"}), V1),
        (sidecar(labels={"track": "canary"}), V1),
    ],
)
def test_source_labels_select_proxies(proxy: Proxy, cluster: str) -> None:
    vs = routes(on({"sourceLabels": {"app": "client", "track": "canary"}}, "v2"), REST)
    assert send(vs, proxy=proxy).cluster == cluster


@pytest.mark.parametrize(("namespace", "cluster"), [("testing", V2), ("other", V1)])
def test_source_namespace_selects_proxies(namespace: str, cluster: str) -> None:
    vs = routes(on({"sourceNamespace": "testing"}, "v2"), REST)
    assert send(vs, host="reviews.default", proxy=sidecar(namespace=namespace)).cluster == cluster


def test_route_for_other_proxies_only_leaves_nothing() -> None:
    with pytest.raises(NoRoute):
        send(routes(on({"sourceLabels": {"app": "someone-else"}}, "v2")))


# --- VirtualService: actions -------------------------------------------------------------------


def test_direct_response() -> None:
    vs = routes({"directResponse": {"status": 503, "body": {"string": "down for repairs"}}})
    result = send(vs)
    assert (result.direct_response, result.body, result.cluster) == (503, "down for repairs", "")


@pytest.mark.parametrize(
    ("redirect", "path", "expected"),
    [
        ({"uri": "/v2/reviews"}, "/reviews?page=2",
         Redirect(301, "http://reviews/v2/reviews?page=2")),
        ({"authority": "new.example.com", "redirectCode": 302}, "/a",
         Redirect(302, "http://new.example.com/a")),
        ({"scheme": "https", "port": 8443}, "/a", Redirect(301, "https://reviews:8443/a")),
    ],
)
def test_redirect(redirect: dict[str, Any], path: str, expected: Redirect) -> None:
    assert send(routes({"redirect": redirect}), path=path).redirect == expected


@pytest.mark.parametrize(
    ("match", "path", "upstream"),
    [
        ({"uri": {"prefix": "/api/"}}, "/api/items?x=1", "/v1/items?x=1"),
        ({"uri": {"exact": "/api/"}}, "/api/?x=1", "/v1/?x=1"),
    ],
)
def test_uri_rewrite_replaces_the_matched_part(
    match: dict[str, Any], path: str, upstream: str
) -> None:
    vs = routes({"match": [match], "rewrite": {"uri": "/v1/"}, "route": [to()]})
    assert send(vs, path=path).upstream_path == upstream


def test_authority_rewrite() -> None:
    vs = routes({"rewrite": {"authority": "reviews.internal"}, "route": [to()]})
    assert send(vs).upstream_host == "reviews.internal"


def test_request_and_response_header_operations() -> None:
    headers = {
        "request": {"set": {"x-a": "set"}, "add": {"x-b": "added"}, "remove": ["x-c"]},
        "response": {"set": {"x-served-by": "reviews"}, "add": {"x-trace": "1"}},
    }
    vs = routes({"headers": headers, "route": [to()]})
    result = send(vs, headers={"x-a": "old", "x-b": "old", "x-c": "gone", "x-d": "kept"})
    assert result.upstream_headers == {
        "x-a": ("set",), "x-b": ("old", "added"), "x-d": ("kept",)}
    assert result.response_headers == {"x-served-by": ("reviews",), "x-trace": ("1",)}


def test_timeout_translation_and_default() -> None:
    assert send(routes({"timeout": "1.5s", "route": [to()]})).route.route.timeout.ToNanoseconds() \
        == 1_500_000_000
    assert send().route.route.timeout.ToNanoseconds() == 0  # Istio disables Envoy's 15 s


@pytest.mark.parametrize("configs", [(), (routes({"route": [to("v1")]}),)])
def test_istio_default_retry_policy(configs: tuple[Config, ...]) -> None:
    policy = send(*configs).route.route.retry_policy
    assert (policy.num_retries.value, policy.retry_on, list(policy.retriable_status_codes)) == (
        DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_ON, [503])
    assert DEFAULT_RETRY_ON == (
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes")
    assert DEFAULT_RETRY_ATTEMPTS == 2
    assert [p.name for p in policy.retry_host_predicate] == [
        "envoy.retry_host_predicates.previous_hosts"]


def test_retries_translation() -> None:
    retries = {"attempts": 4, "retryOn": "5xx,429,gateway-error", "perTryTimeout": "250ms"}
    policy = send(routes({"retries": retries, "route": [to()]})).route.route.retry_policy
    assert (policy.num_retries.value, policy.retry_on, list(policy.retriable_status_codes)) == (
        4, "5xx,gateway-error,retriable-status-codes", [429])
    assert policy.per_try_timeout.ToMilliseconds() == 250


def test_zero_retry_attempts_remove_the_policy() -> None:
    route = send(routes({"retries": {"attempts": 0}, "route": [to()]})).route
    assert not route.route.HasField("retry_policy")


# --- DestinationRule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "addresses"),
    [
        (ALL, [("10.0.0.1", 9080), ("10.0.0.2", 9080), ("10.0.0.3", 9080)]),
        (V1, [("10.0.0.1", 9080)]),
        (V3, [("10.0.0.3", 9080)]),
    ],
)
def test_subset_clusters_hold_only_matching_endpoints(
    cluster: str, addresses: list[tuple[str, int]]
) -> None:
    assert simulate().endpoints(cluster) == addresses


def test_route_to_an_undefined_subset_reaches_no_cluster() -> None:
    nope = outbound_cluster(REVIEWS, 9080, "nope")
    result = simulate(routes({"route": [to("nope")]})).run(Request("127.0.0.1", 9080, "reviews"))
    assert (result.cluster, result.unknown_clusters) == (nope, (nope,))


def test_subset_with_several_labels_and_several_endpoints() -> None:
    extra = workload_entry("reviews-v1b", "10.0.0.4", {"app": "reviews", "version": "v1"})
    assert simulate(extra).endpoints(V1) == [("10.0.0.1", 9080), ("10.0.0.4", 9080)]


LB = cluster_pb2.Cluster


@pytest.mark.parametrize(
    ("traffic_policy", "subset_policy", "cluster", "lb_policy"),
    [
        ({"loadBalancer": {"simple": "LEAST_REQUEST"}}, None, ALL, LB.LEAST_REQUEST),
        ({"loadBalancer": {"simple": "RANDOM"}}, None, V1, LB.RANDOM),
        ({"loadBalancer": {"simple": "LEAST_CONN"}}, None, ALL, LB.LEAST_REQUEST),
        ({"loadBalancer": {"simple": "RANDOM"},
          "portLevelSettings": [{"port": {"number": 9080},
                                 "loadBalancer": {"simple": "LEAST_REQUEST"}}]},
         None, ALL, LB.LEAST_REQUEST),
        ({"loadBalancer": {"simple": "RANDOM"},
          "portLevelSettings": [{"port": {"number": 9999},
                                 "loadBalancer": {"simple": "LEAST_REQUEST"}}]},
         None, ALL, LB.RANDOM),
        ({"loadBalancer": {"simple": "RANDOM"}},
         {"loadBalancer": {"simple": "LEAST_REQUEST"}}, V1, LB.LEAST_REQUEST),
        ({"loadBalancer": {"simple": "RANDOM"}},
         {"loadBalancer": {"simple": "LEAST_REQUEST"}}, V2, LB.RANDOM),
        ({"loadBalancer": {"simple": "RANDOM"}},
         {"portLevelSettings": [{"port": {"number": 9080},
                                 "loadBalancer": {"simple": "ROUND_ROBIN"}}]},
         V1, LB.ROUND_ROBIN),
    ],
)
def test_load_balancer_policy(
    traffic_policy: dict[str, Any], subset_policy: dict[str, Any] | None, cluster: str,
    lb_policy: int,
) -> None:
    v1: dict[str, Any] = {"name": "v1", "labels": {"version": "v1"}}
    if subset_policy is not None:
        v1["trafficPolicy"] = subset_policy
    subsets = [v1, {"name": "v2", "labels": {"version": "v2"}}]
    dr = rule(REVIEWS, {"trafficPolicy": traffic_policy, "subsets": subsets})
    mesh = [c for c in MESH if c.kind != Kind.DESTINATION_RULE]
    assert Simulation(snapshot_of([*mesh, dr]), CLIENT).cluster(cluster).lb_policy == lb_policy


@pytest.mark.parametrize(
    ("port", "http2"),
    [
        ({"number": 7070, "name": "grpc", "protocol": "GRPC"}, True),
        ({"number": 7070, "name": "http2-api", "protocol": "HTTP2"}, True),
        ({"number": 7070, "name": "grpc-api"}, True),
        ({"number": 7070, "name": "http", "protocol": "HTTP"}, False),
    ],
)
def test_http2_upstream_for_grpc_and_http2_ports(port: dict[str, Any], http2: bool) -> None:
    svc = service_entry("api", ["api.example.com"], ports=[port],
                        endpoints=[{"address": "10.0.4.1"}])
    cluster = simulate(svc).cluster(outbound_cluster("api.example.com", 7070))
    assert (HTTP_OPTIONS in cluster.typed_extension_protocol_options) == http2
    if http2:
        options = http_protocol_options_pb2.HttpProtocolOptions()
        assert cluster.typed_extension_protocol_options[HTTP_OPTIONS].Unpack(options)
        assert options.explicit_http_config.HasField("http2_protocol_options")


# --- ServiceEntry and WorkloadEntry ------------------------------------------------------------

TCP_5432 = {"number": 5432, "name": "tcp-db", "protocol": "TCP"}


@pytest.mark.parametrize(
    ("resolution", "port", "cluster_type"),
    [
        ("DNS", HTTP_9080, LB.STRICT_DNS),
        ("DNS_ROUND_ROBIN", HTTP_9080, LB.LOGICAL_DNS),
        ("STATIC", HTTP_9080, LB.EDS),
        # Without traffic capture there is no original destination to pass through to, so
        # NONE is served from endpoints on every protocol.
        ("NONE", HTTP_9080, LB.EDS),
        ("NONE", TCP_5432, LB.EDS),
    ],
)
def test_resolution_picks_the_cluster_type(
    resolution: str, port: dict[str, Any], cluster_type: int
) -> None:
    svc = service_entry("ext", ["ext.example.com"], ports=[port], resolution=resolution)
    cluster = simulate(svc).cluster(outbound_cluster("ext.example.com", port["number"]))
    assert cluster.type == cluster_type


@pytest.mark.parametrize("resolution", ["DNS", "DNS_ROUND_ROBIN"])
def test_dns_cluster_resolves_the_host_inline(resolution: str) -> None:
    svc = service_entry("ext", ["ext.example.com"], ports=[HTTP_9080], resolution=resolution)
    sim = simulate(svc)
    assert sim.endpoints(outbound_cluster("ext.example.com", 9080)) == [("ext.example.com", 9080)]
    assert send(svc, host="ext.example.com").cluster == outbound_cluster("ext.example.com", 9080)


def test_dns_cluster_resolves_its_inline_endpoints() -> None:
    svc = service_entry("ext", ["ext.example.com"], ports=[HTTP_9080], resolution="DNS",
                        endpoints=[{"address": "us.ext.example.com", "labels": {"geo": "us"}},
                                   {"address": "eu.ext.example.com", "ports": {"http": 8080}}])
    geo = destination_rule("ext", "ext.example.com", [{"name": "us", "labels": {"geo": "us"}}])
    sim = simulate(svc, geo)
    assert sim.endpoints(outbound_cluster("ext.example.com", 9080)) == [
        ("eu.ext.example.com", 8080), ("us.ext.example.com", 9080)]
    assert sim.endpoints(outbound_cluster("ext.example.com", 9080, "us")) == [
        ("us.ext.example.com", 9080)]


def test_mesh_external_defaults() -> None:
    bare = Config(kind=Kind.SERVICE_ENTRY, name="ext", namespace="default", spec={
        "hosts": ["ext.example.com"], "ports": [HTTP_9080, TCP_5432]})
    sim = simulate(bare)
    svc = sim.snapshot.services["ext.example.com"]
    assert (svc.location.value, svc.resolution.value) == ("MESH_EXTERNAL", "NONE")
    assert sim.cluster(outbound_cluster("ext.example.com", 9080)).type == LB.EDS
    assert sim.cluster(outbound_cluster("ext.example.com", 5432)).type == LB.EDS


@pytest.mark.parametrize(
    ("port", "endpoint", "address"),
    [
        (HTTP_9080, {"address": "10.0.5.1", "ports": {"http": 8080}}, ("10.0.5.1", 8080)),
        (HTTP_9080, {"address": "10.0.5.1", "ports": {"other": 8080}}, ("10.0.5.1", 9080)),
        ({**HTTP_9080, "targetPort": 7070}, {"address": "10.0.5.1"}, ("10.0.5.1", 7070)),
        ({**HTTP_9080, "targetPort": 7070}, {"address": "10.0.5.1", "ports": {"http": 8080}},
         ("10.0.5.1", 8080)),
    ],
)
def test_inline_endpoint_ports(
    port: dict[str, Any], endpoint: dict[str, Any], address: tuple[str, int]
) -> None:
    svc = service_entry("inline", ["inline.example.com"], ports=[port], endpoints=[endpoint])
    assert simulate(svc).endpoints(outbound_cluster("inline.example.com", 9080)) == [address]


def test_workload_entries_selected_by_labels_in_the_same_namespace() -> None:
    elsewhere = workload_entry("reviews-x", "10.9.0.1", {"app": "reviews"}, namespace="other")
    unlabelled = workload_entry("ratings-x", "10.9.0.2", {"app": "ratings"})
    named_port = workload_entry("reviews-p", "10.9.0.3", {"app": "reviews"}, ports={"http": 8000})
    addresses = simulate(elsewhere, unlabelled, named_port).endpoints(ALL)
    assert addresses == [("10.0.0.1", 9080), ("10.0.0.2", 9080), ("10.0.0.3", 9080),
                         ("10.9.0.3", 8000)]


def test_tcp_port_proxies_to_the_first_service_on_it() -> None:
    b = service_entry("b", ["b-db.example.com"], ports=[TCP_5432],
                      endpoints=[{"address": "10.0.6.2"}])
    a = service_entry("a", ["a-db.example.com"], ports=[TCP_5432],
                      endpoints=[{"address": "10.0.6.1"}])
    result = send(b, a, host="", port=5432)
    assert (result.tcp, result.cluster) == (True, outbound_cluster("a-db.example.com", 5432))


# --- Inbound -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("proxy", "app"),
    [
        (sidecar("reviews-v1"), ("127.0.0.1", 9080)),
        (sidecar("reviews-v1", app_address="127.0.0.1:8000"), ("127.0.0.1", 8000)),
        (sidecar("unnamed", ips=["10.0.0.1"]), ("127.0.0.1", 9080)),
    ],
)
def test_inbound_listener_forwards_to_the_application(
    proxy: Proxy, app: tuple[str, int]
) -> None:
    sim = simulate(proxy=proxy)
    result = sim.run(Request("10.0.0.1", 9080, "anything.at.all"))
    assert (result.listener, result.cluster) == ("10.0.0.1_9080", inbound_cluster(9080))
    assert sim.endpoints(result.cluster) == [app]


def test_inbound_listener_binds_the_endpoint_port_and_tcp_is_proxied() -> None:
    db = service_entry("db", ["db.example.com"], ports=[TCP_5432], selector={"app": "db"})
    we = workload_entry("db-0", "10.0.7.1", {"app": "db"}, ports={"tcp-db": 15432})
    sim = simulate(db, we, proxy=sidecar("db-0"))
    result = sim.run(Request("10.0.7.1", 15432))
    assert (result.tcp, result.cluster) == (True, inbound_cluster(15432))
    assert sim.endpoints(result.cluster) == [("127.0.0.1", 15432)]


def test_grpc_inbound_cluster_speaks_http2() -> None:
    api = service_entry("api", ["api.example.com"], selector={"app": "api"},
                        ports=[{"number": 7070, "name": "grpc", "protocol": "GRPC"}])
    sim = simulate(api, workload_entry("api-0", "10.0.8.1", {"app": "api"}),
                   proxy=sidecar("api-0"))
    assert HTTP_OPTIONS in sim.cluster(inbound_cluster(7070)).typed_extension_protocol_options


def test_outbound_listener_colliding_with_inbound_is_skipped() -> None:
    proxy = sidecar("reviews-v1", outbound_bind="10.0.0.1")
    sim = simulate(proxy=proxy)
    assert sorted(sim.listeners) == ["10.0.0.1_8080", "10.0.0.1_9080", "10.0.0.1_9090"]
    assert sim.run(Request("10.0.0.1", 9080, "reviews")).cluster == inbound_cluster(9080)
    assert sim.run(Request("10.0.0.1", 8080, "ratings")).cluster == outbound_cluster(
        RATINGS, 8080)


# --- EDS ---------------------------------------------------------------------------------------


def test_endpoints_grouped_by_locality_with_weights() -> None:
    svc = service_entry("geo", ["geo.example.com"], ports=[HTTP_9080], endpoints=[
        {"address": "10.1.0.2", "locality": "us-west/zone-b", "weight": 1},
        {"address": "10.1.0.1", "locality": "us-east/zone-a/rack-1", "weight": 2},
        {"address": "10.1.0.3", "locality": "us-east/zone-a/rack-1", "weight": 3},
        {"address": "10.1.0.4"},
    ])
    cla = simulate(svc).load_assignment(outbound_cluster("geo.example.com", 9080))
    groups = [
        ((g.locality.region, g.locality.zone, g.locality.sub_zone), g.load_balancing_weight.value,
         [(lb.endpoint.address.socket_address.address, lb.load_balancing_weight.value)
          for lb in g.lb_endpoints])
        for g in cla.endpoints
    ]
    assert groups == [
        (("", "", ""), 1, [("10.1.0.4", 1)]),
        (("us-east", "zone-a", "rack-1"), 5, [("10.1.0.1", 2), ("10.1.0.3", 3)]),
        (("us-west", "zone-b", ""), 1, [("10.1.0.2", 1)]),
    ]
