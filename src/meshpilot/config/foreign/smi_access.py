"""SMI TrafficTarget (access control), translated into Istio ALLOW AuthorizationPolicies.

A TrafficTarget allows its `sources` (service accounts) to reach the workloads running as its
`destination` service account, for the routes its `rules` name (`specs` in v1alpha1). In SMI,
once any TrafficTarget selects a destination only what such targets list is allowed; an
ALLOW policy has exactly that meaning in Istio, and several policies for one destination add
up. The derived policy selects workloads by service account, which Istio's selector cannot
express, so it carries the `SERVICE_ACCOUNT_ANNOTATION` that policy selection reads.

- Sources become `principals` `<trust domain>/ns/<ns>/sa/<name>` (the SPIFFE id without
  `spiffe://`, Istio's principal format), so access needs mTLS (`discovery --ca-dir`).
- An HTTPRouteGroup rule allows its named matches (all of them when none are named): each
  match is one Istio rule with `paths`, `methods` and `request.headers[…]` conditions.
- A TCPRoute rule allows the route's ports (every port when it lists none); the destination's
  `port` narrows every rule to that port.

SMI matches are regular expressions, Istio's values are exact, `prefix*`, `*suffix` or `*`.
Regexes that are one of those shapes are converted; any other is reported with the target's
file and line, and the match it belongs to allows nothing (failing closed keeps SMI's
deny-by-default meaning).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from meshpilot.config.foreign.common import Translation, derived
from meshpilot.model import Config, Kind

SERVICE_ACCOUNT_ANNOTATION = "meshpilot.io/service-account"
"""On a derived AuthorizationPolicy: it applies to the workloads running as this account."""

_META = set(".^$*+?()[]{}|\\")
_ANY = {"", ".*", "^.*$", ".+", "^.+$"}


def translate(
    target: Config,
    groups: Mapping[tuple[str, str], Config],
    tcp_routes: Mapping[tuple[str, str], Config],
    trust_domain: str,
    out: Translation,
) -> None:
    spec = target.spec
    destination = spec.get("destination") or {}
    if destination.get("kind", "ServiceAccount") != "ServiceAccount" or not destination.get("name"):
        out.error(target, "destination must name a ServiceAccount", "spec.destination")
        return
    namespace = str(destination.get("namespace") or target.namespace)
    principals = []
    for index, source in enumerate(spec.get("sources") or ()):
        if source.get("kind", "ServiceAccount") != "ServiceAccount" or not source.get("name"):
            out.error(target, "sources must name ServiceAccounts", f"spec.sources[{index}]")
            continue
        source_ns = str(source.get("namespace") or target.namespace)
        principals.append(f"{trust_domain}/ns/{source_ns}/sa/{source['name']}")
    rules: list[dict[str, Any]] = []
    field = "rules" if "rules" in spec else "specs"  # v1alpha1 called them specs
    if principals:
        for index, rule in enumerate(spec.get(field) or ()):
            rules.extend(_rule(target, rule, f"spec.{field}[{index}]", groups, tcp_routes, out))
    port = destination.get("port")
    for rule in rules:
        rule["from"] = [{"source": {"principals": list(principals)}}]
        if port:
            for to in rule.setdefault("to", [{"operation": {}}]):
                to["operation"]["ports"] = [str(port)]
    # The policy lives with the destination's workloads, which may be in another namespace;
    # there the target's own namespace keeps its name apart from other namespaces' targets.
    name = f"smi-traffictarget-{target.name}"
    if namespace != target.namespace:
        name = f"{name}-{target.namespace}"
    base = derived(Kind.AUTHORIZATION_POLICY, name, target, {"action": "ALLOW", "rules": rules})
    out.configs.append(dataclasses.replace(
        base, namespace=namespace, group="security.istio.io",
        annotations={**base.annotations, SERVICE_ACCOUNT_ANNOTATION: str(destination["name"])},
    ))


def _rule(
    target: Config,
    rule: Mapping[str, Any],
    where: str,
    groups: Mapping[tuple[str, str], Config],
    tcp_routes: Mapping[tuple[str, str], Config],
    out: Translation,
) -> list[dict[str, Any]]:
    kind, name = rule.get("kind"), str(rule.get("name", ""))
    key = (target.namespace, name)
    if kind == "TCPRoute":
        route = tcp_routes.get(key)
        if route is None:
            out.error(target, f"TCPRoute {target.namespace}/{name} not found", where)
            return []
        ports = [str(p) for p in (route.spec.get("matches") or {}).get("ports") or ()]
        return [{"to": [{"operation": {"ports": ports}}]} if ports else {}]
    if kind != "HTTPRouteGroup":
        out.error(target, f"rules of kind {kind!r} are not supported", f"{where}.kind")
        return []
    group = groups.get(key)
    if group is None:
        out.error(target, f"HTTPRouteGroup {target.namespace}/{name} not found", where)
        return []
    entries = {str(m.get("name", "")): m for m in group.spec.get("matches") or ()}
    wanted = [str(n) for n in rule.get("matches") or ()] or list(entries)
    rules = []
    for match_name in wanted:
        entry = entries.get(match_name)
        if entry is None:
            out.error(target, f"HTTPRouteGroup {target.namespace}/{name} has no match "
                              f"{match_name!r}", f"{where}.matches")
            continue
        built = _http_rule(entry)
        if isinstance(built, str):
            out.error(target, f"HTTPRouteGroup {target.namespace}/{name} match {match_name!r}: "
                              f"{built}; this match allows nothing", where)
            continue
        rules.append(built)
    return rules


def _http_rule(entry: Mapping[str, Any]) -> dict[str, Any] | str:
    """One route-group match as an Istio rule (without `from`), or why it cannot be one."""
    operation: dict[str, Any] = {}
    path = str(entry.get("pathRegex") or "")
    value = istio_value(path)
    if value is None:
        return (f"pathRegex {path!r} is not expressible as an Istio path (exact, prefix*, "
                "*suffix)")
    if value != "*":
        operation["paths"] = [value]
    methods = [str(m) for m in entry.get("methods") or () if m != "*"]
    if methods:
        operation["methods"] = methods
    headers = entry.get("headers") or {}
    if isinstance(headers, list):  # v1alpha2/3 wrote them as a list of single-key maps
        headers = {k: v for item in headers for k, v in item.items()}
    when = []
    for header, regex in headers.items():
        value = istio_value(str(regex))
        if value is None:
            return (f"header {header} regex {regex!r} is not expressible as an Istio value "
                    "(exact, prefix*, *suffix)")
        when.append({"key": f"request.headers[{str(header).lower()}]", "values": [value]})
    rule: dict[str, Any] = {}
    if operation:
        rule["to"] = [{"operation": operation}]
    if when:
        rule["when"] = when
    return rule


def istio_value(regex: str) -> str | None:
    """A regex (matched against the whole value) as Istio's exact / `prefix*` / `*suffix` /
    `*` form; None when it has no such form."""
    if regex in _ANY:
        return "*"
    body = regex.removeprefix("^").removesuffix("$")
    prefix = body.endswith(".*")
    suffix = body.startswith(".*")
    literal = _literal(body[2 if suffix else 0:len(body) - 2 if prefix else len(body)])
    if literal is None or (prefix and suffix) or "*" in literal:
        return None
    return f"{literal}*" if prefix else f"*{literal}" if suffix else literal


def _literal(text: str) -> str | None:
    """The string a regex without metacharacters stands for (`\\.` escapes allowed)."""
    out = []
    escaped = False
    for char in text:
        if escaped:
            if char.isalnum():
                return None  # \d, \w, …: a class, not a literal
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in _META:
            return None
        else:
            out.append(char)
    return None if escaped else "".join(out)
