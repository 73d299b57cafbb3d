"""The config store interface and an in-memory store that every source builds on.

Sources (a directory of YAML, an MCP stream, …) apply and delete whole resources; the store
fires handlers with the old and new version so the server can decide what a change concerns.
Handlers run synchronously in the event loop thread and must not block.
"""

from __future__ import annotations

import asyncio
import builtins
import enum
from collections.abc import Callable, Iterable
from typing import Protocol

from meshpilot.model import Config, ConfigError, ConfigKey


class Event(enum.StrEnum):
    ADD = "add"
    UPDATE = "update"
    DELETE = "delete"


ConfigHandler = Callable[[Config | None, Config | None, Event], None]
"""Called as handler(old, new, event); `old` is None on ADD, `new` is None on DELETE."""


class ConfigStore(Protocol):
    """Read side of a config source, plus change notifications."""

    @property
    def name(self) -> str: ...

    def list(self, kind: str, namespace: str | None = None) -> builtins.list[Config]: ...

    def all(self) -> builtins.list[Config]: ...

    def get(self, key: ConfigKey) -> Config | None: ...

    def register_handler(self, handler: ConfigHandler) -> None: ...

    def errors(self) -> builtins.list[ConfigError]:
        """Documents currently rejected, each with file, line and reason."""
        ...

    def has_synced(self) -> bool:
        """True once the source has delivered its initial state."""
        ...

    async def wait_synced(self) -> None: ...

    async def run(self) -> None:
        """Load and keep watching until cancelled."""
        ...


class MemoryStore:
    """A store held in memory: the base of every source and a test double on its own."""

    def __init__(self, name: str = "memory") -> None:
        self._name = name
        self._configs: dict[ConfigKey, Config] = {}
        self._handlers: list[ConfigHandler] = []
        self._synced = asyncio.Event()

    @property
    def name(self) -> str:
        return self._name

    def list(self, kind: str, namespace: str | None = None) -> builtins.list[Config]:
        return [
            c
            for c in self._configs.values()
            if c.kind == kind and (namespace is None or c.namespace == namespace)
        ]

    def all(self) -> builtins.list[Config]:
        return list(self._configs.values())

    def get(self, key: ConfigKey) -> Config | None:
        return self._configs.get(key)

    def register_handler(self, handler: ConfigHandler) -> None:
        self._handlers.append(handler)

    def errors(self) -> builtins.list[ConfigError]:
        return []

    def has_synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def mark_synced(self) -> None:
        self._synced.set()

    async def run(self) -> None:
        self.mark_synced()

    def apply(self, config: Config) -> Event | None:
        """Add or replace a config; returns the event fired, or None if nothing changed."""
        old = self._configs.get(config.key)
        if old is not None and old.spec == config.spec and old.labels == config.labels \
                and old.annotations == config.annotations:
            # Same content (perhaps moved within its file): keep the new origin, fire nothing.
            self._configs[config.key] = config
            return None
        self._configs[config.key] = config
        event = Event.ADD if old is None else Event.UPDATE
        self._notify(old, config, event)
        return event

    def delete(self, key: ConfigKey) -> bool:
        old = self._configs.pop(key, None)
        if old is None:
            return False
        self._notify(old, None, Event.DELETE)
        return True

    def replace_all(self, configs: Iterable[Config]) -> None:
        """Make the store hold exactly `configs`, firing the minimal set of events."""
        wanted = {c.key: c for c in configs}
        for key in [k for k in self._configs if k not in wanted]:
            self.delete(key)
        for config in wanted.values():
            self.apply(config)

    def _notify(self, old: Config | None, new: Config | None, event: Event) -> None:
        for handler in self._handlers:
            handler(old, new, event)
