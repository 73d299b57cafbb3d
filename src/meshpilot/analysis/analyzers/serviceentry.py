"""Analyzers of `ServiceEntry` resources.

- `serviceentry.Analyzer`: a ServiceEntry without `addresses` gives Envoy nothing to match
  TCP traffic on, so each port whose protocol is TCP or unset needs addresses (IST0134) —
  unless the sidecar's DNS proxy allocates them (`ISTIO_META_DNS_CAPTURE` and
  `ISTIO_META_DNS_AUTO_ALLOCATE` in the mesh's proxy metadata) or Istio already allocated
  them (`status.addresses`).
- `serviceentry.ConflictingServiceEntryProtocolAnalyzer`: ServiceEntries visible in a common
  namespace that declare the same host and port with different protocols (IST0177).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from meshpilot.analysis.analyzers.common import (
    export_scopes,
    fqdn,
    items,
    mapping,
    mappings,
    number,
    scopes_overlap,
    strings,
    text,
)
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import SERVICE_ENTRY, Collection, Resource

ADDRESSES_REQUIRED = message_type("ServiceEntryAddressesRequired")
CONFLICTING_PROTOCOL = message_type("ConflictingServiceEntryProtocol")


def _flag(metadata: Mapping[str, str], key: str) -> bool:
    return metadata.get(key, "").lower() in ("true", "1", "t")


class Analyzer:
    name = "serviceentry.Analyzer"
    description = "Checks the validity of ServiceEntry"
    inputs: tuple[Collection, ...] = (SERVICE_ENTRY,)

    def analyze(self, ctx: Context) -> None:
        metadata = ctx.mesh.proxy_metadata
        if _flag(metadata, "ISTIO_META_DNS_CAPTURE") \
                and _flag(metadata, "ISTIO_META_DNS_AUTO_ALLOCATE"):
            return
        for entry in ctx.for_each(SERVICE_ENTRY):
            if items(entry.spec.get("addresses")) or \
                    items(mapping(entry.body.get("status")).get("addresses")):
                continue
            for index, port in mappings(entry.spec.get("ports")):
                if text(port.get("protocol")).upper() in ("", "TCP"):
                    ctx.report(entry, ADDRESSES_REQUIRED, field=f"spec.ports[{index}].protocol")


@dataclass(frozen=True)
class _Declaration:
    entry: Resource
    protocol: str
    scopes: frozenset[str]


class ConflictingServiceEntryProtocolAnalyzer:
    name = "serviceentry.ConflictingServiceEntryProtocolAnalyzer"
    description = (
        "Checks for ServiceEntries that define the same host and port with different protocols"
    )
    inputs: tuple[Collection, ...] = (SERVICE_ENTRY,)

    def analyze(self, ctx: Context) -> None:
        declared: dict[tuple[str, int], list[_Declaration]] = {}
        for entry in ctx.for_each(SERVICE_ENTRY):
            scopes = frozenset(export_scopes(strings(entry.spec.get("exportTo")),
                                             entry.namespace))
            for _, port in mappings(entry.spec.get("ports")):
                port_number = number(port.get("number"))
                protocol = text(port.get("protocol")).upper()
                if port_number is None or not protocol:
                    continue
                for host in strings(entry.spec.get("hosts")):
                    declared.setdefault((fqdn(entry.namespace, host), port_number), []).append(
                        _Declaration(entry, protocol, scopes))
        for (host, port_number), declarations in declared.items():
            for declaration in declarations:
                conflicting = [
                    other for other in declarations
                    if other.entry is not declaration.entry
                    and other.protocol != declaration.protocol
                    and scopes_overlap(set(other.scopes), set(declaration.scopes))
                ]
                if not conflicting:
                    continue
                involved = [declaration, *conflicting]
                names = ", ".join(d.entry.full_name for d in involved)
                protocols = ", ".join(sorted({d.protocol for d in involved}))
                ctx.report(declaration.entry, CONFLICTING_PROTOCOL, names, host, port_number,
                           protocols, field="spec.ports")
