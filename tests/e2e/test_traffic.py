"""End to end: Istio traffic features carried out by real Envoy sidecars.

One mesh for the module: the example workloads (client, reviews-v1, reviews-v2, ratings-db)
plus a second client whose Sidecar resource restricts it, and one VirtualService per feature on
a host of its own, all served by the reviews workloads. Each test sends real requests through
a client sidecar and checks what came back and what the backends saw.
"""

from __future__ import annotations

import collections
import json
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshpilot.demo.mesh import Mesh, Workload, example_workloads, http_request, wait_until

pytestmark = pytest.mark.e2e

HOSTS = ["fault", "slow", "retry", "mirror", "moved", "cors", "headers", "teapot", "rewrite",
         "timeout", "sticky"]

FEATURES = "\n---\n".join([
    # One ServiceEntry: every feature host is served by the reviews workloads.
    f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: features, namespace: default}}
spec:
  hosts: [{", ".join(f"{h}.example" for h in HOSTS)}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: reviews}}}}
""",
    *(f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {h}, namespace: default}}
spec:
  host: {h}.example
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
""" for h in HOSTS if h != "sticky"),
    """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sticky, namespace: default}
spec:
  host: sticky.example
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
""",
    *(f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.example]
  http:
  - {body}
""" for name, body in {
        "fault": "{fault: {abort: {httpStatus: 418, percentage: {value: 100}}}, "
                 "route: [{destination: {host: fault.example, subset: v1}}]}",
        "slow": "{fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}, "
                "route: [{destination: {host: slow.example, subset: v1}}]}",
        "retry": "{retries: {attempts: 3, retryOn: 5xx}, "
                 "route: [{destination: {host: retry.example, subset: v1}}]}",
        "mirror": "{mirror: {host: mirror.example, subset: v2}, mirrorPercentage: {value: 100},"
                  " route: [{destination: {host: mirror.example, subset: v1}}]}",
        "moved": "{redirect: {uri: /new, authority: elsewhere.example, redirectCode: 308}}",
        "cors": "{corsPolicy: {allowOrigins: [{exact: 'https://ok.example'}], "
                "allowMethods: [GET, POST], allowHeaders: [x-token], maxAge: 1h}, "
                "route: [{destination: {host: cors.example, subset: v1}}]}",
        "headers": "{headers: {request: {set: {x-added: 'yes'}}, response: {set: {x-served: mesh},"
                   " remove: [content-type]}}, "
                   "route: [{destination: {host: headers.example, subset: v2}}]}",
        "teapot": "{directResponse: {status: 418, body: {string: short and stout}}}",
        "rewrite": "{match: [{uri: {prefix: /old}}], rewrite: {uri: /new}, "
                   "route: [{destination: {host: rewrite.example, subset: v1}}]}",
        "timeout": "{timeout: 0.5s, retries: {attempts: 0}, "
                   "route: [{destination: {host: timeout.example, subset: v1}}]}",
    }.items()),
    # A restricted client: only reviews, and nothing outside the registry.
    """
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: strict-client, namespace: default}
spec:
  address: 127.0.10.20
  labels: {app: strict}
""",
    """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: strict, namespace: default}
spec:
  workloadSelector: {labels: {app: strict}}
  egress:
  - hosts: [./reviews.default.svc.cluster.local, ./ratings-db.default.svc.cluster.local]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
""",
    # Locality failover: two sidecar-less backends in different zones of one region.
    """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: zoned, namespace: default}
spec:
  hosts: [zoned.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.10.30, ports: {http: ZONE_A_PORT}, locality: r1/zone-a}
  - {address: 127.0.10.31, ports: {http: ZONE_B_PORT}, locality: r1/zone-b}
""",
    """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: zoned, namespace: default}
spec:
  host: zoned.example
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s,
                       maxEjectionPercent: 100}
""",
    # TCP: ratings-db's port is sent to reviews-v2 instead.
    """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings-db, namespace: default}
spec:
  hosts: [ratings-db.default.svc.cluster.local]
  tcp:
  - route:
    - destination: {host: reviews.default.svc.cluster.local, subset: v2, port: {number: 9080}}
""",
])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    mesh = Mesh(tmp_path_factory.mktemp("traffic"), prefix=prefix)
    mesh.write_example_config()
    zones = [Workload(f"zone-{z}", mesh.address(n), {"app": "zoned"}, "", app_host=mesh.address(n))
             for z, n in (("a", 30), ("b", 31))]
    mesh.write_config("features.yaml", FEATURES.replace("ZONE_A_PORT", str(zones[0].app_port))
                      .replace("ZONE_B_PORT", str(zones[1].app_port)))
    mesh.start_discovery(["--debounce-after", "0.05"])
    try:
        mesh.wait_ready()
        workloads = example_workloads(mesh)
        workloads.append(Workload("strict-client", mesh.address(20), {"app": "strict"},
                                  mesh.address(2)))
        workloads.append(Workload("zoned-client", mesh.address(21), {"app": "zoned-client"},
                                  mesh.address(3), locality="r1/zone-a"))
        for zone in zones:
            mesh.start_app(zone)  # no sidecars: the endpoints are the applications themselves
        for workload in workloads:
            mesh.start_workload(workload)
        for name in mesh.workloads:
            mesh.wait_envoy_ready(name)
        yield mesh
    finally:
        mesh.stop()


def send(
    mesh: Mesh, host: str, path: str = "/", headers: dict[str, str] | None = None,
    method: str = "GET", client: str = "client",
) -> tuple[int, dict[str, str], bytes]:
    address = f"{mesh.workloads[client].outbound_bind}:9080"
    return http_request(address, host, path, headers=headers, method=method)


def seen_by(mesh: Mesh, workload: str, forget: bool = False) -> list[dict[str, Any]]:
    """What a backend received, read from the application directly (not through the mesh)."""
    app = mesh.workloads[workload].app_address
    _, _, body = http_request(app, "x", "/__requests", method="DELETE" if forget else "GET")
    requests: list[dict[str, Any]] = json.loads(body)["requests"]
    return requests


def forget(mesh: Mesh) -> None:
    for name in ("reviews-v1", "reviews-v2"):
        seen_by(mesh, name, forget=True)


def test_fault_abort(mesh: Mesh) -> None:
    forget(mesh)
    statuses = collections.Counter(send(mesh, "fault.example")[0] for _ in range(10))
    assert statuses == {418: 10}
    assert seen_by(mesh, "reviews-v1") == []  # aborted before reaching the backend


def test_fault_delay(mesh: Mesh) -> None:
    started = time.monotonic()
    status, headers, _ = send(mesh, "slow.example")
    assert (status, headers["x-workload"]) == (200, "reviews-v1")
    assert time.monotonic() - started >= 0.95  # the injected 1 s delay (a lower bound only)


def test_retries_are_seen_by_the_backend(mesh: Mesh) -> None:
    forget(mesh)
    status, _, _ = send(mesh, "retry.example", "/status/503")
    assert status == 503
    attempts = [r for r in seen_by(mesh, "reviews-v1") if r["path"] == "/status/503"]
    assert len(attempts) == 4  # the first try and three retries


def test_mirrored_requests_reach_the_mirror(mesh: Mesh) -> None:
    forget(mesh)
    status, headers, _ = send(mesh, "mirror.example", "/mirrored")
    assert (status, headers["x-workload"]) == (200, "reviews-v1")
    copies = wait_until(
        lambda: [r for r in seen_by(mesh, "reviews-v2") if r["path"] == "/mirrored"], 5,
        "the mirrored copy",
    )
    assert copies[0]["host"].startswith("mirror.example-shadow")


def test_redirect(mesh: Mesh) -> None:
    status, headers, _ = send(mesh, "moved.example", "/old")
    assert status == 308
    assert headers["location"] == "http://elsewhere.example/new"


def test_cors_preflight(mesh: Mesh) -> None:
    allowed = {"origin": "https://ok.example", "access-control-request-method": "POST"}
    status, headers, _ = send(mesh, "cors.example", "/", allowed, method="OPTIONS")
    assert status == 200
    assert headers["access-control-allow-origin"] == "https://ok.example"
    assert "POST" in headers["access-control-allow-methods"]
    assert headers["access-control-max-age"] == "3600"
    denied = {"origin": "https://evil.example", "access-control-request-method": "POST"}
    _, headers, _ = send(mesh, "cors.example", "/", denied, method="OPTIONS")
    assert "access-control-allow-origin" not in headers


def test_request_and_response_headers(mesh: Mesh) -> None:
    status, headers, body = send(mesh, "headers.example")
    assert (status, headers["x-workload"]) == (200, "reviews-v2")
    assert json.loads(body)["headers"]["x-added"] == "yes"
    assert headers["x-served"] == "mesh"
    assert "content-type" not in headers


def test_direct_response(mesh: Mesh) -> None:
    status, _, body = send(mesh, "teapot.example")
    assert (status, body) == (418, b"short and stout")


def test_uri_rewrite(mesh: Mesh) -> None:
    status, _, body = send(mesh, "rewrite.example", "/old/page")
    assert status == 200
    assert json.loads(body)["path"] == "/new/page"


def test_route_timeout(mesh: Mesh) -> None:
    status, _, _ = send(mesh, "timeout.example", "/delay/3")
    assert status == 504


def test_consistent_hash_sticks_to_one_backend(mesh: Mesh) -> None:
    for user in ("ana", "bo", "cy"):
        served = {send(mesh, "sticky.example", headers={"x-user": user})[1]["x-workload"]
                  for _ in range(12)}
        assert len(served) == 1, (user, served)


def test_tcp_route_sends_bytes_elsewhere(mesh: Mesh) -> None:
    address = f"{mesh.workloads['client'].outbound_bind}:27017"
    status, headers, _ = http_request(address, "anything")
    assert (status, headers["x-workload"]) == (200, "reviews-v2")


def test_sidecar_scopes_egress_and_blocks_unknown_hosts(mesh: Mesh) -> None:
    status, _, _ = send(mesh, "reviews", client="strict-client")
    assert status == 200
    # Hosts outside its egress list are not routed, and REGISTRY_ONLY answers 502.
    assert send(mesh, "fault.example", client="strict-client")[0] == 502
    assert send(mesh, "127.0.0.1:1", client="strict-client")[0] == 502
    # The unrestricted client reaches an unknown host by passthrough.
    app = mesh.workloads["reviews-v1"].app_address
    assert send(mesh, app)[1].get("x-workload") == "reviews-v1"


def test_locality_failover(mesh: Mesh) -> None:
    """A client in zone-a uses zone-a's backend; when it dies, outlier detection ejects it
    and traffic fails over to zone-b."""
    served = collections.Counter(
        send(mesh, "zoned.example", client="zoned-client")[1]["x-workload"] for _ in range(20)
    )
    assert served == {"zone-a": 20}
    mesh.stop_app("zone-a")
    wait_until(lambda: send(mesh, "zoned.example", client="zoned-client")[0] == 200
               and all(send(mesh, "zoned.example", client="zoned-client")[1]["x-workload"]
                       == "zone-b" for _ in range(10)), 15, "failover to zone-b")


ENVOY_FILTER = """
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: add-header, namespace: default}
spec:
  workloadSelector: {labels: {app: client}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        portNumber: 9080
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.router}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          default_source_code:
            inline_string: "function envoy_on_response(h) h:headers():add('x-patched', 'lua') end"
"""


def test_envoy_filter_patch_in_behaviour_and_config_dump(mesh: Mesh) -> None:
    path = mesh.write_config("envoyfilter.yaml", ENVOY_FILTER)
    try:
        wait_until(lambda: send(mesh, "teapot.example")[1].get("x-patched") == "lua", 15,
                   "the Lua filter's header")
        dump = json.dumps(mesh.envoy_config_dump("client"))
        assert "envoy.filters.http.lua" in dump
        # Other proxies are not selected.
        status, headers, _ = send(mesh, "reviews", client="strict-client")
        assert (status, headers.get("x-patched")) == (200, None)
    finally:
        path.unlink()
    wait_until(lambda: "x-patched" not in send(mesh, "teapot.example")[1], 15, "patch removed")
