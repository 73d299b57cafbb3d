"""The Eureka adapter against the fake Eureka in tests/fakes/eureka.py (full fetch, deltas,
hash-code reconciliation, statuses, ports, faults, restarts)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshpilot.model import Protocol
from meshpilot.registry.eureka import EurekaRegistry, reconcile_hashcode
from meshpilot.registry.urls import parse_registry_url
from tests.fakes.eureka import FakeEureka, instance_body
from tests.registry_helpers import Pushes, addresses, eventually, running

HOST = "reviews.default.eureka"


@pytest.fixture
async def eureka() -> AsyncIterator[FakeEureka]:
    fake = FakeEureka()
    fake.register(instance_body("reviews", "10.0.0.1", 8080, metadata={"version": "v1"}))
    fake.register(instance_body("reviews", "10.0.0.2", 8080))
    fake.register(instance_body("reviews", "10.0.0.3", 8080, status="DOWN"))
    fake.register(instance_body("reviews", "10.0.0.4", 8080, status="OUT_OF_SERVICE"))
    fake.register(instance_body("billing", "10.0.1.1", 8080, port_enabled=False,
                                secure_port=8443))
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def pushes() -> AsyncIterator[Pushes]:
    recorder = Pushes()
    yield recorder
    recorder.close()


def registry(fake: FakeEureka, pushes: Pushes, query: str = "") -> EurekaRegistry:
    url = f"eureka://{fake.address}/eureka?pollInterval=0.05{query}"
    return EurekaRegistry(parse_registry_url(url), pushes)


def test_hashcode_is_eurekas() -> None:
    assert reconcile_hashcode(["UP", "DOWN", "UP", "UP"]) == "DOWN_1_UP_3_"
    assert reconcile_hashcode([]) == ""


async def test_initial_sync(eureka: FakeEureka, pushes: Pushes) -> None:
    reg = registry(eureka, pushes)
    async with running(reg):
        assert addresses(reg, HOST) == ["10.0.0.1:8080", "10.0.0.2:8080"]  # UP only
        endpoint = next(e for e in reg.endpoints(HOST, "default") if e.address == "10.0.0.1")
        assert endpoint.labels == {"version": "v1"}  # no "@class" marker
        by_host = {s.hostname: s for s in reg.services()}
        assert [(p.name, p.number) for p in by_host[HOST].ports] == [("http", 8080)]
        billing = by_host["billing.default.eureka"]  # only the secure port is enabled
        assert [(p.name, p.number, p.protocol) for p in billing.ports] == [
            ("https", 8443, Protocol.HTTPS)]
        assert all(r.headers.get("Accept") == "application/json" for r in eureka.reads())


async def test_deltas_update_the_view(eureka: FakeEureka, pushes: Pushes) -> None:
    reg = registry(eureka, pushes)
    async with running(reg):
        await eventually(lambda: reg.delta_fetches >= 1, what="a delta fetch")
        pushes.take()
        eureka.register(instance_body("reviews", "10.0.0.5", 8080))
        await eventually(lambda: "10.0.0.5:8080" in addresses(reg, HOST), what="added")
        eureka.set_status("REVIEWS", "10.0.0.1:reviews:8080", "DOWN")
        await eventually(lambda: "10.0.0.1:8080" not in addresses(reg, HOST), what="DOWN out")
        eureka.deregister("REVIEWS", "10.0.0.2:reviews:8080")
        await eventually(lambda: addresses(reg, HOST) == ["10.0.0.5:8080"], what="deleted")
        assert reg.full_fetches == 1, "every change came by delta"
        assert all(not r.full and r.eds_hosts == {("default", HOST)} for r in pushes.take())
        eureka.deregister("BILLING", "10.0.1.1:billing:8080")
        await eventually(lambda: len(reg.services()) == 1, what="billing gone")


async def test_hashcode_mismatch_forces_a_full_fetch(eureka: FakeEureka, pushes: Pushes) -> None:
    reg = registry(eureka, pushes)
    async with running(reg):
        await eventually(lambda: reg.delta_fetches >= 1, what="a delta fetch")
        # The change leaves the delta queue before the client polls: the delta is empty, but
        # the server's hash code (UP count) no longer matches the local view.
        eureka.delta_retention = 0.0
        eureka.deregister("REVIEWS", "10.0.0.2:reviews:8080")
        await eventually(lambda: reg.full_fetches >= 2, what="a full fetch")
        assert addresses(reg, HOST) == ["10.0.0.1:8080"]


async def test_disabled_deltas_fall_back_to_full_fetches(
    eureka: FakeEureka, pushes: Pushes
) -> None:
    eureka.disable_delta = True
    reg = registry(eureka, pushes)
    async with running(reg):
        eureka.register(instance_body("reviews", "10.0.0.6", 8080))
        await eventually(lambda: "10.0.0.6:8080" in addresses(reg, HOST), what="added")
        assert reg.full_fetches >= 2 and reg.delta_fetches == 0
        assert not reg.stale


@pytest.mark.parametrize("fault", ["http500", "malformed", "refused"])
async def test_faults_keep_last_known_and_reconnect(
    eureka: FakeEureka, pushes: Pushes, fault: str
) -> None:
    reg = registry(eureka, pushes)
    async with running(reg):
        pushes.take()
        if fault == "http500":
            eureka.fail_status = 500
        elif fault == "malformed":
            eureka.malformed = True
        else:
            await eureka.stop()
        await eventually(lambda: reg.stale, what="stale")
        assert addresses(reg, HOST) == ["10.0.0.1:8080", "10.0.0.2:8080"]
        failures, reads = reg.failures, len(eureka.reads())
        await eventually(lambda: reg.failures >= failures + 2, what="two more failed attempts")
        assert len(eureka.reads()) - reads <= reg.failures - failures + 1  # backoff
        assert pushes.take() == []
        eureka.fail_status, eureka.malformed = None, False
        eureka.deregister("REVIEWS", "10.0.0.1:reviews:8080")
        if fault == "refused":
            await eureka.start()
        await eventually(lambda: not reg.stale, seconds=15, what="reconnected")
        await eventually(lambda: addresses(reg, HOST) == ["10.0.0.2:8080"], what="caught up")


async def test_single_instance_json_shape(pushes: Pushes) -> None:
    """Eureka's older JSON codec writes one-element lists as the element itself."""
    reg = EurekaRegistry(parse_registry_url("eureka://127.0.0.1:1"), pushes)
    body: dict[str, Any] = {"applications": {"apps__hashcode": "UP_1_", "application": {
        "name": "A", "instance": instance_body("a", "10.0.0.1", 80)}}}
    records, code = reg._parse(body)
    assert code == "UP_1_" and [r.id for r in records] == ["10.0.0.1:a:80"]


async def test_flapping_instance_does_not_cause_a_push_storm(eureka: FakeEureka) -> None:
    pushes = Pushes(quiet=0.5)
    reg = registry(eureka, pushes)
    try:
        async with running(reg):
            pushes.take()
            flips = 30
            for i in range(flips):
                eureka.set_status("REVIEWS", "10.0.0.1:reviews:8080",
                                  "DOWN" if i % 2 == 0 else "UP")
                await asyncio.sleep(0.02)
            await eventually(lambda: len(addresses(reg, HOST)) == 2, what="settled")
            await asyncio.sleep(0.6)
            assert len(pushes.requests) <= flips
            assert len(pushes.debounced) <= 2
    finally:
        pushes.close()
