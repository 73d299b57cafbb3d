"""Start and stop a whole mesh of local processes: the discovery server, sample workloads and
their sidecars. Used by `make run` and by the end-to-end tests, so both run the same thing.

Every workload gets its own loopback address (127.x.y.z needs no set-up on Linux), which lets
many sidecars bind the same service ports side by side on one machine.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXAMPLE_CONFIG = Path(__file__).resolve().parents[3] / "examples" / "mesh"
EXAMPLE_PREFIX = "127.0.10."
"""The address prefix the example config is written with; tests substitute their own."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `check()` until it returns something truthy; raise naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError, AssertionError, http.client.HTTPException) as error:
            last_error = error
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}" + (f": {last_error}" if last_error else ""))


def http_request(
    address: str,
    host: str,
    path: str = "/",
    headers: dict[str, str] | None = None,
    method: str = "GET",
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request to `address` (`ip:port`) with the given Host header."""
    ip, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(ip, int(port), timeout=timeout)
    try:
        conn.request(method, path, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def get_json(url: str, timeout: float = 5.0) -> Any:
    host_port, _, path = url.removeprefix("http://").partition("/")
    status, _, body = http_request(host_port, host_port, "/" + path, timeout=timeout)
    if status != 200:
        raise ValueError(f"{url}: HTTP {status}")
    return json.loads(body)


@dataclass
class Workload:
    name: str
    ip: str
    labels: dict[str, str]
    outbound_bind: str
    namespace: str = "default"
    app_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    xds_variant: str = "sotw"
    locality: str = ""
    app_host: str = "127.0.0.1"
    workload_group: str = ""
    """Register through this WorkloadGroup instead of a WorkloadEntry file."""
    service_account: str = ""
    """The sidecar's `--service-account` (its mesh identity); '' leaves it to the registry."""
    network: str = ""
    """The proxy's `--network` ('' leaves it to the mesh networks config)."""
    netns: str = ""
    """A Linux network namespace to run the app and its proxy in ('' for the caller's)."""
    cluster_id: str = ""
    """The proxy's `--cluster-id` (its cluster, for cluster-local services)."""
    discovery_address: str = ""
    """Where its proxy gets config ('' for the mesh's plaintext xDS address)."""
    proxy_args: tuple[str, ...] = ()
    """More `meshpilot proxy` options (e.g. the agent's --token-file)."""

    @property
    def app_address(self) -> str:
        return f"{self.app_host}:{self.app_port}"

    @property
    def admin_address(self) -> str:
        return f"127.0.0.1:{self.admin_port}"


class Mesh:
    """Processes of one mesh, stopped together (in reverse start order)."""

    def __init__(
        self,
        workdir: Path,
        prefix: str = EXAMPLE_PREFIX,
        xds_port: int | None = None,
        debug_port: int | None = None,
        xds_host: str = "127.0.0.1",
    ) -> None:
        self.workdir = workdir
        self.prefix = prefix
        self.config_dir = workdir / "config"
        self.log_dir = workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.xds_host = xds_host
        self.xds_port = xds_port or free_port()
        self.debug_port = debug_port or free_port()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.workloads: dict[str, Workload] = {}

    @property
    def xds_address(self) -> str:
        return f"{self.xds_host}:{self.xds_port}"

    @property
    def debug_url(self) -> str:
        return f"http://127.0.0.1:{self.debug_port}"

    # Config -----------------------------------------------------------------------------------

    def write_example_config(self, source: Path = EXAMPLE_CONFIG) -> None:
        """Copy the example config, moved to this mesh's address prefix."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.glob("*.yaml")):
            self.write_config(path.name, path.read_text())

    def write_config(self, name: str, text: str) -> Path:
        """Write a config file atomically, with the example prefix replaced by ours."""
        target = self.config_dir / name
        tmp = self.config_dir / f".{name}.tmp"
        tmp.write_text(text.replace(EXAMPLE_PREFIX, self.prefix))
        os.replace(tmp, target)
        return target

    def address(self, last: int) -> str:
        return f"{self.prefix}{last}"

    # Processes --------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], netns: str = "") -> subprocess.Popen[bytes]:
        if netns:  # `ip netns exec` execs the command: the process is still the one we stop
            argv = ["ip", "netns", "exec", netns, *argv]
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (owned by the process)
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        self.processes[name] = process
        return process

    def _meshpilot(self) -> list[str]:
        return [sys.executable, "-m", "meshpilot.cli.main"]

    def start_meshpilot(self, name: str, args: list[str]) -> None:
        """Any other `meshpilot` command as a process of this mesh (e.g. registry-sync)."""
        self._spawn(name, [*self._meshpilot(), *args])

    def stop_process(self, name: str) -> int | None:
        return self._stop(name)

    def start_discovery(self, extra: list[str] | None = None) -> None:
        extra = list(extra or [])
        if "--console-address" not in extra:
            # Meshes run side by side in tests: only those that ask for a console get one.
            extra += ["--console-address", ""]
        self._spawn(
            "discovery",
            [
                *self._meshpilot(),
                "discovery",
                "--config-dir",
                str(self.config_dir),
                "--xds-address",
                self.xds_address,
                "--debug-address",
                f"127.0.0.1:{self.debug_port}",
                *(extra or []),
            ],
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(
            lambda: http_request(f"127.0.0.1:{self.debug_port}", "x", "/ready")[0] == 200,
            timeout,
            "discovery server ready",
        )

    def stop_discovery(self) -> int | None:
        """SIGTERM the server; returns its exit code."""
        return self._stop("discovery")

    def start_app(self, workload: Workload) -> None:
        self._spawn(
            f"app-{workload.name}",
            [
                sys.executable,
                "-m",
                "meshpilot.demo.echo",
                "--listen",
                workload.app_address,
                "--name",
                workload.name,
            ],
            workload.netns,
        )

    def stop_app(self, name: str) -> None:
        self._stop(f"app-{name}")

    def start_sidecar(self, workload: Workload) -> None:
        self.workloads[workload.name] = workload
        labels = ",".join(f"{k}={v}" for k, v in workload.labels.items())
        config_path = self.workdir / "proxies" / workload.name
        config_path.mkdir(parents=True, exist_ok=True)
        self._spawn(
            f"sidecar-{workload.name}",
            [
                *self._meshpilot(),
                "proxy",
                "sidecar",
                "--discovery-address",
                workload.discovery_address or self.xds_address,
                "--namespace",
                workload.namespace,
                "--workload-name",
                workload.name,
                "--labels",
                labels,
                "--ip",
                workload.ip,
                "--outbound-bind",
                workload.outbound_bind,
                "--app-address",
                workload.app_address,
                "--admin-port",
                str(workload.admin_port),
                "--xds-variant",
                workload.xds_variant,
                "--locality",
                workload.locality,
                "--workload-group",
                workload.workload_group,
                "--service-account",
                workload.service_account,
                "--network",
                workload.network,
                "--cluster-id",
                workload.cluster_id,
                "--config-path",
                str(config_path),
                *workload.proxy_args,
            ],
            workload.netns,
        )

    def start_router(self, router: Workload) -> None:
        """An ingress gateway: `meshpilot proxy router`, its listeners on `outbound_bind`.

        A router has no application behind it; `router.app_port` is unused.
        """
        self.workloads[router.name] = router
        labels = ",".join(f"{k}={v}" for k, v in router.labels.items())
        config_path = self.workdir / "proxies" / router.name
        config_path.mkdir(parents=True, exist_ok=True)
        self._spawn(
            f"router-{router.name}",
            [
                *self._meshpilot(),
                "proxy",
                "router",
                "--discovery-address",
                router.discovery_address or self.xds_address,
                "--namespace",
                router.namespace,
                "--workload-name",
                router.name,
                "--labels",
                labels,
                "--ip",
                router.ip,
                "--outbound-bind",
                router.outbound_bind,
                "--admin-port",
                str(router.admin_port),
                "--xds-variant",
                router.xds_variant,
                "--network",
                router.network,
                "--service-account",
                router.service_account,
                "--config-path",
                str(config_path),
                *router.proxy_args,
            ],
            router.netns,
        )

    def start_workload(self, workload: Workload) -> None:
        self.start_app(workload)
        self.start_sidecar(workload)

    def envoy_config_dump(self, workload: str) -> Any:
        return get_json(f"http://{self.workloads[workload].admin_address}/config_dump")

    def wait_envoy_ready(self, workload: str, timeout: float = 30.0) -> None:
        """Wait until the sidecar's Envoy finished its initial xDS fetch (admin /ready)."""
        address = self.workloads[workload].admin_address
        wait_until(
            lambda: http_request(address, "x", "/ready")[0] == 200,
            timeout,
            f"Envoy of {workload} ready",
        )

    def process_alive(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def _stop(self, name: str, timeout: float = 10.0) -> int | None:
        process = self.processes.pop(name, None)
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self._stop(name)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def example_workloads(mesh: Mesh, xds_variant: str = "sotw") -> list[Workload]:
    """The example mesh's workloads; the client calls services on its own outbound address."""
    a = mesh.address
    return [
        Workload("client", a(10), {"app": "client"}, a(1), xds_variant=xds_variant),
        Workload("reviews-v1", a(11), {"app": "reviews", "version": "v1"}, a(11)),
        # One backend speaks Delta xDS, so every end-to-end run covers both variants.
        Workload(
            "reviews-v2", a(12), {"app": "reviews", "version": "v2"}, a(12), xds_variant="delta"
        ),
        Workload("ratings-db", a(13), {"app": "ratings-db"}, a(13)),
    ]

