"""The etcd registry at scale, against a real etcd and a real Envoy.

    .venv/bin/python -m benchmarks.registry_bench [--services 1000] [--instances 10] [--changes 20]

Starts a throw-away etcd (Debian's etcd-server, see scripts/setup) on a free loopback port,
registers N services x K instances the way go-micro does (one JSON key per node, under a lease,
written in transactions of 100 keys), then prints:

1. **adapter**: time from starting the etcd adapter to its first full sync (paged listing at
   one revision, parsing, conversion to services and endpoints), and the time from one instance
   change written to etcd to the catalog's push request (median and worst of `--changes`);
2. **Envoy**: `meshpilot discovery --registry etcd://…` and one sidecar with a real Envoy: time
   until the server is ready (first sync), until the sidecar's Envoy has every cluster with
   all its endpoints, and the time from one instance change written to etcd until the Envoy
   admin API shows the cluster's new membership (an EDS-only push; includes the server's
   100 ms debounce and the 20 ms polling of Envoy's stats).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aetcd
from aetcd import rpc
from tests.registry_servers import EtcdServer

from meshpilot.demo.mesh import Mesh, Workload, http_request, wait_until
from meshpilot.model import PushRequest
from meshpilot.registry.etcd import EtcdRegistry
from meshpilot.registry.urls import parse_registry_url

PREFIX = "/micro/registry/"


def service(s: int) -> str:
    return f"svc-{s:04d}"


def node_value(s: int, i: int) -> bytes:
    return json.dumps({
        "name": service(s), "version": "1.0.0", "metadata": {"team": f"t{s % 7}"},
        "endpoints": [{"name": "Handler.Call", "request": {}, "response": {}, "metadata": {}}],
        "nodes": [{"id": f"{service(s)}-{i}", "address": f"10.{s // 250}.{s % 250}.{i + 1}:8080",
                   "metadata": {"protocol": "http", "server": "http", "registry": "etcd",
                                "transport": "http"}}],
    }).encode()


def key(s: int, i: int) -> bytes:
    return f"{PREFIX}{service(s)}/{service(s)}-{i}".encode()


async def register(port: int, services: int, instances: int) -> float:
    started = time.perf_counter()
    async with aetcd.Client("127.0.0.1", port, timeout=30) as client:
        lease = await client.lease(3600)
        pairs = [(key(s, i), node_value(s, i)) for s in range(services) for i in range(instances)]
        for start in range(0, len(pairs), 100):  # etcd allows 128 operations per transaction
            ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v, lease=lease.id))
                   for k, v in pairs[start:start + 100]]
            await client.kvstub.Txn(rpc.TxnRequest(success=ops), timeout=30)
    return time.perf_counter() - started


class Clock:
    """An Updater noting when the catalog asked for a push."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.at = 0.0

    def config_update(self, request: PushRequest) -> None:
        self.at = time.perf_counter()
        self.event.set()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def adapter_figures(port: int, services: int, changes: int) -> None:
    clock = Clock()
    registry = EtcdRegistry(parse_registry_url(
        f"etcd://127.0.0.1:{port}?layout=go-micro&prefix={PREFIX}"), clock)
    started = time.perf_counter()
    task = asyncio.create_task(registry.run())
    await registry.wait_synced()
    synced = time.perf_counter() - started
    endpoints = sum(len(registry.endpoints(s.hostname, s.namespace))
                    for s in registry.services())
    print(f"adapter: first full sync of {len(registry.services())} services / {endpoints} "
          f"endpoints: {ms(synced)}")
    latencies = []
    async with aetcd.Client("127.0.0.1", port, timeout=10) as client:
        for n in range(changes):
            s = (n * 37) % services
            clock.event.clear()
            written = time.perf_counter()
            await client.put(key(s, 99), node_value(s, 99))  # a new instance
            await clock.event.wait()
            latencies.append(clock.at - written)
            clock.event.clear()
            await client.delete(key(s, 99))
            await clock.event.wait()
    task.cancel()
    print(f"adapter: one instance change → catalog push request: median "
          f"{ms(statistics.median(latencies))}, worst {ms(max(latencies))} ({changes} changes)")


def membership(admin: str, host: str) -> int:
    pattern = urllib.parse.quote(f"{host}.membership_total".replace(".", r"\."))
    status, _, body = http_request(admin, "x", f"/stats?filter={pattern}")
    if status != 200:
        return -1
    for line in body.decode().splitlines():
        if line.startswith(f"cluster.outbound|8080||{host}.membership_total"):
            return int(line.rsplit(":", 1)[1])
    return -1


def envoy_figures(port: int, services: int, instances: int, changes: int, work: Path) -> None:
    mesh = Mesh(work / "mesh", prefix="127.77.0.")
    mesh.config_dir.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        mesh.start_discovery(["--registry",
                              f"etcd://127.0.0.1:{port}?layout=go-micro&prefix={PREFIX}"])
        mesh.wait_ready(120)
        ready = time.perf_counter() - started
        client = Workload("client", mesh.address(10), {"app": "client"}, mesh.address(1))
        started = time.perf_counter()
        mesh.start_workload(client)
        mesh.wait_envoy_ready("client", 120)
        last = f"{service(services - 1)}.default.etcd"
        wait_until(lambda: membership(client.admin_address, last) == instances, 120,
                   "every cluster in Envoy", interval=0.05)
        envoy_full = time.perf_counter() - started
        print(f"envoy: discovery server ready (first registry sync) {ms(ready)}; sidecar "
              f"with all {services} clusters and {services * instances} endpoints {ms(envoy_full)}")
        latencies = []

        async def write(s: int, add: bool) -> None:
            async with aetcd.Client("127.0.0.1", port, timeout=10) as etcd:
                if add:
                    await etcd.put(key(s, 99), node_value(s, 99))
                else:
                    await etcd.delete(key(s, 99))

        for n in range(changes):
            s = (n * 53) % services
            host = f"{service(s)}.default.etcd"
            for add, expected in ((True, instances + 1), (False, instances)):
                written = time.perf_counter()
                asyncio.run(write(s, add))
                wait_until(lambda h=host, e=expected: membership(client.admin_address, h) == e,
                           30, "the change in Envoy", interval=0.02)
                latencies.append(time.perf_counter() - written)
        print(f"envoy: one instance change in etcd → visible in Envoy's EDS: median "
              f"{ms(statistics.median(latencies))}, worst {ms(max(latencies))} "
              f"({len(latencies)} changes)")
    finally:
        mesh.stop()


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="registry-bench-") as tmp:
        server = EtcdServer(Path(tmp) / "etcd")
        server.start()
        try:
            took = asyncio.run(register(server.port, args.services, args.instances))
            print(f"registered {args.services} services x {args.instances} instances "
                  f"(go-micro layout) in {took:.1f} s")
            asyncio.run(adapter_figures(server.port, args.services, args.changes))
            envoy_figures(server.port, args.services, args.instances, args.changes // 2 or 1,
                          Path(tmp))
        finally:
            server.kill()


if __name__ == "__main__":
    main()
