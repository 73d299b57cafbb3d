"""Workloads that register themselves: WorkloadGroup auto-registration, as Istio does for VMs.

A proxy started with `--workload-group NAME` sends node metadata `AUTO_REGISTER_GROUP`. When
it connects, the server looks up the WorkloadGroup `NAME` in the proxy's namespace and creates
a WorkloadEntry from its template — the group's labels and annotations, the template's ports,
network, locality, weight and service account, the proxy's own labels on top, and the proxy's
IP as the address — named `<group>-<ip>` (with `-<network>` when there is one). ServiceEntries
select it like any WorkloadEntry, so the workload starts receiving traffic without anyone
writing a file. When its last connection closes, the entry is removed after a grace period
(Istio's default: 10 s), so a proxy that merely reconnects keeps its endpoint throughout.

Auto-registered entries live in their own in-memory store, never in the user's files.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from meshpilot.config.store import ConfigStore, MemoryStore
from meshpilot.model import Config, ConfigKey, Kind, Proxy

log = logging.getLogger("meshpilot.registry")

GROUP_KEY = "AUTO_REGISTER_GROUP"
"""Node metadata naming the WorkloadGroup to register under (Istio's key)."""
GRACE_SECONDS = 10.0


class AutoRegistration:
    def __init__(self, config: ConfigStore, grace_seconds: float = GRACE_SECONDS) -> None:
        self._config = config
        self.store = MemoryStore("autoregistration")
        self.store.mark_synced()
        self._grace = grace_seconds
        self._connections: dict[ConfigKey, int] = {}
        self._removals: dict[ConfigKey, asyncio.TimerHandle] = {}

    def entry_for(self, proxy: Proxy) -> Config | None:
        """The WorkloadEntry a connecting proxy stands for, or None when it registers nothing."""
        group_name = str(proxy.metadata.get(GROUP_KEY) or "")
        if not group_name:
            return None
        group = self._config.get(ConfigKey(Kind.WORKLOAD_GROUP, proxy.namespace, group_name))
        if group is None:
            log.warning("proxy %s asks to register in WorkloadGroup %s/%s, which does not exist",
                        proxy.id, proxy.namespace, group_name)
            return None
        if not proxy.ip_addresses:
            log.warning("proxy %s has no IP to register in WorkloadGroup %s/%s",
                        proxy.id, proxy.namespace, group_name)
            return None
        ip = proxy.ip_addresses[0]
        template: dict[str, Any] = dict(group.spec.get("template") or {})
        meta = group.spec.get("metadata") or {}
        network = proxy.network or str(template.get("network") or "")
        spec = {
            **template,
            "address": ip,
            "labels": {**(meta.get("labels") or {}), **(template.get("labels") or {}),
                       **proxy.labels},
        }
        if network:
            spec["network"] = network
        name = f"{group_name}-{ip}" + (f"-{network}" if network else "")
        return Config(
            kind=Kind.WORKLOAD_ENTRY,
            name=name,
            namespace=proxy.namespace,
            spec=spec,
            annotations={**(meta.get("annotations") or {}),
                         "istio.io/autoRegistrationGroup": group_name},
            source_file="",
        )

    def connected(self, proxy: Proxy) -> None:
        entry = self.entry_for(proxy)
        if entry is None:
            return
        pending = self._removals.pop(entry.key, None)
        if pending is not None:
            pending.cancel()
        self._connections[entry.key] = self._connections.get(entry.key, 0) + 1
        if self.store.apply(entry) is not None:
            log.info("registered %s for proxy %s", entry.key, proxy.id)

    def disconnected(self, proxy: Proxy) -> None:
        entry = self.entry_for(proxy)
        if entry is None or entry.key not in self._connections:
            return
        self._connections[entry.key] -= 1
        if self._connections[entry.key] > 0:
            return
        del self._connections[entry.key]
        loop = asyncio.get_running_loop()
        self._removals[entry.key] = loop.call_later(self._grace, self._remove, entry.key)

    def _remove(self, key: ConfigKey) -> None:
        self._removals.pop(key, None)
        if key not in self._connections and self.store.delete(key):
            log.info("removed %s: its proxy stayed away for %.0fs", key, self._grace)
