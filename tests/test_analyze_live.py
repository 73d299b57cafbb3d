"""Live analysis in process: a real DiscoveryServer (gRPC on a free port) with the ServiceEntry
registry and an external registry, analyzed by the server itself (`ServerAnalysis`) and by
`meshpilot analyze --live` over xDS with files laid on top.

The external registry is a small in-memory implementation of the registry interface standing
in for Consul: what matters here is that its services reach analysis, not how they are read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from meshpilot.analysis.live import ServerInputs, analyze_inputs, parse_server_inputs
from meshpilot.analysis.meshconfig import MeshConfig
from meshpilot.analysis.registries import (
    RegistryEndpoint,
    RegistryPort,
    RegistryService,
    external_services,
)
from meshpilot.analysis.server import ServerAnalysis
from meshpilot.cli.main import app
from meshpilot.config.store import MemoryStore
from meshpilot.debug.topics import TopicError, render_topic
from meshpilot.diagnostics import xdsclient
from meshpilot.model import (
    Config,
    Endpoint,
    HealthStatus,
    Kind,
    Port,
    Protocol,
    PushRequest,
    Service,
    TriggerReason,
)
from meshpilot.registry.aggregate import AggregateRegistry
from meshpilot.registry.serviceentry import ServiceEntryRegistry
from meshpilot.xds.discovery import DebounceSettings, DiscoveryServer
from meshpilot.xds.server import start_grpc_server
from tests.configs import service_entry, workload_entry

ORDERS = "orders.default.consul"
PAYMENTS = "payments.default.consul"
REVIEWS = "reviews.default.svc.cluster.local"


class StaticRegistry:
    """A registry whose services are set by the test (Consul's place)."""

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self.published: dict[str, tuple[Service, list[Endpoint]]] = {}

    @property
    def provider(self) -> str:
        return self._provider

    @property
    def cluster_id(self) -> str:
        return "dc1"

    def publish(self, host: str, protocol: Protocol, *endpoints: tuple[str, str, bool]) -> None:
        service = Service(host, "default", (Port("http", 8080, protocol),),
                          registry=self._provider, source=f"{self._provider} service {host}")
        self.published[host] = (service, [
            Endpoint(host, "default", 8080, address, 8080, labels={"version": version},
                     health=HealthStatus.HEALTHY if healthy else HealthStatus.UNHEALTHY)
            for address, version, healthy in endpoints
        ])

    def services(self) -> list[Service]:
        return [service for service, _ in self.published.values()]

    def endpoints(self, hostname: str, namespace: str) -> list[Endpoint]:
        found = self.published.get(hostname)
        return list(found[1]) if found is not None and namespace == "default" else []

    def has_synced(self) -> bool:
        return True

    async def wait_synced(self) -> None:
        return None

    async def run(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"name": self._provider, "provider": self._provider, "synced": True}


def routed(name: str, host: str, *destinations: str, line: int = 1) -> Config:
    return Config(
        kind=Kind.VIRTUAL_SERVICE, name=name, namespace="default",
        spec={"hosts": [host], "http": [{"route": [{"destination": {"host": d}, "weight": 50}
                                                   for d in destinations]}]},
        source_file="routing.yaml", source_line=line,
        field_lines={"spec.http[0].route[1].destination.host": line + 9},
    )


@dataclass
class Live:
    store: MemoryStore
    server: DiscoveryServer
    analysis: ServerAnalysis
    consul: StaticRegistry
    address: str

    async def analyzed_after_change(self) -> None:
        """Wait for an analysis of a state newer than the one analyzed now."""
        runs = self.analysis.runs
        async with asyncio.timeout(10):
            await self.analysis.wait_for_run(runs + 1)

    def topic(self, path: str) -> Any:
        return render_topic(self.server, path, {})


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    store = MemoryStore()
    consul = StaticRegistry("consul")
    consul.publish(ORDERS, Protocol.HTTP, ("10.1.0.1", "v1", True), ("10.1.0.2", "v2", True))
    consul.publish(PAYMENTS, Protocol.HTTP, ("10.1.1.1", "v1", False))
    aggregate = AggregateRegistry()
    server = DiscoveryServer(store, aggregate, DebounceSettings(quiet=0.02, max_delay=0.5))
    aggregate.add(ServiceEntryRegistry(store, server))
    aggregate.add(consul)
    analysis = ServerAnalysis(server, quiet=0.02, max_delay=0.5, min_interval=0.0,
                              endpoint_interval=0.0)
    server.analysis = analysis
    store.apply(service_entry("reviews", [REVIEWS], selector={"app": "reviews"}))
    store.apply(workload_entry("reviews-v1", "127.0.1.1", {"app": "reviews", "version": "v1"}))
    store.apply(routed("frontend", "frontend.example.com", ORDERS, "missing"))
    store.mark_synced()
    grpc_server, port = await start_grpc_server(server, "127.0.0.1:0")
    tasks = [asyncio.create_task(server.run()), asyncio.create_task(analysis.run())]
    try:
        async with asyncio.timeout(10):
            await analysis.wait_for_run(1)
        yield Live(store, server, analysis, consul, f"127.0.0.1:{port}")
    finally:
        for task in tasks:
            task.cancel()
        await grpc_server.stop(grace=None)


def codes(messages: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(m["code"], m["origin"]) for m in messages}


# --- Analysis in the server -------------------------------------------------------------------

async def test_server_analysis_sees_the_external_registry(live: Live) -> None:
    report = live.topic("/debug/analyze")

    found = codes(report["messages"])
    # The route to the Consul service resolves; the one to `missing` does not.
    assert ("IST0101", "VirtualService default/frontend") in found
    assert not any("orders" in m["message"] for m in report["messages"])
    assert ("MP0003", f"RegistryService default/{PAYMENTS}") in found
    missing = report["resources"]["VirtualService default/frontend"][0]
    assert missing["message"] == 'Referenced host not found: "missing"'
    assert missing["reference"] == "routing.yaml:10"


async def test_configz_carries_each_resources_messages(live: Live) -> None:
    configs = {(c["kind"], c["name"]): c for c in live.topic("/debug/configz")["configs"]}
    assert [m["code"] for m in configs[("VirtualService", "frontend")]["analysis"]] == ["IST0101"]
    assert configs[("ServiceEntry", "reviews")]["analysis"] == []


async def test_metric_counts_messages_by_level_and_code(live: Live) -> None:
    text = live.server.metrics.exposition().decode()
    assert 'meshpilot_analysis_messages{code="IST0101",level="Error"} 1.0' in text
    assert 'meshpilot_analysis_messages{code="MP0003",level="Warning"} 1.0' in text


async def test_a_config_change_is_analyzed_again(live: Live) -> None:
    live.store.apply(routed("frontend", "frontend.example.com", ORDERS, REVIEWS))
    await live.analyzed_after_change()

    assert ("IST0101", "VirtualService default/frontend") not in codes(
        live.topic("/debug/analyze")["messages"])
    assert 'code="IST0101"' not in live.server.metrics.exposition().decode()


async def test_a_registry_change_is_analyzed_again(live: Live) -> None:
    rule = Config(kind=Kind.DESTINATION_RULE, name="orders", namespace="default",
                  spec={"host": ORDERS, "subsets": [{"name": "v3",
                                                      "labels": {"version": "v3"}}]})
    live.store.apply(rule)
    await live.analyzed_after_change()
    assert ("MP0004", "DestinationRule default/orders") in codes(
        live.topic("/debug/analyze")["messages"])

    live.consul.publish(ORDERS, Protocol.HTTP, ("10.1.0.3", "v3", True))
    live.server.config_update(_registry_push())
    await live.analyzed_after_change()
    assert ("MP0004", "DestinationRule default/orders") not in codes(
        live.topic("/debug/analyze")["messages"])


def _endpoint_push(host: str) -> PushRequest:
    """What a registry sends when only a service's endpoints change (an EDS-only push)."""
    return PushRequest(full=False, eds_hosts=frozenset({("default", host)}),
                       reasons=frozenset({TriggerReason.ENDPOINT}))


async def test_an_endpoint_change_reruns_only_the_endpoint_analyzers(live: Live) -> None:
    assert live.analysis.endpoint_analyzers and live.analysis.config_analyzers
    live.consul.publish(PAYMENTS, Protocol.HTTP, ("10.1.1.1", "v1", True))
    live.server.config_update(_endpoint_push(PAYMENTS))
    await live.analyzed_after_change()

    assert live.analysis.endpoint_runs == 1
    assert live.analysis.report is not None and live.analysis.report.endpoint_only
    found = codes(live.topic("/debug/analyze")["messages"])
    # The endpoint is healthy now; the config analyzers' finding is kept from the last run.
    assert ("MP0003", f"RegistryService default/{PAYMENTS}") not in found
    assert ("IST0101", "VirtualService default/frontend") in found


async def test_endpoint_changes_wait_for_the_endpoint_interval(live: Live) -> None:
    live.analysis.endpoint_interval = 3600.0
    runs = live.analysis.runs
    live.consul.publish(PAYMENTS, Protocol.HTTP, ("10.1.1.1", "v1", True))
    live.server.config_update(_endpoint_push(PAYMENTS))
    await live.server.wait_for(lambda: live.server.push_count > live.analysis._analyzed_push)
    assert live.analysis.runs == runs  # held back by the interval

    # A config change is analyzed at once, in full, and covers the endpoint change too.
    live.store.apply(routed("frontend", "frontend.example.com", ORDERS, REVIEWS))
    await live.analyzed_after_change()
    assert live.analysis.endpoint_runs == 0
    found = codes(live.topic("/debug/analyze")["messages"])
    assert ("IST0101", "VirtualService default/frontend") not in found
    assert ("MP0003", f"RegistryService default/{PAYMENTS}") not in found


def _registry_push() -> PushRequest:
    """What a registry sends when its services change (a full push)."""
    return PushRequest(full=True, reasons=frozenset({TriggerReason.SERVICE}))


async def test_without_analysis_the_topic_says_it_is_off(live: Live) -> None:
    live.server.analysis = None
    with pytest.raises(TopicError) as raised:
        live.topic("/debug/analyze")
    assert raised.value.status == 404
    assert all(c["analysis"] is None for c in live.topic("/debug/configz")["configs"])


# --- meshpilot analyze --live over xDS --------------------------------------------------------

async def test_analysis_inputs_travel_over_xds(live: Live) -> None:
    data = await asyncio.to_thread(xdsclient.topic, live.address, "analysis_inputs")
    inputs = parse_server_inputs(data)

    kinds = {(r.kind, r.name): r for r in inputs.resources}
    assert kinds[("VirtualService", "frontend")].file == "routing.yaml"
    assert kinds[("VirtualService", "frontend")].line_of(
        "spec.http[0].route[1].destination.host") == 10
    registries = {(s.registry, s.hostname) for s in inputs.registries}
    assert ("consul", ORDERS) in registries and ("serviceentry", REVIEWS) in registries
    # What config defines is rebuilt from the resources, not taken from the registry.
    assert {s.hostname for s in external_services(inputs.registries)} == {ORDERS, PAYMENTS}


OVERLAY = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: frontend
spec:
  hosts: [frontend.example.com]
  http:
  - route:
    - destination:
        host: nowhere
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: orders-shadow
spec:
  hosts: [orders.default.consul]
  ports: [{number: 8080, name: tcp, protocol: TCP}]
  resolution: DNS
"""


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(app, ["analyze", *args])


async def test_live_cli_lays_files_over_the_server(live: Live, tmp_path: Path) -> None:
    overlay = tmp_path / "change.yaml"
    overlay.write_text(OVERLAY)

    result = await asyncio.to_thread(
        run_cli, "--use-kube=true", "--xds-address", live.address, "-A", "-o", "json",
        str(overlay))

    assert result.exit_code == 0, result.output
    messages = json.loads(result.stdout)
    found = codes(messages)
    frontend = [m for m in messages if m["origin"] == "VirtualService default/frontend"]
    # The file's VirtualService replaced the server's: its own error, at its own line.
    assert [(m["message"], m["reference"]) for m in frontend] == [
        ('Referenced host not found: "nowhere"', f"{overlay}:10")]
    assert ("MP0001", "ServiceEntry default/orders-shadow") in found
    assert ("MP0002", "ServiceEntry default/orders-shadow") in found
    assert ("MP0003", f"RegistryService default/{PAYMENTS}") in found


async def test_live_cli_without_files_analyzes_the_served_config(live: Live) -> None:
    result = await asyncio.to_thread(run_cli, "--live", "--xds-address", live.address)
    assert result.exit_code == 79, result.output
    assert ('Error [IST0101] (VirtualService default/frontend routing.yaml:10) Referenced host '
            'not found: "missing"') in result.stdout


# --- Registry-aware analyzers on registry records -------------------------------------------

def external(registry: str, host: str, protocol: str, network: str = "") -> RegistryService:
    return RegistryService(registry, host, "default", (RegistryPort("p", 8080, protocol),),
                           (RegistryEndpoint("10.2.0.1", 8080, 8080, {}, network),),
                           source=f"{registry} service {host}")


def test_two_registries_disagreeing_on_a_protocol() -> None:
    inputs = ServerInputs([], [external("consul", ORDERS, "HTTP"),
                               external("eureka", ORDERS, "GRPC"),
                               external("eureka", PAYMENTS, "HTTP")])
    messages = analyze_inputs(inputs)
    conflicts = [m for m in messages if m.code == "MP0001"]
    assert [(m.origin, m.text) for m in conflicts] == [(
        f"RegistryService default/{ORDERS}",
        f'Host "{ORDERS}" port 8080 is published with different protocols: HTTP (consul '
        f"service {ORDERS}), GRPC (eureka service {ORDERS}).",
    )]
    assert all(m.reference == "" for m in conflicts)  # a registry service has no file


def test_clusters_publishing_one_host_with_different_ports() -> None:
    first = external("etcd", ORDERS, "HTTP")
    second = dataclasses.replace(external("etcd", ORDERS, "HTTP"), cluster="cluster-2",
                                 ports=(RegistryPort("p", 9090, "HTTP"),))
    same = dataclasses.replace(external("file", ORDERS, "HTTP"), cluster="cluster-3")
    messages = analyze_inputs(ServerInputs([], [dataclasses.replace(first, cluster="cluster-1"),
                                                second, same]))
    assert [(m.code, m.origin, m.text) for m in messages if m.code == "MP0006"] == [(
        "MP0006", f"RegistryService default/{ORDERS}",
        f'Host "{ORDERS}" is published with different ports: 8080 (etcd service {ORDERS} in '
        f"cluster cluster-1), 9090 (etcd service {ORDERS} in cluster cluster-2).",
    ), (
        "MP0006", f"RegistryService default/{ORDERS}",
        f'Host "{ORDERS}" is published with different ports: 9090 (etcd service {ORDERS} in '
        f"cluster cluster-2), 8080 (file service {ORDERS} in cluster cluster-3).",
    )]


def test_registry_endpoint_in_a_network_without_gateway() -> None:
    mesh = MeshConfig.from_user(networks={"networks": {
        "east": {"gateways": [{"address": "1.2.3.4", "port": 15443}]}, "west": {}}})
    inputs = ServerInputs([], [external("consul", ORDERS, "HTTP", network="west"),
                               external("consul", PAYMENTS, "HTTP", network="east")])
    found = [(m.code, m.origin) for m in analyze_inputs(inputs, mesh=mesh)
             if m.code == "MP0005"]
    assert found == [("MP0005", f"RegistryService default/{ORDERS}")]


GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"""


async def test_live_cli_judges_with_the_servers_mesh_config(live: Live, tmp_path: Path) -> None:
    # With ingress turned off in the server's mesh config there is no default ingress
    # gateway, so a Gateway selecting it selects nothing (IST0101).
    live.server.mesh = MeshConfig.from_user({"ingressControllerMode": "OFF"})
    gateway = tmp_path / "gateway.yaml"
    gateway.write_text(GATEWAY)
    default_mesh = tmp_path / "mesh.yaml"
    default_mesh.write_text("ingressControllerMode: STRICT\n")

    servers = await asyncio.to_thread(run_cli, "--live", "--xds-address", live.address,
                                      "-o", "json", str(gateway))
    own = await asyncio.to_thread(run_cli, "--live", "--xds-address", live.address, "-o",
                                  "json", "--meshConfigFile", str(default_mesh), str(gateway))

    assert ("IST0101", "Gateway default/public") in codes(json.loads(servers.stdout))
    assert ("IST0101", "Gateway default/public") not in codes(json.loads(own.stdout))
