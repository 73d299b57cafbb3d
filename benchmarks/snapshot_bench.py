"""Snapshot build and per-proxy generation cost, without the network.

    .venv/bin/python -m benchmarks.snapshot_bench [--services 1000] [--endpoints 10] [--proxies 100]

Prints: time to build a full snapshot from N ServiceEntries x K WorkloadEntries, time to derive
an endpoint-only snapshot, and time to generate CDS/EDS/LDS/RDS for M sidecars that share
namespace and labels (the serialization cache makes all but the first nearly free) and for M
sidecars with distinct labels.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from meshpilot.config.store import MemoryStore
from meshpilot.envoy.generators import GENERATORS
from meshpilot.envoy.names import CLUSTER, ENDPOINT, LISTENER, ROUTE
from meshpilot.model import Config, Kind, NodeType, Proxy, PushRequest
from meshpilot.model.snapshot import Snapshot
from meshpilot.registry.serviceentry import ServiceEntryRegistry


class _NoPush:
    def config_update(self, request: PushRequest) -> None:
        return None


def _mesh(services: int, endpoints: int) -> tuple[MemoryStore, ServiceEntryRegistry]:
    store = MemoryStore()
    registry = ServiceEntryRegistry(store, _NoPush())
    for s in range(services):
        host = f"svc-{s}.bench.svc.cluster.local"
        store.apply(Config(Kind.SERVICE_ENTRY, f"svc-{s}", "bench", {
            "hosts": [host],
            "ports": [{"number": 8000 + s % 20, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC",
            "workloadSelector": {"labels": {"app": f"svc-{s}"}},
        }))
        for e in range(endpoints):
            store.apply(Config(Kind.WORKLOAD_ENTRY, f"svc-{s}-{e}", "bench", {
                "address": f"10.{s // 250}.{s % 250}.{e + 1}",
                "labels": {"app": f"svc-{s}", "version": f"v{e % 2}"},
            }))
        if s % 10 == 0:
            store.apply(Config(Kind.DESTINATION_RULE, f"svc-{s}", "bench", {
                "host": host,
                "subsets": [{"name": "v0", "labels": {"version": "v0"}},
                            {"name": "v1", "labels": {"version": "v1"}}],
            }))
            store.apply(Config(Kind.VIRTUAL_SERVICE, f"svc-{s}", "bench", {
                "hosts": [host],
                "http": [{"route": [
                    {"destination": {"host": host, "subset": "v0"}, "weight": 90},
                    {"destination": {"host": host, "subset": "v1"}, "weight": 10},
                ]}],
            }))
    return store, registry


def _build(store: MemoryStore, registry: ServiceEntryRegistry, version: str) -> Snapshot:
    services = registry.services()
    eps = [ep for svc in services for ep in registry.endpoints(svc.hostname, svc.namespace)]
    configs = store.list(Kind.VIRTUAL_SERVICE) + store.list(Kind.DESTINATION_RULE)
    return Snapshot.build(version, services, eps, configs)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _generate_all(snapshot: Snapshot, proxy: Proxy) -> int:
    """Generate every type as a subscribed sidecar would; returns bytes produced."""
    clusters = GENERATORS[CLUSTER].generate(snapshot, proxy, None)
    eds_names = [r.name for r in clusters if r.name.startswith("outbound")]
    listeners = GENERATORS[LISTENER].generate(snapshot, proxy, None)
    routes = GENERATORS[ROUTE].generate(snapshot, proxy, [str(8000 + p) for p in range(20)])
    eds = GENERATORS[ENDPOINT].generate(snapshot, proxy, eds_names)
    return sum(len(r.body.value) for group in (clusters, listeners, routes, eds) for r in group)


def _proxy(i: int, shared_labels: bool) -> Proxy:
    labels = {"app": "client"} if shared_labels else {"app": "client", "pod": str(i)}
    return Proxy(id=f"sidecar~10.99.0.{i}~client-{i}.bench~bench.svc.cluster.local",
                 type=NodeType.SIDECAR, namespace="bench", workload_name=f"client-{i}",
                 labels=labels, ip_addresses=(f"10.99.{i // 250}.{i % 250}",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--proxies", type=int, default=100)
    args = parser.parse_args()

    seconds, (store, registry) = _timed(lambda: _mesh(args.services, args.endpoints))
    print(f"mesh: {args.services} services x {args.endpoints} endpoints "
          f"(config store filled in {seconds:.2f}s)")
    build, snapshot = _timed(lambda: _build(store, registry, "v1"))
    print(f"full snapshot build:            {build * 1000:8.1f} ms")
    changed = {"svc-0.bench.svc.cluster.local": registry.endpoints(
        "svc-0.bench.svc.cluster.local", "bench")}
    eds_only, _ = _timed(lambda: snapshot.with_endpoints("v2", changed))
    print(f"endpoint-only snapshot derive:  {eds_only * 1000:8.1f} ms")

    for shared in (True, False):
        fresh = _build(store, registry, "v3")
        proxies = [_proxy(i, shared) for i in range(args.proxies)]
        first, size = _timed(lambda: _generate_all(fresh, proxies[0]))  # noqa: B023
        rest, _ = _timed(lambda: [_generate_all(fresh, p) for p in proxies[1:]])  # noqa: B023
        kind = "identical" if shared else "distinct-label"
        print(f"{kind:>15} sidecars: first {first * 1000:7.1f} ms ({size / 1024:.0f} KiB), "
              f"then {rest / max(args.proxies - 1, 1) * 1000:6.2f} ms each "
              f"over {args.proxies - 1}")


if __name__ == "__main__":
    main()
