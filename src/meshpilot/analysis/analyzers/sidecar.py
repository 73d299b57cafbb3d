"""`sidecar.SelectorAnalyzer` (and `sidecar.DefaultSelectorAnalyzer`): which Sidecar applies
to which workload must be unambiguous.

A proxy gets exactly one Sidecar: the one whose `workloadSelector` selects it, else the one of
its namespace without a selector. Istio leaves the choice undefined when several qualify, so:

- a Sidecar whose selector selects no workload of its namespace is reported (IST0101, the
  selector as Kubernetes prints it);
- a workload selected by several Sidecars gets IST0110 on each of them, naming them all;
- several Sidecars without a selector (an empty `labels` counts as none) in one namespace get
  IST0111 on each.

Workloads are Pods, as in Istio, and also WorkloadEntries (their own labels and `spec.labels`):
meshpilot's proxies are mostly WorkloadEntry workloads, and a Sidecar selecting one selects a
real proxy. A Sidecar has no effect on ambient workloads: a selected pod annotated
`ambient.istio.io/redirection: enabled`, or a selector-less Sidecar in a namespace labelled
`istio.io/dataplane-mode: ambient` that does not also ask for sidecar injection, is reported
as IneffectivePolicy (IST0167) instead, once per Sidecar.

Istio's newer releases merged the default-selector check into `sidecar.SelectorAnalyzer`;
`sidecar.DefaultSelectorAnalyzer` (the older name, IST0111 alone, without the ambient rule) is
kept selectable with `--analyzer` but not run by default, so nothing is reported twice.
"""

from __future__ import annotations

from meshpilot.analysis.analyzers.common import (
    INJECTION_LABEL,
    REVISION_LABEL,
    mapping,
    selector_matches,
    selector_string,
    string_map,
)
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import (
    NAMESPACE,
    POD,
    SIDECAR,
    WORKLOAD_ENTRY,
    Collection,
    Resource,
)

NOT_FOUND = message_type("ReferencedResourceNotFound")
CONFLICTING = message_type("ConflictingSidecarWorkloadSelectors")
MULTIPLE_DEFAULTS = message_type("MultipleSidecarsWithoutWorkloadSelectors")
INEFFECTIVE = message_type("IneffectivePolicy")

AMBIENT_REDIRECTION = "ambient.istio.io/redirection"
DATAPLANE_MODE = "istio.io/dataplane-mode"


def sidecar_selector(sidecar: Resource) -> dict[str, str]:
    return string_map(mapping(sidecar.spec.get("workloadSelector")).get("labels"))


def workload_labels(workload: Resource) -> dict[str, str]:
    if workload.collection == WORKLOAD_ENTRY:
        return {**workload.labels, **string_map(workload.spec.get("labels"))}
    return dict(workload.labels)


def pod_in_ambient(workload: Resource) -> bool:
    return workload.annotations.get(AMBIENT_REDIRECTION) == "enabled"


def namespace_in_ambient(namespace: Resource | None) -> bool:
    """Ambient by label, unless the namespace also asks for sidecar injection."""
    if namespace is None:
        return False
    labels = namespace.labels
    if labels.get(DATAPLANE_MODE) != "ambient":
        return False
    return labels.get(INJECTION_LABEL) != "enabled" and REVISION_LABEL not in labels


def _names(sidecars: list[Resource]) -> list[str]:
    return [s.name for s in sidecars]


class SelectorAnalyzer:
    name = "sidecar.SelectorAnalyzer"
    description = (
        "Validates that sidecars that define a workload selector match at least one pod, and "
        "that there aren't multiple sidecar resources that select overlapping pods"
    )
    inputs: tuple[Collection, ...] = (SIDECAR, POD, NAMESPACE, WORKLOAD_ENTRY)

    def analyze(self, ctx: Context) -> None:
        workloads = [*ctx.for_each(POD), *ctx.for_each(WORKLOAD_ENTRY)]
        selected: dict[tuple[Collection, str, str], list[Resource]] = {}
        by_workload: dict[tuple[Collection, str, str], Resource] = {}
        defaults: dict[str, list[Resource]] = {}
        for sidecar in ctx.for_each(SIDECAR):
            selector = sidecar_selector(sidecar)
            if not selector:
                defaults.setdefault(sidecar.namespace, []).append(sidecar)
                continue
            found = False
            for workload in workloads:
                if workload.namespace == sidecar.namespace \
                        and selector_matches(selector, workload_labels(workload)):
                    found = True
                    key = (workload.collection, workload.namespace, workload.name)
                    selected.setdefault(key, []).append(sidecar)
                    by_workload[key] = workload
            if not found:
                ctx.report(sidecar, NOT_FOUND, "selector", selector_string(selector),
                           field="spec.workloadSelector.labels")
        reported: set[str] = set()
        for key, sidecars in selected.items():
            workload = by_workload[key]
            ambient = pod_in_ambient(workload)
            if len(sidecars) == 1 and not ambient:
                continue
            for sidecar in sidecars:
                if ambient:
                    if sidecar.full_name not in reported:
                        ctx.report(sidecar, INEFFECTIVE, "selected workload is in ambient "
                                   "mode, the policy has no impact")
                        reported.add(sidecar.full_name)
                    continue
                ctx.report(sidecar, CONFLICTING, _names(sidecars), workload.namespace,
                           workload.name, field="metadata.name")
        for namespace, sidecars in defaults.items():
            if namespace_in_ambient(ctx.find(NAMESPACE, "", namespace)):
                for sidecar in sidecars:
                    if sidecar.full_name not in reported:
                        ctx.report(sidecar, INEFFECTIVE,
                                   "namespace is in ambient mode, the policy has no impact")
                        reported.add(sidecar.full_name)
                continue
            _report_defaults(ctx, namespace, sidecars)


class DefaultSelectorAnalyzer:
    name = "sidecar.DefaultSelectorAnalyzer"
    description = "Validates that there aren't multiple sidecar resources that have no selector"
    inputs: tuple[Collection, ...] = (SIDECAR,)

    def analyze(self, ctx: Context) -> None:
        defaults: dict[str, list[Resource]] = {}
        for sidecar in ctx.for_each(SIDECAR):
            if sidecar.spec.get("workloadSelector") is None:
                defaults.setdefault(sidecar.namespace, []).append(sidecar)
        for namespace, sidecars in defaults.items():
            _report_defaults(ctx, namespace, sidecars)


def _report_defaults(ctx: Context, namespace: str, sidecars: list[Resource]) -> None:
    if len(sidecars) < 2:
        return
    for sidecar in sidecars:
        ctx.report(sidecar, MULTIPLE_DEFAULTS, _names(sidecars), namespace)
