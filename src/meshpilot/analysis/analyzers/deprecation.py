"""`deprecation.DeprecationAnalyzer`: deprecated Istio fields and removed resource types.

Istio has no machine-readable list of deprecated fields, so, like Istio, this checks a
hand-kept list: `HTTPRoute.fault.delay.percent` (replaced by `percentage`), a Sidecar's
`outboundTrafficPolicy.egressProxy` (ignored), and CustomResourceDefinitions for the
`rbac.istio.io` kinds that Istio removed.
"""

from __future__ import annotations

from meshpilot.analysis.analyzers.common import mapping, mappings, number, text
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import SIDECAR, VIRTUAL_SERVICE, Collection

DEPRECATED = message_type("Deprecated")

CRD = Collection("apiextensions.k8s.io", "CustomResourceDefinition")
REMOVED_CRDS = frozenset({
    ("rbac.istio.io", "ClusterRbacConfig"), ("rbac.istio.io", "RbacConfig"),
    ("rbac.istio.io", "ServiceRole"), ("rbac.istio.io", "ServiceRoleBinding"),
})


class DeprecationAnalyzer:
    name = "deprecation.DeprecationAnalyzer"
    description = "Checks for deprecated Istio types and fields"
    inputs: tuple[Collection, ...] = (VIRTUAL_SERVICE, SIDECAR, CRD)

    def analyze(self, ctx: Context) -> None:
        for vs in ctx.for_each(VIRTUAL_SERVICE):
            for index, route in mappings(vs.spec.get("http")):
                delay = mapping(mapping(route.get("fault")).get("delay"))
                percent = number(delay.get("percent"))
                if percent is not None and percent > 0:
                    ctx.report(vs, DEPRECATED, "HTTPRoute.fault.delay.percent is deprecated; "
                               "use HTTPRoute.fault.delay.percentage",
                               field=f"spec.http[{index}].fault.delay.percent")
        for sidecar in ctx.for_each(SIDECAR):
            policy = mapping(sidecar.spec.get("outboundTrafficPolicy"))
            if policy.get("egressProxy") is not None:
                ctx.report(sidecar, DEPRECATED, "OutboundTrafficPolicy.EgressProxy ignored",
                           field="spec.outboundTrafficPolicy.egressProxy")
        for crd in ctx.for_each(CRD):
            group = text(crd.spec.get("group"))
            kind = text(mapping(crd.spec.get("names")).get("kind"))
            if (group, kind) in REMOVED_CRDS:
                ctx.report(crd, DEPRECATED, f"Custom resource type {group} {kind} is removed")
