"""`proxy-config` summaries: istioctl's short tables of clusters, listeners, routes, endpoints
and secrets, with istioctl's filters, built from an Envoy config dump.

Each builder takes the dump (and filters) and returns a `Report`: the short table, and for JSON
and YAML the selected resources exactly as Envoy printed them. Cluster names follow Istio's
`direction|port|subset|fqdn` convention and are split into columns; names that do not (static
clusters such as `xds-grpc`) fill the FQDN column alone. The DESTINATION RULE and VIRTUAL
SERVICE columns come from Istio's `istio.config` metadata when the translation sets it.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from meshpilot.diagnostics.certs import parse_chain
from meshpilot.diagnostics.configdump import EnvoyDump, JsonDict
from meshpilot.diagnostics.output import Report, Table

CLUSTER_COLUMNS = ("SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE")
LISTENER_COLUMNS = ("ADDRESSES", "PORT", "MATCH", "DESTINATION")
ROUTE_COLUMNS = ("NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE")
ENDPOINT_COLUMNS = ("ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER")
SECRET_COLUMNS = (
    "RESOURCE NAME",
    "TYPE",
    "STATUS",
    "VALID CERT",
    "SERIAL NUMBER",
    "NOT AFTER",
    "NOT BEFORE",
)

HCM = "HttpConnectionManager"
TCP_PROXY = "TcpProxy"
_ISTIO_CONFIG = re.compile(r"/namespaces/(?P<ns>[^/]+)/[^/]+/(?P<name>[^/]+)$")


def _type_name(any_json: JsonDict) -> str:
    return str(any_json.get("@type", "")).rsplit(".", 1)[-1]


def describe_management(metadata: JsonDict | None) -> str:
    """`name.namespace` of the Istio config behind a resource, from `istio.config` metadata."""
    path = str(((metadata or {}).get("filter_metadata") or {}).get("istio", {}).get("config", ""))
    found = _ISTIO_CONFIG.search(path)
    return f"{found['name']}.{found['ns']}" if found else "-"


# Clusters -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterFilter:
    fqdn: str = ""
    port: int = 0
    subset: str = ""
    direction: str = ""


@dataclass(frozen=True, slots=True)
class ClusterKey:
    fqdn: str
    port: str
    subset: str
    direction: str

    @classmethod
    def parse(cls, name: str) -> ClusterKey:
        parts = name.split("|")
        if len(parts) == 4:
            direction, port, subset, fqdn = parts
            return cls(fqdn, port, subset, direction)
        return cls(name, "", "", "")


def cluster_type(cluster: JsonDict) -> str:
    if "cluster_type" in cluster:
        return str(cluster["cluster_type"].get("name", ""))
    return str(cluster.get("type", "EDS" if "eds_cluster_config" in cluster else "STATIC"))


def clusters_report(dump: EnvoyDump, f: ClusterFilter = ClusterFilter()) -> Report:
    selected = []
    for cluster in dump.clusters():
        key = ClusterKey.parse(str(cluster.get("name", "")))
        if f.fqdn and f.fqdn not in key.fqdn:
            continue
        if f.port and key.port != str(f.port):
            continue
        if f.subset and key.subset != f.subset:
            continue
        if f.direction and key.direction != f.direction:
            continue
        selected.append((key, cluster))
    selected.sort(key=lambda kc: (kc[0].fqdn, _num(kc[0].port), kc[0].subset, kc[0].direction))
    rows = [
        [
            key.fqdn,
            key.port or "-",
            key.subset or "-",
            key.direction or "-",
            cluster_type(cluster),
            describe_management(cluster.get("metadata")),
        ]
        for key, cluster in selected
    ]
    return Report(Table(CLUSTER_COLUMNS, rows), [c for _, c in selected])


def _num(text: str) -> int:
    return int(text) if text.isdigit() else -1


# Listeners ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListenerFilter:
    address: str = ""
    port: int = 0
    type: str = ""
    """HTTP, TCP or HTTP+TCP."""


def listener_address(listener: JsonDict) -> tuple[str, int]:
    socket = (listener.get("address") or {}).get("socket_address") or {}
    return str(socket.get("address", "")), int(socket.get("port_value", 0))


def _filters(chain: JsonDict) -> list[JsonDict]:
    return list(chain.get("filters") or ())


def _chains(listener: JsonDict) -> list[JsonDict]:
    chains = list(listener.get("filter_chains") or ())
    if "default_filter_chain" in listener:
        chains.append(listener["default_filter_chain"])
    return chains


def listener_type(listener: JsonDict) -> str:
    kinds = set()
    for chain in _chains(listener):
        for network_filter in _filters(chain):
            name = _type_name(network_filter.get("typed_config") or {})
            if name == HCM:
                kinds.add("HTTP")
            elif name == TCP_PROXY:
                kinds.add("TCP")
    return "+".join(k for k in ("HTTP", "TCP") if k in kinds)


def describe_match(match: JsonDict | None) -> str:
    """A filter chain's match in istioctl's words; `ALL` when it matches everything."""
    m = match or {}
    parts = []
    if m.get("server_names"):
        parts.append("SNI: " + ",".join(m["server_names"]))
    if m.get("transport_protocol"):
        parts.append("Trans: " + str(m["transport_protocol"]))
    if m.get("application_protocols"):
        parts.append("App: " + ",".join(m["application_protocols"]))
    if m.get("prefix_ranges"):
        ranges = [
            f"{r.get('address_prefix')}/{r.get('prefix_len', 32)}" for r in m["prefix_ranges"]
        ]
        parts.append("Addr: " + ",".join(ranges))
    if m.get("destination_port"):
        parts.append(f"Port: {m['destination_port']}")
    return "; ".join(parts) or "ALL"


def describe_destination(chain: JsonDict) -> str:
    for network_filter in _filters(chain):
        config = network_filter.get("typed_config") or {}
        name = _type_name(config)
        if name == HCM:
            if "rds" in config:
                return "Route: " + str(config["rds"].get("route_config_name", ""))
            if "route_config" in config:
                return describe_inline_routes(config["route_config"])
            return "HTTP"
        if name == TCP_PROXY:
            if "cluster" in config:
                return "Cluster: " + str(config["cluster"])
            weighted = (config.get("weighted_clusters") or {}).get("clusters") or ()
            return "Clusters: " + ",".join(str(c.get("name")) for c in weighted)
    names = [str(f.get("name", "")) for f in _filters(chain)]
    return ",".join(names) or "-"


def describe_inline_routes(config: JsonDict) -> str:
    """istioctl's short form: the cluster when one route sends everything there."""
    vhosts = list(config.get("virtual_hosts") or ())
    if len(vhosts) == 1 and vhosts[0].get("domains") == ["*"]:
        routes = list(vhosts[0].get("routes") or ())
        if len(routes) == 1 and (routes[0].get("match") or {}).get("prefix") == "/":
            cluster = (routes[0].get("route") or {}).get("cluster")
            if cluster:
                return f"Cluster: {cluster}"
    described = [f"{describe_domains(v)} {describe_routes(v)}".strip() for v in vhosts]
    return "Inline Route: " + "; ".join(described)


def describe_routes(vhost: JsonDict) -> str:
    return ",".join(describe_route_match(r.get("match") or {}) for r in vhost.get("routes") or ())


def listeners_report(dump: EnvoyDump, f: ListenerFilter = ListenerFilter()) -> Report:
    selected = []
    for listener in dump.listeners():
        address, port = listener_address(listener)
        if f.address and address != f.address:
            continue
        if f.port and port != f.port:
            continue
        if f.type and listener_type(listener) != f.type.upper():
            continue
        selected.append(listener)
    selected.sort(key=lambda entry: (listener_address(entry)[1], listener_address(entry)[0]))
    rows = []
    for listener in selected:
        address, port = listener_address(listener)
        for chain in _chains(listener):
            rows.append(
                [
                    address,
                    port,
                    describe_match(chain.get("filter_chain_match")),
                    describe_destination(chain),
                ]
            )
    return Report(Table(LISTENER_COLUMNS, rows), selected)


# Routes ---------------------------------------------------------------------------------------


def describe_domains(vhost: JsonDict) -> str:
    """The shortest domain, and how many others there are."""
    domains = [str(d) for d in vhost.get("domains") or ()]
    if not domains:
        return ""
    if "*" in domains:
        return "*"
    shortest = min(domains, key=lambda d: (len(d), d))
    return shortest if len(domains) == 1 else f"{shortest} + {len(domains) - 1} more..."


def describe_route_match(match: JsonDict) -> str:
    if "prefix" in match:
        text = f"{match['prefix']}*"
    elif "path" in match:
        text = str(match["path"])
    elif "safe_regex" in match:
        text = str(match["safe_regex"].get("regex", ""))
    elif "path_separated_prefix" in match:
        text = f"{match['path_separated_prefix']}/*"
    else:
        text = "/*"
    headers = [str(h.get("name", "")) for h in match.get("headers") or ()]
    if headers:
        text += " (+" + ",".join(headers) + ")"
    return text


@dataclass(frozen=True, slots=True)
class RouteFilter:
    name: str = ""


def routes_report(dump: EnvoyDump, f: RouteFilter = RouteFilter()) -> Report:
    selected = [r for r in dump.route_configs() if not f.name or r.get("name") == f.name]
    selected.sort(key=lambda r: str(r.get("name", "")))
    rows: list[list[Any]] = []
    for config in selected:
        for vhost in config.get("virtual_hosts") or ():
            for route in vhost.get("routes") or ():
                rows.append(
                    [
                        config.get("name", ""),
                        vhost.get("name", ""),
                        describe_domains(vhost),
                        describe_route_match(route.get("match") or {}),
                        describe_management(route.get("metadata")),
                    ]
                )
            if not vhost.get("routes"):
                rows.append(
                    [
                        config.get("name", ""),
                        vhost.get("name", ""),
                        describe_domains(vhost),
                        "/*",
                        "404",
                    ]
                )
    return Report(Table(ROUTE_COLUMNS, rows), selected)


# Endpoints ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointFilter:
    address: str = ""
    port: int = 0
    cluster: str = ""
    status: str = ""


@dataclass(frozen=True, slots=True)
class EndpointRow:
    address: str
    port: int
    status: str
    outlier: str
    cluster: str

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}" if self.port else self.address


def endpoint_rows(data: JsonDict) -> list[EndpointRow]:
    """Rows from `/clusters?format=json`, or from a dump's `EndpointsConfigDump`."""
    if "cluster_statuses" in data:
        return [
            EndpointRow(*_socket(h.get("address") or {}), _host_status(h), _outlier(h), c["name"])
            for c in data["cluster_statuses"]
            for h in c.get("host_statuses") or ()
        ]
    rows = []
    for assignment in EnvoyDump(data).endpoint_configs():
        for group in assignment.get("endpoints") or ():
            for lb in group.get("lb_endpoints") or ():
                address = (lb.get("endpoint") or {}).get("address") or {}
                status = str(lb.get("health_status", "HEALTHY"))
                rows.append(
                    EndpointRow(*_socket(address), status, "OK", assignment["cluster_name"])
                )
    return rows


def _socket(address: JsonDict) -> tuple[str, int]:
    socket = address.get("socket_address")
    if socket is not None:
        return str(socket.get("address", "")), int(socket.get("port_value", 0))
    pipe = address.get("pipe")
    return (f"unix://{pipe.get('path', '')}", 0) if pipe else ("", 0)


def _host_status(host: JsonDict) -> str:
    health = host.get("health_status") or {}
    if health.get("failed_active_health_check"):
        return "UNHEALTHY"
    return str(health.get("eds_health_status", "HEALTHY"))


def _outlier(host: JsonDict) -> str:
    return "FAILED" if (host.get("health_status") or {}).get("failed_outlier_check") else "OK"


def endpoints_report(data: JsonDict, f: EndpointFilter = EndpointFilter()) -> Report:
    rows = [
        r
        for r in endpoint_rows(data)
        if (not f.address or r.address == f.address)
        and (not f.port or r.port == f.port)
        and (not f.cluster or r.cluster == f.cluster)
        and (not f.status or r.status == f.status.upper())
    ]
    rows.sort(key=lambda r: (r.address, r.port, r.cluster))
    table = Table(ENDPOINT_COLUMNS, [[r.endpoint, r.status, r.outlier, r.cluster] for r in rows])
    data_rows = [
        {
            "endpoint": r.endpoint,
            "status": r.status,
            "outlierCheck": r.outlier,
            "cluster": r.cluster,
        }
        for r in rows
    ]
    return Report(table, data_rows)


# Secrets ------------------------------------------------------------------------------------


def _secret_bytes(source: JsonDict) -> bytes:
    """The bytes of an Envoy DataSource as the dump shows it (inline only: files are not read)."""
    if "inline_bytes" in source:
        return base64.b64decode(source["inline_bytes"])
    if "inline_string" in source:
        return str(source["inline_string"]).encode()
    return b""


def secret_rows(dump: EnvoyDump, now: datetime | None = None) -> list[list[str]]:
    now = now or datetime.now(UTC)
    rows = []
    for entry in dump.secrets():
        secret = entry.get("secret") or {}
        if "tls_certificate" in secret:
            kind, source = "Cert Chain", secret["tls_certificate"].get("certificate_chain") or {}
        elif "validation_context" in secret:
            kind, source = "CA", secret["validation_context"].get("trusted_ca") or {}
        else:
            kind, source = "-", {}
        try:
            chain = parse_chain(_secret_bytes(source))
        except (ValueError, IndexError):
            chain = []
        if not chain:
            rows.append([str(entry.get("name", "")), kind, entry["state"], "-", "-", "-", "-"])
        for cert in chain[:1]:  # the leaf, as istioctl shows
            rows.append(
                [
                    str(entry.get("name", "")),
                    kind,
                    entry["state"],
                    "true" if cert.valid_at(now) else "false",
                    cert.serial,
                    cert.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    cert.not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
                ]
            )
    return rows


def secrets_report(dump: EnvoyDump, now: datetime | None = None) -> Report:
    """JSON and YAML print Envoy's secrets section as it is, as istioctl does."""
    section = {k: v for k, v in dump.section("SecretsConfigDump").items() if k != "@type"}
    return Report(Table(SECRET_COLUMNS, secret_rows(dump, now)), section)
