"""Real etcd and ZooKeeper servers for tests and benchmarks: started on free loopback ports in a
temporary directory, stopped and restarted on demand (same data, same ports), killed at the end.

The binaries come from Debian (`etcd-server`; `zookeeper` with its Java), installed by
`scripts/setup`. A missing binary fails the test with the command that installs it.
"""

from __future__ import annotations

import abc
import asyncio
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshpilot.demo.mesh import free_port
from meshpilot.model import PushRequest

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")


class MissingServer(RuntimeError):
    pass


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"server exited with {process.returncode}:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    tail = log.read_text()[-3000:]
    raise TimeoutError(f"server not listening on {port} after {timeout}s:\n{tail}")


class _Server(abc.ABC):
    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"

    @abc.abstractmethod
    def argv(self) -> list[str]:
        """The server's command line."""

    def ready(self) -> None:  # noqa: B027 - optional hook; the default is ready once listening
        """Block until the server answers requests."""

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir)
        _wait_port(self.port, self.process, self.log_path, timeout)
        self.ready()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Stop abruptly, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class EtcdServer(_Server):
    name = "etcd"

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("etcd")
        if self.binary is None:
            raise MissingServer("etcd is not installed: run scripts/setup "
                                "(or apt-get install etcd-server)")
        super().__init__(workdir)
        self.peer_port = free_port()

    def argv(self) -> list[str]:
        client = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        assert self.binary is not None
        return [
            self.binary, "--name", "test", "--data-dir", str(self.workdir / "data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}",
            "--logger", "zap", "--log-level", "warn",
        ]

    def ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                    if b'"health":"true"' in sock.recv(4096):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"etcd not healthy:\n{self.log_path.read_text()[-3000:]}")


class ZooKeeperServer(_Server):
    name = "zookeeper"

    def __init__(self, workdir: Path) -> None:
        self.java = shutil.which("java")
        if self.java is None or not ZOOKEEPER_JAR.exists():
            raise MissingServer("ZooKeeper is not installed: run scripts/setup "
                                "(or apt-get install zookeeper)")
        super().__init__(workdir)
        self.config = workdir / "zoo.cfg"
        self.config.write_text(
            # A short tick allows short sessions, so tests can watch ephemeral nodes expire.
            "tickTime=200\n"
            "minSessionTimeout=400\n"
            "maxSessionTimeout=20000\n"
            f"dataDir={workdir / 'data'}\n"
            f"clientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\n"
            # The admin HTTP server would take port 8080.
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr\n"
        )

    def argv(self) -> list[str]:
        assert self.java is not None
        return [
            self.java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Dzookeeper.admin.enableServer=false",
            "-cp", f"{ZOOKEEPER_JAR}:/etc/zookeeper/conf",
            "org.apache.zookeeper.server.ZooKeeperServerMain", str(self.config),
        ]

    def ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"ruok")
                    if sock.recv(16) == b"imok":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"ZooKeeper not answering:\n{self.log_path.read_text()[-3000:]}")


# Session fixtures (imported by tests/conftest.py): one server of each kind per test run. -------

@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    try:
        server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    except MissingServer as error:
        pytest.fail(str(error))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def zookeeper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    try:
        server = ZooKeeperServer(tmp_path_factory.mktemp("zookeeper"))
    except MissingServer as error:
        pytest.fail(str(error))
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def eventually(check: Callable[[], Any], within: float = 10.0, what: str = "") -> Any:
    """Poll `check()` until it returns something truthy; fail naming `what` after `within` s."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {within}s waiting for {what or check}; last: {last!r}")


class Recorder:
    """An Updater that remembers every push request."""

    def __init__(self) -> None:
        self.requests: list[PushRequest] = []

    def config_update(self, request: PushRequest) -> None:
        self.requests.append(request)

    def take(self) -> list[PushRequest]:
        out, self.requests = self.requests, []
        return out
