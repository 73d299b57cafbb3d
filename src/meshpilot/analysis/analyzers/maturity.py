"""`annotations.AlphaAnalyzer`: Istio annotations of alpha-phase features (IST0136).

Namespaces, Services, Pods and Deployments are checked; every Istio annotation whose feature
status is Alpha in Istio's annotation table (istio/api `annotation/annotations.yaml`) is
reported, one message per annotation, at its line. Istio sets some itself, so those are not
the user's doing and are skipped: `sidecar.istio.io/status` always, and on pods set up by the
CNI plugin (no `istio-init` init container) the traffic-capture annotations the plugin writes.

As in Istio, this analyzer is not among the ones run by default (it is noisy on injected
pods); ask for it with `--analyzer annotations.AlphaAnalyzer`.
"""

from __future__ import annotations

from meshpilot.analysis.analyzers.common import mappings, pod_template
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import DEPLOYMENT, NAMESPACE, POD, SERVICE, Collection, Resource

ALPHA = message_type("AlphaAnnotation")

ALPHA_ANNOTATIONS = frozenset({
    "prometheus.istio.io/merge-metrics",
    "alpha.istio.io/kubernetes-serviceaccounts", "alpha.istio.io/canonical-serviceaccounts",
    "alpha.istio.io/identity",
    "networking.istio.io/exportTo",
    "sidecar.istio.io/status", "sidecar.istio.io/rewriteAppHTTPProbers",
    "sidecar.istio.io/discoveryAddress", "sidecar.istio.io/proxyImage",
    "sidecar.istio.io/proxyImageType", "sidecar.istio.io/proxyCPU",
    "sidecar.istio.io/proxyCPULimit", "sidecar.istio.io/proxyMemory",
    "sidecar.istio.io/proxyMemoryLimit", "sidecar.istio.io/interceptionMode",
    "sidecar.istio.io/bootstrapOverride", "sidecar.istio.io/statsInclusionPrefixes",
    "sidecar.istio.io/statsInclusionSuffixes", "sidecar.istio.io/statsInclusionRegexps",
    "sidecar.istio.io/statsHistogramBuckets", "sidecar.istio.io/statsFlushInterval",
    "sidecar.istio.io/userVolume", "sidecar.istio.io/userVolumeMount",
    "sidecar.istio.io/enableCoreDump", "sidecar.istio.io/logLevel",
    "sidecar.istio.io/componentLogLevel", "sidecar.istio.io/agentLogLevel",
    "sidecar.istio.io/extraStatTags",
    "status.sidecar.istio.io/port",
    "readiness.status.sidecar.istio.io/initialDelaySeconds",
    "readiness.status.sidecar.istio.io/periodSeconds",
    "readiness.status.sidecar.istio.io/failureThreshold",
    "readiness.status.sidecar.istio.io/applicationPorts",
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "traffic.sidecar.istio.io/includeInboundPorts",
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "traffic.sidecar.istio.io/includeOutboundPorts",
    "traffic.sidecar.istio.io/excludeOutboundPorts",
    "traffic.sidecar.istio.io/excludeInterfaces",
    "traffic.sidecar.istio.io/kubevirtInterfaces",
    "install.operator.istio.io/chart-owner", "install.operator.istio.io/owner-generation",
    "install.operator.istio.io/version",
    "galley.istio.io/analyze-suppress",
    "istio.io/dry-run",
    "proxy.istio.io/overrides",
    "inject.istio.io/templates",
    "istio.io/autoRegistrationGroup", "istio.io/workloadController",
    "istio.io/connectedAt", "istio.io/disconnectedAt",
})
"""Annotations whose feature status is Alpha in Istio's table."""

INJECTOR_SET = "sidecar.istio.io/status"
CNI_SET = frozenset({
    "sidecar.istio.io/interceptionMode",
    "traffic.sidecar.istio.io/includeInboundPorts",
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
})
"""Written by the CNI plugin on the pods it sets up."""
ISTIO_INIT = "istio-init"


def is_istio_annotation(key: str) -> bool:
    return key == "kubernetes.io/ingress.class" or key.split("/", 1)[0].endswith("istio.io")


def cni_enabled(pod: Resource) -> bool:
    """No `istio-init` init container: traffic capture was set up by the CNI plugin."""
    _, spec = pod_template(pod)
    return not any(name == ISTIO_INIT for _, c in mappings(spec.get("initContainers"))
                   if (name := c.get("name")))


class AlphaAnalyzer:
    name = "annotations.AlphaAnalyzer"
    description = "Checks for alpha Istio annotations in Kubernetes resources"
    inputs: tuple[Collection, ...] = (NAMESPACE, SERVICE, POD, DEPLOYMENT)

    def analyze(self, ctx: Context) -> None:
        for collection in self.inputs:
            for resource in ctx.for_each(collection):
                self._check(ctx, resource)

    @staticmethod
    def _check(ctx: Context, resource: Resource) -> None:
        skip_cni = resource.collection == POD and cni_enabled(resource)
        for key in resource.annotations:
            if not is_istio_annotation(key) or key not in ALPHA_ANNOTATIONS:
                continue
            if key == INJECTOR_SET or (skip_cni and key in CNI_SET):
                continue
            ctx.report(resource, ALPHA, key, field=f"metadata.annotations.{key}")
