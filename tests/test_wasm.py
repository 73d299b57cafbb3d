"""WasmPlugin: modules fetched by the server, ECDS resources, filter placement."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2

from meshpilot.config.store import MemoryStore
from meshpilot.envoy import wasm
from meshpilot.extensions.modules import WasmModules
from meshpilot.model import Config, Kind, PushRequest
from meshpilot.model.snapshot import Snapshot
from tests.envoy_check import envoy_rejects
from tests.simulation import sidecar, snapshot_of
from tests.test_translation import MESH

MODULE = b"\x00asm\x01\x00\x00\x00"  # the smallest valid module header, enough for ECDS shape


class NoPush:
    def config_update(self, request: PushRequest) -> None:
        pass


def plugin(url: str, **spec: Any) -> Config:
    return Config(Kind.WASM_PLUGIN, "hdr", "default", {"url": url, **spec},
                  group="extensions.istio.io", version="v1alpha1")


def with_modules(configs: list[Config], modules: dict[tuple[str, str], bytes]) -> Snapshot:
    base = snapshot_of([*MESH, *configs])
    return Snapshot.build(base.version, base.services.values(),
                          [e for g in base.endpoints.values() for e in g],
                          [*base.virtual_services, *base.destination_rules, *configs],
                          wasm_modules=modules)


def test_file_module_is_read_and_digest_checked(tmp_path: Path) -> None:
    path = tmp_path / "f.wasm"
    path.write_bytes(MODULE)
    store = MemoryStore()
    good = plugin(f"file://{path}", sha256=hashlib.sha256(MODULE).hexdigest())
    bad = Config(Kind.WASM_PLUGIN, "bad", "default", {"url": f"file://{path}", "sha256": "00"},
                 group="extensions.istio.io")
    store.apply(good)
    store.apply(bad)
    modules = WasmModules(store, NoPush())
    assert modules.loaded() == {(f"file://{path}", hashlib.sha256(MODULE).hexdigest()): MODULE}
    assert "sha256 is" in modules.problems()[(f"file://{path}", "00")]


def test_ecds_resource_and_filter_placement() -> None:
    config = plugin("file:///x.wasm", pluginName="add_header", pluginConfig={"v": 1},
                    phase="AUTHN", selector={"matchLabels": {"app": "client"}})
    snapshot = with_modules([config], {("file:///x.wasm", ""): MODULE})
    (resource,) = wasm.extension_configs(snapshot, None)
    assert resource.name == "default.hdr"
    body = wasm_pb2.Wasm()
    resource.typed_config.Unpack(body)
    assert body.config.root_id == "add_header"
    assert body.config.vm_config.code.local.inline_bytes == MODULE
    assert [p.name for p in wasm.plugins_for(snapshot, sidecar(), "CLIENT", 9080)] == ["hdr"]
    assert wasm.plugins_for(snapshot, sidecar("other"), "CLIENT", 9080) == []


def test_plugin_without_module_is_left_out() -> None:
    snapshot = with_modules([plugin("http://nowhere.invalid/x.wasm")], {})
    assert wasm.extension_configs(snapshot, None) == []
    assert wasm.plugins_for(snapshot, sidecar(), "CLIENT", 9080) == []


@pytest.mark.parametrize("phase", ["AUTHN", "STATS"])
def test_envoy_accepts_listeners_with_ecds_filters(phase: str) -> None:
    snapshot = with_modules([plugin("file:///x.wasm", phase=phase)],
                            {("file:///x.wasm", ""): MODULE})
    assert envoy_rejects(snapshot, sidecar(ips=["10.0.0.9"])) == ""
