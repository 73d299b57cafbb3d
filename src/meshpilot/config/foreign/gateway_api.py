"""Kubernetes Gateway API routes, translated into Istio VirtualServices and Gateways.

- An HTTPRoute, GRPCRoute or TCPRoute whose `parentRefs` name a **Service** (the GAMMA profile
  for meshes) becomes a VirtualService for that service's host, applying to sidecars (`mesh`).
  A Service reference is a Kubernetes-style name (`reviews` → `reviews.<ns>.svc.cluster.local`)
  or a full registry host.
- A **Gateway** (`gateway.networking.k8s.io`) becomes an Istio Gateway selecting routers
  labelled `gateway.networking.k8s.io/gateway-name: <name>` (Istio's convention), one server
  per listener (HTTP, HTTPS with `certificateRefs` as `credentialName`, TCP); routes whose
  parent is that Gateway become VirtualServices bound to it, for their `hostnames`.

HTTP rules map match for match: path (Exact, PathPrefix, RegularExpression), headers and query
parameters (Exact, RegularExpression), method; backendRefs with weights (default 1); filters
RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite, RequestMirror;
`timeouts.request`. GRPCRoute methods become exact paths `/<service>/<method>`. Each route's
status is kept per parent (Accepted, ResolvedRefs, with Gateway API's reasons and the problem
as message) for `/debug/routestatus`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshpilot.config.foreign.common import Translation, derived, service_host
from meshpilot.model import Config, ConfigError, Kind

GROUP = "gateway.networking.k8s.io"
GATEWAY_LABEL = "gateway.networking.k8s.io/gateway-name"
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute", "TCPRoute")


def translate(configs: Sequence[Config], out: Translation) -> None:
    gateways = {(c.namespace, c.name): c for c in configs
                if c.group == GROUP and c.kind == "Gateway"}
    for gateway in gateways.values():
        _gateway(gateway, out)
    for route in configs:
        if route.group == GROUP and route.kind in ROUTE_KINDS:
            _route(route, gateways, out)


def _gateway_name(gateway_ns: str, name: str) -> str:
    return f"gwapi-{name}"


def _gateway(gateway: Config, out: Translation) -> None:
    servers = []
    for index, listener in enumerate(gateway.spec.get("listeners") or ()):
        protocol = str(listener.get("protocol", "HTTP")).upper()
        server: dict[str, Any] = {
            "port": {"number": int(listener["port"]), "name": str(listener.get("name") or index),
                     "protocol": protocol},
            "hosts": [f"*/{listener.get('hostname') or '*'}"],
        }
        if protocol == "HTTPS":
            refs = (listener.get("tls") or {}).get("certificateRefs") or ()
            if not refs:
                out.error(gateway, "an HTTPS listener needs tls.certificateRefs",
                          f"spec.listeners[{index}].tls")
                continue
            server["tls"] = {"mode": "SIMPLE", "credentialName": str(refs[0]["name"])}
        servers.append(server)
    if servers:
        out.configs.append(derived(Kind.GATEWAY, _gateway_name(gateway.namespace, gateway.name),
                                   gateway, {"selector": {GATEWAY_LABEL: gateway.name},
                                             "servers": servers}))


def _route(route: Config, gateways: Mapping[tuple[str, str], Config], out: Translation) -> None:
    key = f"{route.kind} {route.namespace}/{route.name}"
    conditions = out.status.setdefault(key, [])
    for index, parent in enumerate(route.spec.get("parentRefs") or ()):
        kind = parent.get("kind", "Gateway")
        namespace = str(parent.get("namespace") or route.namespace)
        name = str(parent.get("name", ""))
        where = f"spec.parentRefs[{index}]"
        if kind == "Service":
            host = service_host(name, namespace)
            vs = _virtual_service(route, [host], ["mesh"], out)
        elif kind == "Gateway":
            if (namespace, name) not in gateways:
                message = f"parent Gateway {namespace}/{name} not found"
                out.error(route, message, where)
                conditions.append(_condition(name, "Accepted", "False", "NoMatchingParent",
                                             message))
                continue
            hosts = [str(h) for h in route.spec.get("hostnames") or ()] or ["*"]
            vs = _virtual_service(route, hosts, [f"{namespace}/{_gateway_name(namespace, name)}"],
                                  out)
        else:
            message = f"parentRef kind {kind!r} is not supported"
            out.error(route, message, f"{where}.kind")
            conditions.append(_condition(name, "Accepted", "False", "InvalidKind", message))
            continue
        if vs is None:
            conditions.extend(_rejected(name, out.errors[-1] if out.errors else None))
            continue
        suffix = f"-{index}" if len(route.spec.get("parentRefs") or ()) > 1 else ""
        out.configs.append(derived(Kind.VIRTUAL_SERVICE,
                                   f"gwapi-{route.kind.lower()}-{route.name}{suffix}", route, vs))
        conditions.append(_condition(name, "Accepted", "True", "Accepted"))
        conditions.append(_condition(name, "ResolvedRefs", "True", "ResolvedRefs"))


def _condition(parent: str, kind: str, status: str, reason: str, message: str = ""
               ) -> dict[str, str]:
    condition = {"parent": parent, "type": kind, "status": status, "reason": reason}
    if message:
        condition["message"] = message
    return condition


def _rejected(parent: str, error: ConfigError | None) -> list[dict[str, str]]:
    """Conditions of a route left out for a parent, by the field its translation failed at:
    a backend of a kind other than Service is a reference that cannot resolve (Gateway API's
    InvalidKind); anything else (a filter, a rule without backends) is a value meshpilot does
    not support. Either way the route is not programmed, so it is not Accepted."""
    message = error.message if error is not None else ""
    if error is not None and ".backendRefs[" in error.field:
        return [_condition(parent, "Accepted", "False", "UnsupportedValue", message),
                _condition(parent, "ResolvedRefs", "False", "InvalidKind", message)]
    return [_condition(parent, "Accepted", "False", "UnsupportedValue", message),
            _condition(parent, "ResolvedRefs", "True", "ResolvedRefs")]


def _virtual_service(
    route: Config, hosts: list[str], gateways: list[str], out: Translation
) -> dict[str, Any] | None:
    rules = route.spec.get("rules") or [{}]
    if route.kind == "TCPRoute":
        tcp = []
        for index, rule in enumerate(rules):
            destinations = _backends(route, rule, index, out)
            if destinations is None:
                return None
            tcp.append({"route": destinations})
        return {"hosts": hosts, "gateways": gateways, "tcp": tcp}
    http = []
    for index, rule in enumerate(rules):
        destinations = _backends(route, rule, index, out)
        if destinations is None:
            return None
        entry: dict[str, Any] = {"name": f"{route.name}-{index}"}
        matches = [_match(route.kind, m) for m in rule.get("matches") or ()]
        if matches:
            entry["match"] = matches
        if destinations:
            entry["route"] = destinations
        if not _filters(rule.get("filters") or (), entry, route, out):
            return None
        timeout = (rule.get("timeouts") or {}).get("request")
        if timeout:
            entry["timeout"] = str(timeout)
        if "route" not in entry and "redirect" not in entry:
            out.error(route, "a rule needs backendRefs or a RequestRedirect",
                      f"spec.rules[{index}]")
            return None
        http.append(entry)
    return {"hosts": hosts, "gateways": gateways, "http": http}


def _backends(route: Config, rule: Mapping[str, Any], index: int, out: Translation
              ) -> list[dict[str, Any]] | None:
    destinations = []
    for b, ref in enumerate(rule.get("backendRefs") or ()):
        if ref.get("kind", "Service") != "Service":
            out.error(route, f"backendRef kind {ref.get('kind')!r} is not supported",
                      f"spec.rules[{index}].backendRefs[{b}].kind")
            return None
        destination: dict[str, Any] = {
            "host": service_host(str(ref["name"]), str(ref.get("namespace") or route.namespace))
        }
        if ref.get("port"):
            destination["port"] = {"number": int(ref["port"])}
        destinations.append({"destination": destination, "weight": int(ref.get("weight", 1))})
    return destinations


_PATH = {"Exact": "exact", "PathPrefix": "prefix", "RegularExpression": "regex"}
_VALUE = {"Exact": "exact", "RegularExpression": "regex"}


def _match(kind: str, match: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    path = match.get("path")
    if path:
        out["uri"] = {_PATH[path.get("type", "PathPrefix")]: str(path.get("value", "/"))}
    if kind == "GRPCRoute" and match.get("method"):
        method = match["method"]
        out["uri"] = {"exact": f"/{method.get('service', '')}/{method.get('method', '')}"}
    if match.get("method") and kind == "HTTPRoute":
        out["method"] = {"exact": str(match["method"])}
    headers = {str(h["name"]).lower(): {_VALUE[h.get("type", "Exact")]: str(h["value"])}
               for h in match.get("headers") or ()}
    if headers:
        out["headers"] = headers
    query = {str(q["name"]): {_VALUE[q.get("type", "Exact")]: str(q["value"])}
             for q in match.get("queryParams") or ()}
    if query:
        out["queryParams"] = query
    return out


def _filters(filters: Sequence[Mapping[str, Any]], entry: dict[str, Any], route: Config,
             out: Translation) -> bool:
    for item in filters:
        kind = item.get("type")
        if kind in ("RequestHeaderModifier", "ResponseHeaderModifier"):
            spec = item.get("requestHeaderModifier" if kind == "RequestHeaderModifier"
                            else "responseHeaderModifier") or {}
            ops = {
                "set": {h["name"]: h["value"] for h in spec.get("set") or ()},
                "add": {h["name"]: h["value"] for h in spec.get("add") or ()},
                "remove": list(spec.get("remove") or ()),
            }
            side = "request" if kind == "RequestHeaderModifier" else "response"
            entry.setdefault("headers", {})[side] = {k: v for k, v in ops.items() if v}
        elif kind == "RequestRedirect":
            spec = item.get("requestRedirect") or {}
            redirect: dict[str, Any] = {"redirectCode": int(spec.get("statusCode", 302))}
            if spec.get("scheme"):
                redirect["scheme"] = spec["scheme"]
            if spec.get("hostname"):
                redirect["authority"] = spec["hostname"]
            if spec.get("port"):
                redirect["port"] = int(spec["port"])
            if (spec.get("path") or {}).get("replaceFullPath"):
                redirect["uri"] = spec["path"]["replaceFullPath"]
            entry["redirect"] = redirect
            entry.pop("route", None)
        elif kind == "URLRewrite":
            spec = item.get("urlRewrite") or {}
            rewrite: dict[str, Any] = {}
            if spec.get("hostname"):
                rewrite["authority"] = spec["hostname"]
            path = spec.get("path") or {}
            if path.get("replacePrefixMatch") is not None:
                rewrite["uri"] = path["replacePrefixMatch"]
            elif path.get("replaceFullPath") is not None:
                rewrite["uriRegexRewrite"] = {"match": ".*", "rewrite": path["replaceFullPath"]}
            entry["rewrite"] = rewrite
        elif kind == "RequestMirror":
            ref = (item.get("requestMirror") or {}).get("backendRef") or {}
            mirror: dict[str, Any] = {"host": service_host(str(ref.get("name", "")),
                                                           str(ref.get("namespace")
                                                               or route.namespace))}
            if ref.get("port"):
                mirror["port"] = {"number": int(ref["port"])}
            entry["mirror"] = mirror
        else:
            out.error(route, f"filter {kind!r} is not supported", "spec.rules")
            return False
    return True
