"""Analysis inside the discovery server: a running mesh says what is wrong with its config.

One task per server (`ServerAnalysis.run`), off the push path:

1. wait until the server has pushed a state newer than the one last analyzed (every config or
   registry change ends in a push, so the push counter is the change signal, already
   debounced by the server);
2. wait for a short quiet period more (`quiet` seconds without a further push, at most
   `max_delay` after the first), so a burst of endpoint updates costs one analysis;
3. rate-limit: an analysis starts at least `min_interval` seconds after the previous one
   ended, and when every push since then was endpoint-only (EDS), at least
   `endpoint_interval` after it, running only the analyzers that read endpoints
   (`reads_endpoints`) and keeping the other analyzers' messages from the last run. Endpoint
   churn is the bulk of a large mesh's pushes; analyzing the whole config on each of them cost
   more CPU than the pushes themselves (and kept a 1,000-service server busy between them);
4. capture the inputs on the event loop, where stores and registries live (the analysis
   Resource of a config is kept while the config object is unchanged, so a capture of an
   unchanged store is a walk over it), and run the analyzers in a worker thread
   (`asyncio.to_thread`): analysis of a large mesh takes a while and must never hold up xDS;
5. publish the result as one immutable `Report` (readers never see half an analysis).

What it publishes: `/debug/analyze` (every message, and per resource), the `analysis` entry of
each `/debug/configz` config, and the gauge `meshpilot_analysis_messages{level,code}`.
Documents the config store rejected are not in its config, so they cannot be analyzed; they
are reported alongside as IST0106 (SchemaValidationError) with their file and line, read from
the store at the moment of asking, so they are never stale.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshpilot.analysis.analyzer import Analyzer
from meshpilot.analysis.analyzers import ALL
from meshpilot.analysis.live import ServerInputs, analyze_inputs, resource_from_config
from meshpilot.analysis.meshconfig import MeshConfig
from meshpilot.analysis.message import Message
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.output import as_dict
from meshpilot.analysis.registries import read_registries
from meshpilot.analysis.resource import WORKLOAD_ENTRY, Collection, Resource
from meshpilot.analysis.run import deduplicate
from meshpilot.config.kinds import NETWORKING_GROUP
from meshpilot.model import Config, ConfigError

if TYPE_CHECKING:
    from meshpilot.xds.discovery import DiscoveryServer

log = logging.getLogger("meshpilot.analysis")

SCHEMA_ERROR = message_type("SchemaValidationError")
METRIC = "meshpilot_analysis_messages"


@dataclass(frozen=True)
class Report:
    """One completed analysis of one server state."""

    version: str
    """The snapshot version analyzed."""
    finished_at: float
    seconds: float
    messages: tuple[Message, ...] = ()
    by_resource: dict[str, tuple[Message, ...]] = field(default_factory=dict)
    """`Kind namespace/name` → its messages."""
    config_messages: tuple[Message, ...] = ()
    """The messages of the analyzers that do not read endpoints (kept by endpoint-only runs)."""
    endpoint_only: bool = False
    """Whether this run re-ran only the analyzers that read endpoints."""


def reads_endpoints(analyzer: Analyzer) -> bool:
    """Whether an analyzer's result can change when only endpoints change: it reads
    WorkloadEntries, or reads the registries alone (no config inputs)."""
    return WORKLOAD_ENTRY in analyzer.inputs or not analyzer.inputs


class ServerAnalysis:
    def __init__(
        self,
        server: DiscoveryServer,
        *,
        analyzers: Sequence[Analyzer] = ALL,
        mesh: MeshConfig | None = None,
        quiet: float = 0.5,
        max_delay: float = 5.0,
        min_interval: float = 2.0,
        endpoint_interval: float = 30.0,
    ) -> None:
        self.server = server
        self.analyzers = tuple(analyzers)
        self.endpoint_analyzers = tuple(a for a in self.analyzers if reads_endpoints(a))
        self.config_analyzers = tuple(a for a in self.analyzers if not reads_endpoints(a))
        self.min_interval = min_interval
        self.endpoint_interval = endpoint_interval
        self.mesh = mesh
        """None: the server's own mesh config (`--mesh-config`), read at every analysis."""
        self.quiet = quiet
        self.max_delay = max_delay
        self.report: Report | None = None
        self.runs = 0
        self.endpoint_runs = 0
        """How many runs were endpoint-only (a count for tests)."""
        self._analyzed_push = -1
        self._analyzed_full = -1
        self._finished = float("-inf")
        """Event-loop time the last run ended (rate limiting)."""
        self._resources: dict[int, tuple[Config, Resource]] = {}
        self._done = asyncio.Condition()
        server.metrics.registry.register(_Gauge(self))

    # The task ---------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.server.ready.wait()
        while True:
            await self.server.wait_for_push(self._analyzed_push + 1)
            await self._settle()
            endpoint_only = await self._wait_turn()
            if endpoint_only and not self.endpoint_analyzers:
                self._analyzed_push = self.server.push_count  # nothing reads endpoints
                continue
            try:
                await self.analyze_now(endpoint_only=endpoint_only)
            except Exception:
                # Analysis is an aid: a failure must never stop the control plane (this task
                # runs in the server's TaskGroup). Mark the state seen and wait for the next.
                log.exception("configuration analysis failed")
                self._analyzed_push = self.server.push_count

    async def _settle(self) -> None:
        """Wait until no push came for `quiet` seconds, or `max_delay` passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay
        seen = self.server.push_count
        while (left := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(min(self.quiet, left)):
                    await self.server.wait_for_push(seen + 1)
            except TimeoutError:
                return
            seen = self.server.push_count

    def _endpoint_only(self) -> bool:
        """Whether every push since the last analysis was endpoint-only."""
        return self.report is not None and self.server.full_push_count <= self._analyzed_full

    async def _wait_turn(self) -> bool:
        """Wait out the rate limit; returns whether the run may be endpoint-only. A config
        change arriving while an endpoint-only run waits shortens the wait to `min_interval`."""
        loop = asyncio.get_running_loop()
        while True:
            endpoint_only = self._endpoint_only()
            interval = self.endpoint_interval if endpoint_only else self.min_interval
            left = self._finished + interval - loop.time()
            if left <= 0:
                return endpoint_only
            if not endpoint_only:
                await asyncio.sleep(left)
                continue
            try:
                async with asyncio.timeout(left):
                    await self.server.wait_for(
                        lambda: self.server.full_push_count > self._analyzed_full)
            except TimeoutError:
                pass

    async def analyze_now(self, *, endpoint_only: bool = False) -> Report:
        """Analyze the server's current state and publish the result. `endpoint_only` re-runs
        only the analyzers that read endpoints, keeping the others' last messages."""
        push, full = self.server.push_count, self.server.full_push_count
        previous = self.report
        endpoint_only = endpoint_only and previous is not None
        version = self.server.snapshot.version if self.server.snapshot is not None else ""
        inputs = self._capture()
        mesh = self._mesh()
        start = time.monotonic()
        if endpoint_only:
            assert previous is not None
            config_messages = previous.config_messages
        else:
            config_messages = tuple(await asyncio.to_thread(
                analyze_inputs, inputs, analyzers=self.config_analyzers, mesh=mesh))
        endpoint_messages = await asyncio.to_thread(
            analyze_inputs, inputs, analyzers=self.endpoint_analyzers, mesh=mesh)
        messages = deduplicate([*config_messages, *endpoint_messages])
        seconds = time.monotonic() - start
        by_resource: dict[str, list[Message]] = {}
        for message in messages:
            by_resource.setdefault(message.origin, []).append(message)
        report = Report(version, time.time(), seconds, tuple(messages),
                        {k: tuple(v) for k, v in by_resource.items()},
                        config_messages, endpoint_only)
        log.info("analysis of %s%s: %d messages in %.0f ms", version or "initial state",
                 " (endpoint analyzers)" if endpoint_only else "", len(messages),
                 seconds * 1000)
        async with self._done:
            self.report = report
            self._analyzed_push = push
            self._analyzed_full = full
            self._finished = asyncio.get_running_loop().time()
            self.runs += 1
            self.endpoint_runs += endpoint_only
            self._done.notify_all()
        return report

    def _capture(self) -> ServerInputs:
        """The server's inputs (on the event loop: stores and registries are mutated there).
        Configs are immutable, so each one's analysis Resource is kept while it is current."""
        kept, made = self._resources, {}
        for config in sorted(self.server.store.all(), key=lambda c: c.key):
            found = kept.get(id(config))
            if found is None or found[0] is not config:
                found = (config, resource_from_config(config))
            made[id(config)] = found
        self._resources = made
        return ServerInputs([r for _, r in made.values()],
                            read_registries(self.server.registry, config_derived=False))

    def _mesh(self) -> MeshConfig:
        if self.mesh is not None:
            return self.mesh
        # Judge config against the mesh config the server serves with (extension providers,
        # ingress mode, …); a server without one uses Istio's defaults.
        served = getattr(self.server, "mesh", None)
        return served if isinstance(served, MeshConfig) else MeshConfig()

    async def wait_for_run(self, count: int) -> Report:
        """Wait until at least `count` analyses have completed (for tests and tools)."""
        async with self._done:
            await self._done.wait_for(lambda: self.runs >= count)
        assert self.report is not None
        return self.report

    # What it tells ------------------------------------------------------------------------------

    def rejected(self) -> list[Message]:
        """The store's rejected documents, as the IST0106 messages istioctl would give them."""
        return [m for e in self.server.store.errors() if (m := rejected_message(e)) is not None]

    def messages(self) -> list[Message]:
        analyzed = list(self.report.messages) if self.report is not None else []
        return [*self.rejected(), *analyzed]

    def for_resource(self, kind: str, namespace: str, name: str) -> list[dict[str, Any]]:
        ref = f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
        analyzed = self.report.by_resource.get(ref, ()) if self.report is not None else ()
        return [as_dict(m) for m in analyzed]

    def topic(self) -> dict[str, Any]:
        report = self.report
        messages = self.messages()
        by_resource: dict[str, list[dict[str, Any]]] = {}
        for message in messages:
            by_resource.setdefault(message.origin or "", []).append(as_dict(message))
        return {
            "analyzed": report is not None,
            "version": report.version if report is not None else "",
            "analyzedAt": report.finished_at if report is not None else None,
            "durationSeconds": round(report.seconds, 6) if report is not None else None,
            "counts": dict(sorted(Counter(m.level.label for m in messages).items())),
            "messages": [as_dict(m) for m in messages],
            "resources": by_resource,
            "unidentified": [
                {"file": e.file, "line": e.line, "message": e.message}
                for e in self.server.store.errors() if e.key is None
            ],
        }


def rejected_message(error: ConfigError) -> Message | None:
    """IST0106 for a rejected document that names its resource (others cannot carry one)."""
    if error.key is None:
        return None
    kind, namespace, name = error.key
    resource = Resource(Collection(NETWORKING_GROUP, kind), "", name, namespace, {},
                        file=error.file, line=error.line)
    text = f"{error.field}: {error.message}" if error.field else error.message
    return Message(SCHEMA_ERROR, (text,), resource, error.line)


class _Gauge(Collector):
    """`meshpilot_analysis_messages{level,code}`, read from the latest report when scraped."""

    def __init__(self, analysis: ServerAnalysis) -> None:
        self.analysis = analysis

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            METRIC,
            "Current configuration analysis messages, by level and code "
            "(rejected documents count as SchemaValidationError).",
            labels=["level", "code"],
        )
        counts = Counter((m.level.label, m.code) for m in self.analysis.messages())
        for (level, code), count in sorted(counts.items()):
            gauge.add_metric([level, code], count)
        yield gauge
