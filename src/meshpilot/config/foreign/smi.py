"""SMI traffic splitting, translated into Istio VirtualServices.

A TrafficSplit's root `service` becomes a VirtualService host and its `backends` weighted
destinations (weights are relative, as in SMI; v1alpha1's quantities such as `500m` are
read as numbers). With `matches` (v1alpha3+), only requests matching the named HTTPRouteGroup
entries (path regex, methods, header regexes) or TCPRoute ports are split; the rest go to the
root service unchanged, as SMI specifies. Services are Kubernetes-style names in the
TrafficSplit's namespace (`website` → `website.<ns>.svc.cluster.local`) or any full host a
registry publishes.

A UDPRoute is rejected with its file and line: meshpilot's Envoy sidecars proxy no UDP.
TrafficTargets (access control) become AuthorizationPolicies (`smi_access.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshpilot.config.foreign import smi_access
from meshpilot.config.foreign.common import Translation, derived, service_host
from meshpilot.model import Config, Kind

SPLIT_GROUP = "split.smi-spec.io"
SPECS_GROUP = "specs.smi-spec.io"
ACCESS_GROUP = "access.smi-spec.io"
GROUPS = frozenset({SPLIT_GROUP, SPECS_GROUP, ACCESS_GROUP})


def weight(value: Any) -> int | None:
    """SMI weights: integers, or (v1alpha1) Kubernetes quantities like `500m` or `1`."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return round(float(text[:-1]) if text.endswith("m") else float(text) * 1000)
        except ValueError:
            return None
    return None


def translate(configs: Sequence[Config], out: Translation,
              trust_domain: str = "cluster.local") -> None:
    groups = {(c.namespace, c.name): c for c in configs
              if c.kind == "HTTPRouteGroup" and c.group == SPECS_GROUP}
    tcp_routes = {(c.namespace, c.name): c for c in configs
                  if c.kind == "TCPRoute" and c.group == SPECS_GROUP}
    for config in configs:
        if config.group not in GROUPS:
            continue
        if config.kind == "TrafficSplit":
            _split(config, groups, tcp_routes, out)
        elif config.kind == "UDPRoute":
            out.error(config, "UDPRoute is not supported: meshpilot's Envoy sidecars have no "
                              "UDP proxying, so no traffic would follow it")
        elif config.kind == "TrafficTarget":
            smi_access.translate(config, groups, tcp_routes, trust_domain, out)


def _split(
    split: Config,
    groups: Mapping[tuple[str, str], Config],
    tcp_routes: Mapping[tuple[str, str], Config],
    out: Translation,
) -> None:
    spec = split.spec
    root = spec.get("service")
    if not isinstance(root, str) or not root:
        out.error(split, "spec.service (the root service) is required", "spec.service")
        return
    host = service_host(root, split.namespace)
    destinations: list[dict[str, Any]] = []
    for index, backend in enumerate(spec.get("backends") or ()):
        path = f"spec.backends[{index}]"
        if not isinstance(backend, Mapping) or not backend.get("service"):
            out.error(split, "each backend needs a service", path)
            return
        value = weight(backend.get("weight", 0))
        if value is None or value < 0:
            out.error(split, f"weight {backend.get('weight')!r} is not a non-negative number",
                      f"{path}.weight")
            return
        destinations.append({"destination": {"host": service_host(str(backend["service"]),
                                                                 split.namespace)},
                             "weight": value})
    if not destinations or sum(int(d["weight"]) for d in destinations) == 0:
        out.error(split, "backends must have at least one positive weight", "spec.backends")
        return
    split_route = {"route": destinations}
    http_matches: list[dict[str, Any]] = []
    tcp_ports: list[int] = []
    for index, match in enumerate(spec.get("matches") or ()):
        path = f"spec.matches[{index}]"
        kind, name = match.get("kind"), str(match.get("name", ""))
        if kind == "HTTPRouteGroup":
            group = groups.get((split.namespace, name))
            if group is None:
                out.error(split, f"HTTPRouteGroup {split.namespace}/{name} not found", path)
                return
            http_matches.extend(_http_matches(group, out))
        elif kind == "TCPRoute":
            route = tcp_routes.get((split.namespace, name))
            if route is None:
                out.error(split, f"TCPRoute {split.namespace}/{name} not found", path)
                return
            tcp_ports.extend(int(p) for p in (route.spec.get("matches") or {}).get("ports") or ())
        else:
            out.error(split, f"matches of kind {kind!r} are not supported", f"{path}.kind")
            return
    vs: dict[str, Any] = {"hosts": [host]}
    if spec.get("matches"):
        rest = {"route": [{"destination": {"host": host}}]}
        if http_matches:
            vs["http"] = [{"name": f"{split.name}-split", "match": http_matches, **split_route},
                          rest]
        if tcp_ports:
            vs["tcp"] = [{"match": [{"port": p} for p in tcp_ports], **split_route}, rest]
        if not http_matches and not tcp_ports:
            out.error(split, "the referenced routes match nothing", "spec.matches")
            return
    else:
        vs["http"] = [{"name": f"{split.name}-split", **split_route}]
        vs["tcp"] = [split_route]
    out.configs.append(derived(Kind.VIRTUAL_SERVICE, f"smi-trafficsplit-{split.name}", split, vs))


def _http_matches(group: Config, out: Translation) -> list[dict[str, Any]]:
    matches: list[dict[str, Any]] = []
    for entry in group.spec.get("matches") or ():
        match: dict[str, Any] = {}
        if entry.get("pathRegex"):
            match["uri"] = {"regex": str(entry["pathRegex"])}
        methods = [m for m in entry.get("methods") or () if m != "*"]
        headers = entry.get("headers") or {}
        if isinstance(headers, list):  # v1alpha2/3 wrote them as a list of single-key maps
            headers = {k: v for item in headers for k, v in item.items()}
        if headers:
            match["headers"] = {k: {"regex": str(v)} for k, v in headers.items()}
        if len(methods) > 1:
            # Istio matches one method per match entry; several methods become several.
            matches.extend({**match, "method": {"exact": m}} for m in methods)
        else:
            if methods:
                match["method"] = {"exact": methods[0]}
            matches.append(match)
    if not matches:
        out.error(group, "HTTPRouteGroup has no matches", "spec.matches")
    return matches
