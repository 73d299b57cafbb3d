"""`/debug/routestatus`: Gateway API routes' status as the API shapes it, over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from meshpilot.config.filestore import FileConfigStore
from meshpilot.config.translating import TranslatingStore
from meshpilot.debug.http import start_debug_server
from meshpilot.registry.aggregate import AggregateRegistry
from meshpilot.xds.discovery import DebounceSettings, DiscoveryServer

ROUTES = """
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
  parentRefs: [{name: edge}, {name: nowhere}]
  rules: [{backendRefs: [{name: shop, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: odd, namespace: default}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: bucket, kind: S3Bucket}]}]
"""


async def test_routestatus_reports_conditions_per_parent(tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(ROUTES)
    files = FileConfigStore([tmp_path])
    store = TranslatingStore(files)
    files.load()
    server = DiscoveryServer(store, AggregateRegistry(), DebounceSettings(quiet=0.02,
                                                                          max_delay=0.5))
    runner = await start_debug_server(server, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{host}:{port}/debug/routestatus") as response:
                assert response.status == 200
                found = json.loads(await response.text())
            async with session.get(f"http://{host}:{port}/debug/list") as response:
                assert "/debug/routestatus" in json.loads(await response.text())
    finally:
        await runner.cleanup()

    def conditions(route: str, parent: str) -> list[tuple[str, str, str]]:
        (entry,) = [p for p in found[route]["status"]["parents"]
                    if p["parentRef"]["name"] == parent]
        assert entry["controllerName"] == "meshpilot.io/gateway-controller"
        return [(c["type"], c["status"], c["reason"]) for c in entry["conditions"]]

    assert conditions("HTTPRoute default/shop", "edge") == [
        ("Accepted", "True", "Accepted"), ("ResolvedRefs", "True", "ResolvedRefs")]
    assert conditions("HTTPRoute default/shop", "nowhere") == [
        ("Accepted", "False", "NoMatchingParent")]
    assert conditions("HTTPRoute default/odd", "edge") == [
        ("Accepted", "False", "UnsupportedValue"), ("ResolvedRefs", "False", "InvalidKind")]
    (odd,) = found["HTTPRoute default/odd"]["status"]["parents"]
    assert odd["conditions"][1]["message"] == "backendRef kind 'S3Bucket' is not supported"
