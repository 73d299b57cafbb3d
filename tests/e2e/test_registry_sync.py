"""End to end: a registry → `meshpilot registry-sync` → `meshpilot discovery` → real Envoy.

The registry is a watched file of instances (`file://`), so the test needs no registry server;
the sync path is the same for every adapter. One test goes through MCP (`--to mcp:` read by
`discovery --config-source xds://`), one through a directory (`--to dir:` read by
`discovery --config-dir`).
"""

from __future__ import annotations

import collections
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from meshpilot.demo.mesh import Mesh, Workload, free_port, http_request, wait_until

pytestmark = pytest.mark.e2e

HOST = "shop.default.file"


def write_instances(path: Path, addresses: list[tuple[str, int]]) -> None:
    doc = {"services": {"shop": [{"address": a, "ports": {"http": p}} for a, p in addresses]}}
    temporary = path.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(doc))
    temporary.replace(path)


def served(mesh: Mesh, n: int = 30) -> collections.Counter[str]:
    address = f"{mesh.workloads['client'].outbound_bind}:9090"
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        status, headers, _ = http_request(address, HOST)
        counts[headers.get("x-workload", str(status))] += 1
    return counts


@pytest.fixture(scope="module", params=["mcp", "dir"])
def mesh(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[Mesh, Path, list[Workload]]]:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    mesh = Mesh(tmp_path_factory.mktemp(f"sync-{request.param}"), prefix=prefix)
    mesh.config_dir.mkdir(parents=True, exist_ok=True)
    apps = [Workload(f"shop-{i}", mesh.address(40 + i), {}, "", app_port=9090,
                     app_host=mesh.address(40 + i)) for i in (1, 2)]
    instances = mesh.workdir / "instances.yaml"
    write_instances(instances, [(a.app_host, a.app_port) for a in apps])
    source = f"file://{instances}?meshNamespace=default"
    try:
        for app in apps:
            mesh.start_app(app)  # registered directly, without sidecars
        if request.param == "mcp":
            mcp_port = free_port()
            mesh.start_meshpilot("sync", ["registry-sync", "--from", source, "--to",
                                          f"mcp:127.0.0.1:{mcp_port}", "--status-address",
                                          f"127.0.0.1:{free_port()}"])
            mesh.start_discovery(["--config-source", f"xds://127.0.0.1:{mcp_port}",
                                  "--debounce-after", "0.05"])
        else:
            mesh.start_meshpilot("sync", ["registry-sync", "--from", source, "--to",
                                          f"dir:{mesh.config_dir}", "--status-address",
                                          f"127.0.0.1:{free_port()}"])
            mesh.start_discovery(["--debounce-after", "0.05"])
        mesh.wait_ready()
        client = Workload("client", mesh.address(10), {"app": "client"}, mesh.address(1))
        mesh.start_sidecar(client)
        mesh.wait_envoy_ready("client")
        yield mesh, instances, apps
    finally:
        mesh.stop()


def test_registered_instances_receive_traffic_and_deregistration_removes_them(
    mesh: tuple[Mesh, Path, list[Workload]],
) -> None:
    m, instances, apps = mesh
    wait_until(lambda: set(served(m)) == {"shop-1", "shop-2"}, 20, "traffic to both instances")
    write_instances(instances, [(apps[1].app_host, apps[1].app_port)])
    wait_until(lambda: set(served(m)) == {"shop-2"}, 20, "the removed instance to go")
    write_instances(instances, [(a.app_host, a.app_port) for a in apps])
    wait_until(lambda: set(served(m)) == {"shop-1", "shop-2"}, 20, "both again")


def test_a_broken_registry_file_keeps_the_last_instances(
    mesh: tuple[Mesh, Path, list[Workload]],
) -> None:
    m, instances, _ = mesh
    wait_until(lambda: set(served(m)) == {"shop-1", "shop-2"}, 20, "traffic to both")
    instances.write_text("services: [this is not a mapping")
    assert "Traceback" not in m.log("sync")
    assert set(served(m, 40)) == {"shop-1", "shop-2"}
    wait_until(lambda: "keeping its last known" in m.log("sync"), 10, "the problem reported")
