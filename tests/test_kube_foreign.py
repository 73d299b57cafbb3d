"""SMI and Gateway API objects read from the Kubernetes API server (`--config-source kube://`)
reach the translation layer (`config/translating.py`) as file documents do: an HTTPRoute and a
TrafficSplit in the fake API server become VirtualServices. The translation's route conditions
are written back as the route's Gateway API `status.parents`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshpilot.config.kube_source import KubeConfigStore
from meshpilot.config.sources import config_source
from meshpilot.config.translating import TranslatingStore
from meshpilot.debug.routestatus import CONTROLLER_NAME
from meshpilot.kube.replicas import route_conditions
from meshpilot.kube.status import StatusWriter
from meshpilot.model import Config, Kind
from tests.fakes.kube_api import KubeApiFake, istio_object, running_api
from tests.registry_helpers import eventually


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[KubeApiFake]:
    async with running_api(tmp_path) as fake:
        yield fake


def _derived(store: TranslatingStore, name: str) -> Config | None:
    return next((c for c in store.list(Kind.VIRTUAL_SERVICE) if c.name == name), None)


async def test_routes_and_splits_from_the_api_server_are_translated(api: KubeApiFake) -> None:
    api.create("gateway.networking.k8s.io/v1", "HTTPRoute", {
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"parentRefs": [{"kind": "Service", "group": "", "name": "reviews"}],
                 "rules": [{"backendRefs": [{"name": "reviews-v1", "port": 9080, "weight": 90},
                                            {"name": "reviews-v2", "port": 9080,
                                             "weight": 10}]}]}})
    api.create("split.smi-spec.io/v1alpha2", "TrafficSplit", {
        "metadata": {"name": "website", "namespace": "default"},
        "spec": {"service": "website", "backends": [{"service": "website-v1", "weight": 3},
                                                    {"service": "website-v2", "weight": 1}]}})
    kube = config_source(f"kube://?kubeconfig={api.kubeconfig}&watchTimeout=2")
    assert isinstance(kube, KubeConfigStore)
    store = TranslatingStore(kube)
    task = asyncio.create_task(store.run())
    try:
        async with asyncio.timeout(10):
            await store.wait_synced()
        assert not {"HTTPRoute", "TrafficSplit"} & kube.missing  # served, hence watched
        route = await eventually(lambda: next(
            (c for c in store.list(Kind.VIRTUAL_SERVICE)
             if c.spec.get("hosts") == ["reviews.default.svc.cluster.local"]), None),
            5, "the HTTPRoute's VirtualService")
        assert [d["weight"] for d in route.spec["http"][0]["route"]] == [90, 10]
        split = await eventually(lambda: _derived(store, "smi-trafficsplit-website"), 5,
                                 "the TrafficSplit's VirtualService")
        routes = split.spec.get("http") or split.spec.get("tcp")
        assert [d["weight"] for d in routes[0]["route"]] == [3, 1]
        # A change in the API server follows through the translation.
        current = api.get("split.smi-spec.io/v1alpha2", "TrafficSplit", "default", "website")
        assert current is not None
        api.update("split.smi-spec.io/v1alpha2", "TrafficSplit", {**current, "spec": {
            **current["spec"], "backends": [{"service": "website-v1", "weight": 0},
                                            {"service": "website-v2", "weight": 1}]}})

        def weights() -> list[int]:
            vs = _derived(store, "smi-trafficsplit-website")
            found = (vs.spec.get("http") or vs.spec.get("tcp")) if vs else None
            return [d["weight"] for d in found[0]["route"]] if found else []

        await eventually(lambda: weights() == [0, 1], 5, "the updated split")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


GW = "gateway.networking.k8s.io/v1"


def _parents(api: KubeApiFake, name: str) -> list[dict[str, Any]]:
    obj = api.get(GW, "HTTPRoute", "default", name)
    return list(((obj or {}).get("status") or {}).get("parents") or [])


def _conditions(parent: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in parent["conditions"]}


async def test_route_conditions_are_written_to_status_parents(api: KubeApiFake) -> None:
    api.create(GW, "Gateway", {
        "metadata": {"name": "edge", "namespace": "default"},
        "spec": {"gatewayClassName": "meshpilot",
                 "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}})
    api.create(GW, "HTTPRoute", {
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {"parentRefs": [{"name": "edge", "sectionName": "http"}, {"name": "nowhere"}],
                 "rules": [{"backendRefs": [{"name": "shop", "port": 80}]}]}})
    # Another controller's entry is left alone.
    foreign = {"parentRef": {"name": "edge"}, "controllerName": "example.com/other",
               "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                               "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}]}
    route = api.get(GW, "HTTPRoute", "default", "shop")
    assert route is not None
    api.update(GW, "HTTPRoute", {**route, "status": {"parents": [foreign]}}, manager="other",
               status=True)
    api.create(*istio_object("VirtualService", "plain", {
        "hosts": ["plain"], "http": [{"route": [{"destination": {"host": "plain"}}]}]}))
    kube = config_source(f"kube://?kubeconfig={api.kubeconfig}&watchTimeout=2")
    assert isinstance(kube, KubeConfigStore)
    translating = TranslatingStore(kube)
    writer = StatusWriter(kube, None, resync=0.5, settle=0.05,
                          routes=route_conditions(translating))
    tasks = [asyncio.create_task(translating.run()), asyncio.create_task(writer.run())]
    try:
        await eventually(lambda: len(_parents(api, "shop")) == 3, 5, "status.parents")
        other, edge, nowhere = _parents(api, "shop")
        assert other == foreign
        assert edge["parentRef"] == {"name": "edge", "sectionName": "http"}
        assert edge["controllerName"] == nowhere["controllerName"] == CONTROLLER_NAME
        assert _conditions(edge) == {"Accepted": ("True", "Accepted"),
                                     "ResolvedRefs": ("True", "ResolvedRefs")}
        assert _conditions(nowhere) == {"Accepted": ("False", "NoMatchingParent")}
        assert all(c["observedGeneration"] == 1 and c["lastTransitionTime"]
                   for c in edge["conditions"] + nowhere["conditions"])
        # Istio kinds keep Istio's status; the Gateway API Gateway gets none.
        vs = api.get("networking.istio.io/v1", "VirtualService", "default", "plain")
        assert vs is not None and vs["status"]["conditions"][0]["type"] == "Reconciled"
        assert api.writes_of("Gateway", "update/status") == []
        # Settled: its own writes come back as events and change nothing more.
        writes = len(api.writes_of("HTTPRoute", "update/status"))
        await asyncio.sleep(1.2)
        assert len(api.writes_of("HTTPRoute", "update/status")) == writes

        # The route drops the missing parent: its entry goes, edge's conditions keep their
        # transition time and carry the new generation.
        before = {c["type"]: c["lastTransitionTime"] for c in edge["conditions"]}
        current = api.get(GW, "HTTPRoute", "default", "shop")
        assert current is not None
        api.update(GW, "HTTPRoute", {**current, "spec": {
            **current["spec"], "parentRefs": [{"name": "edge", "sectionName": "http"}]}})
        await eventually(lambda: [p["parentRef"]["name"] for p in _parents(api, "shop")]
                         == ["edge", "edge"]
                         and _parents(api, "shop")[1]["conditions"][0]["observedGeneration"]
                         == 2, 5, "the new generation's status")
        edge = _parents(api, "shop")[1]
        assert {c["type"]: c["lastTransitionTime"] for c in edge["conditions"]} == before
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
