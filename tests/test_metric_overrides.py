"""Telemetry metrics overrides on the Istio metrics the console republishes: the exact
exposition for the console tests' synthetic stats, with mesh-wide, namespace and workload
Telemetry resources; expression support; the support table."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from meshpilot.config.support import unsupported_fields
from meshpilot.config.validation import validate_telemetry
from meshpilot.console import metric_overrides
from meshpilot.console.metric_overrides import Row, Rule, merge
from meshpilot.model import Config, Kind
from meshpilot.model.snapshot import Snapshot
from tests.test_console import Env, connect, env, feed  # noqa: F401 (fixture)

SOURCE = (
    'destination_service="reviews.default.svc.cluster.local",destination_service_name="reviews",'
    'destination_service_namespace="default",destination_version="{version}",'
    'destination_workload="unknown",destination_workload_namespace="unknown",'
    'reporter="source",source_workload="client",source_workload_namespace="default"'
)
DURATION = (
    'destination_service="reviews.default.svc.cluster.local",destination_service_name="reviews",'
    'destination_service_namespace="default",destination_workload="unknown",'
    'destination_workload_namespace="unknown",le="{le}",mesh="blue",reporter="source",'
    'source_workload="client",source_workload_namespace="default"'
)
SERVED = (
    'destination_service="reviews.default.svc.cluster.local",destination_service_name="reviews",'
    'destination_service_namespace="default",destination_version="v1",'
    'destination_workload="reviews-v1",destination_workload_namespace="default",port="9080",'
    'reporter="destination",response_code="200",source_workload="unknown",'
    'source_workload_namespace="unknown",team="reviews-team"'
)


def telemetry(namespace: str, name: str, spec: dict[str, Any]) -> Config:
    return Config(Kind.TELEMETRY, name, namespace, spec, group="telemetry.istio.io")


def series(env: Env) -> list[str]:  # noqa: F811
    text = env.harness.server.metrics.exposition().decode()
    return [line for line in text.splitlines() if line.startswith("istio_")]


async def test_overrides_by_precedence(env: Env) -> None:  # noqa: F811
    store = env.harness.store
    # Mesh-wide: client-side request counts lose response_code (rows of a version sum up).
    store.apply(telemetry("istio-system", "mesh", {"metrics": [{
        "providers": [{"name": "prometheus"}],
        "overrides": [{"match": {"metric": "REQUEST_COUNT", "mode": "CLIENT"},
                       "tagOverrides": {"response_code": {"operation": "REMOVE"}}}]}]}))
    # The namespace: no TCP metric; server-side rows get a literal and the port.
    store.apply(telemetry("default", "ns", {"metrics": [{"overrides": [
        {"match": {"metric": "TCP_OPENED_CONNECTIONS"}, "disabled": True},
        {"match": {"mode": "SERVER"}, "tagOverrides": {
            "team": {"value": '"reviews-team"'}, "port": {"value": "destination.port"}}},
    ]}]}))
    # The client workload: its durations without the version, with a label of its own.
    store.apply(telemetry("default", "client", {
        "selector": {"matchLabels": {"app": "client"}},
        "metrics": [{"overrides": [{"match": {"metric": "REQUEST_DURATION"}, "tagOverrides": {
            "destination_version": {"operation": "REMOVE"},
            "mesh": {"operation": "UPSERT", "value": "'blue'"}}}]}]}))
    await env.harness.settle()
    feed(env, await connect(env))
    assert series(env) == [
        f"istio_requests_total{{{SOURCE.format(version='v1')}}} 180.0",
        f"istio_requests_total{{{SOURCE.format(version='v2')}}} 20.0",
        f"istio_requests_total{{{SERVED}}} 80.0",
        f"istio_request_duration_milliseconds_bucket{{{DURATION.format(le='5.0')}}} 120.0",
        f"istio_request_duration_milliseconds_bucket{{{DURATION.format(le='10.0')}}} 190.0",
        f"istio_request_duration_milliseconds_bucket{{{DURATION.format(le='25.0')}}} 200.0",
        f"istio_request_duration_milliseconds_bucket{{{DURATION.format(le='+Inf')}}} 200.0",
    ]


async def test_more_specific_wins_and_other_providers_do_not_apply(
    env: Env,  # noqa: F811
) -> None:
    store = env.harness.store
    store.apply(telemetry("istio-system", "mesh", {"metrics": [{"overrides": [
        {"disabled": True}]}]}))
    # The namespace turns the client side back on; an entry for another provider is ignored.
    store.apply(telemetry("default", "ns", {"metrics": [
        {"overrides": [{"match": {"mode": "CLIENT", "metric": "REQUEST_COUNT"},
                        "disabled": False}]},
        {"providers": [{"name": "stackdriver"}], "overrides": [{"disabled": False}]},
    ]}))
    await env.harness.settle()
    feed(env, await connect(env))
    assert [line.split("{")[0] for line in series(env)] == ["istio_requests_total"] * 3
    assert all('reporter="source"' in line for line in series(env))


def test_expressions(caplog: pytest.LogCaptureFixture) -> None:
    row = Row(9080, "outbound|9080|v1|reviews.default.svc.cluster.local")
    origin = "Telemetry default/t"
    assert metric_overrides.evaluate('"a \\"b\\""', row, origin) == 'a "b"'
    assert metric_overrides.evaluate("destination.port", row, origin) == "9080"
    assert metric_overrides.evaluate("xds.cluster_name", row, origin) == row.cluster
    with caplog.at_level(logging.WARNING, "meshpilot.console"):
        rule = Rule(tags={"host": ("request.host", origin), "reporter": None})
        assert rule.labels({"reporter": "source", "host": "x"}, row) == {"host": "x"}
        rule.labels({}, row)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("Telemetry default/t: metrics tagOverrides value 'request.host' "
                              "is not supported by meshpilot")


def test_merge_modes_and_custom_metrics() -> None:
    snap = Snapshot.build("1", [], [], [])
    rules = merge(snap, [telemetry("default", "t", {"metrics": [{"overrides": [
        {"match": {"mode": "CLIENT_AND_SERVER", "metric": "REQUEST_DURATION"}, "disabled": True},
        {"match": {"customMetric": "my_metric"}, "disabled": True},
        {"match": {"metric": "GRPC_REQUEST_MESSAGES"}, "disabled": True},
    ]}]})])
    assert {key: rule.disabled for key, rule in rules.items()} == {
        ("istio_request_duration_milliseconds", "CLIENT"): True,
        ("istio_request_duration_milliseconds", "SERVER"): True,
    }


def test_support_table_names_what_is_not_applied() -> None:
    config = telemetry("default", "t", {"metrics": [{
        "providers": [{"name": "prometheus"}], "reportingInterval": "10s",
        "overrides": [{"match": {"metric": "REQUEST_COUNT", "mode": "CLIENT",
                                 "customMetric": "x"}, "disabled": False,
                       "tagOverrides": {"a": {"operation": "UPSERT", "value": "'b'"}}}]}]})
    assert unsupported_fields(config) == ["spec.metrics[0].reportingInterval",
                                          "spec.metrics[0].overrides[0].match.customMetric"]


def test_validation() -> None:
    problems = validate_telemetry({"metrics": [{"overrides": [
        {"match": {"metric": "REQUEST_COUNTS", "mode": "BOTH"},
         "tagOverrides": {"a": {"operation": "UPSERT"}, "b": {"operation": "DROP"},
                          "c": {"operation": "REMOVE"}, "d": {"value": "'x'"}}},
    ]}]})
    assert [p.field for p in problems] == [
        "spec.metrics[0].overrides[0].match.metric",
        "spec.metrics[0].overrides[0].match.mode",
        "spec.metrics[0].overrides[0].tagOverrides.a.value",
        "spec.metrics[0].overrides[0].tagOverrides.b.operation",
        "spec.metrics[0].overrides[0].tagOverrides.b.value",
    ]
