"""End to end: one mesh, two control planes, one root of trust.

`meshpilot ca root` makes the mesh's root and `meshpilot ca intermediate` one signing CA per
control plane (as each cluster's `cacerts` in Istio). Two `meshpilot discovery` servers read the
same config, each with its own intermediate; the client's sidecar is served by the first, the
server's by the second. Mesh-wide STRICT mTLS means the call only succeeds if each side accepts
the other's certificate from the other control plane.
"""

from __future__ import annotations

import datetime
import http.client
import random
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from meshpilot.demo.mesh import Mesh, Workload, http_request, wait_until
from meshpilot.model.security import Identity
from meshpilot.security.ca import CertificateAuthority

pytestmark = pytest.mark.e2e

PORT = 9080

CONFIG = """
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
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""

ENTRY = """
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}, namespace: default}}
spec:
  address: {ip}
  labels: {{app: {name}}}
  serviceAccount: {name}
"""


@dataclass
class TwoPlanes:
    first: Mesh
    second: Mesh
    workdir: Path

    def call(self) -> int:
        client = self.first.workloads["client"]
        return http_request(f"{client.outbound_bind}:{PORT}", "server.example")[0]

    def handshake(self, ca_dir: Path, sa: str = "prober",
                  trust: Path | None = None) -> x509.Certificate:
        """An mTLS handshake with the server's inbound listener, holding a certificate from the
        CA in `ca_dir` and trusting the root in `trust` (default: that CA's); returns the
        certificate the server presented."""
        ca = CertificateAuthority.load(ca_dir)
        issued = ca.issue(Identity("cluster.local", "default", sa), datetime.timedelta(hours=1))
        cert, key = self.workdir / f"{sa}.crt", self.workdir / f"{sa}.key"
        cert.write_bytes(issued.certificate_chain)
        key.write_bytes(issued.private_key)
        context = ssl.create_default_context(cafile=str((trust or ca_dir) / "root-cert.pem"))
        context.check_hostname = False  # workload certificates name a SPIFFE id
        context.load_cert_chain(cert, key)
        server = self.second.workloads["server"]
        with socket.create_connection((server.ip, PORT), timeout=5) as raw, \
                context.wrap_socket(raw) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: server.example\r\nConnection: close\r\n\r\n")
            tls.recv(1)  # TLS 1.3 reports a refused client certificate only on reading
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)


def meshpilot_ca(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "meshpilot.cli.main", "ca", *args], check=True,
                   capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def planes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoPlanes]:
    workdir = tmp_path_factory.mktemp("planes")
    meshpilot_ca("root", str(workdir / "root"))
    for name in ("cluster-1", "cluster-2"):
        meshpilot_ca("intermediate", str(workdir / "root"), str(workdir / name), "--name", name)
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    first = Mesh(workdir / "first", prefix=prefix)
    second = Mesh(workdir / "second", prefix=prefix)
    second.config_dir = first.config_dir  # both planes read the same config
    client = Workload("client", first.address(10), {"app": "client"}, first.address(1))
    server = Workload("server", first.address(20), {"app": "server"}, first.address(2))
    first.config_dir.mkdir(parents=True, exist_ok=True)
    first.write_config("mesh.yaml", CONFIG + "---" + "---".join(
        ENTRY.format(name=w.name, ip=w.ip) for w in (client, server)))
    try:
        for mesh, ca in ((first, "cluster-1"), (second, "cluster-2")):
            mesh.start_discovery(["--debounce-after", "0.05", "--ca-dir", str(workdir / ca)])
        first.wait_ready()
        second.wait_ready()
        first.start_workload(client)
        second.start_workload(server)
        first.wait_envoy_ready("client")
        second.wait_envoy_ready("server")
        yield TwoPlanes(first, second, workdir)
    finally:
        first.stop()
        second.stop()


def test_workloads_of_two_control_planes_talk_over_mtls(planes: TwoPlanes) -> None:
    wait_until(lambda: planes.call() == 200, 30, "client (plane 1) reaching server (plane 2)")
    assert {planes.call() for _ in range(5)} == {200}
    # STRICT: the server's sidecar takes nothing but mTLS, so those calls were mutual TLS.
    server = planes.second.workloads["server"]
    with pytest.raises((ConnectionError, OSError, http.client.HTTPException)):
        http_request(f"{server.ip}:{PORT}", "server.example")


def test_each_plane_signs_with_its_own_intermediate(planes: TwoPlanes) -> None:
    presented = planes.handshake(planes.workdir / "cluster-1")
    assert "cluster-2" in presented.issuer.rfc4514_string()
    assert presented.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/default/sa/server"]


def test_a_foreign_root_is_refused(planes: TwoPlanes) -> None:
    meshpilot_ca("root", str(planes.workdir / "foreign"))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        planes.handshake(planes.workdir / "foreign", sa="stranger",
                         trust=planes.workdir / "cluster-1")
