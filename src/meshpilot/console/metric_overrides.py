"""Telemetry `metrics[].overrides[]` applied to the Istio metrics the console republishes.

In Istio the stats plugin inside each Envoy makes `istio_requests_total` and friends, and a
Telemetry resource's overrides change them there. meshpilot's Envoys have no stats plugin: the
console republishes their cluster counters under Istio's names (`console/metrics.py`), so the
overrides apply at that point, to the rows of the proxies the Telemetry selects.

Which resources apply: the same ones as for tracing and access logs (`envoy/telemetry.py`: the
workload's, its namespace's, the root namespace's). As Istio merges metrics overrides, all of
them count, the least specific first, so where two touch the same metric, mode and tag the
more specific wins; within a resource, later overrides win over earlier ones.

    match.metric   ALL_METRICS (the default), REQUEST_COUNT → istio_requests_total,
                   REQUEST_DURATION → istio_request_duration_milliseconds,
                   TCP_OPENED_CONNECTIONS → istio_tcp_connections_opened_total; the other
                   standard metrics are not published by meshpilot, so overrides of them change
                   nothing
    match.mode     CLIENT (rows with reporter="source"), SERVER (reporter="destination"),
                   CLIENT_AND_SERVER (the default)
    disabled       the metric is not published for those rows
    tagOverrides   REMOVE drops the label (rows that become alike are summed, as the same
                   Envoy counter would be); UPSERT sets it to `value`

`value` is a CEL expression in Istio. The rows are per-cluster counters, not requests, so only
what a row knows can be evaluated: a string literal (`'"canary"'`), `destination.port` (the
cluster's port) and `xds.cluster_name`. Any other expression (`request.host`, …) is warned
about once and the tag is left as it was.

A `metrics` entry naming only providers other than Prometheus (the console's `/metrics` is the
Prometheus provider) does not apply here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshpilot.envoy.telemetry import applicable
from meshpilot.model import Config, Proxy
from meshpilot.model.snapshot import Snapshot

log = logging.getLogger("meshpilot.console")

REQUEST_COUNT = "istio_requests_total"
REQUEST_DURATION = "istio_request_duration_milliseconds"
TCP_OPENED = "istio_tcp_connections_opened_total"
METRICS = {"REQUEST_COUNT": REQUEST_COUNT, "REQUEST_DURATION": REQUEST_DURATION,
           "TCP_OPENED_CONNECTIONS": TCP_OPENED}
CLIENT, SERVER = "CLIENT", "SERVER"
MODES = {"CLIENT": (CLIENT,), "SERVER": (SERVER,), "CLIENT_AND_SERVER": (CLIENT, SERVER)}
REMOVE = None
"""A tag's override that drops it (else the override is the tag's value expression)."""

_LITERAL = re.compile(r"""^\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')\s*$""")
ATTRIBUTES = ("destination.port", "xds.cluster_name")
_warned: set[tuple[str, str]] = set()


@dataclass(frozen=True, slots=True)
class Row:
    """What one published row knows, for UPSERT expressions."""

    port: int
    cluster: str


@dataclass
class Rule:
    """The merged overrides of one metric in one mode."""

    disabled: bool = False
    tags: dict[str, tuple[str, str] | None] = field(default_factory=dict)
    """Tag → REMOVE, or (the expression, the Telemetry it came from)."""

    def labels(self, labels: Mapping[str, str], row: Row) -> dict[str, str] | None:
        """The row's labels with the overrides applied; None when the metric is disabled."""
        if self.disabled:
            return None
        out = dict(labels)
        for tag, spec in self.tags.items():
            if spec is REMOVE:
                out.pop(tag, None)
                continue
            value = evaluate(spec[0], row, spec[1])
            if value is not None:
                out[tag] = value
        return out


NO_RULE = Rule()


def evaluate(expression: str, row: Row, origin: str) -> str | None:
    found = _LITERAL.match(expression)
    if found is not None:
        text = found.group(1) if found.group(1) is not None else found.group(2)
        return re.sub(r"\\(.)", r"\1", text)
    name = expression.strip()
    if name == "destination.port":
        return str(row.port)
    if name == "xds.cluster_name":
        return row.cluster
    if (origin, name) not in _warned:
        _warned.add((origin, name))
        log.warning(
            "%s: metrics tagOverrides value %r is not supported by meshpilot (the console "
            "republishes per-cluster counters, which carry no request attributes; supported: "
            "string literals, %s); the tag is left unchanged", origin, expression,
            ", ".join(ATTRIBUTES))
    return None


def _prometheus(entry: Mapping[str, Any], snapshot: Snapshot) -> bool:
    names = [str(p.get("name", "")) for p in entry.get("providers") or ()]
    if not names:
        return True
    for name in names:
        provider = snapshot.mesh.provider(name)
        if name == "prometheus" or (provider is not None and "prometheus" in provider):
            return True
    return False


def merge(snapshot: Snapshot, telemetries: Iterable[Config]) -> dict[tuple[str, str], Rule]:
    """(metric name, mode) → its rule, from Telemetry resources least specific first."""
    rules: dict[tuple[str, str], Rule] = {}
    for telemetry in telemetries:
        origin = f"Telemetry {telemetry.namespace}/{telemetry.name}"
        for entry in telemetry.spec.get("metrics") or ():
            if not _prometheus(entry, snapshot):
                continue
            for override in entry.get("overrides") or ():
                match = override.get("match") or {}
                if "customMetric" in match:
                    continue  # meshpilot publishes no custom metrics (warned by config/support)
                metric = str(match.get("metric") or "ALL_METRICS")
                names = list(METRICS.values()) if metric == "ALL_METRICS" else (
                    [METRICS[metric]] if metric in METRICS else [])
                modes = MODES.get(str(match.get("mode") or "CLIENT_AND_SERVER"), ())
                for name in names:
                    for mode in modes:
                        rule = rules.setdefault((name, mode), Rule())
                        if override.get("disabled") is not None:
                            rule.disabled = bool(override["disabled"])
                        for tag, change in (override.get("tagOverrides") or {}).items():
                            if str(change.get("operation") or "UPSERT") == "REMOVE":
                                rule.tags[str(tag)] = REMOVE
                            else:
                                rule.tags[str(tag)] = (str(change.get("value", "")), origin)
    return rules


class ProxyRules:
    """The rules of each proxy, cached per snapshot and set of applicable Telemetry."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._cache: dict[tuple[str, ...], dict[tuple[str, str], Rule]] = {}

    def rule(self, proxy: Proxy, metric: str, mode: str) -> Rule:
        selected = applicable(self.snapshot, proxy)
        key = tuple(str(c.key) for c in selected)
        rules = self._cache.get(key)
        if rules is None:
            rules = self._cache[key] = merge(self.snapshot, reversed(selected))
        return rules.get((metric, mode), NO_RULE)
