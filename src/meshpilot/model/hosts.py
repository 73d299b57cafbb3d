"""Host names as Istio resolves them in VirtualService and DestinationRule."""

from __future__ import annotations

DOMAIN_SUFFIX = "svc.cluster.local"


def resolve_short_name(host: str, namespace: str, domain_suffix: str = DOMAIN_SUFFIX) -> str:
    """A bare name (`reviews`) means `reviews.<namespace>.svc.cluster.local`, as in Istio.

    Names with a dot, and wildcards, are taken as written.
    """
    if "." in host or host.startswith("*"):
        return host
    return f"{host}.{namespace}.{domain_suffix}"


def host_matches(pattern: str, host: str) -> bool:
    """Istio host matching: exact, `*` alone, or a `*.suffix` wildcard."""
    if pattern == host or pattern == "*":
        return True
    if pattern.startswith("*"):
        return host.endswith(pattern[1:])
    return False
