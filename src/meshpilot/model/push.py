"""What a push must do: one request type that merges itself.

Debounce, the push queue and per-connection coalescing all combine pending requests with
`merge`, so the rules for "what does this push cover" live in one place.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class TriggerReason(enum.StrEnum):
    CONFIG = "config"
    ENDPOINT = "endpoint"
    SERVICE = "service"
    PROXY = "proxy"
    GLOBAL = "global"
    SECRET = "secret"
    """A workload certificate was (re)issued or a JWKS was fetched: SDS and policies change."""


@dataclass(frozen=True, slots=True)
class PushRequest:
    full: bool
    """A full push rebuilds every type; otherwise only EDS for `eds_hosts`."""
    config_kinds: frozenset[str] = frozenset()
    eds_hosts: frozenset[tuple[str, str]] = frozenset()
    """(namespace, hostname) of services whose endpoints changed."""
    reasons: frozenset[TriggerReason] = frozenset()
    count: int = 1
    started: float = field(default=0.0, compare=False)
    """Loop time of the first event merged into this request."""

    @property
    def routing_only(self) -> bool:
        """A full push for VirtualService changes alone, with no endpoint change merged in:
        clusters and endpoints never read VirtualServices, so CDS and EDS need not be rebuilt
        or compared for it (Istio's cdsNeedsPush/edsNeedsPush skip it likewise)."""
        return (self.full and bool(self.config_kinds) and not self.eds_hosts
                and self.config_kinds <= _ROUTING_ONLY)

    def merge(self, other: PushRequest | None) -> PushRequest:
        if other is None:
            return self
        return PushRequest(
            full=self.full or other.full,
            config_kinds=_merged_kinds(self, other),
            eds_hosts=self.eds_hosts | other.eds_hosts,
            reasons=self.reasons | other.reasons,
            count=self.count + other.count,
            started=min(self.started, other.started) if self.started and other.started
            else self.started or other.started,
        )


_ROUTING_ONLY = frozenset({"VirtualService"})


def _merged_kinds(a: PushRequest, b: PushRequest) -> frozenset[str]:
    # A full request naming no kinds (a registry or service change) stands for every kind:
    # merging must not narrow it to the other request's kinds.
    if (a.full and not a.config_kinds) or (b.full and not b.config_kinds):
        return frozenset()
    return a.config_kinds | b.config_kinds
