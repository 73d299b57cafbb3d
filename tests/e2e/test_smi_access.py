"""End to end: an SMI TrafficTarget authorizes real traffic between real Envoy sidecars.

One mesh for the module, run by `meshpilot discovery --ca-dir` so sidecars speak mTLS and
carry SPIFFE identities. Two callers with their own service accounts (`client`, `intruder`)
call `server.example`, whose workload runs as `server`. Once a TrafficTarget names `server`
as destination, only `client` may call it, and only on the routes its rules list: everything
else gets Envoy's 403 (on a TCP port, a closed connection).
"""

from __future__ import annotations

import http.client
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest

from meshpilot.demo.mesh import Mesh, Workload, get_json, http_request, wait_until

pytestmark = pytest.mark.e2e

PORT = 9080
TCP_PORT = 5432

SERVICE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: server, namespace: default}
spec:
  hosts: [server.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: server}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: store, namespace: default}
spec:
  hosts: [store.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  workloadSelector: {labels: {app: server}}
"""

ACCESS = """
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: server-routes, namespace: default}
spec:
  matches:
  - {name: metrics, pathRegex: /metrics, methods: [GET]}
  - {name: api, pathRegex: "/api/.*", methods: ["*"]}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: server-access, namespace: default}
spec:
  destination: {kind: ServiceAccount, name: server, namespace: default}
  sources: [{kind: ServiceAccount, name: client, namespace: default}]
  rules:
  - {kind: HTTPRouteGroup, name: server-routes, matches: [metrics, api]}
"""

TCP_ACCESS = """
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: store-port, namespace: default}
spec:
  matches: {ports: [5432]}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: store-access, namespace: default}
spec:
  destination: {kind: ServiceAccount, name: server, namespace: default}
  sources: [{kind: ServiceAccount, name: client, namespace: default}]
  rules:
  - {kind: TCPRoute, name: store-port}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    workdir = tmp_path_factory.mktemp("smi-access")
    mesh = Mesh(workdir, prefix=prefix)
    workloads = [
        Workload("client", mesh.address(10), {"app": "client"}, mesh.address(1)),
        Workload("intruder", mesh.address(11), {"app": "intruder"}, mesh.address(2)),
        Workload("server", mesh.address(20), {"app": "server"}, mesh.address(20)),
    ]
    documents = [SERVICE]
    for w in workloads:
        w.service_account = w.name
        documents.append(f"""
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {w.name}, namespace: default}}
spec:
  address: {w.ip}
  labels: {json.dumps(w.labels)}
  serviceAccount: {w.name}
""")
    mesh.config_dir.mkdir(parents=True, exist_ok=True)
    mesh.write_config("mesh.yaml", "\n---\n".join(documents))
    mesh.start_discovery(["--debounce-after", "0.05", "--ca-dir", str(workdir / "ca")])
    try:
        mesh.wait_ready()
        for workload in workloads:
            mesh.start_workload(workload)
        for workload in workloads:
            mesh.wait_envoy_ready(workload.name)
        yield mesh
    finally:
        mesh.stop()


def status(mesh: Mesh, caller: str, path: str, method: str = "GET") -> int:
    address = f"{mesh.workloads[caller].outbound_bind}:{PORT}"
    return http_request(address, "server.example", path, method=method)[0]


def settled(check: Any, what: str) -> None:
    """Until `check()` holds for several requests in a row: connections opened under the
    previous listener may still meet the old policy while Envoy drains them."""
    wait_until(lambda: all(check() for _ in range(8)), 20, what)


def test_traffic_target_allows_only_listed_identity_and_routes(mesh: Mesh) -> None:
    # No TrafficTarget selects the server yet: anyone may call anything.
    settled(lambda: status(mesh, "intruder", "/other") == 200, "open access before SMI")

    mesh.write_config("access.yaml", ACCESS)
    settled(lambda: status(mesh, "intruder", "/metrics") == 403, "the intruder denied")
    assert status(mesh, "client", "/metrics") == 200
    assert status(mesh, "client", "/api/orders") == 200
    assert status(mesh, "client", "/api/orders", method="DELETE") == 200  # methods: ["*"]
    assert status(mesh, "client", "/other") == 403  # a route no rule lists
    assert status(mesh, "client", "/metrics", method="POST") == 403  # metrics is GET only
    assert status(mesh, "intruder", "/api/orders") == 403

    # The server's Envoy got the translated policy for its service account.
    dump = json.dumps(mesh.envoy_config_dump("server"))
    assert "ns[default]-policy[smi-traffictarget-server-access]-rule[0]" in dump
    assert "spiffe://cluster.local/ns/default/sa/client" in dump
    # The callers are not the destination: they got no policy of it.
    assert "smi-traffictarget" not in json.dumps(mesh.envoy_config_dump("client"))

    # Removing the TrafficTarget opens the destination again.
    (mesh.config_dir / "access.yaml").unlink()
    settled(lambda: status(mesh, "intruder", "/other") == 200, "open access again")


def refused(call: Any) -> bool:
    """Whether a request gets no HTTP answer at all (the RBAC network filter closes it)."""
    try:
        call()
    except (ConnectionError, http.client.HTTPException, TimeoutError, OSError):
        return True
    return False


def test_tcp_route_allows_the_listed_identity_on_its_port(mesh: Mesh) -> None:
    def over_tcp(caller: str) -> int:
        address = f"{mesh.workloads[caller].outbound_bind}:{TCP_PORT}"
        return http_request(address, "store.example")[0]  # HTTP carried as plain TCP

    mesh.write_config("tcp-access.yaml", TCP_ACCESS)
    try:
        settled(lambda: refused(lambda: over_tcp("intruder")), "the intruder refused on TCP")
        assert over_tcp("client") == 200
        # The TCPRoute allows only its port: HTTP on 9080 is denied even for the client.
        assert status(mesh, "client", "/metrics") == 403
    finally:
        (mesh.config_dir / "tcp-access.yaml").unlink()
    settled(lambda: over_tcp("intruder") == 200, "open access again")


def test_translation_problems_are_on_config_errors(mesh: Mesh) -> None:
    mesh.write_config("broken.yaml", ACCESS.replace("server-access", "broken")
                      .replace("matches: [metrics, api]", "matches: [nothing]"))
    try:
        def reported() -> bool:
            errors = get_json(f"{mesh.debug_url}/debug/config_errors")
            return any("has no match 'nothing'" in e["message"]
                       and e["file"].endswith("broken.yaml") and e["line"] > 0 for e in errors)

        wait_until(reported, 10, "the missing match reported with file and line")
        # The broken target allows nothing, so even the listed client is denied.
        settled(lambda: status(mesh, "client", "/metrics") == 403, "fail closed")
    finally:
        (mesh.config_dir / "broken.yaml").unlink()
