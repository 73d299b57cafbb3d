"""Several networks: split-horizon endpoints and the east-west gateway's SNI routing."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2

from meshpilot.envoy import endpoints, networks
from meshpilot.envoy.generators import GENERATORS
from meshpilot.envoy.names import CLUSTER as CDS
from meshpilot.envoy.names import ENDPOINT as EDS
from meshpilot.envoy.names import LISTENER
from meshpilot.model import Config, Kind, NodeType, Proxy
from meshpilot.model.meshconfig import MeshConfig, load_mesh_config
from meshpilot.model.snapshot import Snapshot
from meshpilot.security.runtime import SecurityRuntime
from tests.envoy_check import envoy_rejects
from tests.simulation import snapshot_of

HOST = "reviews.default.svc.cluster.local"
CLUSTER = f"outbound|9080||{HOST}"
NETWORKS = {"networks": {
    "net-a": {"endpoints": [{"fromCidr": "192.0.2.0/24"}], "gateways": []},
    "net-b": {"endpoints": [{"fromCidr": "198.51.100.0/24"}],
              "gateways": [{"address": "198.51.100.100", "port": 15443}]},
}}


class NoPush:
    def config_update(self, request: object) -> None:
        pass


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> SecurityRuntime:
    return SecurityRuntime.create(NoPush(), "cluster.local", tmp_path_factory.mktemp("ca"),
                                  datetime.timedelta(hours=1))


def mesh(addresses: list[str]) -> list[Config]:
    return [Config(Kind.SERVICE_ENTRY, "reviews", "default", {
        "hosts": [HOST], "location": "MESH_INTERNAL", "resolution": "STATIC",
        "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
        "endpoints": [{"address": a, "labels": {"app": "reviews"}, "serviceAccount": "reviews"}
                      for a in addresses],
    })]


def snapshot(addresses: list[str], runtime: SecurityRuntime | None) -> Snapshot:
    built = snapshot_of(mesh(addresses))
    return dataclasses.replace(built, mesh=MeshConfig.from_user({}, NETWORKS),
                               security=runtime.security if runtime else None, cache={})


def assignment(snap: Snapshot, network: str) -> list[tuple[str, int, int, bool]]:
    cla = endpoints.load_assignment(snap, CLUSTER, "default", network=network)
    return sorted(
        (lb.endpoint.address.socket_address.address, lb.endpoint.address.socket_address.port_value,
         group.priority,
         _tls_mode(lb.metadata) == "istio")
        for group in cla.endpoints for lb in group.lb_endpoints
    )


def _tls_mode(metadata: Any) -> str:
    match = metadata.filter_metadata["envoy.transport_socket_match"]
    return str(match["tlsMode"]) if "tlsMode" in match else ""


def test_remote_only_service_is_reached_through_the_gateway(runtime: SecurityRuntime) -> None:
    snap = snapshot(["198.51.100.7", "198.51.100.8"], runtime)
    assert assignment(snap, "net-a") == [("198.51.100.100", 15443, 0, True)]
    # In its own network the endpoints are used directly.
    assert [a for a, *_ in assignment(snap, "net-b")] == ["198.51.100.7", "198.51.100.8"]


def test_local_instances_come_first(runtime: SecurityRuntime) -> None:
    snap = snapshot(["192.0.2.7", "198.51.100.7"], runtime)
    assert assignment(snap, "net-a") == [
        ("192.0.2.7", 9080, 0, True), ("198.51.100.100", 15443, 1, True)]


def test_without_mtls_remote_endpoints_are_left_out() -> None:
    snap = snapshot(["192.0.2.7", "198.51.100.7"], None)
    assert [a for a, *_ in assignment(snap, "net-a")] == ["192.0.2.7"]


def test_network_without_gateway_is_unreachable_from_elsewhere(runtime: SecurityRuntime) -> None:
    snap = snapshot(["192.0.2.7"], runtime)
    assert assignment(snap, "net-b") == []
    assert networks.network_of(snap, snap.service_endpoints(HOST, 9080)[0]) == "net-a"


def test_east_west_gateway_routes_mesh_sni_to_local_clusters(runtime: SecurityRuntime) -> None:
    gateway = Config(Kind.GATEWAY, "eastwest", "istio-system", {
        "selector": {"istio": "eastwestgateway"},
        "servers": [{"port": {"number": 15443, "name": "tls", "protocol": "TLS"},
                     "tls": {"mode": "AUTO_PASSTHROUGH"}, "hosts": ["*.local"]}],
    })
    built = snapshot_of([*mesh(["198.51.100.7"]), gateway])
    snap = dataclasses.replace(built, mesh=MeshConfig.from_user({}, NETWORKS),
                               security=runtime.security, cache={})
    router = Proxy(id="router~ew", type=NodeType.ROUTER, namespace="istio-system",
                   workload_name="eastwest", labels={"istio": "eastwestgateway"},
                   network="net-b", outbound_bind="127.0.0.9")
    (resource,) = [r for r in GENERATORS[LISTENER].generate(snap, router, None)
                   if r.name.endswith("_15443")]
    listener = listener_pb2.Listener()
    resource.body.Unpack(listener)
    names: list[Any] = [list(c.filter_chain_match.server_names) for c in listener.filter_chains]
    assert [f"outbound_.9080_._.{HOST}"] in names
    # The chain's cluster passes the client's mTLS through: no TLS of its own, same endpoints.
    (passthrough,) = [c for c in GENERATORS[CDS].generate(snap, router, None)
                      if c.name == f"outbound_.9080_._.{HOST}"]
    cluster = cluster_pb2.Cluster()
    passthrough.body.Unpack(cluster)
    assert not cluster.transport_socket_matches and not cluster.HasField("transport_socket")
    assert cluster.eds_cluster_config.service_name == CLUSTER
    assert envoy_rejects(snap, router) == ""


def test_mesh_networks_file(tmp_path: Path) -> None:
    path = tmp_path / "networks.yaml"
    path.write_text("networks:\n  n1:\n    endpoints: [{fromRegistry: c1}]\n")
    assert load_mesh_config(None, str(path)).networks == {"n1": {"endpoints": [
        {"fromRegistry": "c1"}]}}


def test_cluster_local_service_keeps_clients_in_their_cluster() -> None:
    built = snapshot_of(mesh(["192.0.2.7", "192.0.2.8"]))
    first, second = built.service_endpoints(HOST, 9080)
    eps = [dataclasses.replace(first, cluster_id="east"),
           dataclasses.replace(second, cluster_id="west")]
    split = built.with_endpoints("v2", {HOST: eps})

    def addresses(settings: dict[str, Any], cluster: str) -> list[str]:
        snap = dataclasses.replace(split, mesh=MeshConfig.from_user(
            {"serviceSettings": [settings]}), cache={})
        cla = endpoints.load_assignment(snap, CLUSTER, "default", cluster_id=cluster)
        return sorted(lb.endpoint.address.socket_address.address
                      for group in cla.endpoints for lb in group.lb_endpoints)

    local = {"settings": {"clusterLocal": True}, "hosts": ["*.default.svc.cluster.local"]}
    assert addresses(local, "east") == ["192.0.2.7"]
    assert addresses(local, "west") == ["192.0.2.8"]
    # Other hosts, or clusterLocal false, keep every cluster's endpoints.
    assert addresses({**local, "hosts": ["*.other.svc.cluster.local"]}, "east") == [
        "192.0.2.7", "192.0.2.8"]
    assert addresses({**local, "settings": {"clusterLocal": False}}, "east") == [
        "192.0.2.7", "192.0.2.8"]


def test_subscriptions_shared_only_within_a_cluster_and_network() -> None:
    """Proxies alike in all but cluster (or network) must not share one EDS answer."""
    built = snapshot_of(mesh(["192.0.2.7", "198.51.100.7"]))
    first, second = built.service_endpoints(HOST, 9080)
    split = built.with_endpoints("v2", {HOST: [dataclasses.replace(first, cluster_id="east"),
                                               dataclasses.replace(second, cluster_id="west")]})
    snap = dataclasses.replace(split, mesh=MeshConfig.from_user({"serviceSettings": [
        {"settings": {"clusterLocal": True}, "hosts": [HOST]}]}), cache={})

    def addresses(cluster: str) -> list[str]:
        proxy = Proxy(id=f"sidecar~{cluster}", type=NodeType.SIDECAR, namespace="default",
                      workload_name="client", labels={"app": "client"}, cluster_id=cluster)
        (resource,) = GENERATORS[EDS].generate(snap, proxy, frozenset({CLUSTER}))
        cla = endpoint_pb2.ClusterLoadAssignment()
        resource.body.Unpack(cla)
        return [lb.endpoint.address.socket_address.address
                for group in cla.endpoints for lb in group.lb_endpoints]

    assert addresses("east") == ["192.0.2.7"]
    assert addresses("west") == ["198.51.100.7"]


def test_remote_weights_are_summed_and_spread_over_the_gateways(runtime: SecurityRuntime) -> None:
    built = snapshot_of(mesh(["198.51.100.7", "198.51.100.8", "198.51.100.9"]))
    weighted = [dataclasses.replace(ep, weight=w)
                for ep, w in zip(built.service_endpoints(HOST, 9080), (1, 2, 3), strict=True)]
    two_gateways = {"networks": {**NETWORKS["networks"], "net-b": {
        "endpoints": [{"fromCidr": "198.51.100.0/24"}],
        "gateways": [{"address": "198.51.100.100", "port": 15443},
                     {"address": "198.51.100.101", "port": 15443}]}}}
    snap = dataclasses.replace(built.with_endpoints("v2", {HOST: weighted}),
                               mesh=MeshConfig.from_user({}, two_gateways),
                               security=runtime.security, cache={})
    cla = endpoints.load_assignment(snap, CLUSTER, "default", network="net-a")
    assert sorted((lb.endpoint.address.socket_address.address, lb.load_balancing_weight.value)
                  for group in cla.endpoints for lb in group.lb_endpoints) == [
        ("198.51.100.100", 3), ("198.51.100.101", 3)]
