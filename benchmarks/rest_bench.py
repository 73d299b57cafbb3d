"""REST-JSON xDS throughput: meshpilot against sovereign, serving the same clusters.

    .venv/bin/python -m benchmarks.rest_bench [--services 200] [--endpoints 10]
        [--clients 32] [--seconds 10] [--no-sovereign] [--sovereign-workers 1]

What it does:

1. writes N services x K endpoints (meshgen.py) and starts `meshpilot discovery` on them with
   REST xDS; fetches the clusters a sidecar gets (`POST /v3/discovery:clusters`);
2. unless --no-sovereign, installs sovereign (a Python control plane that speaks REST xDS
   only) into its own venv on first use, and starts it with a file source holding exactly those
   cluster resources and a Python template that returns them, so both serve the same content;
3. per server, K concurrent clients POST the same DiscoveryRequest for D seconds, twice:
   "full" (empty version_info: the whole response every time) and "current" (version_info the
   server returned: both answer 304 Not Modified without a body).

Per server and case it prints requests per second, latency p50/p99, the statuses seen, the
server's CPU (all its processes, in cores) and the load generator's own CPU, and the number
of clusters the server returned. The load generator runs in this process: when its CPU is
near one core it, not the server, is the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import procstat
from benchmarks.mesh_bench import MeshpilotServer, free_port, stop_process
from benchmarks.meshgen import NAMESPACE, Mesh

SOVEREIGN = "sovereign[orjson]==0.32.12"
"""orjson is sovereign's own extra: with it installed sovereign renders responses with it
instead of the standard library's json, its fastest configuration."""

SOVEREIGN_VENV = Path(__file__).resolve().parent.parent / ".bench-venv-sovereign"
CLUSTERS_PATH = "/v3/discovery:clusters"

# sovereign's template: a Python module whose `call` yields the resources. It gets the file
# source's instances (each one meshpilot cluster, as JSON) and returns them unchanged.
TEMPLATE = '''\
def call(instances, **_):
    for instance in instances:
        yield instance["cluster"]
'''


def discovery_request(version: str = "") -> bytes:
    """One DiscoveryRequest both servers accept. meshpilot reads the sidecar from the node id
    and metadata; sovereign requires `node.cluster` and picks its template by the Envoy
    version in `user_agent_build_version` (none configured for 1.31: its default templates).
    meshpilot ignores fields its proto does not have."""
    ip = "10.251.0.1"
    return json.dumps({
        "version_info": version,
        "node": {
            "id": f"sidecar~{ip}~loadgen-0.{NAMESPACE}~{NAMESPACE}.svc.cluster.local",
            "cluster": f"loadgen.{NAMESPACE}",
            "metadata": {
                "NAMESPACE": NAMESPACE, "WORKLOAD_NAME": "loadgen",
                "LABELS": {"app": "loadgen"}, "INSTANCE_IPS": ip, "OUTBOUND_BIND": "127.0.0.1",
            },
            "user_agent_name": "envoy",
            "user_agent_build_version": {
                "version": {"major_number": 1, "minor_number": 31, "patch": 0},
            },
        },
        "resource_names": [],
        "type_url": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    }).encode()


def post(url: str, body: bytes, timeout: float = 30.0) -> tuple[int, Any]:
    """Status and parsed JSON body (None when there is none) of one request."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            data = answer.read()
            return answer.status, json.loads(data) if data else None
    except urllib.error.HTTPError as error:
        return error.code, None


def wait_serving(url: str, body: bytes, alive: subprocess.Popen[bytes],
                 timeout: float = 120.0) -> Any:
    """The first 200 answer: meshpilot answers 503 until synced, sovereign refuses
    connections until its workers have started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive.poll() is not None:
            raise RuntimeError(f"server exited with {alive.returncode}")
        try:
            status, answer = post(url, body, timeout=5)
            if status == 200:
                return answer
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not serving")


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    received: int = 0
    client_cpu: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies)

    def percentile(self, q: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100)[q - 1]


async def run_load(url: str, body: bytes, clients: int, seconds: float) -> LoadResult:
    """`clients` loops each POSTing `body` back to back for `seconds`, on keep-alive
    connections (one each) as polling Envoys hold them; a request counts when its whole body
    has been read."""
    result = LoadResult(seconds)
    connector = aiohttp.TCPConnector(limit=clients)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while (start := time.perf_counter()) < deadline:
                try:
                    async with session.post(url, data=body, headers=headers) as answer:
                        data = await answer.read()
                        result.statuses[answer.status] += 1
                except aiohttp.ClientError:
                    result.errors += 1
                    continue
                result.latencies.append(time.perf_counter() - start)
                result.received += len(data)

        cpu = time.process_time()
        begun = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        # The clients' last requests end after the deadline: rates use the real span.
        result.seconds = time.perf_counter() - begun
        result.client_cpu = (time.process_time() - cpu) / result.seconds
    return result


def ensure_sovereign(venv: Path = SOVEREIGN_VENV) -> Path:
    """sovereign's `sovereign` command, installing it into its own venv on first use (never
    into meshpilot's: its pinned FastAPI, pydantic and uvicorn are not ours)."""
    command = venv / "bin" / "sovereign"
    python = venv / "bin" / "python"
    wanted = SOVEREIGN.split("==")[1]
    if command.exists():
        installed = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('sovereign'))"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()
        if installed == wanted:
            return command
    # The interpreter meshpilot's venv was made from, not the venv's own python.
    base = getattr(sys, "_base_executable", sys.executable)
    print(f"installing {SOVEREIGN} into {venv}", flush=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", SOVEREIGN], check=True)
    return command


class SovereignServer:
    """sovereign (gunicorn + uvicorn workers) on a free port, serving `clusters` as-is."""

    def __init__(self, command: Path, workdir: Path, clusters: list[dict[str, Any]],
                 workers: int, log: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        instances = workdir / "instances.json"
        instances.write_text(json.dumps([{"cluster": c} for c in clusters]))
        template = workdir / "clusters_template.py"
        template.write_text(TEMPLATE)
        config = {
            # A file source: the poller re-reads it every refresh_rate seconds in each worker.
            "sources": [{"type": "file", "config": {
                "spec": {"protocol": "file", "serialization": "json", "path": str(instances)},
            }}],
            "source_config": {"refresh_rate": 30},
            # Node matching off: every node gets every instance. With it on sovereign compares
            # each instance's `service_clusters` with node.cluster on every request.
            "matching": {"enabled": False},
            "templates": {"default": [{"type": "clusters", "spec": {
                "protocol": "python", "serialization": "raw", "path": str(template)}}]},
            # meshpilot's REST server keeps no access log either.
            "logging": {"access_logs": {"enabled": False},
                        "application_logs": {"enabled": False}},
        }
        path = workdir / "sovereign.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        self.port = free_port()
        env = {
            **os.environ,
            "SOVEREIGN_CONFIG": f"file://{path}",
            "SOVEREIGN_HOST": "127.0.0.1",
            "SOVEREIGN_PORT": str(self.port),
            # Its default is 2 x CPUs + 1 processes; the benchmark compares one process each.
            "SOVEREIGN_WORKERS": str(workers),
            "SOVEREIGN_ENABLE_ACCESS_LOGS": "false",
        }
        self._log = log.open("ab")
        # cwd: sovereign's settings also read a `.env` file from the working directory.
        self.process = subprocess.Popen([str(command)], env=env, cwd=workdir,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    def stop(self) -> None:
        stop_process(self.process, 15)
        self._log.close()


@dataclass
class Row:
    server: str
    case: str
    clusters: int
    result: LoadResult
    server_cpu: float


def measure(name: str, url: str, pid: int, args: argparse.Namespace) -> list[Row]:
    status, full = post(url, discovery_request())
    assert status == 200, f"{name}: {status}"
    clusters = len(full["resources"])
    # meshpilot's JSON is protobuf's (camelCase names); sovereign's keeps snake_case.
    version = full.get("versionInfo") or full["version_info"]
    rows = []
    for case, body in (("full", discovery_request()), ("current", discovery_request(version))):
        if args.warmup:
            asyncio.run(run_load(url, body, args.clients, args.warmup))
        pids = procstat.tree(pid)
        before = procstat.cpu_seconds(pids)
        result = asyncio.run(run_load(url, body, args.clients, args.seconds))
        cpu = (procstat.cpu_seconds(pids) - before) / result.seconds
        rows.append(Row(name, case, clusters, result, cpu))
        print(f"   {name} {case}: {result.requests / result.seconds:.0f} req/s", flush=True)
    return rows


def print_table(rows: list[Row]) -> None:
    print(f"\n{'server':<12}{'case':<9}{'clusters':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'KiB/resp':>10}{'srv CPU':>9}{'gen CPU':>9}  statuses")
    for row in rows:
        r = row.result
        statuses = ",".join(f"{s}x{n}" for s, n in sorted(r.statuses.items()))
        if r.errors:
            statuses += f",errors x{r.errors}"
        print(f"{row.server:<12}{row.case:<9}{row.clusters:9d}{r.requests / r.seconds:9.0f}"
              f"{r.percentile(50) * 1000:9.1f}{r.percentile(99) * 1000:9.1f}"
              f"{r.received / max(r.requests, 1) / 1024:10.1f}{row.server_cpu:9.2f}"
              f"{r.client_cpu:9.2f}  {statuses}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of load before each measured case (0: none)")
    parser.add_argument("--no-sovereign", action="store_true", help="meshpilot only")
    parser.add_argument("--sovereign-workers", type=int, default=1,
                        help="sovereign's worker processes (meshpilot serves REST in one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="restbench-"))
    mesh = Mesh(workdir / "mesh", args.services, args.endpoints)
    mesh.write()
    print(f"mesh: {args.services} services x {args.endpoints} endpoints; {args.clients} "
          f"clients for {args.seconds:g} s per case; files and logs in {workdir}", flush=True)
    rows: list[Row] = []
    meshpilot = MeshpilotServer(mesh.root, 0.05, 1, workdir / "meshpilot.log", rest=True,
                                extra=("--no-analysis",))
    try:
        meshpilot.wait_ready()
        url = f"http://127.0.0.1:{meshpilot.rest_port}{CLUSTERS_PATH}"
        served = wait_serving(url, discovery_request(), meshpilot.process)
        clusters: list[dict[str, Any]] = served["resources"]
        rows += measure("meshpilot", url, meshpilot.pid, args)
    finally:
        meshpilot.stop()

    if not args.no_sovereign:
        command = ensure_sovereign()
        sovereign = SovereignServer(command, workdir / "sovereign", clusters,
                                    args.sovereign_workers, workdir / "sovereign.log")
        try:
            url = f"http://127.0.0.1:{sovereign.port}{CLUSTERS_PATH}"
            theirs = wait_serving(url, discovery_request(), sovereign.process)
            same = theirs["resources"] == clusters
            print(f"sovereign serves {'the same' if same else 'DIFFERENT'} cluster resources "
                  f"as meshpilot ({len(theirs['resources'])} vs {len(clusters)})", flush=True)
            rows += measure(f"sovereign/{args.sovereign_workers}", url, sovereign.pid, args)
        finally:
            sovereign.stop()

    print_table(rows)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
