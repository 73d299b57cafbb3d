"""The same scenarios with real Envoys (`meshpilot proxy sidecar`, small M).

A real Envoy cannot report its ACK times to the benchmark, but the server records them: each
type's `since` in `/debug/syncz` is when the proxy last ACKed it (wall clock). A repetition
notes the time, makes the change, and polls `/debug/syncz` until every Envoy has ACKed
something after that time, every type is SYNCED, and nothing new was ACKed for a quiet period;
an Envoy's latency is its latest ACK minus the change time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks import procstat
from benchmarks.mesh_bench import MeshpilotServer, free_port, meshpilot_command
from benchmarks.meshgen import NAMESPACE, Mesh

_TYPES = ("CDS", "LDS", "EDS", "RDS")


def _acks(status: list[dict[str, Any]]) -> dict[str, tuple[float, bool]]:
    """Proxy id → (latest ACK time, every type SYNCED)."""
    out = {}
    for proxy in status:
        types = [proxy.get(t) or {} for t in _TYPES]
        latest = max((t.get("since") or 0.0 for t in types), default=0.0)
        out[proxy["proxy"]] = (float(latest), all(t.get("status") == "SYNCED" for t in types))
    return out


def run(args: argparse.Namespace, mesh: Mesh, workdir: Path) -> None:
    """`mesh` is the benchmark's: it knows which changes earlier runs already made."""
    server = MeshpilotServer(mesh.root, args.debounce, 1, workdir / "server-envoy.log",
                             extra=tuple(args.server_args.split()))
    envoys: list[subprocess.Popen[bytes]] = []
    try:
        server.wait_ready()
        for i in range(args.envoys):
            ip = f"127.0.40.{i + 1}"
            envoys.append(subprocess.Popen(
                [*meshpilot_command(), "proxy", "sidecar",
                 "--discovery-address", f"127.0.0.1:{server.xds_port}",
                 "--namespace", NAMESPACE, "--workload-name", f"envoy-{i}",
                 "--labels", "app=loadgen", "--ip", ip, "--outbound-bind", ip,
                 "--admin-port", str(free_port()), "--config-path", str(workdir / f"envoy-{i}")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        deadline = time.monotonic() + 120
        while True:
            acks = _acks(server.get("/debug/syncz"))
            if len(acks) == args.envoys and all(ok for _, ok in acks.values()):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"Envoys not synced: {acks}")
            time.sleep(0.2)
        time.sleep(args.quiet)
        print(f"\n== {args.envoys} real Envoys (SotW, `meshpilot proxy sidecar`), "
              f"latency from the server's ACK records")
        print(f"   {'scenario':<15}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'CPU s':>8}")
        changes = {"endpoint": mesh.change_endpoint,
                   "virtualservice": mesh.change_virtual_service, "service": mesh.add_service}
        for scenario in args.scenarios:
            latencies: list[float] = []
            cpu: list[float] = []
            for _ in range(args.reps):
                pids = procstat.tree(server.pid)
                before = procstat.cpu_seconds(pids)
                t0 = time.time()
                changes[scenario]()
                last_change = time.monotonic()
                latest: dict[str, float] = {}
                while True:
                    time.sleep(0.05)
                    acks = _acks(server.get("/debug/syncz"))
                    fresh = {p: t for p, (t, _) in acks.items() if t > t0}
                    if fresh != latest:
                        latest, last_change = fresh, time.monotonic()
                    synced = all(ok for _, ok in acks.values())
                    if (len(latest) == args.envoys and synced
                            and time.monotonic() - last_change >= args.quiet):
                        break
                    if time.time() - t0 > 120:
                        raise TimeoutError(f"Envoys did not ACK {scenario}: {acks}")
                cpu.append(procstat.cpu_seconds(pids) - before)
                latencies.extend(t - t0 for t in latest.values())
            lat = sorted(latencies)
            print(f"   {scenario:<15}{statistics.median(lat) * 1000:9.0f}"
                  f"{lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000:9.0f}"
                  f"{lat[-1] * 1000:9.0f}{statistics.mean(cpu):8.3f}")
    finally:
        for envoy in envoys:
            envoy.terminate()
        for envoy in envoys:
            try:
                envoy.wait(10)
            except subprocess.TimeoutExpired:
                envoy.kill()
        server.stop()
