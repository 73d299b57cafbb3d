"""Traffic numbers for the console, read from the Envoys' own stats.

A background task (`StatsCollector.run`) asks every connected Envoy for its cluster stats every
`interval` seconds, at its admin address from node metadata (`ADMIN_ADDRESS`):

    GET /stats?format=json&usedonly&histogram_buckets=cumulative&filter=<regex>

`usedonly` leaves out clusters that never carried traffic, and the filter keeps only what the
console reads, so a sidecar with a thousand idle clusters answers in a few kilobytes:

    cluster.outbound|<port>|<subset>|<host>.upstream_rq_total     requests this proxy sent
    cluster.outbound|…|<host>.upstream_rq_<code> / _<N>xx         … by response code
    cluster.outbound|…|<host>.upstream_rq_time                    histogram of their latency (ms)
    cluster.outbound|…|<host>.upstream_cx_total                   connections (TCP services)
    cluster.inbound|<port>||.…                                    the same for requests received

Envoy also writes `cluster.<name>.external.upstream_rq_2xx` (and `.internal.`) for the same
requests; a name like that is told apart from a real cluster whose host ends in `.external` by
the base stats: only real clusters have `upstream_rq_total` and `upstream_cx_total`.

Parsing a large answer happens in a worker thread and requests are bounded (at most
`concurrency` at once, each with a timeout and a size limit), so polling never holds up the
event loop or xDS. Each proxy keeps the samples of the last `window` seconds; a rate is the
difference between the newest and the oldest sample over the time between them (as Prometheus'
`rate()` over a window), latency quantiles come from the difference of the cumulative
histogram buckets. Counters that went down (an Envoy restarted) count from zero.

The admin address is what a proxy claims in its node metadata; the collector only ever sends
that one fixed GET to it, reads at most `MAX_BODY` bytes, and uses nothing it answers other
than these numbers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from meshpilot.console.settings import ConsoleSettings

if TYPE_CHECKING:
    from meshpilot.xds.discovery import DiscoveryServer

log = logging.getLogger("meshpilot.console")

STATS_FILTER = (
    r"^cluster\.(outbound|inbound)\|.*\."
    r"(upstream_rq_(total|[1-5]xx|[1-5][0-9][0-9]|time)|upstream_cx_total)$"
)
STATS_PATH = (
    "/stats?format=json&usedonly&histogram_buckets=cumulative&filter=" + quote(STATS_FILTER)
)
MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ClusterSample:
    """Cumulative counters of one Envoy cluster at one moment."""

    requests: int = 0
    codes: Mapping[str, int] = field(default_factory=dict)
    """Response code (`200`, `503`) → requests."""
    errors: int = 0
    """Requests answered with a 5xx."""
    connections: int = 0
    buckets: tuple[tuple[float, int], ...] = ()
    """Latency histogram: (upper bound in ms, requests at or below it), cumulative."""


@dataclass(frozen=True, slots=True)
class ProxySample:
    at: float
    """time.monotonic() of the answer."""
    clusters: Mapping[str, ClusterSample]


def parse_stats(body: bytes | str) -> dict[str, ClusterSample]:
    """Envoy's `/stats?format=json` answer → cluster name → its sample."""
    data = json.loads(body)
    counters: dict[str, dict[str, int]] = {}
    histograms: dict[str, tuple[tuple[float, int], ...]] = {}
    for entry in data.get("stats", ()):
        if "histograms" in entry:
            for histogram in _histogram_list(entry["histograms"]):
                prefix, _, stat = str(histogram.get("name", "")).rpartition(".")
                if stat == "upstream_rq_time" and prefix.startswith("cluster."):
                    histograms[prefix[len("cluster."):]] = tuple(
                        (float(b["upper_bound"]), int(b.get("cumulative", 0)))
                        for b in histogram.get("buckets", ())
                    )
            continue
        name = entry.get("name")
        if not isinstance(name, str) or not name.startswith("cluster."):
            continue
        prefix, _, stat = name[len("cluster."):].rpartition(".")
        counters.setdefault(prefix, {})[stat] = int(entry.get("value", 0))
    out: dict[str, ClusterSample] = {}
    for cluster, stats in counters.items():
        # Only real clusters have these; `<cluster>.external` and `.internal` do not.
        if "upstream_rq_total" not in stats and "upstream_cx_total" not in stats:
            continue
        codes = {k[len("upstream_rq_"):]: v for k, v in stats.items()
                 if k[len("upstream_rq_"):].isdigit()}
        errors = stats.get("upstream_rq_5xx", sum(v for k, v in codes.items() if k[0] == "5"))
        out[cluster] = ClusterSample(
            requests=stats.get("upstream_rq_total", 0),
            codes=codes,
            errors=errors,
            connections=stats.get("upstream_cx_total", 0),
            buckets=histograms.get(cluster, ()),
        )
    return out


def _histogram_list(value: Any) -> list[dict[str, Any]]:
    # Envoy answers a list of histograms with `histogram_buckets`, else a dict with details.
    if isinstance(value, list):
        return [h for h in value if isinstance(h, dict)]
    if isinstance(value, dict):
        return [h for h in value.get("details", ()) if isinstance(h, dict)]
    return []


# Windows of samples → traffic -------------------------------------------------------------------


@dataclass(slots=True)
class Traffic:
    """Traffic over a window; sums of several clusters or edges add up field by field."""

    seconds: float = 0.0
    requests: int = 0
    """Requests in the window."""
    errors: int = 0
    connections: int = 0
    total: int = 0
    """Requests since the Envoys started (cumulative)."""
    codes: dict[str, int] = field(default_factory=dict)
    buckets: dict[float, int] = field(default_factory=dict)
    """Upper bound (ms) → requests in the window at or below it."""
    rate_sum: float = 0.0
    error_rate_sum: float = 0.0
    cps_sum: float = 0.0

    def add(self, other: Traffic) -> None:
        self.seconds = max(self.seconds, other.seconds)
        self.requests += other.requests
        self.errors += other.errors
        self.connections += other.connections
        self.total += other.total
        for code, n in other.codes.items():
            self.codes[code] = self.codes.get(code, 0) + n
        for bound, n in other.buckets.items():
            self.buckets[bound] = self.buckets.get(bound, 0) + n
        # Rates add up as rates: the windows of different proxies differ slightly.
        self.rate_sum += other.rate_sum
        self.error_rate_sum += other.error_rate_sum
        self.cps_sum += other.cps_sum

    def quantile(self, q: float) -> float | None:
        """Latency (ms) at quantile q, interpolated within its bucket; None without data."""
        bounds = sorted(self.buckets)
        if not bounds:
            return None
        count = self.buckets[bounds[-1]]
        if count <= 0:
            return None
        rank = q * count
        lower, below = 0.0, 0
        for bound in bounds:
            at = self.buckets[bound]
            if at >= rank:
                inside = at - below
                share = (rank - below) / inside if inside else 1.0
                return lower + (bound - lower) * share
            lower, below = bound, at
        return bounds[-1]

    def to_json(self) -> dict[str, Any]:
        p50, p99 = self.quantile(0.5), self.quantile(0.99)
        return {
            "rps": round(self.rate_sum, 4),
            "errorRate": round(self.error_rate_sum / self.rate_sum, 4) if self.rate_sum else 0.0,
            "errorsPerSecond": round(self.error_rate_sum, 4),
            "p50Ms": round(p50, 3) if p50 is not None else None,
            "p99Ms": round(p99, 3) if p99 is not None else None,
            "cps": round(self.cps_sum, 4),
            "requests": self.requests,
            "errors": self.errors,
            "total": self.total,
            "codes": dict(sorted(self.codes.items())),
            "windowSeconds": round(self.seconds, 3),
        }


def _delta(new: int, old: int) -> int:
    return new - old if new >= old else new  # a restarted Envoy counts from zero again


def traffic(old: ClusterSample | None, new: ClusterSample, seconds: float) -> Traffic:
    """What happened on one cluster between two samples `seconds` apart (old None: no
    earlier sample, so no rate yet but the totals)."""
    out = Traffic(seconds=seconds, total=new.requests)
    if old is None or seconds <= 0:
        return out
    out.requests = _delta(new.requests, old.requests)
    out.errors = _delta(new.errors, old.errors)
    out.connections = _delta(new.connections, old.connections)
    out.codes = {c: d for c, n in new.codes.items() if (d := _delta(n, old.codes.get(c, 0)))}
    before = dict(old.buckets)
    out.buckets = {b: _delta(n, before.get(b, 0)) for b, n in new.buckets}
    out.rate_sum = out.requests / seconds
    out.error_rate_sum = out.errors / seconds
    out.cps_sum = out.connections / seconds
    return out


_ZERO = ClusterSample()

# The collector --------------------------------------------------------------------------------

Fetch = Callable[[str], Awaitable[bytes]]
"""Admin address → the stats answer's body."""


@dataclass(frozen=True, slots=True)
class Target:
    proxy: str
    admin: str


class StatsCollector:
    def __init__(
        self,
        server: DiscoveryServer,
        settings: ConsoleSettings | None = None,
        fetch: Fetch | None = None,
    ) -> None:
        self.server = server
        settings = settings or ConsoleSettings()
        self.interval = settings.stats_interval
        self.window = settings.stats_window
        self.timeout = settings.stats_timeout
        self._semaphore = asyncio.Semaphore(max(1, settings.stats_concurrency))
        self._fetch = fetch
        self._session: aiohttp.ClientSession | None = None
        self.samples: dict[str, deque[ProxySample]] = {}
        """Proxy id → samples of the last `window` seconds, oldest first."""
        self.errors: dict[str, str] = {}
        """Proxy id → why its last poll failed."""
        self.rounds = 0
        self.last_round: float = 0.0
        """time.time() of the last completed round."""
        self._round_done = asyncio.Condition()

    # Polling ------------------------------------------------------------------------------------

    def targets(self) -> list[Target]:
        """Connected Envoys with an admin address (proxyless gRPC clients have none)."""
        found: dict[str, Target] = {}
        for connection in list(self.server.connections.values()):
            proxy = connection.proxy
            if proxy.admin_address and not proxy.proxyless:
                found[proxy.id] = Target(proxy.id, _reachable(proxy.admin_address))
        return sorted(found.values(), key=lambda t: t.proxy)

    async def run(self) -> None:
        try:
            while True:
                await self.poll_once()
                await asyncio.sleep(self.interval)
        finally:
            if self._session is not None:
                await self._session.close()

    async def poll_once(self) -> None:
        targets = self.targets()
        await asyncio.gather(*(self._poll(t) for t in targets))
        live = {t.proxy for t in targets}
        for proxy in [p for p in self.samples if p not in live]:
            del self.samples[proxy]  # disconnected: its numbers would only go stale
        for proxy in [p for p in self.errors if p not in live]:
            del self.errors[proxy]
        async with self._round_done:
            self.rounds += 1
            self.last_round = time.time()
            self._round_done.notify_all()

    async def wait_for_rounds(self, count: int) -> None:
        async with self._round_done:
            await self._round_done.wait_for(lambda: self.rounds >= count)

    async def _poll(self, target: Target) -> None:
        async with self._semaphore:
            try:
                async with asyncio.timeout(self.timeout):
                    body = await self._get(target.admin)
                clusters = await asyncio.to_thread(parse_stats, body)
            except (TimeoutError, OSError, aiohttp.ClientError, ValueError) as error:
                text = str(error) or type(error).__name__
                if self.errors.get(target.proxy) != text:
                    log.debug("stats of %s at %s: %s", target.proxy, target.admin, text)
                self.errors[target.proxy] = text
                return
        self.errors.pop(target.proxy, None)
        self.add_sample(target.proxy, ProxySample(time.monotonic(), clusters))

    async def _get(self, admin: str) -> bytes:
        if self._fetch is not None:
            return await self._fetch(admin)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://{admin}{STATS_PATH}") as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            body = await response.content.read(MAX_BODY + 1)
            if len(body) > MAX_BODY:
                raise ValueError(f"stats answer larger than {MAX_BODY} bytes")
            return body

    def add_sample(self, proxy: str, sample: ProxySample) -> None:
        """Keep a sample (also how tests feed synthetic numbers in), dropping those that
        fell out of the window — but always the newest two, so a rate remains."""
        samples = self.samples.setdefault(proxy, deque())
        samples.append(sample)
        while len(samples) > 2 and sample.at - samples[1].at >= self.window:
            samples.popleft()

    # Reading ------------------------------------------------------------------------------------

    def proxy_traffic(self, proxy: str) -> dict[str, Traffic]:
        """Cluster name → its traffic over the window, for one proxy."""
        samples = self.samples.get(proxy)
        if not samples:
            return {}
        newest = samples[-1]
        oldest = samples[0] if len(samples) > 1 else None
        seconds = newest.at - oldest.at if oldest is not None else 0.0
        if oldest is None:
            return {name: traffic(None, sample, 0.0) for name, sample in newest.clusters.items()}
        # A cluster missing from the older sample had no traffic then (`usedonly`): from zero.
        return {
            name: traffic(oldest.clusters.get(name, _ZERO), sample, seconds)
            for name, sample in newest.clusters.items()
        }

    def latest(self, proxy: str) -> Mapping[str, ClusterSample]:
        samples = self.samples.get(proxy)
        return samples[-1].clusters if samples else {}

    def status(self) -> dict[str, Any]:
        return {
            "intervalSeconds": self.interval,
            "windowSeconds": self.window,
            "rounds": self.rounds,
            "lastRound": self.last_round or None,
            "proxies": len(self.samples),
            "errors": dict(sorted(self.errors.items())),
        }


def _reachable(address: str) -> str:
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "", "[::]", "::"):
        host = "127.0.0.1"  # bound to every address: reach it on loopback
    return f"{host}:{port}"


def total_traffic(items: Iterable[Traffic]) -> Traffic:
    out = Traffic()
    for item in items:
        out.add(item)
    return out
