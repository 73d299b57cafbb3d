"""End to end from a real registry: etcd (go-micro layout) → `meshpilot registry-sync --to mcp:`
→ `meshpilot discovery --config-source xds://` → a real Envoy.

Instances are registered as go-micro registers them (a JSON node under a lease); the syncer turns
them into ServiceEntries served over MCP; the discovery server reads those like any config.
Deregistering an instance (deleting its key) takes it out of the Envoy's endpoints.
"""

from __future__ import annotations

import collections
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from meshpilot.demo.mesh import Mesh, Workload, free_port, http_request, wait_until
from tests.e2e.test_registries_real import etcd_call, go_micro_node
from tests.registry_servers import EtcdServer

pytestmark = pytest.mark.e2e

HOST = "shop.default.etcd"
PORT = 9090


@dataclass
class Synced:
    mesh: Mesh
    etcd: EtcdServer
    prefix: str
    apps: dict[str, Workload]

    def key(self, node: str) -> bytes:
        return f"{self.prefix}shop/{node}".encode()

    def served(self, n: int = 30) -> collections.Counter[str]:
        address = f"{self.mesh.workloads['client'].outbound_bind}:{PORT}"
        counts: collections.Counter[str] = collections.Counter()
        for _ in range(n):
            status, headers, _ = http_request(address, HOST)
            counts[headers.get("x-workload", str(status))] += 1
        return counts


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory, etcd_server: EtcdServer) -> Iterator[Synced]:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    mesh = Mesh(tmp_path_factory.mktemp("sync-etcd"), prefix=prefix)
    mesh.config_dir.mkdir(parents=True, exist_ok=True)
    apps = {f"shop-{i}": Workload(f"shop-{i}", mesh.address(40 + i), {}, "", app_port=PORT,
                                  app_host=mesh.address(40 + i)) for i in (1, 2)}
    state = Synced(mesh, etcd_server, f"/sync-{uuid.uuid4().hex[:8]}/micro/registry/", apps)

    async def register(client: Any) -> None:
        lease = await client.lease(120)
        for name, app in apps.items():
            await client.put(state.key(name), go_micro_node("shop", name, app.app_address),
                             lease=lease)

    try:
        for app in apps.values():
            mesh.start_app(app)
        etcd_call(etcd_server, register)
        mcp_port = free_port()
        mesh.start_meshpilot("sync", [
            "registry-sync", "--from",
            f"etcd://{etcd_server.address}?layout=go-micro&prefix={state.prefix}",
            "--to", f"mcp:127.0.0.1:{mcp_port}", "--status-address", f"127.0.0.1:{free_port()}",
        ])
        mesh.start_discovery(["--config-source", f"xds://127.0.0.1:{mcp_port}",
                              "--debounce-after", "0.05"])
        mesh.wait_ready()
        mesh.start_sidecar(Workload("client", mesh.address(10), {"app": "client"},
                                    mesh.address(1)))
        mesh.wait_envoy_ready("client")
        yield state
    finally:
        mesh.stop()


def test_etcd_instances_reach_envoy_through_mcp_and_deregistration_removes_them(
    synced: Synced,
) -> None:
    wait_until(lambda: set(synced.served()) == {"shop-1", "shop-2"}, 30,
               "traffic to both registered instances")

    async def deregister(client: Any) -> None:
        await client.delete(synced.key("shop-1"))  # go-micro's Deregister

    etcd_call(synced.etcd, deregister)
    wait_until(lambda: set(synced.served()) == {"shop-2"}, 30, "shop-1 to leave")
    assert set(synced.served(40)) == {"shop-2"}
