"""ServiceEntryRegistry and AggregateRegistry: services, endpoints, and the pushes they ask for."""

from __future__ import annotations

from typing import Any

import pytest

from meshpilot.config.store import MemoryStore
from meshpilot.model import (
    Config,
    Endpoint,
    Kind,
    Locality,
    Port,
    Protocol,
    PushRequest,
    Resolution,
    Service,
    ServiceLocation,
    TriggerReason,
)
from meshpilot.registry.aggregate import AggregateRegistry
from meshpilot.registry.serviceentry import ServiceEntryRegistry
from tests.configs import workload_entry

REVIEWS = "reviews.default.svc.cluster.local"


class Recorder:
    """An Updater that keeps every push request it is asked for."""

    def __init__(self) -> None:
        self.requests: list[PushRequest] = []

    def config_update(self, request: PushRequest) -> None:
        self.requests.append(request)

    def take(self) -> list[PushRequest]:
        taken, self.requests = self.requests, []
        return taken


class Setup:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.pushes = Recorder()
        self.registry = ServiceEntryRegistry(self.store, self.pushes)

    def apply(self, *configs: Config) -> list[PushRequest]:
        for config in configs:
            self.store.apply(config)
        return self.pushes.take()

    def delete(self, config: Config) -> list[PushRequest]:
        assert self.store.delete(config.key)
        return self.pushes.take()

    def addresses(self, host: str = REVIEWS, namespace: str = "default") -> list[str]:
        return sorted(ep.address for ep in self.registry.endpoints(host, namespace))


@pytest.fixture
def mesh() -> Setup:
    return Setup()


def se(name: str, hosts: list[str], namespace: str = "default", **spec: Any) -> Config:
    full: dict[str, Any] = {
        "hosts": hosts, "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}], **spec}
    return Config(kind=Kind.SERVICE_ENTRY, name=name, namespace=namespace, spec=full)


def eds(*hosts: tuple[str, str]) -> PushRequest:
    return PushRequest(full=False, config_kinds=frozenset({Kind.WORKLOAD_ENTRY}),
                       eds_hosts=frozenset(hosts), reasons=frozenset({TriggerReason.ENDPOINT}))


FULL = PushRequest(full=True, config_kinds=frozenset({Kind.SERVICE_ENTRY}),
                   reasons=frozenset({TriggerReason.SERVICE}))
SELECTED: dict[str, Any] = {"workloadSelector": {"labels": {"app": "reviews"}}}


# --- Services ----------------------------------------------------------------------------------


def test_one_service_per_host(mesh: Setup) -> None:
    mesh.apply(se("web", ["a.example.com", "b.example.com"], addresses=["240.0.0.1"],
                  resolution="DNS", location="MESH_INTERNAL", exportTo=["."]))
    port = Port("http", 9080, Protocol.HTTP)
    assert sorted(mesh.registry.services(), key=lambda s: s.hostname) == [
        Service(hostname=h, namespace="default", ports=(port,), resolution=Resolution.DNS,
                location=ServiceLocation.MESH_INTERNAL, addresses=("240.0.0.1",),
                export_to=(".",), registry="serviceentry", source="ServiceEntry default/web")
        for h in ("a.example.com", "b.example.com")
    ]


def test_istio_defaults_for_location_and_resolution(mesh: Setup) -> None:
    mesh.apply(se("ext", ["ext.example.com"], resolution=None, location=None))
    (svc,) = mesh.registry.services()
    assert (svc.resolution, svc.location) == (Resolution.NONE, ServiceLocation.MESH_EXTERNAL)


@pytest.mark.parametrize(
    ("raw", "port"),
    [
        ({"number": 80, "name": "http-web"}, Port("http-web", 80, Protocol.HTTP)),
        ({"number": 81, "name": "grpc"}, Port("grpc", 81, Protocol.GRPC)),
        ({"number": 82, "name": "web", "protocol": "http2"}, Port("web", 82, Protocol.HTTP2)),
        ({"number": 83, "name": "tcp-db"}, Port("tcp-db", 83, Protocol.TCP)),
        ({"number": 84, "name": "mystery"}, Port("mystery", 84, Protocol.UNSUPPORTED)),
        ({"number": 85, "name": "http", "targetPort": 8085},
         Port("http", 85, Protocol.HTTP, 8085)),
    ],
)
def test_port_protocol_from_field_or_name(mesh: Setup, raw: dict[str, Any], port: Port) -> None:
    mesh.apply(se("p", ["p.example.com"], ports=[raw]))
    assert mesh.registry.services()[0].ports == (port,)


def test_same_host_twice_in_a_namespace_first_entry_defines_it(mesh: Setup) -> None:
    mesh.apply(
        se("b-second", [REVIEWS], ports=[{"number": 8080, "name": "http"}],
           endpoints=[{"address": "10.0.0.2"}]),
        se("a-first", [REVIEWS], endpoints=[{"address": "10.0.0.1"}]),
    )
    (svc,) = mesh.registry.services()
    assert (svc.source, [p.number for p in svc.ports]) == ("ServiceEntry default/a-first", [9080])
    # Endpoints of both entries are served.
    assert mesh.addresses() == ["10.0.0.1", "10.0.0.2"]
    mesh.delete(se("a-first", [REVIEWS]))
    (svc,) = mesh.registry.services()
    assert (svc.source, mesh.addresses()) == ("ServiceEntry default/b-second", ["10.0.0.2"])


def test_same_host_in_two_namespaces_are_two_services(mesh: Setup) -> None:
    mesh.apply(se("a", [REVIEWS], endpoints=[{"address": "10.0.0.1"}]),
               se("a", [REVIEWS], namespace="other", endpoints=[{"address": "10.0.0.9"}]))
    assert sorted(s.namespace for s in mesh.registry.services()) == ["default", "other"]
    assert (mesh.addresses(), mesh.addresses(namespace="other")) == (["10.0.0.1"], ["10.0.0.9"])


def test_changed_and_deleted_entries_change_services(mesh: Setup) -> None:
    mesh.apply(se("web", ["a.example.com"]))
    mesh.apply(se("web", ["b.example.com"]))
    assert [s.hostname for s in mesh.registry.services()] == ["b.example.com"]
    mesh.delete(se("web", []))
    assert mesh.registry.services() == []
    assert mesh.registry.endpoints("b.example.com", "default") == []


def test_entries_already_in_the_store_are_read_at_start() -> None:
    store = MemoryStore()
    store.apply(se("r", [REVIEWS], **SELECTED))
    store.apply(workload_entry("r1", "10.0.0.1", {"app": "reviews"}))
    registry = ServiceEntryRegistry(store, Recorder())
    assert [s.hostname for s in registry.services()] == [REVIEWS]
    assert [e.address for e in registry.endpoints(REVIEWS, "default")] == ["10.0.0.1"]


# --- Endpoints ---------------------------------------------------------------------------------


def test_inline_endpoints_one_per_port(mesh: Setup) -> None:
    ports = [{"number": 9080, "name": "http"}, {"number": 9443, "name": "tcp-tls",
                                                 "targetPort": 8443}]
    mesh.apply(se("r", [REVIEWS], ports=ports, endpoints=[{
        "address": "10.0.0.1", "ports": {"http": 8080}, "labels": {"version": "v1"},
        "locality": "us-east/zone-a", "weight": 3, "network": "n1",
        "serviceAccount": "reviews"}]))
    common: dict[str, Any] = {"hostname": REVIEWS, "namespace": "default", "address": "10.0.0.1",
              "labels": {"version": "v1"}, "network": "n1", "service_account": "reviews",
              "locality": Locality("us-east", "zone-a"), "weight": 3}
    assert mesh.registry.endpoints(REVIEWS, "default") == [
        Endpoint(service_port=9080, port=8080, **common),
        Endpoint(service_port=9443, port=8443, **common),
    ]


def test_workload_entries_selected_by_labels_and_namespace(mesh: Setup) -> None:
    mesh.apply(
        se("r", [REVIEWS], **SELECTED),
        workload_entry("r1", "10.0.0.1", {"app": "reviews", "version": "v1"}, ports={"http": 80}),
        workload_entry("r2", "10.0.0.2", {"app": "reviews"}),
        workload_entry("x", "10.0.0.3", {"app": "ratings"}),
        workload_entry("r9", "10.0.0.9", {"app": "reviews"}, namespace="other"),
    )
    endpoints = mesh.registry.endpoints(REVIEWS, "default")
    assert [(e.address, e.port, e.workload_name) for e in endpoints] == [
        ("10.0.0.1", 80, "r1"), ("10.0.0.2", 9080, "r2")]
    assert endpoints[0].labels == {"app": "reviews", "version": "v1"}


def test_selector_with_several_labels_needs_them_all(mesh: Setup) -> None:
    mesh.apply(
        se("r", [REVIEWS], workloadSelector={"labels": {"app": "reviews", "version": "v2"}}),
        workload_entry("r1", "10.0.0.1", {"app": "reviews", "version": "v1"}),
        workload_entry("r2", "10.0.0.2", {"app": "reviews", "version": "v2", "extra": "yes"}),
    )
    assert mesh.addresses() == ["10.0.0.2"]


def test_selector_ignores_inline_endpoints(mesh: Setup) -> None:
    mesh.apply(se("r", [REVIEWS], endpoints=[{"address": "10.0.0.7"}], **SELECTED),
               workload_entry("r1", "10.0.0.1", {"app": "reviews"}))
    assert mesh.addresses() == ["10.0.0.1"]


def test_endpoints_follow_workload_changes(mesh: Setup) -> None:
    mesh.apply(se("r", [REVIEWS], **SELECTED), workload_entry("r1", "10.0.0.1", {"app": "reviews"}))
    assert mesh.addresses() == ["10.0.0.1"]
    mesh.apply(workload_entry("r1", "10.0.0.5", {"app": "reviews"}))
    assert mesh.addresses() == ["10.0.0.5"]
    mesh.apply(workload_entry("r1", "10.0.0.5", {"app": "other"}))
    assert mesh.addresses() == []
    mesh.apply(workload_entry("r1", "10.0.0.5", {"app": "reviews"}))
    mesh.delete(workload_entry("r1", "", {}))
    assert mesh.addresses() == []


def test_endpoints_follow_selector_changes(mesh: Setup) -> None:
    mesh.apply(se("r", [REVIEWS], **SELECTED),
               workload_entry("r1", "10.0.0.1", {"app": "reviews", "version": "v1"}),
               workload_entry("r2", "10.0.0.2", {"app": "reviews", "version": "v2"}))
    assert mesh.addresses() == ["10.0.0.1", "10.0.0.2"]
    mesh.apply(se("r", [REVIEWS], workloadSelector={"labels": {"version": "v2"}}))
    assert mesh.addresses() == ["10.0.0.2"]
    mesh.apply(se("r", [REVIEWS], endpoints=[{"address": "10.0.0.8"}]))
    assert mesh.addresses() == ["10.0.0.8"]


# --- Push requests -----------------------------------------------------------------------------


def test_service_entry_changes_ask_for_full_pushes(mesh: Setup) -> None:
    entry = se("r", [REVIEWS])
    assert mesh.apply(entry) == [FULL]
    assert mesh.apply(se("r", [REVIEWS], endpoints=[{"address": "10.0.0.1"}])) == [FULL]
    assert mesh.delete(entry) == [FULL]


def test_unchanged_config_asks_for_nothing(mesh: Setup) -> None:
    mesh.apply(se("r", [REVIEWS], **SELECTED), workload_entry("r1", "10.0.0.1", {"app": "r"}))
    assert mesh.apply(se("r", [REVIEWS], **SELECTED),
                      workload_entry("r1", "10.0.0.1", {"app": "r"})) == []


def test_workload_entry_changes_ask_for_eds_of_selecting_hosts(mesh: Setup) -> None:
    mesh.apply(
        se("r", [REVIEWS, "reviews.example.com"], **SELECTED),
        se("v1", ["v1.example.com"], workloadSelector={"labels": {"version": "v1"}}),
        se("all", ["all.example.com"], workloadSelector={"labels": {}}),
        se("ratings", ["ratings.example.com"], workloadSelector={"labels": {"app": "ratings"}}),
        se("other", ["x.other"], namespace="other", **SELECTED),
    )
    reviews = {("default", REVIEWS), ("default", "reviews.example.com"),
               ("default", "all.example.com")}
    we = workload_entry("r1", "10.0.0.1", {"app": "reviews"})
    assert mesh.apply(we) == [eds(*reviews)]
    assert mesh.apply(workload_entry("r1", "10.0.0.2", {"app": "reviews"})) == [eds(*reviews)]
    assert mesh.delete(we) == [eds(*reviews)]
    assert mesh.apply(workload_entry("v", "10.0.0.3", {"app": "reviews", "version": "v1"})) == [
        eds(*reviews, ("default", "v1.example.com"))]


def test_label_change_moving_a_workload_names_both_services(mesh: Setup) -> None:
    mesh.apply(
        se("r", [REVIEWS], **SELECTED),
        se("ratings", ["ratings.example.com"], workloadSelector={"labels": {"app": "ratings"}}),
        workload_entry("w", "10.0.0.1", {"app": "reviews"}),
    )
    moved = mesh.apply(workload_entry("w", "10.0.0.1", {"app": "ratings"}))
    assert moved == [eds(("default", REVIEWS), ("default", "ratings.example.com"))]
    assert mesh.addresses() == []
    assert mesh.addresses("ratings.example.com") == ["10.0.0.1"]


# --- Aggregate ---------------------------------------------------------------------------------


class Fixed:
    """A registry with fixed content."""

    def __init__(self, provider: str, services: list[Service], endpoints: list[Endpoint],
                 synced: bool = True) -> None:
        self._provider = provider
        self._services = services
        self._endpoints = endpoints
        self.synced = synced

    @property
    def provider(self) -> str:
        return self._provider

    @property
    def cluster_id(self) -> str:
        return ""

    def services(self) -> list[Service]:
        return list(self._services)

    def endpoints(self, hostname: str, namespace: str) -> list[Endpoint]:
        return [e for e in self._endpoints if (e.hostname, e.namespace) == (hostname, namespace)]

    def has_synced(self) -> bool:
        return self.synced

    async def wait_synced(self) -> None:
        return None

    async def run(self) -> None:
        return None


def svc(host: str, registry: str, namespace: str = "default") -> Service:
    return Service(host, namespace, (Port("http", 80, Protocol.HTTP),), registry=registry)


def ep(host: str, address: str, namespace: str = "default") -> Endpoint:
    return Endpoint(host, namespace, 80, address, 80)


def test_aggregate_first_registry_defines_a_shared_service() -> None:
    first = Fixed("one", [svc("a", "one"), svc("b", "one")], [ep("a", "10.0.0.1")])
    second = Fixed("two", [svc("a", "two"), svc("a", "two", "other"), svc("c", "two")],
                   [ep("a", "10.0.0.2"), ep("a", "10.0.0.3", "other")])
    aggregate = AggregateRegistry([first, second])
    merged = {(s.namespace, s.hostname): s.registry for s in aggregate.services()}
    assert merged == {("default", "a"): "one", ("default", "b"): "one",
                      ("other", "a"): "two", ("default", "c"): "two"}
    # Endpoints of a shared service come from every registry, in registry order.
    assert [e.address for e in aggregate.endpoints("a", "default")] == ["10.0.0.1", "10.0.0.2"]
    assert [e.address for e in aggregate.endpoints("a", "other")] == ["10.0.0.3"]


def test_aggregate_order_is_the_order_registries_were_added() -> None:
    aggregate = AggregateRegistry([Fixed("two", [svc("a", "two")], [])])
    aggregate.add(Fixed("one", [svc("a", "one")], []))
    assert [s.registry for s in aggregate.services()] == ["two"]
    assert [r.provider for r in aggregate.registries] == ["two", "one"]


async def test_aggregate_synced_only_when_all_are() -> None:
    late = Fixed("late", [], [], synced=False)
    aggregate = AggregateRegistry([Fixed("one", [], []), late])
    assert not aggregate.has_synced()
    late.synced = True
    assert aggregate.has_synced()
    await aggregate.wait_synced()
    assert aggregate.provider == "aggregate"


def test_aggregate_over_a_service_entry_registry(mesh: Setup) -> None:
    mesh.apply(se("r", [REVIEWS], endpoints=[{"address": "10.0.0.1"}]))
    extra = Fixed("static", [svc(REVIEWS, "static")],
                  [Endpoint(REVIEWS, "default", 9080, "10.0.0.2", 9080)])
    aggregate = AggregateRegistry([mesh.registry, extra])
    assert [s.registry for s in aggregate.services()] == ["serviceentry"]
    assert sorted(e.address for e in aggregate.endpoints(REVIEWS, "default")) == [
        "10.0.0.1", "10.0.0.2"]
