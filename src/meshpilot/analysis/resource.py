"""Resources as analysis sees them: any Kubernetes-shaped object, with where it was written.

Unlike the config store, which admits only the kinds meshpilot serves, analysis accepts every
kind: Istio's (networking, security, telemetry, extensions, install), Kubernetes' own
(Service, Pod, Deployment, Namespace, ConfigMap, webhooks…) and Gateway API kinds. A kind is
identified by its API group and name (`Collection`), never by its version, because the same
resource is written as `v1`, `v1beta1` or `v1alpha3` interchangeably.

A Resource keeps the whole document (`body`) for analyzers that read outside `spec` (a Pod's
`status`, a ConfigMap's `data`, a webhook's `webhooks`), plus the field lines recorded by the
YAML reader so every message can point at the offending line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Collection(NamedTuple):
    """A kind of resource, independent of API version."""

    group: str
    kind: str

    def __str__(self) -> str:
        return f"{self.group}/{self.kind}" if self.group else self.kind


NETWORKING = "networking.istio.io"
SECURITY = "security.istio.io"
TELEMETRY_GROUP = "telemetry.istio.io"
EXTENSIONS = "extensions.istio.io"
INSTALL = "install.istio.io"
GATEWAY_API = "gateway.networking.k8s.io"
ADMISSION = "admissionregistration.k8s.io"

VIRTUAL_SERVICE = Collection(NETWORKING, "VirtualService")
DESTINATION_RULE = Collection(NETWORKING, "DestinationRule")
GATEWAY = Collection(NETWORKING, "Gateway")
SERVICE_ENTRY = Collection(NETWORKING, "ServiceEntry")
WORKLOAD_ENTRY = Collection(NETWORKING, "WorkloadEntry")
WORKLOAD_GROUP = Collection(NETWORKING, "WorkloadGroup")
SIDECAR = Collection(NETWORKING, "Sidecar")
ENVOY_FILTER = Collection(NETWORKING, "EnvoyFilter")
PROXY_CONFIG = Collection(NETWORKING, "ProxyConfig")
AUTHORIZATION_POLICY = Collection(SECURITY, "AuthorizationPolicy")
PEER_AUTHENTICATION = Collection(SECURITY, "PeerAuthentication")
REQUEST_AUTHENTICATION = Collection(SECURITY, "RequestAuthentication")
TELEMETRY = Collection(TELEMETRY_GROUP, "Telemetry")
WASM_PLUGIN = Collection(EXTENSIONS, "WasmPlugin")
ISTIO_OPERATOR = Collection(INSTALL, "IstioOperator")

K8S_GATEWAY = Collection(GATEWAY_API, "Gateway")
K8S_HTTP_ROUTE = Collection(GATEWAY_API, "HTTPRoute")
K8S_GATEWAY_CLASS = Collection(GATEWAY_API, "GatewayClass")

SERVICE = Collection("", "Service")
POD = Collection("", "Pod")
NAMESPACE = Collection("", "Namespace")
CONFIG_MAP = Collection("", "ConfigMap")
SECRET = Collection("", "Secret")
ENDPOINTS = Collection("", "Endpoints")
NODE = Collection("", "Node")
DEPLOYMENT = Collection("apps", "Deployment")
REPLICA_SET = Collection("apps", "ReplicaSet")
STATEFUL_SET = Collection("apps", "StatefulSet")
DAEMON_SET = Collection("apps", "DaemonSet")
JOB = Collection("batch", "Job")
CRON_JOB = Collection("batch", "CronJob")
MUTATING_WEBHOOK = Collection(ADMISSION, "MutatingWebhookConfiguration")
VALIDATING_WEBHOOK = Collection(ADMISSION, "ValidatingWebhookConfiguration")

CLUSTER_SCOPED_KINDS = frozenset({
    "Namespace", "Node", "PersistentVolume", "ClusterRole", "ClusterRoleBinding",
    "CustomResourceDefinition", "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration", "StorageClass", "PriorityClass", "GatewayClass",
    "IngressClass", "APIService", "RuntimeClass",
})
"""Kinds that live outside namespaces: they get no default namespace when loaded."""


@dataclass(frozen=True, slots=True)
class Resource:
    collection: Collection
    version: str
    name: str
    namespace: str
    """'' for cluster-scoped kinds and for namespaced objects read without a namespace."""
    body: Mapping[str, Any]
    file: str = ""
    line: int = 0
    field_lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False)

    @property
    def kind(self) -> str:
        return self.collection.kind

    @property
    def metadata(self) -> Mapping[str, Any]:
        value = self.body.get("metadata")
        return value if isinstance(value, Mapping) else {}

    @property
    def spec(self) -> Mapping[str, Any]:
        value = self.body.get("spec")
        return value if isinstance(value, Mapping) else {}

    @property
    def labels(self) -> Mapping[str, str]:
        return _string_map(self.metadata.get("labels"))

    @property
    def annotations(self) -> Mapping[str, str]:
        return _string_map(self.metadata.get("annotations"))

    @property
    def ref(self) -> str:
        """`Kind namespace/name`, or `Kind name` without a namespace (istioctl's origin)."""
        return f"{self.kind} {self.full_name}"

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def dotted_name(self) -> str:
        """`name.namespace`, the form istioctl's `--suppress` examples use."""
        return f"{self.name}.{self.namespace}" if self.namespace else self.name

    def line_of(self, path: str) -> int:
        """Line of a field path, else of its nearest recorded parent, else of the document."""
        while path:
            if path in self.field_lines:
                return self.field_lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.line


def _string_map(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): _text(v) for k, v in value.items()}


def _text(value: object) -> str:
    """A label or annotation value as Kubernetes would hold it (YAML `true` → "true")."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
