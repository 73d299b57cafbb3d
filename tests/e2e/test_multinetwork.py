"""End to end: two networks joined only by an east-west gateway, over mTLS.

Two network namespaces stand for two networks (see tests/netns.py): network A and network B,
two documentation ranges this machine does not use; neither can reach the other's hosts. The
test's own namespace runs the discovery server (with the mesh CA) at A's `.1` and B's east-west
gateway (`meshpilot proxy router`, AUTO_PASSTHROUGH on 15443) at B's `.1` — the one address of
B that A can reach, as a gateway's public address would be.

    network A: client (.2), later reviews-a (.3)
    network B: reviews-b (.2)

The meshNetworks config places endpoints by CIDR and names B's gateway, so the client's sidecar
gets the gateway in place of reviews-b, and reaches it with mTLS and Istio's SNI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshpilot.demo.mesh import Mesh, Workload, get_json, http_request, wait_until
from tests import netns

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(netns.unavailable()), reason=netns.unavailable() or "available"),
]

PORT = 9080
HOST = "reviews.example"
GATEWAY_PORT = 15443

SERVICE = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {PORT}, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: cross-network, namespace: istio-system}}
spec:
  selector: {{istio: eastwestgateway}}
  servers:
  - port: {{number: {GATEWAY_PORT}, name: tls, protocol: TLS}}
    tls: {{mode: AUTO_PASSTHROUGH}}
    hosts: ["*.example"]
"""


def workload_entry(workload: Workload) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {workload.name}, namespace: {workload.namespace}}}
spec:
  address: {workload.ip}
  labels: {json.dumps(workload.labels)}
  serviceAccount: {workload.name}
"""


@dataclass
class TwoNetworks:
    mesh: Mesh
    a: netns.Network
    b: netns.Network
    gateway: Workload

    def served_by(self) -> str:
        """Which workload answered one request from the client, through its sidecar."""
        client = self.mesh.workloads["client"]
        status, _, body = http_request(f"{client.outbound_bind}:{PORT}", HOST, "/")
        return str(json.loads(body)["workload"]) if status == 200 else f"HTTP {status}"

    def gateway_connections(self) -> int:
        stats = get_json(f"http://{self.gateway.admin_address}/stats?format=json")
        return sum(int(s.get("value") or 0) for s in stats["stats"]
                   if s.get("name", "").endswith(f"_{GATEWAY_PORT}.downstream_cx_total"))

    def inbound_handshakes(self, name: str) -> int:
        """TLS handshakes completed by the inbound listeners of a workload's sidecar."""
        workload = self.mesh.workloads[name]
        stats = netns.http_get(workload.netns,
                               f"http://{workload.admin_address}/stats?filter=ssl.handshake")
        return sum(int(line.rpartition(": ")[2]) for line in stats.splitlines()
                   if line.startswith(f"listener.{workload.ip}_"))

    def add(self, workload: Workload) -> None:
        self.mesh.write_config(f"we-{workload.name}.yaml", workload_entry(workload))
        self.mesh.start_workload(workload)

    def remove(self, name: str) -> None:
        (self.mesh.config_dir / f"we-{name}.yaml").unlink()
        self.mesh.stop_process(f"sidecar-{name}")
        self.mesh.stop_app(name)


@pytest.fixture(scope="module")
def two_networks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNetworks]:
    workdir = tmp_path_factory.mktemp("multinetwork")
    ranges = netns.free_ranges("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
    assert len(ranges) >= 2, f"documentation ranges in use on this machine: {ranges}"
    with netns.networks((ranges[0], (2, 3, 12, 13)), (ranges[1], (2, 12))) as (a, b):
        mesh = Mesh(workdir, xds_host=a.gateway)
        client = Workload("client", a.addresses[0], {"app": "client"}, a.addresses[2],
                          network="net-a", netns=a.namespace, service_account="client")
        reviews_b = Workload("reviews-b", b.addresses[0], {"app": "reviews"}, b.addresses[1],
                             network="net-b", netns=b.namespace)
        gateway = Workload("eastwest", b.gateway, {"istio": "eastwestgateway"}, b.gateway,
                           namespace="istio-system", network="net-b")
        networks_file = workdir / "networks.yaml"
        networks_file.write_text(json.dumps({"networks": {
            "net-a": {"endpoints": [{"fromCidr": a.cidr}], "gateways": []},
            "net-b": {"endpoints": [{"fromCidr": b.cidr}],
                      "gateways": [{"address": b.gateway, "port": GATEWAY_PORT}]},
        }}))
        mesh.config_dir.mkdir(parents=True, exist_ok=True)
        mesh.write_config("mesh.yaml", SERVICE)
        mesh.write_config("we-reviews-b.yaml", workload_entry(reviews_b))
        mesh.start_discovery(["--debounce-after", "0.05", "--ca-dir", str(workdir / "ca"),
                              "--mesh-networks", str(networks_file)])
        try:
            mesh.wait_ready()
            mesh.start_router(gateway)
            mesh.start_workload(reviews_b)
            mesh.start_workload(client)
            mesh.wait_envoy_ready("eastwest")
            yield TwoNetworks(mesh, a, b, gateway)
        finally:
            mesh.stop()
            _print_logs(mesh, workdir)


def _print_logs(mesh: Mesh, workdir: Path) -> None:
    for path in sorted((workdir / "logs").glob("*.log")):
        tail = path.read_text(errors="replace")[-1500:]
        print(f"--- {path.name}\n{tail}")


def test_networks_are_apart(two_networks: TwoNetworks) -> None:
    """The premise: A reaches B's gateway address but not B's workloads."""
    a, b = two_networks.a, two_networks.b
    assert netns.can_connect(a.namespace, b.gateway, GATEWAY_PORT)
    assert not netns.can_connect(a.namespace, b.addresses[0], PORT)


def test_remote_only_service_is_reached_through_the_gateway(two_networks: TwoNetworks) -> None:
    before = two_networks.gateway_connections()
    wait_until(lambda: two_networks.served_by() == "reviews-b", 60,
               "the client reaching reviews-b across networks")
    assert {two_networks.served_by() for _ in range(5)} == {"reviews-b"}
    assert two_networks.gateway_connections() > before
    # The mTLS session is the client's, ended by reviews-b's sidecar: the gateway only passed it.
    assert two_networks.inbound_handshakes("reviews-b") > 0

    # The client's sidecar holds the gateway, marked for mTLS, in place of reviews-b.
    dump = get_json(f"{two_networks.mesh.debug_url}/debug/config_dump?proxyID="
                    f"{_client_id(two_networks)}")
    text = json.dumps(dump)
    assert two_networks.b.gateway in text and two_networks.b.addresses[0] not in text


def test_local_instances_are_preferred_and_remote_ones_remain(two_networks: TwoNetworks) -> None:
    a = two_networks.a
    reviews_a = Workload("reviews-a", a.addresses[1], {"app": "reviews"}, a.addresses[3],
                         network="net-a", netns=a.namespace)
    two_networks.add(reviews_a)
    try:
        wait_until(lambda: two_networks.served_by() == "reviews-a", 60,
                   "the client served by its own network's instance")
        assert {two_networks.served_by() for _ in range(10)} == {"reviews-a"}
    finally:
        two_networks.remove("reviews-a")
    wait_until(lambda: two_networks.served_by() == "reviews-b", 60,
               "traffic back across the gateway once the local instance is gone")


def _client_id(two_networks: TwoNetworks) -> str:
    clients = get_json(f"{two_networks.mesh.debug_url}/debug/adsz")["clients"]
    return str(next(c["proxy"] for c in clients if c["workload"] == "client"))


def test_describe_says_where_endpoints_are_and_how_they_are_reached(
    two_networks: TwoNetworks,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshpilot.cli.main", "describe", "service", HOST,
         "--xds-address", two_networks.mesh.xds_address],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    b = two_networks.b
    assert (f"      {b.addresses[0]}:{PORT} (network net-b): other networks reach it through "
            f"gateway {b.gateway}:{GATEWAY_PORT} (mTLS only)") in done.stdout.splitlines(), \
        done.stdout
