"""`registry-sync --to kube` against the fake API server: server-side apply, updates, garbage
collection, never touching objects it does not own, 409 handling, drift, and leader handover
between two real `meshpilot registry-sync` processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshpilot.demo.mesh import free_port, get_json, wait_until
from meshpilot.kube.client import KubeClient, KubeOptions
from meshpilot.model import Endpoint, Port, Protocol, Service
from meshpilot.sync.convert import MANAGED_BY, SOURCE, Groups, owner_labels, service_configs
from meshpilot.sync.kube_target import KubeTarget, up_to_date
from tests.fakes.base import ThreadedFake
from tests.fakes.kube_api import KubeApiFake, istio_object, running_api
from tests.registry_helpers import eventually

NET = "networking.istio.io/v1"
SOURCE_NAME = "consul://127.0.0.1:8500"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[KubeApiFake]:
    async with running_api(tmp_path) as fake:
        yield fake


@pytest.fixture
async def target(api: KubeApiFake) -> AsyncIterator[KubeTarget]:
    kube = KubeTarget(KubeOptions(kubeconfig=api.kubeconfig), SOURCE_NAME, identity="sync-a")
    yield kube
    await kube.close()


def groups(*services: tuple[str, list[str]], workload_entries: bool = False) -> Groups:
    """(host, instance addresses) → the desired groups, as the runner computes them."""
    out: Groups = {}
    for host, addresses in services:
        service = Service(host, "default", (Port("http", 80, Protocol.HTTP),))
        endpoints = [Endpoint(host, "default", 80, a, 8080) for a in addresses]
        configs = service_configs(service, endpoints, SOURCE_NAME, workload_entries)
        out[("default", configs[0].name)] = configs
    return out


def entry(api: KubeApiFake, name: str, kind: str = "ServiceEntry") -> dict[str, Any] | None:
    return api.get(NET, kind, "default", name)


def endpoints_of(api: KubeApiFake, name: str) -> list[str]:
    obj = entry(api, name)
    return sorted(e["address"] for e in (obj or {}).get("spec", {}).get("endpoints", []))


async def test_apply_creates_then_leaves_unchanged_objects_alone(api: KubeApiFake,
                                                                 target: KubeTarget) -> None:
    counts = await target.apply(groups(("a.example", ["10.0.0.1"]), ("b.example", ["10.0.0.2"])))
    assert counts["created"] == 2
    obj = entry(api, "a.example")
    assert obj is not None
    assert obj["metadata"]["labels"] == owner_labels(SOURCE_NAME)
    assert obj["spec"]["hosts"] == ["a.example"]
    writes = api.writes_of("ServiceEntry", "apply")
    assert [w.manager for w in writes] == ["meshpilot-registry-sync"] * 2
    assert all(w.user_agent == "meshpilot-registry-sync/sync-a" for w in writes)
    again = await target.apply(groups(("a.example", ["10.0.0.1"]), ("b.example", ["10.0.0.2"])))
    assert again["unchanged"] == 2 and again["created"] == again["updated"] == 0
    assert len(api.writes_of("ServiceEntry")) == 2


async def test_updates_and_garbage_collection_touch_only_owned_objects(
    api: KubeApiFake, target: KubeTarget
) -> None:
    api.create(*istio_object("ServiceEntry", "hand-made", {"hosts": ["h.example"]}))
    api.create(*istio_object("ServiceEntry", "other-sync", {"hosts": ["o.example"]}, labels={
        MANAGED_BY: "meshpilot-registry-sync", SOURCE: "another-source"}))
    api.create(*istio_object("ServiceEntry", "c.example", {"hosts": ["c.example"]}))
    await target.apply(groups(("a.example", ["10.0.0.1"]), ("b.example", ["10.0.0.2"])))
    counts = await target.apply(groups(("a.example", ["10.0.0.1", "10.0.0.3"]),
                                       ("c.example", ["10.0.0.4"])))
    assert counts == {"created": 0, "updated": 1, "deleted": 1, "unchanged": 0, "skipped": 1,
                      "conflicts": 0}
    assert endpoints_of(api, "a.example") == ["10.0.0.1", "10.0.0.3"]
    assert entry(api, "b.example") is None
    # Not ours: untouched, whatever their names.
    for name in ("hand-made", "other-sync", "c.example"):
        obj = entry(api, name)
        assert obj is not None and "endpoints" not in obj["spec"]
    touched = {w.name for w in api.writes if w.manager == "meshpilot-registry-sync"}
    assert touched == {"a.example", "b.example"}


async def test_workload_entries_and_removed_fields(api: KubeApiFake, target: KubeTarget) -> None:
    await target.apply(groups(("a.example", ["10.0.0.1", "10.0.0.2"]), workload_entries=True))
    names = sorted(o["metadata"]["name"] for o in api.items(NET, "WorkloadEntry"))
    assert names == ["a.example-10.0.0.1", "a.example-10.0.0.2"]
    se = entry(api, "a.example")
    assert se is not None and "workloadSelector" in se["spec"]
    await target.apply(groups(("a.example", ["10.0.0.1"])))  # back to inline endpoints
    se = entry(api, "a.example")
    assert se is not None and "workloadSelector" not in se["spec"]  # a field no longer applied
    assert endpoints_of(api, "a.example") == ["10.0.0.1"]
    assert api.items(NET, "WorkloadEntry") == []


async def test_a_hand_edited_object_conflicts_and_is_applied_again(api: KubeApiFake,
                                                                  target: KubeTarget) -> None:
    desired = groups(("a.example", ["10.0.0.1"]))
    await target.apply(desired)
    obj = entry(api, "a.example")
    assert obj is not None
    obj["spec"]["endpoints"] = [{"address": "6.6.6.6"}]
    api.update(NET, "ServiceEntry", obj, manager="kubectl-edit")
    counts = await target.apply(desired)
    assert counts["conflicts"] == 1
    assert endpoints_of(api, "a.example") == ["10.0.0.1"]
    verbs = [w.verb for w in api.writes_of("ServiceEntry") if w.manager != "kubectl-edit"]
    assert verbs == ["apply", "apply"]  # the refused apply is not a write; the forced one is


async def test_an_object_taken_over_is_left_alone(api: KubeApiFake, target: KubeTarget) -> None:
    await target.apply(groups(("a.example", ["10.0.0.1"])))
    obj = entry(api, "a.example")
    assert obj is not None
    obj["metadata"]["labels"] = {"owner": "me"}
    api.update(NET, "ServiceEntry", obj, manager="kubectl-edit")
    counts = await target.apply(groups(("a.example", ["10.0.0.2"])))
    assert counts["skipped"] == 1
    assert endpoints_of(api, "a.example") == ["10.0.0.1"]
    await target.apply(groups())
    assert entry(api, "a.example") is not None  # not ours any more: never collected


async def test_collection_rereads_an_object_that_changed_since_it_was_listed(
    api: KubeApiFake, target: KubeTarget
) -> None:
    await target.apply(groups(("a.example", ["10.0.0.1"])))
    listed = entry(api, "a.example")
    assert listed is not None
    changed = {**listed, "metadata": {**listed["metadata"], "annotations": {"x": "y"}}}
    api.update(NET, "ServiceEntry", changed)
    client = await KubeClient.connect(KubeOptions(kubeconfig=api.kubeconfig))
    try:
        # The listed version is stale: 409, then read again — still ours, still unwanted.
        assert await target._collect(client, target.resources["ServiceEntry"], listed)
    finally:
        await client.close()
    assert entry(api, "a.example") is None


def test_up_to_date_reads_managed_fields() -> None:
    doc: dict[str, Any] = {"metadata": {"labels": {"a": "b"}}, "spec": {"hosts": ["x"]}}
    current: dict[str, Any] = {"metadata": {"labels": {"a": "b", "extra": "1"}, "managedFields": [
        {"manager": "meshpilot-registry-sync", "operation": "Apply", "fieldsV1": {
            "f:metadata": {"f:labels": {".": {}, "f:a": {}}},
            "f:spec": {".": {}, "f:hosts": {}, "f:ports": {}}}}]},
        "spec": {"hosts": ["x"], "ports": []}}
    assert not up_to_date(current, doc)  # we still own spec.ports: apply to remove it
    current["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"].pop("f:ports")
    assert up_to_date(current, doc)


async def test_drift_is_noticed(api: KubeApiFake, target: KubeTarget) -> None:
    await target.apply(groups(("a.example", ["10.0.0.1"])))
    notified = asyncio.Event()
    task = asyncio.create_task(target.watch(notified.set))
    try:
        await eventually(lambda: api.watchers, 5, "the watch")
        api.delete(NET, "ServiceEntry", "default", "a.example")
        async with asyncio.timeout(5):
            await notified.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --- Several replicas: real processes, one writes -------------------------------------------


@pytest.fixture
def threaded_api(tmp_path: Path) -> Iterator[tuple[KubeApiFake, ThreadedFake]]:
    fake = KubeApiFake(bookmark_interval=0.5)
    runner = ThreadedFake(fake)
    runner.start()
    fake.write_kubeconfig(tmp_path / "kubeconfig")
    try:
        yield fake, runner
    finally:
        runner.close()


def _instances(path: Path, addresses: list[str]) -> None:
    doc = {"services": {"shop": [{"address": a, "ports": {"http": 8080}} for a in addresses]}}
    temporary = path.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(doc))
    temporary.replace(path)


def test_leader_handover_between_processes_without_duplicate_writes(
    threaded_api: tuple[KubeApiFake, ThreadedFake], tmp_path: Path
) -> None:
    api, runner = threaded_api  # the fake's state is read on its own loop (runner.call)
    instances = tmp_path / "instances.yaml"
    _instances(instances, ["10.0.0.1"])
    source = f"file://{instances}?meshNamespace=default"
    processes: dict[str, subprocess.Popen[bytes]] = {}
    status_ports: dict[str, int] = {}
    env = {**os.environ, "KUBECONFIG": api.kubeconfig}
    for identity in ("replica-a", "replica-b"):
        status_ports[identity] = free_port()
        log = open(tmp_path / f"{identity}.log", "wb")  # noqa: SIM115 (owned by the process)
        processes[identity] = subprocess.Popen(
            [sys.executable, "-m", "meshpilot.cli.main", "registry-sync", "--from", source,
             "--to", "kube", "--leader-election", "--lease", "istio-system/sync",
             "--identity", identity, "--lease-duration", "3", "--renew-deadline", "2",
             "--retry-period", "0.3", "--status-address",
             f"127.0.0.1:{status_ports[identity]}"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
    host = "shop.default.file"

    def holder() -> str:
        lease = runner.call(lambda: api.get("coordination.k8s.io/v1", "Lease", "istio-system",
                                            "sync"))
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

    def sync_writes() -> list[Any]:
        return runner.call(lambda: api.writes_of("ServiceEntry"))

    def addresses() -> list[str]:
        obj = runner.call(lambda: api.get(NET, "ServiceEntry", "default", host))
        return sorted(e["address"] for e in (obj or {}).get("spec", {}).get("endpoints", []))

    try:
        first = wait_until(holder, 20, "a leader")
        wait_until(lambda: addresses() == ["10.0.0.1"], 20, "the first sync")
        assert {w.user_agent for w in sync_writes()} == {f"meshpilot-registry-sync/{first}"}
        follower = next(i for i in processes if i != first)

        def follower_sees_both() -> bool:
            status = get_json(f"http://127.0.0.1:{status_ports[follower]}/status")
            if status["registries"][0]["instances"] == 2:
                return True
            # The file registry reads the file before its watch starts, so a change made in
            # between is missed until the next one; writing the same content again is a no-op
            # for the leader (nothing changes, nothing is written).
            _instances(instances, ["10.0.0.1", "10.0.0.2"])
            return False

        _instances(instances, ["10.0.0.1", "10.0.0.2"])
        wait_until(lambda: addresses() == ["10.0.0.1", "10.0.0.2"], 20, "the update")
        wait_until(follower_sees_both, 20, "the follower's registry up to date", interval=0.5)
        before = len(sync_writes())
        assert before == 2  # one create, one update: the follower wrote nothing
        # The leader dies without a word: the follower takes over once the Lease expires.
        processes[first].send_signal(signal.SIGKILL)
        processes[first].wait()
        second = wait_until(lambda: holder() not in ("", first) and holder(), 20, "a new leader")
        _instances(instances, ["10.0.0.2"])
        wait_until(lambda: addresses() == ["10.0.0.2"], 20, "the new leader's write")
        after = sync_writes()[before:]
        # Taking over wrote nothing that was already right: exactly the one change.
        assert [(w.verb, w.user_agent) for w in after] == [
            ("apply", f"meshpilot-registry-sync/{second}")], [
                w.body.get("spec", {}).get("endpoints") for w in after]
        status_lines = (tmp_path / f"{second}.log").read_text()
        assert "now leading" in status_lines
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
