"""The shared registry engine: URLs, mapping rules, the catalog's diffs, staleness, aggregation.

A tiny adapter over a Python dict stands in for a real source, so the behaviour every adapter
inherits is tested once here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshpilot.model import HealthStatus, Locality, Protocol, PushRequest
from meshpilot.registry.aggregate import AggregateRegistry
from meshpilot.registry.catalog import ExternalRegistry, RegistryError
from meshpilot.registry.mapping import Instance, MappingRules, sanitize_host
from meshpilot.registry.plugins import create_registry
from meshpilot.registry.urls import RegistryUrlError, parse_registry_url


class Recorder:
    def __init__(self) -> None:
        self.requests: list[PushRequest] = []

    def config_update(self, request: PushRequest) -> None:
        self.requests.append(request)

    def take(self) -> list[PushRequest]:
        out, self.requests = self.requests, []
        return out


class DictRegistry(ExternalRegistry):
    """Reads `self.source` (service → instances) each time it is told to; fails on demand."""

    def __init__(self, url: str, updater: Recorder) -> None:
        parsed = parse_registry_url(url)
        super().__init__(parsed, updater, MappingRules.from_url(parsed, Protocol.HTTP))
        self.source: dict[str, list[Instance]] = {}
        self.failing = False
        self.poke = asyncio.Event()

    async def watch(self) -> None:
        while True:
            if self.failing:
                raise RegistryError("connection refused")
            self.catalog.replace_all(self.source)
            self.synced()
            self.poke.clear()
            await self.poke.wait()


def inst(service: str, address: str, port: int = 8080, **kw: Any) -> Instance:
    return Instance(service=service, id=f"{service}-{address}", address=address,
                    ports={"": port}, **kw)


@pytest.fixture
def updater() -> Recorder:
    return Recorder()


@pytest.fixture
async def registry(updater: Recorder) -> AsyncIterator[DictRegistry]:
    reg = DictRegistry("dict://127.0.0.1:1?meshNamespace=shop", updater)
    reg.source = {"orders": [inst("orders", "10.0.0.1"), inst("orders", "10.0.0.2")]}
    task = asyncio.create_task(reg.run())
    async with asyncio.timeout(5):
        await reg.wait_synced()
    yield reg
    task.cancel()


async def refresh(reg: DictRegistry) -> None:
    reg.poke.set()
    for _ in range(50):
        await asyncio.sleep(0.01)
        if not reg.poke.is_set():
            return


def test_urls() -> None:
    url = parse_registry_url("nacos://a:8848,b:8848/x?namespace=dev&group=G")
    assert url.hosts == (("a", 8848), ("b", 8848))
    assert (url.path, url.param("group"), url.name) == ("/x", "G", "nacos@a:8848")
    with pytest.raises(RegistryUrlError, match="needs a port"):
        parse_registry_url("consul://localhost")
    assert parse_registry_url("consul://localhost", {"consul": 8500}).hosts == (("localhost",
                                                                                 8500),)
    with pytest.raises(RegistryUrlError, match="expected scheme"):
        parse_registry_url("localhost:8500")


def test_mapping_rules() -> None:
    rules = MappingRules.from_url(parse_registry_url("consul://c:8500"), Protocol.HTTP)
    instance = Instance("Order_Service", "i1", "10.0.0.1", {"grpc-api": 9000},
                        metadata={"zone": "z1", "region": "r1"}, tags=("v2", "team=pay"))
    assert rules.hostname(instance) == "order-service.default.consul"
    assert rules.protocol(instance, "grpc-api") is Protocol.GRPC
    assert rules.labels(instance) == {"zone": "z1", "region": "r1", "tag.v2": "true",
                                      "team": "pay"}
    assert rules.locality(instance) == Locality("r1", "z1", "")
    assert sanitize_host("A..b_c") == "a.x.b-c"


async def test_services_and_endpoints(registry: DictRegistry) -> None:
    (service,) = registry.services()
    assert (service.hostname, service.namespace) == ("orders.shop.dict", "shop")
    assert [(p.name, p.number, p.protocol) for p in service.ports] == [
        ("http-8080", 8080, Protocol.HTTP)]
    endpoints = registry.endpoints("orders.shop.dict", "shop")
    assert sorted(e.address for e in endpoints) == ["10.0.0.1", "10.0.0.2"]
    assert {e.health for e in endpoints} == {HealthStatus.HEALTHY}


async def test_pushes_are_as_small_as_the_change(
    registry: DictRegistry, updater: Recorder
) -> None:
    updater.take()
    await refresh(registry)
    assert updater.take() == []  # nothing changed: no push
    registry.source["orders"].append(inst("orders", "10.0.0.3"))
    await refresh(registry)
    (eds,) = updater.take()
    assert not eds.full and eds.eds_hosts == {("shop", "orders.shop.dict")}
    registry.source["payments"] = [inst("payments", "10.0.1.1")]
    await refresh(registry)
    assert [r.full for r in updater.take()] == [True]


async def test_only_healthy_instances_unless_fallback(updater: Recorder) -> None:
    reg = DictRegistry("dict://h:1", updater)
    reg.catalog.replace("a", [inst("a", "10.0.0.1", healthy=False)])
    assert reg.endpoints("a.default.dict", "default") == []
    fallback = DictRegistry("dict://h:1?fallbackToAll=true", updater)
    fallback.catalog.replace("a", [inst("a", "10.0.0.1", healthy=False)])
    assert [e.address for e in fallback.endpoints("a.default.dict", "default")] == ["10.0.0.1"]


async def test_unreachable_source_keeps_last_known_endpoints(
    registry: DictRegistry, updater: Recorder
) -> None:
    updater.take()
    registry.failing = True
    await refresh(registry)
    for _ in range(100):
        if registry.stale:
            break
        await asyncio.sleep(0.01)
    assert registry.stale and not registry.connected
    assert "connection refused" in registry.status()["lastError"]
    assert len(registry.endpoints("orders.shop.dict", "shop")) == 2  # nothing dropped
    assert updater.take() == []  # and no push because the source blinked
    registry.failing = False
    registry.source["orders"] = registry.source["orders"][:1]
    for _ in range(300):  # the retry loop backs off 0.5 s first
        if not registry.stale:
            break
        await asyncio.sleep(0.01)
    assert not registry.stale
    assert len(registry.endpoints("orders.shop.dict", "shop")) == 1  # the source said so


def test_aggregate_merges_endpoints_and_reports_conflicts(updater: Recorder) -> None:
    high = DictRegistry("dict://a:1?priority=10&host={service}.mesh", updater)
    low = DictRegistry("dict://b:1?host={service}.mesh&protocol=tcp", updater)
    high.catalog.replace("api", [inst("api", "10.0.0.1")])
    low.catalog.replace("api", [inst("api", "10.0.0.2")])
    aggregate = AggregateRegistry([low, high])
    (service,) = aggregate.services()
    assert service.ports[0].protocol is Protocol.HTTP  # the higher priority defines it
    assert len(aggregate.conflicts()) == 1
    assert sorted(e.address for e in aggregate.endpoints("api.mesh", "default")) == [
        "10.0.0.1", "10.0.0.2"]
    exclusive = DictRegistry("dict://c:1?host={service}.mesh&merge=false", updater)
    exclusive.catalog.replace("api", [inst("api", "10.0.0.3")])
    assert [e.address for e in AggregateRegistry([high, exclusive]).endpoints(
        "api.mesh", "default")] == ["10.0.0.1"]


def test_unknown_scheme_names_the_available_ones(updater: Recorder) -> None:
    with pytest.raises(RegistryUrlError, match="no registry adapter for 'nosuch'"):
        create_registry("nosuch://h:1", updater)
    # Even when the address would not suit any scheme: the scheme is what is wrong.
    with pytest.raises(RegistryUrlError, match="no registry adapter for 'bogus'"):
        create_registry("bogus://no-port", updater)
