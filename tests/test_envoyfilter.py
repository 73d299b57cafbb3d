"""EnvoyFilter patches on generated config, checked on the protos and by a real Envoy."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2

from meshpilot.envoy.generators import GENERATORS
from meshpilot.envoy.names import CLUSTER, LISTENER, ROUTE
from meshpilot.model import Config, Kind
from tests.envoy_check import envoy_rejects
from tests.simulation import sidecar, snapshot_of
from tests.test_translation import MESH, REVIEWS
from tests.xds_client import unpack

LUA = {
    "name": "envoy.filters.http.lua",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": (
            "function envoy_on_response(h) h:headers():add('x-lua', 'yes') end")},
    },
}


def envoy_filter(*patches: dict[str, Any], namespace: str = "default",
                 selector: dict[str, str] | None = None) -> Config:
    spec: dict[str, Any] = {"configPatches": list(patches)}
    if selector:
        spec["workloadSelector"] = {"labels": selector}
    return Config(Kind.ENVOY_FILTER, "ef", namespace, spec, version="v1alpha3")


def generated(type_url: str, *configs: Config, names: list[str] | None = None) -> list[Any]:
    snapshot = snapshot_of([*MESH, *configs])
    resources = GENERATORS[type_url].generate(snapshot, sidecar(), names)
    return unpack(discovery_pb2.DiscoveryResponse(type_url=type_url,
                                                  resources=[r.body for r in resources]))


def http_filters(listener: Any) -> list[str]:
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return [f.name for f in manager.http_filters]


INSERT_LUA = {
    "applyTo": "HTTP_FILTER",
    "match": {"context": "SIDECAR_OUTBOUND", "listener": {"portNumber": 9080, "filterChain": {
        "filter": {"name": "envoy.filters.network.http_connection_manager",
                   "subFilter": {"name": "envoy.filters.http.router"}}}}},
    "patch": {"operation": "INSERT_BEFORE", "value": LUA},
}


def test_insert_http_filter_before_router() -> None:
    (listener,) = [lst for lst in generated(LISTENER, envoy_filter(INSERT_LUA))
                   if lst.address.socket_address.port_value == 9080]
    assert http_filters(listener)[-2:] == ["envoy.filters.http.lua", "envoy.filters.http.router"]


def test_merge_cluster_and_add_cluster() -> None:
    merge = {"applyTo": "CLUSTER", "match": {"cluster": {"service": REVIEWS, "subset": "v1"}},
             "patch": {"operation": "MERGE", "value": {"connect_timeout": "3s"}}}
    add = {"applyTo": "CLUSTER", "patch": {"operation": "ADD", "value": {
        "name": "extra", "type": "STATIC", "connectTimeout": "1s"}}}
    by_name = {c.name: c for c in generated(CLUSTER, envoy_filter(merge, add))}
    assert by_name[f"outbound|9080|v1|{REVIEWS}"].connect_timeout.seconds == 3
    assert by_name[f"outbound|9080||{REVIEWS}"].connect_timeout.seconds == 10
    assert "extra" in by_name


def test_route_merge_on_a_virtual_host() -> None:
    patch = {"applyTo": "VIRTUAL_HOST", "match": {"routeConfiguration": {
        "portNumber": 9080, "vhost": {"name": f"{REVIEWS}:9080"}}},
        "patch": {"operation": "MERGE", "value": {"include_request_attempt_count": True}}}
    (config,) = generated(ROUTE, envoy_filter(patch), names=["9080"])
    vhost = next(v for v in config.virtual_hosts if v.name == f"{REVIEWS}:9080")
    assert vhost.include_request_attempt_count


def test_workload_selector_and_unmatched_patch_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="meshpilot.envoy")
    other = envoy_filter(INSERT_LUA, selector={"app": "someone-else"})
    (listener,) = [lst for lst in generated(LISTENER, other)
                   if lst.address.socket_address.port_value == 9080]
    assert "envoy.filters.http.lua" not in http_filters(listener)
    nothing = {**INSERT_LUA, "match": {**INSERT_LUA["match"], "listener": {"portNumber": 1}}}
    generated(LISTENER, envoy_filter(nothing))
    assert any("configPatches[0]" in r.getMessage() and "matched nothing" in r.getMessage()
               for r in caplog.records)


def test_envoy_accepts_patched_config() -> None:
    snapshot = snapshot_of([*MESH, envoy_filter(INSERT_LUA)])
    assert envoy_rejects(snapshot, sidecar()) == ""


@pytest.mark.parametrize("typed_struct", ["udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"])
def test_typed_struct_configs_pass_to_envoy(typed_struct: str) -> None:
    """A filter config written as a TypedStruct (type URL + plain struct) goes to Envoy as
    such; Envoy converts it to the filter's own type."""
    buffer = {"name": "envoy.filters.http.buffer", "typed_config": {
        "@type": f"type.googleapis.com/{typed_struct}",
        "type_url": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "value": {"max_request_bytes": 4096},
    }}
    patch = {**INSERT_LUA, "patch": {"operation": "INSERT_BEFORE", "value": buffer}}
    (listener,) = [lst for lst in generated(LISTENER, envoy_filter(patch))
                   if lst.address.socket_address.port_value == 9080]
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    (added,) = [f for f in manager.http_filters if f.name == "envoy.filters.http.buffer"]
    assert added.typed_config.type_url == f"type.googleapis.com/{typed_struct}"
    snapshot = snapshot_of([*MESH, envoy_filter(patch)])
    assert envoy_rejects(snapshot, sidecar()) == ""
    # A TypedStruct whose struct does not fit the named type is refused by Envoy, so the
    # check above is not vacuous.
    bad = {**buffer, "typed_config": {**buffer["typed_config"],  # type: ignore[dict-item]
                                      "value": {"no_such_field": 1}}}
    bad_patch = {**INSERT_LUA, "patch": {"operation": "INSERT_BEFORE", "value": bad}}
    assert envoy_rejects(snapshot_of([*MESH, envoy_filter(bad_patch)]), sidecar()) != ""


def test_proxies_selected_by_the_same_filters_share_one_patched_list() -> None:
    # Patched output is kept per snapshot by (resources, selecting filters, proxy type), so
    # a thousand selected sidecars cost one patch and share one response, not one copy each.
    snapshot = snapshot_of([*MESH, envoy_filter(INSERT_LUA, selector={"tier": "web"})])
    web = [sidecar(f"web-{i}", labels={"app": f"web-{i}", "tier": "web"}) for i in range(3)]
    lists = [GENERATORS[LISTENER].generate(snapshot, p, None) for p in web]
    assert lists[0] is lists[1] is lists[2]
    plain = GENERATORS[LISTENER].generate(snapshot, sidecar("api"), None)
    assert plain is not lists[0]

    def lua_at_9080(resources: list[Any]) -> bool:
        response = discovery_pb2.DiscoveryResponse(
            type_url=LISTENER, resources=[r.body for r in resources])
        (listener,) = [lst for lst in unpack(response)
                       if lst.address.socket_address.port_value == 9080]
        return "envoy.filters.http.lua" in http_filters(listener)

    assert lua_at_9080(lists[0]) and not lua_at_9080(plain)
