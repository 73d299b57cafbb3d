"""`k8sgateway.SelectorAnalyzer`: policies that select Gateway API gateway pods by label.

Pods that Istio deploys for a Gateway API Gateway carry `gateway.networking.k8s.io/gateway-name`.
Istio attaches policies to such gateways through `targetRef(s)`, not through a workload
selector, so a RequestAuthentication, AuthorizationPolicy, WasmPlugin or Telemetry whose
selector matches such a pod and that has no target reference has no effect there (IST0166).
"""

from __future__ import annotations

from meshpilot.analysis.analyzers.common import mapping, selector_matches, string_map
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import (
    AUTHORIZATION_POLICY,
    POD,
    REQUEST_AUTHENTICATION,
    TELEMETRY,
    WASM_PLUGIN,
    Collection,
)

INEFFECTIVE_SELECTOR = message_type("IneffectiveSelector")
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
POLICIES = (REQUEST_AUTHENTICATION, AUTHORIZATION_POLICY, WASM_PLUGIN, TELEMETRY)


class SelectorAnalyzer:
    name = "k8sgateway.SelectorAnalyzer"
    description = "Check selector in policies which will be ineffective on Kubernetes Gateways"
    inputs: tuple[Collection, ...] = (*POLICIES, POD)

    def analyze(self, ctx: Context) -> None:
        gateway_pods = [pod for pod in ctx.for_each(POD) if GATEWAY_NAME_LABEL in pod.labels]
        for collection in POLICIES:
            for policy in ctx.for_each(collection):
                if policy.spec.get("targetRef") or policy.spec.get("targetRefs"):
                    continue
                selector = string_map(mapping(policy.spec.get("selector")).get("matchLabels"))
                if not selector:
                    continue
                for pod in gateway_pods:
                    if pod.namespace == policy.namespace and selector_matches(selector, pod.labels):
                        ctx.report(policy, INEFFECTIVE_SELECTOR, pod.labels[GATEWAY_NAME_LABEL],
                                   field="spec.selector")
                        break
