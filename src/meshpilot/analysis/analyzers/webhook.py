"""`webhook.Analyzer`: Istio's sidecar-injection webhooks must not overlap or dangle.

Istio's injection webhooks (those with an `istio.io/rev` label or selector, or a webhook name
ending in `istio.io`) are tried against every combination of the namespace labels
(`istio-injection` unset/enabled/disabled, with or without each revision) and object labels
(`sidecar.istio.io/inject` unset/true/false, with or without each revision). A combination
that more than one webhook accepts would inject twice (IST0139 for each of them). A webhook
calling an in-cluster Service that is not among the resources is reported too (IST0139).
"""

from __future__ import annotations

from itertools import product

from meshpilot.analysis.analyzers.common import (
    INJECTION_LABEL,
    REVISION_LABEL,
    SIDECAR_INJECT,
    label_selector_matches,
    mapping,
    mappings,
    string_map,
    strings,
    text,
)
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.resource import MUTATING_WEBHOOK, SERVICE, Collection, Resource

INVALID_WEBHOOK = message_type("InvalidWebhook")


def _revisions(configuration: Resource) -> set[str]:
    found = set()
    if REVISION_LABEL in configuration.labels:
        found.add(configuration.labels[REVISION_LABEL])
    for _, hook in mappings(configuration.body.get("webhooks")):
        for selector_key in ("namespaceSelector", "objectSelector"):
            selector = mapping(hook.get(selector_key))
            labels = string_map(selector.get("matchLabels"))
            if REVISION_LABEL in labels:
                found.add(labels[REVISION_LABEL])
            for _, expression in mappings(selector.get("matchExpressions")):
                if text(expression.get("key")) == REVISION_LABEL:
                    found.update(strings(expression.get("values")))
    return found


def _is_istio(configuration: Resource) -> bool:
    return any(text(hook.get("name")).endswith("istio.io")
               for _, hook in mappings(configuration.body.get("webhooks")))


def _label_sets(key: str, values: tuple[str, ...], revisions: set[str]) -> list[dict[str, str]]:
    bases: list[dict[str, str]] = [{}, *({key: value} for value in values)]
    sets = [dict(base) for base in bases]
    for revision in sorted(revisions):
        sets.extend({**base, REVISION_LABEL: revision} for base in bases)
    return sets


class Analyzer:
    name = "webhook.Analyzer"
    description = "Checks the validity of Istio webhooks"
    inputs: tuple[Collection, ...] = (MUTATING_WEBHOOK, SERVICE)

    def analyze(self, ctx: Context) -> None:
        hooks: list[tuple[Resource, str, dict[str, object]]] = []
        revisions: set[str] = set()
        for configuration in ctx.for_each(MUTATING_WEBHOOK):
            found = _revisions(configuration)
            if not found and not _is_istio(configuration):
                continue
            revisions |= found
            for _, hook in mappings(configuration.body.get("webhooks")):
                hooks.append((configuration, f"{configuration.name}/{text(hook.get('name'))}",
                              dict(hook)))
        namespace_sets = _label_sets(INJECTION_LABEL, ("enabled", "disabled"), revisions)
        object_sets = _label_sets(SIDECAR_INJECT, ("true", "false"), revisions)
        for namespace_labels, object_labels in product(namespace_sets, object_sets):
            matching = [
                (configuration, name) for configuration, name, hook in hooks
                if label_selector_matches(hook.get("namespaceSelector"), namespace_labels)
                and label_selector_matches(hook.get("objectSelector"), object_labels)
            ]
            if len(matching) < 2:
                continue
            for configuration, name in matching:
                others = sorted(other for _, other in matching if other != name)
                ctx.report(configuration, INVALID_WEBHOOK,
                           f"Webhook overlaps with others: {others}. This may cause injection "
                           "to occur twice.")
        for configuration, _, hook in hooks:
            service = mapping(mapping(hook.get("clientConfig")).get("service"))
            if not service:
                continue
            namespace, name = text(service.get("namespace")), text(service.get("name"))
            if not ctx.exists(SERVICE, namespace, name):
                ctx.report(configuration, INVALID_WEBHOOK,
                           "Injector refers to a control plane service that does not exist: "
                           f"{namespace}/{name}.")
