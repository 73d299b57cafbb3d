"""`service.PortNameAnalyzer`: Service ports whose protocol Istio cannot tell.

Istio picks a Service port's protocol from `appProtocol`, else from the port name's prefix
before the first `-` (`http-web`, `grpc`, `tcp-db`, with `grpc-web` as a whole prefix), else
from a few well-known port numbers; UDP ports are UDP. A port left unsupported is reported
(IST0118) — for an `ExternalName` Service the dedicated IST0150, which is also given to a port
named just `tcp` there. Services of the control plane (labelled `istio` or `release=istio`)
and Services that Istio's gateway controllers manage are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshpilot.analysis.analyzers.common import mappings, number, text
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import SERVICE, Collection, Resource

BAD_PORT_NAME = message_type("PortNameIsNotUnderNamingConvention")
BAD_EXTERNAL_NAME_PORT = message_type("ExternalNameServiceTypeInvalidPortName")

PROTOCOLS = frozenset({
    "tcp", "udp", "grpc", "grpc-web", "http", "http_proxy", "http2", "https", "tls", "mongo",
    "redis", "mysql", "hbone",
})
WELL_KNOWN_PORTS: Mapping[int, str] = {3306: "mysql", 27017: "mongo", 6379: "redis"}
MANAGED_GATEWAY_LABEL = "gateway.istio.io/managed"
MANAGED_GATEWAY_VALUES = frozenset({
    "istio.io-gateway-controller", "istio.io-mesh-controller", "istio.io-eastwest-controller",
})


def port_protocol(port: Mapping[str, Any]) -> str:
    """The protocol Istio derives for a Kubernetes Service port, '' when unsupported."""
    if text(port.get("protocol")).upper() == "UDP":
        return "udp"
    name = text(port.get("name"))
    app_protocol = port.get("appProtocol")
    if app_protocol is not None:
        name = text(app_protocol)
        if name == "kubernetes.io/h2c":
            return "http2"
        if name in ("kubernetes.io/ws", "kubernetes.io/wss"):
            return "http"
    if name.lower().startswith("grpc-web"):
        return "grpc-web"
    prefix = name.split("-", 1)[0].lower()
    if prefix in PROTOCOLS:
        return prefix
    return WELL_KNOWN_PORTS.get(number(port.get("port")) or 0, "")


def is_control_plane(resource: Resource) -> bool:
    return "istio" in resource.labels or resource.labels.get("release") == "istio"


class PortNameAnalyzer:
    name = "service.PortNameAnalyzer"
    description = "Checks the port names associated with each service"
    inputs: tuple[Collection, ...] = (SERVICE,)

    def analyze(self, ctx: Context) -> None:
        for service in ctx.for_each(SERVICE):
            if is_control_plane(service):
                continue
            if service.labels.get(MANAGED_GATEWAY_LABEL) in MANAGED_GATEWAY_VALUES:
                continue
            external = text(service.spec.get("type")) == "ExternalName"
            for index, port in mappings(service.spec.get("ports")):
                name = text(port.get("name"))
                if port_protocol(port) and not (external and name == "tcp"):
                    continue
                where = f"spec.ports[{index}]"
                if external:
                    ctx.report(service, BAD_EXTERNAL_NAME_PORT, field=where)
                else:
                    ctx.report(service, BAD_PORT_NAME, name, number(port.get("port")) or 0,
                               text(port.get("targetPort")), field=where)
