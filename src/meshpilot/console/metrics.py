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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from meshpilot.console.graph import inbound_services
from meshpilot.console.stats import ClusterSample, StatsCollector
from meshpilot.envoy.names import INBOUND, OUTBOUND, ClusterName

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

    def _rows(self) -> Iterator[tuple[list[str], ClusterSample]]:
        snapshot = self.server.snapshot
        if snapshot is None:
            return
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
                if parsed.direction == OUTBOUND:
                    svc = snapshot.services.get(parsed.host)
                    namespace = svc.namespace if svc is not None else UNKNOWN
                    yield [
                        "source", workload, proxy.namespace, parsed.host,
                        parsed.host.split(".", 1)[0], namespace, UNKNOWN, UNKNOWN,
                        parsed.subset or UNKNOWN,
                    ], sample
                elif parsed.direction == INBOUND:
                    if inbound is None:
                        inbound = inbound_services(snapshot, proxy)
                    for sid in inbound.get(parsed.port, ()):
                        namespace, _, host = sid.removeprefix("svc:").partition("/")
                        yield [
                            "destination", UNKNOWN, UNKNOWN, host, host.split(".", 1)[0],
                            namespace, workload, proxy.namespace,
                            proxy.labels.get("version", UNKNOWN),
                        ], sample

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "istio_requests_total", "Requests, from the Envoys' cluster stats (Istio's "
            "standard metric, republished by meshpilot's console).", labels=[*LABELS,
                                                                             "response_code"])
        duration = HistogramMetricFamily(
            "istio_request_duration_milliseconds", "Request duration in milliseconds, from the "
            "Envoys' upstream_rq_time histograms.", labels=list(LABELS))
        tcp = CounterMetricFamily(
            "istio_tcp_connections_opened_total", "TCP connections opened, from the Envoys' "
            "upstream_cx_total.", labels=list(LABELS))
        for labels, sample in self._rows():
            for code, count in sorted(sample.codes.items()):
                requests.add_metric([*labels, code], count)
            if sample.buckets:
                buckets = [(str(float(b)), float(n)) for b, n in sample.buckets]
                buckets.append(("+Inf", float(max(sample.buckets[-1][1], 0))))
                duration.add_metric(labels, buckets, sum_value=None)
            if not sample.requests and sample.connections:
                tcp.add_metric(labels, sample.connections)
        yield requests
        yield duration
        yield tcp
