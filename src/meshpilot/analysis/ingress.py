"""The default ingress gateway that offline analysis assumes, as `istioctl analyze` does.

Without a cluster, istioctl adds the Pod and Service of Istio's default ingress gateway
(`istio-ingressgateway` in the root namespace, labelled `istio: ingressgateway`) so that
Gateways selecting it are not reported as selecting nothing. It is left out when the mesh
config sets `ingressControllerMode: OFF`. Its resources carry no file, so no message points
into it.
"""

from __future__ import annotations

from typing import Any

from meshpilot.analysis.meshconfig import INGRESS_MODE_OFF, MeshConfig
from meshpilot.analysis.resource import POD, SERVICE, Resource

_PORTS: tuple[tuple[str, int, int], ...] = (
    ("http2", 80, 31380), ("https", 443, 31390), ("tcp", 31400, 31400), ("tls", 15443, 31447),
)


def default_ingress_gateway(mesh: MeshConfig) -> list[Resource]:
    if mesh.ingress_controller_mode == INGRESS_MODE_OFF:
        return []
    namespace = mesh.root_namespace
    labels = {"istio": mesh.ingress_selector}
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{mesh.ingress_service}-dummypod", "namespace": namespace,
                     "labels": labels},
        "spec": {"containers": [{"name": "istio-proxy"}]},
    }
    service: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": mesh.ingress_service, "namespace": namespace},
        "spec": {
            "selector": labels,
            "ports": [
                {"name": name, "port": port, "targetPort": port, "nodePort": node_port,
                 "protocol": "TCP"}
                for name, port, node_port in _PORTS
            ],
        },
    }
    return [
        Resource(POD, "v1", pod["metadata"]["name"], namespace, pod),
        Resource(SERVICE, "v1", mesh.ingress_service, namespace, service),
    ]
