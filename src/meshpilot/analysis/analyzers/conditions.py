"""`conditions.ConditionAnalyzer`: negative status conditions that controllers wrote back.

Istio and Gateway API controllers record problems in `status.conditions` (for routes, in
`status.parents[].conditions`). Conditions of the types each kind documents with status
`False` are reported (IST0171): `istio.io/WaypointBound` on Services and ServiceEntries,
`ZtunnelAccepted`/`WaypointAccepted` on AuthorizationPolicies (plus an accepted-but
`PartiallyInvalid` WaypointAccepted), and `Accepted`/`Programmed`/`ResolvedRefs` on Gateway API
Gateways, HTTPRoutes and GRPCRoutes. Other tools' conditions are left alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from meshpilot.analysis.analyzers.common import mapping, mappings, text
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import (
    AUTHORIZATION_POLICY,
    GATEWAY_API,
    K8S_GATEWAY,
    K8S_HTTP_ROUTE,
    SERVICE,
    SERVICE_ENTRY,
    Collection,
    Resource,
)

NEGATIVE_CONDITION = message_type("NegativeConditionStatus")
K8S_GRPC_ROUTE = Collection(GATEWAY_API, "GRPCRoute")
_GATEWAY_API_TYPES = frozenset({"Accepted", "Programmed", "ResolvedRefs"})

NEGATIVE_TYPES: Mapping[Collection, frozenset[str]] = {
    SERVICE: frozenset({"istio.io/WaypointBound"}),
    SERVICE_ENTRY: frozenset({"istio.io/WaypointBound"}),
    AUTHORIZATION_POLICY: frozenset({"ZtunnelAccepted", "WaypointAccepted"}),
    K8S_GATEWAY: _GATEWAY_API_TYPES,
    K8S_HTTP_ROUTE: _GATEWAY_API_TYPES,
    K8S_GRPC_ROUTE: _GATEWAY_API_TYPES,
}


def conditions(resource: Resource) -> Iterator[Mapping[str, Any]]:
    status = mapping(resource.body.get("status"))
    for _, condition in mappings(status.get("conditions")):
        yield condition
    for _, parent in mappings(status.get("parents")):
        for _, condition in mappings(parent.get("conditions")):
            yield condition


class ConditionAnalyzer:
    name = "conditions.ConditionAnalyzer"
    description = "Checks for negative status conditions on resources"
    inputs: tuple[Collection, ...] = tuple(NEGATIVE_TYPES)

    def analyze(self, ctx: Context) -> None:
        for collection, types in NEGATIVE_TYPES.items():
            for resource in ctx.for_each(collection):
                for condition in conditions(resource):
                    kind, status = text(condition.get("type")), text(condition.get("status"))
                    reason = text(condition.get("reason"))
                    negative = kind in types and status == "False"
                    partially_invalid = (collection == AUTHORIZATION_POLICY
                                         and kind == "WaypointAccepted"
                                         and reason == "PartiallyInvalid")
                    if negative or partially_invalid:
                        ctx.report(resource, NEGATIVE_CONDITION, kind, reason,
                                   text(condition.get("message")), field="status")
