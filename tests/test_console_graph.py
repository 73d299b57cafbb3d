"""The console's graph API on a large synthetic mesh: 1,000 services in 10 namespaces, 2,000
endpoints, and 100 client proxies injected into the server's model (no Envoys), each calling
ten services with known traffic. Functional checks only: every answer comes, aggregation keeps
the node count within bounds, and the numbers add up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest

from meshpilot.console.graph import build, render
from meshpilot.console.server import Console
from meshpilot.console.stats import ClusterSample, ProxySample
from meshpilot.model import NodeType, Proxy
from meshpilot.xds.connection import Connection
from tests.configs import service_entry
from tests.conftest import Harness
from tests.test_console import PASSWORD, Browser, start

NAMESPACES = 10
SERVICES = 1000
CLIENTS = 100
CALLS = 10


def host(n: int) -> str:
    return f"svc-{n:04d}.ns-{n % NAMESPACES}.svc.cluster.local"


@dataclass
class Large:
    harness: Harness
    console: Console
    url: str


@pytest.fixture
async def large(xds: Harness) -> AsyncIterator[Large]:
    for n in range(SERVICES):
        xds.store.apply(service_entry(
            f"svc-{n:04d}", [host(n)], namespace=f"ns-{n % NAMESPACES}",
            endpoints=[{"address": f"10.{n // 250}.{n % 250}.{i + 1}"} for i in range(2)],
        ))
    xds.store.mark_synced()
    async with asyncio.timeout(30):
        await xds.server.ready.wait()
    console, _ = await start(xds)
    server = xds.server
    for c in range(CLIENTS):
        proxy = Proxy(f"sidecar~10.99.0.{c}~client-{c}.ns-{c % NAMESPACES}~x", NodeType.SIDECAR,
                      f"ns-{c % NAMESPACES}", f"client-{c}", admin_address="127.0.0.1:1")
        connection = Connection(proxy=proxy, peer="synthetic", delta=False)
        server.connections[connection.id] = connection
        # Client c calls services c*10 … c*10+9: 60 requests in 10 s each, 6 of them 5xx.
        clusters = {f"outbound|9080||{host(c * CALLS + k)}": k for k in range(CALLS)}
        console.stats.add_sample(proxy.id, ProxySample(0.0, {
            name: ClusterSample() for name in clusters}))
        console.stats.add_sample(proxy.id, ProxySample(10.0, {
            name: ClusterSample(60, {"200": 54, "503": 6}, 6, 0, ((10, 60),))
            for name in clusters}))
    try:
        yield Large(xds, console, f"http://127.0.0.1:{console.port}")
    finally:
        server.connections.clear()
        await console.stop()


async def get(client: Browser, path: str) -> Any:
    status, body, _ = await client.request("GET", path)
    assert status == 200, body
    return body


async def test_graph_api_stays_bounded_on_a_thousand_services(large: Large) -> None:
    client = Browser(large.url)
    try:
        assert (await client.login("ops", PASSWORD))[0] == 303
        auto = await get(client, "/api/graph")
        # 3,100 workload-level nodes and 1,100 service-level ones do not fit 300: by namespace.
        assert auto["aggregate"] == "namespace" and auto["workloadNodes"] == 3100
        assert len(auto["nodes"]) == NAMESPACES <= auto["limit"] == 300

        by_ns = await get(client, "/api/graph?aggregate=namespace")
        assert [n["id"] for n in by_ns["nodes"]] == [f"ns:ns-{i}" for i in range(NAMESPACES)]
        total = sum(e["rps"] for e in by_ns["edges"]) + sum(
            n.get("internal", {}).get("rps", 0) for n in by_ns["nodes"])
        assert round(total, 6) == CLIENTS * CALLS * 6.0  # 6 rps per client and service
        assert all(e["errorRate"] == 0.1 for e in by_ns["edges"])

        by_service = await get(client, "/api/graph?aggregate=service&limit=2000")
        assert len(by_service["nodes"]) == SERVICES + CLIENTS
        assert len([e for e in by_service["edges"] if e["kind"] == "traffic"]) == 1000

        one_ns = await get(client, "/api/graph?aggregate=service&namespace=ns-3")
        inside = [n for n in one_ns["nodes"] if n["namespace"] == "ns-3"]
        assert len(inside) == SERVICES // NAMESPACES + CLIENTS // NAMESPACES
        assert len(one_ns["nodes"]) <= one_ns["limit"]

        limited = await get(client, "/api/graph?aggregate=workload&limit=50")
        assert limited["truncated"] and limited["totalNodes"] == 3100
        assert len(limited["nodes"]) == 50
        # The busiest nodes are kept first: clients send 60 rps each, a service gets 6.
        assert all(n["name"].startswith("client-") for n in limited["nodes"])

        search = await get(client, "/api/graph?aggregate=service&q=svc-0042")
        assert [n["id"] for n in search["nodes"] if n["match"]] == [f"svc:ns-2/{host(42)}"]
        assert {n["id"] for n in search["nodes"]} == {f"svc:ns-2/{host(42)}",
                                                      "wl:ns-4/client-4"}

        focus = await get(client, "/api/graph?aggregate=workload&focus=" + quote(
            f"svc:ns-7/{host(7)}"))
        assert {n["id"] for n in focus["nodes"]} == {
            f"svc:ns-7/{host(7)}", "wl:ns-0/client-0", "wl:ns-7/10.0.7.1", "wl:ns-7/10.0.7.2"}

        services = await get(client, "/api/services")
        assert len(services) == SERVICES
        assert sum(s["traffic"]["rps"] for s in services) == pytest.approx(6000.0)
        proxies = await get(client, "/api/proxies")
        assert len(proxies) == CLIENTS
    finally:
        await client.close()


def test_render_rejects_unknown_levels_and_clamps_limits() -> None:
    graph = build(None, [])
    assert render(graph)["nodes"] == []
    assert render(graph, max_nodes=10**9)["limit"] == 5000
    with pytest.raises(ValueError, match="aggregate must be"):
        render(graph, level="pods")
