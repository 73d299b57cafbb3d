"""`deployment.MultiServiceAnalyzer`: Services that disagree about a meshed Deployment's ports.

For each Deployment in the mesh (it has an `istio-proxy` container, its pod template says
`sidecar.istio.io/inject: "true"`, or its namespace has `istio-injection=enabled`), the
Services of its namespace that select its pod template labels are compared: the same port with
different protocols is ambiguous for Envoy (IST0116), and the same target port behind
different service ports conflicts (IST0137). Services without a selector select nothing.
"""

from __future__ import annotations

from meshpilot.analysis.analyzers.common import (
    INJECTION_LABEL,
    SIDECAR_INJECT,
    mappings,
    number,
    pod_template,
    proxy_image,
    selector_matches,
    string_map,
    text,
)
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import DEPLOYMENT, NAMESPACE, SERVICE, Collection, Resource

MULTIPLE_PROTOCOLS = message_type("DeploymentAssociatedToMultipleServices")
CONFLICTING_PORTS = message_type("DeploymentConflictingPorts")


def workload_in_mesh(ctx: Context, workload: Resource) -> bool:
    metadata, spec = pod_template(workload)
    if proxy_image(spec):
        return True
    annotations = string_map(metadata.get("annotations"))
    if SIDECAR_INJECT in annotations:
        return annotations[SIDECAR_INJECT] == "true"
    namespace = ctx.find(NAMESPACE, "", workload.namespace)
    return namespace is not None and namespace.labels.get(INJECTION_LABEL) == "enabled"


def services_selecting(ctx: Context, workload: Resource) -> list[Resource]:
    metadata, _ = pod_template(workload)
    labels = string_map(metadata.get("labels"))
    found = []
    for service in ctx.for_each(SERVICE):
        selector = string_map(service.spec.get("selector"))
        if selector and service.namespace == workload.namespace \
                and selector_matches(selector, labels):
            found.append(service)
    return found


class MultiServiceAnalyzer:
    name = "deployment.MultiServiceAnalyzer"
    description = "Checks association between services and pods"
    inputs: tuple[Collection, ...] = (SERVICE, DEPLOYMENT, NAMESPACE)

    def analyze(self, ctx: Context) -> None:
        for deployment in ctx.for_each(DEPLOYMENT):
            if not workload_in_mesh(ctx, deployment):
                continue
            services = services_selecting(ctx, deployment)
            if services:
                self._check(ctx, deployment, services)

    def _check(self, ctx: Context, deployment: Resource, services: list[Resource]) -> None:
        protocols: dict[int, dict[str, list[str]]] = {}
        target_ports: dict[str, dict[int, str]] = {}
        for service in services:
            for _, port in mappings(service.spec.get("ports")):
                port_number = number(port.get("port"))
                if port_number is None:
                    continue
                protocol = text(port.get("protocol")) or "TCP"
                protocols.setdefault(port_number, {}).setdefault(protocol, []).append(
                    service.full_name)
                target = text(port.get("targetPort"))
                if target in ("", "0"):
                    target = str(port_number)
                target_ports.setdefault(target, {})[port_number] = service.full_name
        for port_number, by_protocol in protocols.items():
            if len(by_protocol) > 1:
                names = [name for names in by_protocol.values() for name in names]
                ctx.report(deployment, MULTIPLE_PROTOCOLS, deployment.name, port_number, names,
                           field="metadata.name")
        for target, by_port in target_ports.items():
            if len(by_port) > 1:
                ctx.report(deployment, CONFLICTING_PORTS, deployment.name,
                           list(by_port.values()), target, list(by_port), field="metadata.name")
