"""Istio's `filter_metadata.istio` on generated resources: which config made them.

Clusters carry the DestinationRule that shaped them and the service they stand for; routes
carry the VirtualService they came from. istioctl's `proxy-config` reads these (the
DESTINATION RULE and VIRTUAL SERVICE columns), and so does meshpilot's.
"""

from __future__ import annotations

from typing import Any

from meshpilot.model import Config, Service

_KIND_PATHS = {"DestinationRule": "destination-rule", "VirtualService": "virtual-service"}


def config_path(config: Config) -> str:
    """Istio's reference form: `/apis/networking.istio.io/v1/namespaces/ns/virtual-service/n`."""
    kind = _KIND_PATHS.get(config.kind, config.kind.lower())
    api = f"/apis/{config.group}/{config.version}"
    return f"{api}/namespaces/{config.namespace}/{kind}/{config.name}"


def mark_cluster(cluster: Any, service: Service, rule: Config | None, subset: str) -> None:
    istio = cluster.metadata.filter_metadata["istio"]
    entry = istio.get_or_create_list("services").add_struct()
    entry.update({"host": service.hostname, "name": service.hostname.split(".")[0],
                  "namespace": service.namespace})
    if rule is not None:
        istio["config"] = config_path(rule)
    if subset:
        istio["subset"] = subset


def mark_route(route: Any, vs: Config) -> None:
    route.metadata.filter_metadata["istio"]["config"] = config_path(vs)
