"""Gateway API routes and Gateways, translated into Istio config (and routed as Istio's)."""

from __future__ import annotations

from pathlib import Path

from meshpilot.config.filestore import FileConfigStore
from meshpilot.config.translating import TranslatingStore
from meshpilot.model import Kind


def load(tmp_path: Path, text: str) -> TranslatingStore:
    (tmp_path / "routes.yaml").write_text(text)
    files = FileConfigStore([tmp_path])
    store = TranslatingStore(files)
    files.load()
    return store


def test_route_with_a_service_parent_is_a_mesh_virtual_service(tmp_path: Path) -> None:
    store = load(tmp_path, """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: default}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: X-Canary, value: "1"}]}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-from, value: gamma}]}
    backendRefs: [{name: reviews-v2, port: 9080}]
    timeouts: {request: 2s}
  - backendRefs:
    - {name: reviews-v1, port: 9080, weight: 90}
    - {name: reviews-v2, port: 9080, weight: 10}
""")
    (vs,) = store.list(Kind.VIRTUAL_SERVICE)
    assert vs.spec["hosts"] == ["reviews.default.svc.cluster.local"]
    assert vs.spec["gateways"] == ["mesh"]
    first, second = vs.spec["http"]
    assert first["match"] == [{"uri": {"prefix": "/api"}, "headers": {"x-canary": {"exact": "1"}}}]
    assert first["headers"] == {"request": {"set": {"x-from": "gamma"}}}
    assert first["timeout"] == "2s"
    assert [d["weight"] for d in second["route"]] == [90, 10]
    assert store.errors() == []


def test_gateway_and_bound_route(tmp_path: Path) -> None:
    store = load(tmp_path, """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 8080, protocol: HTTP}
  - {name: https, port: 8443, protocol: HTTPS, hostname: shop.example.com,
     tls: {certificateRefs: [{name: shop-cert}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: default}
spec:
  parentRefs: [{name: edge}]
  hostnames: [shop.example.com]
  rules:
  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]
""")
    (gateway,) = store.list(Kind.GATEWAY)
    assert gateway.spec["selector"] == {"gateway.networking.k8s.io/gateway-name": "edge"}
    assert gateway.spec["servers"][1]["tls"] == {"mode": "SIMPLE", "credentialName": "shop-cert"}
    (vs,) = store.list(Kind.VIRTUAL_SERVICE)
    assert vs.spec["gateways"] == ["default/gwapi-edge"]
    assert vs.spec["http"][0]["redirect"] == {"redirectCode": 301, "scheme": "https"}
    assert store.route_status["HTTPRoute default/shop"][0]["status"] == "True"


def test_missing_gateway_is_reported_in_errors_and_status(tmp_path: Path) -> None:
    store = load(tmp_path, """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: lost, namespace: default}
spec:
  parentRefs: [{name: nowhere}]
  rules: [{backendRefs: [{name: a, port: 80}]}]
""")
    (error,) = store.errors()
    assert "parent Gateway default/nowhere not found" in error.message
    assert store.route_status["HTTPRoute default/lost"] == [
        {"parent": "nowhere", "type": "Accepted", "status": "False",
         "reason": "NoMatchingParent", "message": "parent Gateway default/nowhere not found"}]


def test_foreign_objects_are_hidden_from_istio_kinds(tmp_path: Path) -> None:
    store = load(tmp_path, """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  listeners: [{name: http, port: 8080, protocol: HTTP}]
""")
    (gateway,) = store.list(Kind.GATEWAY)
    assert gateway.group == "networking.istio.io"
    assert {c.group for c in store.all()} == {"networking.istio.io", "gateway.networking.k8s.io"}


def test_istio_and_gateway_api_gateways_may_share_a_name(tmp_path: Path) -> None:
    """Two APIs, one kind name: both objects load, each under its own key."""
    store = load(tmp_path, """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: public, namespace: default}
spec:
  gatewayClassName: meshpilot
  listeners: [{name: http, port: 8080, protocol: HTTP}]
""")
    assert store.errors() == []
    assert sorted(str(c.key) for c in store.all()) == [
        "Gateway default/gwapi-public", "Gateway default/public",
        "Gateway.gateway.networking.k8s.io default/public"]
    assert sorted(c.name for c in store.list(Kind.GATEWAY)) == ["gwapi-public", "public"]
