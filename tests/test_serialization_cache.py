"""Serialized resources are shared per snapshot: N identical proxies cost one serialization."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

from meshpilot.envoy import routes
from meshpilot.envoy.generators import GENERATORS, Resource
from meshpilot.envoy.names import CLUSTER, ENDPOINT, LISTENER, ROUTE, outbound_cluster
from meshpilot.model import Endpoint, Proxy
from meshpilot.model.snapshot import Snapshot
from tests.configs import destination_rule, service_entry, virtual_service, workload_entry
from tests.simulation import Request, Simulation, sidecar, snapshot_of

REVIEWS = "reviews.default.svc.cluster.local"
ALL = outbound_cluster(REVIEWS, 9080)
V1 = outbound_cluster(REVIEWS, 9080, "v1")
EDS_NAMES = [ALL, V1]

MESH = [
    service_entry("reviews", [REVIEWS], selector={"app": "reviews"}),
    workload_entry("reviews-v1", "10.0.0.1", {"app": "reviews", "version": "v1"}),
    destination_rule("reviews", REVIEWS, [{"name": "v1", "labels": {"version": "v1"}}]),
    virtual_service("reviews", ["reviews"], [
        {"match": [{"sourceLabels": {"track": "canary"}}], "directResponse": {"status": 418}},
        {"route": [{"destination": {"host": "reviews"}}]},
    ]),
]

# Two replicas of one client: other ids, names and addresses, same namespace and labels.
A = sidecar("client-a", labels={"app": "client"}, ips=["10.0.9.1"])
B = sidecar("client-b", labels={"app": "client"}, ips=["10.0.9.2"])


def generate(snapshot: Snapshot, proxy: Proxy, type_url: str,
             names: list[str] | None = None) -> dict[str, Resource]:
    return {r.name: r for r in GENERATORS[type_url].generate(snapshot, proxy, names)}


@pytest.fixture
def snapshot() -> Snapshot:
    return snapshot_of(MESH)


@pytest.mark.parametrize(
    ("type_url", "names"),
    [(ROUTE, ["9080"]), (ENDPOINT, EDS_NAMES), (CLUSTER, None), (LISTENER, None)],
)
def test_identical_proxies_share_resource_objects(
    snapshot: Snapshot, type_url: str, names: list[str] | None
) -> None:
    a, b = generate(snapshot, A, type_url, names), generate(snapshot, B, type_url, names)
    assert a and a.keys() == b.keys()
    assert all(a[name] is b[name] for name in a)


def test_route_configuration_is_serialized_once_for_identical_proxies(
    snapshot: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    build: Callable[..., Any] = routes.route_config

    def counting(snap: Snapshot, proxy: Proxy, name: str) -> Any:
        calls.append(proxy.id)
        return build(snap, proxy, name)

    monkeypatch.setattr(routes, "route_config", counting)
    for proxy in (A, B, A, B):
        generate(snapshot, proxy, ROUTE, ["9080"])
    assert calls == [A.id]


@pytest.mark.parametrize(
    "other",
    [
        sidecar("client-c", labels={"app": "client", "track": "canary"}),
        sidecar("client-d", labels={"app": "client"}, namespace="other"),
    ],
)
def test_proxy_with_other_labels_or_namespace_gets_its_own_routes(
    snapshot: Snapshot, other: Proxy
) -> None:
    mine, theirs = (generate(snapshot, p, ROUTE, ["9080"])["9080"] for p in (A, other))
    assert mine is not theirs
    assert mine.body.value != theirs.body.value and mine.version != theirs.version
    # The same proxy again is served from the cache.
    assert generate(snapshot, other, ROUTE, ["9080"])["9080"] is theirs


def test_different_routes_really_route_differently(snapshot: Snapshot) -> None:
    canary = sidecar("client-c", labels={"app": "client", "track": "canary"})
    request = Request("127.0.0.1", 9080, "reviews")
    assert Simulation(snapshot, canary).run(request).direct_response == 418
    assert Simulation(snapshot, A).run(request).cluster == ALL


def test_labels_matter_only_when_some_virtual_service_uses_source_labels() -> None:
    plain = snapshot_of([*MESH[:3], virtual_service("reviews", ["reviews"], [
        {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}])])
    canary = sidecar("client-c", labels={"app": "client", "track": "canary"})
    mine, theirs = (generate(plain, p, ROUTE, ["9080"])["9080"] for p in (A, canary))
    assert mine is theirs


def test_listeners_of_a_serving_proxy(snapshot: Snapshot) -> None:
    server = sidecar("reviews-v1", labels={"app": "reviews", "version": "v1"})
    listeners, again = generate(snapshot, server, LISTENER), generate(snapshot, server, LISTENER)
    client = generate(snapshot, A, LISTENER)
    assert listeners.keys() == {"10.0.0.1_9080", "127.0.0.1_9080"}
    # Inbound listeners are built per request; outbound ones come from the snapshot cache.
    assert listeners["10.0.0.1_9080"].body.value == again["10.0.0.1_9080"].body.value
    assert listeners["127.0.0.1_9080"] is again["127.0.0.1_9080"]
    assert listeners["127.0.0.1_9080"].body.value == client["127.0.0.1_9080"].body.value


def test_new_snapshot_does_not_reuse_stale_eds(snapshot: Snapshot) -> None:
    before = generate(snapshot, A, ENDPOINT, EDS_NAMES)
    moved = Endpoint(hostname=REVIEWS, namespace="default", service_port=9080,
                     address="10.0.0.7", port=9080, labels={"app": "reviews", "version": "v1"})
    newer = snapshot.with_endpoints("2", {REVIEWS: [moved]})
    after = generate(newer, A, ENDPOINT, EDS_NAMES)

    for name in EDS_NAMES:
        assert after[name] is not before[name]
        assert after[name].version != before[name].version
        cla = endpoint_pb2.ClusterLoadAssignment()
        assert after[name].body.Unpack(cla)
        addresses = [lb.endpoint.address.socket_address.address
                     for group in cla.endpoints for lb in group.lb_endpoints]
        assert addresses == ["10.0.0.7"]
    # The old snapshot still serves what it served.
    assert generate(snapshot, A, ENDPOINT, EDS_NAMES)[ALL] is before[ALL]


def test_unchanged_resources_keep_their_version_across_snapshots(snapshot: Snapshot) -> None:
    newer = snapshot.with_endpoints("2", {REVIEWS: snapshot.service_endpoints(REVIEWS, 9080)})
    before, after = generate(snapshot, A, ENDPOINT, EDS_NAMES), generate(newer, A, ENDPOINT,
                                                                         EDS_NAMES)
    assert {n: r.version for n, r in before.items()} == {n: r.version for n, r in after.items()}
    assert generate(newer, A, CLUSTER)[ALL].version == generate(snapshot, A, CLUSTER)[ALL].version
