"""End to end: a WasmPlugin built from AssemblyScript runs in a real Envoy sidecar, and changing
it reaches Envoy as an ECDS update alone."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshpilot.demo.mesh import Mesh, example_workloads, http_request, wait_until
from tests.wasm_build import build_add_header

pytestmark = pytest.mark.e2e


def plugin(module: Path, value: str) -> str:
    return f"""
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: add-header, namespace: default}}
spec:
  selector: {{matchLabels: {{app: client}}}}
  url: file://{module}
  pluginName: add_header
  pluginConfig: "{value}"
  match: [{{mode: CLIENT}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Path]]:
    module = build_add_header()
    prefix = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
    mesh = Mesh(tmp_path_factory.mktemp("wasm"), prefix=prefix)
    mesh.write_example_config()
    mesh.write_config("wasm.yaml", plugin(module, "first"))
    mesh.start_discovery(["--debounce-after", "0.05"])
    try:
        mesh.wait_ready()
        for workload in example_workloads(mesh)[:3]:
            mesh.start_workload(workload)
        for name in mesh.workloads:
            mesh.wait_envoy_ready(name)
        yield mesh, module
    finally:
        mesh.stop()


def header(mesh: Mesh) -> str | None:
    address = f"{mesh.workloads['client'].outbound_bind}:9080"
    return http_request(address, "reviews")[1].get("x-wasm")


def listener_versions(mesh: Mesh) -> dict[str, str]:
    for config in mesh.envoy_config_dump("client")["configs"]:
        if config["@type"].endswith("ListenersConfigDump"):
            return {item["name"]: item["active_state"]["version_info"]
                    for item in config.get("dynamic_listeners", [])}
    return {}


def test_plugin_runs_and_updates_over_ecds_only(mesh: tuple[Mesh, Path]) -> None:
    m, module = mesh
    wait_until(lambda: header(m) == "first", 20, "the filter's header")
    before = listener_versions(m)
    m.write_config("wasm.yaml", plugin(module, "second"))
    wait_until(lambda: header(m) == "second", 20, "the new configuration")
    assert listener_versions(m) == before  # listeners were not re-sent
    dump = json.dumps(m.envoy_config_dump("client"))
    assert "default.add-header" in dump


def test_other_workloads_are_not_selected(mesh: tuple[Mesh, Path]) -> None:
    m, _ = mesh
    wait_until(lambda: header(m) is not None, 20, "the plugin on the client")
    app = m.workloads["reviews-v1"]
    # reviews-v1's own sidecar serves its inbound side without the plugin (mode CLIENT).
    status, headers, _ = http_request(f"{app.ip}:9080", "reviews")
    assert status == 200 and "x-wasm" not in headers
