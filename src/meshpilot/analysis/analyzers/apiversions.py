"""`meshpilot.APIVersionAnalyzer`: SMI and Gateway API objects in a version meshpilot does not
read (MP0010). The server rejects such a document, so it never becomes Istio config; the
accepted versions are the admission table's (`config/kinds.py`)."""

from __future__ import annotations

from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import Collection
from meshpilot.config.kinds import GATEWAY_API_GROUP, SUPPORTED_KINDS
from meshpilot.config.translating import FOREIGN_GROUPS

UNSUPPORTED_VERSION = message_type("UnsupportedAPIVersion")
FOREIGN_KINDS = {Collection(k.group, k.kind): k for k in SUPPORTED_KINDS
                 if k.group in FOREIGN_GROUPS | {GATEWAY_API_GROUP}}


class APIVersionAnalyzer:
    name = "meshpilot.APIVersionAnalyzer"
    description = "Check that SMI and Gateway API objects use an API version meshpilot reads"
    inputs: tuple[Collection, ...] = tuple(FOREIGN_KINDS)

    def analyze(self, ctx: Context) -> None:
        for collection, spec in FOREIGN_KINDS.items():
            for resource in ctx.for_each(collection):
                if resource.version not in spec.versions:
                    ctx.report(resource, UNSUPPORTED_VERSION,
                               f"{collection.group}/{resource.version}", collection.kind,
                               spec.api_versions(), field="apiVersion")
