"""Config resources as they leave a config store: Istio kinds with their spec as plain data.

A Config remembers where it came from (file and line) so that every error and diagnostic can
point at the text a user wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class GroupVersionKind(NamedTuple):
    group: str
    version: str
    kind: str

    def __str__(self) -> str:
        return f"{self.group}/{self.version}/{self.kind}"


class Kind:
    """Names of the kinds meshpilot understands, independent of API version."""

    SERVICE_ENTRY = "ServiceEntry"
    WORKLOAD_ENTRY = "WorkloadEntry"
    VIRTUAL_SERVICE = "VirtualService"
    DESTINATION_RULE = "DestinationRule"
    GATEWAY = "Gateway"
    SIDECAR = "Sidecar"
    WORKLOAD_GROUP = "WorkloadGroup"
    TELEMETRY = "Telemetry"
    ENVOY_FILTER = "EnvoyFilter"
    WASM_PLUGIN = "WasmPlugin"
    PEER_AUTHENTICATION = "PeerAuthentication"
    AUTHORIZATION_POLICY = "AuthorizationPolicy"
    REQUEST_AUTHENTICATION = "RequestAuthentication"


class ConfigKey(NamedTuple):
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


_SHARED_KIND_NAMES = frozenset({"Gateway"})
"""Kind names two APIs use (Istio's Gateway and the Gateway API's): keys keep them apart."""


def key_kind(kind: str, group: str) -> str:
    """The kind as resource keys name it: a kind whose name another API also uses is qualified
    by its group (`Gateway.gateway.networking.k8s.io`) unless it is Istio's."""
    if kind in _SHARED_KIND_NAMES and group and not group.endswith(".istio.io"):
        return f"{kind}.{group}"
    return kind


@dataclass(frozen=True, slots=True)
class Config:
    kind: str
    name: str
    namespace: str
    spec: Mapping[str, Any]
    group: str = "networking.istio.io"
    version: str = "v1"
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    source_file: str = ""
    source_line: int = 0
    """1-based line of the document's start in `source_file` (0 when unknown)."""
    field_lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False)
    """Dotted field path (e.g. `spec.http[0].route`) → 1-based line, for precise messages."""
    resource_version: str = ""

    @property
    def key(self) -> ConfigKey:
        return ConfigKey(key_kind(self.kind, self.group), self.namespace, self.name)

    @property
    def gvk(self) -> GroupVersionKind:
        return GroupVersionKind(self.group, self.version, self.kind)

    @property
    def origin(self) -> str:
        """`file:line` where this config was written, or '' when it came from elsewhere."""
        if not self.source_file:
            return ""
        return f"{self.source_file}:{self.source_line}" if self.source_line else self.source_file

    def line_of(self, path: str) -> int:
        """Best line for a field path: the field itself, else its nearest known parent."""
        while path:
            if path in self.field_lines:
                return self.field_lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.source_line


@dataclass(frozen=True, slots=True)
class ConfigError:
    """A document that was rejected, with where and why."""

    file: str
    line: int
    message: str
    field: str = ""
    key: ConfigKey | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        what = f" {self.key}" if self.key else ""
        at = f" (field {self.field})" if self.field else ""
        return f"{where}:{what}{at} {self.message}".replace(": ", ": ", 1)
