"""Analyzers of `DestinationRule` resources.

- `destinationrule.CaCertificateAnalyzer`: TLS origination (`SIMPLE` or `MUTUAL`) without
  `caCertificates` does not verify the server, at the rule level (IST0128) or per port
  (IST0129). `insecureSkipVerify` says so on purpose, and a `credentialName` supplies the CA
  only where it can be read: with a `workloadSelector`.
- `destinationrule.SubsetSelectPodAnalyzer`: the rule's host must be a known service
  (IST0174), and each subset must select some pod (IST0173). A pod's labels are completed, as
  Istio's registry does for endpoints, with its node's topology labels (region, zone,
  subzone; empty values ignored) and `kubernetes.io/hostname`; a ServiceEntry's workload
  selector is added to each subset's labels.

  meshpilot's workloads are mostly not pods: a subset that selects the endpoints the
  ServiceEntry registry publishes (the entry's inline endpoints, or WorkloadEntries of its
  namespace) selects something too, so it is not reported. Istio checks pods only, which
  would flag every VM-only subset; inputs without WorkloadEntries get Istio's answers. In
  live analysis a host of an external registry is judged by the labels of its endpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshpilot.analysis.analyzers.common import (
    LabelIndex,
    mapping,
    mappings,
    number,
    string_map,
    strings,
    text,
)
from meshpilot.analysis.analyzers.services import ServiceIndex
from meshpilot.analysis.context import Context
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.registries import REGISTRY_SERVICE
from meshpilot.analysis.resource import (
    DESTINATION_RULE,
    NODE,
    POD,
    SERVICE,
    SERVICE_ENTRY,
    WORKLOAD_ENTRY,
    Collection,
    Resource,
)

NO_CA_RULE_LEVEL = message_type("NoServerCertificateVerificationDestinationLevel")
NO_CA_PORT_LEVEL = message_type("NoServerCertificateVerificationPortLevel")
UNKNOWN_HOST = message_type("UnknownDestinationRuleHost")
SUBSET_SELECTS_NOTHING = message_type("DestinationRuleSubsetNotSelectPods")

TOPOLOGY_LABELS = (
    "topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone",
)
HOSTNAME_LABEL = "kubernetes.io/hostname"


def _unverified(tls: Mapping[str, Any], rule: Resource) -> str:
    """The TLS mode when it originates TLS without verifying the server, else ''."""
    mode = text(tls.get("mode")).upper()
    if mode not in ("SIMPLE", "MUTUAL"):
        return ""
    if text(tls.get("caCertificates")) or tls.get("insecureSkipVerify") is True:
        return ""
    if text(tls.get("credentialName")) and rule.spec.get("workloadSelector") is not None:
        return ""
    return mode


class CaCertificateAnalyzer:
    name = "destinationrule.CaCertificateAnalyzer"
    description = (
        "Checks if caCertificates is set when TLS mode is SIMPLE/MUTUAL"
    )
    inputs: tuple[Collection, ...] = (DESTINATION_RULE,)

    def analyze(self, ctx: Context) -> None:
        for rule in ctx.for_each(DESTINATION_RULE):
            policy = mapping(rule.spec.get("trafficPolicy"))
            host = text(rule.spec.get("host"))
            mode = _unverified(mapping(policy.get("tls")), rule)
            if mode:
                ctx.report(rule, NO_CA_RULE_LEVEL, rule.full_name, rule.namespace, mode, host,
                           field="spec.trafficPolicy.tls.mode")
            for index, setting in mappings(policy.get("portLevelSettings")):
                mode = _unverified(mapping(setting.get("tls")), rule)
                if mode:
                    port = number(mapping(setting.get("port")).get("number")) or 0
                    ctx.report(rule, NO_CA_PORT_LEVEL, rule.full_name, rule.namespace, mode,
                               host, str(port),
                               field=f"spec.trafficPolicy.portLevelSettings[{index}].tls.mode")


class SubsetSelectPodAnalyzer:
    name = "destinationrule.SubsetSelectPodAnalyzer"
    description = "Checks if pods are selected by subsets in destination rules."
    inputs: tuple[Collection, ...] = (
        DESTINATION_RULE, POD, SERVICE, SERVICE_ENTRY, NODE, WORKLOAD_ENTRY,
    )

    def analyze(self, ctx: Context) -> None:
        index = ServiceIndex(ctx)
        nodes = {node.name: node.labels for node in ctx.for_each(NODE)}
        pods = LabelIndex(endpoint_labels(pod, nodes) for pod in ctx.for_each(POD))
        workloads = _WorkloadEntriesByNamespace(ctx)
        for rule in ctx.for_each(DESTINATION_RULE):
            host = text(rule.spec.get("host"))
            service = index.lookup(rule.namespace, host, strings(rule.spec.get("exportTo")))
            if service is None:
                ctx.report(rule, UNKNOWN_HOST, host, field="spec.host")
                continue
            base: dict[str, str] = {}
            candidates = [pods]
            if service.source.collection == SERVICE_ENTRY:
                entry = service.source
                base = string_map(mapping(entry.spec.get("workloadSelector")).get("labels"))
                # The ServiceEntry registry's endpoints: inline endpoints' own labels, and every
                # WorkloadEntry of the entry's namespace when it selects workloads (its selector
                # is part of each subset's selector already).
                candidates.append(LabelIndex(
                    string_map(e.get("labels")) for _, e in mappings(entry.spec.get("endpoints"))
                ))
                if entry.spec.get("workloadSelector") is not None:
                    candidates.append(workloads.labels(entry.namespace))
            elif service.source.collection == REGISTRY_SERVICE:
                # An external registry's service (live analysis): its endpoints are the
                # workloads; the server merges every registry's endpoints for one host.
                candidates.append(LabelIndex(
                    dict(e.labels) for s in ctx.registries
                    if s.hostname == service.source.name
                    and s.namespace == service.source.namespace for e in s.endpoints))
            for subset_index, subset in mappings(rule.spec.get("subsets")):
                selector = {**base, **string_map(subset.get("labels"))}
                if not any(found.any_match(selector) for found in candidates):
                    ctx.report(rule, SUBSET_SELECTS_NOTHING, text(subset.get("name")),
                               field=f"spec.subsets[{subset_index}]")


class _WorkloadEntriesByNamespace:
    """Label indexes of each namespace's WorkloadEntries, built on first use."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._grouped: dict[str, list[Resource]] | None = None
        self._indexes: dict[str, LabelIndex] = {}

    def labels(self, namespace: str) -> LabelIndex:
        found = self._indexes.get(namespace)
        if found is None:
            if self._grouped is None:
                self._grouped = {}
                for w in self._ctx.for_each(WORKLOAD_ENTRY):
                    self._grouped.setdefault(w.namespace, []).append(w)
            found = self._indexes[namespace] = LabelIndex(
                {**w.labels, **string_map(w.spec.get("labels"))}
                for w in self._grouped.get(namespace, ())
            )
        return found


def endpoint_labels(pod: Resource, nodes: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    labels = dict(pod.labels)
    node_name = text(pod.spec.get("nodeName"))
    node = nodes.get(node_name)
    if node is None:
        return labels
    for key in TOPOLOGY_LABELS:
        if node.get(key):
            labels[key] = node[key]
    labels[HOSTNAME_LABEL] = node_name
    return labels
