"""Several config sources seen as one store (files and MCP servers, for example).

Reads are the union of the sources; when two define the same resource, the first source in
the order given wins. Handlers registered here are registered with every source. It has synced
when all sources have.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Sequence

from meshpilot.config.store import ConfigHandler, ConfigStore
from meshpilot.model import Config, ConfigError, ConfigKey


class CompositeStore:
    def __init__(self, sources: Sequence[ConfigStore]) -> None:
        self.sources = list(sources)

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.sources)

    def list(self, kind: str, namespace: str | None = None) -> builtins.list[Config]:
        seen: dict[ConfigKey, Config] = {}
        for source in self.sources:
            for config in source.list(kind, namespace):
                seen.setdefault(config.key, config)
        return builtins.list(seen.values())

    def all(self) -> builtins.list[Config]:
        seen: dict[ConfigKey, Config] = {}
        for source in self.sources:
            for config in source.all():
                seen.setdefault(config.key, config)
        return builtins.list(seen.values())

    def get(self, key: ConfigKey) -> Config | None:
        for source in self.sources:
            found = source.get(key)
            if found is not None:
                return found
        return None

    def register_handler(self, handler: ConfigHandler) -> None:
        for source in self.sources:
            source.register_handler(handler)

    def errors(self) -> builtins.list[ConfigError]:
        return [e for source in self.sources for e in source.errors()]

    def has_synced(self) -> bool:
        return all(s.has_synced() for s in self.sources)

    async def wait_synced(self) -> None:
        for source in self.sources:
            await source.wait_synced()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for source in self.sources:
                group.create_task(source.run(), name=f"config-{source.name}")
