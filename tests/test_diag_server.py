"""Sync status, debug topics and metrics of the server, driven by the raw ADS client.

Each status is produced the way a proxy produces it: a response not yet answered is STALE, an
ACK makes it SYNCED, a NACK makes it ERROR with the proxy's text, a type never asked for is
IGNORED. Every answer is read over HTTP and over xDS (`istio.io/debug/syncz`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from envoy.service.status.v3 import csds_pb2

from meshpilot.debug.http import start_debug_server
from meshpilot.diagnostics import xdsclient
from tests.configs import destination_rule, service_entry, virtual_service, workload_entry
from tests.conftest import Harness
from tests.xds_client import CLUSTER, LISTENER, ROUTE, AdsClient

REVIEWS = "reviews.default.svc.cluster.local"


def mesh(harness: Harness) -> None:
    harness.store.apply(service_entry("reviews", [REVIEWS], selector={"app": "reviews"}))
    harness.store.apply(
        workload_entry("reviews-v1", "127.0.1.1", {"app": "reviews", "version": "v1"})
    )
    harness.store.apply(
        destination_rule("reviews", REVIEWS, [{"name": "v1", "labels": {"version": "v1"}}])
    )
    harness.store.mark_synced()


@pytest.fixture
async def debug_url(xds: Harness) -> AsyncIterator[str]:
    runner = await start_debug_server(xds.server, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def get(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
        assert response.status == 200, text
        return json.loads(text) if "json" in response.content_type else text


async def syncz_over_xds(harness: Harness) -> list[csds_pb2.ClientConfig]:
    report = await asyncio.to_thread(xdsclient.sync_report, f"127.0.0.1:{harness.port}")
    return report.proxies


def statuses(config: csds_pb2.ClientConfig) -> dict[str, str]:
    return {
        g.type_url.rsplit(".", 1)[-1]: csds_pb2.ConfigStatus.Name(g.config_status)
        for g in config.generic_xds_configs
    }


async def test_stale_then_synced_then_error_with_envoys_text(xds: Harness, debug_url: str) -> None:
    mesh(xds)
    client = AdsClient(xds.port)
    clusters = await client.request(CLUSTER)

    (entry,) = await get(f"{debug_url}/debug/syncz")
    assert entry["CDS"]["status"] == "STALE"
    assert entry["cluster_sent"] == clusters.nonce and entry["cluster_acked"] == ""
    assert entry["LDS"]["status"] == "IGNORED" and entry["ECDS"]["status"] == "IGNORED"
    assert entry["proxy"] == client.node.id and entry["cluster_id"] == "Kubernetes"

    await client.ack(clusters)
    await client.expect_no_response()
    (entry,) = await get(f"{debug_url}/debug/syncz")
    assert entry["CDS"]["status"] == "SYNCED"
    assert entry["cluster_acked"] == clusters.nonce
    assert entry["CDS"]["since"] > 0

    listeners = await client.request(LISTENER)
    await client.nack(listeners, "Error adding/updating listener(s) x: bad")
    await client.expect_no_response()
    (entry,) = await get(f"{debug_url}/debug/syncz")
    assert entry["LDS"]["status"] == "ERROR"
    assert entry["LDS"]["error"] == "Error adding/updating listener(s) x: bad"

    (config,) = await syncz_over_xds(xds)
    assert config.node.id == client.node.id
    assert statuses(config) == {
        "Cluster": "SYNCED",
        "Listener": "ERROR",
        "ClusterLoadAssignment": "UNKNOWN",
        "RouteConfiguration": "UNKNOWN",
        "TypedExtensionConfig": "UNKNOWN",
    }
    (lds,) = [g for g in config.generic_xds_configs if g.type_url == LISTENER]
    assert lds.error_state.details == "Error adding/updating listener(s) x: bad"
    await client.close()


async def test_debug_stream_is_not_a_proxy(xds: Harness, debug_url: str) -> None:
    mesh(xds)
    assert await syncz_over_xds(xds) == []
    client = AdsClient(xds.port)
    await client.ack(await client.request(CLUSTER))
    assert len(await syncz_over_xds(xds)) == 1
    adsz = await get(f"{debug_url}/debug/adsz")
    assert [c["proxy"] for c in adsz["clients"]] == [client.node.id]
    await client.close()


async def test_syncz_namespace_filter(xds: Harness, debug_url: str) -> None:
    mesh(xds)
    client = AdsClient(xds.port)
    await client.ack(await client.request(CLUSTER))
    assert len(await get(f"{debug_url}/debug/syncz?namespace=default")) == 1
    assert await get(f"{debug_url}/debug/syncz?namespace=other") == []
    await client.close()


async def test_config_dump_is_what_the_server_would_send(xds: Harness, debug_url: str) -> None:
    mesh(xds)
    xds.store.apply(
        virtual_service("reviews", ["reviews"], [{"route": [{"destination": {"host": "reviews"}}]}])
    )
    client = AdsClient(xds.port)
    await client.ack(await client.request(CLUSTER))
    dump = await get(f"{debug_url}/debug/config_dump?proxyID={client.node.id}")
    sections = {c["@type"].rsplit(".", 1)[-1]: c for c in dump["configs"]}
    clusters = [
        c["cluster"]["name"] for c in sections["ClustersConfigDump"]["dynamic_active_clusters"]
    ]
    assert f"outbound|9080|v1|{REVIEWS}" in clusters
    listeners = [entry["name"] for entry in sections["ListenersConfigDump"]["dynamic_listeners"]]
    assert "127.0.0.2_9080" in listeners
    routes = sections["RoutesConfigDump"]["dynamic_route_configs"]
    assert [r["route_config"]["name"] for r in routes] == ["9080"]
    endpoints = sections["EndpointsConfigDump"]["dynamic_endpoint_configs"]
    assert f"outbound|9080|v1|{REVIEWS}" in [
        e["endpoint_config"]["cluster_name"] for e in endpoints
    ]

    # The same over xDS, by node id or by workload.namespace.
    over_xds = await asyncio.to_thread(
        xdsclient.topic, f"127.0.0.1:{xds.port}", "config_dump?proxyID=client.default"
    )
    assert over_xds == dump
    with pytest.raises(xdsclient.ServerError, match="not connected"):
        await asyncio.to_thread(
            xdsclient.topic, f"127.0.0.1:{xds.port}", "config_dump?proxyID=nobody"
        )
    await client.close()


async def test_metrics_use_istio_names(xds: Harness, debug_url: str) -> None:
    mesh(xds)
    client = AdsClient(xds.port)
    clusters = await client.request(CLUSTER)
    await client.nack(clusters, "no")
    routes = await client.request(ROUTE, ["9080"])
    await client.ack(routes, ["9080"])
    xds.store.apply(service_entry("ratings", ["ratings.default.svc.cluster.local"]))
    await client.expect_response(CLUSTER)
    text = await get(f"{debug_url}/metrics")
    lines = text.splitlines()
    assert 'pilot_xds{version="unknown"} 1.0' in lines
    assert "pilot_services 2.0" in lines
    assert 'pilot_total_xds_rejects_total{type="cds"} 1.0' in lines
    assert any(line.startswith('pilot_xds_pushes_total{type="cds"}') for line in lines)
    assert any(
        line.startswith('pilot_xds_push_time_bucket{le="0.01",type="rds"}') for line in lines
    )
    assert any(
        line.startswith("pilot_proxy_convergence_time_count") and not line.endswith(" 0.0")
        for line in lines
    )
    assert any(
        line.startswith("pilot_debounce_time_count") and not line.endswith(" 0.0") for line in lines
    )
    assert 'pilot_k8s_cfg_events_total{event="add",type="ServiceEntry"} 2.0' in lines
    assert 'pilot_push_triggers_total{type="config"} 1.0' in lines or any(
        line.startswith('pilot_push_triggers_total{type="service"}') for line in lines
    )
    await client.close()


async def test_topics_and_list(xds: Harness, debug_url: str) -> None:
    mesh(xds)
    client = AdsClient(xds.port)
    await client.ack(await client.request(CLUSTER))
    listing = await get(f"{debug_url}/debug/list")
    for path in (
        "/ready",
        "/metrics",
        "/debug/syncz",
        "/debug/config_dump",
        "/debug/adsz",
        "/debug/registryz",
        "/debug/configz",
        "/debug/push_status",
    ):
        assert listing[path], path
    registry = await get(f"{debug_url}/debug/registryz")
    (reviews,) = registry["services"]
    assert reviews["registry"] == "serviceentry"
    assert [e["address"] for e in reviews["endpoints"]] == ["127.0.1.1"]
    configz = await get(f"{debug_url}/debug/configz")
    assert {c["kind"] for c in configz["configs"]} == {
        "ServiceEntry",
        "WorkloadEntry",
        "DestinationRule",
    }
    assert all(c["status"] == "valid" for c in configz["configs"])
    status = await get(f"{debug_url}/debug/push_status")
    assert status["connectedProxies"] == 1
    assert status["proxyStatus"]["CDS"] == {"SYNCED": 1}
    assert await get(f"{debug_url}/ready") == "ready\n"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{debug_url}/debug/config_dump") as response:
            assert response.status == 400
        async with session.get(f"{debug_url}/debug/config_dump?proxyID=x") as response:
            assert response.status == 404
    await client.close()
