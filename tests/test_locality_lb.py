"""Locality-aware balancing: what each proxy's endpoints look like, by where the proxy is."""

from __future__ import annotations

from typing import Any

from meshpilot.model import Config, Kind, Locality, NodeType, Proxy
from tests.envoy_check import envoy_rejects
from tests.simulation import Simulation, snapshot_of

HOST = "zoned.default.svc.cluster.local"
CLUSTER = f"outbound|9080||{HOST}"


def mesh(policy: dict[str, Any]) -> list[Config]:
    endpoints = [
        {"address": "10.1.0.1", "locality": "r1/a/x"},
        {"address": "10.1.0.2", "locality": "r1/b"},
        {"address": "10.2.0.1", "locality": "r2/a"},
        {"address": "10.3.0.1", "locality": "r3/a"},
    ]
    return [
        Config(Kind.SERVICE_ENTRY, "zoned", "default", {
            "hosts": [HOST], "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC", "location": "MESH_INTERNAL", "endpoints": endpoints}),
        Config(Kind.DESTINATION_RULE, "zoned", "default",
               {"host": HOST, "trafficPolicy": policy}),
    ]


def client(locality: str) -> Proxy:
    return Proxy(id="c", type=NodeType.SIDECAR, namespace="default", workload_name="c",
                 locality=Locality.parse(locality))


def groups(policy: dict[str, Any], where: str) -> dict[str, tuple[int, int]]:
    """Locality → (priority, weight) of the proxy's assignment."""
    cla = Simulation(snapshot_of(mesh(policy)), client(where)).load_assignment(CLUSTER)
    return {
        str(Locality(g.locality.region, g.locality.zone, g.locality.sub_zone)):
            (g.priority, g.load_balancing_weight.value)
        for g in cla.endpoints
    }


OUTLIERS = {"outlierDetection": {"consecutive5xxErrors": 1}}


def test_without_outlier_detection_every_locality_is_equal() -> None:
    assert {p for p, _ in groups({}, "r1/a/x").values()} == {0}


def test_failover_priorities_follow_closeness() -> None:
    assert groups(OUTLIERS, "r1/a/x") == {
        "r1/a/x": (0, 1), "r1/b": (1, 1), "r2/a": (2, 1), "r3/a": (2, 1),
    }  # Istio's levels (same subzone, zone, region, elsewhere) made contiguous, as Envoy wants
    assert groups(OUTLIERS, "r2/a")["r2/a"][0] == 0


def test_failover_moves_the_named_region_next() -> None:
    policy = {**OUTLIERS, "loadBalancer": {"localityLbSetting": {
        "failover": [{"from": "r1", "to": "r3"}]}}}
    assert groups(policy, "r1/b") == {
        "r1/a/x": (1, 1), "r1/b": (0, 1), "r3/a": (2, 1), "r2/a": (3, 1),
    }


def test_distribute_splits_by_percentage_for_matching_clients() -> None:
    policy = {"loadBalancer": {"localityLbSetting": {"distribute": [
        {"from": "r1/*", "to": {"r1/*": 80, "r2/*": 20}}]}}}
    shaped = groups(policy, "r1/a/x")
    assert shaped == {"r1/a/x": (0, 40_000), "r1/b": (0, 40_000), "r2/a": (0, 20_000)}
    # A client elsewhere is not shaped by that rule.
    assert set(groups(policy, "r3/a")) == {"r1/a/x", "r1/b", "r2/a", "r3/a"}


def test_disabled_setting_turns_it_off() -> None:
    policy = {**OUTLIERS, "loadBalancer": {"localityLbSetting": {"enabled": False}}}
    assert {p for p, _ in groups(policy, "r1/a/x").values()} == {0}


def test_envoy_accepts_shaped_assignments() -> None:
    policy = {**OUTLIERS, "loadBalancer": {"localityLbSetting": {"distribute": [
        {"from": "*", "to": {"r1/*": 50, "r3/*": 50}}]}}}
    assert envoy_rejects(snapshot_of(mesh(policy)), client("r1/a/x")) == ""


def labelled_mesh(policy: dict[str, Any]) -> list[Config]:
    endpoints = [
        {"address": "10.1.0.1", "locality": "r1/a", "labels": {"rack": "1", "tier": "gold"}},
        {"address": "10.1.0.2", "locality": "r1/a", "labels": {"rack": "2", "tier": "gold"}},
        {"address": "10.1.0.3", "locality": "r1/b", "labels": {"rack": "1", "tier": "gold"}},
        {"address": "10.2.0.1", "locality": "r2/a", "labels": {"rack": "1", "tier": "iron"}},
    ]
    return [
        Config(Kind.SERVICE_ENTRY, "zoned", "default", {
            "hosts": [HOST], "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC", "location": "MESH_INTERNAL", "endpoints": endpoints}),
        Config(Kind.DESTINATION_RULE, "zoned", "default",
               {"host": HOST, "trafficPolicy": policy}),
    ]


def priorities(policy: dict[str, Any], labels: dict[str, str], where: str) -> dict[str, int]:
    """Endpoint address → priority in the assignment of a client with these labels."""
    proxy = Proxy(id="c", type=NodeType.SIDECAR, namespace="default", workload_name="c",
                  labels=labels, locality=Locality.parse(where))
    cla = Simulation(snapshot_of(labelled_mesh(policy)), proxy).load_assignment(CLUSTER)
    return {lb.endpoint.address.socket_address.address: g.priority
            for g in cla.endpoints for lb in g.lb_endpoints}


def test_failover_priority_orders_endpoints_by_leading_label_matches() -> None:
    policy = {**OUTLIERS, "loadBalancer": {"localityLbSetting": {"failoverPriority": [
        "tier", "topology.kubernetes.io/zone", "rack"]}}}
    # Client: gold, zone a, rack 1. Matching all three first; then tier+zone; then tier only;
    # the iron endpoint matches none (its zone and rack count for nothing after tier fails).
    assert priorities(policy, {"tier": "gold", "rack": "1"}, "r1/a") == {
        "10.1.0.1": 0, "10.1.0.2": 1, "10.1.0.3": 2, "10.2.0.1": 3}
    # Another client sees another order: the cache keeps them apart.
    assert priorities(policy, {"tier": "iron", "rack": "1"}, "r2/a") == {
        "10.2.0.1": 0, "10.1.0.1": 1, "10.1.0.2": 1, "10.1.0.3": 1}


def test_failover_priority_with_explicit_values_and_without_outliers() -> None:
    explicit = {**OUTLIERS, "loadBalancer": {"localityLbSetting": {"failoverPriority": [
        "tier=iron"]}}}
    assert priorities(explicit, {"tier": "gold"}, "r1/a") == {
        "10.2.0.1": 0, "10.1.0.1": 1, "10.1.0.2": 1, "10.1.0.3": 1}
    # Without outlier detection nothing fails over, so nothing is ranked (as Istio).
    plain = {"loadBalancer": {"localityLbSetting": {"failoverPriority": ["tier"]}}}
    assert set(priorities(plain, {"tier": "gold"}, "r1/a").values()) == {0}

