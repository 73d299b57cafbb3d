"""`describe`: which services a proxy serves and which config reaches them, in plain words.

The server's own topics (`registryz`, `configz`, `adsz`) are turned back into the model, and a
`Snapshot` is built from them, so the DestinationRule and VirtualService chosen for a host are
chosen by the same code the server uses. Then, per service:

- the ports (and, for a proxy, the workload port each targets);
- the DestinationRule, which subsets match the workload and which do not, its traffic policy;
- the VirtualService routes whose destinations reach the workload (or service), with their
  share of traffic and their match conditions;
- warnings for config that matches nothing: subsets no endpoint has, routes to subsets the
  DestinationRule does not define, rules and routes for hosts no service has.

For a proxy, its security as well: the SPIFFE identity it holds, the effective mTLS mode of each
inbound port with the PeerAuthentications that decided it, and the AuthorizationPolicies and
RequestAuthentications selecting it — decided by envoy/mtls.py and security/policies.py, as
the server decides them when it builds the proxy's listeners.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshpilot.agent.node import SERVICE_ACCOUNT
from meshpilot.envoy import mtls, networks
from meshpilot.envoy.scope import destination_rule_for, virtual_service_for
from meshpilot.envoy.targets import service_targets
from meshpilot.model import (
    Config,
    Endpoint,
    Kind,
    Locality,
    NodeType,
    Port,
    Protocol,
    Proxy,
    Service,
)
from meshpilot.model.hosts import host_matches, resolve_short_name
from meshpilot.model.meshconfig import MeshConfig
from meshpilot.model.security import Identity, IssuedCertificate, MeshSecurity
from meshpilot.model.snapshot import Snapshot
from meshpilot.security import policies
from meshpilot.security.identity import proxy_identity

SEPARATOR = "--------------------"


# The server's topics back into the model ------------------------------------------------------

_KINDS = (
    Kind.VIRTUAL_SERVICE,
    Kind.DESTINATION_RULE,
    Kind.PEER_AUTHENTICATION,
    Kind.AUTHORIZATION_POLICY,
    Kind.REQUEST_AUTHENTICATION,
)


class _NoCertificates:
    """Stands for the server's CA: describe needs to know that workloads get certificates (mTLS
    decisions depend on it), never the certificates themselves."""

    def certificate(self, identity: Identity) -> IssuedCertificate:
        raise LookupError(f"describe holds no certificate for {identity.spiffe_id}")


def _security(registryz: Mapping[str, Any]) -> MeshSecurity | None:
    found = registryz.get("security")
    if not found:
        return None
    certificates = _NoCertificates() if found.get("certificates") else None
    return MeshSecurity(str(found.get("trustDomain") or ""), b"", certificates)



def snapshot_from(registryz: Mapping[str, Any], configz: Mapping[str, Any]) -> Snapshot:
    services, endpoints = [], []
    for s in registryz.get("services") or ():
        services.append(
            Service(
                hostname=s["hostname"],
                namespace=s["namespace"],
                ports=tuple(
                    Port(p["name"], int(p["port"]), Protocol.parse(str(p["protocol"])))
                    for p in s.get("ports") or ()
                ),
                registry=s.get("registry", ""),
                source=s.get("source", ""),
            )
        )
        for e in s.get("endpoints") or ():
            endpoints.append(
                Endpoint(
                    hostname=s["hostname"],
                    namespace=e.get("namespace") or s["namespace"],
                    service_port=int(e["servicePort"]),
                    address=e["address"],
                    port=int(e["port"]),
                    labels=dict(e.get("labels") or {}),
                    workload_name=e.get("workload", ""),
                    cluster_id=e.get("clusterId", ""),
                    network=e.get("network", ""),
                    locality=Locality.parse(e.get("locality", "")),
                    service_account=e.get("serviceAccount", ""),
                )
            )
    configs = [
        Config(kind=c["kind"], name=c["name"], namespace=c["namespace"], spec=c.get("spec") or {})
        for c in configz.get("configs") or ()
        if c["kind"] in _KINDS
    ]
    built = Snapshot.build(
        str(registryz.get("version", "")),
        services,
        endpoints,
        configs,
        security=_security(registryz),
    )
    networks = registryz.get("meshNetworks") or {}
    if not networks:
        return built
    return dataclasses.replace(built, mesh=MeshConfig.from_user({}, {"networks": networks}))


def proxy_from(client: Mapping[str, Any]) -> Proxy:
    return Proxy(
        id=client["proxy"],
        type=NodeType(client.get("type") or "sidecar"),
        namespace=client.get("namespace", ""),
        workload_name=client.get("workload", ""),
        labels=dict(client.get("labels") or {}),
        ip_addresses=tuple(client.get("ips") or ()),
        cluster_id=client.get("clusterId", ""),
        network=client.get("network", ""),
        locality=Locality.parse(client.get("locality", "")),
        metadata={SERVICE_ACCOUNT: client["serviceAccount"]}
        if client.get("serviceAccount")
        else {},
    )


# What reaches what ---------------------------------------------------------------------------


@dataclass
class Description:
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(f"{line}\n" for line in self.lines) + "".join(
            f"WARNING: {w}\n" for w in self.warnings
        )


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(none)"


def _subset_matches(subset: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (subset.get("labels") or {}).items())


def _describe_match(match: Mapping[str, Any] | None) -> str:
    if not match:
        return ""
    parts = []
    for key in ("uri", "scheme", "method", "authority"):
        if key in match:
            kind, value = next(iter(match[key].items()))
            parts.append(f"{key} {kind} {value!r}")
    for name, spec in (match.get("headers") or {}).items():
        parts.append(
            f"header {name} " + (" ".join(f"{k} {v!r}" for k, v in spec.items()) or "present")
        )
    for name, spec in (match.get("queryParams") or {}).items():
        parts.append(f"query {name} " + " ".join(f"{k} {v!r}" for k, v in spec.items()))
    for key in ("port", "sourceNamespace"):
        if key in match:
            parts.append(f"{key} {match[key]}")
    if match.get("sourceLabels"):
        parts.append(f"source labels {_labels(match['sourceLabels'])}")
    return " and ".join(parts)


@dataclass(frozen=True, slots=True)
class RouteReach:
    name: str
    shares: list[tuple[str, float]]
    """(subset or '', percent) of the destinations that reach the target."""
    when: list[str]


def _routes_reaching(vs: Config, host: str, reaches_subset: Any) -> tuple[list[RouteReach], int]:
    """Routes of `vs` with a destination on `host` that `reaches_subset(subset)` accepts."""
    out = []
    checked = 0
    for index, http in enumerate(vs.spec.get("http") or ()):
        checked += 1
        destinations = list(http.get("route") or ())
        weights = [int(d.get("weight", 0)) for d in destinations]
        total = sum(weights) or 0
        shares = []
        for d, weight in zip(destinations, weights, strict=True):
            dest = d.get("destination") or {}
            if resolve_short_name(str(dest.get("host", "")), vs.namespace) != host:
                continue
            subset = str(dest.get("subset", ""))
            if not reaches_subset(subset):
                continue
            percent = 100.0 if len(destinations) == 1 else (100.0 * weight / total if total else 0)
            shares.append((subset, percent))
        if shares:
            matches = [_describe_match(m) for m in http.get("match") or ()]
            out.append(
                RouteReach(str(http.get("name") or f"#{index}"), shares, [m for m in matches if m])
            )
    return out, checked


def _route_lines(routes: list[RouteReach]) -> list[str]:
    lines = []
    for r in routes:
        to = ", ".join(
            (f"subset {subset}" if subset else "all endpoints") + f" {percent:g}%"
            for subset, percent in r.shares
        )
        when = f" when {' or '.join(r.when)}" if r.when else ""
        lines.append(f'   Route "{r.name}": {to}{when}')
    return lines


def _config_warnings(snapshot: Snapshot) -> list[str]:
    """Config that matches nothing, anywhere in the mesh."""
    warnings = []
    for dr in snapshot.destination_rules:
        host = resolve_short_name(str(dr.spec.get("host", "")), dr.namespace)
        if not any(host_matches(host, h) for h in snapshot.services):
            warnings.append(
                f"DestinationRule {dr.name}.{dr.namespace} is for host {host}, which no service has"
            )
    for vs in snapshot.virtual_services:
        for raw in vs.spec.get("hosts") or ():
            host = resolve_short_name(str(raw), vs.namespace)
            if not any(host_matches(host, h) for h in snapshot.services):
                warnings.append(
                    f"VirtualService {vs.name}.{vs.namespace} names host {host}, "
                    "which no service has"
                )
    return warnings


def _service_section(
    snapshot: Snapshot,
    svc: Service,
    workload_labels: Mapping[str, str] | None,
    targets: Sequence[Endpoint],
) -> tuple[list[str], dict[str, Any], list[str]]:
    """Lines, data and warnings for one service, seen from a workload (labels) or as a whole."""
    lines = [f"Service: {svc.hostname}" + (f" ({svc.source})" if svc.source else "")]
    warnings: list[str] = []
    ports = []
    for port in svc.ports:
        target = next((t.port for t in targets if t.service_port == port.number), None)
        tail = f" targets workload port {target}" if target is not None else ""
        lines.append(f"   Port: {port.name} {port.number}/{port.protocol}{tail}")
        ports.append(
            {
                "name": port.name,
                "port": port.number,
                "protocol": str(port.protocol),
                "targetPort": target,
            }
        )
    all_endpoints = [
        e for p in svc.ports for e in snapshot.service_endpoints(svc.hostname, p.number)
    ]
    data: dict[str, Any] = {"host": svc.hostname, "ports": ports}
    if workload_labels is None:
        unique = {f"{e.address}:{e.port}": e for e in all_endpoints}
        found = {a: _whereabouts(snapshot, e) for a, e in sorted(unique.items())}
        data["endpoints"] = [{"address": a, "where": where, "reachedFromOtherNetworks": how}
                             for a, (where, how) in found.items()]
        if not any(where or how for where, how in found.values()):
            lines.append(f"   Endpoints: {', '.join(found) if found else '(none)'}")
        else:  # several clusters or networks: say where each endpoint is and how it is reached
            lines.append("   Endpoints:")
            lines += [f"      {a}{f' ({where})' if where else ''}{f': {how}' if how else ''}"
                      for a, (where, how) in found.items()]

    # The rules clients in the service's own namespace get, by the translation's own lookup.
    dr = destination_rule_for(snapshot, svc.hostname, svc.namespace)
    subsets = list((dr.spec.get("subsets") or ()) if dr else ())
    defined = {str(s.get("name")) for s in subsets}
    if dr is not None:
        lines.append(f'DestinationRule: {dr.name}.{dr.namespace} for "{dr.spec.get("host")}"')
        matching = [
            str(s["name"])
            for s in subsets
            if workload_labels is not None and _subset_matches(s, workload_labels)
        ]
        if workload_labels is not None:
            others = [str(s["name"]) for s in subsets if str(s["name"]) not in matching]
            lines.append(f"   Matching subsets: {','.join(matching) or '(none)'}")
            if others:
                lines.append(f"      (Non-matching subsets {','.join(others)})")
        else:
            counts = [
                f"{s['name']} ({sum(_subset_matches(s, e.labels) for e in all_endpoints)} "
                "endpoints)"
                for s in subsets
            ]
            lines.append(f"   Subsets: {', '.join(counts) or '(none)'}")
        for s in subsets:
            if not any(_subset_matches(s, e.labels) for e in all_endpoints):
                warnings.append(
                    f"subset {s['name']} of DestinationRule {dr.name}.{dr.namespace} "
                    "matches no endpoint"
                )
        policy = dr.spec.get("trafficPolicy") or {}
        simple = (policy.get("loadBalancer") or {}).get("simple")
        lines.append(
            f"   Traffic Policy: load balancer {simple}" if simple else "   No Traffic Policy"
        )
        data["destinationRule"] = {
            "name": dr.name,
            "namespace": dr.namespace,
            "matchingSubsets": matching if workload_labels is not None else sorted(defined),
        }
    else:
        lines.append("   (no DestinationRule)")

    vs = virtual_service_for(snapshot, svc.hostname, svc.namespace)
    if vs is not None:

        def reaches(subset: str) -> bool:
            if not subset:
                return True
            found = next((s for s in subsets if str(s.get("name")) == subset), None)
            if found is None:
                return workload_labels is None
            return workload_labels is None or _subset_matches(found, workload_labels)

        routes, checked = _routes_reaching(vs, svc.hostname, reaches)
        lines.append(f"VirtualService: {vs.name}.{vs.namespace}")
        lines.extend(_route_lines(routes))
        if not routes:
            lines.append(f"   No route reaches this workload (checked {checked} HTTP routes)")
            warnings.append(
                f"no route of VirtualService {vs.name}.{vs.namespace} reaches "
                f"{'this workload' if workload_labels is not None else svc.hostname}"
            )
        for http in vs.spec.get("http") or ():
            for d in http.get("route") or ():
                dest = d.get("destination") or {}
                subset = str(dest.get("subset", ""))
                host = resolve_short_name(str(dest.get("host", "")), vs.namespace)
                if host == svc.hostname and subset and subset not in defined:
                    warnings.append(
                        f"VirtualService {vs.name}.{vs.namespace} routes to subset "
                        f"{subset} of {host}, which no DestinationRule defines"
                    )
        data["virtualService"] = {
            "name": vs.name,
            "namespace": vs.namespace,
            "routes": [
                {
                    "name": r.name,
                    "shares": [{"subset": s, "percent": p} for s, p in r.shares],
                    "when": r.when,
                }
                for r in routes
            ],
        }
    else:
        lines.append("   (no VirtualService: default route to all endpoints)")
    return lines, data, warnings


def _whereabouts(snapshot: Snapshot, endpoint: Endpoint) -> tuple[str, str]:
    """Where an endpoint is (cluster, network, locality) and, with several networks, how
    clients in other networks reach it: through its network's gateways, over mTLS, or not."""
    network = networks.network_of(snapshot, endpoint)
    where = ", ".join(f"{k} {v}" for k, v in (
        ("cluster", endpoint.cluster_id), ("network", network),
        ("locality", str(endpoint.locality))) if v)
    if not snapshot.mesh.networks or not network:
        return where, ""
    gateways = networks.gateways_of(snapshot, network)
    if not gateways:
        return where, f"other networks cannot reach it (network {network} has no gateway)"
    via = ", ".join(f"{host}:{port}" for host, port in gateways)
    return where, f"other networks reach it through gateway {via} (mTLS only)"


def describe_proxy(snapshot: Snapshot, proxy: Proxy) -> Description:
    out = Description()
    out.lines.append(f"Proxy: {proxy.id}")
    out.lines.append(f"   Workload: {proxy.short_name}, labels {_labels(proxy.labels)}")
    if proxy.ip_addresses:
        out.lines.append(f"   IPs: {', '.join(proxy.ip_addresses)}")
    place = ", ".join(f"{k} {v}" for k, v in (
        ("cluster", proxy.cluster_id), ("network", proxy.network),
        ("locality", str(proxy.locality))) if v)
    if place:
        out.lines.append(f"   Runs in: {place}")
    targets = service_targets(snapshot, proxy)
    hosts = sorted({t.hostname for t in targets})
    out.data = {
        "proxy": proxy.id,
        "workload": proxy.short_name,
        "labels": dict(proxy.labels),
        "services": [],
    }
    if not hosts:
        out.warnings.append(
            "this proxy serves no service (no WorkloadEntry with its name, and "
            "no endpoint at its IPs)"
        )
    for host in hosts:
        svc = snapshot.services[host]
        own = [t for t in targets if t.hostname == host]
        labels = dict(own[0].labels) if own else dict(proxy.labels)
        lines, data, warnings = _service_section(snapshot, svc, labels, own)
        out.lines += [SEPARATOR, *lines]
        out.data["services"].append(data)
        out.warnings += warnings
    lines, out.data["security"] = _security_section(snapshot, proxy, targets)
    out.lines += [SEPARATOR, *lines]
    out.data["warnings"] = out.warnings
    return out


def _names(configs: Sequence[Config]) -> str:
    return ", ".join(f"{c.name}.{c.namespace}" for c in configs) or "(none)"


def _security_section(
    snapshot: Snapshot, proxy: Proxy, targets: Sequence[Endpoint]
) -> tuple[list[str], dict[str, Any]]:
    identity = proxy_identity(snapshot, proxy)
    peer = policies.peer_policy(snapshot, proxy.namespace, proxy.labels)
    authz = policies.authorization_policies(snapshot, proxy.namespace, proxy.labels)
    authn = policies.request_authentications(snapshot, proxy.namespace, proxy.labels)
    ports = sorted({t.port for t in targets})
    lines = [f"Identity: {identity.spiffe_id}"]
    modes: dict[str, str] = {}
    if mtls.enabled(snapshot):
        lines.append(f"Effective PeerAuthentication: workload mTLS mode {peer.mode}")
        for port in ports:
            modes[str(port)] = mtls.inbound_mode(snapshot, proxy, port)
            lines.append(f"   Port {port}: {modes[str(port)]}")
    else:
        # Without certificates the server configures no TLS at all, whatever the policies say.
        lines.append(
            "Effective PeerAuthentication: none (no mesh CA: inbound ports take plaintext)"
        )
        modes = {str(port): policies.DISABLE for port in ports}
    lines.append(f"Applied PeerAuthentication: {_names(peer.sources)}")
    lines.append(f"Applied AuthorizationPolicy: {_names(authz)}")
    lines.append(f"Applied RequestAuthentication: {_names(authn)}")
    data = {
        "identity": identity.spiffe_id,
        "mtls": mtls.enabled(snapshot),
        "workloadMode": peer.mode if mtls.enabled(snapshot) else policies.DISABLE,
        "portModes": modes,
        "peerAuthentications": [f"{c.name}.{c.namespace}" for c in peer.sources],
        "authorizationPolicies": [f"{c.name}.{c.namespace}" for c in authz],
        "requestAuthentications": [f"{c.name}.{c.namespace}" for c in authn],
    }
    return lines, data


def describe_service(snapshot: Snapshot, host: str, namespace: str) -> Description:
    resolved = resolve_short_name(host, namespace)
    svc = snapshot.services.get(resolved)
    if svc is None:
        raise LookupError(f"no service {resolved}")
    lines, data, warnings = _service_section(snapshot, svc, None, ())
    out = Description(lines, data, warnings)
    out.warnings += _config_warnings(snapshot)
    out.data["warnings"] = out.warnings
    return out
