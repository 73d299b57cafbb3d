"""Mesh traffic as Prometheus metrics under Istio's standard names, for Grafana.

The stats collector already reads every Envoy's cluster counters; this collector republishes
the latest values on the discovery server's `/metrics` (the debug address) with Istio's
metric names and labels, so Istio's Grafana dashboards and the queries people know work
against one scrape target, without scraping every sidecar:

    istio_requests_total{reporter, source_workload, source_workload_namespace,
        destination_service, destination_service_name, destination_service_namespace,
        destination_workload, destination_workload_namespace, destination_version,
        response_code}                                              counter
    istio_request_duration_milliseconds{… the same but response_code}   histogram (no _sum:
                                                                         Envoy's JSON lacks it)
    istio_tcp_connections_opened_total{… as requests, without response_code}   counter

`reporter="source"` rows come from the client's outbound clusters (the destination workload is
`unknown`: one cluster spans every endpoint; `destination_version` is the cluster's subset),
`reporter="destination"` rows from the server's inbound clusters (the source is `unknown`).
Values are Envoy's own cumulative counters, so `rate()` works as on a sidecar scrape; they drop
when an Envoy restarts, which Prometheus treats as a counter reset. A proxy that disconnects
stops being reported.

Telemetry `metrics` overrides (disable a metric, remove or set a label) apply to the rows of
the proxies they select: see `console/metric_overrides.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from meshpilot.console.graph import inbound_services
from meshpilot.console.metric_overrides import (
    CLIENT,
    REQUEST_COUNT,
    REQUEST_DURATION,
    SERVER,
    TCP_OPENED,
    ProxyRules,
    Row,
)
from meshpilot.console.stats import ClusterSample, StatsCollector
from meshpilot.envoy.names import INBOUND, OUTBOUND, ClusterName
from meshpilot.model import Proxy
from meshpilot.model.snapshot import Snapshot

if TYPE_CHECKING:
    from meshpilot.xds.discovery import DiscoveryServer

UNKNOWN = "unknown"
LABELS = (
    "reporter", "source_workload", "source_workload_namespace", "destination_service",
    "destination_service_name", "destination_service_namespace", "destination_workload",
    "destination_workload_namespace", "destination_version",
)


class MeshTrafficMetrics(Collector):
    def __init__(self, server: DiscoveryServer, stats: StatsCollector) -> None:
        self.server = server
        self.stats = stats

    def register(self) -> None:
        self.server.metrics.registry.register(self)

    def unregister(self) -> None:
        self.server.metrics.registry.unregister(self)

    def _rows(self, snapshot: Snapshot) -> Iterator[tuple[Proxy, str, Row, list[str],
                                                          ClusterSample]]:
        """(proxy, mode, row, label values, sample) of every cluster with traffic."""
        proxies = {c.proxy.id: c.proxy for c in list(self.server.connections.values())}
        for proxy_id, proxy in sorted(proxies.items()):
            clusters = self.stats.latest(proxy_id)
            if not clusters:
                continue
            workload = proxy.workload_name or UNKNOWN
            inbound: dict[int, list[str]] | None = None
            for name, sample in sorted(clusters.items()):
                parsed = ClusterName.parse(name)
                if parsed is None:
                    continue
                row = Row(parsed.port, name)
                if parsed.direction == OUTBOUND:
                    svc = snapshot.services.get(parsed.host)
                    namespace = svc.namespace if svc is not None else UNKNOWN
                    yield proxy, CLIENT, row, [
                        "source", workload, proxy.namespace, parsed.host,
                        parsed.host.split(".", 1)[0], namespace, UNKNOWN, UNKNOWN,
                        parsed.subset or UNKNOWN,
                    ], sample
                elif parsed.direction == INBOUND:
                    if inbound is None:
                        inbound = inbound_services(snapshot, proxy)
                    for sid in inbound.get(parsed.port, ()):
                        namespace, _, host = sid.removeprefix("svc:").partition("/")
                        yield proxy, SERVER, row, [
                            "destination", UNKNOWN, UNKNOWN, host, host.split(".", 1)[0],
                            namespace, workload, proxy.namespace,
                            proxy.labels.get("version", UNKNOWN),
                        ], sample

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "istio_requests_total", "Requests, from the Envoys' cluster stats (Istio's "
            "standard metric, republished by meshpilot's console).")
        duration = HistogramMetricFamily(
            "istio_request_duration_milliseconds", "Request duration in milliseconds, from the "
            "Envoys' upstream_rq_time histograms.")
        tcp = CounterMetricFamily(
            "istio_tcp_connections_opened_total", "TCP connections opened, from the Envoys' "
            "upstream_cx_total.")
        snapshot = self.server.snapshot
        if snapshot is None:
            yield from (requests, duration, tcp)
            return
        # Telemetry overrides may remove labels, making rows alike: those are summed, as one
        # Envoy counter with those tags would be.
        counts: dict[tuple[str, Labels], float] = {}
        buckets: dict[Labels, dict[float, float]] = {}
        rules = ProxyRules(snapshot)
        for proxy, mode, row, values, sample in self._rows(snapshot):
            labels = dict(zip(LABELS, values, strict=True))
            if sample.codes:
                rule = rules.rule(proxy, REQUEST_COUNT, mode)
                for code, count in sorted(sample.codes.items()):
                    out = rule.labels({**labels, "response_code": code}, row)
                    if out is not None:
                        key = (REQUEST_COUNT, _key(out))
                        counts[key] = counts.get(key, 0.0) + count
            if sample.buckets:
                out = rules.rule(proxy, REQUEST_DURATION, mode).labels(labels, row)
                if out is not None:
                    summed = buckets.setdefault(_key(out), {})
                    for bound, n in sample.buckets:
                        summed[float(bound)] = summed.get(float(bound), 0.0) + n
                    inf = max(sample.buckets[-1][1], 0)
                    summed[math.inf] = summed.get(math.inf, 0.0) + inf
            if not sample.requests and sample.connections:
                out = rules.rule(proxy, TCP_OPENED, mode).labels(labels, row)
                if out is not None:
                    tcp_key = (TCP_OPENED, _key(out))
                    counts[tcp_key] = counts.get(tcp_key, 0.0) + sample.connections
        families = {REQUEST_COUNT: requests, TCP_OPENED: tcp}
        for (name, labelled), value in counts.items():
            families[name].add_sample(name, dict(labelled), value)
        for labelled, by_bound in buckets.items():
            for bound, total in sorted(by_bound.items()):
                le = "+Inf" if bound == math.inf else str(bound)
                duration.add_sample(f"{REQUEST_DURATION}_bucket", {**dict(labelled), "le": le},
                                    total)
        yield requests
        yield duration
        yield tcp


Labels = tuple[tuple[str, str], ...]


def _key(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))  # rows alike whatever order overrides added tags in
