"""Istio config from a Kubernetes API server: `meshpilot discovery --config-source kube://…`.

One informer (list and watch, `kube.informer`) per kind meshpilot admits (`config.kinds`),
at the kind's preferred version (the first one listed there, `v1` for networking.istio.io;
`version=v1beta1` in the address asks for another one on older clusters). Every object goes
through the same two steps as a document read from a file — `document_to_config` for the
envelope, `validate_config` for the spec — so a custom resource the API server accepted (its
CRD schema is loose: `x-kubernetes-preserve-unknown-fields`) but Istio would reject is
rejected here the same way: reported by `errors()` with kind, namespace, name and the field
(also on `/debug/config_errors` and as IST0106 by the analysis), logged once per
resourceVersion, and the last good version of that object keeps serving. Deleting the object
deletes it, whatever its last state.

Objects are kept as the API server sent them (`objects()`), with their `status`, for the
status writer (`kube.status`). Status-only changes do not fire handlers: `MemoryStore.apply`
fires nothing when spec, labels and annotations are unchanged.

Connection: like the MCP source, the store keeps its last config while the API server is
unreachable (saying so in `errors()`) and reconnects with backoff; each (re)connection lists
every kind again, so deletions made meanwhile are seen, before watching. A kind whose CRD is
not installed (404 on its list) is skipped until the next connection, with one log line.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import logging
from typing import Any

from meshpilot.config.filestore import format_error
from meshpilot.config.kinds import SUPPORTED_KINDS, document_to_config
from meshpilot.config.store import MemoryStore
from meshpilot.config.validation import validate_config
from meshpilot.config.yamlsource import Document
from meshpilot.kube.client import (
    KubeApiError,
    KubeClient,
    KubeOptions,
    Object,
    Resource,
    custom_resource,
)
from meshpilot.kube.informer import Informer, key_of
from meshpilot.model import Config, ConfigError, ConfigKey
from meshpilot.model.config import key_kind

log = logging.getLogger("meshpilot.config")


class KubeConfigStore(MemoryStore):
    def __init__(self, options: KubeOptions) -> None:
        super().__init__(options.text)
        self.options = options
        self.file = options.name
        """What errors name as their "file": `kube` or `kube:<context>`."""
        namespace = options.param("namespace") or None
        timeout = int(options.seconds("watchTimeout", 0))
        self.informers: dict[str, Informer] = {}
        self.resources: dict[str, Resource] = {}
        for spec in SUPPORTED_KINDS:
            version = options.param("version") if options.param("version") in spec.versions \
                else spec.versions[0]
            resource = custom_resource(spec.group, version, spec.kind)
            self.resources[spec.kind] = resource
            self.informers[spec.kind] = Informer(
                resource, self._handler(key_kind(spec.kind, spec.group)), namespace=namespace,
                watch_timeout=timeout)
        self.missing: set[str] = set()
        """Kinds whose CRD the server does not serve (skipped until the next connection)."""
        self._rejected: dict[ConfigKey, list[ConfigError]] = {}
        self._logged: dict[ConfigKey, str] = {}
        """The resourceVersion last logged as rejected, per object (log once per version)."""
        self._problem: ConfigError | None = None
        self.connected = False
        self.changed = asyncio.Event()
        """Set on every object event, status-only ones and rejections included (the status
        writer's wake-up; it clears it)."""

    # Reads for the status writer ---------------------------------------------------------------

    def objects(self) -> builtins.list[tuple[Resource, Object]]:
        return [(self.resources[kind], obj) for kind, informer in self.informers.items()
                for obj in informer.objects()]

    def rejections(self, key: ConfigKey) -> builtins.list[ConfigError]:
        return builtins.list(self._rejected.get(key, ()))

    def errors(self) -> builtins.list[ConfigError]:
        errors = [e for errors in self._rejected.values() for e in errors]
        return [self._problem, *errors] if self._problem else errors

    # Running -----------------------------------------------------------------------------------

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._connection()
            except (OSError, KubeApiError) as error:
                self._unreachable(error)
            delay = 0.5 if self.connected else min(delay * 2, 30.0)
            self.connected = False
            await asyncio.sleep(delay)

    async def _connection(self) -> None:
        client = await KubeClient.connect(self.options, "meshpilot-discovery")
        try:
            watched = []
            self.missing.clear()
            for kind, informer in self.informers.items():
                try:
                    await informer.relist(client)
                except KubeApiError as error:
                    if error.status != 404:
                        raise
                    self.missing.add(kind)
                    log.info("%s: %s is not served (CRD not installed?); skipping it",
                             self.name, informer.resource)
                    continue
                watched.append(informer)
            self.connected = True
            self._problem = None
            self.mark_synced()
            try:
                async with asyncio.TaskGroup() as group:
                    for informer in watched:
                        group.create_task(informer.run(client))
            except BaseExceptionGroup as failed:
                raise failed.exceptions[0] from None
        finally:
            await client.close()

    def _unreachable(self, error: BaseException) -> None:
        reason = str(error)
        if self._problem is None:
            log.warning("Kubernetes API (%s) unreachable or refusing (%s); keeping the last "
                        "config it sent", self.name, reason)
        self._problem = ConfigError(self.file, 0, f"Kubernetes API unreachable: {reason}; "
                                    "serving the last config it sent")

    # Objects to configs ------------------------------------------------------------------------

    def _handler(self, kind: str) -> Any:
        def on_change(old: Object | None, new: Object | None) -> None:
            self.changed.set()
            if new is None:
                namespace, name = key_of(old or {})
                key = ConfigKey(kind, namespace or "default", name)
                self._rejected.pop(key, None)
                self._logged.pop(key, None)
                self.delete(key)
                return
            self._admit(new)

        return on_change

    def _admit(self, obj: Object) -> None:
        result = document_to_config(Document(obj, 0), self.file)
        problems = [result] if isinstance(result, ConfigError) else validate_config(result)
        version = str(obj.get("metadata", {}).get("resourceVersion", ""))
        if problems:
            key = problems[0].key
            if key is None:
                log.warning("%s: an object that cannot be identified: %s", self.name,
                            problems[0].message)
                return
            self._rejected[key] = problems
            if self._logged.get(key) != version:
                self._logged[key] = version
                for problem in problems:
                    log.warning("%s (keeping the last good version)", format_error(problem))
            return
        assert isinstance(result, Config)
        config = _with_version(result, version)
        self._rejected.pop(config.key, None)
        self._logged.pop(config.key, None)
        self.apply(config)


def _with_version(config: Config, version: str) -> Config:
    # No source file: the object lives in the API server, and nothing has a line to point at.
    return dataclasses.replace(config, resource_version=version, source_file="")
