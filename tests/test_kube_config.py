"""The Kubernetes config store (`--config-source kube://…`) and status write-back, against the
fake API server: every admitted kind listed and watched, validation as for files with the
last good version kept, and `status` written through the status subresource by the leader."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from meshpilot.analysis.message import Message
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import Collection, Resource
from meshpilot.analysis.server import Report
from meshpilot.config.composite import CompositeStore
from meshpilot.config.kinds import SUPPORTED_KINDS
from meshpilot.config.kube_source import KubeConfigStore
from meshpilot.config.sources import config_source
from meshpilot.config.store import Event, MemoryStore
from meshpilot.kube.client import KubeOptions
from meshpilot.kube.leader import LeaderElector
from meshpilot.kube.status import StatusWriter
from meshpilot.model import Config, ConfigKey
from tests.fakes.kube_api import KubeApiFake, istio_object, running_api
from tests.registry_helpers import eventually

NET = "networking.istio.io/v1"

VALID_VS = {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}
INVALID_VS = {"hosts": ["reviews"], "http": [{"route": [
    {"destination": {"host": "reviews"}, "weight": -1}]}]}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[KubeApiFake]:
    async with running_api(tmp_path) as fake:
        yield fake


@asynccontextmanager
async def running_store(api: KubeApiFake, extra: str = "") -> AsyncIterator[KubeConfigStore]:
    store = config_source(f"kube://?kubeconfig={api.kubeconfig}&watchTimeout=2{extra}")
    assert isinstance(store, KubeConfigStore)
    task = asyncio.create_task(store.run())
    try:
        async with asyncio.timeout(10):
            await store.wait_synced()
        yield store
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_every_admitted_kind_is_watched() -> None:
    store = KubeConfigStore(KubeOptions.from_url("kube://"))
    assert set(store.informers) == {k.kind for k in SUPPORTED_KINDS}
    assert store.resources["VirtualService"].path("ns") == \
        "/apis/networking.istio.io/v1/namespaces/ns/virtualservices"


async def test_objects_of_every_kind_become_configs(api: KubeApiFake) -> None:
    api.create(*istio_object("VirtualService", "reviews", VALID_VS, labels={"team": "a"}))
    api.create(*istio_object("ServiceEntry", "ext", {
        "hosts": ["api.example.com"], "ports": [{"number": 443, "name": "tls",
                                                 "protocol": "TLS"}],
        "resolution": "DNS"}))
    api.create(*istio_object("DestinationRule", "reviews", {
        "host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}))
    api.create(*istio_object("PeerAuthentication", "default", {"mtls": {"mode": "STRICT"}},
                             namespace="istio-system", group="security.istio.io"))
    async with running_store(api) as store:
        kinds = sorted(c.kind for c in store.all())
        assert kinds == ["DestinationRule", "PeerAuthentication", "ServiceEntry",
                         "VirtualService"]
        vs = store.get(ConfigKey("VirtualService", "default", "reviews"))
        assert vs is not None and vs.labels == {"team": "a"} and vs.version == "v1"
        assert vs.spec == VALID_VS and vs.resource_version
        assert store.errors() == []


async def test_invalid_objects_are_reported_and_the_last_good_version_serves(
    api: KubeApiFake,
) -> None:
    api.create(*istio_object("VirtualService", "reviews", VALID_VS))
    api.create(*istio_object("VirtualService", "broken", {**VALID_VS, "bogus": 1}))
    async with running_store(api) as store:
        events: list[Event] = []
        store.register_handler(lambda old, new, event: events.append(event))
        (error,) = store.errors()
        assert error.key == ConfigKey("VirtualService", "default", "broken")
        assert error.field == "spec.bogus"
        assert store.get(ConfigKey("VirtualService", "default", "broken")) is None
        obj = api.get(NET, "VirtualService", "default", "reviews")
        assert obj is not None
        api.update(NET, "VirtualService", {**obj, "spec": INVALID_VS})
        await eventually(lambda: len(store.errors()) == 2, 5, "the rejection")
        rejected = [e for e in store.errors() if e.key and e.key.name == "reviews"]
        assert rejected[0].field.startswith("spec.http[0].route")
        kept = store.get(ConfigKey("VirtualService", "default", "reviews"))
        assert kept is not None and kept.spec == VALID_VS
        assert events == []
        obj = api.get(NET, "VirtualService", "default", "reviews")
        assert obj is not None
        fixed = {**VALID_VS, "hosts": ["reviews", "reviews.default"]}
        api.update(NET, "VirtualService", {**obj, "spec": fixed})
        await eventually(lambda: events == [Event.UPDATE], 5, "the fixed version")
        api.delete(NET, "VirtualService", "default", "broken")
        await eventually(lambda: store.errors() == [], 5, "the broken object gone")


async def test_status_only_changes_fire_nothing_and_deletions_delete(api: KubeApiFake) -> None:
    api.create(*istio_object("VirtualService", "reviews", VALID_VS))
    async with running_store(api) as store:
        events: list[Event] = []
        store.register_handler(lambda old, new, event: events.append(event))
        obj = api.get(NET, "VirtualService", "default", "reviews")
        assert obj is not None
        api._update(api.type_of(NET, "VirtualService"), "default", "reviews",
                    {**obj, "status": {"observedGeneration": 1}}, "test", "test", status=True)
        await eventually(lambda: store.changed.is_set(), 5, "the status event")
        await asyncio.sleep(0.2)
        assert events == []
        api.delete(NET, "VirtualService", "default", "reviews")
        await eventually(lambda: events == [Event.DELETE], 5, "the deletion")


async def test_the_last_config_stays_while_the_api_server_is_away(api: KubeApiFake) -> None:
    api.create(*istio_object("VirtualService", "reviews", VALID_VS))
    async with running_store(api) as store:
        composite = CompositeStore([MemoryStore("files"), store])
        await api.stop()
        await eventually(lambda: any("unreachable" in e.message for e in composite.errors()),
                         10, "the outage reported")
        assert store.get(ConfigKey("VirtualService", "default", "reviews")) is not None
        api.delete(NET, "VirtualService", "default", "reviews")
        await api.start()
        await eventually(lambda: store.all() == [] and composite.errors() == [], 15,
                         "the deletion seen after reconnecting")


# --- Status write-back ----------------------------------------------------------------------


@dataclass
class _Analysis:
    """Stands in for the server's analysis: a report, and a counter of runs."""

    report: Report | None = None
    runs: int = 0
    _done: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(self, messages: tuple[Message, ...]) -> None:
        by_resource: dict[str, tuple[Message, ...]] = {}
        for message in messages:
            by_resource[message.origin] = (*by_resource.get(message.origin, ()), message)
        self.report = Report("v1", 0.0, 0.0, messages, by_resource)
        self.runs += 1
        self._done.set()

    async def wait_for_run(self, count: int) -> Report:
        while self.runs < count:
            self._done.clear()
            await self._done.wait()
        assert self.report is not None
        return self.report


def _not_found(name: str) -> Message:
    resource = Resource(Collection("networking.istio.io", "VirtualService"), "v1", name,
                        "default", {})
    return Message(message_type("ReferencedResourceNotFound"),
                   ("host", "reviews.default.svc.cluster.local"), resource)


def _status(api: KubeApiFake, name: str) -> dict[str, Any]:
    obj = api.get(NET, "VirtualService", "default", name)
    return dict((obj or {}).get("status") or {})


def _reconciled(api: KubeApiFake, name: str) -> dict[str, Any]:
    return next((c for c in _status(api, name).get("conditions") or []
                 if c["type"] == "Reconciled"), {})


async def test_status_carries_validation_and_analysis_messages(api: KubeApiFake) -> None:
    api.create(*istio_object("VirtualService", "good", VALID_VS))
    api.create(*istio_object("VirtualService", "bad", INVALID_VS))
    analysis = _Analysis()
    async with running_store(api) as store:
        writer = StatusWriter(store, analysis, identity="replica-a", resync=5)  # type: ignore[arg-type]
        task = asyncio.create_task(writer.run())
        try:
            await eventually(lambda: _reconciled(api, "good").get("status") == "True", 5,
                             "good reconciled")
            await eventually(lambda: _reconciled(api, "bad").get("status") == "False", 5,
                             "bad rejected")
            bad = _status(api, "bad")
            assert bad["observedGeneration"] == 1
            (message,) = bad["validationMessages"]
            assert message["type"]["code"] == "IST0106" and message["level"] == "ERROR"
            assert "spec.http[0].route" in message["message"]
            assert message["documentationUrl"].endswith("/ist0106/")
            analysis.publish((_not_found("good"),))
            await eventually(lambda: _status(api, "good").get("validationMessages"), 5,
                             "the analysis message")
            (found,) = _status(api, "good")["validationMessages"]
            assert found["type"] == {"code": "IST0101", "name": "ReferencedResourceNotFound"}
            # Written through the subresource, by this writer, and only while something changed.
            writes = api.writes_of("VirtualService", "update/status")
            assert writes and all(w.user_agent == "meshpilot-discovery/replica-a"
                                  for w in writes)
            settled = len(writes)
            store.changed.set()
            await asyncio.sleep(0.6)
            assert len(api.writes_of("VirtualService", "update/status")) == settled
            obj = api.get(NET, "VirtualService", "default", "bad")
            assert obj is not None
            api.update(NET, "VirtualService", {**obj, "spec": VALID_VS})
            await eventually(lambda: _reconciled(api, "bad").get("status") == "True", 5,
                             "bad fixed")
            assert _status(api, "bad")["observedGeneration"] == 2
            assert "validationMessages" not in _status(api, "bad")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_only_the_leader_writes_status(api: KubeApiFake) -> None:
    api.create(*istio_object("VirtualService", "good", VALID_VS))
    options = KubeOptions(kubeconfig=api.kubeconfig)
    electors = [LeaderElector(options, name="discovery", identity=who, lease_duration=3,
                              renew_deadline=2, retry_period=0.2) for who in ("a", "b")]
    async with running_store(api) as store:
        tasks = [asyncio.create_task(e.run()) for e in electors]
        writers = [StatusWriter(store, None, elector=e, resync=0.5) for e in electors]
        tasks += [asyncio.create_task(w.run()) for w in writers]
        try:
            leader = await eventually(lambda: next((e for e in electors if e.is_leader), None),
                                      10, "a leader")
            await eventually(lambda: _reconciled(api, "good"), 5, "status written")
            (write,) = api.writes_of("VirtualService", "update/status")
            assert write.user_agent == f"meshpilot-discovery/{leader.identity}"
            # The leader steps down (it stops; its Lease is released): the other writes next.
            index = electors.index(leader)
            tasks[index].cancel()
            await asyncio.gather(tasks[index], return_exceptions=True)
            follower = electors[1 - index]
            await eventually(lambda: follower.is_leader, 10, "the follower leading")
            obj = api.get(NET, "VirtualService", "default", "good")
            assert obj is not None
            api.update(NET, "VirtualService", {**obj, "spec": INVALID_VS})
            await eventually(lambda: _reconciled(api, "good").get("status") == "False", 5,
                             "status from the new leader")
            last = api.writes_of("VirtualService", "update/status")[-1]
            assert last.user_agent == f"meshpilot-discovery/{follower.identity}"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def test_configs_have_no_file_origin() -> None:
    assert Config("VirtualService", "n", "default", {}).origin == ""


def test_sources_by_scheme_and_kube_sources_inside_wrappers() -> None:
    from meshpilot.config.mcp_source import McpConfigStore
    from meshpilot.kube.replicas import kube_stores

    kube = config_source("kube://?kubeconfig=/nowhere")
    assert isinstance(kube, KubeConfigStore)
    assert isinstance(config_source("xds://127.0.0.1:1"), McpConfigStore)
    with pytest.raises(ValueError):
        config_source("http://x")

    class Wrapper:
        inner = CompositeStore([MemoryStore("files"), kube])

    assert kube_stores(Wrapper()) == [kube]  # type: ignore[arg-type]
