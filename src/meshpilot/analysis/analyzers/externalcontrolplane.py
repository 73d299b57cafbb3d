"""`externalcontrolplane.ExternalControlPlaneAnalyzer`: webhooks of a remote cluster.

In a cluster whose control plane runs elsewhere, Istio's validating webhooks
(`istiod-default-validator`, `istio-validator*`) and injection webhooks
(`istio-sidecar-injector*`) reach istiod by URL. Each webhook with neither a URL nor an
in-cluster service gets IST0163 ("is blank"), an unparseable URL IST0163, and a URL whose host
is an IP address IST0164. Istio also resolves the host name in DNS; analysis here stays
offline and deterministic, so a host name is taken as given.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from meshpilot.analysis.analyzers.common import mapping, mappings, text
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import (
    MUTATING_WEBHOOK,
    VALIDATING_WEBHOOK,
    Collection,
    Resource,
)

INVALID_CONFIG = message_type("InvalidExternalControlPlaneConfig")
ADDRESS_IS_IP = message_type("ExternalControlPlaneAddressIsNotAHostname")

DEFAULT_VALIDATOR = "istiod-default-validator"
VALIDATOR_PREFIX = "istio-validator"
INJECTOR_PREFIX = "istio-sidecar-injector"


def _is_istio_webhook(resource: Resource) -> bool:
    if resource.collection == VALIDATING_WEBHOOK:
        return resource.name == DEFAULT_VALIDATOR or resource.name.startswith(VALIDATOR_PREFIX)
    return resource.name.startswith(INJECTOR_PREFIX)


class ExternalControlPlaneAnalyzer:
    name = "externalcontrolplane.ExternalControlPlaneAnalyzer"
    description = (
        "Checks that the remote IstioOperator resources reference an external control plane"
    )
    inputs: tuple[Collection, ...] = (VALIDATING_WEBHOOK, MUTATING_WEBHOOK)

    def analyze(self, ctx: Context) -> None:
        for collection in self.inputs:
            for resource in ctx.for_each(collection):
                if _is_istio_webhook(resource):
                    self._check(ctx, resource)

    def _check(self, ctx: Context, resource: Resource) -> None:
        for index, hook in mappings(resource.body.get("webhooks")):
            hook_name = text(hook.get("name"))
            client = mapping(hook.get("clientConfig"))
            url = text(client.get("url"))
            where = f"webhooks[{index}].clientConfig"
            if not url:
                if client.get("service") is None:
                    ctx.report(resource, INVALID_CONFIG, "", hook_name, "is blank", field=where)
                continue
            try:
                host = urlsplit(url).hostname or ""
            except ValueError:
                host = ""
            if not host:
                ctx.report(resource, INVALID_CONFIG, url, hook_name,
                           "cannot be parsed as a URL with a host", field=f"{where}.url")
                continue
            try:
                ipaddress.ip_address(host)
            except ValueError:
                continue
            ctx.report(resource, ADDRESS_IS_IP, url, hook_name, field=f"{where}.url")
