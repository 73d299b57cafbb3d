"""`applicationUID.Analyzer`: application containers must not run as UID 1337.

The sidecar's traffic capture exempts traffic of UID 1337 (the proxy's own user), so an
application running as 1337 bypasses the proxy. A Pod or Deployment is reported once
(IST0144) when its pod-level `securityContext.runAsUser` or that of any container other than
`istio-proxy` is 1337.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshpilot.analysis.analyzers.common import ISTIO_PROXY, mapping, mappings, number
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import DEPLOYMENT, POD, Collection, Resource

INVALID_UID = message_type("InvalidApplicationUID")
PROXY_UID = 1337


def _runs_as_proxy(security_context: object) -> bool:
    return number(mapping(security_context).get("runAsUser")) == PROXY_UID


class Analyzer:
    name = "applicationUID.Analyzer"
    description = "Checks invalid application UID"
    inputs: tuple[Collection, ...] = (POD, DEPLOYMENT)

    def analyze(self, ctx: Context) -> None:
        for pod in ctx.for_each(POD):
            self._check(ctx, pod, pod.spec, "spec")
        for deployment in ctx.for_each(DEPLOYMENT):
            template = mapping(mapping(deployment.spec.get("template")).get("spec"))
            self._check(ctx, deployment, template, "spec.template.spec")

    def _check(self, ctx: Context, resource: Resource, spec: Mapping[str, Any],
               path: str) -> None:
        if _runs_as_proxy(spec.get("securityContext")):
            ctx.report(resource, INVALID_UID, field=f"{path}.securityContext.runAsUser")
            return
        for index, container in mappings(spec.get("containers")):
            if container.get("name") != ISTIO_PROXY \
                    and _runs_as_proxy(container.get("securityContext")):
                ctx.report(resource, INVALID_UID,
                           field=f"{path}.containers[{index}].securityContext.runAsUser")
                return
