"""End to end: `meshpilot discovery` on a config directory, real Envoy sidecars started with
`meshpilot proxy sidecar`, sample workloads, and real HTTP requests through the client's sidecar.

One mesh is shared by the module; every test leaves the config as it found it.
"""

from __future__ import annotations

import collections
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshpilot.demo.mesh import (
    EXAMPLE_CONFIG,
    Mesh,
    Workload,
    example_workloads,
    get_json,
    http_request,
    wait_until,
)

pytestmark = pytest.mark.e2e

ROUTING = (EXAMPLE_CONFIG / "routing.yaml").read_text()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    # A loopback prefix of its own, so a running example mesh or another test run never clashes.
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    mesh = Mesh(tmp_path_factory.mktemp("mesh"), prefix=prefix)
    mesh.write_example_config()
    mesh.start_discovery(["--debounce-after", "0.05"])
    try:
        mesh.wait_ready()
        for workload in example_workloads(mesh):
            mesh.start_workload(workload)
        for name in mesh.workloads:
            mesh.wait_envoy_ready(name)
        yield mesh
    finally:
        mesh.stop()


def client_address(mesh: Mesh, port: int = 9080) -> str:
    return f"{mesh.workloads['client'].outbound_bind}:{port}"


def who(mesh: Mesh, headers: dict[str, str] | None = None, host: str = "reviews") -> str:
    status, response_headers, body = http_request(client_address(mesh), host, headers=headers)
    assert status == 200, f"HTTP {status}: {body[:200]!r}"
    return response_headers["x-workload"]


def tally(mesh: Mesh, n: int, headers: dict[str, str] | None = None) -> collections.Counter[str]:
    return collections.Counter(who(mesh, headers) for _ in range(n))


def set_weights(mesh: Mesh, v1: int, v2: int) -> None:
    text = ROUTING.replace("weight: 80", f"weight: {v1}").replace("weight: 20", f"weight: {v2}")
    mesh.write_config("routing.yaml", text)


def restore_routing(mesh: Mesh) -> None:
    mesh.write_config("routing.yaml", ROUTING)
    wait_until(lambda: not get_json(f"{mesh.debug_url}/debug/config_errors"), 10, "no errors")
    wait_until(lambda: tally(mesh, 40)["reviews-v1"] > 0, 15, "the 80/20 split back")


def test_weighted_split_80_20(mesh: Mesh) -> None:
    """400 requests; v2's share must be 20% ± 7 points (over 3.5 standard deviations)."""
    counts = tally(mesh, 400)
    assert set(counts) == {"reviews-v1", "reviews-v2"}
    share = counts["reviews-v2"] / 400
    assert 0.13 <= share <= 0.27, counts


def test_header_match_goes_to_v2(mesh: Mesh) -> None:
    assert tally(mesh, 30, {"end-user": "jason"}) == {"reviews-v2": 30}


def test_short_and_full_host_names_route(mesh: Mesh) -> None:
    for host in ("reviews", "reviews.default", "reviews.default.svc.cluster.local:9080"):
        assert who(mesh, {"end-user": "jason"}, host=host) == "reviews-v2"



def test_unknown_hosts_pass_through_by_default(mesh: Mesh) -> None:
    """ALLOW_ANY (Istio's default): a Host the mesh doesn't know is forwarded to that host."""
    app = mesh.workloads["reviews-v1"].app_address
    status, headers, _ = http_request(client_address(mesh), app)
    assert (status, headers.get("x-workload")) == (200, "reviews-v1")
    status, _, _ = http_request(client_address(mesh), "unknown.invalid")
    assert status == 503  # no such name: Envoy's DNS lookup fails


def test_tcp_port_gets_a_tcp_proxy(mesh: Mesh) -> None:
    status, headers, _ = http_request(client_address(mesh, 27017), "anything")
    assert status == 200
    assert headers["x-workload"] == "ratings-db"


def test_rewriting_weights_changes_live_traffic(mesh: Mesh) -> None:
    set_weights(mesh, 0, 100)
    started = time.monotonic()
    wait_until(lambda: tally(mesh, 30) == {"reviews-v2": 30}, 10, "all traffic on v2")
    print(f"0/100 observed {time.monotonic() - started:.2f}s after the file was written")
    assert tally(mesh, 100) == {"reviews-v2": 100}
    restore_routing(mesh)


def test_invalid_document_keeps_last_good_config(mesh: Mesh) -> None:
    set_weights(mesh, 0, 100)
    wait_until(lambda: tally(mesh, 20) == {"reviews-v2": 20}, 10, "all traffic on v2")
    broken = ROUTING.replace("weight: 80", "weight: 0").replace("weight: 20", "weight: -1")
    path = mesh.write_config("routing.yaml", broken)
    errors = wait_until(
        lambda: get_json(f"{mesh.debug_url}/debug/config_errors"), 10, "the error to be reported"
    )
    (error,) = errors
    lines = path.read_text().splitlines()
    assert error["file"] == str(path)
    assert "weight" in lines[error["line"] - 1] or "route" in lines[error["line"] - 1], error
    assert "VirtualService default/reviews" in error["text"]
    # The last good version (0/100) keeps serving, and the DestinationRule in the same file too.
    assert tally(mesh, 50) == {"reviews-v2": 50}
    restore_routing(mesh)


def test_workload_entry_add_and_delete(mesh: Mesh) -> None:
    extra = Workload("reviews-v1b", mesh.address(14), {"app": "reviews", "version": "v1"},
                     mesh.address(14))
    mesh.start_workload(extra)
    mesh.wait_envoy_ready(extra.name)
    assert "reviews-v1b" not in tally(mesh, 50)
    entry = f"""
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-v1b
  namespace: default
spec:
  address: {mesh.address(14)}
  labels:
    app: reviews
    version: v1
"""
    path = mesh.write_config("extra-workload.yaml", entry)
    wait_until(lambda: "reviews-v1b" in tally(mesh, 40), 10, "traffic to the new endpoint")
    path.unlink()
    wait_until(lambda: "reviews-v1b" not in tally(mesh, 60), 10, "no traffic to the new endpoint")


def test_endpoint_change_reaches_envoy_as_eds(mesh: Mesh) -> None:
    """The client's Envoy sees the new endpoint through EDS; its listeners were not re-sent."""
    before = mesh.envoy_config_dump("client")
    listeners_version = _dynamic_listener_versions(before)
    path = mesh.write_config("extra-workload.yaml", """
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-v9
  namespace: default
spec:
  address: 127.0.10.99
  labels:
    app: reviews
    version: v9
""")
    cluster = "outbound|9080||reviews.default.svc.cluster.local"
    wait_until(lambda: "127.0.10.99".replace("127.0.10.", mesh.prefix) in _eds_addresses(
        mesh, cluster), 10, "the endpoint in Envoy's EDS")
    after = mesh.envoy_config_dump("client")
    assert _dynamic_listener_versions(after) == listeners_version
    path.unlink()
    wait_until(lambda: len(_eds_addresses(mesh, cluster)) == 2, 10, "the endpoint removed")


def test_server_restart_keeps_traffic_and_converges(mesh: Mesh) -> None:
    assert mesh.stop_discovery() == 0, "SIGTERM is a clean shutdown"
    assert "Traceback" not in mesh.log("discovery")
    # Envoy keeps its last config while the control plane is away.
    assert tally(mesh, 40, {"end-user": "jason"}) == {"reviews-v2": 40}
    set_weights(mesh, 0, 100)  # a change made during the outage
    mesh.start_discovery(["--debounce-after", "0.05"])
    mesh.wait_ready()
    # Envoy retries its xDS stream with jittered exponential backoff capped at 30 s, so after a
    # long outage (a slow start on a busy machine) a sidecar may take that long to come back.
    connected: list[str] = []

    def all_four_back() -> bool:
        clients = get_json(f"{mesh.debug_url}/debug/adsz")["clients"]
        connected[:] = sorted(f"{c['proxy']} ({c['variant']})" for c in clients)
        return len(connected) == 4

    try:
        wait_until(all_four_back, 60, "all four sidecars reconnected")
    except TimeoutError as error:
        raise AssertionError(f"{error}; connected: {connected}") from None
    wait_until(lambda: tally(mesh, 30) == {"reviews-v2": 30}, 15, "the change applied")
    restore_routing(mesh)

    def all_synced() -> bool:
        syncz = get_json(f"{mesh.debug_url}/debug/syncz")
        return all(p[t]["status"] == "SYNCED" for p in syncz for t in ("CDS", "LDS"))

    wait_until(all_synced, 10, "every proxy SYNCED")


def _dynamic_listener_versions(dump: dict[str, object]) -> dict[str, str]:
    for config in dump["configs"]:  # type: ignore[attr-defined]
        if config["@type"].endswith("ListenersConfigDump"):
            return {
                item["name"]: item["active_state"]["version_info"]
                for item in config.get("dynamic_listeners", [])
            }
    return {}


def _eds_addresses(mesh: Mesh, cluster: str) -> set[str]:
    address = mesh.workloads["client"].admin_address
    status, _, body = http_request(address, "x", "/clusters?format=json")
    assert status == 200
    for entry in json.loads(body)["cluster_statuses"]:
        if entry["name"] == cluster:
            return {
                h["address"]["socket_address"]["address"] for h in entry.get("host_statuses", [])
            }
    return set()


def test_example_config_is_valid(mesh: Mesh) -> None:
    assert get_json(f"{mesh.debug_url}/debug/config_errors") == []
    assert Path(mesh.config_dir / "routing.yaml").exists()


def test_workload_group_registers_a_workload_on_connect(mesh: Mesh) -> None:
    mesh.write_config("workload-group.yaml", """
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: reviews-vms
  namespace: default
spec:
  metadata:
    labels:
      app: reviews
      version: v1
  template:
    serviceAccount: reviews
""")
    vm = Workload("reviews-vm", mesh.address(15), {"app": "reviews", "version": "v1"},
                  mesh.address(15), workload_group="reviews-vms")
    try:
        mesh.start_workload(vm)
        mesh.wait_envoy_ready(vm.name)
        wait_until(lambda: "reviews-vm" in tally(mesh, 40), 15, "traffic to the VM")
    finally:
        mesh._stop(f"sidecar-{vm.name}")
    # Ten seconds after its proxy left, the entry is gone from the client's Envoy.
    cluster = "outbound|9080||reviews.default.svc.cluster.local"
    assert vm.ip in _eds_addresses(mesh, cluster)
    wait_until(lambda: vm.ip not in _eds_addresses(mesh, cluster), 30, "the VM deregistered")
