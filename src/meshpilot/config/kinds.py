"""The kinds meshpilot accepts, and the step from a parsed document to a `Config`.

`SUPPORTED_KINDS` is the whole admission table: one `KindSpec` per (group, kind) with the API
versions accepted for it. Adding a kind (Gateway, Sidecar, PeerAuthentication, …) is one line
there; a schema check for it goes into `validation.VALIDATORS`.

`document_to_config` checks only the envelope (apiVersion, kind, metadata, presence of a
spec) and returns a `Config` or a `ConfigError`. The error carries the resource's key whenever
kind and name can be read, so a store can keep the last good version of that resource serving;
it carries no key when the document cannot be identified at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshpilot.config.yamlsource import Document, field_path
from meshpilot.model import Config, ConfigError, ConfigKey, Kind
from meshpilot.model.config import key_kind

NETWORKING_GROUP = "networking.istio.io"
NETWORKING_VERSIONS = ("v1", "v1beta1", "v1alpha3")
SECURITY_GROUP = "security.istio.io"
SECURITY_VERSIONS = ("v1", "v1beta1")
# Preferred first: the version the Kubernetes config store reads and install's CRDs store.
SMI_VERSIONS = ("v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1")
SMI_ACCESS_VERSIONS = ("v1alpha3", "v1alpha4", "v1alpha2", "v1alpha1")
"""v1alpha3 is the last released TrafficTarget; v1alpha4 is the spec's draft."""
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True)
class KindSpec:
    group: str
    kind: str
    versions: tuple[str, ...]

    def api_versions(self) -> str:
        return ", ".join(f"{self.group}/{v}" for v in self.versions)


SUPPORTED_KINDS: tuple[KindSpec, ...] = (
    KindSpec(NETWORKING_GROUP, Kind.SERVICE_ENTRY, NETWORKING_VERSIONS),
    KindSpec(NETWORKING_GROUP, Kind.WORKLOAD_ENTRY, NETWORKING_VERSIONS),
    KindSpec(NETWORKING_GROUP, Kind.VIRTUAL_SERVICE, NETWORKING_VERSIONS),
    KindSpec(NETWORKING_GROUP, Kind.DESTINATION_RULE, NETWORKING_VERSIONS),
    KindSpec(NETWORKING_GROUP, Kind.GATEWAY, NETWORKING_VERSIONS),
    KindSpec(NETWORKING_GROUP, Kind.SIDECAR, NETWORKING_VERSIONS),
    KindSpec(NETWORKING_GROUP, Kind.WORKLOAD_GROUP, NETWORKING_VERSIONS),
    KindSpec(SECURITY_GROUP, Kind.PEER_AUTHENTICATION, SECURITY_VERSIONS),
    KindSpec(SECURITY_GROUP, Kind.AUTHORIZATION_POLICY, SECURITY_VERSIONS),
    KindSpec(SECURITY_GROUP, Kind.REQUEST_AUTHENTICATION, SECURITY_VERSIONS),
    KindSpec("telemetry.istio.io", Kind.TELEMETRY, ("v1", "v1alpha1")),
    KindSpec(NETWORKING_GROUP, Kind.ENVOY_FILTER, ("v1alpha3",)),
    KindSpec("extensions.istio.io", Kind.WASM_PLUGIN, ("v1alpha1",)),
    # Foreign APIs, translated into Istio config when read (see config/translating.py).
    *(KindSpec(group, kind, versions) for group, kind, versions in (
        ("split.smi-spec.io", "TrafficSplit", SMI_VERSIONS),
        ("specs.smi-spec.io", "HTTPRouteGroup", SMI_VERSIONS),
        ("specs.smi-spec.io", "TCPRoute", SMI_VERSIONS),
        ("specs.smi-spec.io", "UDPRoute", SMI_VERSIONS),
        ("access.smi-spec.io", "TrafficTarget", SMI_ACCESS_VERSIONS),
    )),
    *(KindSpec(GATEWAY_API_GROUP, kind, versions) for kind, versions in (
        ("HTTPRoute", ("v1", "v1beta1", "v1alpha2")),
        ("GRPCRoute", ("v1", "v1alpha2")),
        ("TCPRoute", ("v1alpha2",)),
        ("Gateway", ("v1", "v1beta1")),
    )),
)

_BY_GROUP_KIND: dict[tuple[str, str], KindSpec] = {(k.group, k.kind): k for k in SUPPORTED_KINDS}

# Kubernetes object names: DNS-1123 subdomain for names, DNS-1123 label for namespaces.
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


def lookup(group: str, kind: str) -> KindSpec | None:
    return _BY_GROUP_KIND.get((group, kind))


def parse_api_version(api_version: str) -> tuple[str, str]:
    """`networking.istio.io/v1` → (group, version); a bare `v1` is the core group ''."""
    group, _, version = api_version.rpartition("/")
    return group, version


class _Rejected(Exception):
    """Internal: the document failed an envelope check."""

    def __init__(self, field: str, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.line = line


def document_to_config(doc: Document, file: str) -> Config | ConfigError:
    """Check a document's envelope and build its Config, or say precisely why not."""
    try:
        return _build(doc, file)
    except _Rejected as rejected:
        line = rejected.line or _line_of(doc, rejected.field)
        return ConfigError(file, line, rejected.message, rejected.field, identify(doc.data))


def identify(data: Any) -> ConfigKey | None:
    """The resource key a document claims, or None when kind or name can't be read."""
    if not isinstance(data, Mapping):
        return None
    kind = data.get("kind")
    metadata = data.get("metadata")
    if not isinstance(kind, str) or not kind or not isinstance(metadata, Mapping):
        return None
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        return None
    namespace = metadata.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        namespace = DEFAULT_NAMESPACE
    api_version = data.get("apiVersion")
    group = parse_api_version(api_version)[0] if isinstance(api_version, str) else ""
    return ConfigKey(key_kind(kind, group), namespace, name)


def _build(doc: Document, file: str) -> Config:
    data = doc.data
    if not isinstance(data, Mapping):
        raise _Rejected("", f"document is a {_type_name(data)}, expected a mapping "
                            "with apiVersion, kind, metadata and spec")
    if doc.problems:
        first = doc.problems[0]
        raise _Rejected(first.field, first.message, first.line)
    spec_of_kind = _check_kind(data)
    metadata = _mapping(data, "metadata", required=True)
    name = _check_name(metadata)
    namespace = _check_namespace(metadata)
    labels = _string_map(metadata, "metadata", "labels")
    annotations = _string_map(metadata, "metadata", "annotations")
    spec = _mapping(data, "spec", required=True)
    _, version = parse_api_version(data["apiVersion"])
    return Config(
        kind=spec_of_kind.kind,
        name=name,
        namespace=namespace,
        spec=spec,
        group=spec_of_kind.group,
        version=version,
        labels=labels,
        annotations=annotations,
        source_file=file,
        source_line=doc.line,
        field_lines=doc.field_lines,
    )


def _check_kind(data: Mapping[str, Any]) -> KindSpec:
    api_version = data.get("apiVersion")
    kind = data.get("kind")
    if not isinstance(kind, str) or not kind:
        raise _Rejected("kind", "missing kind")
    if not isinstance(api_version, str) or not api_version:
        known = [s.api_versions() for s in SUPPORTED_KINDS if s.kind == kind]
        hint = f"; accepted: {'; '.join(known)}" if known else ""
        raise _Rejected("apiVersion", f"{kind}: missing apiVersion{hint}")
    group, version = parse_api_version(api_version)
    spec = lookup(group, kind)
    if spec is None:
        raise _Rejected("kind", f"unsupported kind {kind} (apiVersion {api_version}); "
                                f"meshpilot accepts {_supported_summary()}")
    if version not in spec.versions:
        raise _Rejected("apiVersion", f"unsupported apiVersion {api_version} for {kind}; "
                                      f"accepted: {spec.api_versions()}")
    return spec


def _supported_summary() -> str:
    groups: dict[str, list[str]] = {}
    for spec in SUPPORTED_KINDS:
        groups.setdefault(spec.group, []).append(spec.kind)
    return "; ".join(f"{', '.join(kinds)} in {group}" for group, kinds in groups.items())


def _check_name(metadata: Mapping[str, Any]) -> str:
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise _Rejected("metadata.name", "metadata.name is required")
    if len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        raise _Rejected("metadata.name", f"invalid name {name!r}: must be lowercase "
                                         "alphanumerics, '-' or '.' (a DNS-1123 subdomain)")
    return name


def _check_namespace(metadata: Mapping[str, Any]) -> str:
    namespace = metadata.get("namespace")
    if namespace is None or namespace == "":
        return DEFAULT_NAMESPACE
    if not isinstance(namespace, str) or len(namespace) > 63 \
            or not _DNS1123_LABEL.match(namespace):
        raise _Rejected("metadata.namespace", f"invalid namespace {namespace!r}: must be a "
                                              "DNS-1123 label")
    return namespace


def _mapping(parent: Mapping[str, Any], name: str, *, required: bool) -> dict[str, Any]:
    value = parent.get(name)
    if value is None:
        if required:
            raise _Rejected(name, f"{name} is required")
        return {}
    if not isinstance(value, dict):
        raise _Rejected(name, f"{name} must be a mapping, not a {_type_name(value)}")
    return value


def _string_map(metadata: Mapping[str, Any], parent: str, name: str) -> dict[str, str]:
    path = field_path(parent, name)
    value = metadata.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Rejected(path, f"{path} must be a mapping of strings")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise _Rejected(field_path(path, key),
                            f"{path} entry {key!r} must map a string to a string "
                            f"(quote values such as numbers or booleans)")
    return dict(value)


def _line_of(doc: Document, path: str) -> int:
    """Line of a field, else of its nearest recorded parent, else of the document."""
    while path:
        if path in doc.field_lines:
            return doc.field_lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return doc.line


def _type_name(value: object) -> str:
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list):
        return "list"
    if value is None:
        return "null"
    return type(value).__name__
