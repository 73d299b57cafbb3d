"""meshpilot's SMI analyzers: what would make a TrafficSplit or TrafficTarget fail to translate.

- `meshpilot.SMIReferenceAnalyzer`: a TrafficSplit's root `service` or a backend's service
  that no Service, ServiceEntry or registry defines (MP0007); an HTTPRouteGroup or TCPRoute
  named by a TrafficSplit's `matches` or a TrafficTarget's `rules` (`specs` in v1alpha1) that
  is not in the object's namespace (MP0008).
- `meshpilot.SMITrafficSplitWeightAnalyzer`: a TrafficSplit whose backends' weights sum to
  zero (MP0009); the server rejects it, as Istio rejects such a VirtualService.
"""

from __future__ import annotations

from meshpilot.analysis.analyzers.common import mappings, text
from meshpilot.analysis.analyzers.services import ServiceIndex
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import Collection, Resource
from meshpilot.config.foreign.smi import ACCESS_GROUP, SPECS_GROUP, SPLIT_GROUP, weight

SERVICE_NOT_FOUND = message_type("ReferencedServiceNotFound")
OBJECT_NOT_FOUND = message_type("ReferencedObjectNotFound")
WEIGHTS_ZERO = message_type("TrafficSplitWeightsZero")

TRAFFIC_SPLIT = Collection(SPLIT_GROUP, "TrafficSplit")
TRAFFIC_TARGET = Collection(ACCESS_GROUP, "TrafficTarget")
HTTP_ROUTE_GROUP = Collection(SPECS_GROUP, "HTTPRouteGroup")
SMI_TCP_ROUTE = Collection(SPECS_GROUP, "TCPRoute")
_ROUTES = {"HTTPRouteGroup": HTTP_ROUTE_GROUP, "TCPRoute": SMI_TCP_ROUTE}


class SMIReferenceAnalyzer:
    name = "meshpilot.SMIReferenceAnalyzer"
    description = ("Check that SMI TrafficSplits and TrafficTargets reference services and "
                   "routes that exist")
    inputs: tuple[Collection, ...] = (TRAFFIC_SPLIT, TRAFFIC_TARGET, HTTP_ROUTE_GROUP,
                                      SMI_TCP_ROUTE)

    def analyze(self, ctx: Context) -> None:
        services = ServiceIndex(ctx)
        for split in ctx.for_each(TRAFFIC_SPLIT):
            root = text(split.spec.get("service"))
            if root and services.lookup(split.namespace, root) is None:
                ctx.report(split, SERVICE_NOT_FOUND, "spec.service", root, field="spec.service")
            for index, backend in mappings(split.spec.get("backends")):
                where = f"spec.backends[{index}].service"
                name = text(backend.get("service"))
                if name and services.lookup(split.namespace, name) is None:
                    ctx.report(split, SERVICE_NOT_FOUND, where, name, field=where)
            _check_routes(ctx, split, "spec.matches")
        for target in ctx.for_each(TRAFFIC_TARGET):
            _check_routes(ctx, target, "spec.rules" if "rules" in target.spec else "spec.specs")


def _check_routes(ctx: Context, resource: Resource, field: str) -> None:
    for index, ref in mappings(resource.spec.get(field.removeprefix("spec."))):
        kind, name = text(ref.get("kind")), text(ref.get("name"))
        collection = _ROUTES.get(kind)
        if collection is not None and name and not ctx.exists(collection, resource.namespace,
                                                              name):
            where = f"{field}[{index}]"
            ctx.report(resource, OBJECT_NOT_FOUND, where, kind, f"{resource.namespace}/{name}",
                       field=where)


class SMITrafficSplitWeightAnalyzer:
    name = "meshpilot.SMITrafficSplitWeightAnalyzer"
    description = "Check that a TrafficSplit gives some backend a positive weight"
    inputs: tuple[Collection, ...] = (TRAFFIC_SPLIT,)

    def analyze(self, ctx: Context) -> None:
        for split in ctx.for_each(TRAFFIC_SPLIT):
            backends = [b for _, b in mappings(split.spec.get("backends"))]
            weights = [weight(b.get("weight", 0)) for b in backends]
            if backends and all(w is not None for w in weights) and sum(
                    w for w in weights if w is not None) == 0:
                ctx.report(split, WEIGHTS_ZERO, len(backends), field="spec.backends")
