"""Istio config documents in etcd: `meshpilot discovery --config-source etcd://HOST:PORT?…`.

    etcd://127.0.0.1:2379[,host:port…]?prefix=/meshpilot/config&username=U&password=P

Layout: one resource per key, `<prefix>/<Kind>/<namespace>/<name>` (e.g.
`/meshpilot/config/VirtualService/default/reviews`; a kind whose name two APIs share is
qualified, as `Gateway.gateway.networking.k8s.io`), the value one YAML or JSON document
exactly as it would be in a file (`apiVersion`, `kind`, `metadata`, `spec`). The key must name
the resource its document holds, so two keys can never define the same resource. Keys elsewhere
below the prefix (fewer or more segments) are reported and ignored. `meshpilot config put`
writes documents at the right keys; `etcdctl put` works as well.

Every value goes through the same steps as a document read from a file (`parse_text`,
`document_to_config`, `validate_config`). A rejected value is reported by `errors()` with the key
(as the "file"), the line within the value, the resource and the field — also on
`/debug/config_errors` — logged once per value, and the last good version of that resource
keeps serving. Deleting the key deletes the resource, whatever its last value.

Following etcd: a Range over the prefix at one revision (paged), then one Watch from that
revision + 1, so nothing between the two is lost. If the revision to watch from has been
compacted the store lists again and replaces its state: keys that vanished meanwhile are deleted
then, so deletions are never lost. When etcd is unreachable the last config keeps serving
(`errors()` says it is stale) and the store reconnects with backoff to the next host, listing
again on each connection.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from aetcd import rpc

from meshpilot.config.filestore import format_error
from meshpilot.config.kinds import document_to_config
from meshpilot.config.store import MemoryStore
from meshpilot.config.validation import validate_config
from meshpilot.config.yamlsource import parse_text
from meshpilot.etcd.client import ERRORS, EtcdAddress, describe
from meshpilot.model import Config, ConfigError
from meshpilot.registry.etcd import prefix_range_end

log = logging.getLogger("meshpilot.config")

DEFAULT_PREFIX = "/meshpilot/config"
PAGE_SIZE = 500


class _Compacted(Exception):
    pass


def config_key(prefix: str, kind: str, namespace: str, name: str) -> str:
    """Where a resource lives: `<prefix>/<Kind>/<namespace>/<name>`."""
    return f"{prefix.rstrip('/')}/{kind}/{namespace}/{name}"


def read_value(key: str, value: bytes, prefix: str) -> Config | builtins.list[ConfigError]:
    """One key's value as a validated Config, or the reasons it is rejected."""
    try:
        text = value.decode("utf-8-sig")
    except UnicodeDecodeError:
        return [ConfigError(key, 0, "value is not valid UTF-8")]
    parsed = parse_text(text, key, json_input=text.lstrip().startswith("{"))
    if parsed.error is not None:
        return [parsed.error]
    if len(parsed.documents) != 1:
        return [ConfigError(key, 0, f"expected one document per key, found "
                                    f"{len(parsed.documents)}")]
    document = parsed.documents[0]
    result = document_to_config(document, key)
    if isinstance(result, ConfigError):
        return [result]
    expected = config_key(prefix, result.key.kind, result.namespace, result.name)
    if key != expected:
        return [ConfigError(key, document.line, f"the document is {result.key}, which belongs "
                            f"at {expected}", "metadata.name", result.key)]
    problems = validate_config(result)
    return problems or result


class EtcdConfigStore(MemoryStore):
    def __init__(self, address: EtcdAddress) -> None:
        super().__init__(address.name)
        self.address = address
        self.prefix = "/" + address.param("prefix", DEFAULT_PREFIX).strip("/")
        self._range = (self.prefix + "/").encode()
        self.revision = 0
        self.relists = 0
        self.connected = False
        self._attempt = 0
        self._good: dict[str, Config] = {}
        """Per key, the last value that validated (what serves while a newer one is rejected)."""
        self._rejected: dict[str, builtins.list[ConfigError]] = {}
        self._logged: dict[str, bytes] = {}
        self._problem: ConfigError | None = None

    def errors(self) -> builtins.list[ConfigError]:
        errors = [e for key in sorted(self._rejected) for e in self._rejected[key]]
        return [self._problem, *errors] if self._problem else errors

    # Running -----------------------------------------------------------------------------------

    async def run(self) -> None:
        delay = 0.5
        while True:
            client = self.address.client(self._attempt)
            self._attempt += 1
            try:
                await client.connect()
                while True:
                    try:
                        await self._follow(client, await self._list(client) + 1)
                    except _Compacted as compacted:
                        # Changes up to the compaction are gone: only a listing can tell.
                        self.relists += 1
                        log.info("%s: %s; listing again", self.name, compacted)
            except ERRORS as error:
                self._unreachable(describe(error))
            finally:
                await client.close()
            delay = 0.5 if self.connected else min(delay * 2, 15.0)
            self.connected = False
            await asyncio.sleep(delay)

    def _unreachable(self, reason: str) -> None:
        if self._problem is None:
            log.warning("%s unreachable (%s); keeping the last config it held", self.name,
                        reason)
        self._problem = ConfigError(self.name, 0, f"etcd unreachable: {reason}; serving the "
                                    "last config it held (stale)")

    async def _list(self, client: Any) -> int:
        start, end = self._range, prefix_range_end(self._range)
        revision = 0
        values: dict[str, tuple[bytes, int]] = {}
        while True:
            request = rpc.RangeRequest(key=start, range_end=end, limit=PAGE_SIZE,
                                       revision=revision)
            try:
                response = await client.kvstub.Range(
                    request, timeout=self.address.seconds("timeout", 5.0),
                    metadata=client.metadata)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.OUT_OF_RANGE and revision:
                    raise _Compacted(f"revision {revision} compacted") from error
                raise
            revision = revision or int(response.header.revision)
            for kv in response.kvs:
                values[kv.key.decode(errors="replace")] = (kv.value, int(kv.mod_revision))
            if not response.more or not response.kvs:
                break
            start = response.kvs[-1].key + b"\0"
        for key in [k for k in {*self._good, *self._rejected} if k not in values]:
            self._forget(key)  # deleted while we were not watching
        for key, (value, version) in sorted(values.items()):
            self._put(key, value, version)
        self.revision = revision
        self.connected = True
        self._problem = None
        self.mark_synced()
        log.debug("%s: listed %d keys at revision %d", self.name, len(values), revision)
        return revision

    async def _follow(self, client: Any, start_revision: int) -> None:
        stop = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=self._range, range_end=prefix_range_end(self._range),
                start_revision=start_revision))
            await stop.wait()  # etcd ends the watch when the client closes its half

        call = rpc.WatchStub(client.channel).Watch(requests(), metadata=client.metadata)
        try:
            async for response in call:
                if response.compact_revision:
                    raise _Compacted(f"compacted at revision {response.compact_revision}")
                if response.canceled:
                    raise OSError(f"watch canceled: {response.cancel_reason or 'no reason'}")
                self._apply(response.events)
                if response.events:
                    self.revision = int(response.header.revision)
        finally:
            stop.set()
            call.cancel()
        raise OSError("watch stream ended")

    def _apply(self, events: Iterable[Any]) -> None:
        for event in events:
            key = event.kv.key.decode(errors="replace")
            if event.type == rpc.Event.PUT:
                self._put(key, event.kv.value, int(event.kv.mod_revision))
            else:
                self._forget(key)

    # Keys to configs ---------------------------------------------------------------------------

    def _put(self, key: str, value: bytes, revision: int) -> None:
        result = read_value(key, value, self.prefix)
        if isinstance(result, Config):
            config = dataclasses.replace(result, resource_version=str(revision))
            self._rejected.pop(key, None)
            self._logged.pop(key, None)
            self._good[key] = config
            self.apply(config)
            return
        self._rejected[key] = result
        if self._logged.get(key) != value:
            self._logged[key] = value
            kept = " (keeping the last good version)" if key in self._good else ""
            for problem in result:
                log.warning("%s%s", format_error(problem), kept)

    def _forget(self, key: str) -> None:
        self._rejected.pop(key, None)
        self._logged.pop(key, None)
        good = self._good.pop(key, None)
        if good is not None:
            self.delete(good.key)
