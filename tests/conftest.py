"""Shared fixtures: an in-process discovery server over a memory store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from meshpilot.config.store import MemoryStore
from meshpilot.registry.aggregate import AggregateRegistry
from meshpilot.registry.serviceentry import ServiceEntryRegistry
from meshpilot.xds.discovery import DebounceSettings, DiscoveryServer
from meshpilot.xds.server import start_grpc_server
from tests.registry_servers import etcd_server, zookeeper_server  # noqa: F401 (fixtures)


@dataclass
class Harness:
    store: MemoryStore
    server: DiscoveryServer
    port: int

    async def settle(self) -> None:
        """Wait until every change made so far has been pushed."""
        target = self.server.push_count + 1
        async with asyncio.timeout(5):
            await self.server.wait_for_push(target)


@pytest.fixture
async def xds() -> AsyncIterator[Harness]:
    store = MemoryStore()
    aggregate = AggregateRegistry()
    server = DiscoveryServer(store, aggregate, DebounceSettings(quiet=0.02, max_delay=0.5))
    aggregate.add(ServiceEntryRegistry(store, server))
    grpc_server, port = await start_grpc_server(server, "127.0.0.1:0")
    task = asyncio.create_task(server.run())
    try:
        yield Harness(store, server, port)
    finally:
        task.cancel()
        await grpc_server.stop(grace=None)
