"""The Nacos adapter against the fake Nacos in tests/fakes/nacos.py (v1, v2 and v3 APIs,
namespaces, groups, health, weights, clusters, paging, faults, restarts)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from meshpilot.model import Locality
from meshpilot.registry.nacos import NacosRegistry
from meshpilot.registry.urls import parse_registry_url
from tests.fakes.nacos import FakeNacos
from tests.registry_helpers import Pushes, addresses, eventually, running

HOST = "orders.default.nacos"


@pytest.fixture
async def nacos() -> AsyncIterator[FakeNacos]:
    fake = FakeNacos()
    fake.register("orders", "10.0.0.1", 8080, namespace="dev", weight=1.0, cluster="SH",
                  metadata={"version": "v1"})
    fake.register("orders", "10.0.0.2", 8080, namespace="dev", weight=0.5)
    fake.register("orders", "10.0.0.3", 8080, namespace="dev", healthy=False)
    fake.register("orders", "10.0.0.4", 8080, namespace="dev", enabled=False)
    fake.register("orders", "10.0.0.5", 8080, namespace="dev", weight=0.0)
    fake.register("orders", "10.0.0.6", 8080, namespace="dev", ephemeral=False)
    fake.register("payments", "10.0.1.1", 9000, namespace="dev", weight=2.0)
    fake.register("payments", "10.0.1.2", 9000, namespace="dev", weight=3.0)
    fake.register("orders", "10.9.0.1", 8080, namespace="prod")  # another namespace
    fake.register("orders", "10.8.0.1", 8080, namespace="dev", group="OTHER")  # another group
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def pushes() -> AsyncIterator[Pushes]:
    recorder = Pushes()
    yield recorder
    recorder.close()


def registry(fake: FakeNacos, pushes: Pushes, query: str = "") -> NacosRegistry:
    url = f"nacos://{fake.address}?namespace=dev&pollInterval=0.05{query}"
    return NacosRegistry(parse_registry_url(url), pushes)


@pytest.mark.parametrize("api", ["v1", "v2", "v3"])
async def test_initial_sync(nacos: FakeNacos, pushes: Pushes, api: str) -> None:
    reg = registry(nacos, pushes, f"&api={api}")
    async with running(reg):
        assert sorted(s.hostname for s in reg.services()) == [HOST, "payments.default.nacos"]
        # healthy, enabled and weighted only; the persistent (ephemeral=false) one too
        assert addresses(reg, HOST) == ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.6:8080"]
        by_address = {e.address: e for e in reg.endpoints(HOST, "default")}
        assert (by_address["10.0.0.1"].weight, by_address["10.0.0.2"].weight) == (10, 5)
        assert by_address["10.0.0.1"].labels == {
            "version": "v1", "nacos.cluster": "SH", "nacos.group": "DEFAULT_GROUP",
            "nacos.ephemeral": "true"}
        assert by_address["10.0.0.6"].labels["nacos.ephemeral"] == "false"
        weights = sorted(e.weight for e in reg.endpoints("payments.default.nacos", "default"))
        assert weights == [2, 3]  # whole weights stay as they are
        prefix = {"v1": "/nacos/v1/", "v2": "/nacos/v2/", "v3": "/nacos/v3/"}[api]
        assert nacos.reads() and all(r.path.startswith(prefix) for r in nacos.reads())
        assert all(r.query["namespaceId"] == "dev" for r in nacos.reads())


async def test_groups_clusters_and_ephemeral_filter(nacos: FakeNacos, pushes: Pushes) -> None:
    reg = registry(nacos, pushes, "&group=DEFAULT_GROUP,OTHER&host={service}.{group}.nacos"
                   "&clusterAs=zone&ephemeral=true")
    async with running(reg):
        assert addresses(reg, "orders.other.nacos") == ["10.8.0.1:8080"]
        assert addresses(reg, "orders.default-group.nacos") == ["10.0.0.1:8080",
                                                               "10.0.0.2:8080"]
        zones = {e.address: e.locality for e in reg.endpoints("orders.default-group.nacos",
                                                              "default")}
        assert zones["10.0.0.1"] == Locality("", "SH")


async def test_polls_follow_changes(nacos: FakeNacos, pushes: Pushes) -> None:
    reg = registry(nacos, pushes)
    async with running(reg):
        pushes.take()
        nacos.register("orders", "10.0.0.7", 8080, namespace="dev")
        await eventually(lambda: "10.0.0.7:8080" in addresses(reg, HOST), what="added")
        nacos.update("orders", "10.0.0.1", 8080, namespace="dev", healthy=False)
        await eventually(lambda: "10.0.0.1:8080" not in addresses(reg, HOST), what="unhealthy")
        nacos.deregister("payments", "10.0.1.1", 9000, namespace="dev")
        nacos.deregister("payments", "10.0.1.2", 9000, namespace="dev")
        await eventually(lambda: len(reg.services()) == 1, what="payments gone")
        requests = pushes.take()
        assert [r.full for r in requests].count(True) == 1  # only the deletion was full


async def test_paging(nacos: FakeNacos, pushes: Pushes) -> None:
    for i in range(5):
        nacos.register(f"svc{i}", f"10.0.2.{i}", 80, namespace="dev")
    reg = registry(nacos, pushes, "&pageSize=2")
    async with running(reg):
        assert len(reg.services()) == 7
        pages = {r.query["pageNo"] for r in nacos.reads("/nacos/v2/ns/service/list")}
        assert pages == {"1", "2", "3", "4"}


@pytest.mark.parametrize("fault", ["http500", "malformed", "refused"])
async def test_faults_keep_last_known_and_reconnect(
    nacos: FakeNacos, pushes: Pushes, fault: str
) -> None:
    reg = registry(nacos, pushes)
    async with running(reg):
        pushes.take()
        if fault == "http500":
            nacos.fail_status = 500
        elif fault == "malformed":
            nacos.malformed = True
        else:
            await nacos.stop()
        await eventually(lambda: reg.stale, what="stale")
        assert len(addresses(reg, HOST)) == 3
        failures, reads = reg.failures, len(nacos.reads())
        await eventually(lambda: reg.failures >= failures + 2, what="two more failed attempts")
        assert len(nacos.reads()) - reads <= reg.failures - failures + 1  # backoff
        assert pushes.take() == []
        nacos.fail_status, nacos.malformed = None, False
        nacos.deregister("orders", "10.0.0.6", 8080, namespace="dev")
        if fault == "refused":
            await nacos.start()
        await eventually(lambda: not reg.stale, seconds=15, what="reconnected")
        await eventually(lambda: len(addresses(reg, HOST)) == 2, what="caught up")


async def test_flapping_instance_does_not_cause_a_push_storm(nacos: FakeNacos) -> None:
    pushes = Pushes(quiet=0.5)
    reg = registry(nacos, pushes)
    try:
        async with running(reg):
            pushes.take()
            flips = 30
            for i in range(flips):
                nacos.update("orders", "10.0.0.1", 8080, namespace="dev", healthy=i % 2 == 1)
                await asyncio.sleep(0.02)
            await eventually(lambda: len(addresses(reg, HOST)) == 3, what="settled")
            await asyncio.sleep(0.6)
            assert len(pushes.requests) <= flips
            assert len(pushes.debounced) <= 2
    finally:
        pushes.close()
