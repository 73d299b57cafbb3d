"""What a proxy may see: the Sidecar resource that applies to it, and exportTo.

Istio picks at most one Sidecar per proxy: one in the proxy's namespace whose
`workloadSelector` matches its labels, else one in its namespace without a selector, else one
without a selector in the root namespace (a mesh-wide default). Its egress listeners name the
hosts the proxy may reach as `namespace/host` (`*` any namespace, `.` the proxy's, `~` none),
optionally per port. Without a Sidecar every service is visible. In both cases a service is
visible only where its `exportTo` allows (`*`, `.` its own namespace, `~` nowhere, or names).

A `Scope` is computed once per (snapshot, namespace, labels) and is the cache identity for the
outbound resources that depend on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshpilot.model import Config, NodeType, Proxy, Service
from meshpilot.model.gateways import MESH, applies_to
from meshpilot.model.hosts import host_matches, resolve_short_name
from meshpilot.model.snapshot import Snapshot

ROOT_NAMESPACE = "istio-system"
"""Istio's default root namespace; a MeshConfig `rootNamespace` replaces it (snapshot.mesh)."""

ALLOW_ANY = "ALLOW_ANY"
REGISTRY_ONLY = "REGISTRY_ONLY"


def exported_to(export_to: Sequence[str], owner_namespace: str, namespace: str) -> bool:
    """Whether config in `owner_namespace` with this exportTo is visible from `namespace`."""
    if not export_to:
        return True  # Istio's default exportTo is "*"
    for entry in export_to:
        if entry == "*" or entry == namespace or (entry == "." and owner_namespace == namespace):
            return True
    return False


@dataclass(frozen=True, slots=True)
class EgressListener:
    port: int | None
    bind: str
    hosts: tuple[tuple[str, str], ...]
    """(namespace pattern, host pattern) pairs, with `.` already resolved."""

    def selects(self, service: Service) -> bool:
        return any(
            (ns == "*" or ns == service.namespace) and host_matches(host, service.hostname)
            for ns, host in self.hosts
        )


@dataclass(frozen=True, slots=True)
class Scope:
    namespace: str
    sidecar: Config | None
    egress: tuple[EgressListener, ...]
    outbound_policy: str
    labels: Mapping[str, str] | None = None
    """The proxy's labels, kept only when DestinationRules select workloads by label."""

    @property
    def key(self) -> tuple[Any, ...]:
        """Identity for caching: proxies with equal keys see the same outbound world."""
        sidecar = (str(self.sidecar.key), self.sidecar.resource_version) if self.sidecar else None
        labels = frozenset(self.labels.items()) if self.labels is not None else None
        return (self.namespace, sidecar, self.outbound_policy, labels)

    def visible(self, service: Service, port: int | None = None) -> bool:
        """Whether the proxy may reach `service` (on `port`, when given)."""
        if not exported_to(service.export_to, service.namespace, self.namespace):
            return False
        if self.sidecar is None:
            return True
        return self.listener_for(service, port) is not None

    def listener_for(self, service: Service, port: int | None) -> EgressListener | None:
        """The egress listener that carries `service` on `port`: a port-specific one first,
        then the catch-all."""
        for listener in self.egress:
            if listener.port is not None and (port is None or listener.port == port) \
                    and listener.selects(service):
                return listener
        for listener in self.egress:
            if listener.port is None and listener.selects(service):
                return listener
        return None

    def bind_for(self, port: int, default: str) -> str:
        for listener in self.egress:
            if listener.port == port and listener.bind:
                return listener.bind
        catch_all = next((e for e in self.egress if e.port is None), None)
        return catch_all.bind if catch_all is not None and catch_all.bind else default


def sidecar_for(snapshot: Snapshot, proxy: Proxy) -> Config | None:
    own = [s for s in snapshot.sidecars if s.namespace == proxy.namespace]
    for sidecar in own:
        selector = _selector(sidecar)
        if selector and all(proxy.labels.get(k) == v for k, v in selector.items()):
            return sidecar
    for sidecar in own:
        if not _selector(sidecar):
            return sidecar
    for sidecar in snapshot.sidecars:
        if sidecar.namespace == snapshot.mesh.root_namespace and not _selector(sidecar):
            return sidecar
    return None


def scope_for(snapshot: Snapshot, proxy: Proxy) -> Scope:
    """The proxy's scope; without a Sidecar the outbound policy is the mesh's (ALLOW_ANY
    unless `--mesh-config` says otherwise)."""
    default_policy = snapshot.mesh.outbound_traffic_policy
    by_labels = snapshot.sidecars or rules_select_workloads(snapshot)
    labels = frozenset(proxy.labels.items()) if by_labels else frozenset()
    key = ("scope", proxy.namespace, labels, default_policy)
    found: Scope | None = snapshot.cache.get(key)
    if found is None:
        found = snapshot.cache[key] = _build(snapshot, proxy, default_policy)
    return found


def _build(snapshot: Snapshot, proxy: Proxy, default_policy: str) -> Scope:
    # Sidecar resources configure sidecars only; Istio never applies them to gateways.
    sidecar = sidecar_for(snapshot, proxy) if proxy.type == NodeType.SIDECAR else None
    labels = dict(proxy.labels) if rules_select_workloads(snapshot) else None
    if sidecar is None:
        return Scope(proxy.namespace, None, (), default_policy, labels)
    egress = tuple(
        EgressListener(
            port=(item.get("port") or {}).get("number"),
            bind=str(item.get("bind") or ""),
            hosts=tuple(_host_pattern(h, proxy.namespace) for h in item.get("hosts") or ()),
        )
        for item in sidecar.spec.get("egress") or ()
    ) or (EgressListener(None, "", (("*", "*"),)),)  # no egress: Istio's default */*
    policy = (sidecar.spec.get("outboundTrafficPolicy") or {}).get("mode") or default_policy
    return Scope(proxy.namespace, sidecar, egress, str(policy), labels)


def _host_pattern(text: str, namespace: str) -> tuple[str, str]:
    ns, _, host = text.partition("/")
    if ns == ".":
        ns = namespace
    if ns == "~":
        ns = "\0none"  # matches no namespace
    return ns, host


def _selector(sidecar: Config) -> Mapping[str, str]:
    labels: Mapping[str, str] = (sidecar.spec.get("workloadSelector") or {}).get("labels") or {}
    return labels


def virtual_service_for(snapshot: Snapshot, hostname: str, namespace: str) -> Config | None:
    """The mesh VirtualService routing `hostname` for sidecars in `namespace`.

    Only VirtualServices exported to the namespace and bound to `mesh` count. An exact host
    beats a wildcard; among equals the first in snapshot order (namespace, name) wins, and
    the later ones are ignored for that host, as Istio does for sidecars.
    """
    key = ("vs-for", hostname, namespace)
    if key not in snapshot.cache:
        snapshot.cache[key] = _find_virtual_service(snapshot, hostname, namespace)
    found: Config | None = snapshot.cache[key]
    return found


def _find_virtual_service(snapshot: Snapshot, hostname: str, namespace: str) -> Config | None:
    exact, wildcards = _virtual_service_index(snapshot)
    for vs in exact.get(hostname, ()):
        if exported_to(vs.spec.get("exportTo") or (), vs.namespace, namespace):
            return vs
    for pattern, vs in wildcards:
        if host_matches(pattern, hostname) and exported_to(
            vs.spec.get("exportTo") or (), vs.namespace, namespace
        ):
            return vs
    return None


def _virtual_service_index(
    snapshot: Snapshot,
) -> tuple[dict[str, list[Config]], list[tuple[str, Config]]]:
    """Mesh VirtualServices by exact host, and the wildcard hosts, each in snapshot order: a
    lookup reads the few that can match instead of every VirtualService (per host, that made
    route generation quadratic in the mesh's size)."""
    key = ("vs-index",)
    found: tuple[dict[str, list[Config]], list[tuple[str, Config]]] | None = (
        snapshot.cache.get(key)
    )
    if found is None:
        exact: dict[str, list[Config]] = {}
        wildcards: list[tuple[str, Config]] = []
        for vs in snapshot.virtual_services:
            if not applies_to(vs, MESH):
                continue
            for host in vs.spec.get("hosts") or ():
                resolved = resolve_short_name(host, vs.namespace)
                if resolved.startswith("*"):
                    wildcards.append((resolved, vs))
                elif vs not in (same := exact.setdefault(resolved, [])):
                    same.append(vs)
        found = snapshot.cache[key] = (exact, wildcards)
    return found


def rules_select_workloads(snapshot: Snapshot) -> bool:
    """Whether any DestinationRule has a workloadSelector, making rules depend on labels."""
    key = ("dr-selectors",)
    if key not in snapshot.cache:
        snapshot.cache[key] = any(
            r.spec.get("workloadSelector") for r in snapshot.destination_rules
        )
    found: bool = snapshot.cache[key]
    return found


def labels_key(snapshot: Snapshot, labels: Mapping[str, str] | None) -> frozenset[Any] | None:
    """The client's labels when DestinationRule selection depends on them, else None."""
    if labels is None or not rules_select_workloads(snapshot):
        return None
    return frozenset(labels.items())


def destination_rule_for(
    snapshot: Snapshot, hostname: str, namespace: str, labels: Mapping[str, str] | None = None
) -> Config | None:
    """The DestinationRule for `hostname` as seen from a client in `namespace` with `labels`,
    by Istio's precedence: a rule whose workloadSelector selects the client (in its own
    namespace), then a rule in the client's namespace, then in the service's, then in the
    root namespace, then any other exported one; within each, an exact host beats the longest
    wildcard. Rules with a selector never apply to workloads they do not select."""
    key = ("dr-for", hostname, namespace, labels_key(snapshot, labels))
    if key not in snapshot.cache:
        snapshot.cache[key] = _find_destination_rule(snapshot, hostname, namespace, labels)
    found: Config | None = snapshot.cache[key]
    return found


def _find_destination_rule(
    snapshot: Snapshot, hostname: str, namespace: str, labels: Mapping[str, str] | None
) -> Config | None:
    service = snapshot.services.get(hostname)
    service_ns = service.namespace if service is not None else ""
    best: tuple[tuple[int, int], Config] | None = None
    for host, rule in _rules_matching(snapshot, hostname):
        if not exported_to(rule.spec.get("exportTo") or (), rule.namespace, namespace):
            continue
        selector: Mapping[str, str] = (rule.spec.get("workloadSelector") or {}).get(
            "matchLabels"
        ) or {}
        if rule.spec.get("workloadSelector") is not None:
            selected = rule.namespace == namespace and labels is not None and all(
                labels.get(k) == v for k, v in selector.items()
            )
            if not selected:
                continue
            place = 4
        elif rule.namespace == namespace:
            place = 3
        elif rule.namespace == service_ns:
            place = 2
        elif rule.namespace == snapshot.mesh.root_namespace:
            place = 1
        else:
            place = 0
        rank = (place, 10_000 if host == hostname else len(host))
        if best is None or rank > best[0]:
            best = (rank, rule)
    return best[1] if best else None


_RuleIndex = tuple[dict[str, list[tuple[int, str, Config]]], list[tuple[int, str, Config]]]


def _rules_matching(snapshot: Snapshot, hostname: str) -> list[tuple[str, Config]]:
    """(resolved host, rule) of the DestinationRules whose host matches `hostname`, in
    snapshot order (ties in precedence go to the first), from an index built once per
    snapshot by exact host and wildcard."""
    key = ("dr-index",)
    index: _RuleIndex | None = snapshot.cache.get(key)
    if index is None:
        exact: dict[str, list[tuple[int, str, Config]]] = {}
        wildcards: list[tuple[int, str, Config]] = []
        for i, rule in enumerate(snapshot.destination_rules):
            host = resolve_short_name(str(rule.spec.get("host", "")), rule.namespace)
            if host.startswith("*"):
                wildcards.append((i, host, rule))
            else:
                exact.setdefault(host, []).append((i, host, rule))
        index = snapshot.cache[key] = (exact, wildcards)
    exact_rules, wildcard_rules = index
    found = exact_rules.get(hostname, [])
    matching = [entry for entry in wildcard_rules if host_matches(entry[1], hostname)]
    if matching:
        found = sorted([*found, *matching], key=lambda entry: entry[0])
    return [(host, rule) for _, host, rule in found]
