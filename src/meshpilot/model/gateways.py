"""Which gateways a VirtualService is bound to, in Istio's terms.

A VirtualService's `gateways` names the proxies it configures: `mesh` means every sidecar,
anything else names a Gateway as `namespace/name`. Without `gateways` it applies to the mesh
only. An HTTP, TCP or TLS match may carry its own `gateways`, which replaces the top-level list
for that match. Names are resolved as Istio's `resolveGatewayName` does:

    name                        → <VirtualService namespace>/name
    ./name                      → <VirtualService namespace>/name
    ns/name                     → ns/name
    name.ns.svc.cluster.local   → ns/name   (the legacy FQDN form)

Sidecar route generation keeps only mesh-bound VirtualServices and matches; gateway generation
keeps only those bound to a Gateway that selects the router.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshpilot.model.config import Config

MESH = "mesh"


def resolve_gateway_name(name: str, namespace: str) -> str:
    """A gateway reference as written in a VirtualService, as `namespace/name` (or `mesh`)."""
    if name == MESH:
        return name
    ns, slash, short = name.partition("/")
    if slash:
        return f"{namespace if ns == '.' else ns}/{short}"
    if "." not in name:
        return f"{namespace}/{name}"
    short, _, rest = name.partition(".")
    return f"{rest.split('.', 1)[0]}/{short}"


def gateway_key(gateway: Config) -> str:
    """How VirtualServices refer to a Gateway resource once resolved."""
    return f"{gateway.namespace}/{gateway.name}"


def virtual_service_gateways(vs: Config) -> frozenset[str]:
    """The top-level binding: the resolved `gateways`, or `mesh` when there are none."""
    names = vs.spec.get("gateways") or ()
    if not names:
        return frozenset({MESH})
    return frozenset(resolve_gateway_name(str(n), vs.namespace) for n in names)


def match_gateways(vs: Config, match: Mapping[str, Any] | None) -> frozenset[str]:
    """Where one match applies: its own `gateways` if it has some, else the VirtualService's."""
    names = (match or {}).get("gateways") or ()
    if not names:
        return virtual_service_gateways(vs)
    return frozenset(resolve_gateway_name(str(n), vs.namespace) for n in names)


def bound_gateways(vs: Config) -> frozenset[str]:
    """Every gateway any part of `vs` applies to: the top-level list plus match-level ones."""
    found = set(virtual_service_gateways(vs))
    for section in ("http", "tcp", "tls"):
        for route in vs.spec.get(section) or ():
            for match in route.get("match") or ():
                found.update(match_gateways(vs, match))
    return frozenset(found)


def applies_to(vs: Config, gateway: str) -> bool:
    """Whether some part of `vs` configures proxies of `gateway` (`mesh` or `ns/name`)."""
    return gateway in bound_gateways(vs)
