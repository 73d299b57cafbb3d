"""SMI Traffic Metrics against real Envoys: a known number of good and failing requests from
the client's sidecar to reviews, and the API's counts agree exactly, on the client's edge, on
the service and on the workloads that served them."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshpilot.demo.mesh import (
    Mesh,
    example_workloads,
    free_port,
    get_json,
    http_request,
    wait_until,
)

pytestmark = pytest.mark.e2e

BASE = "/apis/metrics.smi-spec.io/v1alpha1"
GOOD, FAILING = 12, 5


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    workdir: Path = tmp_path_factory.mktemp("smi-metrics")
    mesh = Mesh(workdir, prefix=f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.")
    mesh.write_example_config()
    mesh.start_discovery([
        "--debounce-after", "0.05", "--controlz-address", f"127.0.0.1:{free_port()}",
        "--console-address", f"127.0.0.1:{free_port()}", "--console-stats-interval", "1",
        "--state-dir", str(workdir / "state"),
    ])
    try:
        mesh.wait_ready()
        for workload in example_workloads(mesh):
            mesh.start_workload(workload)
        for name in mesh.workloads:
            mesh.wait_envoy_ready(name)
        yield mesh
    finally:
        mesh.stop()


def api(mesh: Mesh, path: str) -> Any:
    return get_json(f"{mesh.debug_url}{BASE}{path}")


def metrics(item: dict[str, Any]) -> dict[str, float | None]:
    return {m["name"]: float(m["value"]) if m["value"] is not None else None
            for m in item["metrics"]}


def assert_counts(item: dict[str, Any], good: int, failing: int) -> None:
    found = metrics(item)
    assert (found["success_count"], found["failure_count"]) == (good, failing), item
    p50, p90, p99 = (found[f"p{q}_response_latency"] for q in (50, 90, 99))
    assert p50 is not None and p90 is not None and p99 is not None, item
    assert 0 <= p50 <= p90 <= p99, item
    assert {m["unit"] for m in item["metrics"] if "latency" in m["name"]} == {"ms"}


def test_counts_match_the_requests_sent(mesh: Mesh) -> None:
    pods = wait_until(
        lambda: {i["resource"]["name"] for i in api(mesh, "/namespaces/default/pods")["items"]}
        >= set(mesh.workloads) and api(mesh, "/namespaces/default/pods"),
        30, "every sidecar listed as a pod")
    assert pods["kind"] == "TrafficMetricsList" and pods["resource"] == {
        "kind": "Pod", "namespace": "default"}
    # Two stats rounds after every proxy is connected: each has a sample from before the
    # requests, so the window counts them all.
    seen = {pods["items"][0]["timestamp"]}

    def rounds() -> bool:
        seen.add(api(mesh, "/namespaces/default/pods")["items"][0]["timestamp"])
        return len(seen) >= 3

    wait_until(rounds, 30, "two stats rounds")

    client = mesh.workloads["client"]
    codes = [http_request(f"{client.outbound_bind}:9080", "reviews", path)[0]
             for path in ["/"] * GOOD + ["/status/500"] * FAILING]
    assert sorted(codes) == [200] * GOOD + [500] * FAILING

    def reviews_edge() -> dict[str, Any] | None:
        answer = api(mesh, "/namespaces/default/deployments/client/edges")
        for item in answer["items"]:
            found = metrics(item)
            if (item["edge"]["resource"]["name"] == "reviews"
                    and (found["success_count"] or 0) + (found["failure_count"] or 0)
                    >= GOOD + FAILING and found["p99_response_latency"] is not None):
                return dict(item)
        return None

    edge = wait_until(reviews_edge, 30, "the client → reviews edge with every request")
    assert edge["kind"] == "TrafficMetrics" and edge["apiVersion"] == (
        "metrics.smi-spec.io/v1alpha1")
    assert edge["resource"] == {"kind": "Deployment", "namespace": "default", "name": "client"}
    assert edge["edge"] == {"direction": "to", "side": "client", "resource": {
        "kind": "Service", "namespace": "default", "name": "reviews"}}
    assert edge["window"].endswith("s") and edge["timestamp"].endswith("Z")
    assert_counts(edge, GOOD, FAILING)

    # The same requests as the servers' sidecars saw them (inbound, server side).
    def served() -> dict[str, Any] | None:
        item: dict[str, Any] = api(mesh, "/namespaces/default/services/reviews")
        total = metrics(item)
        done = (total["success_count"] or 0) + (total["failure_count"] or 0) >= GOOD + FAILING
        return item if done and total["p99_response_latency"] is not None else None

    service = wait_until(served, 30, "reviews' sidecars counting every request")
    assert service["edge"] == {"direction": "from", "side": "server", "resource": None}
    assert_counts(service, GOOD, FAILING)
    callers = api(mesh, "/namespaces/default/services/reviews/edges")["items"]
    assert [c["edge"]["resource"]["name"] for c in callers] == ["client"]
    assert_counts(callers[0], GOOD, FAILING)
    by_pod = {i["resource"]["name"]: metrics(i) for i in api(
        mesh, "/namespaces/default/pods?labelSelector=app%3Dreviews")["items"]}
    assert set(by_pod) == {"reviews-v1", "reviews-v2"}
    assert sum(m["success_count"] or 0 for m in by_pod.values()) == GOOD
    assert sum(m["failure_count"] or 0 for m in by_pod.values()) == FAILING
    namespace = api(mesh, "/namespaces/default")
    assert namespace["resource"] == {"kind": "Namespace", "name": "default"}
    assert_counts(namespace, GOOD, FAILING)


TELEMETRY = """apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: client-metrics
  namespace: default
spec:
  selector:
    matchLabels:
      app: client
  metrics:
  - providers:
    - name: prometheus
    overrides:
    - match:
        metric: REQUEST_COUNT
        mode: CLIENT
      tagOverrides:
        response_code:
          operation: REMOVE
        canary:
          value: '"yes"'
    - match:
        metric: REQUEST_DURATION
      disabled: true
"""


def test_telemetry_overrides_shape_the_published_metrics(mesh: Mesh) -> None:
    client = mesh.workloads["client"]
    assert http_request(f"{client.outbound_bind}:9080", "reviews", "/")[0] == 200
    mesh.write_config("telemetry.yaml", TELEMETRY)

    def client_rows() -> list[str] | None:
        status, _, body = http_request(f"127.0.0.1:{mesh.debug_port}", "x", "/metrics")
        lines = [line for line in body.decode().splitlines()
                 if line.startswith("istio_") and 'source_workload="client"' in line]
        counts = [line for line in lines if line.startswith("istio_requests_total")]
        done = status == 200 and counts and all('canary="yes"' in line for line in counts)
        return lines if done else None

    rows = wait_until(client_rows, 30, "the client's metrics with the Telemetry applied")
    assert not [line for line in rows if "duration" in line]
    assert not [line for line in rows if "response_code" in line]
    # Both versions of reviews, every response code summed per version.
    assert {line.split('destination_version="')[1].split('"')[0] for line in rows} <= {
        "v1", "v2"}
    assert len(rows) == len({line.rsplit(" ", 1)[0] for line in rows})
