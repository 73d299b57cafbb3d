"""End to end: one control plane over two clusters on one network, fed by different registries.

A real etcd is cluster-1's registry (go-micro layout) and a watched file is cluster-2's
(`file://…?cluster=cluster-2`); both publish `orders` and `ledger` under the same host names,
so the mesh sees one service each with instances from both clusters. `ledger` is cluster-local
(MeshConfig `serviceSettings`): a client reaches only its own cluster's instances. One client
sidecar runs in each cluster (`--cluster-id`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aetcd
import pytest

from meshpilot.demo.mesh import Mesh, Workload, http_request, wait_until
from tests.registry_servers import EtcdServer

pytestmark = pytest.mark.e2e

ORDERS = "orders.mesh"
LEDGER = "ledger.mesh"
PORT = 8080


def go_micro_node(name: str, node_id: str, address: str) -> bytes:
    return json.dumps({
        "name": name, "version": "latest", "metadata": None, "endpoints": [],
        "nodes": [{"id": node_id, "address": address, "metadata": {"protocol": "http"}}],
    }).encode()


@dataclass
class Clusters:
    mesh: Mesh
    backends: dict[str, Workload]

    def served(self, client: str, host: str, times: int = 40) -> collections.Counter[str]:
        address = f"{self.mesh.workloads[client].outbound_bind}:{PORT}"
        counts: collections.Counter[str] = collections.Counter()
        for _ in range(times):
            status, headers, _ = http_request(address, host)
            counts[headers.get("x-workload", f"HTTP {status}")] += 1
        return counts


@pytest.fixture(scope="module")
def clusters(
    tmp_path_factory: pytest.TempPathFactory, etcd_server: EtcdServer
) -> Iterator[Clusters]:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    workdir = tmp_path_factory.mktemp("multicluster")
    mesh = Mesh(workdir, prefix=prefix)
    mesh.config_dir.mkdir(parents=True, exist_ok=True)
    a = mesh.address
    backends = {name: Workload(name, a(last), {}, a(last), app_host=a(last), app_port=PORT)
                for name, last in (("orders-1", 11), ("ledger-1", 12),
                                   ("orders-2", 21), ("ledger-2", 22))}
    micro = f"/e2e-{uuid.uuid4().hex[:8]}/micro/registry/"
    instances = workdir / "cluster-2.yaml"
    instances.write_text(json.dumps({"services": {
        "orders": [{"address": a(21), "ports": {"http": PORT}}],
        "ledger": [{"address": a(22), "ports": {"http": PORT}}],
    }}))
    mesh_config = workdir / "mesh.yaml"
    mesh_config.write_text(json.dumps({"serviceSettings": [
        {"settings": {"clusterLocal": True}, "hosts": [LEDGER]}]}))

    async def register(client: Any) -> None:
        lease = await client.lease(120)
        for name in ("orders", "ledger"):
            node = f"{name}-1"
            await client.put(f"{micro}{name}/{node}".encode(),
                             go_micro_node(name, node, backends[node].app_address), lease=lease)

    async def run_register() -> None:
        async with aetcd.Client("127.0.0.1", etcd_server.port, timeout=5) as client:
            await register(client)

    try:
        for backend in backends.values():
            mesh.start_app(backend)
        asyncio.run(run_register())
        mesh.start_discovery([
            "--debounce-after", "0.05", "--mesh-config", str(mesh_config),
            "--registry", f"etcd://{etcd_server.address}?layout=go-micro&prefix={micro}"
                          f"&cluster=cluster-1&host={{service}}.mesh",
            "--registry", f"file://{instances}?cluster=cluster-2&host={{service}}.mesh",
        ])
        mesh.wait_ready()
        for index in (1, 2):
            mesh.start_workload(Workload(f"client-{index}", a(index), {"app": "client"},
                                         a(index), cluster_id=f"cluster-{index}"))
        for index in (1, 2):
            mesh.wait_envoy_ready(f"client-{index}")
        yield Clusters(mesh, backends)
    finally:
        mesh.stop()


def test_one_service_from_two_clusters_registries(clusters: Clusters) -> None:
    for client in ("client-1", "client-2"):
        wait_until(lambda c=client: set(clusters.served(c, ORDERS, 10)) ==
                   {"orders-1", "orders-2"}, 30, f"{client} reaching orders in both clusters")
        assert set(clusters.served(client, ORDERS)) == {"orders-1", "orders-2"}


def test_cluster_local_service_stays_in_the_clients_cluster(clusters: Clusters) -> None:
    for index in (1, 2):
        client, own = f"client-{index}", f"ledger-{index}"
        wait_until(lambda c=client, o=own: set(clusters.served(c, LEDGER, 5)) ==
                   {o}, 30, f"{client} reaching {own}")
        assert set(clusters.served(client, LEDGER)) == {own}


def test_registryz_and_proxy_status_show_clusters(clusters: Clusters) -> None:
    mesh = clusters.mesh
    status, _, body = http_request(f"127.0.0.1:{mesh.debug_port}", "x", "/debug/registryz")
    assert status == 200
    text = body.decode()
    assert "cluster-1" in text and "cluster-2" in text
    done = subprocess.run(
        [sys.executable, "-m", "meshpilot.cli.main", "proxy-status",
         "--xds-address", mesh.xds_address],
        capture_output=True, text=True, check=True, timeout=60)
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:] if line}
    by_client = {name.split("~")[2].split(".")[0] if "~" in name else name.split(".")[0]: row
                 for name, row in rows.items()}
    assert by_client["client-1"][1] == "cluster-1", done.stdout
    assert by_client["client-2"][1] == "cluster-2", done.stdout
