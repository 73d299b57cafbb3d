"""Does an Envoy run what the server would send it now? Clusters, listeners and routes compared.

Both sides are Envoy config dumps: the server's from `/debug/config_dump?proxyID=` (built from
what it would generate now) and the proxy's own. Only dynamic (xDS-delivered) resources count;
bootstrap ones are the agent's. Per-delivery bookkeeping (`version_info`, `last_updated`) is
dropped, resources are sorted by name and printed as indented JSON with sorted keys, and each
kind is reported as istioctl does: `Clusters Match`, or `Clusters Don't Match` and a unified
diff from the server's view (`---`) to Envoy's (`+++`).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from meshpilot.diagnostics.configdump import EnvoyDump, JsonDict


@dataclass(frozen=True, slots=True)
class KindComparison:
    kind: str
    """`Clusters`, `Listeners` or `Routes`."""
    diff: str
    """Unified diff, '' when they match."""
    note: str = ""

    @property
    def match(self) -> bool:
        return not self.diff

    def render(self) -> str:
        note = f" ({self.note})" if self.note else ""
        if self.match:
            return f"{self.kind} Match{note}\n"
        return f"{self.kind} Don't Match{note}\n{self.diff}"


def _canonical(resources: list[JsonDict]) -> list[str]:
    ordered = sorted(resources, key=lambda r: str(r.get("name", "")))
    return json.dumps(ordered, indent=2, sort_keys=True).splitlines(keepends=True)


def _diff(kind: str, server: list[JsonDict], envoy: list[JsonDict], context: int) -> str:
    lines = difflib.unified_diff(
        _canonical(server),
        _canonical(envoy),
        fromfile=f"Server {kind}",
        tofile=f"Envoy {kind}",
        n=context,
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


_KINDS: list[tuple[str, Callable[[EnvoyDump], list[JsonDict]]]] = [
    ("Clusters", EnvoyDump.dynamic_clusters),
    ("Listeners", EnvoyDump.dynamic_listeners),
    ("Routes", EnvoyDump.dynamic_route_configs),
]


def compare(server: EnvoyDump, envoy: EnvoyDump, context: int = 3) -> list[KindComparison]:
    out = []
    for kind, extract in _KINDS:
        note = ""
        if kind == "Routes" and envoy.routes_last_updated():
            note = f"RDS last loaded at {format_time(envoy.routes_last_updated())}"
        out.append(
            KindComparison(kind, _diff(kind, extract(server), extract(envoy), context), note)
        )
    return out


def format_time(stamp: str) -> str:
    """An RFC 3339 time from Envoy as RFC 1123 in local time, as istioctl prints it."""
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    return when.astimezone().strftime("%a, %d %b %Y %H:%M:%S %Z")


def render(results: list[KindComparison]) -> str:
    return "".join(r.render() for r in results)


def as_data(results: list[KindComparison]) -> list[dict[str, Any]]:
    return [{"kind": r.kind, "match": r.match, "note": r.note, "diff": r.diff} for r in results]
