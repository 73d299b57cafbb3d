"""End to end: `proxy-config secret` and `describe pod` on a mesh run with `--ca-dir`.

Two workloads, each with its own service account: `client` calls `server.example`, whose
workload a PeerAuthentication puts in STRICT mode and an AuthorizationPolicy selects. The
secrets table is read from the server's real Envoy and checked against Envoy's own `/certs`
and the CA's root certificate; describe is checked against the policies written.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner, Result

from meshpilot.cli.main import app
from meshpilot.demo.mesh import Mesh, Workload, get_json, http_request, wait_until

pytestmark = pytest.mark.e2e

runner = CliRunner()

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
metadata: {name: server-strict, namespace: default}
spec:
  selector: {matchLabels: {app: server}}
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-client, namespace: default}
spec:
  selector: {matchLabels: {app: server}}
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Path]]:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    workdir = tmp_path_factory.mktemp("security-diag")
    mesh = Mesh(workdir, prefix=prefix)
    ca_dir = workdir / "ca"
    workloads = [
        Workload("client", mesh.address(10), {"app": "client"}, mesh.address(1)),
        Workload("server", mesh.address(20), {"app": "server"}, mesh.address(20)),
    ]
    documents = [CONFIG]
    for w in workloads:
        w.service_account = w.name  # the client serves nothing: its identity comes from the flag
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
    mesh.start_discovery(["--debounce-after", "0.05", "--ca-dir", str(ca_dir)])
    try:
        mesh.wait_ready()
        for workload in workloads:
            mesh.start_workload(workload)
        for workload in workloads:
            mesh.wait_envoy_ready(workload.name)
        yield mesh, ca_dir
    finally:
        mesh.stop()


def cli(*args: str) -> Result:
    return runner.invoke(app, list(args))


def table(text: str) -> list[list[str]]:
    return [re.split(r" {3,}", line.strip()) for line in text.strip().splitlines()]


def test_proxy_config_secret_shows_the_workload_certificate_and_root(
    mesh: tuple[Mesh, Path],
) -> None:
    m, ca_dir = mesh
    address = f"{m.workloads['client'].outbound_bind}:9080"
    wait_until(lambda: http_request(address, "server.example")[0] == 200, 20,
               "client reaches server over mTLS")
    args = ("pc", "secret", "server.default", "--xds-address", m.xds_address)

    def rows() -> list[list[str]]:
        result = cli(*args)
        assert result.exit_code == 0, result.output
        return table(result.stdout)

    wait_until(lambda: len(rows()) == 3, 20, "both secrets in the server's Envoy")
    header, *secrets = rows()
    assert header == ["RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER",
                      "NOT AFTER", "NOT BEFORE"]
    by_name = {r[0]: r for r in secrets}
    assert [by_name["default"][i] for i in (1, 2, 3)] == ["Cert Chain", "ACTIVE", "true"]
    assert [by_name["ROOTCA"][i] for i in (1, 2, 3)] == ["CA", "ACTIVE", "true"]

    # The serials are the ones Envoy itself reports, and the root's is the CA's.
    certs = get_json(f"http://{m.workloads['server'].admin_address}/certs")
    serials = {c["serial_number"].lstrip("0")
               for entry in certs["certificates"]
               for key in ("cert_chain", "ca_cert")
               for c in entry.get(key) or ()}
    assert by_name["default"][4] in serials
    root = x509.load_pem_x509_certificate((ca_dir / "root-cert.pem").read_bytes())
    assert by_name["ROOTCA"][4] == format(root.serial_number, "x")
    assert by_name["ROOTCA"][5] == root.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")

    as_json = json.loads(cli(*args, "-o", "json").stdout)
    assert {s["name"] for s in as_json["dynamic_active_secrets"]} == {"default", "ROOTCA"}


def test_describe_pod_shows_identity_mtls_and_policies(mesh: tuple[Mesh, Path]) -> None:
    m, _ = mesh
    result = cli("describe", "pod", "server.default", "--xds-address", m.xds_address)
    assert result.exit_code == 0, result.output
    security = result.stdout.split("--------------------\n")[-1].splitlines()
    assert security == [
        "Identity: spiffe://cluster.local/ns/default/sa/server",
        "Effective PeerAuthentication: workload mTLS mode STRICT",
        "   Port 9080: STRICT",
        "Applied PeerAuthentication: server-strict.default",
        "Applied AuthorizationPolicy: from-client.default",
        "Applied RequestAuthentication: (none)",
    ]
    client = json.loads(cli("describe", "proxy", "client.default", "--xds-address",
                            m.xds_address, "-o", "json").stdout)
    assert client["security"]["identity"] == "spiffe://cluster.local/ns/default/sa/client"
    assert client["security"]["authorizationPolicies"] == []
