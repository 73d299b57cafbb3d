"""The ZooKeeper adapter against a real ZooKeeper (Debian's package, started by the session).

Providers are registered the way Dubbo registers them: persistent `/<root>/<interface>/
providers` directories and one ephemeral znode per provider named by its URL-encoded URL, owned
by the provider's own session. Application-level instances are Curator ServiceInstance JSON, as
Spring Cloud Zookeeper and Dubbo 3 write them. Every test uses a root of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote_plus

import pytest
from kazoo.client import KazooClient

from meshpilot.model import Protocol
from meshpilot.registry.plugins import create_registry
from meshpilot.registry.zookeeper import ZooKeeperRegistry, dubbo_service_name
from tests.registry_servers import Recorder, ZooKeeperServer, eventually

DEMO = "org.apache.dubbo.demo.DemoService"
GREETER = "org.apache.dubbo.demo.GreeterService"


def dubbo_url(interface: str, address: str, protocol: str = "dubbo", **params: str) -> str:
    """A provider URL as Dubbo's URL.toFullString() writes it."""
    query = {
        "anyhost": "true", "application": "demo-provider", "deprecated": "false",
        "dubbo": "2.0.2", "dynamic": "true", "generic": "false", "interface": interface,
        "methods": "sayHello,sayHelloAsync", "pid": "4242", "release": "3.2.0",
        "side": "provider", "timestamp": "1700000000000", **params,
    }
    return f"{protocol}://{address}/{interface}?" + "&".join(
        f"{k}={v}" for k, v in sorted(query.items()))


def provider_path(root: str, url: str) -> str:
    """Dubbo's toUrlPath: <root>/<interface>/providers/<URL.encode(url.toFullString())>."""
    interface = url.split("?")[0].rsplit("/", 1)[-1]
    return f"{root}/{interface}/providers/{quote_plus(url, safe='')}"


@pytest.fixture
def zk(zookeeper_server: ZooKeeperServer) -> Iterator[Any]:
    """A client standing in for the providers: its session owns their ephemeral znodes."""
    client = KazooClient(hosts=zookeeper_server.address, timeout=5)
    client.start(10)
    yield client
    client.stop()
    client.close()


@pytest.fixture
async def started() -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def start(
    server: ZooKeeperServer, path: str, tasks: list[asyncio.Task[None]], query: str = ""
) -> ZooKeeperRegistry:
    registry = create_registry(f"zookeeper://{server.address}{path}?{query}", Recorder())
    assert isinstance(registry, ZooKeeperRegistry)
    tasks.append(asyncio.create_task(registry.run()))
    async with asyncio.timeout(15):
        await registry.wait_synced()
    return registry


def addresses(registry: ZooKeeperRegistry, host: str) -> list[str]:
    return sorted(f"{e.address}:{e.port}" for e in registry.endpoints(host, "default"))


def register(zk: Any, root: str, url: str, ephemeral: bool = True) -> str:
    path = provider_path(root, url)
    zk.ensure_path(path.rsplit("/", 1)[0])
    zk.create(path, b"10.0.0.100", ephemeral=ephemeral)
    return path


def test_dubbo_service_names_are_short_stable_and_distinct() -> None:
    name = dubbo_service_name(DEMO)
    assert name.startswith("demo-service-") and len(name) == len("demo-service-") + 6
    assert dubbo_service_name(DEMO) == name
    assert dubbo_service_name("com.other.DemoService") != name
    assert dubbo_service_name(DEMO, "G.1").startswith("demo-service-g-1-")
    assert dubbo_service_name("a.HTTPClientAPI") .startswith("http-client-api-")


async def test_dubbo_providers_follow_registrations(
    zookeeper_server: ZooKeeperServer, zk: Any, started: list[asyncio.Task[None]]
) -> None:
    root = f"/t-{uuid.uuid4().hex[:8]}/dubbo"
    register(zk, root, dubbo_url(DEMO, "10.0.0.1:20880", version="1.0.0"))
    register(zk, root, dubbo_url(DEMO, "10.0.0.2:20880", version="1.0.0", weight="50"))
    register(zk, root, dubbo_url(DEMO, "10.0.0.3:20880", enabled="false"))
    register(zk, root, dubbo_url(DEMO, "10.0.0.4:20880", disabled="true"))
    zk.ensure_path(f"{root}/{DEMO}/consumers/" + quote_plus(
        "consumer://10.9.9.9/" + DEMO + "?side=consumer", safe=""))
    registry = await start(zookeeper_server, root, started)

    host = f"{dubbo_service_name(DEMO)}.default.zookeeper"
    (service,) = registry.services()
    assert service.hostname == host
    assert [(p.name, p.number, p.protocol) for p in service.ports] == [
        ("dubbo", 20880, Protocol.TCP)]
    assert addresses(registry, host) == ["10.0.0.1:20880", "10.0.0.2:20880"]
    endpoint = min(registry.endpoints(host, "default"), key=lambda e: e.address)
    assert endpoint.labels["application"] == "demo-provider"
    assert endpoint.labels["version"] == "1.0.0"
    assert endpoint.labels["interface"] == DEMO
    assert "methods" not in endpoint.labels
    assert sorted(e.weight for e in registry.endpoints(host, "default")) == [50, 100]

    # A new interface over Triple, and the same interface in another group: new services.
    register(zk, root, dubbo_url(GREETER, "10.0.1.1:50051", protocol="tri"))
    register(zk, root, dubbo_url(DEMO, "10.0.2.1:20880", group="canary"))
    greeter = f"{dubbo_service_name(GREETER)}.default.zookeeper"
    canary = f"{dubbo_service_name(DEMO, 'canary')}.default.zookeeper"
    await eventually(lambda: addresses(registry, greeter) == ["10.0.1.1:50051"]
                     and addresses(registry, canary) == ["10.0.2.1:20880"], what="new services")
    assert {s.hostname: s.ports[0].protocol for s in registry.services()}[greeter] is (
        Protocol.GRPC)
    assert addresses(registry, host) == ["10.0.0.1:20880", "10.0.0.2:20880"]  # unmixed

    # Deregistration (Dubbo deletes its znode on unexport), and a whole interface going away.
    zk.delete(provider_path(root, dubbo_url(DEMO, "10.0.0.2:20880", version="1.0.0",
                                            weight="50")))
    await eventually(lambda: addresses(registry, host) == ["10.0.0.1:20880"],
                     what="deregistration")
    zk.delete(f"{root}/{GREETER}", recursive=True)
    await eventually(lambda: greeter not in {s.hostname for s in registry.services()},
                     what="the interface to go")


async def test_a_crashed_provider_goes_when_its_session_expires(
    zookeeper_server: ZooKeeperServer, zk: Any, started: list[asyncio.Task[None]]
) -> None:
    """A provider process dies without closing its session: its ephemeral znode expires."""
    root = f"/t-{uuid.uuid4().hex[:8]}/dubbo"
    register(zk, root, dubbo_url(DEMO, "10.0.0.1:20880"))
    registry = await start(zookeeper_server, root, started)
    host = f"{dubbo_service_name(DEMO)}.default.zookeeper"
    path = provider_path(root, dubbo_url(DEMO, "10.0.0.9:20880"))
    provider = await asyncio.create_subprocess_exec(sys.executable, "-c", f"""
import time
from kazoo.client import KazooClient
zk = KazooClient(hosts={zookeeper_server.address!r}, timeout=1.0)
zk.start(10)
zk.create({path!r}, b"", ephemeral=True, makepath=True)
print("registered", flush=True)
time.sleep(600)
""", stdout=asyncio.subprocess.PIPE)
    try:
        assert provider.stdout is not None
        async with asyncio.timeout(20):
            assert (await provider.stdout.readline()).strip() == b"registered"
        await eventually(lambda: "10.0.0.9:20880" in addresses(registry, host),
                         what="the provider")
        provider.kill()  # no clean close: ZooKeeper expires the session after its 1 s timeout
        await eventually(lambda: addresses(registry, host) == ["10.0.0.1:20880"], within=20,
                         what="the session to expire")
    finally:
        with contextlib.suppress(ProcessLookupError):
            provider.kill()
        await provider.wait()


def spring_instance(app: str, ident: str, address: str, port: int, status: str = "UP") -> bytes:
    """What Spring Cloud Zookeeper registers (a Curator ServiceInstance)."""
    return json.dumps({
        "name": app, "id": ident, "address": address, "port": port, "sslPort": None,
        "payload": {"@class": "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
                    "id": f"{app}-1", "name": app,
                    "metadata": {"instance_status": status, "version": "v2"}},
        "registrationTimeUTC": 1700000000000, "serviceType": "DYNAMIC",
        "uriSpec": {"parts": [{"value": "scheme", "variable": True},
                              {"value": "://", "variable": False}]},
    }).encode()


def dubbo3_instance(app: str, address: str, port: int) -> bytes:
    """What Dubbo 3 registers for application-level discovery."""
    return json.dumps({
        "name": app, "id": f"{address}:{port}", "address": address, "port": port,
        "sslPort": None,
        "payload": {"@class": "org.apache.dubbo.registry.zookeeper.ZookeeperInstance",
                    "id": f"{address}:{port}", "name": app, "metadata": {
                        "dubbo.endpoints": json.dumps([{"port": port, "protocol": "dubbo"}]),
                        "dubbo.metadata.revision": "3f5c", "dubbo.metadata.storage-type":
                        "local", "timestamp": "1700000000000"}},
        "registrationTimeUTC": 1700000000000, "serviceType": "DYNAMIC", "uriSpec": None,
    }).encode()


async def test_application_level_instances(
    zookeeper_server: ZooKeeperServer, zk: Any, started: list[asyncio.Task[None]]
) -> None:
    root = f"/t-{uuid.uuid4().hex[:8]}/services"
    zk.create(f"{root}/orders/a1", spring_instance("orders", "a1", "10.5.0.1", 8080),
              ephemeral=True, makepath=True)
    zk.create(f"{root}/orders/a2", spring_instance("orders", "a2", "10.5.0.2", 8080, "DOWN"),
              ephemeral=True, makepath=True)
    zk.create(f"{root}/demo-provider/10.5.1.1:20880",
              dubbo3_instance("demo-provider", "10.5.1.1", 20880), ephemeral=True, makepath=True)
    registry = await start(zookeeper_server, root, started)
    services = {s.hostname: s for s in registry.services()}
    assert [(p.number, p.protocol) for p in services["orders.default.zookeeper"].ports] == [
        (8080, Protocol.HTTP)]
    assert [(p.name, p.protocol) for p in services["demo-provider.default.zookeeper"].ports] == [
        ("tcp-dubbo", Protocol.TCP)]
    assert addresses(registry, "orders.default.zookeeper") == ["10.5.0.1:8080"]  # a2 is DOWN
    labels = registry.endpoints("demo-provider.default.zookeeper", "default")[0].labels
    assert labels == {"timestamp": "1700000000000"}  # dubbo.* are internal

    # Instance data changes (status back UP), then an instance deregisters.
    zk.set(f"{root}/orders/a2", spring_instance("orders", "a2", "10.5.0.2", 8080))
    await eventually(lambda: addresses(registry, "orders.default.zookeeper") == [
        "10.5.0.1:8080", "10.5.0.2:8080"], what="a2 UP")
    zk.delete(f"{root}/orders/a1")
    await eventually(lambda: addresses(registry, "orders.default.zookeeper") == [
        "10.5.0.2:8080"], what="a1 gone")


async def test_layout_from_param_and_missing_root(
    zookeeper_server: ZooKeeperServer, zk: Any, started: list[asyncio.Task[None]]
) -> None:
    """The root may not exist yet: the adapter syncs empty and notices it being created."""
    root = f"/t-{uuid.uuid4().hex[:8]}/apps"
    registry = await start(zookeeper_server, root, started, "layout=services")
    assert registry.services() == []
    zk.create(f"{root}/billing/b1", spring_instance("billing", "b1", "10.6.0.1", 9000),
              ephemeral=True, makepath=True)
    await eventually(lambda: addresses(registry, "billing.default.zookeeper") == [
        "10.6.0.1:9000"], what="the first instance under a new root")


async def test_server_restart_keeps_endpoints_then_resyncs(
    zookeeper_server: ZooKeeperServer, zk: Any, started: list[asyncio.Task[None]]
) -> None:
    root = f"/t-{uuid.uuid4().hex[:8]}/dubbo"
    # Persistent, as Dubbo writes providers registered with dynamic=false.
    kept = register(zk, root, dubbo_url(DEMO, "10.7.0.1:20880", dynamic="false"), False)
    register(zk, root, dubbo_url(DEMO, "10.7.0.2:20880", dynamic="false"), False)
    registry = await start(zookeeper_server, root, started, "sessionTimeout=4")
    host = f"{dubbo_service_name(DEMO)}.default.zookeeper"
    zookeeper_server.kill()
    try:
        await eventually(lambda: registry.stale, what="the registry to be stale")
        assert not registry.status()["connected"]
        assert addresses(registry, host) == ["10.7.0.1:20880", "10.7.0.2:20880"]
    finally:
        zookeeper_server.start()
    await eventually(lambda: not registry.stale, within=40, what="resync after restart")

    def delete_kept() -> None:
        # A new session: the fixture's own may have expired while the server was down.
        client = KazooClient(hosts=zookeeper_server.address, timeout=5)
        client.start(10)
        try:
            client.delete(kept)
        finally:
            client.stop()
            client.close()

    await asyncio.to_thread(delete_kept)
    await eventually(lambda: addresses(registry, host) == ["10.7.0.2:20880"],
                     what="a change after the restart")
