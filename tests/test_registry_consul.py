"""The Consul adapter against the fake Consul in tests/fakes/consul.py (blocking queries,
health filtering, ACLs, faults, restarts)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from meshpilot.model import Locality, Protocol
from meshpilot.registry.consul import ConsulRegistry
from meshpilot.registry.urls import parse_registry_url
from tests.fakes.consul import FakeConsul, service_body
from tests.registry_helpers import Pushes, addresses, eventually, running

HOST = "orders.default.consul"


@pytest.fixture
async def consul() -> AsyncIterator[FakeConsul]:
    fake = FakeConsul()
    fake.register(service_body("orders", "node1", "10.0.0.1", 8080, tags=["v1", "team=pay"],
                               meta={"version": "v1"}))
    fake.register(service_body("orders", "node2", "10.0.0.2", 8080,
                               service_address="10.0.1.2"))
    fake.register(service_body("orders", "node3", "10.0.0.3", 8080, status="critical"))
    fake.register(service_body("payments", "node1", "10.0.0.1", 9000, tags=["protocol=grpc"]))
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def pushes() -> AsyncIterator[Pushes]:
    recorder = Pushes()
    yield recorder
    recorder.close()


def registry(fake: FakeConsul, pushes: Pushes, query: str = "") -> ConsulRegistry:
    url = f"consul://{fake.address}?wait=1s&minInterval=0.01{query}"
    return ConsulRegistry(parse_registry_url(url), pushes)


async def test_initial_sync_maps_passing_instances(consul: FakeConsul, pushes: Pushes) -> None:
    reg = registry(consul, pushes)
    async with running(reg):
        assert sorted(s.hostname for s in reg.services()) == [
            "orders.default.consul", "payments.default.consul"]
        # node3 is critical; node2 registered its own address, node1 falls back to the node's.
        assert addresses(reg, HOST) == ["10.0.0.1:8080", "10.0.1.2:8080"]
        first = next(e for e in reg.endpoints(HOST, "default") if e.address == "10.0.0.1")
        assert first.labels == {"version": "v1", "tag.v1": "true", "team": "pay"}
        assert first.locality == Locality("dc1")
        (payments,) = [s for s in reg.services() if s.hostname.startswith("payments")]
        assert payments.ports[0].protocol is Protocol.GRPC
        health = consul.reads("/v1/health/service/orders")
        assert "passing" in health[0].query


async def test_blocking_query_carries_the_index_and_delivers_changes(
    consul: FakeConsul, pushes: Pushes
) -> None:
    reg = registry(consul, pushes)
    async with running(reg):
        await eventually(lambda: any("index" in r.query for r in consul.reads(
            "/v1/health/service/orders")), what="a blocking health query")
        blocked = [r for r in consul.reads("/v1/health/service/orders") if "index" in r.query]
        assert int(blocked[0].query["index"]) == consul.service_index["orders"]
        assert blocked[0].query["wait"] == "1000ms"
        pushes.take()
        consul.register(service_body("orders", "node4", "10.0.0.4", 8080))
        await eventually(lambda: "10.0.0.4:8080" in addresses(reg, HOST), what="new instance")
        (eds,) = await eventually(pushes.take, what="a push")
        assert not eds.full and eds.eds_hosts == {("default", HOST)}


async def test_health_changes_and_deregistration(consul: FakeConsul, pushes: Pushes) -> None:
    reg = registry(consul, pushes)
    async with running(reg):
        consul.set_check("node1", "service:orders-node1", "critical")
        await eventually(lambda: addresses(reg, HOST) == ["10.0.1.2:8080"], what="node1 out")
        consul.set_check("node1", "service:orders-node1", "passing")
        await eventually(lambda: len(addresses(reg, HOST)) == 2, what="node1 back")
        pushes.take()
        consul.deregister("node1", "payments-node1")
        await eventually(lambda: len(reg.services()) == 1, what="payments deleted")
        assert any(r.full for r in pushes.take())


async def test_fallback_to_all_when_none_passes(consul: FakeConsul, pushes: Pushes) -> None:
    for node in ("node1", "node2"):
        consul.set_check(node, f"service:orders-{node}", "critical")
    strict = registry(consul, pushes)
    async with running(strict):
        assert addresses(strict, HOST) == []
    fallback = registry(consul, pushes, "&fallbackToAll=true")
    async with running(fallback):
        assert len(addresses(fallback, HOST)) == 3
        assert "passing" not in consul.reads("/v1/health/service/orders")[-1].query


@pytest.mark.parametrize("fault", ["http500", "malformed", "refused"])
async def test_faults_keep_last_known_and_reconnect_with_backoff(
    consul: FakeConsul, pushes: Pushes, fault: str
) -> None:
    reg = registry(consul, pushes)
    async with running(reg):
        pushes.take()
        if fault == "http500":
            consul.fail_status = 500
        elif fault == "malformed":
            consul.malformed = True
        else:
            await consul.stop()
        consul.register(service_body("orders", "node9", "10.0.0.9", 8080))  # wakes long polls
        await eventually(lambda: reg.stale, what="stale")
        assert addresses(reg, HOST) == ["10.0.0.1:8080", "10.0.1.2:8080"]  # last known kept
        assert reg.status()["lastError"]
        failures, reads = reg.failures, len(consul.reads())
        await eventually(lambda: reg.failures >= failures + 2, what="two more failed attempts")
        # Backoff, not a hot loop: one request per attempt while it fails.
        assert len(consul.reads()) - reads <= reg.failures - failures + 1
        assert pushes.take() == []  # a blinking registry pushes nothing
        consul.fail_status, consul.malformed = None, False
        consul.deregister("node2", "orders-node2")  # a change made during the outage
        if fault == "refused":
            await consul.start()  # same port
        await eventually(lambda: not reg.stale, seconds=15, what="reconnected")
        await eventually(lambda: addresses(reg, HOST) == ["10.0.0.1:8080", "10.0.0.9:8080"],
                         what="the outage's changes")


async def test_index_going_backwards_starts_over(consul: FakeConsul, pushes: Pushes) -> None:
    reg = registry(consul, pushes)
    async with running(reg):
        await eventually(lambda: any("index" in r.query for r in consul.reads(
            "/v1/health/service/orders")), what="a blocking query")
        consul.reset_index(2)
        consul.register(service_body("orders", "node5", "10.0.0.5", 8080))
        # Index 3 is below what the client holds: it must reset to 0 and read afresh.
        await eventually(lambda: "10.0.0.5:8080" in addresses(reg, HOST), what="new instance")
        # The first read, and the one after the reset (which may follow the answer that
        # already carried the new instance).
        await eventually(lambda: len([r for r in consul.reads("/v1/health/service/orders")
                                      if "index" not in r.query]) >= 2,
                         what="a read without index after the reset")

async def test_acl_token_is_sent_and_enforced(consul: FakeConsul, pushes: Pushes) -> None:
    consul.acl_token = "s3cret"
    reg = registry(consul, pushes, "&token=s3cret")
    async with running(reg):
        assert addresses(reg, HOST) == ["10.0.0.1:8080", "10.0.1.2:8080"]
        assert all(r.headers.get("X-Consul-Token") == "s3cret" for r in consul.reads())
        assert "s3cret" not in str(reg.status())
    wrong = registry(consul, pushes, "&token=nope")
    async with running(wrong, synced=False):
        await eventually(lambda: "ACL not found" in wrong.status()["lastError"], what="403")
        assert not wrong.has_synced()
    anonymous = registry(consul, pushes)
    async with running(anonymous):
        assert anonymous.services() == []  # filtered by ACLs, not an error


async def test_flapping_instance_does_not_cause_a_push_storm(
    consul: FakeConsul
) -> None:
    pushes = Pushes(quiet=0.5)
    reg = registry(consul, pushes)
    try:
        async with running(reg):
            pushes.take()
            flips = 30
            for i in range(flips):
                consul.set_check("node1", "service:orders-node1",
                                 "critical" if i % 2 == 0 else "passing")
                await asyncio.sleep(0.02)
            await eventually(lambda: len(addresses(reg, HOST)) == 2, what="settled")
            await eventually(lambda: pushes.debounced, what="the debounced push")
            await asyncio.sleep(0.6)  # let any trailing debounce window close
            # The catalog pushes only real changes (at most one per flip it saw) and the
            # debounce merges the burst into one or two pushes.
            assert len(pushes.requests) <= flips
            assert 1 <= len(pushes.debounced) <= 2
    finally:
        pushes.close()
