"""`meshpilot registry-sync --to kube[:context]`: ServiceEntries and WorkloadEntries written to
a Kubernetes API server with server-side apply.

Each `apply(groups)` makes the cluster match the desired set, touching only what it owns:

1. **Read what it owns**: a fresh list of ServiceEntries and WorkloadEntries in all namespaces
   with the ownership labels of this sync (`app.kubernetes.io/managed-by=
   meshpilot-registry-sync`, `meshpilot.io/sync-source=<source>`, see `sync.convert`).
2. **Apply what differs**: an object is unchanged when every field the sync sets has the
   wanted value *and* the fields the object's `managedFields` say this field manager owns are
   exactly the ones it would set now (so a field it set before and no longer wants is removed
   by applying again). Objects are applied with field manager `meshpilot-registry-sync` —
   the same on every replica, so a new leader continues the old one's ownership instead of
   conflicting with it. A new name that already exists without our labels belongs to someone
   else and is left alone (logged, counted as `skipped`).
3. **409 Conflict** on apply means another manager changed a field the sync sets (a
   `kubectl edit` of a synced object): the object is read again and, if it still carries our
   labels, applied again with `force` — the registry is the source of truth for what the sync
   owns; if someone removed the labels, it is theirs now and left alone.
4. **Garbage collection**: owned objects whose service is gone are deleted with preconditions
   (uid and resourceVersion as listed); a 409 means the object changed since, so it is read
   again and deleted only if it is still ours and still unwanted.

Between writes the target checks that its replica still leads (`--leader-election`), so a
replica that lost the Lease stops writing at once. Connection failures are retried with
backoff inside `apply` (the runner then syncs again with whatever changed meanwhile).

`watch(notify)` follows the owned objects with label-selected watches (bookmarks, a relist on
410 Expired) and calls `notify` when one changes or disappears, so an owned object deleted or
edited by hand is put back by the next sync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from meshpilot.election import Elector
from meshpilot.kube.client import (
    KubeApiError,
    KubeClient,
    KubeOptions,
    Object,
    Resource,
    custom_resource,
)
from meshpilot.kube.informer import Informer
from meshpilot.model import Kind
from meshpilot.sync.convert import MANAGED_BY, MANAGER, SOURCE, Groups, flatten, owner_labels
from meshpilot.sync.targets import manifest

log = logging.getLogger("meshpilot.sync")

FIELD_MANAGER = MANAGER
GROUP = "networking.istio.io"
KINDS = (Kind.SERVICE_ENTRY, Kind.WORKLOAD_ENTRY)

ObjectKey = tuple[str, str, str]
"""(kind, namespace, name)"""


def kube_options(target: str, kubeconfig: str = "") -> KubeOptions:
    """`kube` or `kube:CONTEXT` (the `--to` forms) as client options."""
    _, _, context = target.partition(":")
    return KubeOptions(kubeconfig=kubeconfig, context=context,
                       text=f"kube://{context}" if context else "kube://")


def _paths(value: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Leaf fields of an applied configuration: maps are walked, lists are atomic."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _paths(item, (*prefix, str(key)))
    else:
        yield prefix, value


def _applied_fields(doc: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    fields = dict(_paths(doc.get("spec") or {}, ("spec",)))
    for key, value in (doc.get("metadata", {}).get("labels") or {}).items():
        fields[("metadata", "labels", key)] = value
    return fields


def _owned_fields(obj: Mapping[str, Any], manager: str) -> set[tuple[str, ...]]:
    """The fields `manager` owns through Apply, from the object's managedFields."""
    owned: set[tuple[str, ...]] = set()

    def walk(node: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
        children = {k: v for k, v in node.items() if k.startswith("f:")}
        if not children:
            # `".": {}` marks a map owned as a container: only its own children count.
            if prefix and "." not in node:
                owned.add(prefix)
            return
        for key, child in children.items():
            walk(child if isinstance(child, Mapping) else {}, (*prefix, key[2:]))

    for entry in obj.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            walk(entry.get("fieldsV1") or {}, ())
    return owned


def _get(obj: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def up_to_date(current: Mapping[str, Any], doc: Mapping[str, Any]) -> bool:
    wanted = _applied_fields(doc)
    if any(_get(current, path) != value for path, value in wanted.items()):
        return False
    owned = _owned_fields(current, FIELD_MANAGER)
    # Without managedFields (an API server that hides them) the values alone decide.
    return not owned or owned == set(wanted)


class NotLeader(Exception):
    """This replica stopped leading in the middle of a sync."""


class KubeTarget:
    def __init__(
        self,
        options: KubeOptions,
        source: str,
        *,
        identity: str = "meshpilot-registry-sync",
        elector: Elector | None = None,
        version: str = "v1",
        retry_max: float = 30.0,
    ) -> None:
        self.options = options
        self.source = source
        self.identity = elector.identity if elector is not None else identity
        self.elector = elector
        self.version = version
        self.retry_max = retry_max
        self.labels = owner_labels(source)
        self.selector = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        self.resources = {kind: custom_resource(GROUP, version, kind) for kind in KINDS}
        self._client: KubeClient | None = None
        self.last_error = ""

    async def _connection(self) -> KubeClient:
        if self._client is None:
            self._client = await KubeClient.connect(
                self.options, f"meshpilot-registry-sync/{self.identity}")
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _check_leader(self) -> None:
        if self.elector is not None and not self.elector.is_leader:
            raise NotLeader

    def _owns(self, obj: Mapping[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return labels.get(MANAGED_BY) == MANAGER and labels.get(SOURCE) == self.labels[SOURCE]

    # The Target protocol -----------------------------------------------------------------------

    async def apply(self, groups: Groups) -> dict[str, int]:
        delay = 0.5
        while True:
            try:
                return await self._apply(groups)
            except NotLeader:
                log.info("no longer leading: sync stopped before it finished")
                return {"aborted": 1}
            except (OSError, KubeApiError) as error:
                self.last_error = str(error)
                log.warning("writing to Kubernetes failed (%s); retrying in %.1f s", error, delay)
                await self.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max)

    async def _apply(self, groups: Groups) -> dict[str, int]:
        client = await self._connection()
        counts = {"created": 0, "updated": 0, "deleted": 0, "unchanged": 0, "skipped": 0,
                  "conflicts": 0}
        desired: dict[ObjectKey, Object] = {}
        for config in flatten(groups):
            doc = manifest(config)
            doc["apiVersion"] = f"{GROUP}/{self.version}"
            doc["metadata"]["labels"] = {**doc["metadata"].get("labels", {}), **self.labels}
            desired[(config.kind, config.namespace, config.name)] = doc
        owned: dict[ObjectKey, Object] = {}
        for kind, resource in self.resources.items():
            listed = await client.list(resource, label_selector=self.selector)
            for obj in listed.items:
                meta = obj["metadata"]
                owned[(kind, meta.get("namespace", ""), meta["name"])] = obj
        for key, doc in sorted(desired.items()):
            current = owned.get(key)
            if current is not None and up_to_date(current, doc):
                counts["unchanged"] += 1
                continue
            self._check_leader()
            outcome = await self._write(client, self.resources[key[0]], doc, current)
            counts[outcome] += 1
        for key, obj in sorted(owned.items()):
            if key in desired:
                continue
            self._check_leader()
            if await self._collect(client, self.resources[key[0]], obj):
                counts["deleted"] += 1
        self.last_error = ""
        return counts

    async def _write(self, client: KubeClient, resource: Resource, doc: Object,
                     current: Object | None) -> str:
        meta = doc["metadata"]
        if current is None:
            existing = await client.get(resource, meta["namespace"], meta["name"])
            if existing is not None and not self._owns(existing):
                log.warning("%s %s/%s exists and is not managed by this sync; leaving it alone",
                            resource.kind, meta["namespace"], meta["name"])
                return "skipped"
        try:
            await client.apply(resource, doc, field_manager=FIELD_MANAGER)
            return "created" if current is None else "updated"
        except KubeApiError as error:
            if error.status != 409:
                raise
        # Someone else changed fields we set. Re-read: still ours → ours to correct.
        fresh = await client.get(resource, meta["namespace"], meta["name"])
        if fresh is not None and not self._owns(fresh):
            log.warning("%s %s/%s was taken over (ownership labels removed); leaving it alone",
                        resource.kind, meta["namespace"], meta["name"])
            return "skipped"
        self._check_leader()
        log.info("%s %s/%s was changed by another field manager; applying ours again",
                 resource.kind, meta["namespace"], meta["name"])
        await client.apply(resource, doc, field_manager=FIELD_MANAGER, force=True)
        return "conflicts"

    async def _collect(self, client: KubeClient, resource: Resource, obj: Object) -> bool:
        """Delete an owned object no source wants, only if it is still that object."""
        for _ in range(3):
            meta = obj["metadata"]
            try:
                await client.delete(resource, meta.get("namespace"), meta["name"],
                                    uid=meta.get("uid", ""),
                                    resource_version=meta.get("resourceVersion", ""))
                return True
            except KubeApiError as error:
                if error.status == 404:
                    return False
                if error.status != 409:
                    raise
            fresh = await client.get(resource, meta.get("namespace"), meta["name"])
            if fresh is None or not self._owns(fresh):
                return False
            self._check_leader()
            obj = fresh
        return False

    # Drift ------------------------------------------------------------------------------------

    async def watch(self, notify: Callable[[], None]) -> None:
        """Call `notify` whenever an owned object changes; reconnects with backoff."""
        live = False

        def changed(_old: Object | None, _new: Object | None) -> None:
            if live:
                notify()

        informers = [Informer(r, changed, label_selector=self.selector)
                     for r in self.resources.values()]
        delay = 0.5
        while True:
            client: KubeClient | None = None
            try:
                client = await KubeClient.connect(
                    self.options, f"meshpilot-registry-sync/{self.identity}")
                for informer in informers:
                    await informer.relist(client)
                if live:
                    notify()  # whatever happened while disconnected
                live = True
                delay = 0.5
                async with asyncio.TaskGroup() as group:
                    for informer in informers:
                        group.create_task(informer.run(client))
            except* (OSError, KubeApiError) as failed:
                log.debug("watching owned objects: %s", failed.exceptions[0])
            finally:
                if client is not None:
                    await client.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max)

