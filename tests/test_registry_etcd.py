"""The etcd adapter against a real etcd server (Debian's etcd-server, started by the session).

Instances are written the way their frameworks write them: go-micro and Kratos put one JSON
value per instance under a lease; the plain JSON layout is ours. Each test uses a prefix of its
own, so tests share the server without seeing each other's keys.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aetcd
import pytest

from meshpilot.model import Protocol
from meshpilot.registry.etcd import EtcdRegistry
from meshpilot.registry.plugins import create_registry
from meshpilot.registry.urls import RegistryUrlError, parse_registry_url
from tests.registry_servers import EtcdServer, Recorder, eventually


def go_micro_value(name: str, node_id: str, address: str, version: str = "latest",
                   **node_meta: str) -> bytes:
    """What go-micro's etcd registry stores for one node (registry.Service with one node)."""
    return json.dumps({
        "name": name,
        "version": version,
        "metadata": {"team": "greeting"},
        "endpoints": [{"name": "Greeter.Hello", "request": {"name": "Request", "type": "Request"},
                       "response": {"name": "Response", "type": "Response"}, "metadata": {}}],
        "nodes": [{"id": node_id, "address": address, "metadata": {
            "broker": "http", "protocol": "grpc", "registry": "etcd", "server": "grpc",
            "transport": "grpc", **node_meta}}],
    }).encode()


def kratos_value(name: str, ident: str, http: str, grpc: str, version: str = "v1") -> bytes:
    """What Kratos' etcd registry stores for one instance (registry.ServiceInstance)."""
    return json.dumps({
        "id": ident, "name": name, "version": version, "metadata": {"region": "eu"},
        "endpoints": [f"http://{http}?isSecure=false", f"grpc://{grpc}?isSecure=false"],
    }).encode()


class Running:
    def __init__(self, registry: EtcdRegistry, updater: Recorder, prefix: str) -> None:
        self.registry = registry
        self.updater = updater
        self.prefix = prefix

    def addresses(self, host: str) -> list[str]:
        return sorted(f"{e.address}:{e.port}" for e in self.registry.endpoints(host, "default"))


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[Any]:
    client = aetcd.Client("127.0.0.1", etcd_server.port, timeout=5)
    yield client
    await client.close()


async def start(etcd_server: EtcdServer, query: str, prefix: str) -> Running:
    updater = Recorder()
    url = f"etcd://{etcd_server.address}?prefix={prefix}&{query}"
    registry = create_registry(url, updater)
    assert isinstance(registry, EtcdRegistry)
    task = asyncio.create_task(registry.run())
    running = Running(registry, updater, prefix)
    running.task = task  # type: ignore[attr-defined]
    async with asyncio.timeout(10):
        await registry.wait_synced()
    return running


@pytest.fixture
async def stop_tasks() -> AsyncIterator[list[Running]]:
    started: list[Running] = []
    yield started
    for running in started:
        running.task.cancel()  # type: ignore[attr-defined]


def unique(root: str) -> str:
    return f"/t-{uuid.uuid4().hex[:8]}{root}"


async def test_go_micro_instances_with_leases(
    etcd_server: EtcdServer, etcd: Any, stop_tasks: list[Running]
) -> None:
    prefix = unique("/micro/registry/")
    lease = await etcd.lease(30)
    await etcd.put(f"{prefix}greeter/greeter-1".encode(),
                   go_micro_value("greeter", "greeter-1", "10.0.0.1:9000"), lease=lease)
    run = await start(etcd_server, "layout=go-micro", prefix)
    stop_tasks.append(run)
    (service,) = run.registry.services()
    assert service.hostname == "greeter.default.etcd"
    assert [(p.number, p.protocol) for p in service.ports] == [(9000, Protocol.GRPC)]
    (endpoint,) = run.registry.endpoints("greeter.default.etcd", "default")
    assert (endpoint.address, endpoint.port, endpoint.workload_name) == (
        "10.0.0.1", 9000, "greeter-1")
    assert endpoint.labels["version"] == "latest" and endpoint.labels["team"] == "greeting"

    # A second node registers under its own lease, then changes its metadata (an EDS update).
    second = await etcd.lease(30)
    key2 = f"{prefix}greeter/greeter-2".encode()
    await etcd.put(key2, go_micro_value("greeter", "greeter-2", "10.0.0.2:9000"), lease=second)
    await eventually(lambda: run.addresses("greeter.default.etcd") == [
        "10.0.0.1:9000", "10.0.0.2:9000"], what="the second node")
    run.updater.take()
    await etcd.put(key2, go_micro_value("greeter", "greeter-2", "10.0.0.2:9000", zone="z2"),
                   lease=second)
    await eventually(lambda: any(e.labels.get("zone") == "z2" for e in run.registry.endpoints(
        "greeter.default.etcd", "default")), what="the new metadata")
    assert [r.full for r in run.updater.take()] == [False]

    # Deregistration as go-micro does it: delete the key. Then a lease expires (a crashed node).
    await etcd.delete(key2)
    await eventually(lambda: run.addresses("greeter.default.etcd") == ["10.0.0.1:9000"],
                     what="deregistration")
    short = await etcd.lease(2)
    await etcd.put(f"{prefix}greeter/greeter-3".encode(),
                   go_micro_value("greeter", "greeter-3", "10.0.0.3:9000"), lease=short)
    await eventually(lambda: "10.0.0.3:9000" in run.addresses("greeter.default.etcd"),
                     what="the short-lived node")
    await eventually(lambda: "10.0.0.3:9000" not in run.addresses("greeter.default.etcd"),
                     within=15, what="the lease to expire")
    # Last node gone: the service goes with it.
    await etcd.revoke_lease(lease.id)
    await eventually(lambda: not run.registry.services(), what="the service to go")


async def test_kratos_endpoints_become_named_ports(
    etcd_server: EtcdServer, etcd: Any, stop_tasks: list[Running]
) -> None:
    prefix = unique("/microservices/")
    for i in (1, 2):
        await etcd.put(f"{prefix}helloworld/id-{i}".encode(), kratos_value(
            "helloworld", f"id-{i}", f"10.1.0.{i}:8000", f"10.1.0.{i}:9000"))
    run = await start(etcd_server, "layout=kratos", prefix)
    stop_tasks.append(run)
    (service,) = run.registry.services()
    assert sorted((p.name, p.number, p.protocol) for p in service.ports) == [
        ("grpc", 9000, Protocol.GRPC), ("http", 8000, Protocol.HTTP)]
    assert run.addresses("helloworld.default.etcd") == [
        "10.1.0.1:8000", "10.1.0.1:9000", "10.1.0.2:8000", "10.1.0.2:9000"]
    labels = run.registry.endpoints("helloworld.default.etcd", "default")[0].labels
    assert labels == {"region": "eu", "version": "v1"}


async def test_json_layout_health_pagination_and_bad_values(
    etcd_server: EtcdServer, etcd: Any, stop_tasks: list[Running]
) -> None:
    prefix = unique("/services/")
    for i in range(5):
        await etcd.put(f"{prefix}orders/o{i}".encode(), json.dumps({
            "address": f"10.2.0.{i}", "ports": {"http": 8080, "grpc-admin": 9090},
            "metadata": {"version": "v1"}, "healthy": i != 4, "weight": 3,
        }).encode())
    await etcd.put(f"{prefix}orders/broken".encode(), b"{not json")
    await etcd.put(f"{prefix}lonely-key".encode(), b"{}")  # not <service>/<id>: ignored
    # Pages of two keys: the listing spans four Range calls at one revision.
    run = await start(etcd_server, "layout=json&pageSize=2", prefix)
    stop_tasks.append(run)
    (service,) = run.registry.services()
    assert sorted((p.name, p.protocol) for p in service.ports) == [
        ("grpc-admin", Protocol.GRPC), ("http", Protocol.HTTP)]
    endpoints = run.registry.endpoints("orders.default.etcd", "default")
    assert sorted({e.address for e in endpoints}) == [f"10.2.0.{i}" for i in range(4)]
    assert {e.weight for e in endpoints} == {3}
    # The instance turns healthy: an EDS push, no full push.
    run.updater.take()
    await etcd.put(f"{prefix}orders/o4".encode(), json.dumps(
        {"address": "10.2.0.4", "ports": {"http": 8080, "grpc-admin": 9090}}).encode())
    await eventually(lambda: "10.2.0.4:8080" in run.addresses("orders.default.etcd"),
                     what="the healthy instance")
    assert {r.full for r in run.updater.take()} == {False}


async def test_compaction_makes_the_adapter_list_again(
    etcd_server: EtcdServer, etcd: Any, stop_tasks: list[Running]
) -> None:
    """Between its listing and its watch the history is compacted: it lists again."""
    prefix = unique("/services/")
    key = f"{prefix}pay/p1".encode()
    await etcd.put(key, json.dumps({"address": "10.3.0.1", "port": 80}).encode())
    listed = asyncio.Event()
    resume = asyncio.Event()

    class SlowStart(EtcdRegistry):
        async def _list(self, client: Any) -> int:
            revision = await super()._list(client)
            if not listed.is_set():
                listed.set()
                await resume.wait()  # the watch starts late, as after a long pause
            return revision

    updater = Recorder()
    registry = SlowStart(parse_registry_url(
        f"etcd://{etcd_server.address}?layout=json&prefix={prefix}"), updater)
    task = asyncio.create_task(registry.run())
    try:
        async with asyncio.timeout(10):
            await listed.wait()
        assert sorted(e.address for e in registry.endpoints("pay.default.etcd", "default")) == [
            "10.3.0.1"]
        await etcd.put(key, json.dumps({"address": "10.3.0.2", "port": 80}).encode())
        await etcd.put(f"{prefix}pay/p2".encode(),
                       json.dumps({"address": "10.3.0.3", "port": 80}).encode())
        current = (await etcd.get(key)).mod_revision + 1
        await etcd.put(b"/unrelated", b"x")
        await etcd.kvstub.Compact(aetcd.rpc.CompactionRequest(revision=current, physical=True))
        resume.set()
        await eventually(lambda: sorted(e.address for e in registry.endpoints(
            "pay.default.etcd", "default")) == ["10.3.0.2", "10.3.0.3"], what="the relist")
        assert registry.relists == 1
        assert not registry.stale  # compaction is not an outage
    finally:
        task.cancel()


async def test_server_restart_keeps_endpoints_then_resyncs(
    etcd_server: EtcdServer, etcd: Any, stop_tasks: list[Running]
) -> None:
    prefix = unique("/services/")
    await etcd.put(f"{prefix}cart/c1".encode(),
                   json.dumps({"address": "10.4.0.1", "port": 80}).encode())
    run = await start(etcd_server, "layout=json", prefix)
    stop_tasks.append(run)
    run.updater.take()
    etcd_server.kill()
    try:
        await eventually(lambda: run.registry.stale, what="the registry to be stale")
        status = run.registry.status()
        assert not status["connected"] and "UNAVAILABLE" in status["lastError"]
        assert run.addresses("cart.default.etcd") == ["10.4.0.1:80"]  # kept while down
        assert run.updater.take() == []  # an outage pushes nothing
    finally:
        etcd_server.start()
    await eventually(lambda: not run.registry.stale, within=40, what="resync after restart")
    await etcd.put(f"{prefix}cart/c2".encode(),
                   json.dumps({"address": "10.4.0.2", "port": 80}).encode())
    await eventually(lambda: run.addresses("cart.default.etcd") == ["10.4.0.1:80", "10.4.0.2:80"],
                     what="changes after the restart")


def test_unknown_layout_is_a_url_error() -> None:
    with pytest.raises(RegistryUrlError, match="layout 'nope' is unknown"):
        create_registry("etcd://127.0.0.1:2379?layout=nope", Recorder())
