"""End to end: instances registered in a real etcd and a real ZooKeeper become endpoints of a
real Envoy sidecar and receive real traffic.

`meshpilot discovery --registry etcd://… --registry zookeeper://…` runs as a process, like a
user would run it; a client sidecar (`meshpilot proxy sidecar`) calls the registered services
on its outbound address. The backends are echo apps registered directly, as go-micro and Dubbo
register themselves (go-micro: a JSON key under a lease; Dubbo: an ephemeral znode named by
the provider URL): HTTP to `orders` from etcd, TCP (the dubbo protocol's default) to a Dubbo
interface from ZooKeeper. Deregistering an instance removes it from the sidecar's EDS.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import aetcd
import pytest
from kazoo.client import KazooClient

from meshpilot.demo.mesh import Mesh, Workload, http_request, wait_until
from meshpilot.registry.zookeeper import dubbo_service_name
from tests.registry_servers import EtcdServer, ZooKeeperServer

pytestmark = pytest.mark.e2e

PAYMENTS = "org.example.pay.PaymentService"
DUBBO_PORT = 20880


def etcd_call(server: EtcdServer, operation: Any) -> Any:
    """Run one aetcd operation from synchronous test code."""

    async def run() -> Any:
        async with aetcd.Client("127.0.0.1", server.port, timeout=5) as client:
            return await operation(client)

    return asyncio.run(run())


def go_micro_node(name: str, node_id: str, address: str) -> bytes:
    return json.dumps({
        "name": name, "version": "latest", "metadata": None, "endpoints": [],
        "nodes": [{"id": node_id, "address": address, "metadata": {
            "protocol": "http", "server": "http", "registry": "etcd", "transport": "http"}}],
    }).encode()


@dataclass
class Setup:
    mesh: Mesh
    etcd: EtcdServer
    zk: Any
    micro_prefix: str
    dubbo_root: str
    backends: dict[str, Workload]

    @property
    def client(self) -> Workload:
        return self.mesh.workloads["client"]

    def micro_key(self, node: str) -> bytes:
        return f"{self.micro_prefix}orders/{node}".encode()

    def provider_path(self, address: str) -> str:
        url = (f"dubbo://{address}/{PAYMENTS}?anyhost=true&application=payments&"
               f"dynamic=true&interface={PAYMENTS}&methods=pay&side=provider&version=1.0")
        return f"{self.dubbo_root}/{PAYMENTS}/providers/{quote_plus(url, safe='')}"


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
    etcd_server: EtcdServer,
    zookeeper_server: ZooKeeperServer,
) -> Iterator[Setup]:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    mesh = Mesh(tmp_path_factory.mktemp("registries"), prefix=prefix)
    mesh.config_dir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    zk = KazooClient(hosts=zookeeper_server.address, timeout=10)
    zk.start(10)
    state = Setup(mesh, etcd_server, zk, f"/e2e-{tag}/micro/registry/", f"/e2e-{tag}/dubbo", {})
    a = mesh.address
    backends = {
        "orders-1": Workload("orders-1", a(11), {}, a(11), app_host=a(11), app_port=8080),
        "orders-2": Workload("orders-2", a(12), {}, a(12), app_host=a(12), app_port=8080),
        "payments-1": Workload("payments-1", a(13), {}, a(13), app_host=a(13),
                               app_port=DUBBO_PORT),
        "payments-2": Workload("payments-2", a(14), {}, a(14), app_host=a(14),
                               app_port=DUBBO_PORT),
    }
    state.backends = backends
    try:
        for backend in backends.values():
            mesh.start_app(backend)

        async def register_orders(client: Any) -> None:
            lease = await client.lease(120)  # go-micro keeps its lease alive; 120 s outlives us
            for name in ("orders-1", "orders-2"):
                await client.put(state.micro_key(name), go_micro_node(
                    "orders", name, backends[name].app_address), lease=lease)

        etcd_call(etcd_server, register_orders)
        for name in ("payments-1", "payments-2"):
            zk.create(state.provider_path(backends[name].app_address), b"", ephemeral=True,
                      makepath=True)
        mesh.start_discovery([
            "--debounce-after", "0.05",
            "--registry", f"etcd://{etcd_server.address}?layout=go-micro&prefix="
                          f"{state.micro_prefix}",
            "--registry", f"zookeeper://{zookeeper_server.address}{state.dubbo_root}",
        ])
        mesh.wait_ready()
        mesh.start_workload(Workload("client", a(10), {"app": "client"}, a(1)))
        mesh.wait_envoy_ready("client")
        yield state
    finally:
        mesh.stop()
        zk.stop()
        zk.close()


def eds_addresses(setup: Setup, cluster: str) -> set[str]:
    status, _, body = http_request(setup.client.admin_address, "x", "/clusters?format=json")
    assert status == 200
    for entry in json.loads(body)["cluster_statuses"]:
        if entry["name"] == cluster:
            return {
                f"{h['address']['socket_address']['address']}:"
                f"{h['address']['socket_address']['port_value']}"
                for h in entry.get("host_statuses", [])
            }
    return set()


def who(setup: Setup, port: int, host: str) -> str:
    status, headers, body = http_request(f"{setup.client.outbound_bind}:{port}", host)
    assert status == 200, f"HTTP {status}: {body[:200]!r}"
    return headers["x-workload"]


ORDERS = "orders.default.etcd"
ORDERS_CLUSTER = f"outbound|8080||{ORDERS}"
PAYMENTS_HOST = f"{dubbo_service_name(PAYMENTS)}.default.zookeeper"
PAYMENTS_CLUSTER = f"outbound|{DUBBO_PORT}||{PAYMENTS_HOST}"


def test_etcd_instances_receive_http_traffic(setup: Setup) -> None:
    expected = {setup.backends[n].app_address for n in ("orders-1", "orders-2")}
    wait_until(lambda: eds_addresses(setup, ORDERS_CLUSTER) == expected, 30, "orders in EDS")
    counts = collections.Counter(who(setup, 8080, ORDERS) for _ in range(60))
    assert set(counts) == {"orders-1", "orders-2"}, counts


def test_dubbo_providers_receive_tcp_traffic(setup: Setup) -> None:
    expected = {setup.backends[n].app_address for n in ("payments-1", "payments-2")}
    wait_until(lambda: eds_addresses(setup, PAYMENTS_CLUSTER) == expected, 30,
               "payments in EDS")
    # The dubbo protocol port is a TCP proxy: any bytes pass, here an HTTP request.
    counts = collections.Counter(who(setup, DUBBO_PORT, "anything") for _ in range(60))
    assert set(counts) == {"payments-1", "payments-2"}, counts


def test_deregistration_leaves_envoy_eds(setup: Setup) -> None:
    orders_1 = setup.backends["orders-1"].app_address
    payments_1 = setup.backends["payments-1"].app_address
    wait_until(lambda: len(eds_addresses(setup, ORDERS_CLUSTER)) == 2, 30, "both orders")
    wait_until(lambda: len(eds_addresses(setup, PAYMENTS_CLUSTER)) == 2, 30, "both payments")

    async def deregister(client: Any) -> None:
        await client.delete(setup.micro_key("orders-2"))  # go-micro's Deregister

    etcd_call(setup.etcd, deregister)
    setup.zk.delete(setup.provider_path(setup.backends["payments-2"].app_address))
    wait_until(lambda: eds_addresses(setup, ORDERS_CLUSTER) == {orders_1}, 30,
               "orders-2 to leave EDS")
    wait_until(lambda: eds_addresses(setup, PAYMENTS_CLUSTER) == {payments_1}, 30,
               "payments-2 to leave EDS")
    assert {who(setup, 8080, ORDERS) for _ in range(30)} == {"orders-1"}
    assert {who(setup, DUBBO_PORT, "x") for _ in range(30)} == {"payments-1"}
