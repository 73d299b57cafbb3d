"""Analyzers of sidecar injection: which namespaces inject, and whether their pods got it.

A namespace asks for sidecars with `istio-injection=enabled` or an `istio.io/rev` label, and
for ambient mode with `istio.io/dataplane-mode=ambient`; `istio-injection` with any other
value deliberately opts out and silences the checks.

- `injection.Analyzer`: a namespace with none of these labels is reported (IST0102, or
  IST0148 when the injector enables namespaces by default), one with more than one kind of
  label is ambiguous (IST0123), and a pod in an injected namespace without an `istio-proxy`
  container is missing its sidecar (IST0103) unless it opts out or uses the host network.
- `injection.ImageAnalyzer`: in injected namespaces, pods whose `istio-proxy` image differs
  from the injector ConfigMap's (`istio-sidecar-injector[-<revision>]`, `values` JSON) are
  listed per namespace (IST0158). The mesh's `defaultConfig.image.imageType` (e.g.
  `distroless`) adds its suffix to the tag; the plain image is accepted too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from meshpilot.analysis.analyzers.common import (
    DATAPLANE_MODE_LABEL,
    INJECTION_LABEL,
    ISTIO_PROXY,
    REVISION_LABEL,
    SIDECAR_INJECT,
    SYSTEM_NAMESPACES,
    containers,
    mapping,
    proxy_image,
    text,
)
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import CONFIG_MAP, NAMESPACE, POD, Collection, Resource

NOT_INJECTED = message_type("NamespaceNotInjected")
ENABLED_BY_DEFAULT = message_type("NamespaceInjectionEnabledByDefault")
MULTIPLE_LABELS = message_type("NamespaceMultipleInjectionLabels")
MISSING_PROXY = message_type("PodMissingProxy")
IMAGE_MISMATCH = message_type("PodsIstioProxyImageMismatchInNamespace")

INJECTOR_CONFIG_MAP = "istio-sidecar-injector"
DEFAULT_REVISION = "default"


def injector_config_map_name(revision: str) -> str:
    if not revision or revision == DEFAULT_REVISION:
        return INJECTOR_CONFIG_MAP
    return f"{INJECTOR_CONFIG_MAP}-{revision}"


def injection_labels(namespace: Resource) -> list[str] | None:
    """The injection labels a namespace sets, or None when it explicitly opts out."""
    labels = namespace.labels
    legacy = labels.get(INJECTION_LABEL)
    if legacy is not None and legacy != "enabled":
        return None
    found = []
    if legacy == "enabled":
        found.append(INJECTION_LABEL)
    if REVISION_LABEL in labels:
        found.append(REVISION_LABEL)
    if labels.get(DATAPLANE_MODE_LABEL) == "ambient":
        found.append(DATAPLANE_MODE_LABEL)
    return found


def injector_values(config_map: Resource) -> Mapping[str, Any]:
    try:
        values = json.loads(text(mapping(config_map.body.get("data")).get("values")))
    except ValueError:
        return {}
    return mapping(values)


def pod_opts_out(pod: Resource) -> bool:
    value = pod.labels.get(SIDECAR_INJECT, pod.annotations.get(SIDECAR_INJECT, ""))
    return value.lower() == "false"


class Analyzer:
    name = "injection.Analyzer"
    description = "Checks conditions related to Istio sidecar injection"
    inputs: tuple[Collection, ...] = (NAMESPACE, POD, CONFIG_MAP)

    def analyze(self, ctx: Context) -> None:
        injected: set[str] = set()
        for namespace in ctx.for_each(NAMESPACE):
            if namespace.name in SYSTEM_NAMESPACES or namespace.name == ctx.mesh.root_namespace:
                continue
            labels = injection_labels(namespace)
            if labels is None:
                continue
            if len(labels) > 1:
                ctx.report(namespace, MULTIPLE_LABELS, labels, field="metadata.name")
            elif not labels:
                revision = namespace.labels.get(REVISION_LABEL, "")
                if self._enabled_by_default(ctx, revision):
                    ctx.report(namespace, ENABLED_BY_DEFAULT)
                else:
                    ctx.report(namespace, NOT_INJECTED, namespace.name, namespace.name,
                               field="metadata.name")
            elif labels != [DATAPLANE_MODE_LABEL]:
                injected.add(namespace.name)
        for pod in ctx.for_each(POD):
            if pod.namespace not in injected or pod_opts_out(pod):
                continue
            if pod.spec.get("hostNetwork") is True or proxy_image(pod.spec):
                continue
            if any(c.get("name") == ISTIO_PROXY for c in containers(pod.spec)):
                continue
            ctx.report(pod, MISSING_PROXY, pod.full_name)

    def _enabled_by_default(self, ctx: Context, revision: str) -> bool:
        wanted = injector_config_map_name(revision)
        for config_map in ctx.for_each(CONFIG_MAP):
            if config_map.name == wanted:
                webhook = mapping(injector_values(config_map).get("sidecarInjectorWebhook"))
                return webhook.get("enableNamespacesByDefault") is True
        return False


class ImageAnalyzer:
    name = "injection.ImageAnalyzer"
    description = (
        "Checks the image of auto-injection configured with the running proxies on pods"
    )
    inputs: tuple[Collection, ...] = (NAMESPACE, POD, CONFIG_MAP)

    def analyze(self, ctx: Context) -> None:
        images = {
            config_map.name: injector_image(config_map)
            for config_map in ctx.for_each(CONFIG_MAP)
            if config_map.name.startswith(INJECTOR_CONFIG_MAP)
        }
        if not images:
            return
        revisions: dict[str, str] = {}
        namespaces: dict[str, Resource] = {}
        for namespace in ctx.for_each(NAMESPACE):
            namespaces[namespace.name] = namespace
            if REVISION_LABEL in namespace.labels:
                revisions[namespace.name] = namespace.labels[REVISION_LABEL]
            elif namespace.labels.get(INJECTION_LABEL) == "enabled":
                revisions[namespace.name] = DEFAULT_REVISION
        variant = text(mapping(ctx.mesh.default_config.get("image")).get("imageType"))
        mismatched: dict[str, list[str]] = {}
        for pod in ctx.for_each(POD):
            if pod.namespace not in revisions:
                continue
            if pod.annotations.get("sidecar.istio.io/proxyImage"):
                continue  # a custom proxy image always overrides the injector's
            expected = images.get(injector_config_map_name(revisions[pod.namespace]))
            actual = proxy_image(pod.spec)
            if not expected or not actual:
                continue
            accepted = {expected}
            if variant and variant != "default":
                accepted.add(f"{expected}-{variant}")
            if actual not in accepted:
                mismatched.setdefault(pod.namespace, []).append(pod.name)
        for namespace_name, pods in mismatched.items():
            ctx.report(namespaces[namespace_name], IMAGE_MISMATCH, pods)


def injector_image(config_map: Resource) -> str:
    """The proxy image the injector would use: `global.proxy.image`, or hub/image:tag."""
    global_values = mapping(injector_values(config_map).get("global"))
    image = text(mapping(global_values.get("proxy")).get("image"))
    if "/" in image:
        return image
    if not image:
        return ""
    return f"{text(global_values.get('hub'))}/{image}:{text(global_values.get('tag'))}"
