"""A list-and-watch cache of one resource type, as client-go's reflector keeps one.

    list (all pages) ─► replace the cache, diffing old against new ─► watch from the list's
    resourceVersion ─► apply ADDED / MODIFIED / DELETED, follow BOOKMARKs ─► stream ends:
    watch again from the last resourceVersion seen ─► 410 Expired: list again

Every change reaches `on_change(old, new)` (`old` None for an addition, `new` None for a
deletion). A relist never loses a deletion: objects that were cached but are absent from the
fresh list are reported deleted, so a delete that happened while the watch was expired (or the
API server was unreachable) is still seen. The cache and the resourceVersion outlive a failed
connection: `run()` raises `KubeUnavailable` and, called again, resumes the watch where it
stopped — a relist only when the server says the version is too old.

`synced` is set after the first complete list. Objects are plain dicts keyed by
(namespace, name).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from meshpilot.kube.client import KubeApiError, KubeClient, Object, Resource

log = logging.getLogger("meshpilot.kube")

Key = tuple[str, str]
ChangeHandler = Callable[[Object | None, Object | None], None]


def key_of(obj: Object) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class Informer:
    def __init__(
        self,
        resource: Resource,
        on_change: ChangeHandler,
        *,
        namespace: str | None = None,
        label_selector: str = "",
        watch_timeout: int = 0,
    ) -> None:
        self.resource = resource
        self.on_change = on_change
        self.namespace = namespace
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        self.cache: dict[Key, Object] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()
        self.lists = 0
        """Complete lists done (the first one, then one per 410)."""
        self.expired = 0
        """Times the server said the resourceVersion was too old."""

    def get(self, namespace: str, name: str) -> Object | None:
        return self.cache.get((namespace, name))

    def objects(self) -> list[Object]:
        return list(self.cache.values())

    async def run(self, client: KubeClient) -> None:
        """List if needed, then watch for ever; raises KubeUnavailable when the server is away."""
        while True:
            if not self.resource_version:
                await self.relist(client)
            try:
                async for event in client.watch(
                    self.resource, self.resource_version, self.namespace,
                    label_selector=self.label_selector, timeout_seconds=self.watch_timeout,
                ):
                    self._apply(event.type, event.object)
                    if event.resource_version:
                        self.resource_version = event.resource_version
            except KubeApiError as error:
                if error.status != 410:
                    raise
                # The version we hold is older than the server keeps history for: whatever
                # changed since is only known by listing again.
                self.expired += 1
                log.info("watch of %s expired at resourceVersion %s; listing again",
                         self.resource, self.resource_version)
                self.resource_version = ""

    async def relist(self, client: KubeClient) -> None:
        listed = await client.list(self.resource, self.namespace,
                                   label_selector=self.label_selector)
        fresh = {key_of(obj): obj for obj in listed.items}
        for key in [k for k in self.cache if k not in fresh]:
            old = self.cache.pop(key)
            self.on_change(old, None)
        for key, obj in fresh.items():
            before = self.cache.get(key)
            self.cache[key] = obj
            if before is None or _version(before) != _version(obj):
                self.on_change(before, obj)
        self.resource_version = listed.resource_version
        self.lists += 1
        self.synced.set()

    def _apply(self, kind: str, obj: Object) -> None:
        if kind == "BOOKMARK":
            return
        key = key_of(obj)
        old = self.cache.get(key)
        if kind == "DELETED":
            if old is not None:
                del self.cache[key]
                self.on_change(old, None)
            return
        if old is not None and _version(old) == _version(obj):
            return
        self.cache[key] = obj
        self.on_change(old, obj)


def _version(obj: Object) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))
