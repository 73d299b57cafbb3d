"""Foreign config translated at ingestion: a store that shows Istio config only.

It wraps the real sources (files, MCP, Kubernetes). Istio kinds pass through untouched. SMI and
Gateway API objects are kept — visible in `all()` for the debug pages — but in place of them
the store serves the Istio VirtualServices and Gateways they translate to (`foreign/`), each
annotated with the object it came from. Whenever a foreign object changes, everything foreign
is translated again (there are few) and only the derived configs that changed fire events,
so the rest of meshpilot — translation to Envoy, diagnostics, analysis — never knows SMI or
the Gateway API exist. Problems found while translating (a missing route group, a Gateway
that is not there) are reported with the foreign object's file and line, like validation
errors.
"""

from __future__ import annotations

import builtins
from typing import Any

from meshpilot.config.foreign import gateway_api, smi
from meshpilot.config.foreign.common import Translation
from meshpilot.config.store import ConfigHandler, ConfigStore, Event
from meshpilot.model import Config, ConfigError, ConfigKey

FOREIGN_GROUPS = smi.GROUPS | {gateway_api.GROUP}


def is_foreign(config: Config) -> bool:
    return config.group in FOREIGN_GROUPS


class TranslatingStore:
    def __init__(self, inner: ConfigStore, trust_domain: str = "cluster.local") -> None:
        self.inner = inner
        self.trust_domain = trust_domain
        """For the principals of SMI TrafficTarget sources."""
        self._handlers: list[ConfigHandler] = []
        self._derived: dict[ConfigKey, Config] = {}
        self._errors: list[ConfigError] = []
        self.route_status: dict[str, list[dict[str, str]]] = {}
        """Gateway API route conditions per route, for the debug endpoint."""
        inner.register_handler(self._on_inner)
        self._translate()

    @property
    def name(self) -> str:
        return self.inner.name

    def list(self, kind: str, namespace: str | None = None) -> builtins.list[Config]:
        own = [c for c in self.inner.list(kind, namespace) if not is_foreign(c)]
        return own + [
            c for c in self._derived.values()
            if c.kind == kind and (namespace is None or c.namespace == namespace)
        ]

    def all(self) -> builtins.list[Config]:
        return [*self.inner.all(), *self._derived.values()]

    def get(self, key: ConfigKey) -> Config | None:
        found = self._derived.get(key) or self.inner.get(key)
        return None if found is None or is_foreign(found) else found

    def register_handler(self, handler: ConfigHandler) -> None:
        self._handlers.append(handler)

    def errors(self) -> builtins.list[ConfigError]:
        return [*self.inner.errors(), *self._errors]

    def has_synced(self) -> bool:
        return self.inner.has_synced()

    async def wait_synced(self) -> None:
        await self.inner.wait_synced()

    async def run(self) -> None:
        await self.inner.run()

    def set_trust_domain(self, trust_domain: str) -> None:
        """The mesh's trust domain is known only once MeshConfig and flags are read."""
        if trust_domain != self.trust_domain:
            self.trust_domain = trust_domain
            self._translate()

    def status(self) -> dict[str, Any]:
        return {"routes": dict(self.route_status), "derived": sorted(map(str, self._derived))}

    def _on_inner(self, old: Config | None, new: Config | None, event: Event) -> None:
        current = new or old
        if current is not None and is_foreign(current):
            self._translate()
        else:
            self._fire(old, new, event)

    def _translate(self) -> None:
        foreign = [c for c in self.inner.all() if is_foreign(c)]
        result = Translation()
        smi.translate(foreign, result, self.trust_domain)
        gateway_api.translate(foreign, result)
        wanted = {c.key: c for c in result.configs}
        before, self._derived = self._derived, wanted
        self._errors = result.errors
        self.route_status = result.status
        for key in sorted(before.keys() - wanted.keys()):
            self._fire(before[key], None, Event.DELETE)
        for key in sorted(wanted):
            old = before.get(key)
            if old is None:
                self._fire(None, wanted[key], Event.ADD)
            elif old.spec != wanted[key].spec:
                self._fire(old, wanted[key], Event.UPDATE)

    def _fire(self, old: Config | None, new: Config | None, event: Event) -> None:
        for handler in self._handlers:
            handler(old, new, event)
