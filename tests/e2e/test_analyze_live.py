"""End to end: analysis in a running `meshpilot discovery`, and `meshpilot analyze --use-kube`.

The server runs as its own process on the example mesh's config directory. Bad config is
written into that directory the way an operator would, and must show up on `/debug/analyze`
(and in `/debug/configz` and `/metrics`) with its file and line; the CLI's live mode asks the
same server over xDS and lays a file on top of its config. No Envoy is needed: analysis reads
config and registries only. The registry-aware analyzers are checked against a real etcd
registry (`--registry etcd://…`), with instances written as a service would register.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aetcd
import pytest
from typer.testing import CliRunner

from meshpilot.cli.main import app
from meshpilot.demo.mesh import Mesh, free_port, get_json, http_request, wait_until
from tests.registry_servers import EtcdServer

pytestmark = pytest.mark.e2e

BAD_ROUTE = """\
# A route to a service nobody defines: valid config, wrong mesh.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
  namespace: default
spec:
  hosts:
  - ratings.example.com
  http:
  - route:
    - destination:
        host: no-such-service
"""
BAD_HOST_LINE = 13

REJECTED = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: broken
  namespace: default
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: SOMETIMES
"""
REJECTED_LINE = 10


def start(tmp_path: Path, *extra: str) -> Mesh:
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    mesh = Mesh(tmp_path, prefix=prefix)
    mesh.write_example_config()
    mesh.start_discovery(["--debounce-after", "0.05",
                          "--controlz-address", f"127.0.0.1:{free_port()}", *extra])
    mesh.wait_ready()
    return mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = start(tmp_path_factory.mktemp("analyze-live"))
    try:
        yield mesh
    finally:
        mesh.stop()


def analysis(mesh: Mesh) -> Any:
    return get_json(f"{mesh.debug_url}/debug/analyze")


def message_at(mesh: Mesh, origin: str, reference: str) -> dict[str, Any] | None:
    for message in analysis(mesh)["messages"]:
        if message.get("origin") == origin and message.get("reference") == reference:
            found: dict[str, Any] = message
            return found
    return None


def test_bad_config_written_to_the_config_dir_shows_up_with_file_and_line(mesh: Mesh) -> None:
    wait_until(lambda: analysis(mesh)["analyzed"], 30, "the first analysis")
    path = mesh.write_config("bad-route.yaml", BAD_ROUTE)
    try:
        found = wait_until(
            lambda: message_at(mesh, "VirtualService default/ratings",
                               f"{path}:{BAD_HOST_LINE}"),
            30, "the bad route on /debug/analyze")
        assert found["code"] == "IST0101"
        assert found["message"] == 'Referenced host not found: "no-such-service"'
        by_resource = analysis(mesh)["resources"]["VirtualService default/ratings"]
        assert [m["code"] for m in by_resource] == ["IST0101"]

        configz = get_json(f"{mesh.debug_url}/debug/configz")["configs"]
        entry = next(c for c in configz if c["kind"] == "VirtualService"
                     and c["name"] == "ratings")
        assert [m["reference"] for m in entry["analysis"]] == [f"{path}:{BAD_HOST_LINE}"]

        _, _, body = http_request(f"127.0.0.1:{mesh.debug_port}", "x", "/metrics")
        assert 'meshpilot_analysis_messages{code="IST0101",level="Error"} 1.0' in body.decode()
    finally:
        path.unlink()
    wait_until(lambda: message_at(mesh, "VirtualService default/ratings",
                                  f"{path}:{BAD_HOST_LINE}") is None,
               30, "the message to go with the file")


def test_a_rejected_document_is_reported_as_schema_error(mesh: Mesh) -> None:
    path = mesh.write_config("rejected.yaml", REJECTED)
    try:
        found = wait_until(
            lambda: message_at(mesh, "DestinationRule default/broken", f"{path}:{REJECTED_LINE}"),
            30, "the rejected document on /debug/analyze")
        assert found["code"] == "IST0106"
        assert "SOMETIMES" in found["message"]
    finally:
        path.unlink()


OVERLAY = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v3
"""


def test_live_cli_lays_a_file_over_the_running_config(mesh: Mesh, tmp_path: Path) -> None:
    change = tmp_path / "reviews.yaml"
    change.write_text(OVERLAY)
    runner = CliRunner()
    served_file = mesh.write_config("bad-route.yaml", BAD_ROUTE)
    try:
        wait_until(lambda: message_at(mesh, "VirtualService default/ratings",
                                      f"{served_file}:{BAD_HOST_LINE}"),
                   30, "the server to serve the bad route")
        served = runner.invoke(app, ["analyze", "--use-kube=true", "--xds-address",
                                     mesh.xds_address, "-o", "json"])
        changed = runner.invoke(app, ["analyze", "--use-kube=true", "--xds-address",
                                      mesh.xds_address, "-o", "json", str(change)])
        as_log = runner.invoke(app, ["analyze", "--live", "--xds-address", mesh.xds_address,
                                     str(change)])
    finally:
        served_file.unlink()

    assert served.exit_code == 0 and changed.exit_code == 0, served.output + changed.output
    before = {(m["code"], m["origin"]) for m in json.loads(served.stdout)}
    after = json.loads(changed.stdout)
    assert ("IST0101", "VirtualService default/reviews") not in before
    missing = [m for m in after if m["origin"] == "VirtualService default/reviews"]
    assert [(m["code"], m["reference"]) for m in missing] == [("IST0101", f"{change}:11")]
    assert missing[0]["message"].endswith('not found: "reviews+v3"')
    # Everything else still comes from the server, pointing into the server's files.
    others = [m for m in after if m["origin"] != "VirtualService default/reviews"]
    assert {(m["origin"], m["reference"]) for m in others} >= {
        ("VirtualService default/ratings", f"{served_file}:{BAD_HOST_LINE}")}
    assert all(m["reference"].startswith(f"{mesh.config_dir}/") for m in others)
    assert as_log.exit_code == 79


def test_analysis_can_be_turned_off(tmp_path: Path) -> None:
    mesh = start(tmp_path, "--no-analysis")
    try:
        status, _, body = http_request(f"127.0.0.1:{mesh.debug_port}", "x", "/debug/analyze")
        assert status == 404, body
        configz = get_json(f"{mesh.debug_url}/debug/configz")["configs"]
        assert configz and all(c["analysis"] is None for c in configz)
        _, _, metrics = http_request(f"127.0.0.1:{mesh.debug_port}", "x", "/metrics")
        assert b"meshpilot_analysis_messages" not in metrics
    finally:
        mesh.stop()


ETCD_CONFIG = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: payments-vm
  namespace: default
spec:
  hosts:
  - payments.default.etcd
  ports:
  - {number: 8080, name: tcp, protocol: TCP}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: orders
  namespace: default
spec:
  hosts:
  - orders.default.etcd
  http:
  - route:
    - destination:
        host: orders.default.etcd
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: orders
  namespace: default
spec:
  host: orders.default.etcd
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
"""
SUBSET_V2_LINE = 37


async def register(port: int, prefix: str, instances: dict[str, dict[str, Any]]) -> None:
    """Write instances in meshpilot's JSON layout, `<prefix><service>/<id>`."""
    client = aetcd.Client("127.0.0.1", port, timeout=5)
    try:
        for key, value in instances.items():
            await client.put(f"{prefix}{key}".encode(), json.dumps(value).encode())
    finally:
        await client.close()


def test_registry_aware_analysis_with_a_real_etcd_registry(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    prefix = f"/t-{uuid.uuid4().hex[:8]}/services/"
    asyncio.run(register(etcd_server.port, prefix, {
        "orders/orders-1": {"address": "10.9.0.1", "port": 8080,
                            "metadata": {"version": "v1", "protocol": "http"}},
        "payments/payments-1": {"address": "10.9.1.1", "port": 8080,
                                "metadata": {"protocol": "http"}},
    }))
    mesh = start(tmp_path, "--registry",
                 f"etcd://{etcd_server.address}?prefix={prefix}&layout=json")
    try:
        path = mesh.write_config("etcd-services.yaml", ETCD_CONFIG)

        def found() -> set[tuple[str, str, str]] | None:
            messages = analysis(mesh)["messages"]
            got = {(m["code"], m["origin"], m.get("reference", "")) for m in messages}
            return got if any(code == "MP0004" for code, _, _ in got) else None

        got = wait_until(found, 30, "analysis with the etcd registry")
        # The route and the rule resolve against the etcd service; subset v2 matches none of
        # its endpoints; the ServiceEntry redefines an etcd service, with another protocol.
        assert ("MP0004", "DestinationRule default/orders", f"{path}:{SUBSET_V2_LINE}") in got
        shadow = {code for code, origin, _ in got if origin == "ServiceEntry default/payments-vm"}
        assert {"MP0001", "MP0002"} <= shadow
        about_orders = {(code, reference) for code, origin, reference in got
                        if origin in ("VirtualService default/orders",
                                      "DestinationRule default/orders")}
        # Subset v1 selects the etcd instance; only v2 is reported (by Istio's code too).
        assert about_orders == {("MP0004", f"{path}:{SUBSET_V2_LINE}"),
                                ("IST0173", f"{path}:{SUBSET_V2_LINE}")}

        # Live CLI: dropping subset v2 in a local copy clears MP0004 before it is deployed.
        fixed = tmp_path / "orders-rule.yaml"
        fixed.write_text(ETCD_CONFIG.split("---\n")[2].replace(
            "  - name: v2\n    labels: {version: v2}\n", ""))
        result = CliRunner().invoke(app, ["analyze", "--use-kube=true", "--xds-address",
                                          mesh.xds_address, "-o", "json", str(fixed)])
        assert result.exit_code == 0, result.output
        codes = {(m["code"], m["origin"]) for m in json.loads(result.stdout)}
        assert ("MP0004", "DestinationRule default/orders") not in codes
        assert ("MP0002", "ServiceEntry default/payments-vm") in codes
    finally:
        mesh.stop()
