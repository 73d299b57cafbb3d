"""`meshpilot bootstrap` through Typer's runner, and `meshpilot proxy sidecar` as a real process."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import json_format
from typer.testing import CliRunner

from meshpilot import __version__
from meshpilot.agent.node import proxy_from_node
from meshpilot.cli.main import app
from meshpilot.cli.proxy import parse_labels
from meshpilot.model import NodeType

runner = CliRunner()
WAIT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def bootstrap_of(*args: str) -> bootstrap_pb2.Bootstrap:
    result = runner.invoke(app, ["bootstrap", *args])
    assert result.exit_code == 0, result.output
    return json_format.Parse(result.stdout, bootstrap_pb2.Bootstrap())


def test_version() -> None:
    result = runner.invoke(app, ["--version"])

    assert result.exit_code == 0
    assert result.stdout.strip() == f"meshpilot {__version__}"


def test_bootstrap_prints_valid_json_with_the_node_metadata() -> None:
    bootstrap = bootstrap_of(
        "--namespace",
        "shop",
        "--workload-name",
        "cart",
        "--labels",
        "app=cart, version=v2",
        "--ip",
        "10.0.0.5,10.0.0.6",
        "--ip",
        "10.0.0.7",
        "--app-address",
        "127.0.0.1:8080",
        "--network",
        "n1",
        "--cluster-id",
        "vms",
        "--admin-port",
        "15100",
        "--discovery-address",
        "10.1.1.1:15010",
    )

    proxy = proxy_from_node(bootstrap.node)
    assert bootstrap.node.id == "sidecar~10.0.0.5~cart.shop~shop.svc.cluster.local"
    assert (proxy.type, proxy.namespace, proxy.workload_name) == (NodeType.SIDECAR, "shop", "cart")
    assert proxy.labels == {"app": "cart", "version": "v2"}
    assert proxy.ip_addresses == ("10.0.0.5", "10.0.0.6", "10.0.0.7")
    assert (proxy.network, proxy.cluster_id) == ("n1", "vms")
    assert proxy.app_address == "127.0.0.1:8080"
    assert proxy.admin_address == "127.0.0.1:15100"
    assert bootstrap.admin.address.socket_address.port_value == 15100
    endpoint = bootstrap.static_resources.clusters[0].load_assignment.endpoints[0]
    assert endpoint.lb_endpoints[0].endpoint.address.socket_address.address == "10.1.1.1"


def test_bootstrap_derives_identity_from_an_istio_node_id() -> None:
    node_id = "router~10.2.0.9~ingress.edge~edge.svc.cluster.local"

    bootstrap = bootstrap_of("--type", "router", "--node-id", node_id, "--xds-variant", "delta")

    proxy = proxy_from_node(bootstrap.node)
    assert proxy.id == node_id
    assert proxy.type is NodeType.ROUTER
    assert (proxy.workload_name, proxy.namespace) == ("ingress", "edge")
    assert proxy.ip_addresses == ("10.2.0.9",)
    ads = bootstrap.dynamic_resources.ads_config
    assert ads.api_type == ads.DELTA_GRPC


def test_bootstrap_defaults_to_the_host_name_and_default_namespace() -> None:
    bootstrap = bootstrap_of()

    proxy = proxy_from_node(bootstrap.node)
    assert proxy.namespace == "default"
    assert proxy.workload_name == socket.gethostname().split(".")[0].lower()
    assert proxy.outbound_bind == "127.0.0.1"
    assert bootstrap.node.id.startswith("sidecar~127.0.0.1~")


def test_bootstrap_writes_a_file(tmp_path: Path) -> None:
    target = tmp_path / "bootstrap.json"

    result = runner.invoke(app, ["bootstrap", "--workload-name", "w", "-o", str(target)])

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert json.loads(target.read_text())["node"]["cluster"] == "w.default"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--labels", "app=x,oops"], "--labels: 'oops' is not KEY=VALUE"),
        (["--labels", "app=x,app=y"], "--labels: 'app' is given twice"),
        (["--labels", "a b=c"], "--labels: 'a b' is not a valid label key"),
        (["--discovery-address", "nowhere"], "--discovery-address: 'nowhere' is not HOST:PORT"),
        (["--discovery-address", "h:99999"], "--discovery-address: 'h:99999': the port must be"),
        (["--app-address", "8080"], "--app-address: '8080' is not HOST:PORT"),
        (["--ip", "10.0.0.1,ten"], "--ip: 'ten' is not an IP address"),
        (["--outbound-bind", "localhost"], "--outbound-bind: 'localhost' is not an IP address"),
        (["--namespace", "Bad_NS"], "--namespace: 'Bad_NS' is not a DNS label"),
        (["--admin-port", "0"], "--admin-port: 0 is not between 1 and 65535"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["bootstrap", *args])

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: " + message)
    assert "Traceback" not in result.output


def test_parse_labels() -> None:
    assert parse_labels("") == {}
    assert parse_labels("app=a, example.com/tier=web,empty=,") == {
        "app": "a",
        "example.com/tier": "web",
        "empty": "",
    }


def test_proxy_with_a_missing_envoy_binary_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["proxy", "router", "--envoy-binary", str(tmp_path / "none")])

    assert result.exit_code == 2
    assert "--envoy-binary" in result.stderr


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid`, from /proc (Linux)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses; the fields after the last ')'
        # are state, then parent pid.
        if int(text.rpartition(")")[2].split()[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def admin_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # 503 while initializing is still an answer
    except OSError:
        return False


@pytest.mark.e2e
def test_proxy_sidecar_runs_envoy_and_stops_it_on_sigterm(tmp_path: Path) -> None:
    meshpilot = Path(sys.executable).parent / "meshpilot"
    admin_port = free_port()
    command = [
        str(meshpilot),
        "proxy",
        "sidecar",
        "--workload-name",
        "e2e",
        "--admin-port",
        str(admin_port),
        "--discovery-address",
        f"127.0.0.1:{free_port()}",
        "--config-path",
        str(tmp_path / "conf"),
        "--envoy-log-file",
        str(tmp_path / "envoy.log"),
        "--concurrency",
        "1",
    ]
    agent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: admin_answers(admin_port)), "envoy admin never answered"
        envoys = children_of(agent.pid)
        assert len(envoys) == 1
        assert (tmp_path / "conf" / "envoy-bootstrap.json").is_file()

        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=WAIT)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    assert agent.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert wait_until(lambda: not Path(f"/proc/{envoys[0]}").exists(), timeout=5)
    assert not admin_answers(admin_port)
