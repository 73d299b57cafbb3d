"""Analyzers added after the conformance table: Sidecar selectors (IST0101, IST0110, IST0111,
IST0167), alpha annotations (IST0136), schema validation of Gateway and Sidecar, and RE2
judging VirtualService regexes — each through the CLI, as `--analyzer NAME -A -o json`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

from meshpilot.cli.main import app

DATA = Path(__file__).parent / "data" / "istio-analyze" / "testdata"


def analyze(tmp_path: Path, analyzer: str, text: str) -> list[dict[str, str]]:
    path = tmp_path / "input.yaml"
    path.write_text(text)
    return analyze_files(analyzer, path)


def analyze_files(analyzer: str, *paths: Path) -> list[dict[str, str]]:
    result = CliRunner().invoke(
        app, ["analyze", "--analyzer", analyzer, "-A", "-o", "json", *map(str, paths)])
    assert result.exit_code == 0, result.output
    found: list[dict[str, str]] = json.loads(result.stdout)
    return found


def pairs(messages: list[dict[str, str]]) -> Counter[tuple[str, str]]:
    return Counter((m["code"], m["origin"]) for m in messages)


def pod(name: str, namespace: str, labels: str, annotations: str = "") -> str:
    extra = f"  annotations: {annotations}\n" if annotations else ""
    return (f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
            f"  labels: {labels}\n{extra}spec:\n  containers: [{{name: app}}]\n")


def sidecar(name: str, namespace: str, selector: str = "") -> str:
    spec = f"  workloadSelector:\n    labels: {selector}\n" if selector else ""
    return (f"apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: {name}\n"
            f"  namespace: {namespace}\nspec:\n{spec}  egress:\n  - hosts: ['./*']\n")


def namespace(name: str, labels: str = "{}") -> str:
    return f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {labels}\n"


# --- sidecar.SelectorAnalyzer ---------------------------------------------------------------

def test_sidecar_selectors_that_select_nothing_or_the_same_workload(tmp_path: Path) -> None:
    documents = [
        pod("web", "shop", "{app: web}"),
        pod("web", "other", "{app: web}"),
        pod("cart", "shop", "{app: cart}"),
        pod("db", "shop", "{app: db, tier: data}"),
        sidecar("web-only", "shop", "{app: web}"),
        sidecar("ghost", "shop", "{app: ghost}"),
        sidecar("elsewhere", "empty", "{app: cart}"),
        sidecar("cart-a", "shop", "{app: cart}"),
        sidecar("cart-b", "shop", "{app: cart}"),
        sidecar("db-by-app", "shop", "{app: db}"),
        sidecar("db-by-tier", "shop", "{tier: data}"),
    ]
    found = analyze(tmp_path, "sidecar.SelectorAnalyzer", "---\n".join(documents))

    assert pairs(found) == Counter({
        ("IST0101", "Sidecar shop/ghost"): 1,
        ("IST0101", "Sidecar empty/elsewhere"): 1,
        ("IST0110", "Sidecar shop/cart-a"): 1,
        ("IST0110", "Sidecar shop/cart-b"): 1,
        ("IST0110", "Sidecar shop/db-by-app"): 1,
        ("IST0110", "Sidecar shop/db-by-tier"): 1,
    })
    conflict = next(m for m in found if m["origin"] == "Sidecar shop/cart-a")
    assert conflict["message"] == ('The Sidecars [cart-a cart-b] in namespace "shop" select '
                                   'the same workload pod "cart", which can lead to undefined '
                                   "behavior.")
    ghost = next(m for m in found if m["origin"] == "Sidecar shop/ghost")
    assert ghost["message"] == 'Referenced selector not found: "app=ghost"'


def test_several_selectorless_sidecars_in_a_namespace(tmp_path: Path) -> None:
    documents = [
        sidecar("only-default", "ns1"),
        sidecar("with-selector", "ns1", "{app: web}"),
        pod("web", "ns1", "{app: web}"),
        sidecar("default-1", "ns2"),
        sidecar("default-2", "ns2"),
    ]
    text = "---\n".join(documents)
    merged = analyze(tmp_path, "sidecar.SelectorAnalyzer", text)
    older = analyze(tmp_path, "sidecar.DefaultSelectorAnalyzer", text)

    expected = Counter({("IST0111", "Sidecar ns2/default-1"): 1,
                        ("IST0111", "Sidecar ns2/default-2"): 1})
    assert pairs(merged) == expected
    assert pairs(older) == expected


def test_sidecars_for_ambient_workloads_are_ineffective(tmp_path: Path) -> None:
    documents = [
        namespace("mesh-ambient", "{istio.io/dataplane-mode: ambient}"),
        namespace("both", "{istio.io/dataplane-mode: ambient, istio-injection: enabled}"),
        pod("app", "mesh-ambient", "{app: amb}", "{ambient.istio.io/redirection: enabled}"),
        sidecar("ns-wide", "mesh-ambient"),
        sidecar("for-app", "mesh-ambient", "{app: amb}"),
        sidecar("injected-anyway", "both"),
    ]
    found = analyze(tmp_path, "sidecar.SelectorAnalyzer", "---\n".join(documents))
    assert pairs(found) == Counter({("IST0167", "Sidecar mesh-ambient/ns-wide"): 1,
                                    ("IST0167", "Sidecar mesh-ambient/for-app"): 1})


def test_workload_entries_are_workloads_a_sidecar_can_select(tmp_path: Path) -> None:
    entry = ("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
             "metadata: {name: vm-1, namespace: shop}\n"
             "spec: {address: 10.0.0.1, labels: {app: billing}}\n")
    documents = [entry, sidecar("billing", "shop", "{app: billing}"),
                 sidecar("billing-too", "shop", "{app: billing}")]
    found = analyze(tmp_path, "sidecar.SelectorAnalyzer", "---\n".join(documents))
    assert pairs(found) == Counter({("IST0110", "Sidecar shop/billing"): 1,
                                    ("IST0110", "Sidecar shop/billing-too"): 1})


# --- annotations.AlphaAnalyzer ----------------------------------------------------------------

def test_alpha_annotations_on_the_istio_misannotated_input() -> None:
    found = analyze_files("annotations.AlphaAnalyzer", DATA / "misannotated.yaml")
    assert pairs(found) == Counter({
        ("IST0136", "Deployment fortio-deploy"): 1,
        ("IST0136", "Pod invalid-annotations"): 2,
        ("IST0136", "Service httpbin"): 1,
        # istio-init present: the capture annotations were written by the user, not the CNI.
        ("IST0136", "Pod anno-not-set-by-default"): 4,
    })
    lines = {m["reference"].rsplit(":", 1)[1] for m in found
             if m["origin"] == "Pod anno-not-set-by-default"}
    assert len(lines) == 4  # each at its own annotation's line


def test_alpha_analyzer_runs_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  annotations:\n"
                    "    networking.istio.io/exportTo: '.'\nspec:\n  ports: [{name: http, "
                    "port: 80}]\n")
    default = CliRunner().invoke(app, ["analyze", "-A", "-o", "json", str(path)])
    assert [m["code"] for m in json.loads(default.stdout)] == []


# --- schema validation ------------------------------------------------------------------------

def test_gateway_and_sidecar_schema_problems_point_at_their_field(tmp_path: Path) -> None:
    gateway = analyze(tmp_path, "schema.ValidationAnalyzer.Gateway", """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: []
""")
    side = analyze(tmp_path, "schema.ValidationAnalyzer.Sidecar", """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: scoped, namespace: default}
spec:
  egress:
  - hosts:
    - not-namespaced
""")
    assert [(m["code"], m["origin"]) for m in gateway] == [("IST0106", "Gateway default/public")]
    assert gateway[0]["reference"].endswith(":8")
    assert [(m["code"], m["origin"]) for m in side] == [("IST0106", "Sidecar default/scoped")]
    assert side[0]["reference"].endswith(":7")


REGEXES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: regexes, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {regex: "/api/v1\\\\Z"}
    - headers:
        x-user: {regex: "(?P<user>[a-z]+)"}
    - authority: {regex: "a(?=b)"}
    corsPolicy:
      allowOrigins:
      - regex: "https://(.*\\\\.)?example\\\\.com"
      - regex: "(unclosed"
    route:
    - destination: {host: reviews}
"""


def test_regexes_are_judged_by_re2(tmp_path: Path) -> None:
    found = analyze(tmp_path, "schema.ValidationAnalyzer.VirtualService", REGEXES)

    by_line = {int(m["reference"].rsplit(":", 1)[1]): m["message"] for m in found}
    # `\\Z` compiles in Python but not in RE2; lookahead and an open group fail in both.
    assert sorted(by_line) == [8, 11, 15]
    assert "invalid escape sequence: \\Z" in by_line[8]
    assert "spec.http[0].match[2].authority.regex" in by_line[11]
    assert "missing )" in by_line[15]
    assert len(found) == 3 and all(m["code"] == "IST0106" for m in found)
