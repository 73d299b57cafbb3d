"""Gateway API route status, shaped as the API's own `status.parents[].conditions`.

meshpilot writes no status back to files, so this is where a route's acceptance shows: per
route, one entry per parent it names, with the `Accepted` and `ResolvedRefs` conditions the
translation decided (`config/foreign/gateway_api.py`) and their reasons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

CONTROLLER_NAME = "meshpilot.io/gateway-controller"


def route_status(routes: Mapping[str, Sequence[Mapping[str, str]]]) -> dict[str, Any]:
    """`Kind ns/name` → `{"status": {"parents": [...]}}` from the translator's conditions."""
    out: dict[str, Any] = {}
    for route, conditions in sorted(routes.items()):
        parents: dict[str, list[dict[str, str]]] = {}
        for condition in conditions:
            parents.setdefault(condition["parent"], []).append({
                "type": condition["type"],
                "status": condition["status"],
                "reason": condition["reason"],
                "message": condition.get("message", ""),
            })
        out[route] = {"status": {"parents": [
            {"parentRef": {"name": parent}, "controllerName": CONTROLLER_NAME,
             "conditions": found}
            for parent, found in parents.items()
        ]}}
    return out
