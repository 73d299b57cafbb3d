"""Proxyless gRPC: a plain grpcio client with an `xds:///` target, served by meshpilot.

The mesh: `reviews` on port 9080 with two versions, each a real gRPC server (the Echo test
service, generic handlers over bytes) on its own loopback address, registered as WorkloadEntries
in different localities; a DestinationRule with subsets v1 and v2; a VirtualService routing by
header, with a timeout, retries and faults on some routes and a 70/30 split by default.

The client is a separate process (tests/grpc_client.py: gRPC reads GRPC_XDS_BOOTSTRAP once per
process) whose bootstrap `meshpilot grpc-bootstrap` writes. It keeps one channel and makes calls
on command, so a route change is observed by the same running client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from typer.testing import CliRunner

from meshpilot.agent.node import proxy_from_node
from meshpilot.cli.main import app
from meshpilot.config.store import MemoryStore
from meshpilot.envoy import proxyless
from meshpilot.envoy.generators import GENERATORS
from meshpilot.model import Config, Kind, Proxy
from meshpilot.model.snapshot import Snapshot
from meshpilot.registry.serviceentry import ServiceEntryRegistry
from tests.conftest import Harness
from tests.xds_client import CLUSTER, ENDPOINT, LISTENER, ROUTE, AdsClient, make_node, unpack

REVIEWS = "reviews.default.svc.cluster.local"
TARGET = f"{REVIEWS}:9080"
CLIENT_ID = "sidecar~127.0.0.1~grpc-client.default~default.svc.cluster.local"
DEFAULT_ROUTE = f"outbound|9080||{REVIEWS}"
V1 = f"outbound|9080|v1|{REVIEWS}"
V2 = f"outbound|9080|v2|{REVIEWS}"
CLIENT_SCRIPT = Path(__file__).with_name("grpc_client.py")
ROOT = Path(__file__).resolve().parent.parent


# The mesh ----------------------------------------------------------------------------------


def service_entry() -> Config:
    return Config(
        kind=Kind.SERVICE_ENTRY,
        name="reviews",
        namespace="default",
        spec={
            "hosts": [REVIEWS],
            "ports": [{"number": 9080, "name": "grpc", "protocol": "GRPC"}],
            "resolution": "STATIC",
            "location": "MESH_INTERNAL",
            "workloadSelector": {"labels": {"app": "reviews"}},
        },
    )


def workload_entry(version: str, address: str, port: int, locality: str) -> Config:
    return Config(
        kind=Kind.WORKLOAD_ENTRY,
        name=f"reviews-{version}",
        namespace="default",
        spec={
            "address": address,
            "labels": {"app": "reviews", "version": version},
            "ports": {"grpc": port},
            "locality": locality,
        },
    )


def destination_rule(traffic_policy: Mapping[str, Any] | None = None) -> Config:
    spec: dict[str, Any] = {
        "host": REVIEWS,
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}},
        ],
    }
    if traffic_policy is not None:
        spec["trafficPolicy"] = traffic_policy
    return Config(kind=Kind.DESTINATION_RULE, name="reviews", namespace="default", spec=spec)


def _to(subset: str, weight: int | None = None) -> dict[str, Any]:
    destination: dict[str, Any] = {"destination": {"host": "reviews", "subset": subset}}
    if weight is not None:
        destination["weight"] = weight
    return destination


def _scenario(name: str) -> list[dict[str, Any]]:
    return [{"headers": {"x-scenario": {"exact": name}}}]


def virtual_service(v1: int = 70, v2: int = 30, extra: Mapping[str, Any] | None = None) -> Config:
    http: list[dict[str, Any]] = [
        {"name": "jason", "match": [{"headers": {"end-user": {"exact": "jason"}}}],
         "route": [_to("v2")]},
        {"name": "timeout", "match": _scenario("timeout"), "timeout": "5s",
         "route": [_to("v1")]},
        {"name": "retry", "match": _scenario("retry"),
         "retries": {"attempts": 3, "retryOn": "unavailable"}, "route": [_to("v1")]},
        {"name": "no-retry", "match": _scenario("no-retry"), "retries": {"attempts": 0},
         "route": [_to("v1")]},
        {"name": "abort", "match": _scenario("abort"),
         "fault": {"abort": {"grpcStatus": "PERMISSION_DENIED", "percentage": {"value": 100}}},
         "route": [_to("v1")]},
        {"name": "delay", "match": _scenario("delay"),
         "fault": {"delay": {"fixedDelay": "30s", "percentage": {"value": 100}}},
         "route": [_to("v1")]},
        {"name": "default", "route": [_to("v1", v1), _to("v2", v2)], **(extra or {})},
    ]
    return Config(
        kind=Kind.VIRTUAL_SERVICE,
        name="reviews",
        namespace="default",
        spec={"hosts": ["reviews"], "http": http},
    )


class Backend:
    """One version of reviews: the Echo test service on a loopback address."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.attempts: Counter[str] = Counter()
        self.server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(self._call)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("meshpilot.test.Echo", {"Call": handler}),)
        )
        self.port = 0

    async def start(self, address: str) -> None:
        self.port = self.server.add_insecure_port(f"{address}:0")
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop(grace=None)

    async def _call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        body = json.loads(request)
        self.attempts[body["id"]] += 1
        attempt = self.attempts[body["id"]]
        if attempt <= int(body.get("fail", 0)):
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} fails attempt {attempt}")
        if body.get("delay"):
            await asyncio.sleep(float(body["delay"]))
        return json.dumps({"backend": self.name, "attempt": attempt}).encode()


class GrpcClient:
    """The client process, driven one command at a time over its stdin and stdout."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, bootstrap: Path, target: str) -> GrpcClient:
        env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap), "PYTHONPATH": str(ROOT)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(CLIENT_SCRIPT), f"xds:///{target}",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )
        return cls(process)

    async def calls(self, count: int, within: float = 30.0, **options: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        command = {"calls": count, **options}
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()
        async with asyncio.timeout(within):
            line = await self.process.stdout.readline()
        assert line, "the gRPC client exited"
        result: dict[str, Any] = json.loads(line)
        return result

    async def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            async with asyncio.timeout(10):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@dataclass
class Mesh:
    xds: Harness
    v1: Backend
    v2: Backend
    client: GrpcClient

    def attempts(self, ids: list[str]) -> int:
        return sum(b.attempts[i] for b in (self.v1, self.v2) for i in ids)

    def client_connection(self) -> Any:
        found = [c for c in self.xds.server.connections.values() if c.proxy.id == CLIENT_ID]
        assert len(found) == 1
        return found[0]


def write_bootstrap(path: Path, port: int) -> None:
    """`meshpilot grpc-bootstrap`, as a user would run it."""
    result = CliRunner().invoke(
        app,
        [
            "grpc-bootstrap", "--discovery-address", f"127.0.0.1:{port}", "--node-id", CLIENT_ID,
            "--labels", "app=grpc-client", "--locality", "region-a/zone-1", "-o", str(path),
        ],
    )
    assert result.exit_code == 0, result.output


@pytest.fixture
async def mesh(xds: Harness, tmp_path: Path) -> AsyncIterator[Mesh]:
    v1, v2 = Backend("v1"), Backend("v2")
    await v1.start("127.0.3.1")
    await v2.start("127.0.3.2")
    xds.store.apply(service_entry())
    xds.store.apply(workload_entry("v1", "127.0.3.1", v1.port, "region-a/zone-1"))
    xds.store.apply(workload_entry("v2", "127.0.3.2", v2.port, "region-a/zone-2"))
    xds.store.apply(destination_rule())
    xds.store.apply(virtual_service())
    xds.store.mark_synced()
    bootstrap = tmp_path / "grpc-bootstrap.json"
    write_bootstrap(bootstrap, xds.port)
    client = await GrpcClient.start(bootstrap, TARGET)
    try:
        yield Mesh(xds, v1, v2, client)
    finally:
        await client.close()
        await v1.stop()
        await v2.stop()


async def wait_for_share(mesh: Mesh, want: dict[str, int], batch: int, within: float) -> None:
    """Call in batches until one batch lands exactly as `want`; fail after `within` seconds."""
    last: dict[str, Any] = {}
    try:
        async with asyncio.timeout(within):
            while True:
                last = await mesh.client.calls(batch)
                if last["backends"] == want:
                    return
    except TimeoutError:
        raise AssertionError(f"traffic never shifted to {want}; last batch: {last}") from None


# End to end with a real gRPC client --------------------------------------------------------


async def test_weighted_and_header_routing_and_a_live_route_change(mesh: Mesh) -> None:
    result = await mesh.client.calls(1000)
    assert result["errors"] == {}, result
    share = result["backends"].get("v2", 0) / 1000
    assert 0.25 <= share <= 0.35, result  # 30% ± 5 points: 3.4 standard deviations

    jason = await mesh.client.calls(20, metadata={"end-user": "jason"})
    assert jason["backends"] == {"v2": 20}, jason
    others = await mesh.client.calls(20, metadata={"end-user": "someone"})
    assert others["errors"] == {} and sum(others["backends"].values()) == 20

    # Everything gRPC was sent it accepted: no NACK on any type.
    connection = mesh.client_connection()
    for type_url in (LISTENER, ROUTE, CLUSTER, ENDPOINT):
        assert connection.watches[type_url].acked_once, type_url
        assert connection.watches[type_url].last_error == "", type_url
    assert connection.watches[LISTENER].names == frozenset({TARGET})

    # The same running client follows a route change.
    mesh.xds.store.apply(virtual_service(v1=0, v2=100))
    await wait_for_share(mesh, {"v2": 20}, batch=20, within=10)
    mesh.xds.store.apply(virtual_service(v1=100, v2=0))
    await wait_for_share(mesh, {"v1": 20}, batch=20, within=10)


async def test_timeouts_retries_and_faults(mesh: Mesh) -> None:
    # The first call also waits for xDS and a connection; the scenarios start after it.
    warm = await mesh.client.calls(1)
    assert warm["errors"] == {}, warm
    # Timeout: the route's 5 s applies, though the call itself allows 60 s. (The timeout is
    # generous because gRPC Python starts the clock of a route timeout early when retries are
    # on, by a second or two: grpc/grpc#34547, #40633.)
    quick = await mesh.client.calls(1, metadata={"x-scenario": "timeout"}, timeout=60)
    assert quick["backends"] == {"v1": 1}, quick
    slow = await mesh.client.calls(1, metadata={"x-scenario": "timeout"}, delay=30, timeout=60)
    assert slow["errors"] == {"DEADLINE_EXCEEDED": 1}, slow

    # Retries: three attempts allowed on UNAVAILABLE, so two failures are absorbed...
    retried = await mesh.client.calls(1, metadata={"x-scenario": "retry"}, fail=2)
    assert retried["backends"] == {"v1": 1}, retried
    assert mesh.attempts(retried["ids"]) == 3
    # ...and `attempts: 0` means none.
    single = await mesh.client.calls(1, metadata={"x-scenario": "no-retry"}, fail=1)
    assert single["errors"] == {"UNAVAILABLE": 1}, single
    assert mesh.attempts(single["ids"]) == 1

    # Fault injection: aborted calls never reach a backend.
    aborted = await mesh.client.calls(5, metadata={"x-scenario": "abort"})
    assert aborted["errors"] == {"PERMISSION_DENIED": 5}, aborted
    assert mesh.attempts(aborted["ids"]) == 0
    # A delay longer than the call's deadline: the call expires before it is sent.
    delayed = await mesh.client.calls(1, metadata={"x-scenario": "delay"}, timeout=1)
    assert delayed["errors"] == {"DEADLINE_EXCEEDED": 1}, delayed
    assert mesh.attempts(delayed["ids"]) == 0


# The ADS server with gRPC's way of subscribing ---------------------------------------------


def grpc_node(node_id: str = CLIENT_ID, namespace: str = "default") -> Any:
    node = make_node(node_id=node_id, namespace=namespace, workload="grpc-client")
    node.metadata["GENERATOR"] = "grpc"
    return node


def names_of(response: Any) -> list[str]:
    messages = unpack(response)
    return sorted(m.name for m in messages)


async def test_named_subscriptions_to_listeners_and_clusters(xds: Harness) -> None:
    for config in (
        service_entry(),
        workload_entry("v1", "127.0.3.1", 9080, ""),
        destination_rule(),
        virtual_service(),
    ):
        xds.store.apply(config)
    xds.store.mark_synced()
    client = AdsClient(xds.port, node=grpc_node())
    try:
        # Listeners by target name: the FQDN and the short name both resolve (the client is
        # in the service's namespace); an unknown target is simply absent.
        wanted = [TARGET, "reviews:9080", "nothing.default.svc.cluster.local:9080"]
        listeners = await client.request(LISTENER, wanted)
        assert names_of(listeners) == sorted([TARGET, "reviews:9080"])
        await client.ack(listeners, wanted)
        await client.expect_no_response()

        # Clusters by name, as the routes name them; a changed list is a new subscription.
        first = await client.request(CLUSTER, [V1])
        assert names_of(first) == [V1]
        await client.ack(first, [V1, V2])
        second = await client.expect_response(CLUSTER)
        assert names_of(second) == sorted([V1, V2])
        # An empty list after names unsubscribes: it is not a wildcard request.
        await client.ack(second, [])
        await client.expect_no_response()
        connection = next(iter(xds.server.connections.values()))
        assert not connection.watches[CLUSTER].wildcard
        # `*` asks for everything (for a gRPC client: every outbound cluster).
        await client.send(CLUSTER, ["*"], nonce=second.nonce, version=second.version_info)
        everything = await client.expect_response(CLUSTER)
        assert names_of(everything) == sorted([DEFAULT_ROUTE, V1, V2])
    finally:
        await client.close()


async def test_envoy_wildcard_subscription_unchanged(xds: Harness) -> None:
    xds.store.apply(service_entry())
    xds.store.mark_synced()
    client = AdsClient(xds.port)
    try:
        first = await client.request(CLUSTER)
        assert DEFAULT_ROUTE in names_of(first)
        await client.ack(first)  # Envoy acknowledges a wildcard with no names: still one
        await client.expect_no_response()
        connection = next(iter(xds.server.connections.values()))
        assert connection.watches[CLUSTER].wildcard
    finally:
        await client.close()


# Translation: what a gRPC client gets instead of Envoy config ------------------------------


def snapshot(configs: list[Config]) -> Snapshot:
    store = MemoryStore()
    registry = ServiceEntryRegistry(store, _NoPush())
    for config in configs:
        store.apply(config)
    services = registry.services()
    endpoints = [e for s in services for e in registry.endpoints(s.hostname, s.namespace)]
    routing = [c for c in configs if c.kind in (Kind.VIRTUAL_SERVICE, Kind.DESTINATION_RULE)]
    return Snapshot.build("test", services, endpoints, routing)


class _NoPush:
    def config_update(self, request: object) -> None:
        pass


_MESSAGES: dict[str, Any] = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
}


def generate(snap: Snapshot, proxy: Proxy, type_url: str, wanted: list[str] | None) -> list[Any]:
    """What the server's generators produce for `proxy`, unpacked."""
    out = []
    for resource in GENERATORS[type_url].generate(snap, proxy, wanted):
        message = _MESSAGES[type_url]()
        resource.body.Unpack(message)
        out.append(message)
    return out


ENVOY_ONLY_ROUTING = {
    "corsPolicy": {"allowOrigins": [{"exact": "https://example.com"}]},
    "headers": {"request": {"set": {"x-from": "mesh"}}},
    "mirror": {"host": "reviews", "subset": "v2"},
    "rewrite": {"authority": "elsewhere"},
}
ENVOY_ONLY_POLICY = {
    "loadBalancer": {"simple": "RANDOM"},
    "outlierDetection": {"consecutive5xxErrors": 3, "interval": "5s"},
    "tls": {"mode": "SIMPLE", "caCertificates": "/etc/certs/ca.pem"},
}


def test_resources_carry_only_what_grpc_implements(caplog: pytest.LogCaptureFixture) -> None:
    snap = snapshot([
        service_entry(),
        workload_entry("v1", "127.0.3.1", 9080, "region-a/zone-1"),
        workload_entry("v2", "127.0.3.2", 9080, "region-a/zone-2"),
        destination_rule(ENVOY_ONLY_POLICY),
        virtual_service(extra=ENVOY_ONLY_ROUTING),
    ])
    proxy = proxy_from_node(grpc_node())
    assert proxy.proxyless
    caplog.set_level(logging.WARNING, logger="meshpilot.envoy")
    proxyless._reported.clear()  # each warning is logged once per process

    (listener,) = generate(snap, proxy, LISTENER, [TARGET])
    manager = hcm_pb2.HttpConnectionManager()
    listener.api_listener.api_listener.Unpack(manager)
    assert [f.name for f in manager.http_filters] == [
        "envoy.filters.http.fault", "envoy.filters.http.router",
    ]
    assert manager.rds.route_config_name == DEFAULT_ROUTE
    assert manager.rds.config_source.HasField("ads")
    assert not listener.HasField("address") and not listener.filter_chains

    (config,) = generate(snap, proxy, ROUTE, [DEFAULT_ROUTE])
    (vhost,) = config.virtual_hosts
    routes = {r.name: r for r in vhost.routes}
    assert list(routes) == ["jason", "timeout", "retry", "no-retry", "abort", "delay", "default"]
    timeout = routes["timeout"].route
    assert timeout.max_stream_duration.max_stream_duration.seconds == 5
    assert not timeout.HasField("timeout")
    # Istio's default retries, cut down to the gRPC status codes among them.
    assert timeout.retry_policy.retry_on == "unavailable,cancelled"
    assert not timeout.retry_policy.retry_host_predicate
    assert not routes["no-retry"].route.HasField("retry_policy")
    assert list(routes["abort"].typed_per_filter_config) == ["envoy.filters.http.fault"]
    default = routes["default"]
    assert not default.typed_per_filter_config  # the CORS policy is not sent
    assert not default.request_headers_to_add
    assert not default.route.request_mirror_policies
    assert not default.route.host_rewrite_literal
    assert [(c.name, c.weight.value) for c in default.route.weighted_clusters.clusters] == [
        (V1, 70), (V2, 30),
    ]

    clusters = {c.name: c for c in generate(snap, proxy, CLUSTER, None)}
    assert sorted(clusters) == sorted([DEFAULT_ROUTE, V1, V2])
    for cluster in clusters.values():
        assert cluster.type == cluster_pb2.Cluster.EDS
        assert cluster.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
        assert not cluster.HasField("outlier_detection")
        assert not cluster.HasField("transport_socket")
        assert not cluster.typed_extension_protocol_options

    # Each Istio field gRPC does not get is named in a warning.
    warned = caplog.text
    for field in (
        "corsPolicy", "headers", "mirror", "rewrite", "loadBalancer.simple (RANDOM)",
        "trafficPolicy.outlierDetection", "trafficPolicy.tls",
    ):
        assert f": {field} is not applied" in warned, field


def test_target_names_follow_the_client_namespace() -> None:
    snap = snapshot([service_entry(), workload_entry("v1", "127.0.3.1", 9080, "")])
    here = proxy_from_node(grpc_node())
    elsewhere = proxy_from_node(
        grpc_node("sidecar~127.0.0.1~c.other~other.svc.cluster.local", namespace="other")
    )
    short = ["reviews:9080", "reviews.default:9080", f"{REVIEWS}:9080", REVIEWS]
    assert sorted(lst.name for lst in generate(snap, here, LISTENER, short)) == sorted(short)
    # The bare name means a service of the client's own namespace, as in Kubernetes.
    assert sorted(lst.name for lst in generate(snap, elsewhere, LISTENER, short)) == sorted(
        short[1:]
    )


def test_envoy_proxies_are_unaffected() -> None:
    snap = snapshot([service_entry(), workload_entry("v1", "127.0.3.1", 9080, ""),
                     destination_rule(), virtual_service()])
    envoy = proxy_from_node(make_node())
    assert not envoy.proxyless
    (config,) = generate(snap, envoy, ROUTE, ["9080"])
    (vhost,) = [v for v in config.virtual_hosts if REVIEWS in v.domains]
    assert vhost.routes[0].route.retry_policy.retry_host_predicate  # Envoy's retry predicate
    assert any(lst.filter_chains for lst in generate(snap, envoy, LISTENER, None))


# The bootstrap command -----------------------------------------------------------------------


def test_grpc_bootstrap_command(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.json"
    write_bootstrap(path, 15010)
    bootstrap = json.loads(path.read_text())
    (server,) = bootstrap["xds_servers"]
    assert server == {
        "server_uri": "127.0.0.1:15010",
        "channel_creds": [{"type": "insecure"}],
        "server_features": ["xds_v3"],
    }
    node = bootstrap["node"]
    assert node["id"] == CLIENT_ID
    assert node["locality"] == {"region": "region-a", "zone": "zone-1", "sub_zone": ""}
    assert node["metadata"]["GENERATOR"] == "grpc"
    assert node["metadata"]["NAMESPACE"] == "default"
    assert node["metadata"]["LABELS"] == {"app": "grpc-client"}
    assert "OUTBOUND_BIND" not in node["metadata"]  # Envoy-only keys are left out

    bad = CliRunner().invoke(app, ["grpc-bootstrap", "--discovery-address", "nowhere"])
    assert bad.exit_code == 2
    assert "--discovery-address" in bad.output


def test_consistent_hashing_by_header() -> None:
    hashing = {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}}
    snap = snapshot([
        service_entry(),
        workload_entry("v1", "127.0.3.1", 9080, ""),
        destination_rule(hashing),
        virtual_service(),
    ])
    proxy = proxy_from_node(grpc_node())
    clusters = generate(snap, proxy, CLUSTER, [V1, V2])
    assert [c.lb_policy for c in clusters] == [cluster_pb2.Cluster.RING_HASH] * 2
    (config,) = generate(snap, proxy, ROUTE, [DEFAULT_ROUTE])
    default = config.virtual_hosts[0].routes[-1]
    assert [p.header.header_name for p in default.route.hash_policy] == ["x-user"]
