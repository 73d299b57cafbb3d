"""`authn.BlockedCIDRsAnalyzer`: JWKS fetches that istiod may make to any address.

RequestAuthentication `jwksUri`s are fetched by istiod. Unless istiod's
`BLOCKED_CIDRS_IN_JWKS_URIS` environment variable restricts the target networks, any user who
can write a RequestAuthentication can make istiod reach internal addresses. When such
resources exist, each istiod Deployment (label `app: istiod`) without the variable is
reported (IST0175).
"""

from __future__ import annotations

from meshpilot.analysis.analyzers.common import containers, mappings, pod_template, text
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import DEPLOYMENT, REQUEST_AUTHENTICATION, Collection

JWKS_UNRESTRICTED = message_type("JwksUriFetchUnrestricted")
BLOCKED_CIDRS_ENV = "BLOCKED_CIDRS_IN_JWKS_URIS"
MAX_LISTED = 5


def format_names(names: list[str]) -> str:
    if len(names) <= MAX_LISTED:
        return ", ".join(names)
    return f"{', '.join(names[:MAX_LISTED])}, and {len(names) - MAX_LISTED} more"


class BlockedCIDRsAnalyzer:
    name = "authn.BlockedCIDRsAnalyzer"
    description = (
        "Checks that BLOCKED_CIDRS_IN_JWKS_URIS is configured on istiod when "
        "RequestAuthentication resources exist"
    )
    inputs: tuple[Collection, ...] = (REQUEST_AUTHENTICATION, DEPLOYMENT)

    def analyze(self, ctx: Context) -> None:
        names = [ra.full_name for ra in ctx.for_each(REQUEST_AUTHENTICATION)]
        if not names:
            return
        for deployment in ctx.for_each(DEPLOYMENT):
            if deployment.labels.get("app") != "istiod":
                continue
            _, spec = pod_template(deployment)
            configured = any(
                text(env.get("name")) == BLOCKED_CIDRS_ENV and text(env.get("value"))
                for container in containers(spec, init=False)
                for _, env in mappings(container.get("env"))
            )
            if not configured:
                ctx.report(deployment, JWKS_UNRESTRICTED, len(names), format_names(names))
