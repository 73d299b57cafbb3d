"""`annotations.K8sAnalyzer`: Istio annotations on Namespaces, Services, Pods and Deployments.

An annotation is Istio's when its key's prefix ends in `istio.io` (plus
`kubernetes.io/ingress.class`, which Istio documents). Each is looked up in Istio's annotation
table (istio/api `annotation/annotations.yaml`): unknown ones get IST0108, deprecated ones
IST0135 (unless the deprecated `sidecar.istio.io/inject` annotation sits next to its
replacement label), ones on a kind they do not apply to IST0107, and values that fail the
injector's validation IST0125. Annotations that apply to any kind are never misplaced.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import NamedTuple

import yaml

from meshpilot.analysis.analyzers.common import SIDECAR_INJECT
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import DEPLOYMENT, NAMESPACE, POD, SERVICE, Collection, Resource

UNKNOWN = message_type("UnknownAnnotation")
MISPLACED = message_type("MisplacedAnnotation")
INVALID = message_type("InvalidAnnotation")
DEPRECATED = message_type("DeprecatedAnnotation")

ANY = "Any"


class AnnotationDef(NamedTuple):
    kinds: tuple[str, ...]
    deprecated: bool = False


_POD = ("Pod",)
_POD_NAMES = (
    "sidecar.istio.io/agentLogLevel", "sidecar.istio.io/bootstrapOverride",
    "sidecar.istio.io/componentLogLevel", "sidecar.istio.io/enableCoreDump",
    "sidecar.istio.io/extraStatTags", "sidecar.istio.io/interceptionMode",
    "sidecar.istio.io/logLevel", "sidecar.istio.io/proxyCPU", "sidecar.istio.io/proxyCPULimit",
    "sidecar.istio.io/proxyImage", "sidecar.istio.io/proxyImageType",
    "sidecar.istio.io/proxyMemory", "sidecar.istio.io/proxyMemoryLimit",
    "sidecar.istio.io/rewriteAppHTTPProbers", "sidecar.istio.io/status",
    "sidecar.istio.io/userVolume", "sidecar.istio.io/userVolumeMount",
    "sidecar.istio.io/statsHistogramBuckets", "sidecar.istio.io/statsFlushInterval",
    "sidecar.istio.io/nativeSidecar", "status.sidecar.istio.io/port",
    "readiness.status.sidecar.istio.io/applicationPorts",
    "readiness.status.sidecar.istio.io/failureThreshold",
    "readiness.status.sidecar.istio.io/initialDelaySeconds",
    "readiness.status.sidecar.istio.io/periodSeconds",
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "traffic.sidecar.istio.io/excludeInterfaces",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "traffic.sidecar.istio.io/excludeOutboundPorts",
    "traffic.sidecar.istio.io/includeInboundPorts",
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
    "traffic.sidecar.istio.io/includeOutboundPorts",
    "traffic.sidecar.istio.io/kubevirtInterfaces",
    "prometheus.istio.io/merge-metrics", "proxy.istio.io/config", "proxy.istio.io/overrides",
    "inject.istio.io/templates", "istio.io/rev", "ambient.istio.io/redirection",
    "ambient.istio.io/bypass-inbound-capture", "sidecar.istio.io/proxyConfig",
)
_DEPRECATED_POD_NAMES = (
    "sidecar.istio.io/controlPlaneAuthPolicy", "sidecar.istio.io/discoveryAddress",
    "sidecar.istio.io/statsInclusionPrefixes", "sidecar.istio.io/statsInclusionRegexps",
    "sidecar.istio.io/statsInclusionSuffixes", "alpha.istio.io/identity", SIDECAR_INJECT,
)
_ANY_NAMES = (
    "galley.istio.io/analyze-suppress", "install.operator.istio.io/chart-owner",
    "install.operator.istio.io/owner-generation", "install.operator.istio.io/version",
    "gateway.istio.io/controller-version", "gateway.istio.io/name-override",
    "gateway.istio.io/service-account", "topology.istio.io/controlPlaneClusters",
    "networking.istio.io/traffic-distribution",
)

ANNOTATIONS: Mapping[str, AnnotationDef] = {
    **{name: AnnotationDef(_POD) for name in _POD_NAMES},
    **{name: AnnotationDef(_POD, deprecated=True) for name in _DEPRECATED_POD_NAMES},
    **{name: AnnotationDef((ANY,)) for name in _ANY_NAMES},
    "networking.istio.io/exportTo": AnnotationDef(("Service",)),
    "alpha.istio.io/kubernetes-serviceaccounts": AnnotationDef(("Service",), deprecated=True),
    "alpha.istio.io/canonical-serviceaccounts": AnnotationDef(("Service",), deprecated=True),
    "kubernetes.io/ingress.class": AnnotationDef(("Ingress",)),
    "istio.io/dry-run": AnnotationDef(("AuthorizationPolicy",)),
    "istio.io/autoRegistrationGroup": AnnotationDef(("WorkloadEntry",)),
    "istio.io/connectedAt": AnnotationDef(("WorkloadEntry",)),
    "istio.io/disconnectedAt": AnnotationDef(("WorkloadEntry",)),
    "istio.io/workloadController": AnnotationDef(("WorkloadEntry",)),
    "networking.istio.io/address-type": AnnotationDef(("Gateway",)),
    "networking.istio.io/service-type": AnnotationDef(("Gateway",)),
}
"""Istio's annotation table: name → kinds it applies to and whether it is deprecated."""

_EXTRA = {SIDECAR_INJECT: ' in favor of the "sidecar.istio.io/inject" label'}


# --- Value validation, as the sidecar injector validates annotations ------------------------

def _uint32(value: str) -> str | None:
    if not value.isdigit() or int(value) > 2**32 - 1:
        return f"failed parsing {value!r} as an unsigned 32-bit integer"
    return None


def _bool(value: str) -> str | None:
    if value.lower() not in ("true", "false", "1", "0", "t", "f"):
        return f"{value!r} is not a boolean"
    return None


def _port(value: str) -> str | None:
    if not value.strip().isdigit() or not 0 < int(value.strip()) <= 65535:
        return f"{value!r} is not a valid port"
    return None


def _port_list(value: str, *, wildcard: bool) -> str | None:
    if wildcard and value.strip() == "*":
        return None
    for part in (p.strip() for p in value.split(",")):
        if part and _port(part):
            return f"port list {value!r} contains an invalid port {part!r}"
    return None


def _cidr_list(value: str, *, wildcard: bool) -> str | None:
    if wildcard and value.strip() == "*":
        return None
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            return f"IP range list {value!r} contains an invalid CIDR {part!r}"
    return None


def _interception_mode(value: str) -> str | None:
    if value not in ("REDIRECT", "TPROXY", "NONE"):
        return f"interception mode {value!r} is not one of REDIRECT, TPROXY or NONE"
    return None


def _proxy_config(value: str) -> str | None:
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return "proxy config is not valid YAML or JSON"
    if parsed is not None and not isinstance(parsed, Mapping):
        return "proxy config must be a mapping of ProxyConfig fields"
    return None


VALIDATORS: Mapping[str, Callable[[str], str | None]] = {
    "sidecar.istio.io/interceptionMode": _interception_mode,
    "sidecar.istio.io/enableCoreDump": _bool,
    "sidecar.istio.io/rewriteAppHTTPProbers": _bool,
    "prometheus.istio.io/merge-metrics": _bool,
    "status.sidecar.istio.io/port": _port,
    "readiness.status.sidecar.istio.io/initialDelaySeconds": _uint32,
    "readiness.status.sidecar.istio.io/periodSeconds": _uint32,
    "readiness.status.sidecar.istio.io/failureThreshold": _uint32,
    "readiness.status.sidecar.istio.io/applicationPorts":
        lambda v: _port_list(v, wildcard=False),
    "traffic.sidecar.istio.io/includeOutboundIPRanges": lambda v: _cidr_list(v, wildcard=True),
    "traffic.sidecar.istio.io/excludeOutboundIPRanges": lambda v: _cidr_list(v, wildcard=False),
    "traffic.sidecar.istio.io/includeInboundPorts": lambda v: _port_list(v, wildcard=True),
    "traffic.sidecar.istio.io/excludeInboundPorts": lambda v: _port_list(v, wildcard=False),
    "traffic.sidecar.istio.io/includeOutboundPorts": lambda v: _port_list(v, wildcard=False),
    "traffic.sidecar.istio.io/excludeOutboundPorts": lambda v: _port_list(v, wildcard=False),
    "proxy.istio.io/config": _proxy_config,
}


def is_istio_annotation(key: str) -> bool:
    return key == "kubernetes.io/ingress.class" or key.split("/", 1)[0].endswith("istio.io")


class K8sAnalyzer:
    name = "annotations.K8sAnalyzer"
    description = (
        "Checks for misplaced and invalid Istio annotations in Kubernetes resources"
    )
    inputs: tuple[Collection, ...] = (NAMESPACE, SERVICE, POD, DEPLOYMENT)

    def analyze(self, ctx: Context) -> None:
        for collection in self.inputs:
            for resource in ctx.for_each(collection):
                self._check(ctx, resource)

    def _check(self, ctx: Context, resource: Resource) -> None:
        for key, value in resource.annotations.items():
            if not is_istio_annotation(key):
                continue
            where = f"metadata.annotations.{key}"
            known = ANNOTATIONS.get(key)
            if known is None:
                ctx.report(resource, UNKNOWN, key, field=where)
                continue
            if known.deprecated and not (key == SIDECAR_INJECT
                                         and SIDECAR_INJECT in resource.labels):
                ctx.report(resource, DEPRECATED, key, _EXTRA.get(key, ""), field=where)
            if ANY in known.kinds:
                continue
            if resource.kind not in known.kinds:
                ctx.report(resource, MISPLACED, key, ", ".join(known.kinds), field=where)
                continue
            validator = VALIDATORS.get(key)
            problem = validator(value) if validator is not None else None
            if problem:
                ctx.report(resource, INVALID, key, problem, field=where)
