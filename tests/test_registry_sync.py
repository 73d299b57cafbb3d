"""registry-sync: conversion to ServiceEntries, the directory target, MCP both ways."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from meshpilot.config.filestore import FileConfigStore
from meshpilot.config.mcp_source import McpConfigStore
from meshpilot.mcp.server import McpServer, start_mcp_server
from meshpilot.model import Kind, Protocol
from meshpilot.registry.mapping import Instance, MappingRules
from meshpilot.registry.urls import parse_registry_url
from meshpilot.sync.convert import MANAGED_BY, flatten, to_groups
from meshpilot.sync.targets import DirectoryTarget, McpTarget, plan
from tests.test_registry_framework import DictRegistry, Recorder


def registry(*instances: Instance) -> DictRegistry:
    reg = DictRegistry("dict://r:1?meshNamespace=shop", Recorder())
    by_service: dict[str, list[Instance]] = {}
    for instance in instances:
        by_service.setdefault(instance.service, []).append(instance)
    reg.catalog.replace_all(by_service)
    return reg


def inst(service: str, address: str, port: int = 8080, **kw: object) -> Instance:
    return Instance(service, f"{service}-{address}", address, {"http": port},
                    metadata={"version": "v1"}, **kw)  # type: ignore[arg-type]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_inline_endpoints() -> None:
    groups = to_groups(registry(inst("orders", "10.0.0.1"), inst("orders", "10.0.0.2", 9090)),
                       "dict")
    ((key, (entry,)),) = groups.items()
    assert key == ("shop", "orders.shop.dict")
    assert entry.kind == Kind.SERVICE_ENTRY and entry.labels[MANAGED_BY]
    assert entry.spec["hosts"] == ["orders.shop.dict"]
    assert entry.spec["ports"] == [{"number": 8080, "name": "http", "protocol": "HTTP"}]
    assert [(e["address"], e["ports"]) for e in entry.spec["endpoints"]] == [
        ("10.0.0.1", {"http": 8080}), ("10.0.0.2", {"http": 9090})]


def test_workload_entries_mode_selects_them() -> None:
    (group,) = to_groups(registry(inst("orders", "10.0.0.1")), "dict",
                         workload_entries=True).values()
    entry, workload = group
    assert workload.kind == Kind.WORKLOAD_ENTRY
    selector = entry.spec["workloadSelector"]["labels"]
    assert all(workload.spec["labels"][k] == v for k, v in selector.items())
    assert "endpoints" not in entry.spec


async def test_directory_target_writes_atomically_and_only_its_own(tmp_path: Path) -> None:
    target = DirectoryTarget(tmp_path, "dict")
    (tmp_path / "mine-not.yaml").write_text("kind: Something\n")
    groups = to_groups(registry(inst("orders", "10.0.0.1"), inst("pay", "10.0.1.1")), "dict")
    assert await target.apply(groups) == {"created": 2, "updated": 0, "deleted": 0,
                                          "unchanged": 0}
    assert await target.apply(groups) == {"created": 0, "updated": 0, "deleted": 0,
                                          "unchanged": 2}
    docs = list(yaml.safe_load_all((tmp_path / "shop.orders.shop.dict.yaml").read_text()))
    assert docs[0]["kind"] == "ServiceEntry"
    fewer = to_groups(registry(inst("orders", "10.0.0.9")), "dict")
    assert plan(tmp_path, fewer, "dict") == [
        ("update", tmp_path / "shop.orders.shop.dict.yaml"),
        ("delete", tmp_path / "shop.pay.shop.dict.yaml"),
    ]
    assert await target.apply(fewer) == {"created": 0, "updated": 1, "deleted": 1,
                                         "unchanged": 0}
    assert leftovers(tmp_path) == ["mine-not.yaml", "shop.orders.shop.dict.yaml"]


async def test_directory_output_is_valid_discovery_input(tmp_path: Path) -> None:
    await DirectoryTarget(tmp_path, "dict").apply(
        to_groups(registry(inst("orders", "10.0.0.1")), "dict", workload_entries=True))
    store = FileConfigStore([tmp_path])
    store.load()
    assert store.errors() == []
    assert {c.kind for c in store.all()} == {Kind.SERVICE_ENTRY, Kind.WORKLOAD_ENTRY}


async def test_mcp_round_trip_updates_and_survives_a_server_outage() -> None:
    server = McpServer()
    target = McpTarget(server)
    await target.apply(to_groups(registry(inst("orders", "10.0.0.1")), "dict"))
    grpc_server, port = await start_mcp_server(server, "127.0.0.1:0")
    store = McpConfigStore(f"127.0.0.1:{port}")
    task = asyncio.create_task(store.run())
    try:
        async with asyncio.timeout(5):
            await store.wait_synced()
        (entry,) = store.list(Kind.SERVICE_ENTRY)
        assert (entry.namespace, entry.name) == ("shop", "orders.shop.dict")
        assert entry.spec["endpoints"] == [{"address": "10.0.0.1", "ports": {"http": 8080},
                                            "labels": {"version": "v1"}}]
        assert entry.spec["location"] == "MESH_INTERNAL"
        # An update reaches the client.
        await target.apply(to_groups(registry(inst("orders", "10.0.0.2")), "dict"))
        for _ in range(200):
            if store.list(Kind.SERVICE_ENTRY)[0].spec["endpoints"][0]["address"] == "10.0.0.2":
                break
            await asyncio.sleep(0.02)
        assert store.list(Kind.SERVICE_ENTRY)[0].spec["endpoints"][0]["address"] == "10.0.0.2"
        # The server goes away: the last config stays, with an error saying why.
        await grpc_server.stop(grace=None)
        for _ in range(200):
            if store.errors():
                break
            await asyncio.sleep(0.02)
        assert "unreachable" in store.errors()[0].message
        assert len(store.list(Kind.SERVICE_ENTRY)) == 1
    finally:
        task.cancel()


def test_other_istio_collections_get_empty_answers() -> None:
    server = McpServer()
    server.update(flatten(to_groups(registry(inst("orders", "10.0.0.1")), "dict")))
    assert len(server.resources("networking.istio.io/v1alpha3/ServiceEntry")) == 1
    assert len(server.resources("networking.istio.io/v1/ServiceEntry")) == 1
    assert server.resources("networking.istio.io/v1alpha3/VirtualService") == []
    assert server.resources("security.istio.io/v1beta1/AuthorizationPolicy") == []


@pytest.mark.parametrize("protocol", [Protocol.HTTP, Protocol.TCP])
def test_mapping_protocol_survives_conversion(protocol: Protocol) -> None:
    rules = MappingRules.from_url(parse_registry_url(f"dict://r:1?protocol={protocol.value}"),
                                  Protocol.HTTP)
    reg = registry()
    reg.catalog.rules = rules
    reg.catalog.replace("db", [Instance("db", "db-1", "10.0.0.5", {"": 5432})])
    (group,) = to_groups(reg, "dict").values()
    assert group[0].spec["ports"][0]["protocol"] == protocol.value
