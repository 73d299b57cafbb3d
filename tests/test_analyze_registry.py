"""meshpilot's registry-aware analyzers (MP codes), from files: Kubernetes Services and the
ServiceEntry registry (ServiceEntries, inline endpoints, WorkloadEntries)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from meshpilot.cli.main import app

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
"""

ENTRY = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews-vm, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: tcp, protocol: TCP}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews-vm}}
"""


def workload(name: str, version: str, *, healthy: bool = True, network: str = "") -> str:
    status = "" if healthy else (
        "status:\n  conditions:\n  - {type: Healthy, status: 'False'}\n")
    network_line = f"  network: {network}\n" if network else ""
    return (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
        f"metadata: {{name: {name}, namespace: default}}\n"
        f"spec:\n  address: 10.0.0.{len(name)}\n"
        f"  labels: {{app: reviews-vm, version: {version}}}\n{network_line}{status}"
    )


def analyze(tmp_path: Path, analyzer: str, *documents: str, extra: tuple[str, ...] = ()
            ) -> list[tuple[str, str]]:
    path = tmp_path / "mesh.yaml"
    path.write_text("---\n".join(documents))
    result = CliRunner().invoke(
        app, ["analyze", "--analyzer", analyzer, "-A", "-o", "json", *extra, str(path)])
    assert result.exit_code == 0, result.output
    return [(m["code"], m["origin"]) for m in json.loads(result.stdout)]


def test_protocol_conflict_between_kubernetes_and_serviceentry(tmp_path: Path) -> None:
    found = analyze(tmp_path, "meshpilot.RegistryProtocolAnalyzer", SERVICE, ENTRY)
    assert found == [("MP0001", "ServiceEntry default/reviews-vm")]
    same = analyze(tmp_path, "meshpilot.RegistryProtocolAnalyzer", SERVICE,
                   ENTRY.replace("name: tcp, protocol: TCP", "name: http, protocol: HTTP"))
    assert same == []


def test_serviceentry_host_shadowing_a_kubernetes_service(tmp_path: Path) -> None:
    found = analyze(tmp_path, "meshpilot.ServiceEntryCollisionAnalyzer", SERVICE, ENTRY)
    assert found == [("MP0002", "ServiceEntry default/reviews-vm")]
    elsewhere = ENTRY.replace("reviews.default.svc.cluster.local", "reviews.example.com")
    assert analyze(tmp_path, "meshpilot.ServiceEntryCollisionAnalyzer", SERVICE,
                   elsewhere) == []


def test_service_whose_endpoints_are_all_unhealthy(tmp_path: Path) -> None:
    unhealthy = (workload("vm-1", "v1", healthy=False), workload("vm-2", "v2", healthy=False))
    found = analyze(tmp_path, "meshpilot.UnhealthyEndpointsAnalyzer", ENTRY, *unhealthy)
    assert found == [("MP0003", "ServiceEntry default/reviews-vm")]
    one_healthy = (workload("vm-1", "v1", healthy=False), workload("vm-2", "v2"))
    assert analyze(tmp_path, "meshpilot.UnhealthyEndpointsAnalyzer", ENTRY, *one_healthy) == []


def test_subset_selecting_no_registry_endpoint(tmp_path: Path) -> None:
    rule = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v3, labels: {version: v3}}
"""
    found = analyze(tmp_path, "meshpilot.SubsetEndpointsAnalyzer", ENTRY, rule,
                    workload("vm-1", "v1"))
    assert found == [("MP0004", "DestinationRule default/reviews")]


def test_endpoint_in_a_network_without_gateway(tmp_path: Path) -> None:
    networks = tmp_path / "networks.yaml"
    networks.write_text(
        "networks:\n"
        "  east:\n    endpoints: [{fromRegistry: Kubernetes}]\n"
        "    gateways: [{address: 1.2.3.4, port: 15443}]\n"
        "  west:\n    endpoints: [{fromRegistry: Kubernetes}]\n"
    )
    documents = (ENTRY, workload("vm-east", "v1", network="east"),
                 workload("vm-west", "v1", network="west"))

    found = analyze(tmp_path, "meshpilot.NetworkGatewayAnalyzer", *documents,
                    extra=("--meshNetworksFile", str(networks)))
    without_networks = analyze(tmp_path, "meshpilot.NetworkGatewayAnalyzer", *documents)

    assert found == [("MP0005", "WorkloadEntry default/vm-west")]
    assert without_networks == []


def test_meshpilot_codes_have_no_istio_documentation_url(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(f"{SERVICE}---\n{ENTRY}")
    result = CliRunner().invoke(app, ["analyze", "--analyzer",
                                      "meshpilot.ServiceEntryCollisionAnalyzer", "-o", "json",
                                      str(path)])
    [message] = json.loads(result.stdout)
    assert "documentationUrl" not in message
    assert message["message"] == ('ServiceEntry host "reviews.default.svc.cluster.local" is '
                                  "also published by Kubernetes Service default/reviews.")
