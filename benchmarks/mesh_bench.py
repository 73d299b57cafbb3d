"""Mesh-scale benchmark: meshpilot against simulated proxies, a floor, and real Envoys.

    .venv/bin/python -m benchmarks.mesh_bench [--services 1000] [--endpoints 10]
        [--proxies 1000] [--sim-procs 4] [--xds sotw|delta] [--workers 1[,2,...]]
        [--reps 5] [--envoys 5] [--no-reference] [--sidecar-visible 0]

What it does, in one run:

1. writes N services x K endpoints as files in a temporary directory (meshgen.py) and times
   a full snapshot build and an endpoint-only derive in this process, with the server's code;
2. for each `--workers` value, starts `meshpilot discovery --workers W` on that directory and
   M simulated proxies in `--sim-procs` processes (simproxy.py); measures the initial sync,
   server memory per connected proxy (PSS of the server's processes with M proxies minus
   before any), idle CPU over five seconds, and then each churn scenario `--reps` times:
   endpoint change (a WorkloadEntry moves), VirtualService change (weights), new service;
3. runs the floor (refserver.py) with the same fleet, replaying the bytes meshpilot sent in
   each repetition, and prints meshpilot's figures as ratios to it (SotW only);
4. runs `--envoys` real Envoys (`meshpilot proxy sidecar`) against a fresh server and times
   the same scenarios from the server's ACK records (`/debug/syncz`).

Per scenario it prints: latency from the change (file written) to every proxy having ACKed
(p50, p99, max over proxies and repetitions), server CPU seconds per push (all its processes),
KiB sent per push (summed over proxies), proxies reached, and responses per push.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import procstat
from benchmarks.fleet import Fleet, Outcome, run_scenario
from benchmarks.meshgen import NAMESPACE, Mesh

SCENARIOS = ("endpoint", "virtualservice", "service")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def meshpilot_command() -> list[str]:
    return [sys.executable, "-c", "from meshpilot.cli.main import app; app()"]


def discovery_command() -> list[str]:
    """`meshpilot discovery` on its own, so work in progress on other commands cannot stop a
    benchmark run."""
    return [sys.executable, "-c",
            "import typer; from meshpilot.cli.discovery import discovery; typer.run(discovery)"]


class MeshpilotServer:
    """`meshpilot discovery` in its own process, on free ports."""

    def __init__(self, config_dir: Path, debounce: float, workers: int, log: Path,
                 rest: bool = False, extra: tuple[str, ...] = ()) -> None:
        self.xds_port = free_port()
        self.debug_port = free_port()
        self.rest_port = free_port()
        command = [
            *discovery_command(), "--config-dir", str(config_dir),
            "--xds-address", f"127.0.0.1:{self.xds_port}",
            "--debug-address", f"127.0.0.1:{self.debug_port}",
            "--controlz-address", f"127.0.0.1:{free_port()}",
            "--console-address", f"127.0.0.1:{free_port()}",
            "--debounce-after", str(debounce), "--log-level", "warning",
        ]
        if workers > 1:
            command += ["--workers", str(workers)]
        if rest:
            command += ["--rest-address", f"127.0.0.1:{self.rest_port}"]
        command += extra
        self._log = log.open("ab")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"meshpilot exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.debug_port}/ready", timeout=1
                ) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError("meshpilot not ready")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.debug_port}{path}") as answer:
            return json.load(answer)

    def stop(self) -> None:
        stop_process(self.process, 10)
        self._log.close()


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Terminate, and kill if it has not exited within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def idle_cpu(pid: int, seconds: float = 5.0) -> float:
    """CPU seconds per second the server uses with no change at all."""
    pids = procstat.tree(pid)
    before = procstat.cpu_seconds(pids)
    time.sleep(seconds)
    return (procstat.cpu_seconds(pids) - before) / seconds


def snapshot_build_times(config_dir: Path) -> dict[str, float]:
    """Full snapshot build and endpoint-only derive, with the server's own code (ms, median
    of five). Inside a loop because the store's handlers queue push requests on it."""
    import asyncio

    async def measure() -> dict[str, float]:
        return _snapshot_build_times(config_dir)

    return asyncio.run(measure())


def _snapshot_build_times(config_dir: Path) -> dict[str, float]:
    from meshpilot.config.filestore import FileConfigStore
    from meshpilot.registry.aggregate import AggregateRegistry
    from meshpilot.registry.serviceentry import ServiceEntryRegistry
    from meshpilot.xds.discovery import DiscoveryServer

    store = FileConfigStore([config_dir])
    aggregate = AggregateRegistry()
    server = DiscoveryServer(store, aggregate)
    aggregate.add(ServiceEntryRegistry(store, server))
    store.load()
    full, derive = [], []
    snapshot = server._build_full()
    host = next(iter(snapshot.services.values()))
    for _ in range(5):
        start = time.perf_counter()
        snapshot = server._build_full()
        full.append(time.perf_counter() - start)
        start = time.perf_counter()
        server._build_endpoints(snapshot, [(host.namespace, host.hostname)])
        derive.append(time.perf_counter() - start)
    return {"full_ms": statistics.median(full) * 1000, "eds_ms": statistics.median(derive) * 1000}


Change = Callable[[int], object]


def run_fleet(
    name: str,
    target: str,
    server_pid: int,
    args: argparse.Namespace,
    changes: dict[str, Change],
    baseline_pss: int,
) -> tuple[dict[str, Any], dict[str, Outcome], Fleet]:
    fleet = Fleet(target, args.proxies, args.sim_procs, NAMESPACE, args.xds == "delta")
    try:
        sync = fleet.wait_synced(args.quiet, timeout=600)
        # What the first proxy holds now is the initial state the floor serves.
        initial = [c for reply in fleet.ask("capture") for c in reply]
        time.sleep(1.0)
        pss = procstat.pss_bytes(procstat.tree(server_pid))
        summary: dict[str, Any] = {
            "name": name,
            "initial_sync_s": sync,
            "pss_per_proxy_kib": (pss - baseline_pss) / args.proxies / 1024,
            "pss_total_mib": pss / 2**20,
            "idle_cpu": idle_cpu(server_pid, args.idle_seconds),
            "initial_capture": initial,
        }
        outcomes = {}
        for scenario in args.scenarios:
            outcomes[scenario] = run_scenario(
                fleet, server_pid, changes[scenario], args.reps, args.quiet,
                expected=args.proxies,
            )
    except BaseException:
        fleet.stop()
        raise
    return summary, outcomes, fleet


def print_table(title: str, summary: dict[str, Any], outcomes: dict[str, Outcome],
                floor: dict[str, Outcome] | None = None) -> None:
    print(f"\n== {title}")
    print(f"   initial sync of all proxies {summary['initial_sync_s']:.2f} s; "
          f"server PSS {summary['pss_total_mib']:.0f} MiB, "
          f"{summary['pss_per_proxy_kib']:.1f} KiB per connected proxy; "
          f"idle CPU {summary['idle_cpu'] * 100:.2f}% of a core")
    print(f"   {'scenario':<15}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'CPU s':>8}"
          f"{'KiB/push':>11}{'reached':>9}{'resp':>7}" + ("   CPU x floor" if floor else ""))
    for scenario, outcome in outcomes.items():
        row = outcome.row()
        line = (f"   {scenario:<15}{row['p50_ms']:9.0f}{row['p99_ms']:9.0f}{row['max_ms']:9.0f}"
                f"{row['cpu_s']:8.3f}{row['kib']:11.0f}{row['reached']:9d}"
                f"{row['responses']:7.0f}")
        if floor and scenario in floor:
            base = floor[scenario].row()
            cpu, p99 = row["cpu_s"] / base["cpu_s"], row["p99_ms"] / base["p99_ms"]
            line += f"   {cpu:5.2f}x (p99 {p99:.2f}x)"
        print(line)


def bench_meshpilot(args: argparse.Namespace, mesh: Mesh, workers: int,
                    log: Path) -> tuple[dict[str, Any], dict[str, Outcome]]:
    root = mesh.root
    server = MeshpilotServer(root, args.debounce, workers, log,
                             extra=tuple(args.server_args.split()))
    try:
        server.wait_ready()
        time.sleep(1.0)
        baseline = procstat.pss_bytes(procstat.tree(server.pid))
        changes: dict[str, Change] = {
            "endpoint": lambda _: mesh.change_endpoint(),
            "virtualservice": lambda _: mesh.change_virtual_service(),
            "service": lambda _: mesh.add_service(),
        }
        summary, outcomes, fleet = run_fleet(
            f"meshpilot --workers {workers}", f"127.0.0.1:{server.xds_port}", server.pid, args,
            changes, baseline,
        )
        fleet.stop()
        return summary, outcomes
    finally:
        server.stop()


def bench_reference(args: argparse.Namespace, initial: list[tuple[str, bytes]],
                    captured: dict[str, Outcome]) -> tuple[dict[str, Any], dict[str, Outcome]]:
    import multiprocessing

    from benchmarks import refserver

    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=refserver.main, args=(theirs, "127.0.0.1:0"), daemon=True)
    process.start()
    pid, port = ours.recv()
    state: dict[str, bytes] = {}
    for type_url, body in initial:
        state[type_url] = body
    ours.send(("state", state))
    ours.recv()
    time.sleep(1.0)
    baseline = procstat.pss_bytes([pid])

    def replay(scenario: str) -> Change:
        def push(rep: int) -> None:
            ours.send(("push", captured[scenario].captures[rep]))
            ours.recv()
        return push

    try:
        summary, outcomes, fleet = run_fleet(
            "floor (bare grpc.aio ADS, pre-serialized bytes)", f"127.0.0.1:{port}", pid, args,
            {s: replay(s) for s in captured}, baseline,
        )
        fleet.stop()
        return summary, outcomes
    finally:
        ours.send(("stop",))
        process.join(10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--proxies", type=int, default=1000)
    parser.add_argument("--sim-procs", type=int, default=4)
    parser.add_argument("--xds", choices=("sotw", "delta"), default="sotw")
    parser.add_argument("--workers", default="1",
                        help="comma-separated `meshpilot discovery --workers` values to run")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--debounce", type=float, default=0.05)
    parser.add_argument("--quiet", type=float, default=1.0,
                        help="a push is over once no proxy ACKed for this long (seconds)")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--envoys", type=int, default=5, help="real Envoys (0: skip)")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--sidecar-visible", type=int, default=0,
                        help="a Sidecar limits every proxy to this many services (0: none)")
    parser.add_argument("--server-args", default="",
                        help="more `meshpilot discovery` options, e.g. '--no-analysis'")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    args.scenarios = [s for s in args.scenarios.split(",") if s]

    workdir = Path(tempfile.mkdtemp(prefix="meshbench-"))
    root = workdir / "mesh"
    log = workdir / "server.log"
    print(f"mesh: {args.services} services x {args.endpoints} endpoints, {args.proxies} "
          f"{args.xds} proxies in {args.sim_procs} processes; debounce {args.debounce}s; "
          f"files and logs in {workdir}")
    mesh = Mesh(root, args.services, args.endpoints, args.sidecar_visible)
    mesh.write()
    times = snapshot_build_times(root)
    print(f"snapshot build: full {times['full_ms']:.0f} ms, endpoint-only derive "
          f"{times['eds_ms']:.2f} ms")

    results = []
    for workers in [int(w) for w in args.workers.split(",")] if args.proxies else []:
        summary, outcomes = bench_meshpilot(args, mesh, workers, log)
        results.append((workers, summary, outcomes))
        print_table(summary["name"], summary, outcomes)

    if results and not args.no_reference and args.xds == "sotw":
        workers, summary, outcomes = results[0]
        floor_summary, floor = bench_reference(args, summary["initial_capture"], outcomes)
        print_table(floor_summary["name"], floor_summary, floor)
        for _workers, summary, outcomes in results:
            print_table(f"{summary['name']} relative to the floor", summary, outcomes, floor)
        print(f"   memory per proxy x floor: "
              f"{results[0][1]['pss_per_proxy_kib'] / floor_summary['pss_per_proxy_kib']:.2f}")

    if args.envoys:
        from benchmarks.envoy_run import run as run_envoys

        run_envoys(args, mesh, workdir)
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
