"""The services a destination host can resolve to: ServiceEntries and Kubernetes Services.

Istio's analyzers resolve a route destination against one index of *scoped* host names: each
ServiceEntry host under the namespaces its `exportTo` reaches (`*` for all), and each
Kubernetes Service as `name.namespace.svc.cluster.local` under the namespaces of its
`networking.istio.io/exportTo` annotation. A lookup from a namespace tries the all-namespaces
scope, then the namespace's own (or the referrer's `exportTo` scopes), then wildcard hosts.

In live analysis the services of a running server's external registries (Consul, Eureka, …)
are known too, under their own `exportTo` (everywhere by default), so a route to a registry
service resolves; config and Kubernetes Services take precedence for the same scoped host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from meshpilot.analysis.analyzers.common import (
    EXPORT_ALL,
    EXPORT_LOCAL,
    export_scopes,
    fqdn,
    mappings,
    number,
    strings,
    text,
)
from meshpilot.analysis.context import Context
from meshpilot.analysis.resource import SERVICE, SERVICE_ENTRY, Resource

EXPORT_TO_ANNOTATION = "networking.istio.io/exportTo"


@dataclass(frozen=True)
class ServicePort:
    number: int
    name: str
    protocol: str


@dataclass(frozen=True)
class KnownService:
    source: Resource
    ports: tuple[ServicePort, ...] = field(default=())


class ServiceIndex:
    def __init__(self, ctx: Context) -> None:
        self._scoped: dict[tuple[str, str], KnownService] = {}
        for entry in ctx.for_each(SERVICE_ENTRY):
            known = KnownService(entry, tuple(
                ServicePort(number(p.get("number")) or 0, text(p.get("name")),
                            text(p.get("protocol")))
                for _, p in mappings(entry.spec.get("ports"))
            ))
            scopes = export_scopes(strings(entry.spec.get("exportTo")), entry.namespace)
            scope = EXPORT_ALL if EXPORT_ALL in scopes else entry.namespace
            for host in strings(entry.spec.get("hosts")):
                self._scoped[(scope, fqdn(entry.namespace, host))] = known
        for service in ctx.for_each(SERVICE):
            known = KnownService(service, tuple(
                ServicePort(number(p.get("port")) or 0, text(p.get("name")),
                            text(p.get("protocol")))
                for _, p in mappings(service.spec.get("ports"))
            ))
            host = fqdn(service.namespace, service.name)
            annotation = service.annotations.get(EXPORT_TO_ANNOTATION, "")
            for scope in _annotation_scopes(annotation, service.namespace):
                self._scoped[(scope, host)] = known
        for external in ctx.registries:
            known = KnownService(external.resource(), tuple(
                ServicePort(p.number, p.name, p.protocol) for p in external.ports))
            scopes = export_scopes(list(external.export_to), external.namespace)
            for scope in scopes:
                self._scoped.setdefault((scope, external.hostname), known)

    def lookup(
        self, namespace: str, host: str, export_to: Sequence[str] = ()
    ) -> KnownService | None:
        name = fqdn(namespace, host)
        found = self._scoped.get((EXPORT_ALL, name))
        if found is not None:
            return found
        scopes = [namespace] if not export_to else [
            namespace if e == EXPORT_LOCAL else e for e in export_to
        ]
        for scope in scopes:
            found = self._scoped.get((scope, name))
            if found is not None:
                return found
        bare = name.removeprefix("*")
        for (scope, indexed), known in self._scoped.items():
            if not indexed.startswith("*") or scope not in (EXPORT_ALL, namespace):
                continue
            if bare.endswith(indexed[1:]):
                return known
        return None


def _annotation_scopes(annotation: str, namespace: str) -> list[str]:
    if not annotation:
        return [EXPORT_ALL]
    return [namespace if part == EXPORT_LOCAL else part
            for part in (p.strip() for p in annotation.split(",")) if part]
