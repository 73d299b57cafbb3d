"""meshpilot's analyzers for SMI and Gateway API objects, from files through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from meshpilot.cli.main import app

SERVICES = """\
apiVersion: v1
kind: Service
metadata: {name: website, namespace: default}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: website-v1, namespace: default}
spec:
  hosts: [website-v1.default.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
"""

SPLIT = """\
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: canary, namespace: default}
spec:
  service: website
  matches:
  - {kind: HTTPRouteGroup, name: the-routes}
  - {kind: TCPRoute, name: missing-tcp}
  backends:
  - {service: website-v1, weight: 0}
  - {service: website-v2, weight: 0}
"""

TARGET = """\
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: access, namespace: default}
spec:
  destination: {kind: ServiceAccount, name: website}
  sources: [{kind: ServiceAccount, name: client}]
  rules:
  - {kind: HTTPRouteGroup, name: the-routes, matches: [all]}
  - {kind: HTTPRouteGroup, name: nowhere}
"""

ROUTE_GROUP = """\
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: the-routes, namespace: default}
spec:
  matches: [{name: all, pathRegex: ".*"}]
"""

HTTP_ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  gatewayClassName: meshpilot
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: default}
spec:
  parentRefs: [{name: edge}, {name: lost}, {kind: Service, name: ghost}]
  rules:
  - backendRefs: [{name: website, port: 80}, {name: gone, port: 80}]
"""


def analyze(tmp_path: Path, *documents: str, analyzer: str = "") -> list[dict[str, Any]]:
    path = tmp_path / "mesh.yaml"
    path.write_text("---\n".join(documents))
    args = ["analyze", "-A", "-o", "json", str(path)]
    if analyzer:
        args[1:1] = ["--analyzer", analyzer]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 79), result.output  # 79: errors found
    messages: list[dict[str, Any]] = json.loads(result.stdout)
    return [m for m in messages if m["code"].startswith("MP")]


def lines(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def found(messages: list[dict[str, Any]]) -> list[tuple[str, str, int, str]]:
    """(code, resource, line, text) of each message, sorted."""
    return sorted((m["code"], m["origin"], int(m["reference"].rpartition(":")[2]),
                   m["message"]) for m in messages)


def test_split_references_and_zero_weights(tmp_path: Path) -> None:
    messages = analyze(tmp_path, SERVICES, SPLIT, ROUTE_GROUP)
    path = tmp_path / "mesh.yaml"
    assert found(messages) == [
        ("MP0007", "TrafficSplit default/canary", lines(path, "website-v2"),
         'spec.backends[1].service references service "website-v2", which is not found.'),
        ("MP0008", "TrafficSplit default/canary", lines(path, "missing-tcp"),
         'spec.matches[1] references TCPRoute "default/missing-tcp", which is not found.'),
        ("MP0009", "TrafficSplit default/canary", lines(path, "backends:"),
         "The weights of all 2 backends sum to zero."),
    ]


def test_traffic_target_rules_must_name_existing_routes(tmp_path: Path) -> None:
    messages = analyze(tmp_path, SERVICES, TARGET, ROUTE_GROUP)
    path = tmp_path / "mesh.yaml"
    assert found(messages) == [
        ("MP0008", "TrafficTarget default/access", lines(path, "name: nowhere"),
         'spec.rules[1] references HTTPRouteGroup "default/nowhere", which is not found.'),
    ]


def test_gateway_api_route_parents_and_backends(tmp_path: Path) -> None:
    messages = analyze(tmp_path, SERVICES, HTTP_ROUTE,
                       analyzer="meshpilot.GatewayAPIReferenceAnalyzer")
    path = tmp_path / "mesh.yaml"
    parents = lines(path, "parentRefs")
    assert found(messages) == [
        ("MP0007", "HTTPRoute default/shop", parents,
         'spec.parentRefs[2] references service "ghost", which is not found.'),
        ("MP0007", "HTTPRoute default/shop", lines(path, "name: gone"),
         'spec.rules[0].backendRefs[1] references service "gone", which is not found.'),
        ("MP0008", "HTTPRoute default/shop", parents,
         'spec.parentRefs[1] references Gateway "default/lost", which is not found.'),
    ]


def test_unknown_api_versions(tmp_path: Path) -> None:
    messages = analyze(tmp_path, SERVICES,
                       ROUTE_GROUP.replace("v1alpha4", "v9"),
                       HTTP_ROUTE.replace("gateway.networking.k8s.io/v1\nkind: HTTPRoute",
                                          "gateway.networking.k8s.io/v0\nkind: HTTPRoute"),
                       analyzer="meshpilot.APIVersionAnalyzer")
    path = tmp_path / "mesh.yaml"
    assert sorted((m["code"], m["origin"], m["reference"]) for m in messages) == [
        ("MP0010", "HTTPRoute default/shop", f"{path}:{lines(path, 'k8s.io/v0')}"),
        ("MP0010", "HTTPRouteGroup default/the-routes",
         f"{path}:{lines(path, 'specs.smi-spec.io/v9')}"),
    ]
    assert any('apiVersion "specs.smi-spec.io/v9" is not accepted for HTTPRouteGroup; '
               "accepted: specs.smi-spec.io/v1alpha4" in m["message"] for m in messages)


def test_clean_smi_and_gateway_config_has_no_findings(tmp_path: Path) -> None:
    split = SPLIT.replace("weight: 0}", "weight: 50}").replace("website-v2", "website-v1") \
        .replace("  - {kind: TCPRoute, name: missing-tcp}\n", "")
    route = HTTP_ROUTE.replace(", {name: lost}, {kind: Service, name: ghost}", "") \
        .replace(", {name: gone, port: 80}", "")
    assert analyze(tmp_path, SERVICES, split, ROUTE_GROUP, route,
                   TARGET.replace("  - {kind: HTTPRouteGroup, name: nowhere}\n", "")) == []
