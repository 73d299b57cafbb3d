"""`auth.AuthorizationPoliciesAnalyzer`: AuthorizationPolicies that apply to nothing.

A policy in the root namespace applies mesh-wide; with a selector it must select some meshed
pod anywhere (IST0127). Elsewhere, a selector-less policy needs a meshed pod in its namespace
and a policy with a selector a meshed pod it selects there (IST0127). A pod is meshed when it
has an `istio-proxy` container, opts in with `sidecar.istio.io/inject: "true"`, is redirected
to ambient (`ambient.istio.io/redirection: enabled`), or lives in a namespace with
`istio-injection=enabled`. Every `source.namespaces` / `notNamespaces` pattern (`*`, `prefix*`,
`*suffix`) must match a known Namespace (IST0101).
"""

from __future__ import annotations

from meshpilot.analysis.analyzers.common import (
    INJECTION_LABEL,
    SIDECAR_INJECT,
    mapping,
    mappings,
    proxy_image,
    selector_matches,
    selector_string,
    string_map,
    strings,
)
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import AUTHORIZATION_POLICY, NAMESPACE, POD, Collection, Resource

NO_WORKLOADS = message_type("NoMatchingWorkloadsFound")
NOT_FOUND = message_type("ReferencedResourceNotFound")
AMBIENT_REDIRECTION = "ambient.istio.io/redirection"


def pod_in_mesh(ctx: Context, pod: Resource) -> bool:
    if proxy_image(pod.spec):
        return True
    if pod.annotations.get(AMBIENT_REDIRECTION) == "enabled":
        return True
    if SIDECAR_INJECT in pod.annotations:
        return pod.annotations[SIDECAR_INJECT] == "true"
    namespace = ctx.find(NAMESPACE, "", pod.namespace)
    return namespace is not None and namespace.labels.get(INJECTION_LABEL) == "enabled"


def namespace_matches(namespace: str, pattern: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return namespace.endswith(pattern[1:])
    if pattern.endswith("*"):
        return namespace.startswith(pattern[:-1])
    return namespace.lower() == pattern.lower()


class AuthorizationPoliciesAnalyzer:
    name = "auth.AuthorizationPoliciesAnalyzer"
    description = "Checks the validity of authorization policies"
    inputs: tuple[Collection, ...] = (AUTHORIZATION_POLICY, NAMESPACE, POD)

    def analyze(self, ctx: Context) -> None:
        meshed: dict[str, list[dict[str, str]]] = {}
        for pod in ctx.for_each(POD):
            if pod_in_mesh(ctx, pod):
                meshed.setdefault(pod.namespace, []).append(dict(pod.labels))
        namespaces = [ns.name for ns in ctx.for_each(NAMESPACE)]
        for policy in ctx.for_each(AUTHORIZATION_POLICY):
            self._check_workloads(ctx, policy, meshed)
            self._check_namespaces(ctx, policy, namespaces)

    @staticmethod
    def _check_workloads(
        ctx: Context, policy: Resource, meshed: dict[str, list[dict[str, str]]]
    ) -> None:
        raw_selector = policy.spec.get("selector")
        selector = string_map(mapping(raw_selector).get("matchLabels"))
        if policy.namespace == ctx.mesh.root_namespace:
            candidates = [labels for pods in meshed.values() for labels in pods]
            if raw_selector is not None and not any(
                    selector_matches(selector, labels) for labels in candidates):
                ctx.report(policy, NO_WORKLOADS, selector_string(selector),
                           field="spec.selector")
            return
        pods = meshed.get(policy.namespace, [])
        if raw_selector is None:
            if not pods:
                ctx.report(policy, NO_WORKLOADS, "", field="metadata.name")
            return
        if not any(selector_matches(selector, labels) for labels in pods):
            ctx.report(policy, NO_WORKLOADS, selector_string(selector), field="spec.selector")

    @staticmethod
    def _check_namespaces(ctx: Context, policy: Resource, namespaces: list[str]) -> None:
        for rule_index, rule in mappings(policy.spec.get("rules")):
            for from_index, source_from in mappings(rule.get("from")):
                source = mapping(source_from.get("source"))
                for key in ("namespaces", "notNamespaces"):
                    for index, pattern in enumerate(strings(source.get(key))):
                        if not any(namespace_matches(ns, pattern) for ns in namespaces):
                            ctx.report(policy, NOT_FOUND, "namespace", pattern,
                                       field=f"spec.rules[{rule_index}].from[{from_index}]"
                                             f".source.{key}[{index}]")
