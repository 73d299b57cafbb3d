"""End to end: `meshpilot discovery --registry consul://… --registry eureka://… --registry
nacos://…` against the fakes in tests/fakes/, a real Envoy sidecar for a client, and echo
backends registered directly in the fakes (over their HTTP registration APIs, as a client
library would). Requests go through Envoy to instances from each registry; a deregistration
leaves Envoy's EDS; a registry that goes away leaves traffic on the last known endpoints.
"""

from __future__ import annotations

import json
import random
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from meshpilot.demo.mesh import Mesh, Workload, http_request, wait_until
from tests.fakes.base import ThreadedFake
from tests.fakes.consul import FakeConsul, service_body
from tests.fakes.eureka import FakeEureka, instance_body
from tests.fakes.nacos import FakeNacos

pytestmark = pytest.mark.e2e

PORTS = {"consul": 18180, "eureka": 18181, "nacos": 18182}
HOSTS = {"consul": "orders.default.consul", "eureka": "reviews.default.eureka",
         "nacos": "payments.default.nacos"}


@dataclass
class Setup:
    mesh: Mesh
    fakes: dict[str, ThreadedFake]
    backends: dict[str, list[Workload]]

    @property
    def client(self) -> Workload:
        return self.mesh.workloads["client"]


def _send(method: str, url: str, body: Any = None, form: dict[str, str] | None = None) -> int:
    data, headers = None, {"Content-Type": "application/json"}
    if body is not None:
        data = json.dumps(body).encode()
    if form is not None:
        data = "&".join(f"{k}={v}" for k, v in form.items()).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        status: int = response.status
        return status


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    mesh = Mesh(tmp_path_factory.mktemp("registries"), prefix=prefix)
    mesh.config_dir.mkdir(parents=True, exist_ok=True)
    fakes = {"consul": ThreadedFake(FakeConsul()), "eureka": ThreadedFake(FakeEureka()),
             "nacos": ThreadedFake(FakeNacos())}
    backends: dict[str, list[Workload]] = {}
    try:
        for fake in fakes.values():
            fake.start()
        last = 20
        for kind in ("consul", "eureka", "nacos"):
            backends[kind] = []
            for n in (1, 2):
                last += 1
                workload = Workload(f"{kind}-{n}", mesh.address(last), {}, mesh.address(last),
                                    app_host=mesh.address(last), app_port=PORTS[kind])
                mesh.start_app(workload)
                backends[kind].append(workload)
        consul = f"http://{fakes['consul'].fake.address}"
        for i, workload in enumerate(backends["consul"], 1):
            _send("PUT", f"{consul}/v1/catalog/register", service_body(
                "orders", f"node{i}", workload.app_host, PORTS["consul"], sid=workload.name))
        eureka = f"http://{fakes['eureka'].fake.address}/eureka"
        for workload in backends["eureka"]:
            _send("POST", f"{eureka}/apps/REVIEWS", {"instance": instance_body(
                "reviews", workload.app_host, PORTS["eureka"], instance_id=workload.name)})
        nacos = f"http://{fakes['nacos'].fake.address}/nacos"
        for workload in backends["nacos"]:
            _send("POST", f"{nacos}/v2/ns/instance", form={
                "serviceName": "payments", "ip": workload.app_host,
                "port": str(PORTS["nacos"]), "weight": "1.0"})
        mesh.start_discovery([
            "--debounce-after", "0.05",
            "--registry", f"consul://{fakes['consul'].fake.address}?wait=5s",
            "--registry", f"eureka://{fakes['eureka'].fake.address}/eureka?pollInterval=0.5",
            "--registry", f"nacos://{fakes['nacos'].fake.address}?pollInterval=0.5",
        ])
        mesh.wait_ready()
        client = Workload("client", mesh.address(10), {"app": "client"}, mesh.address(1))
        mesh.start_sidecar(client)
        mesh.wait_envoy_ready("client")
        yield Setup(mesh, fakes, backends)
    finally:
        mesh.stop()
        for fake in fakes.values():
            fake.close()


def who(setup: Setup, kind: str) -> str:
    address = f"{setup.client.outbound_bind}:{PORTS[kind]}"
    status, headers, body = http_request(address, HOSTS[kind])
    assert status == 200, f"{kind}: HTTP {status}: {body[:200]!r}"
    return headers["x-workload"]


def served_by(setup: Setup, kind: str, n: int = 30) -> set[str]:
    return {who(setup, kind) for _ in range(n)}


def eds_addresses(setup: Setup, kind: str) -> set[str]:
    """Endpoint addresses of the service's cluster in the client Envoy's admin /clusters."""
    _, _, body = http_request(setup.client.admin_address, "x", "/clusters")
    cluster = f"outbound|{PORTS[kind]}||{HOSTS[kind]}::"
    return {
        line.removeprefix(cluster).split("::")[0]
        for line in body.decode().splitlines()
        if line.startswith(cluster) and "::health_flags::" in line
    }


def test_traffic_reaches_instances_of_every_registry(setup: Setup) -> None:
    for kind in ("consul", "eureka", "nacos"):
        expected = {w.name for w in setup.backends[kind]}
        wait_until(lambda k=kind, e=expected: served_by(setup, k) == e, 30,
                   f"{kind} traffic on both instances")


def test_deregistration_leaves_envoys_eds(setup: Setup) -> None:
    gone, kept = setup.backends["consul"]
    consul = f"http://{setup.fakes['consul'].fake.address}"
    both = {f"{gone.app_host}:{PORTS['consul']}", f"{kept.app_host}:{PORTS['consul']}"}
    wait_until(lambda: eds_addresses(setup, "consul") == both, 20, "both endpoints in EDS")
    _send("PUT", f"{consul}/v1/catalog/deregister", {"Node": "node1", "ServiceID": gone.name})
    wait_until(lambda: eds_addresses(setup, "consul") == {f"{kept.app_host}:{PORTS['consul']}"},
               20, "the deregistered endpoint out of Envoy's EDS")
    assert served_by(setup, "consul") == {kept.name}
    nacos = f"http://{setup.fakes['nacos'].fake.address}/nacos"
    _send("DELETE", f"{nacos}/v2/ns/instance?serviceName=payments&ip="
          f"{setup.backends['nacos'][0].app_host}&port={PORTS['nacos']}")
    wait_until(lambda: len(eds_addresses(setup, "nacos")) == 1, 20, "nacos instance out")
    assert served_by(setup, "nacos") == {setup.backends["nacos"][1].name}


def test_stopped_registries_keep_traffic_on_last_known_endpoints(setup: Setup) -> None:
    before = {kind: served_by(setup, kind) for kind in ("consul", "eureka", "nacos")}
    for fake in setup.fakes.values():
        fake.stop()

    def reported(kind: str) -> bool:
        name = f"{kind}@{setup.fakes[kind].fake.address}"
        return f"registry {name} unreachable" in setup.mesh.log("discovery")

    # Every adapter has failed, kept its endpoints and is backing off before the check.
    wait_until(lambda: all(reported(k) for k in setup.fakes), 20, "every registry unreachable")
    for kind in ("consul", "eureka", "nacos"):
        assert eds_addresses(setup, kind), f"{kind} endpoints left Envoy"
    for kind, workloads in before.items():
        assert served_by(setup, kind) == workloads
    assert setup.mesh.process_alive("discovery")
