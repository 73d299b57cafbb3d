"""The Kubernetes client adapter and informer against the fake API server, and the fake's own
API semantics (list, watch, 410, bookmarks, selectors, 409, status subresource, apply)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshpilot.kube.client import (
    LEASES,
    PODS,
    SERVICES,
    KubeApiError,
    KubeClient,
    KubeOptions,
    KubeUnavailable,
    custom_resource,
    plural_of,
)
from meshpilot.kube.informer import Informer
from tests.fakes.kube_api import KubeApiFake, istio_object, running_api, service_object
from tests.registry_helpers import eventually

VS = custom_resource("networking.istio.io", "v1", "VirtualService")
SE = custom_resource("networking.istio.io", "v1", "ServiceEntry")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[KubeApiFake]:
    async with running_api(tmp_path) as fake:
        yield fake


@pytest.fixture
async def client(api: KubeApiFake) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(KubeOptions.from_url(f"kube://?kubeconfig={api.kubeconfig}"),
                                      "meshpilot-test/replica-1")
    yield client
    await client.close()


def vs(name: str, hosts: list[str], **labels: str) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"hosts": hosts}}


def test_plurals_follow_kubernetes() -> None:
    assert [plural_of(k) for k in ("ServiceEntry", "Gateway", "Sidecar", "Telemetry",
                                   "AuthorizationPolicy")] == [
        "serviceentries", "gateways", "sidecars", "telemetries", "authorizationpolicies"]


def test_options_from_urls() -> None:
    options = KubeOptions.from_url("kube://?kubeconfig=/k&context=prod&namespace=a")
    assert (options.kubeconfig, options.context, options.param("namespace")) == ("/k", "prod", "a")
    assert KubeOptions.from_url("kube://staging").context == "staging"
    with pytest.raises(ValueError):
        KubeOptions.from_url("http://x")


async def test_list_pages_and_selects_by_label(api: KubeApiFake, client: KubeClient) -> None:
    for i in range(7):
        api.create("v1", "Service", service_object(f"s{i}", labels={"tier": "a" if i < 3 else "b"}))
    listed = await client.list(SERVICES, limit=2)
    assert [o["metadata"]["name"] for o in listed.items] == [f"s{i}" for i in range(7)]
    assert all(o["kind"] == "Service" and o["apiVersion"] == "v1" for o in listed.items)
    assert listed.resource_version == str(api.revision)
    assert len((await client.list(SERVICES, label_selector="tier=a")).items) == 3
    assert len((await client.list(SERVICES, label_selector="tier in (a,b),tier!=b")).items) == 3
    assert len((await client.list(SERVICES, label_selector="!tier")).items) == 0
    assert len((await client.list(SERVICES, "kube-system")).items) == 0


async def test_an_expired_continue_token_is_410(api: KubeApiFake, client: KubeClient) -> None:
    for i in range(3):
        api.create("v1", "Service", service_object(f"s{i}"))
    page = await client.request("GET", SERVICES.path(), query={"limit": "1"})
    api.create("v1", "Service", service_object("later"))
    api.compact()  # the page's revision is no longer kept
    with pytest.raises(KubeApiError) as error:
        await client.request("GET", SERVICES.path(),
                             query={"limit": "1", "continue": page["metadata"]["continue"]})
    assert error.value.status == 410


async def test_watch_from_a_version_sees_later_changes_and_bookmarks(
    api: KubeApiFake, client: KubeClient
) -> None:
    api.create(*istio_object("VirtualService", "before", {"hosts": ["a"]}))
    start = (await client.list(VS)).resource_version
    seen: list[tuple[str, str]] = []

    async def follow() -> None:
        async for event in client.watch(VS, start, timeout_seconds=2):
            seen.append((event.type, event.object["metadata"].get("name", "")))

    task = asyncio.create_task(follow())
    await eventually(lambda: ("BOOKMARK", "") in seen, 5, "a bookmark")
    api.create(*istio_object("VirtualService", "after", {"hosts": ["b"]}))
    api.delete("networking.istio.io/v1", "VirtualService", "default", "before")
    await task
    changes = [e for e in seen if e[0] != "BOOKMARK"]
    assert changes == [("ADDED", "after"), ("DELETED", "before")]


async def test_watch_from_a_compacted_version_gets_410(api: KubeApiFake, client: KubeClient
                                                       ) -> None:
    start = (await client.list(VS)).resource_version
    api.create(*istio_object("VirtualService", "x", {"hosts": ["a"]}))
    api.compact()
    with pytest.raises(KubeApiError) as error:
        async for _ in client.watch(VS, start, timeout_seconds=2):
            pass
    assert error.value.status == 410 and error.value.reason == "Expired"


async def test_a_selected_watch_sees_objects_leave_and_enter(api: KubeApiFake,
                                                             client: KubeClient) -> None:
    start = (await client.list(VS)).resource_version
    api.create(*istio_object("VirtualService", "x", {"hosts": ["a"]}, labels={"sel": "yes"}))
    obj = api.get("networking.istio.io/v1", "VirtualService", "default", "x")
    assert obj is not None
    obj["metadata"]["labels"] = {"sel": "no"}
    api.update("networking.istio.io/v1", "VirtualService", obj)
    seen = [(e.type, e.object["metadata"]["labels"]["sel"]) async for e in client.watch(
        VS, start, label_selector="sel=yes", timeout_seconds=1) if e.type != "BOOKMARK"]
    assert seen == [("ADDED", "yes"), ("DELETED", "no")]


async def test_stale_updates_conflict_and_status_is_its_own_subresource(
    api: KubeApiFake, client: KubeClient
) -> None:
    created = await client.create(VS, vs("r", ["a"]))
    assert created["metadata"]["generation"] == 1 and "status" not in created
    changed = await client.replace(VS, {**created, "spec": {"hosts": ["b"]},
                                        "status": {"ignored": True}})
    assert changed["metadata"]["generation"] == 2 and "status" not in changed
    with pytest.raises(KubeApiError) as error:
        await client.replace(VS, {**created, "spec": {"hosts": ["c"]}})  # stale version
    assert error.value.status == 409
    with_status = await client.replace_status(VS, {**changed, "spec": {"hosts": ["ignored"]},
                                                   "status": {"observedGeneration": 2}})
    assert with_status["spec"] == {"hosts": ["b"]}
    assert with_status["status"] == {"observedGeneration": 2}
    assert with_status["metadata"]["generation"] == 2  # status writes leave generation alone
    assert [w.verb for w in api.writes_of("VirtualService")] == ["create", "update",
                                                                 "update/status"]
    assert api.writes_of("VirtualService")[0].user_agent == "meshpilot-test/replica-1"


async def test_objects_need_their_namespace(client: KubeClient) -> None:
    with pytest.raises(KubeApiError) as error:
        await client.create(VS, {**vs("r", ["a"]), "metadata": {"name": "r",
                                                                 "namespace": "missing"}})
    assert error.value.status == 404


async def test_server_side_apply_owns_fields_and_conflicts(api: KubeApiFake,
                                                           client: KubeClient) -> None:
    await client.apply(VS, vs("r", ["a"], team="x"), field_manager="sync")
    # Another manager changing a field sync owns, with a different value: 409 unless forced.
    with pytest.raises(KubeApiError) as error:
        await client.apply(VS, vs("r", ["b"]), field_manager="other")
    assert error.value.status == 409 and ".spec.hosts" in error.value.message
    forced = await client.apply(VS, vs("r", ["b"]), field_manager="other", force=True)
    assert forced["spec"]["hosts"] == ["b"]
    managers = {m["manager"]: m["fieldsV1"] for m in forced["metadata"]["managedFields"]}
    assert "f:hosts" not in managers["sync"].get("f:spec", {})
    # A field sync no longer applies is removed; the label other never set goes with it.
    again = await client.apply(VS, {**vs("r", ["b"]), "metadata": {
        "name": "r", "namespace": "default"}}, field_manager="sync")
    assert "team" not in (again["metadata"].get("labels") or {})
    with pytest.raises(KubeApiError) as missing:
        await client.request("PATCH", VS.path("default", "r"), body=vs("r", ["c"]),
                             content_type="application/apply-patch+yaml")
    assert missing.value.status == 400  # fieldManager is required


async def test_delete_preconditions(api: KubeApiFake, client: KubeClient) -> None:
    created = await client.create(VS, vs("r", ["a"]))
    await client.replace(VS, {**created, "spec": {"hosts": ["b"]}})
    with pytest.raises(KubeApiError) as error:
        await client.delete(VS, "default", "r",
                            resource_version=created["metadata"]["resourceVersion"])
    assert error.value.status == 409
    await client.delete(VS, "default", "r", uid=created["metadata"]["uid"])
    assert await client.get(VS, "default", "r") is None


async def test_leases_are_ordinary_objects(client: KubeClient) -> None:
    lease = await client.create(LEASES, {"metadata": {"name": "l", "namespace": "default"},
                                         "spec": {"holderIdentity": "a"}})
    await client.replace(LEASES, {**lease, "spec": {"holderIdentity": "b"}})
    with pytest.raises(KubeApiError) as error:
        await client.replace(LEASES, {**lease, "spec": {"holderIdentity": "c"}})
    assert error.value.status == 409


async def test_tokens_are_checked(tmp_path: Path) -> None:
    async with running_api(tmp_path, tokens={"right"}) as fake:
        fake.write_kubeconfig(tmp_path / "wrong", token="wrong")
        async with await KubeClient.connect(KubeOptions(kubeconfig=str(tmp_path / "wrong"))) as c:
            with pytest.raises(KubeApiError) as error:
                await c.list(PODS)
            assert error.value.status == 401


async def test_an_unreachable_server_is_an_os_error(api: KubeApiFake, client: KubeClient) -> None:
    await api.stop()
    with pytest.raises(KubeUnavailable):
        await client.list(SERVICES)


async def test_informer_relists_after_410_without_losing_deletions(
    api: KubeApiFake, client: KubeClient
) -> None:
    changes: list[tuple[str, str]] = []

    def on_change(old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        what = "deleted" if new is None else "added" if old is None else "modified"
        changes.append((what, (new or old or {})["metadata"]["name"]))

    api.create(*istio_object("ServiceEntry", "keep", {"hosts": ["k.example"]}))
    api.create(*istio_object("ServiceEntry", "gone", {"hosts": ["g.example"]}))
    informer = Informer(SE, on_change, watch_timeout=1)
    task = asyncio.create_task(informer.run(client))
    try:
        await eventually(lambda: len(changes) == 2, 5, "the initial list")
        # While the watch is down, one object goes and history is compacted: the resumed watch
        # gets 410, and only a new list can tell that `gone` was deleted.
        api.close_watches()
        api.delete("networking.istio.io/v1", "ServiceEntry", "default", "gone")
        api.create(*istio_object("ServiceEntry", "new", {"hosts": ["n.example"]}))
        api.compact()
        await eventually(lambda: ("deleted", "gone") in changes and ("added", "new") in changes,
                         10, "the relist")
        assert informer.expired >= 1 and informer.lists >= 2
        assert sorted(k[1] for k in informer.cache) == ["keep", "new"]
        assert ("deleted", "keep") not in changes
    finally:
        task.cancel()
