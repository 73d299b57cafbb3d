"""Every SMI spec example is either accepted and translated or rejected with a clear error.

The examples (tests/data/smi, from the SMI spec documents; see its README) mostly omit
`apiVersion`. As written they are rejected with the versions meshpilot accepts; with the
apiVersion their spec document implies filled in, TrafficSplits become VirtualServices.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshpilot.config.filestore import FileConfigStore
from meshpilot.config.foreign.smi import weight
from meshpilot.config.translating import TranslatingStore
from meshpilot.model import Kind

DATA = Path(__file__).parent / "data" / "smi"
INDEX = json.loads((DATA / "index.json").read_text())["examples"]
SMI_KINDS = {"TrafficSplit", "HTTPRouteGroup", "TCPRoute", "UDPRoute", "TrafficTarget"}
GROUP_OF = {"TrafficSplit": "split", "HTTPRouteGroup": "specs", "TCPRoute": "specs",
            "UDPRoute": "specs", "TrafficTarget": "access"}
LATEST = {"split": "v1alpha4", "specs": "v1alpha4", "access": "v1alpha3"}


def load(directory: Path) -> TranslatingStore:
    files = FileConfigStore([directory])
    store = TranslatingStore(files)
    files.load()
    return store


def with_api_version(doc: Any, example: dict[str, Any]) -> Any:
    """Fill the apiVersion the example's spec document implies."""
    if isinstance(doc, dict) and doc.get("kind") in SMI_KINDS and "apiVersion" not in doc:
        group = GROUP_OF[doc["kind"]]
        version = example["version"] if example["spec"].endswith(group) else LATEST[group]
        doc = {"apiVersion": f"{group}.smi-spec.io/{version}", **doc}
    return doc


def smi_documents(example: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in example["objects"] if o.get("kind") in SMI_KINDS]


EXAMPLES = [e for e in INDEX if e["yaml_parses"] and smi_documents(e)]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["file"] for e in EXAMPLES])
def test_as_written_accepted_or_clearly_rejected(example: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / example["file"]).write_text((DATA / example["file"]).read_text())
    store = load(tmp_path)
    errors = store.errors()
    for obj in smi_documents(example):
        if obj["kind"] in example["missing_apiVersion"]:
            assert any(f"{obj['kind']}: missing apiVersion; accepted: " in e.message
                       for e in errors), errors
    for error in errors:
        assert error.file.endswith(example["file"]) and error.line > 0, error


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["file"] for e in EXAMPLES])
def test_with_api_version_traffic_splits_translate(example: dict[str, Any],
                                                   tmp_path: Path) -> None:
    docs = [with_api_version(d, example)
            for d in yaml.safe_load_all((DATA / example["file"]).read_text())]
    (tmp_path / "example.yaml").write_text(yaml.safe_dump_all(docs))
    store = load(tmp_path)
    errors = store.errors()
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "TrafficSplit":
            continue
        name = doc["metadata"]["name"]
        derived = [c for c in store.list(Kind.VIRTUAL_SERVICE)
                   if c.name == f"smi-trafficsplit-{name}"]
        if derived:
            (vs,) = derived
            routes = vs.spec.get("http") or vs.spec.get("tcp")
            weights = [d["weight"] for d in routes[0]["route"]]
            assert weights == [weight(b.get("weight", 0)) for b in doc["spec"]["backends"]]
        else:
            # Not translated: there must be a clear reason naming this split.
            assert any(e.key is not None and e.key.name == name for e in errors), errors


def test_quantity_weights_of_v1alpha1() -> None:
    assert (weight("500m"), weight("1"), weight(30), weight("x")) == (500, 1000, 30, None)


def test_header_matches_split_only_matching_requests(tmp_path: Path) -> None:
    (tmp_path / "split.yaml").write_text("""
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: ab-test, namespace: default}
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
    methods: [GET, POST]
""")
    (vs,) = load(tmp_path).list(Kind.VIRTUAL_SERVICE)
    split, rest = vs.spec["http"]
    assert split["match"] == [
        {"headers": {"user-agent": {"regex": ".*Firefox.*"}}, "method": {"exact": "GET"}},
        {"headers": {"user-agent": {"regex": ".*Firefox.*"}}, "method": {"exact": "POST"}},
    ]
    assert rest == {"route": [{"destination": {"host": "website.default.svc.cluster.local"}}]}


def test_missing_route_group_is_reported_at_the_split(tmp_path: Path) -> None:
    (tmp_path / "split.yaml").write_text("""
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: orphan, namespace: default}
spec:
  service: website
  matches:
  - kind: HTTPRouteGroup
    name: nowhere
  backends: [{service: website-v1, weight: 1}]
""")
    store = load(tmp_path)
    (error,) = store.errors()
    assert "HTTPRouteGroup default/nowhere not found" in error.message
    assert error.line == 8
    assert store.list(Kind.VIRTUAL_SERVICE) == []


def test_udp_route_is_rejected_naming_file_line_and_reason(tmp_path: Path) -> None:
    (tmp_path / "udp.yaml").write_text("""\
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: fine, namespace: default}
spec: {matches: [{name: all, pathRegex: ".*"}]}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: UDPRoute
metadata: {name: dns, namespace: default}
spec:
  matches: {ports: [53]}
""")
    store = load(tmp_path)
    (error,) = store.errors()
    assert str(error).startswith(f"{tmp_path / 'udp.yaml'}:6: ")
    assert "UDPRoute is not supported: meshpilot's Envoy sidecars have no UDP proxying" in (
        error.message)
    assert error.key is not None and (error.key.kind, error.key.name) == ("UDPRoute", "dns")
    assert store.list(Kind.VIRTUAL_SERVICE) == []
