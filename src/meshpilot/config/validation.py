"""Schema checks for the Istio kinds meshpilot serves, mirroring Istio's own validation.

Istio validates in two layers: the protobuf schema (unknown fields and wrong types are
rejected when a document is decoded) and hand-written rules in istio/istio
`pkg/config/validation` (hosts must be DNS names, ports 1..65535, a route needs a destination,
and so on). Both layers are reproduced here over plain YAML data, for the fields that matter to
meshpilot; the messages follow Istio's where that helps users search for them.

Each validator walks one spec and returns `Problem(field, message)` entries whose `field` is a
path relative to the document (`spec.http[0].route[1].weight`), so `validate_config` can turn
each one into a ConfigError at the exact line the user wrote. Validators never raise on
malformed input: every value is type-checked before it is used.

Unknown fields are reported for the spec itself and for the nested messages whose schema is
small and stable (ports, endpoints, routes, destinations, matches, subsets, traffic policies);
deeper Envoy-facing structures (retries, fault, CORS, connection pools, …) are only checked to
be mappings.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from meshpilot.config.yamlsource import field_path, index_path
from meshpilot.model import Config, ConfigError, Kind, Protocol


class Problem(NamedTuple):
    field: str
    """Path relative to the document, e.g. `spec.hosts[0]`."""
    message: str


SpecValidator = Callable[[Mapping[str, Any]], list[Problem]]

# --- Field sets, per Istio's API reference (networking.istio.io, v1/v1beta1/v1alpha3). ------

SERVICE_ENTRY_FIELDS = frozenset({
    "hosts", "addresses", "ports", "location", "resolution", "endpoints", "workloadSelector",
    "exportTo", "subjectAltNames",
})
WORKLOAD_ENTRY_FIELDS = frozenset({
    "address", "ports", "labels", "network", "locality", "weight", "serviceAccount",
})
VIRTUAL_SERVICE_FIELDS = frozenset({"hosts", "gateways", "http", "tls", "tcp", "exportTo"})
DESTINATION_RULE_FIELDS = frozenset({
    "host", "trafficPolicy", "subsets", "exportTo", "workloadSelector",
})
GATEWAY_FIELDS = frozenset({"servers", "selector"})
WORKLOAD_GROUP_FIELDS = frozenset({"metadata", "template", "probe"})
ENVOY_FILTER_FIELDS = frozenset({"workloadSelector", "targetRefs", "configPatches", "priority"})
TELEMETRY_FIELDS = frozenset({
    "selector", "targetRef", "targetRefs", "tracing", "metrics", "accessLogging",
})
SIDECAR_FIELDS = frozenset({
    "workloadSelector", "ingress", "egress", "outboundTrafficPolicy", "inboundConnectionPool",
})

KNOWN_SPEC_FIELDS: Mapping[str, frozenset[str]] = {
    Kind.SERVICE_ENTRY: SERVICE_ENTRY_FIELDS,
    Kind.WORKLOAD_ENTRY: WORKLOAD_ENTRY_FIELDS,
    Kind.VIRTUAL_SERVICE: VIRTUAL_SERVICE_FIELDS,
    Kind.DESTINATION_RULE: DESTINATION_RULE_FIELDS,
    Kind.GATEWAY: GATEWAY_FIELDS,
    Kind.SIDECAR: SIDECAR_FIELDS,
    Kind.WORKLOAD_GROUP: WORKLOAD_GROUP_FIELDS,
    Kind.TELEMETRY: TELEMETRY_FIELDS,
    Kind.ENVOY_FILTER: ENVOY_FILTER_FIELDS,
}

_SERVICE_PORT_FIELDS = frozenset({"number", "protocol", "name", "targetPort"})
_HTTP_ROUTE_FIELDS = frozenset({
    "name", "match", "route", "redirect", "directResponse", "delegate", "rewrite", "timeout",
    "retries", "fault", "mirror", "mirrors", "mirrorPercent", "mirrorPercentage", "corsPolicy",
    "headers",
})
_HTTP_MATCH_FIELDS = frozenset({
    "name", "uri", "scheme", "method", "authority", "headers", "port", "sourceLabels",
    "gateways", "queryParams", "ignoreUriCase", "withoutHeaders", "sourceNamespace",
    "statPrefix",
})
_HTTP_ROUTE_DESTINATION_FIELDS = frozenset({"destination", "weight", "headers"})
_ROUTE_DESTINATION_FIELDS = frozenset({"destination", "weight"})
_DESTINATION_FIELDS = frozenset({"host", "subset", "port"})
_PORT_SELECTOR_FIELDS = frozenset({"number"})
_STRING_MATCH_FIELDS = frozenset({"exact", "prefix", "regex"})
_DELEGATE_FIELDS = frozenset({"name", "namespace"})
_DIRECT_RESPONSE_FIELDS = frozenset({"status", "body"})
_L4_ROUTE_FIELDS = frozenset({"match", "route"})
_L4_MATCH_FIELDS = frozenset({
    "destinationSubnets", "port", "sourceLabels", "gateways", "sourceNamespace", "sourceSubnet",
})
_TLS_MATCH_FIELDS = frozenset({
    "sniHosts", "destinationSubnets", "port", "sourceLabels", "gateways", "sourceNamespace",
})
_SUBSET_FIELDS = frozenset({"name", "labels", "trafficPolicy"})
_TRAFFIC_POLICY_FIELDS = frozenset({
    "loadBalancer", "connectionPool", "outlierDetection", "tls", "portLevelSettings", "tunnel",
    "proxyProtocol", "retryBudget",
})
_PORT_TRAFFIC_POLICY_FIELDS = frozenset({
    "port", "loadBalancer", "connectionPool", "outlierDetection", "tls",
})

RESOLUTIONS = ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN")
LOCATIONS = ("MESH_EXTERNAL", "MESH_INTERNAL")
SIMPLE_LOAD_BALANCERS = (
    "UNSPECIFIED", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN",
)
TLS_MODES = ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")

UNIX_PREFIX = "unix://"
MESH_GATEWAY = "mesh"
_MAX_PORT = 65535
_MAX_UINT32 = 2**32 - 1

# --- Names and addresses (Istio's pkg/config/labels and validation rules). -------------------

_DNS_LABEL = re.compile(r"^[A-Za-z0-9](?:[-A-Za-z0-9]*[A-Za-z0-9])?$")
_WILDCARD_LABEL = re.compile(r"^(?:\*|(?:\*|\*-)?[A-Za-z0-9](?:[-A-Za-z0-9]*[A-Za-z0-9])?)$")
_QUALIFIED_NAME = re.compile(r"^(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
"""An HTTP header field name is an RFC 7230 token."""
_RE2_UNSUPPORTED = re.compile(r"\(\?<?[=!]|\\[1-9]")
"""Lookaround and backreferences: Python `re` accepts them, Envoy's RE2 does not."""


def is_dns_label(value: str) -> bool:
    return len(value) <= 63 and bool(_DNS_LABEL.match(value))


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_ip_or_cidr(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def dns_name_error(name: str) -> str | None:
    """Why `name` is not a DNS name (short names like `reviews` are fine), or None."""
    if error := _domain_precondition_error(name):
        return error
    return _labels_error(name)


def wildcard_domain_error(name: str) -> str | None:
    """Why `name` is neither a DNS name nor one with a wildcard first label, or None."""
    if error := _domain_precondition_error(name):
        return error
    first, _, rest = name.partition(".")
    if not (len(first) <= 63 and _WILDCARD_LABEL.match(first)):
        return f"domain name {name!r} invalid (label {first!r} invalid)"
    return _labels_error(rest, whole=name) if rest else None


def _domain_precondition_error(name: str) -> str | None:
    if not name:
        return "empty domain name not allowed"
    if len(name) > 255:
        return f"domain name {name[:32]!r}… too long (max 255)"
    return None


def _labels_error(domain: str, *, whole: str = "") -> str | None:
    whole = whole or domain
    labels = domain.split(".")
    if labels[-1].isdigit():
        return f"domain name {whole!r} invalid (top level domain {labels[-1]!r} is all-numeric)"
    for index, label in enumerate(labels):
        if index == len(labels) - 1 and label == "":
            break  # a trailing dot (`istio.io.`) is an unambiguous absolute name
        if not is_dns_label(label):
            return f"domain name {whole!r} invalid (label {label!r} invalid)"
    return None


def label_key_error(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or dns_name_error(prefix)):
        return f"invalid label key {key!r}: prefix must be a DNS subdomain"
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return (f"invalid label key {key!r}: must be at most 63 alphanumerics, '-', '_' or '.', "
                "starting and ending with an alphanumeric")
    return None


def label_value_error(value: str) -> str | None:
    if value and (len(value) > 63 or not _QUALIFIED_NAME.match(value)):
        return (f"invalid label value {value!r}: must be at most 63 alphanumerics, '-', '_' or "
                "'.', starting and ending with an alphanumeric")
    return None


# --- Type-checked access to untrusted data. ---------------------------------------------------


def _type_name(value: object) -> str:
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list):
        return "list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {int: "integer", float: "number", str: "string"}.get(type(value), type(value).__name__)


class _Checker:
    """Collects problems; its accessors report wrong types and return None instead of raising."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def known_fields(self, obj: Mapping[str, Any], path: str, known: frozenset[str]) -> None:
        for key in obj:
            if key not in known:
                self.add(field_path(path, key), _unknown_field_message(key, known))

    def mapping(self, value: Any, path: str) -> Mapping[str, Any] | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.add(path, f"must be a mapping, not a {_type_name(value)}")
            return None
        return value

    def sequence(self, value: Any, path: str) -> list[Any] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            self.add(path, f"must be a list, not a {_type_name(value)}")
            return None
        return value

    def string(self, value: Any, path: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.add(path, f"must be a string, not a {_type_name(value)}")
            return None
        return value

    def integer(self, value: Any, path: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(path, f"must be an integer, not a {_type_name(value)}")
            return None
        return value

    def boolean(self, value: Any, path: str) -> bool | None:
        if value is None:
            return None
        if not isinstance(value, bool):
            self.add(path, f"must be true or false, not a {_type_name(value)}")
            return None
        return value

    def enum(self, value: Any, path: str, allowed: tuple[str, ...]) -> str | None:
        text = self.string(value, path)
        if text is not None and text not in allowed:
            self.add(path, f"unknown value {text!r}; expected one of {', '.join(allowed)}")
            return None
        return text

    def mappings(self, value: Any, path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """(path, item) for each mapping item of a list; other items are reported."""
        for index, item in enumerate(self.sequence(value, path) or []):
            item_path = index_path(path, index)
            obj = self.mapping(item, item_path)
            if obj is None and item is None:
                self.add(item_path, "must not be null")
            if obj is not None:
                yield item_path, obj

    def strings(self, value: Any, path: str) -> Iterator[tuple[str, str]]:
        for index, item in enumerate(self.sequence(value, path) or []):
            item_path = index_path(path, index)
            text = self.string(item, item_path)
            if text is None and item is None:
                self.add(item_path, "must be a string, not null")
            if text is not None:
                yield item_path, text

    def port(self, value: Any, path: str, *, required: bool = False) -> int | None:
        if value is None:
            if required:
                self.add(path, "port number is required")
            return None
        number = self.integer(value, path)
        if number is not None and not 1 <= number <= _MAX_PORT:
            self.add(path, f"port number {number} must be between 1 and {_MAX_PORT}")
            return None
        return number


def _unknown_field_message(key: object, known: frozenset[str]) -> str:
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), str(key))
    if camel != key and camel in known:
        return f"unknown field {key!r} (did you mean {camel!r}?)"
    return f"unknown field {key!r}"


# --- Shared pieces. ---------------------------------------------------------------------------


def _check_labels(c: _Checker, value: Any, path: str, *, selector: bool = False) -> None:
    labels = c.mapping(value, path)
    for key, item in (labels or {}).items():
        item_path = field_path(path, key)
        if not isinstance(key, str) or not isinstance(item, str):
            c.add(item_path, "labels must map strings to strings (quote numbers and booleans)")
            continue
        if selector and ("*" in key or "*" in item):
            c.add(item_path, "wildcard is not supported in selector")
            continue
        if error := label_key_error(key) or label_value_error(item):
            c.add(item_path, error)


def _check_workload_selector(c: _Checker, value: Any, path: str, key: str = "labels") -> None:
    """`key` is `labels` for networking selectors, `matchLabels` for DestinationRule's (which
    is the shared istio.type.v1beta1.WorkloadSelector)."""
    selector = c.mapping(value, path)
    if selector is not None:
        c.known_fields(selector, path, frozenset({key}))
        _check_labels(c, selector.get(key), field_path(path, key), selector=True)


def _check_export_to(c: _Checker, value: Any, path: str) -> None:
    seen: set[str] = set()
    entries = list(c.strings(value, path))
    for item_path, entry in entries:
        if entry in seen:
            c.add(item_path, f"duplicate exportTo entry {entry!r}")
        seen.add(entry)
        if entry not in (".", "*", "~") and not is_dns_label(entry):
            c.add(item_path, f"invalid exportTo entry {entry!r}: use '.', '*', '~' or a "
                             "namespace name")
        elif entry in ("*", "~") and len(entries) > 1:
            c.add(item_path, f"exportTo {entry!r} cannot be combined with other entries")


def _check_regex(c: _Checker, pattern: str, path: str) -> None:
    if not pattern:
        c.add(path, "regex must not be empty")
        return
    try:
        re.compile(pattern)
    except re.error as exc:
        c.add(path, f"invalid regex {pattern!r}: {exc}")
        return
    if _RE2_UNSUPPORTED.search(pattern):
        c.add(path, f"regex {pattern!r} uses lookaround or backreferences, which RE2 "
                    "(Envoy's regex engine) does not support")


def _check_string_match(c: _Checker, value: Any, path: str, *, allow_empty: bool) -> None:
    """A StringMatch: exactly one of exact/prefix/regex (`{}` = presence where allowed)."""
    match = c.mapping(value, path)
    if match is None:
        if value is None and not allow_empty:
            c.add(path, "must set one of exact, prefix or regex")
        return
    c.known_fields(match, path, _STRING_MATCH_FIELDS)
    kinds = [k for k in ("exact", "prefix", "regex") if k in match]
    if len(kinds) > 1:
        c.add(path, f"must set only one of exact, prefix or regex (found {', '.join(kinds)})")
    elif not kinds and not allow_empty:
        c.add(path, "must set one of exact, prefix or regex")
    for kind in kinds:
        text = c.string(match[kind], field_path(path, kind))
        if kind == "regex" and text is not None:
            _check_regex(c, text, field_path(path, kind))


def _check_header_matches(c: _Checker, value: Any, path: str) -> None:
    for name, match in (c.mapping(value, path) or {}).items():
        item_path = field_path(path, name)
        if not isinstance(name, str) or not name:
            c.add(item_path, "header name must be a non-empty string")
        elif not _HEADER_NAME.match(name):
            c.add(item_path, f"invalid header name {name!r}")
        if match is None:
            c.add(item_path, "match must not be null (use {} to match presence)")
            continue
        # An empty match (`name: {}`) tests only that the header is present.
        _check_string_match(c, match, item_path, allow_empty=True)


# --- ServiceEntry and WorkloadEntry. ----------------------------------------------------------


def validate_service_entry(spec: Mapping[str, Any]) -> list[Problem]:
    c = _Checker()
    base = "spec"
    c.known_fields(spec, base, SERVICE_ENTRY_FIELDS)
    hosts = _check_service_entry_hosts(c, spec.get("hosts"), field_path(base, "hosts"))
    resolution = c.enum(spec.get("resolution"), field_path(base, "resolution"), RESOLUTIONS)
    c.enum(spec.get("location"), field_path(base, "location"), LOCATIONS)
    _check_addresses(c, spec.get("addresses"), field_path(base, "addresses"), resolution)
    ports = _check_service_ports(c, spec.get("ports"), field_path(base, "ports"))
    _check_workload_selector(c, spec.get("workloadSelector"), field_path(base, "workloadSelector"))
    endpoints = list(c.mappings(spec.get("endpoints"), field_path(base, "endpoints")))
    has_selector = spec.get("workloadSelector") is not None
    if has_selector and spec.get("endpoints"):
        c.add(field_path(base, "endpoints"), "only one of workloadSelector or endpoints can be set")
    for path, endpoint in endpoints:
        _check_workload_entry(c, endpoint, path, service_ports=ports)
    _check_resolution(c, spec, resolution or "NONE", hosts, endpoints, has_selector, len(ports))
    _check_export_to(c, spec.get("exportTo"), field_path(base, "exportTo"))
    for path, san in c.strings(spec.get("subjectAltNames"), field_path(base, "subjectAltNames")):
        if not san:
            c.add(path, "subject alt name must not be empty")
    return c.problems


def _check_service_entry_hosts(c: _Checker, value: Any, path: str) -> list[tuple[str, str]]:
    hosts = list(c.strings(value, path))
    if not value:
        c.add(path, "service entry must have at least one host")
    for host_path, host in hosts:
        if host == "*":
            c.add(host_path, "invalid host '*': a service entry cannot match every host")
        elif error := wildcard_domain_error(host):
            c.add(host_path, error)
    return hosts


def _check_addresses(c: _Checker, value: Any, path: str, resolution: str | None) -> None:
    for item_path, address in c.strings(value, path):
        if not is_ip_or_cidr(address):
            c.add(item_path, f"invalid address {address!r}: must be an IP address or CIDR")
        elif "/" in address and resolution not in (None, "NONE", "STATIC"):
            c.add(item_path, "CIDR addresses are allowed only for NONE/STATIC resolution")


def _check_service_ports(c: _Checker, value: Any, path: str) -> dict[str, int]:
    """Validate `ports`; returns name → number of the well-formed ones."""
    names: dict[str, int] = {}
    numbers: set[int] = set()
    for port_path, port in c.mappings(value, path):
        c.known_fields(port, port_path, _SERVICE_PORT_FIELDS)
        number = c.port(port.get("number"), field_path(port_path, "number"), required=True)
        if number is not None and number in numbers:
            c.add(field_path(port_path, "number"), f"port number {number} already defined")
        name = c.string(port.get("name"), field_path(port_path, "name"))
        if not name:
            c.add(field_path(port_path, "name"), "port name is required")
        elif not is_dns_label(name):
            c.add(field_path(port_path, "name"), f"invalid port name {name!r}: must be a "
                                                  "DNS label")
        elif name in names:
            c.add(field_path(port_path, "name"), f"port name {name!r} already defined")
        protocol = c.string(port.get("protocol"), field_path(port_path, "protocol"))
        if protocol and Protocol.parse(protocol) is Protocol.UNSUPPORTED:
            c.add(field_path(port_path, "protocol"), f"unsupported protocol {protocol!r}")
        c.port(port.get("targetPort"), field_path(port_path, "targetPort"))
        if number is not None:
            numbers.add(number)
            if name and name not in names:
                names[name] = number
    return names


def _check_resolution(
    c: _Checker,
    spec: Mapping[str, Any],
    resolution: str,
    hosts: list[tuple[str, str]],
    endpoints: list[tuple[str, Mapping[str, Any]]],
    has_selector: bool,
    port_count: int,
) -> None:
    """Rules that depend on how the service's endpoints are found."""
    endpoints_path = "spec.endpoints"
    if resolution == "NONE" and endpoints:
        c.add(endpoints_path, "no endpoints should be provided for resolution NONE")
    elif resolution == "STATIC":
        if not endpoints and not has_selector:
            c.add(endpoints_path if "endpoints" in spec else "spec.resolution",
                  "endpoints (or a workloadSelector) must be provided for resolution STATIC")
        _check_static_endpoints(c, endpoints, port_count)
    elif resolution in ("DNS", "DNS_ROUND_ROBIN"):
        if not endpoints:
            for host_path, host in hosts:
                if "*" in host:
                    c.add(host_path, f"hosts must be fully qualified (no wildcard) for "
                                     f"resolution {resolution} without endpoints")
        if resolution == "DNS_ROUND_ROBIN" and len(endpoints) > 1:
            c.add(endpoints_path, "there must be at most one endpoint for resolution "
                                  "DNS_ROUND_ROBIN")
        for path, endpoint in endpoints:
            address = endpoint.get("address")
            if isinstance(address, str) and not is_ip(address) and dns_name_error(address):
                c.add(field_path(path, "address"), f"endpoint address {address!r} is not a "
                                                   "valid IP address or hostname")


def _check_static_endpoints(
    c: _Checker, endpoints: list[tuple[str, Mapping[str, Any]]], port_count: int
) -> None:
    unix = False
    for path, endpoint in endpoints:
        address = endpoint.get("address")
        if not isinstance(address, str):
            continue  # reported by the endpoint check
        if address.startswith(UNIX_PREFIX):
            unix = True
        elif not is_ip(address):
            c.add(field_path(path, "address"), f"endpoint address {address!r} is not a valid "
                                               "IP address (resolution STATIC)")
    if unix and port_count != 1:
        c.add("spec.ports", "exactly one service port is required for unix endpoints")


def validate_workload_entry(spec: Mapping[str, Any]) -> list[Problem]:
    c = _Checker()
    _check_workload_entry(c, spec, "spec", service_ports=None)
    return c.problems


def _check_workload_entry(
    c: _Checker, entry: Mapping[str, Any], path: str, *, service_ports: dict[str, int] | None
) -> None:
    """A WorkloadEntry spec, or one ServiceEntry endpoint (which has the same schema)."""
    c.known_fields(entry, path, WORKLOAD_ENTRY_FIELDS)
    address_path = field_path(path, "address")
    address = c.string(entry.get("address"), address_path)
    if not address:
        c.add(address_path, "address is required")
    elif address.startswith(UNIX_PREFIX):
        _check_unix_address(c, address, address_path, has_ports=bool(entry.get("ports")))
    elif service_ports is None and not is_ip(address) and dns_name_error(address):
        c.add(address_path, f"address {address!r} is not a valid IP address or hostname")
    _check_endpoint_ports(c, entry.get("ports"), field_path(path, "ports"), service_ports)
    _check_labels(c, entry.get("labels"), field_path(path, "labels"))
    weight = c.integer(entry.get("weight"), field_path(path, "weight"))
    if weight is not None and not 0 <= weight <= _MAX_UINT32:
        c.add(field_path(path, "weight"), f"weight {weight} must be between 0 and {_MAX_UINT32}")
    for name in ("network", "locality", "serviceAccount"):
        c.string(entry.get(name), field_path(path, name))


def _check_unix_address(c: _Checker, address: str, path: str, *, has_ports: bool) -> None:
    socket = address.removeprefix(UNIX_PREFIX)
    if not socket.startswith(("/", "@")):
        c.add(path, f"unix address {address!r} must name an absolute path (or @abstract)")
    if has_ports:
        c.add(path, f"unix endpoint {address!r} must not include ports")


def _check_endpoint_ports(
    c: _Checker, value: Any, path: str, service_ports: dict[str, int] | None
) -> None:
    for name, number in (c.mapping(value, path) or {}).items():
        item_path = field_path(path, name)
        if not isinstance(name, str) or not is_dns_label(name):
            c.add(item_path, f"invalid port name {name!r}: must be a DNS label")
        elif service_ports is not None and name not in service_ports:
            c.add(item_path, f"endpoint port {name!r} is not defined by the service entry")
        c.port(number, item_path, required=True)


# --- VirtualService. --------------------------------------------------------------------------


def validate_virtual_service(spec: Mapping[str, Any]) -> list[Problem]:
    c = _Checker()
    base = "spec"
    c.known_fields(spec, base, VIRTUAL_SERVICE_FIELDS)
    gateways = [g for _, g in c.strings(spec.get("gateways"), field_path(base, "gateways"))]
    _check_gateway_names(c, spec.get("gateways"), field_path(base, "gateways"))
    applies_to_mesh = not gateways or MESH_GATEWAY in gateways
    # As in Istio, a VirtualService without hosts is a delegate: only the http routes of a
    # root VirtualService that names it (`delegate`) use it, so it may not bind gateways or
    # carry TCP/TLS routes, and it may not delegate further.
    delegate = not spec.get("hosts")
    if delegate:
        for field in ("gateways", "tcp", "tls"):
            if spec.get(field):
                c.add(field_path(base, field), f"delegate virtual service must have no {field}")
    else:
        _check_virtual_service_hosts(c, spec.get("hosts"), field_path(base, "hosts"),
                                     applies_to_mesh)
    if not any(spec.get(k) for k in ("http", "tcp", "tls")):
        c.add(base, "http, tcp or tls must be provided in virtual service")
    for path, route in c.mappings(spec.get("http"), field_path(base, "http")):
        _check_http_route(c, route, path)
        if delegate and route.get("delegate") is not None:
            c.add(field_path(path, "delegate"), "a delegate virtual service cannot delegate")
    for path, route in c.mappings(spec.get("tcp"), field_path(base, "tcp")):
        _check_l4_route(c, route, path, tls=False)
    for path, route in c.mappings(spec.get("tls"), field_path(base, "tls")):
        _check_l4_route(c, route, path, tls=True)
    _check_export_to(c, spec.get("exportTo"), field_path(base, "exportTo"))
    return c.problems


def _check_virtual_service_hosts(
    c: _Checker, value: Any, path: str, applies_to_mesh: bool
) -> None:
    hosts = list(c.strings(value, path))
    if not value:
        c.add(path, "virtual service must have at least one host")
    valid: list[tuple[str, str]] = []
    for host_path, host in hosts:
        error = wildcard_domain_error(host)
        if error and not is_ip(host):
            c.add(host_path, error)
        elif host == "*" and applies_to_mesh:
            c.add(host_path, "wildcard host * is not allowed for virtual services bound to "
                             "the mesh gateway")
        else:
            valid.append((host_path, host))
    for index, (host_path, host) in enumerate(valid):
        for _, earlier in valid[:index]:
            if _hosts_overlap(earlier, host):
                c.add(host_path, f"duplicate hosts in virtual service: {earlier} & {host}")
                break


def _hosts_overlap(a: str, b: str) -> bool:
    """Whether one host (possibly wildcard) matches the other, as Istio's host.Name.Matches."""
    a, b = a.lower(), b.lower()
    if a == b or a == "*" or b == "*":
        return True
    if a.startswith("*"):
        return b.endswith(a[1:])
    if b.startswith("*"):
        return a.endswith(b[1:])
    return False


def _check_gateway_names(c: _Checker, value: Any, path: str) -> None:
    for item_path, name in c.strings(value, path):
        if name == MESH_GATEWAY:
            continue
        namespace, slash, gateway = name.rpartition("/")
        if slash and not is_dns_label(namespace):
            c.add(item_path, f"invalid gateway {name!r}: namespace {namespace!r} is not a "
                             "DNS label")
        elif error := dns_name_error(gateway):
            c.add(item_path, f"invalid gateway {name!r}: {error}")


def _check_http_route(c: _Checker, route: Mapping[str, Any], path: str) -> None:
    c.known_fields(route, path, _HTTP_ROUTE_FIELDS)
    _check_http_route_actions(c, route, path)
    for match_path, match in c.mappings(route.get("match"), field_path(path, "match")):
        _check_http_match(c, match, match_path)
    _check_destinations(c, route.get("route"), field_path(path, "route"),
                        _HTTP_ROUTE_DESTINATION_FIELDS)
    mirror = c.mapping(route.get("mirror"), field_path(path, "mirror"))
    if mirror is not None:
        _check_destination(c, mirror, field_path(path, "mirror"))
    _check_percentage(c, route.get("mirrorPercentage"), field_path(path, "mirrorPercentage"))
    c.string(route.get("name"), field_path(path, "name"))
    c.string(route.get("timeout"), field_path(path, "timeout"))
    c.sequence(route.get("mirrors"), field_path(path, "mirrors"))
    for name in ("redirect", "rewrite", "retries", "fault", "corsPolicy", "headers"):
        c.mapping(route.get(name), field_path(path, name))


def _check_http_route_actions(c: _Checker, route: Mapping[str, Any], path: str) -> None:
    """What a route does: forward (`route`), `redirect`, `directResponse` or `delegate`."""
    has = {name: route.get(name) is not None for name in
           ("route", "redirect", "directResponse", "delegate", "fault", "rewrite")}
    has["route"] = bool(route.get("route"))
    if has["delegate"]:
        _check_delegate(c, route.get("delegate"), field_path(path, "delegate"))
        for other in ("route", "redirect"):
            if has[other]:
                c.add(field_path(path, other), f"an HTTP route with delegate must not set {other}")
        return
    if has["directResponse"]:
        _check_direct_response(c, route.get("directResponse"), field_path(path, "directResponse"))
    actions = [n for n in ("route", "redirect", "directResponse") if has[n]]
    if not actions:
        c.add(path, "HTTP route must have route, redirect or directResponse")
    elif len(actions) > 1:
        c.add(field_path(path, actions[1]),
              f"HTTP route cannot contain both {actions[0]} and {actions[1]}")
    if has["redirect"]:
        for other in ("fault", "rewrite"):
            if has[other]:
                c.add(field_path(path, other), f"HTTP route cannot contain both {other} "
                                               "and redirect")


def _check_delegate(c: _Checker, value: Any, path: str) -> None:
    delegate = c.mapping(value, path)
    if delegate is None:
        return
    c.known_fields(delegate, path, _DELEGATE_FIELDS)
    if not c.string(delegate.get("name"), field_path(path, "name")):
        c.add(field_path(path, "name"), "delegate name is required")
    c.string(delegate.get("namespace"), field_path(path, "namespace"))


def _check_direct_response(c: _Checker, value: Any, path: str) -> None:
    response = c.mapping(value, path)
    if response is None:
        return
    c.known_fields(response, path, _DIRECT_RESPONSE_FIELDS)
    status_path = field_path(path, "status")
    status = c.integer(response.get("status"), status_path)
    if status is None and response.get("status") is None:
        c.add(status_path, "status is required")
    elif status is not None and not 200 <= status <= 599:
        c.add(status_path, f"status {status} must be between 200 and 599")
    c.mapping(response.get("body"), field_path(path, "body"))


def _check_percentage(c: _Checker, value: Any, path: str) -> None:
    percentage = c.mapping(value, path)
    if percentage is None:
        return
    amount = percentage.get("value")
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        c.add(field_path(path, "value"), "must be a number")
    elif not 0 <= amount <= 100:
        c.add(field_path(path, "value"), f"percentage {amount} must be between 0 and 100")


def _check_http_match(c: _Checker, match: Mapping[str, Any], path: str) -> None:
    c.known_fields(match, path, _HTTP_MATCH_FIELDS)
    for name in ("uri", "scheme", "method", "authority"):
        if name in match:
            _check_string_match(c, match[name], field_path(path, name), allow_empty=False)
    for name in ("headers", "queryParams", "withoutHeaders"):
        _check_header_matches(c, match.get(name), field_path(path, name))
    c.port(match.get("port"), field_path(path, "port"))
    _check_labels(c, match.get("sourceLabels"), field_path(path, "sourceLabels"))
    _check_gateway_names(c, match.get("gateways"), field_path(path, "gateways"))
    c.boolean(match.get("ignoreUriCase"), field_path(path, "ignoreUriCase"))
    _check_source_namespace(c, match.get("sourceNamespace"), field_path(path, "sourceNamespace"))
    for name in ("name", "statPrefix"):
        c.string(match.get(name), field_path(path, name))


def _check_source_namespace(c: _Checker, value: Any, path: str) -> None:
    namespace = c.string(value, path)
    if namespace and not is_dns_label(namespace):
        c.add(path, f"sourceNamespace {namespace!r} is not a valid namespace name")


def _check_destinations(c: _Checker, value: Any, path: str, known: frozenset[str]) -> None:
    """Weighted destinations. Weights are relative, as in current Istio: each must be a
    non-negative integer, and several destinations must not all weigh 0."""
    items = list(c.mappings(value, path))
    total = 0
    weights_valid = True
    for item_path, item in items:
        c.known_fields(item, item_path, known)
        destination_path = field_path(item_path, "destination")
        destination = c.mapping(item.get("destination"), destination_path)
        if destination is None:
            if item.get("destination") is None:
                c.add(destination_path, "destination is required")
        else:
            _check_destination(c, destination, destination_path)
        weight = _check_weight(c, item.get("weight"), field_path(item_path, "weight"))
        weights_valid = weights_valid and weight is not None
        total += weight or 0
        if "headers" in known:
            c.mapping(item.get("headers"), field_path(item_path, "headers"))
    if len(items) > 1 and weights_valid and total == 0:
        c.add(path, "total destination weight = 0")


def _check_weight(c: _Checker, value: Any, path: str) -> int | None:
    """The weight (0 when absent), or None when it is invalid (already reported)."""
    if value is None:
        return 0
    weight = c.integer(value, path)
    if weight is not None and weight < 0:
        c.add(path, f"weight {weight} < 0")
        return None
    return weight


def _check_destination(c: _Checker, destination: Mapping[str, Any], path: str) -> None:
    c.known_fields(destination, path, _DESTINATION_FIELDS)
    host_path = field_path(path, "host")
    host = c.string(destination.get("host"), host_path)
    if not host:
        c.add(host_path, "destination host is required")
    elif host == "*":
        c.add(host_path, "invalid destination host '*'")
    elif error := wildcard_domain_error(host):
        c.add(host_path, error)
    subset = c.string(destination.get("subset"), field_path(path, "subset"))
    if subset is not None and not is_dns_label(subset):
        c.add(field_path(path, "subset"), f"invalid subset name {subset!r}: must be a DNS label")
    _check_port_selector(c, destination.get("port"), field_path(path, "port"))


def _check_port_selector(c: _Checker, value: Any, path: str) -> None:
    selector = c.mapping(value, path)
    if selector is not None:
        c.known_fields(selector, path, _PORT_SELECTOR_FIELDS)
        c.port(selector.get("number"), field_path(path, "number"), required=True)


def _check_l4_route(c: _Checker, route: Mapping[str, Any], path: str, *, tls: bool) -> None:
    """A `tcp` or `tls` route: matches on connection attributes, then destinations."""
    c.known_fields(route, path, _L4_ROUTE_FIELDS)
    match_path = field_path(path, "match")
    matches = list(c.mappings(route.get("match"), match_path))
    if tls and not matches:
        c.add(match_path, "TLS route must have at least one match condition")
    for item_path, match in matches:
        _check_l4_match(c, match, item_path, tls=tls)
    route_path = field_path(path, "route")
    if not route.get("route"):
        c.add(route_path, f"{'TLS' if tls else 'TCP'} route must have at least one destination")
    _check_destinations(c, route.get("route"), route_path, _ROUTE_DESTINATION_FIELDS)


def _check_l4_match(c: _Checker, match: Mapping[str, Any], path: str, *, tls: bool) -> None:
    c.known_fields(match, path, _TLS_MATCH_FIELDS if tls else _L4_MATCH_FIELDS)
    if tls:
        sni_path = field_path(path, "sniHosts")
        sni_hosts = list(c.strings(match.get("sniHosts"), sni_path))
        if not sni_hosts:
            c.add(sni_path, "TLS match must have at least one SNI host")
        for host_path, host in sni_hosts:
            if error := wildcard_domain_error(host):
                c.add(host_path, error)
    for subnet_path, subnet in c.strings(match.get("destinationSubnets"),
                                         field_path(path, "destinationSubnets")):
        if not is_ip_or_cidr(subnet):
            c.add(subnet_path, f"invalid subnet {subnet!r}: must be an IP address or CIDR")
    c.port(match.get("port"), field_path(path, "port"))
    _check_labels(c, match.get("sourceLabels"), field_path(path, "sourceLabels"))
    _check_gateway_names(c, match.get("gateways"), field_path(path, "gateways"))
    _check_source_namespace(c, match.get("sourceNamespace"), field_path(path, "sourceNamespace"))


# --- DestinationRule. -------------------------------------------------------------------------


def validate_destination_rule(spec: Mapping[str, Any]) -> list[Problem]:
    c = _Checker()
    base = "spec"
    c.known_fields(spec, base, DESTINATION_RULE_FIELDS)
    host_path = field_path(base, "host")
    host = c.string(spec.get("host"), host_path)
    if not host:
        c.add(host_path, "host is required")
    elif error := wildcard_domain_error(host):
        c.add(host_path, error)
    _check_traffic_policy(c, spec.get("trafficPolicy"), field_path(base, "trafficPolicy"))
    names: set[str] = set()
    for path, subset in c.mappings(spec.get("subsets"), field_path(base, "subsets")):
        _check_subset(c, subset, path, names)
    _check_export_to(c, spec.get("exportTo"), field_path(base, "exportTo"))
    _check_workload_selector(c, spec.get("workloadSelector"), field_path(base, "workloadSelector"),
                             "matchLabels")
    return c.problems


def _check_subset(c: _Checker, subset: Mapping[str, Any], path: str, names: set[str]) -> None:
    c.known_fields(subset, path, _SUBSET_FIELDS)
    name_path = field_path(path, "name")
    name = c.string(subset.get("name"), name_path)
    if not name:
        c.add(name_path, "subset name is required")
    elif not is_dns_label(name):
        c.add(name_path, f"invalid subset name {name!r}: must be a DNS label")
    elif name in names:
        c.add(name_path, f"duplicate subset name {name!r}")
    if name:
        names.add(name)
    _check_labels(c, subset.get("labels"), field_path(path, "labels"))
    _check_traffic_policy(c, subset.get("trafficPolicy"), field_path(path, "trafficPolicy"))


def _check_traffic_policy(
    c: _Checker, value: Any, path: str, *, port_level: bool = False
) -> None:
    policy = c.mapping(value, path)
    if policy is None:
        return
    if not policy:
        c.add(path, "traffic policy must have at least one field")
        return
    c.known_fields(policy, path, _PORT_TRAFFIC_POLICY_FIELDS if port_level
                   else _TRAFFIC_POLICY_FIELDS)
    _check_load_balancer(c, policy.get("loadBalancer"), field_path(path, "loadBalancer"))
    tls = c.mapping(policy.get("tls"), field_path(path, "tls"))
    if tls is not None:
        c.enum(tls.get("mode"), field_path(path, "tls.mode"), TLS_MODES)
    for name in ("connectionPool", "outlierDetection", "tunnel", "proxyProtocol", "retryBudget"):
        c.mapping(policy.get(name), field_path(path, name))
    if port_level:
        _check_port_selector(c, policy.get("port"), field_path(path, "port"))
        if policy.get("port") is None:
            c.add(field_path(path, "port"), "port is required in portLevelSettings")
        return
    for item_path, item in c.mappings(policy.get("portLevelSettings"),
                                      field_path(path, "portLevelSettings")):
        _check_traffic_policy(c, item, item_path, port_level=True)


def _check_load_balancer(c: _Checker, value: Any, path: str) -> None:
    balancer = c.mapping(value, path)
    if balancer is None:
        return
    c.enum(balancer.get("simple"), field_path(path, "simple"), SIMPLE_LOAD_BALANCERS)
    if "simple" in balancer and "consistentHash" in balancer:
        c.add(field_path(path, "consistentHash"), "only one of simple or consistentHash can "
                                                  "be set")
    c.mapping(balancer.get("consistentHash"), field_path(path, "consistentHash"))


# --- Entry points. ----------------------------------------------------------------------------

# --- Gateway. ---------------------------------------------------------------------------------

_GATEWAY_SERVER_FIELDS = frozenset({"port", "bind", "hosts", "tls", "defaultEndpoint", "name"})
_SERVER_TLS_FIELDS = frozenset({
    "httpsRedirect", "mode", "serverCertificate", "privateKey", "caCertificates", "caCrl",
    "credentialName", "credentialNames", "tlsCertificates", "subjectAltNames",
    "verifyCertificateSpki", "verifyCertificateHash", "minProtocolVersion",
    "maxProtocolVersion", "cipherSuites",
})
_TLS_MODES = ("PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL",
              "OPTIONAL_MUTUAL")
_TLS_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")
_TLS_PROTOCOLS = ("HTTPS", "TLS")


def _check_namespaced_host(c: _Checker, host: str, path: str) -> None:
    """`namespace/host` (namespace `*`, `.` or a name; `~` is only for Sidecar) or `host`."""
    namespace, _, name = host.rpartition("/")
    if namespace and namespace not in ("*", ".", "~") and not is_dns_label(namespace):
        c.add(path, f"invalid namespace {namespace!r} in host {host!r}")
    if name != "*" and (error := wildcard_domain_error(name)):
        c.add(path, error)


def _check_server_tls(c: _Checker, tls: Mapping[str, Any], path: str, protocol: str) -> None:
    c.known_fields(tls, path, _SERVER_TLS_FIELDS)
    c.boolean(tls.get("httpsRedirect"), field_path(path, "httpsRedirect"))
    mode = c.enum(tls.get("mode"), field_path(path, "mode"), _TLS_MODES) or "PASSTHROUGH"
    for field in ("minProtocolVersion", "maxProtocolVersion"):
        c.enum(tls.get(field), field_path(path, field), _TLS_VERSIONS)
    has_files = tls.get("serverCertificate") is not None or tls.get("privateKey") is not None
    credential = tls.get("credentialName") or tls.get("credentialNames")
    if mode in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL"):
        if credential and has_files:
            c.add(path, "only one of credentialName or serverCertificate/privateKey may be set")
        elif not credential:
            for field in ("serverCertificate", "privateKey"):
                if not tls.get(field):
                    c.add(field_path(path, field), f"{mode} TLS requires {field} "
                                                   "(or a credentialName)")
        if mode in ("MUTUAL", "OPTIONAL_MUTUAL") and not credential \
                and not tls.get("caCertificates"):
            c.add(field_path(path, "caCertificates"), f"{mode} TLS requires caCertificates "
                                                      "(or a credentialName)")
    if protocol and protocol not in _TLS_PROTOCOLS and mode != "PASSTHROUGH" \
            and not tls.get("httpsRedirect"):
        c.add(field_path(path, "mode"), f"TLS settings need protocol HTTPS or TLS, not "
                                        f"{protocol}")


def validate_gateway(spec: Mapping[str, Any]) -> list[Problem]:
    c = _Checker()
    c.known_fields(spec, "spec", GATEWAY_FIELDS)
    _check_labels(c, spec.get("selector"), "spec.selector", selector=True)
    servers = list(c.mappings(spec.get("servers"), "spec.servers"))
    if not servers:
        c.add("spec.servers", "gateway must have at least one server")
    names: set[str] = set()
    for path, server in servers:
        c.known_fields(server, path, _GATEWAY_SERVER_FIELDS)
        port_path = field_path(path, "port")
        port = c.mapping(server.get("port"), port_path)
        protocol = ""
        if port is None:
            c.add(port_path, "server port is required")
        else:
            c.known_fields(port, port_path, _SERVICE_PORT_FIELDS)
            c.port(port.get("number"), field_path(port_path, "number"), required=True)
            protocol = (c.string(port.get("protocol"), field_path(port_path, "protocol"))
                        or "").upper()
            if not protocol:
                c.add(field_path(port_path, "protocol"), "port protocol is required")
            elif Protocol.parse(protocol) is Protocol.UNSUPPORTED:
                c.add(field_path(port_path, "protocol"), f"unsupported protocol {protocol!r}")
        hosts = list(c.strings(server.get("hosts"), field_path(path, "hosts")))
        if not hosts:
            c.add(field_path(path, "hosts"), "server must have at least one host")
        for host_path, host in hosts:
            _check_namespaced_host(c, host, host_path)
        tls = c.mapping(server.get("tls"), field_path(path, "tls"))
        if tls is not None:
            _check_server_tls(c, tls, field_path(path, "tls"), protocol)
        elif protocol in _TLS_PROTOCOLS:
            c.add(field_path(path, "tls"), f"server with protocol {protocol} must have tls")
        name = c.string(server.get("name"), field_path(path, "name"))
        if name:
            if name in names:
                c.add(field_path(path, "name"), f"duplicate server name {name!r}")
            names.add(name)
        bind = c.string(server.get("bind"), field_path(path, "bind"))
        if bind and not bind.startswith("unix://") and not is_ip(bind):
            c.add(field_path(path, "bind"), f"bind {bind!r} must be an IP address or unix://")
    return c.problems


# --- Sidecar. ---------------------------------------------------------------------------------

_SIDECAR_INGRESS_FIELDS = frozenset({
    "port", "bind", "captureMode", "defaultEndpoint", "tls", "connectionPool",
})
_SIDECAR_EGRESS_FIELDS = frozenset({"port", "bind", "captureMode", "hosts"})
_CAPTURE_MODES = ("DEFAULT", "IPTABLES", "NONE")


def _check_sidecar_port(c: _Checker, value: Any, path: str, *, required: bool) -> None:
    port = c.mapping(value, path)
    if port is None:
        if required:
            c.add(path, "port is required")
        return
    c.known_fields(port, path, _SERVICE_PORT_FIELDS)
    c.port(port.get("number"), field_path(path, "number"), required=True)
    protocol = c.string(port.get("protocol"), field_path(path, "protocol"))
    if protocol and Protocol.parse(protocol) is Protocol.UNSUPPORTED:
        c.add(field_path(path, "protocol"), f"unsupported protocol {protocol!r}")


def validate_sidecar(spec: Mapping[str, Any]) -> list[Problem]:
    c = _Checker()
    c.known_fields(spec, "spec", SIDECAR_FIELDS)
    _check_workload_selector(c, spec.get("workloadSelector"), "spec.workloadSelector")
    for path, listener in c.mappings(spec.get("ingress"), "spec.ingress"):
        c.known_fields(listener, path, _SIDECAR_INGRESS_FIELDS)
        _check_sidecar_port(c, listener.get("port"), field_path(path, "port"), required=True)
        c.enum(listener.get("captureMode"), field_path(path, "captureMode"), _CAPTURE_MODES)
        endpoint = c.string(listener.get("defaultEndpoint"), field_path(path, "defaultEndpoint"))
        if endpoint and not (endpoint.startswith("unix://") or ":" in endpoint):
            c.add(field_path(path, "defaultEndpoint"), f"invalid defaultEndpoint {endpoint!r}: "
                                                       "use IP:port or unix://path")
    egress = list(c.mappings(spec.get("egress"), "spec.egress"))
    catch_all = 0
    for path, listener in egress:
        c.known_fields(listener, path, _SIDECAR_EGRESS_FIELDS)
        _check_sidecar_port(c, listener.get("port"), field_path(path, "port"), required=False)
        catch_all += listener.get("port") is None
        c.enum(listener.get("captureMode"), field_path(path, "captureMode"), _CAPTURE_MODES)
        hosts = list(c.strings(listener.get("hosts"), field_path(path, "hosts")))
        if not hosts:
            c.add(field_path(path, "hosts"), "egress listener must have at least one host")
        for host_path, host in hosts:
            if "/" not in host:
                c.add(host_path, f"host {host!r} must be of the form namespace/dnsName")
            else:
                _check_namespaced_host(c, host, host_path)
    if catch_all > 1:
        c.add("spec.egress", "only one egress listener may omit the port (the catch-all)")
    policy = c.mapping(spec.get("outboundTrafficPolicy"), "spec.outboundTrafficPolicy")
    if policy is not None:
        c.known_fields(policy, "spec.outboundTrafficPolicy", frozenset({"mode", "egressProxy"}))
        c.enum(policy.get("mode"), "spec.outboundTrafficPolicy.mode",
               ("REGISTRY_ONLY", "ALLOW_ANY"))
    return c.problems


_APPLY_TO = ("LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "ROUTE_CONFIGURATION",
             "VIRTUAL_HOST", "HTTP_ROUTE", "CLUSTER", "EXTENSION_CONFIG", "BOOTSTRAP",
             "LISTENER_FILTER")
_PATCH_OPERATIONS = ("MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST",
                     "REPLACE")
_CONTEXTS = ("ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY")


def validate_envoy_filter(spec: Mapping[str, Any]) -> list[Problem]:
    """Istio's EnvoyFilter: known applyTo, operation and context; a value for operations
    that need one; REMOVE without a value."""
    c = _Checker()
    c.known_fields(spec, "spec", ENVOY_FILTER_FIELDS)
    _check_workload_selector(c, spec.get("workloadSelector"), "spec.workloadSelector")
    c.integer(spec.get("priority"), "spec.priority")
    for path, patch in c.mappings(spec.get("configPatches"), "spec.configPatches"):
        c.enum(patch.get("applyTo"), field_path(path, "applyTo"), _APPLY_TO)
        match = c.mapping(patch.get("match"), field_path(path, "match")) or {}
        c.enum(match.get("context"), field_path(field_path(path, "match"), "context"), _CONTEXTS)
        body = c.mapping(patch.get("patch"), field_path(path, "patch"))
        if body is None:
            c.add(field_path(path, "patch"), "patch is required")
            continue
        operation = c.enum(body.get("operation"), field_path(path, "patch.operation"),
                           _PATCH_OPERATIONS)
        value = c.mapping(body.get("value"), field_path(path, "patch.value"))
        if operation not in (None, "REMOVE") and not value:
            c.add(field_path(path, "patch.value"), f"{operation} needs a value")
    return c.problems


def validate_telemetry(spec: Mapping[str, Any]) -> list[Problem]:
    """Istio's Telemetry: providers are named, sampling is a percentage, custom tags have one
    source each."""
    c = _Checker()
    c.known_fields(spec, "spec", TELEMETRY_FIELDS)
    selector = c.mapping(spec.get("selector"), "spec.selector")
    if selector is not None:
        _check_labels(c, selector.get("matchLabels"), "spec.selector.matchLabels", selector=True)
    for path, tracing in c.mappings(spec.get("tracing"), "spec.tracing"):
        for provider_path, provider in c.mappings(tracing.get("providers"),
                                                  field_path(path, "providers")):
            if not c.string(provider.get("name"), field_path(provider_path, "name")):
                c.add(field_path(provider_path, "name"), "provider name is required")
        sampling = tracing.get("randomSamplingPercentage")
        if sampling is not None and (not isinstance(sampling, int | float)
                                     or isinstance(sampling, bool) or not 0 <= sampling <= 100):
            c.add(field_path(path, "randomSamplingPercentage"),
                  "randomSamplingPercentage must be a number from 0 to 100")
        tags = c.mapping(tracing.get("customTags"), field_path(path, "customTags")) or {}
        for tag, source in tags.items():
            tag_path = field_path(field_path(path, "customTags"), str(tag))
            kinds = [k for k in ("literal", "environment", "header") if k in (source or {})]
            if len(kinds) != 1:
                c.add(tag_path, "a custom tag needs exactly one of literal, environment, header")
    for path, logging_ in c.mappings(spec.get("accessLogging"), "spec.accessLogging"):
        for provider_path, provider in c.mappings(logging_.get("providers"),
                                                  field_path(path, "providers")):
            if not c.string(provider.get("name"), field_path(provider_path, "name")):
                c.add(field_path(provider_path, "name"), "provider name is required")
    for path, metrics in c.mappings(spec.get("metrics"), "spec.metrics"):
        for override_path, override in c.mappings(metrics.get("overrides"),
                                                  field_path(path, "overrides")):
            match = c.mapping(override.get("match"), field_path(override_path, "match")) or {}
            match_path = field_path(override_path, "match")
            c.enum(match.get("metric"), field_path(match_path, "metric"), _TELEMETRY_METRICS)
            c.enum(match.get("mode"), field_path(match_path, "mode"), _TELEMETRY_MODES)
            tags = c.mapping(override.get("tagOverrides"),
                             field_path(override_path, "tagOverrides")) or {}
            for tag, change in tags.items():
                tag_path = field_path(field_path(override_path, "tagOverrides"), str(tag))
                body = c.mapping(change, tag_path) or {}
                operation = c.enum(body.get("operation"), field_path(tag_path, "operation"),
                                   ("UPSERT", "REMOVE"))
                if operation != "REMOVE" and not body.get("value"):
                    c.add(field_path(tag_path, "value"), "UPSERT needs a value")
    return c.problems


_TELEMETRY_METRICS = (
    "ALL_METRICS", "REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS", "TCP_CLOSED_CONNECTIONS", "TCP_SENT_BYTES", "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES", "GRPC_RESPONSE_MESSAGES",
)
_TELEMETRY_MODES = ("CLIENT_AND_SERVER", "CLIENT", "SERVER")


def validate_workload_group(spec: Mapping[str, Any]) -> list[Problem]:
    """A template for WorkloadEntries of workloads that register themselves (VMs): like a
    WorkloadEntry without an address, which each workload brings when it connects."""
    c = _Checker()
    c.known_fields(spec, "spec", WORKLOAD_GROUP_FIELDS)
    meta = c.mapping(spec.get("metadata"), "spec.metadata")
    if meta is not None:
        c.known_fields(meta, "spec.metadata", frozenset({"labels", "annotations"}))
        _check_labels(c, meta.get("labels"), "spec.metadata.labels")
    template = c.mapping(spec.get("template"), "spec.template")
    if template is None:
        c.add("spec.template", "workload group must have a template")
    else:
        if template.get("address"):
            c.add("spec.template.address", "the template must not set an address: each "
                                           "workload brings its own")
        body = {k: v for k, v in template.items() if k != "address"}
        problems = validate_workload_entry({**body, "address": "0.0.0.0"})
        c.problems.extend(
            Problem(p.field.replace("spec.", "spec.template.", 1), p.message) for p in problems
        )
    c.mapping(spec.get("probe"), "spec.probe")
    return c.problems


VALIDATORS: dict[str, SpecValidator] = {
    Kind.SERVICE_ENTRY: validate_service_entry,
    Kind.WORKLOAD_ENTRY: validate_workload_entry,
    Kind.VIRTUAL_SERVICE: validate_virtual_service,
    Kind.DESTINATION_RULE: validate_destination_rule,
    Kind.GATEWAY: validate_gateway,
    Kind.SIDECAR: validate_sidecar,
    Kind.WORKLOAD_GROUP: validate_workload_group,
    Kind.TELEMETRY: validate_telemetry,
    Kind.ENVOY_FILTER: validate_envoy_filter,
}


def _security_validators() -> None:
    """The security.istio.io kinds, validated in a module of their own (which builds on this
    one's checker, hence registered after it is defined)."""
    from meshpilot.config import security_validation as security

    VALIDATORS.update({
        Kind.PEER_AUTHENTICATION: security.validate_peer_authentication,
        Kind.AUTHORIZATION_POLICY: security.validate_authorization_policy,
        Kind.REQUEST_AUTHENTICATION: security.validate_request_authentication,
    })


_security_validators()


def validate_spec(kind: str, spec: Mapping[str, Any]) -> list[Problem]:
    """Problems with one spec; kinds without a validator are accepted as they are."""
    validator = VALIDATORS.get(kind)
    return validator(spec) if validator is not None else []


def validate_config(config: Config) -> list[ConfigError]:
    """Problems with one config, each at the line of the field it concerns. Only Istio's API
    groups are checked here; foreign ones (a Gateway API `Gateway` shares its kind name with
    Istio's) are checked when they are translated."""
    if not config.group.endswith("istio.io"):
        return []
    return [
        ConfigError(config.source_file, config.line_of(problem.field), problem.message,
                    problem.field, config.key)
        for problem in validate_spec(config.kind, config.spec)
    ]
