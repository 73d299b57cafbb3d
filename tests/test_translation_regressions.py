"""Behaviours that once went wrong, each checked by simulation and, where Envoy would have
refused the config, by a real Envoy."""

from __future__ import annotations

from typing import Any

from meshpilot.envoy.cluster_policies import traffic_policy
from meshpilot.envoy.names import outbound_cluster
from meshpilot.envoy.scope import scope_for
from meshpilot.model import Config, Kind, NodeType, Proxy
from tests.configs import service_entry, virtual_service
from tests.envoy_check import envoy_rejects
from tests.simulation import Request, Simulation, sidecar, snapshot_of
from tests.test_translation import ALL, CLIENT, MESH, REVIEWS, V1, V2, on, routes, send, to


def test_without_headers_value_match_accepts_an_absent_header() -> None:
    vs = routes(on({"withoutHeaders": {"x-env": {"exact": "prod"}}}, "v2"), {"route": [to("v1")]})
    assert send(vs).cluster == V2
    assert send(vs, headers={"x-env": "prod"}).cluster == V1


def test_setting_host_header_rewrites_authority_and_envoy_accepts_it() -> None:
    vs = routes({"headers": {"request": {"set": {"host": "other.example"}}},
                 "route": [to("v1")]})
    result = send(vs)
    assert result.cluster == V1
    assert result.upstream_host == "other.example"
    assert envoy_rejects(snapshot_of([*MESH, vs]), CLIENT) == ""


def test_port_level_settings_do_not_inherit_top_level_sections() -> None:
    rule = Config(Kind.DESTINATION_RULE, "r", "default", {
        "host": REVIEWS,
        "trafficPolicy": {
            "loadBalancer": {"simple": "RANDOM"},
            "portLevelSettings": [{"port": {"number": 9080},
                                   "connectionPool": {"tcp": {"maxConnections": 3}}}],
        },
    })
    policy = traffic_policy(snapshot_of([*MESH, rule]), REVIEWS, 9080)
    assert "loadBalancer" not in policy
    assert policy["connectionPool"] == {"tcp": {"maxConnections": 3}}


def test_hosts_differing_only_in_case_do_not_break_the_route_config() -> None:
    configs = [
        service_entry("a", ["api.example.com"], endpoints=[{"address": "10.9.0.1"}]),
        service_entry("b", ["API.example.com"], endpoints=[{"address": "10.9.0.2"}]),
    ]
    snapshot = snapshot_of(configs)
    assert envoy_rejects(snapshot, CLIENT) == ""
    result = Simulation(snapshot, CLIENT).run(Request("127.0.0.1", 9080, "api.example.com"))
    assert result.cluster == outbound_cluster("API.example.com", 9080)


def test_all_zero_weights_from_unvalidated_sources_go_nowhere_without_crashing() -> None:
    vs = virtual_service("z", ["reviews"], [{"route": [to("v1", 0), to("v2", 0)]}])
    assert send(vs).cluster == "BlackHoleCluster"


def test_sidecar_without_egress_sees_every_service() -> None:
    policy_only = Config(Kind.SIDECAR, "default", "default",
                         {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}})
    assert send(policy_only).cluster == ALL
    unknown = Simulation(snapshot_of([*MESH, policy_only]), sidecar()).run(
        Request("127.0.0.1", 9080, "nowhere.example")
    )
    assert unknown.direct_response == 502


# --- Delegation --------------------------------------------------------------------------------


def _delegating(root_match: list[dict[str, Any]] | None, *delegate_http: dict[str, Any],
                namespace: str = "default") -> list[Config]:
    root_route: dict[str, Any] = {"delegate": {"name": "reviews-delegate",
                                               "namespace": namespace}}
    if root_match is not None:
        root_route["match"] = root_match
    return [
        virtual_service("root", ["reviews"], [root_route, {"route": [to("v1")]}]),
        Config(Kind.VIRTUAL_SERVICE, "reviews-delegate", namespace,
               {"http": list(delegate_http)}),
    ]


def test_delegate_routes_narrow_the_root_match() -> None:
    configs = _delegating(
        [{"uri": {"prefix": "/api"}}],
        {"name": "v2-api", "match": [{"uri": {"prefix": "/api/v2"}}], "route": [to("v2")]},
        {"name": "elsewhere", "match": [{"uri": {"prefix": "/web"}}], "route": [to("v2")]},
    )
    assert send(*configs, path="/api/v2/x").route_name == "v2-api"
    assert send(*configs, path="/api/v1").cluster == V1  # falls through to the root's rest
    assert send(*configs, path="/web").cluster == V1  # the conflicting delegate route is gone


def test_delegate_headers_combine_with_the_root_match() -> None:
    configs = _delegating(
        [{"headers": {"end-user": {"exact": "jason"}}}],
        {"match": [{"uri": {"prefix": "/"}}], "route": [to("v2")]},
    )
    assert send(*configs, headers={"end-user": "jason"}).cluster == V2
    assert send(*configs).cluster == V1


def test_delegate_in_another_namespace_resolves_short_names_there() -> None:
    configs = _delegating(None, {"route": [{"destination": {
        "host": "reviews.default.svc.cluster.local", "subset": "v2"}}]}, namespace="team")
    assert send(*configs).cluster == V2
    assert envoy_rejects(snapshot_of([*MESH, *configs]), CLIENT) == ""


def test_sidecar_resources_never_narrow_a_router() -> None:
    everything_hidden = Config(Kind.SIDECAR, "default", "default", {
        "egress": [{"hosts": ["~/*"]}], "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}})
    snapshot = snapshot_of([*MESH, everything_hidden])
    router = Proxy(id="r", type=NodeType.ROUTER, namespace="default", workload_name="gw")
    assert scope_for(snapshot, router).sidecar is None
    assert scope_for(snapshot, CLIENT).sidecar is everything_hidden


def test_destination_rule_with_workload_selector_applies_only_to_selected_clients() -> None:
    selective = Config(Kind.DESTINATION_RULE, "canary-clients", "default", {
        "host": REVIEWS,
        "workloadSelector": {"matchLabels": {"track": "canary"}},
        "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}},
        "subsets": [{"name": "v1", "labels": {"version": "v2"}}],  # v1 means v2 here
    })
    snapshot = snapshot_of([*MESH, selective])
    canary = sidecar(labels={"app": "client", "track": "canary"})
    plain = sidecar()
    assert traffic_policy(snapshot, REVIEWS, 9080, namespace="default",
                          labels=dict(canary.labels))["loadBalancer"] == {"simple": "RANDOM"}
    assert "loadBalancer" not in traffic_policy(snapshot, REVIEWS, 9080, namespace="default",
                                                labels=dict(plain.labels))
    v1 = "outbound|9080|v1|" + REVIEWS
    assert Simulation(snapshot, canary).endpoints(v1) == [("10.0.0.2", 9080)]
    assert Simulation(snapshot, plain).endpoints(v1) == [("10.0.0.1", 9080)]


def test_clusters_and_routes_name_the_config_behind_them() -> None:
    vs = routes({"route": [to("v1")]})
    sim = Simulation(snapshot_of([*MESH, vs]), CLIENT)
    cluster = sim.cluster("outbound|9080|v1|" + REVIEWS)
    istio = cluster.metadata.filter_metadata["istio"]
    assert istio["config"] == (
        "/apis/networking.istio.io/v1/namespaces/default/destination-rule/reviews")
    assert istio["subset"] == "v1"
    (vhost,) = [v for v in sim.route_config("9080").virtual_hosts if v.name.startswith(REVIEWS)]
    (route,) = vhost.routes
    assert route.metadata.filter_metadata["istio"]["config"].endswith(
        "/namespaces/default/virtual-service/vs-reviews")
