"""Tracing and access logging: which Telemetry applies, what the connection managers carry,
and that a real Envoy accepts it."""

from __future__ import annotations

from typing import Any

from envoy.config.trace.v3 import zipkin_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2

from meshpilot.config.validation import validate_telemetry
from meshpilot.envoy import telemetry
from meshpilot.model import Config, Kind
from meshpilot.model.meshconfig import MeshConfig
from meshpilot.model.snapshot import Snapshot
from tests.configs import service_entry
from tests.envoy_check import envoy_rejects
from tests.simulation import sidecar, snapshot_of

ZIPKIN = "zipkin.istio-system.svc.cluster.local"
MESH = MeshConfig.from_user({
    "extensionProviders": [
        {"name": "zipkin", "zipkin": {"service": ZIPKIN, "port": 9411}},
        {"name": "json-log", "envoyFileAccessLog": {
            "path": "/dev/stdout", "logFormat": {"labels": {"code": "%RESPONSE_CODE%"}}}},
    ],
    "defaultProviders": {"tracing": ["zipkin"]},
})


def snapshot(*telemetries: Config, mesh: MeshConfig = MESH) -> Snapshot:
    base = snapshot_of([
        service_entry("zipkin", [ZIPKIN], ports=[{"number": 9411, "name": "http",
                                                  "protocol": "HTTP"}],
                      namespace="istio-system", endpoints=[{"address": "127.0.0.9"}]),
        service_entry("reviews", ["reviews.default.svc.cluster.local"],
                      endpoints=[{"address": "10.0.0.1"}]),
        *telemetries,
    ])
    return Snapshot.build(base.version, base.services.values(),
                          [e for group in base.endpoints.values() for e in group],
                          [*base.virtual_services, *telemetries], mesh=mesh)


def tel(namespace: str, spec: dict[str, Any], name: str = "t") -> Config:
    return Config(Kind.TELEMETRY, name, namespace, spec, group="telemetry.istio.io")


def zipkin_of(result: telemetry.ProxyTelemetry) -> Any:
    config = zipkin_pb2.ZipkinConfig()
    result.tracing.provider.typed_config.Unpack(config)
    return config


def test_mesh_default_provider_and_sampling() -> None:
    result = telemetry.for_proxy(snapshot(), sidecar())
    assert result.tracing.random_sampling.value == 1.0  # Istio's default 1%
    assert zipkin_of(result).collector_cluster == f"outbound|9411||{ZIPKIN}"
    assert result.access_logs == ()


def test_most_specific_telemetry_wins() -> None:
    mesh_wide = tel("istio-system", {"tracing": [{"randomSamplingPercentage": 10}]}, "mesh")
    namespace = tel("default", {"tracing": [{"randomSamplingPercentage": 50}]}, "ns")
    workload = tel("default", {"selector": {"matchLabels": {"app": "client"}},
                               "tracing": [{"randomSamplingPercentage": 100,
                                            "customTags": {"team": {"literal": {"value": "a"}}}}]},
                   "wl")
    snap = snapshot(mesh_wide, namespace, workload)
    assert telemetry.for_proxy(snap, sidecar()).tracing.random_sampling.value == 100
    assert telemetry.for_proxy(snap, sidecar("other")).tracing.random_sampling.value == 50
    assert telemetry.for_proxy(snap, sidecar("x", namespace="shop")
                               ).tracing.random_sampling.value == 10


def test_access_logging_json_and_disabled() -> None:
    on = tel("default", {"accessLogging": [{"providers": [{"name": "json-log"}]}]})
    (entry,) = telemetry.for_proxy(snapshot(on), sidecar()).access_logs
    config = file_pb2.FileAccessLog()
    entry.typed_config.Unpack(config)
    assert dict(config.log_format.json_format) == {"code": "%RESPONSE_CODE%"}
    off = tel("default", {"accessLogging": [{"disabled": True}]})
    assert telemetry.for_proxy(snapshot(off), sidecar()).access_logs == ()


def test_unknown_collector_turns_tracing_off() -> None:
    mesh = MeshConfig.from_user({"extensionProviders": [
        {"name": "zipkin", "zipkin": {"service": "nowhere.example", "port": 9411}}],
        "defaultProviders": {"tracing": ["zipkin"]}})
    assert telemetry.for_proxy(snapshot(mesh=mesh), sidecar()).tracing is None


def test_envoy_accepts_tracing_and_logs() -> None:
    both = tel("default", {"tracing": [{"randomSamplingPercentage": 100, "customTags": {
        "env": {"environment": {"name": "HOME", "defaultValue": "x"}},
        "user": {"header": {"name": "x-user"}}}}],
        "accessLogging": [{"providers": [{"name": "json-log"}, {"name": "envoy"}]}]})
    assert envoy_rejects(snapshot(both), sidecar(ips=["10.0.0.1"])) == ""


def test_validation() -> None:
    assert validate_telemetry({"tracing": [{"randomSamplingPercentage": 200}]})[0].field == (
        "spec.tracing[0].randomSamplingPercentage")
    bad_tag = {"tracing": [{"customTags": {"t": {"literal": {"value": "a"},
                                                 "header": {"name": "b"}}}}]}
    assert "exactly one" in validate_telemetry(bad_tag)[0].message
