"""Analyzers of `Telemetry` resources (telemetry.istio.io).

- `telemetry.ProviderAnalyzer`: an access-logging entry without providers is ignored when the
  mesh config names no default access-logging provider (IST0157).
- `telemetry.SelectorAnalyzer`: a workload selector must select a pod in the Telemetry's
  namespace (IST0101), and a pod selected by several Telemetries gets undefined behaviour
  (IST0159 on each).
- `telemetry.DefaultSelectorAnalyzer`: several selector-less Telemetries in one namespace
  (IST0160 on each).
- `telemetry.LightstepAnalyzer`: tracing through a mesh provider of the deprecated Lightstep
  type (IST0002).
"""

from __future__ import annotations

from meshpilot.analysis.analyzers.common import (
    mapping,
    mappings,
    selector_matches,
    selector_string,
    string_map,
    text,
)
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import POD, TELEMETRY, Collection, Resource

INVALID_PROVIDER = message_type("InvalidTelemetryProvider")
NOT_FOUND = message_type("ReferencedResourceNotFound")
CONFLICTING_SELECTORS = message_type("ConflictingTelemetryWorkloadSelectors")
MULTIPLE_WITHOUT_SELECTOR = message_type("MultipleTelemetriesWithoutWorkloadSelectors")
DEPRECATED = message_type("Deprecated")


def telemetry_selector(telemetry: Resource) -> dict[str, str]:
    return string_map(mapping(telemetry.spec.get("selector")).get("matchLabels"))


class ProviderAnalyzer:
    name = "telemetry.ProviderAnalyzer"
    description = "Validates that providers in telemetry resource is valid"
    inputs: tuple[Collection, ...] = (TELEMETRY,)

    def analyze(self, ctx: Context) -> None:
        defaults = mapping(ctx.mesh.data.get("defaultProviders"))
        if defaults.get("accessLogging"):
            return
        for telemetry in ctx.for_each(TELEMETRY):
            for index, logging in mappings(telemetry.spec.get("accessLogging")):
                if not logging.get("providers"):
                    ctx.report(telemetry, INVALID_PROVIDER, telemetry.name, telemetry.namespace,
                               field=f"spec.accessLogging[{index}]")
                    break


class SelectorAnalyzer:
    name = "telemetry.SelectorAnalyzer"
    description = (
        "Validates that telemetries that define a selector match a pod, and that multiple "
        "telemetries don't select the same pod"
    )
    inputs: tuple[Collection, ...] = (TELEMETRY, POD)

    def analyze(self, ctx: Context) -> None:
        selected: dict[tuple[str, str], list[Resource]] = {}
        for telemetry in ctx.for_each(TELEMETRY):
            selector = telemetry_selector(telemetry)
            if not selector:
                continue
            pods = [pod for pod in ctx.for_each(POD)
                    if pod.namespace == telemetry.namespace
                    and selector_matches(selector, pod.labels)]
            if not pods:
                ctx.report(telemetry, NOT_FOUND, "selector", selector_string(selector),
                           field="spec.selector")
            for pod in pods:
                selected.setdefault((pod.namespace, pod.name), []).append(telemetry)
        for (namespace, pod_name), telemetries in selected.items():
            if len(telemetries) < 2:
                continue
            names = [t.full_name for t in telemetries]
            for telemetry in telemetries:
                ctx.report(telemetry, CONFLICTING_SELECTORS, names, namespace, pod_name,
                           field="spec.selector")


class DefaultSelectorAnalyzer:
    name = "telemetry.DefaultSelectorAnalyzer"
    description = (
        "Validates that there aren't multiple telemetry resources that have no selector"
    )
    inputs: tuple[Collection, ...] = (TELEMETRY,)

    def analyze(self, ctx: Context) -> None:
        by_namespace: dict[str, list[Resource]] = {}
        for telemetry in ctx.for_each(TELEMETRY):
            if not telemetry_selector(telemetry) and not _has_target(telemetry):
                by_namespace.setdefault(telemetry.namespace, []).append(telemetry)
        for namespace, telemetries in by_namespace.items():
            if len(telemetries) < 2:
                continue
            names = [t.full_name for t in telemetries]
            for telemetry in telemetries:
                ctx.report(telemetry, MULTIPLE_WITHOUT_SELECTOR, names, namespace)


def _has_target(telemetry: Resource) -> bool:
    return bool(telemetry.spec.get("targetRef") or telemetry.spec.get("targetRefs"))


class LightstepAnalyzer:
    name = "telemetry.LightstepAnalyzer"
    description = "Checks for the deprecated Lightstep provider"
    inputs: tuple[Collection, ...] = (TELEMETRY,)

    def analyze(self, ctx: Context) -> None:
        lightstep = {
            text(provider.get("name")) for provider in ctx.mesh.extension_providers
            if provider.get("lightstep") is not None
        }
        if not lightstep:
            return
        for telemetry in ctx.for_each(TELEMETRY):
            for index, tracing in mappings(telemetry.spec.get("tracing")):
                names = [text(p.get("name")) for _, p in mappings(tracing.get("providers"))]
                if any(name in lightstep for name in names):
                    ctx.report(telemetry, DEPRECATED,
                               "The Lightstep provider is deprecated; use OpenTelemetry",
                               field=f"spec.tracing[{index}].providers")
                    break
