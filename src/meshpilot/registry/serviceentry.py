"""Services and endpoints from ServiceEntry and WorkloadEntry config.

Each ServiceEntry host becomes a Service. Its endpoints are either written inline or are the
WorkloadEntries in the same namespace whose labels match its `workloadSelector`. A change to a
WorkloadEntry only moves endpoints, so it asks for an EDS push of the hosts that select it;
a ServiceEntry change alters services and asks for a full push.

Everything is indexed as config arrives, so reads cost what they return: services are converted
once per ServiceEntry change, selectors are matched through a (label, value) index rather than
by scanning every entry, and each host's endpoints are cached until something they depend on
changes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from meshpilot.config.store import ConfigStore, Event
from meshpilot.model import (
    Config,
    ConfigKey,
    Endpoint,
    HealthStatus,
    Kind,
    Locality,
    Port,
    Protocol,
    PushRequest,
    Resolution,
    Service,
    ServiceLocation,
    TriggerReason,
)
from meshpilot.registry.base import Updater

log = logging.getLogger("meshpilot.registry")

PROVIDER = "serviceentry"

HostKey = tuple[str, str]
"""(namespace, hostname)"""

_ANY = ("", "")
"""Index slot for selectors with no labels, which select every workload of the namespace."""


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _ports(spec: Mapping[str, Any]) -> tuple[Port, ...]:
    ports = []
    for raw in spec.get("ports") or []:
        name = str(raw.get("name", ""))
        proto = raw.get("protocol")
        protocol = Protocol.parse(str(proto)) if proto else Protocol.from_port_name(name)
        target = raw.get("targetPort")
        ports.append(Port(name, int(raw["number"]), protocol, int(target) if target else None))
    return tuple(ports)


def services_of(se: Config) -> list[Service]:
    spec = se.spec
    ports = _ports(spec)
    return [
        Service(
            hostname=host,
            namespace=se.namespace,
            ports=ports,
            # Unset and null both mean Istio's defaults.
            resolution=Resolution(spec.get("resolution") or "NONE"),
            location=ServiceLocation(spec.get("location") or "MESH_EXTERNAL"),
            addresses=tuple(spec.get("addresses") or ()),
            labels=dict(se.labels),
            export_to=tuple(spec.get("exportTo") or ()),
            registry=PROVIDER,
            source=f"{se.key}",
        )
        for host in spec.get("hosts") or []
    ]


def _selector(se: Config) -> Mapping[str, str] | None:
    selector = se.spec.get("workloadSelector")
    if selector is None:
        return None
    labels: Mapping[str, str] = selector.get("labels") or {}
    return labels


def _workload_endpoints(
    service: Service, workload: Mapping[str, Any], workload_name: str = ""
) -> list[Endpoint]:
    """One Endpoint per service port for a workload (inline endpoint or WorkloadEntry spec)."""
    named_ports: Mapping[str, Any] = workload.get("ports") or {}
    address = str(workload["address"])
    out = []
    for port in service.ports:
        target = named_ports.get(port.name) or port.target_port or port.number
        out.append(
            Endpoint(
                hostname=service.hostname,
                namespace=service.namespace,
                service_port=port.number,
                address=address,
                port=int(target),
                labels=dict(workload.get("labels") or {}),
                network=str(workload.get("network") or ""),
                locality=Locality.parse(str(workload.get("locality") or "")),
                service_account=str(workload.get("serviceAccount") or ""),
                weight=int(workload.get("weight") or 1),
                health=HealthStatus.HEALTHY,
                workload_name=workload_name,
            )
        )
    return out


class _LabelIndex:
    """Keys by (namespace, label, value), to find candidates for a selector without a scan."""

    def __init__(self) -> None:
        self._slots: dict[str, dict[tuple[str, str], set[ConfigKey]]] = defaultdict(
            lambda: defaultdict(set)
        )

    def add(self, key: ConfigKey, pairs: Iterable[tuple[str, str]]) -> None:
        for pair in pairs:
            self._slots[key.namespace][pair].add(key)

    def remove(self, key: ConfigKey, pairs: Iterable[tuple[str, str]]) -> None:
        slots = self._slots[key.namespace]
        for pair in pairs:
            slots[pair].discard(key)

    def get(self, namespace: str, pair: tuple[str, str]) -> set[ConfigKey]:
        return self._slots[namespace].get(pair, set())


class ServiceEntryRegistry:
    """Reads ServiceEntry and WorkloadEntry from a config store and keeps an index of both."""

    def __init__(
        self,
        store: ConfigStore,
        updater: Updater,
        cluster_id: str = "",
        more_stores: Sequence[ConfigStore] = (),
    ) -> None:
        """`more_stores` add WorkloadEntries (and ServiceEntries) from other sources, such as
        auto-registered workloads, indexed together with the main store's."""
        self._stores = [store, *more_stores]
        self._updater = updater
        self._cluster_id = cluster_id
        self._entries: dict[ConfigKey, Config] = {}
        self._services: dict[ConfigKey, list[Service]] = {}
        self._hosts: dict[HostKey, list[ConfigKey]] = defaultdict(list)
        self._workloads: dict[ConfigKey, Config] = {}
        # ServiceEntries indexed by their selector's pairs; WorkloadEntries by their labels.
        self._selectors = _LabelIndex()
        self._labels = _LabelIndex()
        self._endpoints: dict[HostKey, list[Endpoint]] = {}
        for source in self._stores:
            source.register_handler(self._on_config)
            for config in source.list(Kind.SERVICE_ENTRY):
                self._add_entry(config)
            for config in source.list(Kind.WORKLOAD_ENTRY):
                self._add_workload(config)

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    def has_synced(self) -> bool:
        return all(s.has_synced() for s in self._stores)

    async def wait_synced(self) -> None:
        for source in self._stores:
            await source.wait_synced()

    async def run(self) -> None:
        # Everything arrives through the store's handlers; nothing of our own to watch.
        return None

    def status(self) -> dict[str, Any]:
        return {
            "name": PROVIDER,
            "provider": PROVIDER,
            "connected": True,
            "synced": self.has_synced(),
            "stale": False,
            "services": len(self._entries),
            "instances": len(self._workloads),
        }

    # Reads ------------------------------------------------------------------------------------

    def services(self) -> list[Service]:
        out: list[Service] = []
        for (_, hostname), keys in self._hosts.items():
            if keys:
                # The same host in two ServiceEntries of one namespace: the first one's ports win.
                first = min(keys)
                out.extend(s for s in self._services[first] if s.hostname == hostname)
        return out

    def endpoints(self, hostname: str, namespace: str) -> list[Endpoint]:
        key = (namespace, hostname)
        cached = self._endpoints.get(key)
        if cached is None:
            cached = self._endpoints[key] = self._compute_endpoints(key)
        return list(cached)  # a copy: callers must not be able to change the cache

    def _compute_endpoints(self, host: HostKey) -> list[Endpoint]:
        out: list[Endpoint] = []
        for se_key in sorted(self._hosts.get(host, ())):
            se = self._entries[se_key]
            service = next(s for s in self._services[se_key] if s.hostname == host[1])
            selector = _selector(se)
            if selector is None:
                for raw in se.spec.get("endpoints") or []:
                    out.extend(_workload_endpoints(service, raw))
                continue
            for we_key in sorted(self._selected_by(se_key.namespace, selector)):
                we = self._workloads[we_key]
                out.extend(_workload_endpoints(service, we.spec, we.name))
        return out

    def _selected_by(self, namespace: str, selector: Mapping[str, str]) -> set[ConfigKey]:
        if not selector:
            return {k for k in self._workloads if k.namespace == namespace}
        candidates = min(
            (self._labels.get(namespace, pair) for pair in selector.items()), key=len
        )
        return {
            k
            for k in candidates
            if labels_match(selector, self._workloads[k].spec.get("labels") or {})
        }

    def _hosts_selecting(self, we: Config) -> set[HostKey]:
        labels: Mapping[str, str] = we.spec.get("labels") or {}
        candidates = set(self._selectors.get(we.namespace, _ANY))
        for pair in labels.items():
            candidates |= self._selectors.get(we.namespace, pair)
        hosts: set[HostKey] = set()
        for se_key in candidates:
            selector = _selector(self._entries[se_key])
            if selector is not None and labels_match(selector, labels):
                hosts.update((se_key.namespace, s.hostname) for s in self._services[se_key])
        return hosts

    # Index maintenance -----------------------------------------------------------------------

    def _add_entry(self, se: Config) -> set[HostKey]:
        self._entries[se.key] = se
        self._services[se.key] = services_of(se)
        selector = _selector(se)
        if selector is not None:
            self._selectors.add(se.key, selector.items() or [_ANY])
        hosts = {(se.namespace, s.hostname) for s in self._services[se.key]}
        for host in hosts:
            self._hosts[host].append(se.key)
        return hosts

    def _remove_entry(self, key: ConfigKey) -> set[HostKey]:
        se = self._entries.pop(key)
        selector = _selector(se)
        if selector is not None:
            self._selectors.remove(key, selector.items() or [_ANY])
        hosts = {(key.namespace, s.hostname) for s in self._services.pop(key)}
        for host in hosts:
            self._hosts[host].remove(key)
            if not self._hosts[host]:
                del self._hosts[host]
        return hosts

    def _add_workload(self, we: Config) -> None:
        self._workloads[we.key] = we
        self._labels.add(we.key, (we.spec.get("labels") or {}).items())

    def _remove_workload(self, key: ConfigKey) -> None:
        we = self._workloads.pop(key)
        self._labels.remove(key, (we.spec.get("labels") or {}).items())

    def _invalidate(self, hosts: Iterable[HostKey]) -> None:
        for host in hosts:
            self._endpoints.pop(host, None)

    # Events -----------------------------------------------------------------------------------

    def _on_config(self, old: Config | None, new: Config | None, event: Event) -> None:
        current = new or old
        assert current is not None
        if current.kind == Kind.SERVICE_ENTRY:
            hosts = self._remove_entry(old.key) if old is not None else set()
            if new is not None:
                hosts |= self._add_entry(new)
            self._invalidate(hosts)
            self._updater.config_update(
                PushRequest(
                    full=True,
                    config_kinds=frozenset({Kind.SERVICE_ENTRY}),
                    reasons=frozenset({TriggerReason.SERVICE}),
                )
            )
        elif current.kind == Kind.WORKLOAD_ENTRY:
            hosts = set()
            if old is not None:
                hosts |= self._hosts_selecting(old)
                self._remove_workload(old.key)
            if new is not None:
                self._add_workload(new)
                hosts |= self._hosts_selecting(new)
            self._invalidate(hosts)
            if not hosts:
                return  # selected by no ServiceEntry: no endpoint moved, nothing to push
            log.debug("%s %s moves endpoints of %s", event, current.key, sorted(hosts))
            self._updater.config_update(
                PushRequest(
                    full=False,
                    config_kinds=frozenset({Kind.WORKLOAD_ENTRY}),
                    eds_hosts=frozenset(hosts),
                    reasons=frozenset({TriggerReason.ENDPOINT}),
                )
            )
