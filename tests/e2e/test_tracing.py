"""End to end: spans from two real Envoy sidecars reach a Zipkin collector with one trace id,
and access logs are written where the MeshConfig says."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator

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


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, str]]:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    mesh = Mesh(tmp_path_factory.mktemp("tracing"), prefix=prefix)
    mesh.write_example_config()
    collector = f"{mesh.address(60)}:{free_port(mesh.address(60))}"
    host, _, port = collector.rpartition(":")
    mesh.write_config("tracing.yaml", f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: zipkin, namespace: istio-system}}
spec:
  hosts: [zipkin.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9411, name: http, protocol: HTTP}}]
  endpoints: [{{address: {host}, ports: {{http: {port}}}}}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - randomSamplingPercentage: 100
    customTags:
      suite: {{literal: {{value: e2e}}}}
""")
    access_log = mesh.workdir / "access.log"
    mesh_config = mesh.workdir / "mesh.yaml"
    mesh_config.write_text(f"""
accessLogFile: {access_log}
extensionProviders:
- name: zipkin
  zipkin: {{service: zipkin.istio-system.svc.cluster.local, port: 9411}}
defaultProviders:
  tracing: [zipkin]
""")
    try:
        mesh._spawn("zipkin", [sys.executable, "-m", "tests.fakes.zipkin", "--listen", collector])
        mesh.start_discovery(["--mesh-config", str(mesh_config), "--debounce-after", "0.05"])
        mesh.wait_ready()
        for workload in example_workloads(mesh)[:3]:  # client, reviews-v1, reviews-v2
            mesh.start_workload(workload)
        for name in mesh.workloads:
            mesh.wait_envoy_ready(name)
        yield mesh, collector
    finally:
        mesh.stop()


def test_spans_from_both_sidecars_share_a_trace(mesh: tuple[Mesh, str]) -> None:
    m, collector = mesh
    address = f"{m.workloads['client'].outbound_bind}:9080"
    status, _, body = http_request(address, "reviews", "/traced",
                                   headers={"end-user": "jason"})
    assert status == 200
    seen = json.loads(body)["headers"]
    trace_id = seen["x-b3-traceid"]  # the client sidecar started the trace
    assert seen["x-b3-sampled"] == "1"

    def spans() -> list[dict[str, object]]:
        found = get_json(f"http://{collector}/api/v2/spans")
        return [s for s in found if s.get("traceId") == trace_id]

    trace = wait_until(lambda: len(spans()) >= 2 and spans(), 20, "spans from both sidecars")
    services = {s["localEndpoint"]["serviceName"] for s in trace}  # type: ignore[index]
    kinds = {s.get("kind") for s in trace}
    assert {"client.default", "reviews-v2.default"} <= services, services
    assert {"CLIENT", "SERVER"} <= kinds
    assert all(s["tags"].get("suite") == "e2e" for s in trace)  # type: ignore[union-attr]


def test_access_log_written(mesh: tuple[Mesh, str]) -> None:
    m, _ = mesh
    address = f"{m.workloads['client'].outbound_bind}:9080"
    http_request(address, "reviews", "/logged-path")
    log = m.workdir / "access.log"
    wait_until(lambda: log.exists() and "/logged-path" in log.read_text(), 15,
               "the request in the access log")
    line = next(x for x in log.read_text().splitlines() if "/logged-path" in x)
    assert '"GET /logged-path HTTP/1.1" 200' in line
