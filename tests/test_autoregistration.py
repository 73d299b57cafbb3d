"""WorkloadGroup auto-registration through a real ADS stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from meshpilot.config.store import MemoryStore
from meshpilot.model import Config, Kind
from meshpilot.registry.aggregate import AggregateRegistry
from meshpilot.registry.autoregistration import AutoRegistration
from meshpilot.registry.serviceentry import ServiceEntryRegistry
from meshpilot.xds.discovery import DebounceSettings, DiscoveryServer
from meshpilot.xds.server import start_grpc_server
from tests.configs import service_entry
from tests.xds_client import CLUSTER, AdsClient, make_node

HOST = "vm-app.default.svc.cluster.local"


@pytest.fixture
async def server() -> AsyncIterator[tuple[DiscoveryServer, int]]:
    store = MemoryStore()
    store.apply(service_entry("vm-app", [HOST], selector={"app": "vm-app"}))
    store.apply(Config(Kind.WORKLOAD_GROUP, "vms", "default", {
        "metadata": {"labels": {"app": "vm-app"}},
        "template": {"ports": {"http": 8080}, "serviceAccount": "vm"},
    }))
    store.mark_synced()
    aggregate = AggregateRegistry()
    discovery = DiscoveryServer(store, aggregate, DebounceSettings(quiet=0.01, max_delay=0.2))
    discovery.autoregistration = AutoRegistration(store, grace_seconds=0.3)
    aggregate.add(ServiceEntryRegistry(store, discovery,
                                       more_stores=[discovery.autoregistration.store]))
    grpc_server, port = await start_grpc_server(discovery, "127.0.0.1:0")
    task = asyncio.create_task(discovery.run())
    yield discovery, port
    task.cancel()
    await grpc_server.stop(grace=None)


async def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_a_proxy_naming_a_group_becomes_an_endpoint_until_it_leaves(
    server: tuple[DiscoveryServer, int],
) -> None:
    discovery, port = server
    node = make_node(workload="vm-1", labels={"version": "v1"}, ips="127.0.5.1")
    node.metadata.update({"AUTO_REGISTER_GROUP": "vms"})
    client = AdsClient(port, node=node)
    await client.request(CLUSTER)

    def endpoints() -> list[tuple[str, int, str]]:
        return [(e.address, e.port, e.labels.get("version", ""))
                for e in discovery.registry.endpoints(HOST, "default")]

    await eventually(lambda: endpoints() == [("127.0.5.1", 8080, "v1")])
    entry = discovery.autoregistration.store.all()  # type: ignore[union-attr]
    assert [c.name for c in entry] == ["vms-127.0.5.1"]
    assert entry[0].spec["serviceAccount"] == "vm"
    await client.close()
    await eventually(lambda: endpoints() == [])


async def test_reconnecting_within_the_grace_period_keeps_the_endpoint(
    server: tuple[DiscoveryServer, int],
) -> None:
    discovery, port = server
    node = make_node(workload="vm-2", labels={"app": "vm-app"}, ips="127.0.5.2")
    node.metadata.update({"AUTO_REGISTER_GROUP": "vms"})
    first = AdsClient(port, node=node)
    await first.request(CLUSTER)
    await eventually(lambda: discovery.registry.endpoints(HOST, "default") != [])
    await first.close()
    again = AdsClient(port, node=node)
    await again.request(CLUSTER)
    await asyncio.sleep(0.6)  # past the grace period: the entry must still be there
    assert [e.address for e in discovery.registry.endpoints(HOST, "default")] == ["127.0.5.2"]
    await again.close()


async def test_unknown_group_registers_nothing(server: tuple[DiscoveryServer, int]) -> None:
    discovery, port = server
    node = make_node(workload="vm-3", ips="127.0.5.3")
    node.metadata.update({"AUTO_REGISTER_GROUP": "nope"})
    client = AdsClient(port, node=node)
    await client.request(CLUSTER)
    assert discovery.autoregistration.store.all() == []  # type: ignore[union-attr]
    await client.close()
