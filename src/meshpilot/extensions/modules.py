"""WebAssembly modules for WasmPlugins, fetched by the server and delivered inline.

Istio's agent downloads a plugin's module next to each Envoy. meshpilot's server fetches it
once instead — `file:///path` is read, `http(s)://…` downloaded — checks its `sha256` when the
WasmPlugin gives one, and puts the bytes into the extension config itself, so a proxy needs
no file and no network access of its own. A download happens off the push path; when it
completes, a push delivers the plugin. A module that cannot be had (or whose digest differs)
is reported and its plugin left out, never replaced by something else.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from meshpilot.config.store import ConfigStore, Event
from meshpilot.model import Config, Kind, PushRequest, TriggerReason
from meshpilot.registry.base import Updater

log = logging.getLogger("meshpilot.extensions")

MAX_MODULE_BYTES = 32 * 1024 * 1024


class WasmModules:
    def __init__(self, store: ConfigStore, updater: Updater) -> None:
        self._updater = updater
        self._modules: dict[tuple[str, str], bytes] = {}
        self._problems: dict[tuple[str, str], str] = {}
        self._pending: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        store.register_handler(self._on_config)
        for plugin in store.list(Kind.WASM_PLUGIN):
            self._want(plugin)

    def loaded(self) -> Mapping[tuple[str, str], bytes]:
        """(url, sha256) → module bytes, for the snapshot."""
        return dict(self._modules)

    def problems(self) -> Mapping[tuple[str, str], str]:
        return dict(self._problems)

    def _on_config(self, old: Config | None, new: Config | None, event: Event) -> None:
        if new is not None and new.kind == Kind.WASM_PLUGIN:
            self._want(new)

    def _want(self, plugin: Config) -> None:
        key = (str(plugin.spec.get("url", "")), str(plugin.spec.get("sha256", "")))
        if key in self._modules or key in self._pending:
            return
        scheme = urlsplit(key[0]).scheme
        if scheme in ("", "file"):
            self._store(key, plugin, self._read(key[0]))
        elif scheme in ("http", "https"):
            self._pending.add(key)
            try:
                task = asyncio.get_running_loop().create_task(self._download(key, plugin))
            except RuntimeError:  # no loop yet (start-up): fetched when the server runs
                self._pending.discard(key)
                return
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._fail(key, plugin, f"URL scheme {scheme!r} is not supported (file, http, https)")

    def _read(self, url: str) -> bytes | str:
        path = Path(urlsplit(url).path if url.startswith("file:") else url)
        try:
            return path.read_bytes()
        except OSError as error:
            return f"cannot read {path}: {error.strerror or error}"

    async def _download(self, key: tuple[str, str], plugin: Config) -> None:
        try:
            timeout = aiohttp.ClientTimeout(total=60)
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.get(key[0]) as response:
                if response.status != 200:
                    raise OSError(f"HTTP {response.status}")
                body = await response.content.read(MAX_MODULE_BYTES + 1)
            result: bytes | str = body if len(body) <= MAX_MODULE_BYTES else "module too large"
        except (OSError, aiohttp.ClientError, TimeoutError) as error:
            result = f"download failed: {error}"
        self._pending.discard(key)
        if self._store(key, plugin, result):
            self._updater.config_update(PushRequest(
                full=True, config_kinds=frozenset({Kind.WASM_PLUGIN}),
                reasons=frozenset({TriggerReason.CONFIG})))

    def _store(self, key: tuple[str, str], plugin: Config, result: bytes | str) -> bool:
        if isinstance(result, str):
            self._fail(key, plugin, result)
            return False
        digest = hashlib.sha256(result).hexdigest()
        if key[1] and key[1].lower() != digest:
            self._fail(key, plugin, f"sha256 is {digest}, not {key[1]}")
            return False
        self._modules[key] = result
        self._problems.pop(key, None)
        return True

    def _fail(self, key: tuple[str, str], plugin: Config, reason: str) -> None:
        if self._problems.get(key) != reason:
            log.warning("%s: module %s unusable: %s; the plugin is left out", plugin.key,
                        key[0], reason)
        self._problems[key] = reason
