"""End to end: SMI TrafficSplits and Gateway API routes steer real traffic through real Envoys.

The example mesh's services and workloads without its routing file; instead an SMI
TrafficSplit on a `website` service whose backends are the two reviews versions, and a Gateway
API HTTPRoute (GAMMA: its parent is the reviews Service) that is rewritten while traffic flows.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Iterator

import pytest

from meshpilot.demo.mesh import EXAMPLE_CONFIG, Mesh, example_workloads, http_request, wait_until

pytestmark = pytest.mark.e2e

WEBSITE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: website, namespace: default}
spec:
  hosts: [website.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
""" + "".join(f"""---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: website-{v}, namespace: default}}
spec:
  hosts: [website-{v}.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: reviews, version: {v}}}}}
""" for v in ("v1", "v2"))

SPLIT = """
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: canary, namespace: default}
spec:
  service: website
  backends: [{service: website-v1, weight: 80}, {service: website-v2, weight: 20}]
"""

AB_TEST = """
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: canary, namespace: default}
spec:
  service: website
  matches: [{kind: HTTPRouteGroup, name: ab-test}]
  backends: [{service: website-v1, weight: 0}, {service: website-v2, weight: 100}]
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: ab-test, namespace: default}
spec:
  matches:
  - name: firefox-users
    headers: {user-agent: ".*Firefox.*"}
"""


def http_route(v1: int, v2: int) -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: reviews, namespace: default}}
spec:
  parentRefs: [{{kind: Service, group: "", name: reviews}}]
  rules:
  - backendRefs:
    - {{name: website-v1, port: 9080, weight: {v1}}}
    - {{name: website-v2, port: 9080, weight: {v2}}}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    mesh = Mesh(tmp_path_factory.mktemp("standards"), prefix=prefix)
    mesh.config_dir.mkdir(parents=True, exist_ok=True)
    for name in ("services.yaml", "workloads.yaml"):
        mesh.write_config(name, (EXAMPLE_CONFIG / name).read_text())
    mesh.write_config("website.yaml", WEBSITE)
    mesh.write_config("split.yaml", SPLIT)
    mesh.write_config("route.yaml", http_route(100, 0))
    mesh.start_discovery(["--debounce-after", "0.05"])
    try:
        mesh.wait_ready()
        for workload in example_workloads(mesh)[:3]:
            mesh.start_workload(workload)
        for name in mesh.workloads:
            mesh.wait_envoy_ready(name)
        yield mesh
    finally:
        mesh.stop()


def tally(mesh: Mesh, host: str, n: int, headers: dict[str, str] | None = None
          ) -> collections.Counter[str]:
    address = f"{mesh.workloads['client'].outbound_bind}:9080"
    return collections.Counter(
        http_request(address, host, headers=headers)[1].get("x-workload", "?") for _ in range(n)
    )


def test_traffic_split_weights(mesh: Mesh) -> None:
    """400 requests; v2's share must be 20% ± 7 points."""
    counts = tally(mesh, "website", 400)
    assert set(counts) == {"reviews-v1", "reviews-v2"}
    assert 0.13 <= counts["reviews-v2"] / 400 <= 0.27, counts


def test_traffic_split_with_route_group_matches(mesh: Mesh) -> None:
    mesh.write_config("split.yaml", AB_TEST)
    firefox = {"user-agent": "Mozilla/5.0 Firefox/120.0"}
    wait_until(lambda: tally(mesh, "website", 20, firefox) == {"reviews-v2": 20}, 15,
               "Firefox users on v2")
    # Everyone else reaches the root service, which has both versions.
    assert set(tally(mesh, "website", 60, {"user-agent": "curl/8"})) == {
        "reviews-v1", "reviews-v2"}
    mesh.write_config("split.yaml", SPLIT)


def test_http_route_with_a_service_parent_shifts_live_traffic(mesh: Mesh) -> None:
    wait_until(lambda: tally(mesh, "reviews", 20) == {"reviews-v1": 20}, 15, "all on v1")
    mesh.write_config("route.yaml", http_route(0, 100))
    wait_until(lambda: tally(mesh, "reviews", 20) == {"reviews-v2": 20}, 15, "all on v2")
