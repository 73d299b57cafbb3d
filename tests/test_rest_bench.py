"""The REST benchmark's load generator against meshpilot alone (no sovereign): it gets the
mesh's clusters, full answers with an empty version and 304s with the current one. Functional
checks only, no timing asserts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from benchmarks.mesh_bench import MeshpilotServer
from benchmarks.meshgen import Mesh, host, port_of
from benchmarks.rest_bench import CLUSTERS_PATH, discovery_request, run_load, wait_serving

SERVICES = 5


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MeshpilotServer]:
    mesh = Mesh(tmp_path / "mesh", services=SERVICES, endpoints=2)
    mesh.write()
    server = MeshpilotServer(mesh.root, 0.02, 1, tmp_path / "server.log", rest=True,
                             extra=("--no-analysis",))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_load_generator_against_meshpilot(server: MeshpilotServer) -> None:
    rest_url = f"http://127.0.0.1:{server.rest_port}{CLUSTERS_PATH}"
    served = wait_serving(rest_url, discovery_request(), server.process)
    names = {c["name"] for c in served["resources"]}
    # One outbound cluster per service, as the benchmark mesh defines them.
    assert {f"outbound|{port_of(i)}||{host(i)}" for i in range(SERVICES)} <= names

    full = asyncio.run(run_load(rest_url, discovery_request(), clients=2, seconds=1.0))
    assert full.requests > 0 and set(full.statuses) == {200} and not full.errors
    assert full.received >= full.requests * 100  # bodies, read whole

    current = asyncio.run(run_load(rest_url, discovery_request(served["versionInfo"]),
                                   clients=2, seconds=1.0))
    assert current.requests > 0 and set(current.statuses) == {304}
    assert current.received == 0

