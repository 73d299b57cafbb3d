"""The etcd config store (`config.etcd_source`) against a real etcd server.

Each test writes under a prefix of its own, so tests share the session's server.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aetcd
import pytest
from typer.testing import CliRunner

from meshpilot.cli.main import app
from meshpilot.config.etcd_source import EtcdConfigStore, config_key, read_value
from meshpilot.config.sources import config_source
from meshpilot.config.store import Event
from meshpilot.etcd.client import EtcdAddress
from meshpilot.model import Config, ConfigKey
from tests.registry_servers import EtcdServer, eventually


def virtual_service(name: str, hosts: list[str], weight: int = 100) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
  namespace: default
spec:
  hosts: {json.dumps(hosts)}
  http:
  - route:
    - destination: {{host: reviews}}
      weight: {weight}
"""


VS = ConfigKey("VirtualService", "default", "reviews")


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[Any]:
    client = aetcd.Client("127.0.0.1", etcd_server.port, timeout=5)
    yield client
    await client.close()


@pytest.fixture
def prefix() -> str:
    return f"/test-config-{uuid.uuid4().hex[:8]}"


class Started:
    def __init__(self, store: EtcdConfigStore, task: asyncio.Task[None]) -> None:
        self.store = store
        self.task = task
        self.events: list[tuple[Event, ConfigKey]] = []
        store.register_handler(lambda old, new, event: self.events.append(
            (event, (new or old).key)))  # type: ignore[union-attr]

    def hosts(self) -> list[str] | None:
        config = self.store.get(VS)
        return None if config is None else list(config.spec["hosts"])


@pytest.fixture
async def started() -> AsyncIterator[list[Started]]:
    running: list[Started] = []
    yield running
    for one in running:
        one.task.cancel()
        await asyncio.gather(one.task, return_exceptions=True)


async def start(address: str, prefix: str, running: list[Started],
                store: EtcdConfigStore | None = None) -> Started:
    store = store or EtcdConfigStore(EtcdAddress.parse(f"etcd://{address}?prefix={prefix}"))
    one = Started(store, asyncio.create_task(store.run()))
    running.append(one)
    async with asyncio.timeout(10):
        await store.wait_synced()
    return one


def test_read_value_checks_the_key_and_the_schema() -> None:
    key = "/p/VirtualService/default/reviews"
    assert isinstance(read_value(key, virtual_service("reviews", ["reviews"]).encode(), "/p"),
                      Config)
    moved = read_value("/p/VirtualService/default/other", virtual_service(
        "reviews", ["reviews"]).encode(), "/p")
    assert isinstance(moved, list) and moved[0].field == "metadata.name"
    assert "belongs at /p/VirtualService/default/reviews" in moved[0].message
    bad = read_value(key, virtual_service("reviews", ["r"], weight=-5).encode(), "/p")
    assert isinstance(bad, list) and bad[0].file == key and bad[0].key == VS
    assert bad[0].field == "spec.http[0].route[0].weight" and bad[0].line == 11
    two = read_value(key, (virtual_service("reviews", ["a"]) + "---\n" +
                           virtual_service("reviews", ["b"])).encode(), "/p")
    assert isinstance(two, list) and "one document per key" in two[0].message


def test_the_source_is_chosen_by_scheme() -> None:
    store = config_source("etcd://127.0.0.1:1,127.0.0.2:2?prefix=/x/")
    assert isinstance(store, EtcdConfigStore)
    assert store.prefix == "/x" and store.address.hosts == (("127.0.0.1", 1), ("127.0.0.2", 2))
    assert store.name == "etcd://127.0.0.1:1,127.0.0.2:2"


async def test_lists_watches_updates_and_deletes(
    etcd_server: EtcdServer, etcd: Any, prefix: str, started: list[Started]
) -> None:
    key = config_key(prefix, "VirtualService", "default", "reviews")
    await etcd.put(key.encode(), virtual_service("reviews", ["reviews"]).encode())
    one = await start(etcd_server.address, prefix, started)
    assert one.hosts() == ["reviews"]
    config = one.store.get(VS)
    assert config is not None and config.source_file == key and config.resource_version
    # JSON values are read as well.
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
          "metadata": {"name": "reviews", "namespace": "default"},
          "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"v": "1"}}]}}
    await etcd.put(config_key(prefix, "DestinationRule", "default", "reviews").encode(),
                   json.dumps(dr).encode())
    await etcd.put(key.encode(), virtual_service("reviews", ["reviews", "r2"]).encode())
    await eventually(lambda: one.hosts() == ["reviews", "r2"], what="the update")
    await eventually(lambda: one.store.get(ConfigKey("DestinationRule", "default", "reviews")),
                     what="the JSON document")
    await etcd.delete(key.encode())
    await eventually(lambda: one.hosts() is None, what="the deletion")
    assert (Event.DELETE, VS) in one.events
    assert one.store.errors() == []


async def test_an_invalid_value_is_reported_and_the_last_good_one_serves(
    etcd_server: EtcdServer, etcd: Any, prefix: str, started: list[Started]
) -> None:
    key = config_key(prefix, "VirtualService", "default", "reviews")
    await etcd.put(key.encode(), virtual_service("reviews", ["reviews"]).encode())
    one = await start(etcd_server.address, prefix, started)
    await etcd.put(key.encode(), virtual_service("reviews", ["reviews"], weight=-5).encode())
    errors = await eventually(one.store.errors, what="the rejection")
    assert errors[0].file == key and errors[0].key == VS
    assert errors[0].field.startswith("spec.http[0].route[0]") and errors[0].line
    assert one.hosts() == ["reviews"]  # the last good version keeps serving
    await etcd.put(key.encode(), b"kind: [unclosed")
    syntax = await eventually(lambda: [e for e in one.store.errors() if e.key is None],
                              what="the syntax error")
    assert syntax[0].file == key and syntax[0].line == 1
    assert one.hosts() == ["reviews"]
    # A value for a resource that was never good is reported and serves nothing.
    other = config_key(prefix, "VirtualService", "default", "other")
    await etcd.put(other.encode(), virtual_service("wrong-name", ["x"]).encode())
    await eventually(lambda: any(e.file == other for e in one.store.errors()), what="other")
    await etcd.put(key.encode(), virtual_service("reviews", ["fixed"]).encode())
    await eventually(lambda: one.hosts() == ["fixed"], what="the fix")
    assert [e.file for e in one.store.errors()] == [other]
    # Deleting a rejected key clears its error.
    await etcd.delete(other.encode())
    await eventually(lambda: one.store.errors() == [], what="errors cleared")


async def test_compaction_lists_again_without_losing_deletions(
    etcd_server: EtcdServer, etcd: Any, prefix: str, started: list[Started]
) -> None:
    key = config_key(prefix, "VirtualService", "default", "reviews")
    gone = config_key(prefix, "VirtualService", "default", "gone")
    await etcd.put(key.encode(), virtual_service("reviews", ["reviews"]).encode())
    await etcd.put(gone.encode(), virtual_service("gone", ["gone"]).encode())
    listed, resume = asyncio.Event(), asyncio.Event()

    class SlowStart(EtcdConfigStore):
        async def _list(self, client: Any) -> int:
            revision = await super()._list(client)
            if not listed.is_set():
                listed.set()
                await resume.wait()  # the watch starts late, as after a long pause
            return revision

    store = SlowStart(EtcdAddress.parse(f"etcd://{etcd_server.address}?prefix={prefix}"))
    one = Started(store, asyncio.create_task(store.run()))
    started.append(one)
    async with asyncio.timeout(10):
        await listed.wait()
    assert store.get(ConfigKey("VirtualService", "default", "gone")) is not None
    await etcd.delete(gone.encode())
    await etcd.put(key.encode(), virtual_service("reviews", ["after"]).encode())
    current = (await etcd.get(key.encode())).mod_revision + 1
    await etcd.put(b"/unrelated", b"x")
    await etcd.kvstub.Compact(aetcd.rpc.CompactionRequest(revision=current, physical=True))
    resume.set()
    await eventually(lambda: one.hosts() == ["after"], what="the relist")
    assert store.get(ConfigKey("VirtualService", "default", "gone")) is None
    assert (Event.DELETE, ConfigKey("VirtualService", "default", "gone")) in one.events
    assert store.relists == 1 and store.errors() == []


async def test_etcd_going_away_keeps_the_config_then_reconnects(
    etcd_server: EtcdServer, etcd: Any, prefix: str, started: list[Started]
) -> None:
    key = config_key(prefix, "VirtualService", "default", "reviews")
    await etcd.put(key.encode(), virtual_service("reviews", ["reviews"]).encode())
    one = await start(etcd_server.address, prefix, started)
    etcd_server.kill()
    try:
        errors = await eventually(one.store.errors, what="the outage reported")
        assert "etcd unreachable" in errors[0].message and "stale" in errors[0].message
        assert one.hosts() == ["reviews"]
    finally:
        etcd_server.start()
    await eventually(lambda: one.store.errors() == [], within=40, what="the reconnection")
    await etcd.put(key.encode(), virtual_service("reviews", ["back"]).encode())
    await eventually(lambda: one.hosts() == ["back"], what="changes after the restart")


def test_the_config_command_validates_writes_lists_and_deletes(
    etcd_server: EtcdServer, prefix: str, tmp_path: Any
) -> None:
    runner = CliRunner()
    url = f"etcd://{etcd_server.address}?prefix={prefix}"
    good = tmp_path / "good.yaml"
    good.write_text(virtual_service("reviews", ["reviews"]) + "---\n" +
                    virtual_service("ratings", ["ratings"]))
    bad = tmp_path / "bad.yaml"
    bad.write_text(virtual_service("details", ["details"], weight=-1))
    refused = runner.invoke(app, ["config", "put", str(good), str(bad), "--etcd", url])
    assert refused.exit_code == 1, refused.output
    assert "spec.http[0].route[0].weight" in refused.output
    assert "nothing written" in refused.output
    listed = runner.invoke(app, ["config", "list", "--etcd", url])
    assert listed.exit_code == 0 and listed.output == ""
    written = runner.invoke(app, ["config", "put", str(good), "--etcd", url])
    assert written.exit_code == 0, written.output
    key = config_key(prefix, "VirtualService", "default", "reviews")
    assert f"put {key}" in written.output
    listed = runner.invoke(app, ["config", "list", "--etcd", url])
    assert [line.split("\t")[0] for line in listed.output.splitlines()] == [
        config_key(prefix, "VirtualService", "default", "ratings"), key]

    async def read() -> Any:
        client = aetcd.Client("127.0.0.1", etcd_server.port, timeout=5)
        try:
            return await client.get(key.encode())
        finally:
            await client.close()

    stored = asyncio.run(read())
    assert isinstance(read_value(key, bytes(stored.value), prefix), Config)
    deleted = runner.invoke(app, ["config", "delete", "VirtualService", "default/reviews",
                                  "--etcd", url])
    assert deleted.exit_code == 0 and f"deleted {key}" in deleted.output
    again = runner.invoke(app, ["config", "delete", "VirtualService", "default/reviews",
                                "--etcd", url])
    assert again.exit_code == 1
