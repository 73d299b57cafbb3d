"""SMI TrafficTarget → Istio ALLOW AuthorizationPolicy, and the RBAC Envoy gets from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meshpilot.config.filestore import FileConfigStore
from meshpilot.config.foreign.smi_access import SERVICE_ACCOUNT_ANNOTATION, istio_value
from meshpilot.config.translating import TranslatingStore
from meshpilot.model import Config, Kind
from meshpilot.model.snapshot import Snapshot
from meshpilot.security.policies import authorization_policies

DATA = Path(__file__).parent / "data" / "smi"

ROUTES = """
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: the-routes, namespace: default}
spec:
  matches:
  - {name: metrics, pathRegex: /metrics, methods: [GET]}
  - {name: api, pathRegex: "/api/.*", methods: ["*"], headers: {x-team: "^blue$"}}
  - {name: firefox, headers: {user-agent: ".*Firefox.*"}}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: db, namespace: default}
spec:
  matches: {ports: [5432, 6446]}
"""


def target(rules: str, extra: str = "") -> str:
    return f"""
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {{name: t, namespace: default}}
spec:
  destination: {{kind: ServiceAccount, name: service-a, namespace: default{extra}}}
  sources:
  - {{kind: ServiceAccount, name: prometheus, namespace: default}}
  - {{kind: ServiceAccount, name: batch, namespace: jobs}}
  rules:
{rules}
"""


def load(tmp_path: Path, *texts: str, trust_domain: str = "cluster.local"
         ) -> TranslatingStore:
    (tmp_path / "smi.yaml").write_text("---".join(texts))
    files = FileConfigStore([tmp_path])
    store = TranslatingStore(files, trust_domain)
    files.load()
    return store


def policy(store: TranslatingStore) -> Config:
    (found,) = store.list(Kind.AUTHORIZATION_POLICY)
    return found


PRINCIPALS = [{"source": {"principals": ["cluster.local/ns/default/sa/prometheus",
                                         "cluster.local/ns/jobs/sa/batch"]}}]


def test_route_group_matches_become_paths_methods_and_header_conditions(
        tmp_path: Path) -> None:
    store = load(tmp_path, ROUTES, target(
        "  - {kind: HTTPRouteGroup, name: the-routes, matches: [metrics, api]}"))
    found = policy(store)
    assert (found.namespace, found.name, found.group) == (
        "default", "smi-traffictarget-t", "security.istio.io")
    assert found.annotations[SERVICE_ACCOUNT_ANNOTATION] == "service-a"
    assert found.spec == {"action": "ALLOW", "rules": [
        {"from": PRINCIPALS, "to": [{"operation": {"paths": ["/metrics"], "methods": ["GET"]}}]},
        {"from": PRINCIPALS, "to": [{"operation": {"paths": ["/api/*"]}}],
         "when": [{"key": "request.headers[x-team]", "values": ["blue"]}]},
    ]}
    assert store.errors() == []


def test_tcp_route_and_destination_port_become_ports(tmp_path: Path) -> None:
    store = load(tmp_path, ROUTES, target("  - {kind: TCPRoute, name: db}", ", port: 5432"))
    assert policy(store).spec["rules"] == [
        {"from": PRINCIPALS, "to": [{"operation": {"ports": ["5432"]}}]}]
    store = load(tmp_path, ROUTES, target("  - {kind: TCPRoute, name: db}"))
    assert policy(store).spec["rules"] == [
        {"from": PRINCIPALS, "to": [{"operation": {"ports": ["5432", "6446"]}}]}]


def test_trust_domain_of_the_mesh_names_the_sources(tmp_path: Path) -> None:
    store = load(tmp_path, ROUTES, target("  - {kind: TCPRoute, name: db}"),
                 trust_domain="example.org")
    assert policy(store).spec["rules"][0]["from"][0]["source"]["principals"][0] == (
        "example.org/ns/default/sa/prometheus")
    store.set_trust_domain("other.org")
    assert policy(store).spec["rules"][0]["from"][0]["source"]["principals"][0] == (
        "other.org/ns/default/sa/prometheus")


def test_inexpressible_regex_is_reported_and_allows_nothing(tmp_path: Path) -> None:
    store = load(tmp_path, ROUTES, target(
        "  - {kind: HTTPRouteGroup, name: the-routes, matches: [firefox]}"))
    assert policy(store).spec == {"action": "ALLOW", "rules": []}  # deny by default
    (error,) = store.errors()
    assert "match 'firefox': header user-agent regex '.*Firefox.*' is not expressible" in (
        error.message)
    lines = (tmp_path / "smi.yaml").read_text().splitlines()
    rule_line = next(i for i, line in enumerate(lines, 1) if "[firefox]" in line)
    assert error.file.endswith("smi.yaml") and error.line == rule_line
    assert error.key is not None and error.key.name == "t"


def test_missing_route_group_and_match_are_reported(tmp_path: Path) -> None:
    store = load(tmp_path, ROUTES, target(
        "  - {kind: HTTPRouteGroup, name: nowhere}\n"
        "  - {kind: HTTPRouteGroup, name: the-routes, matches: [nothing]}"))
    messages = sorted(e.message for e in store.errors())
    assert messages == ["HTTPRouteGroup default/nowhere not found",
                        "HTTPRouteGroup default/the-routes has no match 'nothing'"]
    assert policy(store).spec["rules"] == []


@pytest.mark.parametrize(("regex", "value"), [
    ("/metrics", "/metrics"), ("^/ping$", "/ping"), (".*", "*"), ("/api/.*", "/api/*"),
    (".*\\.css", "*.css"), ("/v[12]", None), (".*Firefox.*", None), ("/a\\d", None),
    ("/x+", None),
])
def test_regexes_that_istio_values_can_express(regex: str, value: str | None) -> None:
    assert istio_value(regex) == value


def test_policy_applies_only_to_workloads_of_the_destination_account(tmp_path: Path) -> None:
    store = load(tmp_path, ROUTES, target("  - {kind: TCPRoute, name: db}"))
    snapshot = Snapshot.build("1", [], [], store.list(Kind.AUTHORIZATION_POLICY))
    assert authorization_policies(snapshot, "default", {}, "service-a") == (policy(store),)
    assert authorization_policies(snapshot, "default", {}, "service-b") == ()
    assert authorization_policies(snapshot, "other", {}, "service-a") == ()


THE_ROUTES = [
    {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
     "metadata": {"name": "the-routes", "namespace": "default"},
     "spec": {"matches": [{"name": "metrics", "pathRegex": "/metrics", "methods": ["GET"]},
                          {"name": "everything", "pathRegex": ".*", "methods": ["*"]}]}},
    {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "TCPRoute",
     "metadata": {"name": "the-routes", "namespace": "default"},
     "spec": {"matches": {"ports": [3306]}}},
]


@pytest.mark.parametrize(("name", "rules"), [
    ("traffic-access-v1alpha2-02-TrafficTarget-path-specific.yaml",
     [{"paths": ["/metrics"], "methods": ["GET"], "ports": ["8080"]}]),
    ("traffic-access-v1alpha3-02-TrafficTarget-path-specific.yaml",
     [{"ports": ["3306"]}, {"paths": ["/metrics"], "methods": ["GET"]}]),
])
def test_spec_examples_translate(name: str, rules: list[dict[str, object]],
                                 tmp_path: Path) -> None:
    version = name.split("-")[2]
    example = {"apiVersion": f"access.smi-spec.io/{version}",
               **yaml.safe_load((DATA / name).read_text())}
    store = load(tmp_path, yaml.safe_dump_all([example, *THE_ROUTES]))
    assert store.errors() == []
    sources = [{"source": {"principals": ["cluster.local/ns/default/sa/prometheus"]}}]
    assert policy(store).spec["rules"] == [
        {"from": sources, "to": [{"operation": operation}]} for operation in rules]


def test_v1alpha1_specs_and_destination_in_another_namespace(tmp_path: Path) -> None:
    store = load(tmp_path, ROUTES.replace("namespace: default", "namespace: shop"), """
apiVersion: access.smi-spec.io/v1alpha1
kind: TrafficTarget
metadata: {name: old, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: api, namespace: backend}
  sources: [{kind: ServiceAccount, name: web}]
  specs:
  - {kind: HTTPRouteGroup, name: the-routes, matches: [metrics]}
""")
    found = policy(store)
    assert (found.namespace, found.name, found.annotations[SERVICE_ACCOUNT_ANNOTATION]) == (
        "backend", "smi-traffictarget-old-shop", "api")
    assert found.spec["rules"] == [
        {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/web"]}}],
         "to": [{"operation": {"paths": ["/metrics"], "methods": ["GET"]}}]}]
