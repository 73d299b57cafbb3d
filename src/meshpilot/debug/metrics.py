"""Prometheus metrics of the discovery server, under Istio's names so dashboards carry over.

Each `DiscoveryServer` owns one `Metrics` with its own registry (several servers can share a
process in tests). Two kinds of metric:

- events the server reports through the small methods below, called at the points where they
  happen (a response sent, a NACK, a push debounced, a push reaching a proxy, a config event);
- gauges read from the live server when scraped (`pilot_xds`, `pilot_services`), so they can
  never drift from the truth.

prometheus_client exposes counters with the `_total` suffix (`pilot_xds_pushes_total`), as
Istio's OpenTelemetry exporter does.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshpilot.envoy.names import SHORT_NAMES
from meshpilot.model import PushRequest

if TYPE_CHECKING:
    from meshpilot.xds.discovery import DiscoveryServer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Istio's buckets: pushes and convergence span milliseconds to tens of seconds.
_PUSH_BUCKETS = (0.01, 0.1, 0.5, 1, 3, 5)
_CONVERGENCE_BUCKETS = (0.1, 0.5, 1, 3, 5, 10, 20, 30)
_DEBOUNCE_BUCKETS = (0.01, 0.1, 1, 3, 5, 10, 20, 30)


def short_type(type_url: str) -> str:
    """Istio's `type` label: `cds`, `eds`, `lds`, `rds`."""
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1]).lower()


@dataclass(frozen=True, slots=True)
class PushRecord:
    """The last debounced push, for `/debug/push_status`."""

    at: float
    """Unix time the push started."""
    debounce_seconds: float
    request: PushRequest


class _LiveGauges(Collector):
    def __init__(self, server: DiscoveryServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily(
            "pilot_xds",
            "Number of endpoints connected to this pilot using XDS.",
            labels=["version"],
        )
        versions = Tally(
            str(c.proxy.metadata.get("ISTIO_VERSION") or "unknown")
            for c in list(self.server.connections.values())
        )
        for version, count in sorted(versions.items()):
            connected.add_metric([version], count)
        yield connected
        snapshot = self.server.snapshot
        yield GaugeMetricFamily(
            "pilot_services",
            "Total services known to pilot.",
            value=len(snapshot.services) if snapshot is not None else 0,
        )
        yield GaugeMetricFamily(
            "pilot_virt_services",
            "Total virtual services known to pilot.",
            value=len(snapshot.virtual_services) if snapshot is not None else 0,
        )


class Metrics:
    def __init__(self, server: DiscoveryServer | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.pushes = Counter(
            "pilot_xds_pushes",
            "Pilot build and send errors for lds, rds, cds and eds.",
            ["type"],
            registry=r,
        )
        self.push_time = Histogram(
            "pilot_xds_push_time",
            "Total time in seconds Pilot takes to push lds, rds, cds and eds.",
            ["type"],
            buckets=_PUSH_BUCKETS,
            registry=r,
        )
        self.convergence = Histogram(
            "pilot_proxy_convergence_time",
            "Delay in seconds between config change and a proxy receiving all required "
            "configuration.",
            buckets=_CONVERGENCE_BUCKETS,
            registry=r,
        )
        self.debounce = Histogram(
            "pilot_debounce_time",
            "Delay in seconds between the first config enters debouncing "
            "and the merged push request is pushed into the push queue.",
            buckets=_DEBOUNCE_BUCKETS,
            registry=r,
        )
        self.rejects = Counter(
            "pilot_total_xds_rejects",
            "Total number of XDS responses from pilot rejected by proxy.",
            ["type"],
            registry=r,
        )
        self.triggers = Counter(
            "pilot_push_triggers",
            "Total number of times a push was triggered, labeled by reason for the push.",
            ["type"],
            registry=r,
        )
        self.config_events = Counter(
            "pilot_k8s_cfg_events",
            "Events from the config store.",
            ["type", "event"],
            registry=r,
        )
        self.full_pushes = Counter(
            "pilot_push_full",
            "Debounced pushes, by whether they rebuilt every type.",
            ["full"],
            registry=r,
        )
        self.last_push: PushRecord | None = None
        self._sent: dict[str, tuple[Counter, Histogram]] = {}
        if server is not None:
            r.register(_LiveGauges(server))

    # Events ------------------------------------------------------------------------------------

    def sent(self, type_url: str, seconds: float) -> None:
        """A response was built and queued for one proxy."""
        children = self._sent.get(type_url)
        if children is None:
            # Looked up once per type: `labels()` takes a lock and builds a key every call,
            # and this runs once per response (a thousand times per push).
            label = short_type(type_url)
            children = self._sent[type_url] = (
                self.pushes.labels(label), self.push_time.labels(label)
            )
        children[0].inc()
        children[1].observe(seconds)

    def rejected(self, type_url: str) -> None:
        self.rejects.labels(short_type(type_url)).inc()

    def triggered(self, reasons: Iterable[str]) -> None:
        for reason in reasons:
            self.triggers.labels(str(reason)).inc()

    def debounced(self, request: PushRequest, seconds: float) -> None:
        """A merged push request left debouncing `seconds` after its first event."""
        self.debounce.observe(max(seconds, 0.0))
        self.full_pushes.labels("true" if request.full else "false").inc()
        self.last_push = PushRecord(time.time(), max(seconds, 0.0), request)

    def converged(self, seconds: float) -> None:
        self.convergence.observe(max(seconds, 0.0))

    def config_event(self, kind: str, event: str) -> None:
        self.config_events.labels(kind, event).inc()

    # Exposition --------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
