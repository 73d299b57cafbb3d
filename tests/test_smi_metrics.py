"""SMI Traffic Metrics: the exact answers for synthetic Envoy stats with known counts (the
console tests' mesh and samples), served over real HTTP on the debug server's app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meshpilot.console import smi
from meshpilot.console.api import proxy_views
from meshpilot.console.stats import Traffic
from meshpilot.debug.http import make_app
from tests.conftest import Harness
from tests.test_console import REVIEWS, Env, connect, env, feed  # noqa: F401 (fixture)

STAMP = 1_700_000_000.0  # 2023-11-14T22:13:20Z
BASE = smi.BASE


def metrics(p99: str | None, p90: str | None, p50: str | None, good: str, bad: str
            ) -> list[dict[str, Any]]:
    return [
        {"name": "p99_response_latency", "unit": "ms", "value": p99},
        {"name": "p90_response_latency", "unit": "ms", "value": p90},
        {"name": "p50_response_latency", "unit": "ms", "value": p50},
        {"name": "success_count", "value": good},
        {"name": "failure_count", "value": bad},
    ]


async def measured(env: Env) -> smi.Measurements:  # noqa: F811
    feed(env, await connect(env))
    server = env.harness.server
    return smi.measure(server.snapshot, proxy_views(server, env.stats), STAMP)


def test_values_are_quantities_and_go_durations() -> None:
    assert [smi.quantity(v) for v in (0, 108, 3.25, 9.8333333, 1000, 0.0004)] == [
        "0", "108", "3.25", "9.833", "1000", "0"]
    assert [smi.go_duration(s) for s in (0, 30, 10.5, 60, 3725)] == [
        "0s", "30s", "10.5s", "1m0s", "1h2m5s"]
    empty = smi.metrics_of(Traffic())
    assert empty == metrics(None, None, None, "0", "0")


async def test_deployment_edges_exact(env: Env) -> None:  # noqa: F811
    data = await measured(env)
    answer = smi.answer(data, f"{BASE}/namespaces/default/deployments/client/edges", {})
    # client → reviews: v1 80 requests in the window (4 answered 503) and v2's 20, all new.
    # Buckets summed: ≤5 ms 70, ≤10 ms 100: p50 = 5·50/70, p90 = 5 + 5·20/30, p99 = 5 + 5·29/30.
    reviews = {
        "kind": "TrafficMetrics",
        "apiVersion": "metrics.smi-spec.io/v1alpha1",
        "metadata": {"name": "client", "namespace": "default",
                     "selfLink": f"{BASE}/namespaces/default/deployments/client/edges",
                     "creationTimestamp": "2023-11-14T22:13:20Z"},
        "timestamp": "2023-11-14T22:13:20Z",
        "window": "10s",
        "resource": {"kind": "Deployment", "namespace": "default", "name": "client"},
        "edge": {"direction": "to", "side": "client",
                 "resource": {"kind": "Service", "namespace": "default", "name": "reviews"}},
        "metrics": metrics("9.833", "8.333", "3.571", "96", "4"),
    }
    assert answer["kind"] == "TrafficMetricsList"
    assert answer["resource"] == {"kind": "Deployment", "namespace": "default", "name": "client"}
    assert answer["metadata"] == {
        "selfLink": f"{BASE}/namespaces/default/deployments/client/edges"}
    database, called = answer["items"]
    assert called == reviews
    # ratings-db is TCP: connections but no HTTP responses, so zero counts and no latency.
    assert database["edge"]["resource"]["name"] == "ratings-db"
    assert database["metrics"] == metrics(None, None, None, "0", "0")


async def test_resources_are_what_they_received(env: Env) -> None:  # noqa: F811
    data = await measured(env)
    pod = smi.answer(data, f"{BASE}/namespaces/default/pods/reviews-v1", {})
    assert pod["resource"] == {"kind": "Pod", "namespace": "default", "name": "reviews-v1"}
    assert pod["edge"] == {"direction": "from", "side": "server", "resource": None}
    assert pod["metrics"] == metrics(None, None, None, "80", "0")
    service = smi.answer(data, f"{BASE}/namespaces/default/services/{REVIEWS}", {})
    assert service["resource"] == {"kind": "Service", "namespace": "default", "name": "reviews"}
    assert service["metrics"] == metrics(None, None, None, "80", "0")
    callers = smi.answer(data, f"{BASE}/namespaces/default/services/reviews/edges", {})
    (caller,) = callers["items"]
    assert caller["edge"] == {"direction": "from", "side": "client", "resource": {
        "kind": "Deployment", "namespace": "default", "name": "client"}}
    assert caller["metrics"] == metrics("9.833", "8.333", "3.571", "96", "4")
    namespace = smi.answer(data, f"{BASE}/namespaces/default", {})
    assert namespace["resource"] == {"kind": "Namespace", "name": "default"}
    assert namespace["metadata"]["selfLink"] == f"{BASE}/namespaces/default"
    assert namespace["metrics"] == metrics(None, None, None, "80", "0")


async def test_lists_and_selectors(env: Env) -> None:  # noqa: F811
    data = await measured(env)
    pods = smi.answer(data, f"{BASE}/namespaces/default/pods", {})
    assert pods["resource"] == {"kind": "Pod", "namespace": "default"}
    assert [i["resource"]["name"] for i in pods["items"]] == ["client", "ratings-db",
                                                              "reviews-v1"]
    chosen = smi.answer(data, f"{BASE}/pods", {"labelSelector": "app=reviews"})
    assert [i["resource"]["name"] for i in chosen["items"]] == ["reviews-v1"]
    assert chosen["selector"] == {"matchLabels": {"app": "reviews"}}
    services = smi.answer(data, f"{BASE}/namespaces/default/services", {})
    assert [i["resource"]["name"] for i in services["items"]] == ["ratings-db", "reviews"]
    namespaces = smi.answer(data, f"{BASE}/namespaces", {})
    assert [i["resource"] for i in namespaces["items"]] == [{"kind": "Namespace",
                                                             "name": "default"}]
    listing = smi.answer(data, BASE, {})
    assert listing["kind"] == "APIResourceList" and {r["name"] for r in listing["resources"]} >= {
        "pods", "deployments", "services", "namespaces", "pods/edges"}
    with pytest.raises(smi.ApiError, match="only equality"):
        smi.answer(data, f"{BASE}/pods", {"labelSelector": "app!=x"})
    with pytest.raises(smi.ApiError, match="'nope' not found"):
        smi.answer(data, f"{BASE}/namespaces/default/pods/nope", {})
    with pytest.raises(smi.ApiError, match="resource type 'jobs'"):
        smi.answer(data, f"{BASE}/namespaces/default/jobs", {})


@pytest.fixture
async def debug_url(xds: Harness) -> AsyncIterator[str]:
    runner = web.AppRunner(make_app(xds.server))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def test_served_on_the_debug_address(env: Env, debug_url: str) -> None:  # noqa: F811
    feed(env, await connect(env))
    status, body = await get(f"{debug_url}{BASE}/namespaces/default/deployments/client/edges")
    assert status == 200 and body["items"][1]["metrics"] == metrics(
        "9.833", "8.333", "3.571", "96", "4")
    for root in (BASE, BASE + "/"):
        status, body = await get(f"{debug_url}{root}")
        assert (status, body["kind"]) == (200, "APIResourceList")
    status, body = await get(f"{debug_url}{BASE}/namespaces/default/pods/nope")
    assert (status, body["kind"], body["reason"], body["code"]) == (
        404, "Status", "NotFound", 404)
    smi.detach(env.harness.server)  # as when the console is off: no numbers, and it says why
    status, body = await get(f"{debug_url}{BASE}/pods")
    assert status == 503 and "--console-address" in body["message"]
