"""`envoyfilter.EnvoyPatchAnalyzer`: EnvoyFilter patches that are ignored or order-dependent.

- `ADD` or `REMOVE` with `applyTo` ROUTE_CONFIGURATION or HTTP_ROUTE is ignored by Istio
  (IST0153, IST0154).
- `REPLACE` is only applied to a named HTTP_FILTER, NETWORK_FILTER or VIRTUAL_HOST (IST0152).
- Operations relative to another element (INSERT_BEFORE, INSERT_AFTER, REPLACE, REMOVE) in an
  EnvoyFilter without `priority` depend on the order filters are applied (IST0151). When the
  element they name was patched earlier by a patch limited to a `proxyVersion`, the order can
  change across an upgrade: IST0155 instead. `MERGE` edits the matched element in place and
  does not depend on that order.

Each problem is reported once per EnvoyFilter, at the first patch that shows it. Filters are
read in order; names patched under a `proxyVersion` carry over to later filters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshpilot.analysis.analyzers.common import mapping, mappings, number, text
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import MessageType, message_type
from meshpilot.analysis.resource import ENVOY_FILTER, Collection

RELATIVE = message_type("EnvoyFilterUsesRelativeOperation")
RELATIVE_WITH_PROXY_VERSION = message_type("EnvoyFilterUsesRelativeOperationWithProxyVersion")
BAD_REPLACE = message_type("EnvoyFilterUsesReplaceOperationIncorrectly")
BAD_ADD = message_type("EnvoyFilterUsesAddOperationIncorrectly")
BAD_REMOVE = message_type("EnvoyFilterUsesRemoveOperationIncorrectly")

ROUTE_TARGETS = frozenset({"ROUTE_CONFIGURATION", "HTTP_ROUTE"})
REPLACEABLE = frozenset({"HTTP_FILTER", "NETWORK_FILTER", "VIRTUAL_HOST"})
RELATIVE_OPERATIONS = frozenset({"INSERT_BEFORE", "INSERT_AFTER", "REPLACE", "REMOVE"})


def patched_name(patch: Mapping[str, Any]) -> str:
    """The element a patch concerns: its value's `name`, else the matched listener filter."""
    value = mapping(mapping(patch.get("patch")).get("value"))
    if value.get("name") is not None:
        return text(value.get("name"))
    listener = mapping(mapping(patch.get("match")).get("listener"))
    return text(mapping(mapping(listener.get("filterChain")).get("filter")).get("name"))


class EnvoyPatchAnalyzer:
    name = "envoyfilter.EnvoyPatchAnalyzer"
    description = "Checks an envoyFilters "
    inputs: tuple[Collection, ...] = (ENVOY_FILTER,)

    def analyze(self, ctx: Context) -> None:
        version_limited: set[str] = set()
        for envoy_filter in ctx.for_each(ENVOY_FILTER):
            prioritized = bool(number(envoy_filter.spec.get("priority")))
            found: dict[MessageType, str] = {}
            for index, patch in mappings(envoy_filter.spec.get("configPatches")):
                body = mapping(patch.get("patch"))
                if not body:
                    break
                operation = text(body.get("operation")).upper()
                apply_to = text(patch.get("applyTo")).upper()
                name = patched_name(patch)
                problem = self._problem(operation, apply_to, prioritized, name, version_limited)
                if problem is not None and problem not in found:
                    found[problem] = f"spec.configPatches[{index}].patch.operation"
                if mapping(mapping(patch.get("match")).get("proxy")).get("proxyVersion"):
                    version_limited.add(name)
            for problem, where in found.items():
                ctx.report(envoy_filter, problem, field=where)

    @staticmethod
    def _problem(
        operation: str, apply_to: str, prioritized: bool, name: str, version_limited: set[str]
    ) -> MessageType | None:
        if operation == "ADD":
            return BAD_ADD if apply_to in ROUTE_TARGETS else None
        if operation == "REMOVE" and apply_to in ROUTE_TARGETS:
            return BAD_REMOVE
        if operation == "REPLACE" and apply_to not in REPLACEABLE:
            return BAD_REPLACE
        if operation in RELATIVE_OPERATIONS and not prioritized:
            return RELATIVE_WITH_PROXY_VERSION if name in version_limited else RELATIVE
        return None
