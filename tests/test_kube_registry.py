"""The Kubernetes registry (`kube://`) against the fake API server: mapping of Services,
EndpointSlices and Pods, smallest pushes, last known state while the API server is away, and
relists that do not lose deletions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshpilot.model import HealthStatus, Protocol, Resolution, ServiceLocation
from meshpilot.registry.kube import KubeRegistry, port_protocol
from meshpilot.registry.plugins import create_registry
from tests.fakes.kube_api import (
    KubeApiFake,
    endpoint,
    endpoint_slice_object,
    pod_object,
    running_api,
    service_object,
)
from tests.registry_helpers import Pushes, addresses, eventually, running

HOST = "reviews.default.svc.cluster.local"
SLICES = "discovery.k8s.io/v1"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[KubeApiFake]:
    async with running_api(tmp_path) as fake:
        yield fake


@pytest.fixture
async def pushes() -> AsyncIterator[Pushes]:
    recorder = Pushes()
    yield recorder
    recorder.close()


def registry(api: KubeApiFake, pushes: Pushes, extra: str = "") -> KubeRegistry:
    created = create_registry(f"kube://?kubeconfig={api.kubeconfig}&watchTimeout=2{extra}",
                              pushes)
    assert isinstance(created, KubeRegistry)
    return created


def reviews(api: KubeApiFake, *endpoints: dict[str, Any], **spec: Any) -> None:
    api.create("v1", "Service", service_object("reviews", ports=[
        {"name": "http", "port": 9080, "targetPort": 8080},
        {"name": "metrics", "port": 9090, "targetPort": 9091, "appProtocol": "http"},
        {"name": "dns", "port": 53, "protocol": "UDP"},
    ], **spec))
    api.create(SLICES, "EndpointSlice", endpoint_slice_object(
        "reviews", list(endpoints), [("http", 8080), ("metrics", 9091), ("dns", 5353)]))


def test_protocols_follow_istio_rules() -> None:
    assert port_protocol({"name": "web", "appProtocol": "kubernetes.io/h2c"}) == Protocol.HTTP2
    assert port_protocol({"name": "tcp-x", "appProtocol": "grpc"}) == Protocol.GRPC
    assert port_protocol({"name": "http-web"}) == Protocol.HTTP
    assert port_protocol({"name": "grpc"}) == Protocol.GRPC
    assert port_protocol({"name": "web"}) == Protocol.TCP
    assert port_protocol({}) == Protocol.TCP


async def test_services_endpoints_and_pods_become_the_mesh_view(api: KubeApiFake,
                                                                pushes: Pushes) -> None:
    api.create("v1", "Pod", pod_object("reviews-v1-x", "10.1.0.1",
                                       {"app": "reviews", "version": "v1"},
                                       service_account="bookinfo-reviews"))
    reviews(api, endpoint("10.1.0.1", "reviews-v1-x", zone="zone-a"),
            endpoint("10.1.0.2", ready=False),
            endpoint("10.1.0.3", ready=False, serving=True, terminating=True))
    reg = registry(api, pushes)
    async with running(reg):
        (service,) = reg.services()
        assert service.hostname == HOST and service.namespace == "default"
        assert [(p.name, p.number, p.protocol, p.target_port) for p in service.ports] == [
            ("http", 9080, Protocol.HTTP, 8080), ("metrics", 9090, Protocol.HTTP, 9091)]
        assert service.addresses and service.addresses[0].startswith("10.96.")
        assert service.resolution == Resolution.STATIC
        endpoints = {(e.address, e.service_port): e for e in reg.endpoints(HOST, "default")}
        assert set(endpoints) == {("10.1.0.1", 9080), ("10.1.0.1", 9090),
                                  ("10.1.0.3", 9080), ("10.1.0.3", 9090)}
        ready = endpoints[("10.1.0.1", 9080)]
        assert (ready.port, ready.health, ready.service_account) == (
            8080, HealthStatus.HEALTHY, "bookinfo-reviews")
        assert ready.labels == {"app": "reviews", "version": "v1"}
        assert ready.locality.zone == "zone-a" and ready.cluster_id == "Kubernetes"
        assert ready.workload_name == "reviews-v1-x"
        assert endpoints[("10.1.0.3", 9080)].health == HealthStatus.DRAINING
        assert reg.status()["synced"] and reg.status()["instances"] == 4


async def test_a_service_without_endpoints_exists_and_external_names_resolve_by_dns(
    api: KubeApiFake, pushes: Pushes
) -> None:
    api.create("v1", "Service", service_object("lonely"))
    api.create("v1", "Service", service_object(
        "db", ports=[{"name": "tcp", "port": 5432}], type="ExternalName",
        externalName="db.example.com"))
    reg = registry(api, pushes, "&clusterDomain=corp.local")
    async with running(reg):
        by_host = {s.hostname: s for s in reg.services()}
        assert set(by_host) == {"lonely.default.svc.corp.local", "db.default.svc.corp.local"}
        assert reg.endpoints("lonely.default.svc.corp.local", "default") == []
        db = by_host["db.default.svc.corp.local"]
        assert db.resolution == Resolution.DNS and db.location == ServiceLocation.MESH_EXTERNAL
        assert addresses(reg, "db.default.svc.corp.local") == ["db.example.com:5432"]


async def test_endpoint_changes_push_eds_and_service_changes_push_everything(
    api: KubeApiFake, pushes: Pushes
) -> None:
    reviews(api, endpoint("10.1.0.1"))
    reg = registry(api, pushes)
    async with running(reg):
        pushes.take()
        eps = api.get(SLICES, "EndpointSlice", "default", "reviews-abc12")
        assert eps is not None
        eps["endpoints"].append(endpoint("10.1.0.2"))
        api.update(SLICES, "EndpointSlice", eps)
        await eventually(lambda: addresses(reg, HOST) == [
            "10.1.0.1:8080", "10.1.0.1:9091", "10.1.0.2:8080", "10.1.0.2:9091"], 5, "new ep")
        (push,) = pushes.take()
        assert not push.full and push.eds_hosts == {("default", HOST)}
        # A changed service port is a service change: a full push.
        svc = api.get("v1", "Service", "default", "reviews")
        assert svc is not None
        svc["spec"]["ports"][0]["port"] = 9081
        api.update("v1", "Service", svc)
        await eventually(lambda: reg.services()[0].port(9081) is not None, 5, "the new port")
        assert [p.full for p in pushes.take()] == [True]
        # A status-only change of the Service changes nothing the mesh sees: no push.
        svc = api.get("v1", "Service", "default", "reviews")
        assert svc is not None
        svc["status"] = {"loadBalancer": {}}
        api.update("v1", "Service", svc)
        api.delete("v1", "Service", "default", "reviews")
        await eventually(lambda: reg.services() == [], 5, "the service deleted")
        assert [p.full for p in pushes.take()] == [True]


async def test_pod_labels_follow_the_pod(api: KubeApiFake, pushes: Pushes) -> None:
    api.create("v1", "Pod", pod_object("p", "10.1.0.1", {"version": "v1"}))
    reviews(api, endpoint("10.1.0.1", "p"))
    reg = registry(api, pushes)
    async with running(reg):
        pod = api.get("v1", "Pod", "default", "p")
        assert pod is not None
        pod["metadata"]["labels"] = {"version": "v2"}
        api.update("v1", "Pod", pod)
        await eventually(lambda: all(e.labels == {"version": "v2"}
                                     for e in reg.endpoints(HOST, "default")), 5, "new labels")


async def test_the_last_known_state_stays_while_the_api_server_is_away(
    api: KubeApiFake, pushes: Pushes
) -> None:
    reviews(api, endpoint("10.1.0.1"), endpoint("10.1.0.2"))
    api.create("v1", "Service", service_object("ratings"))
    reg = registry(api, pushes)
    async with running(reg):
        pushes.take()
        await api.stop()
        await eventually(lambda: reg.status()["stale"], 10, "the registry marked stale")
        assert len(reg.endpoints(HOST, "default")) == 4 and len(reg.services()) == 2
        assert pushes.take() == []
        # Changed while meshpilot could not see: a deletion and an endpoint removal.
        api.delete("v1", "Service", "default", "ratings")
        eps = api.get(SLICES, "EndpointSlice", "default", "reviews-abc12")
        assert eps is not None
        eps["endpoints"] = eps["endpoints"][:1]
        api.update(SLICES, "EndpointSlice", eps)
        api.compact()
        await api.start()
        await eventually(lambda: not reg.status()["stale"], 15, "reconnected")
        await eventually(lambda: [s.hostname for s in reg.services()] == [HOST], 5, "deletion")
        assert addresses(reg, HOST) == ["10.1.0.1:8080", "10.1.0.1:9091"]


async def test_an_expired_watch_relists_and_sees_deletions(api: KubeApiFake,
                                                           pushes: Pushes) -> None:
    reviews(api, endpoint("10.1.0.1"))
    api.create("v1", "Service", service_object("ratings"))
    reg = registry(api, pushes)
    async with running(reg):
        api.close_watches()
        api.delete("v1", "Service", "default", "ratings")
        api.compact()
        await eventually(lambda: len(reg.services()) == 1, 10, "the deletion after a relist")
        assert reg.informers["services"].expired >= 1


async def test_one_namespace_only(api: KubeApiFake, pushes: Pushes) -> None:
    api.create("v1", "Namespace", {"metadata": {"name": "shop"}})
    api.create("v1", "Service", service_object("cart", namespace="shop"))
    api.create("v1", "Service", service_object("other"))
    reg = registry(api, pushes, "&namespace=shop")
    async with running(reg):
        assert [(s.hostname, s.namespace) for s in reg.services()] == [
            ("cart.shop.svc.cluster.local", "shop")]


async def test_locality_comes_from_the_endpoints_node(api: KubeApiFake, pushes: Pushes) -> None:
    api.create("v1", "Node", {"metadata": {"name": "node-1", "labels": {
        "topology.kubernetes.io/region": "eu-west", "topology.kubernetes.io/zone": "eu-west-b",
        "topology.istio.io/subzone": "rack-7"}}})
    on_node = {**endpoint("10.1.0.1"), "nodeName": "node-1"}
    zoned = {**endpoint("10.1.0.2", zone="eu-west-a"), "nodeName": "node-1"}
    reviews(api, on_node, zoned, endpoint("10.1.0.3"))
    reg = registry(api, pushes)

    def localities() -> dict[str, str]:
        return {e.address: str(e.locality) for e in reg.endpoints(HOST, "default")
                if e.service_port == 9080}

    async with running(reg):
        # The slice's zone wins over the node's; an endpoint without a node has none.
        assert localities() == {"10.1.0.1": "eu-west/eu-west-b/rack-7",
                                "10.1.0.2": "eu-west/eu-west-a/rack-7", "10.1.0.3": ""}
        node = api.get("v1", "Node", "", "node-1")
        assert node is not None
        node["metadata"]["labels"]["topology.istio.io/subzone"] = "rack-8"
        api.update("v1", "Node", node)
        await eventually(lambda: localities()["10.1.0.1"] == "eu-west/eu-west-b/rack-8", 5,
                         "the node's new subzone")
