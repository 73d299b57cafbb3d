"""The load simulator: its proxies receive and ACK every push, and each churn scenario sends
what it should (an endpoint change only EDS). Functional checks only, no timing asserts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from benchmarks.fleet import Fleet, run_scenario
from benchmarks.mesh_bench import MeshpilotServer
from benchmarks.meshgen import NAMESPACE, Mesh
from benchmarks.simproxy import CLUSTER, ENDPOINT, ROUTE, SimProxy

from tests.configs import service_entry, workload_entry
from tests.conftest import Harness

HOST = "ratings.default.svc.cluster.local"


def _synced(harness: Harness, proxies: int) -> bool:
    """Every connection has ACKed the last response of all four types."""
    connections = list(harness.server.connections.values())
    return len(connections) == proxies and all(
        len(c.watches) == 4
        and all(w.nonce_sent and w.nonce_acked == w.nonce_sent for w in c.watches.values())
        for c in connections
    )


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Poll: the state checked lives in the server and the proxies, no event to wait on."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_sim_proxies_ack_every_push(xds: Harness, delta: bool) -> None:
    xds.store.apply(service_entry("ratings", [HOST], selector={"app": "ratings"}))
    xds.store.apply(workload_entry("ratings-1", "127.0.1.1", {"app": "ratings"}))
    xds.store.mark_synced()
    proxies = [SimProxy(i, f"127.0.0.1:{xds.port}", "default", delta, False) for i in range(3)]
    tasks = [asyncio.create_task(p.run()) for p in proxies]
    try:
        await _until(lambda: _synced(xds, 3) and all(p.eds and p.rds for p in proxies))
        for p in proxies:
            p.mark()

        # An endpoint change: one EDS response per proxy, ACKed, and nothing else.
        xds.store.apply(workload_entry("ratings-2", "127.0.1.2", {"app": "ratings"}))
        await _until(lambda: all(p.stats.responses for p in proxies) and _synced(xds, 3))
        await asyncio.sleep(0.2)
        assert [p.stats.types for p in proxies] == [{ENDPOINT: 1}] * 3

        # A new service on a port already served: new clusters and routes (the listener is
        # unchanged, so not resent), and EDS for the new cluster the proxies subscribe to.
        for p in proxies:
            p.mark()
        xds.store.apply(service_entry("details", ["details.default.svc.cluster.local"],
                                      selector={"app": "details"}))
        await _until(lambda: all(
            p.stats.types.keys() == {CLUSTER, ROUTE, ENDPOINT} for p in proxies
        ) and _synced(xds, 3))
        assert all("outbound|9080||details.default.svc.cluster.local" in p.eds for p in proxies)
        for connection in xds.server.connections.values():
            assert "outbound|9080||details.default.svc.cluster.local" in (
                connection.watches[ENDPOINT].names
            )
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(p.channel.close() for p in proxies))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Mesh, MeshpilotServer]]:
    mesh = Mesh(tmp_path / "mesh", services=30, endpoints=2)
    mesh.write()
    running = MeshpilotServer(mesh.root, 0.02, 1, tmp_path / "server.log",
                              extra=("--no-analysis",))
    try:
        running.wait_ready()
        yield mesh, running
    finally:
        running.stop()


def test_fleet_scenarios_reach_every_proxy(server: tuple[Mesh, MeshpilotServer]) -> None:
    """The benchmark's own path: worker processes, marks, scenarios, and the server's view of
    every proxy's ACKs."""
    mesh, running = server
    fleet = Fleet(f"127.0.0.1:{running.xds_port}", proxies=6, procs=2, namespace=NAMESPACE,
                  delta=False)
    try:
        fleet.wait_synced(quiet=0.5, timeout=60)
        endpoint = run_scenario(fleet, running.pid, lambda _: mesh.change_endpoint(), reps=2,
                                quiet=0.5, expected=6)
        assert endpoint.reached == [6, 6]
        assert endpoint.types == {ENDPOINT: 12}
        routing = run_scenario(fleet, running.pid, lambda _: mesh.change_virtual_service(),
                               reps=1, quiet=0.5, expected=6)
        assert routing.types == {ROUTE: 6}
        added = run_scenario(fleet, running.pid, lambda _: mesh.add_service(), reps=1,
                             quiet=0.5, expected=6)
        assert {CLUSTER, ENDPOINT} <= added.types.keys()
        # Proxy 0 kept what it received, for the floor to replay.
        assert [t for t, _ in endpoint.captures[0]] == [ENDPOINT]
        # The server saw every proxy ACK the last response of every type.
        status = running.get("/debug/syncz")
        assert len(status) == 6
        for proxy in status:
            for short in ("CDS", "LDS", "EDS", "RDS"):
                assert proxy[short]["status"] == "SYNCED", proxy
    finally:
        fleet.stop()


def test_workers_serve_proxies_that_all_reach_synced(tmp_path: Path) -> None:
    """`--workers 2`: proxies spread over two processes on one port; the debug address still
    sees every one of them, each SYNCED, also after a push."""
    mesh = Mesh(tmp_path / "mesh", services=20, endpoints=2)
    mesh.write()
    running = MeshpilotServer(mesh.root, 0.02, 2, tmp_path / "server.log",
                              extra=("--no-analysis",))
    fleet: Fleet | None = None
    try:
        running.wait_ready()
        fleet = Fleet(f"127.0.0.1:{running.xds_port}", proxies=8, procs=2,
                      namespace=NAMESPACE, delta=False)
        fleet.wait_synced(quiet=0.5, timeout=60)
        routing = run_scenario(fleet, running.pid, lambda _: mesh.change_virtual_service(),
                               reps=1, quiet=0.5, expected=8)
        assert routing.reached == [8]
        assert routing.types == {ROUTE: 8}
        status = running.get("/debug/syncz")
        assert len(status) == 8
        for proxy in status:
            for short in ("CDS", "LDS", "EDS", "RDS"):
                assert proxy[short]["status"] == "SYNCED", proxy
        assert running.get("/debug/adsz")["totalClients"] == 8
    finally:
        if fleet is not None:
            fleet.stop()
        running.stop()
