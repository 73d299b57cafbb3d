"""Analysis inside the discovery server: a running mesh says what is wrong with its config.

One task per server (`ServerAnalysis.run`), off the push path:

1. wait until the server has pushed a state newer than the one last analyzed (every config or
   registry change ends in a push, so the push counter is the change signal, already
   debounced by the server);
2. wait for a short quiet period more (`quiet` seconds without a further push, at most
   `max_delay` after the first), so a burst of endpoint updates costs one analysis;
3. capture the inputs on the event loop, where stores and registries live, and run the
   analyzers in a worker thread (`asyncio.to_thread`): analysis of a large mesh takes a while
   and must never hold up xDS;
4. publish the result as one immutable `Report` (readers never see half an analysis).

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
from meshpilot.analysis.live import analyze_inputs, capture
from meshpilot.analysis.meshconfig import MeshConfig
from meshpilot.analysis.message import Message
from meshpilot.analysis.messages import message_type
from meshpilot.analysis.output import as_dict
from meshpilot.analysis.resource import Collection, Resource
from meshpilot.config.kinds import NETWORKING_GROUP
from meshpilot.model import ConfigError

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


class ServerAnalysis:
    def __init__(
        self,
        server: DiscoveryServer,
        *,
        analyzers: Sequence[Analyzer] = ALL,
        mesh: MeshConfig | None = None,
        quiet: float = 0.5,
        max_delay: float = 5.0,
    ) -> None:
        self.server = server
        self.analyzers = tuple(analyzers)
        self.mesh = mesh
        """None: the server's own mesh config (`--mesh-config`), read at every analysis."""
        self.quiet = quiet
        self.max_delay = max_delay
        self.report: Report | None = None
        self.runs = 0
        self._analyzed_push = -1
        self._done = asyncio.Condition()
        server.metrics.registry.register(_Gauge(self))

    # The task ---------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.server.ready.wait()
        while True:
            await self.server.wait_for_push(self._analyzed_push + 1)
            await self._settle()
            try:
                await self.analyze_now()
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

    async def analyze_now(self) -> Report:
        """Analyze the server's current state and publish the result."""
        push = self.server.push_count
        version = self.server.snapshot.version if self.server.snapshot is not None else ""
        inputs = capture(self.server.store.all(), self.server.registry)
        start = time.monotonic()
        messages = await asyncio.to_thread(
            analyze_inputs, inputs, analyzers=self.analyzers, mesh=self._mesh())
        seconds = time.monotonic() - start
        by_resource: dict[str, list[Message]] = {}
        for message in messages:
            by_resource.setdefault(message.origin, []).append(message)
        report = Report(version, time.time(), seconds, tuple(messages),
                        {k: tuple(v) for k, v in by_resource.items()})
        log.info("analysis of %s: %d messages in %.0f ms", version or "initial state",
                 len(messages), seconds * 1000)
        async with self._done:
            self.report = report
            self._analyzed_push = push
            self.runs += 1
            self._done.notify_all()
        return report

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
