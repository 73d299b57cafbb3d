"""`meshpilot.GatewayAPIReferenceAnalyzer`: Gateway API routes whose references lead nowhere.

An HTTPRoute, GRPCRoute or TCPRoute `backendRef` (or a `parentRef` of kind Service, GAMMA) to
a service that no Service, ServiceEntry or registry defines is MP0007; a `parentRef` to a
Gateway that is not there is MP0008 (the server then leaves the route out for that parent).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshpilot.analysis.analyzers.common import mappings, text
from meshpilot.analysis.analyzers.services import ServiceIndex
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import GATEWAY_API, K8S_GATEWAY, Collection, Resource

SERVICE_NOT_FOUND = message_type("ReferencedServiceNotFound")
OBJECT_NOT_FOUND = message_type("ReferencedObjectNotFound")
ROUTES = tuple(Collection(GATEWAY_API, kind) for kind in ("HTTPRoute", "GRPCRoute", "TCPRoute"))


class GatewayAPIReferenceAnalyzer:
    name = "meshpilot.GatewayAPIReferenceAnalyzer"
    description = "Check that Gateway API routes reference parents and backends that exist"
    inputs: tuple[Collection, ...] = (*ROUTES, K8S_GATEWAY)

    def analyze(self, ctx: Context) -> None:
        services = ServiceIndex(ctx)
        for collection in ROUTES:
            for route in ctx.for_each(collection):
                for index, parent in mappings(route.spec.get("parentRefs")):
                    _parent(ctx, services, route, index, parent)
                for r, rule in mappings(route.spec.get("rules")):
                    for b, ref in mappings(rule.get("backendRefs")):
                        if text(ref.get("kind")) in ("", "Service"):
                            _service(ctx, services, route, f"spec.rules[{r}].backendRefs[{b}]",
                                     ref)


def _parent(ctx: Context, services: ServiceIndex, route: Resource, index: int,
            ref: Mapping[str, Any]) -> None:
    where = f"spec.parentRefs[{index}]"
    kind = text(ref.get("kind")) or "Gateway"
    if kind == "Service":
        _service(ctx, services, route, where, ref)
    elif kind == "Gateway":
        namespace = text(ref.get("namespace")) or route.namespace
        name = text(ref.get("name"))
        if name and not ctx.exists(K8S_GATEWAY, namespace, name):
            ctx.report(route, OBJECT_NOT_FOUND, where, "Gateway", f"{namespace}/{name}",
                       field=where)


def _service(ctx: Context, services: ServiceIndex, route: Resource, where: str,
             ref: Mapping[str, Any]) -> None:
    namespace = text(ref.get("namespace")) or route.namespace
    name = text(ref.get("name"))
    if name and services.lookup(namespace, name) is None:
        ctx.report(route, SERVICE_NOT_FOUND, where, name, field=where)
