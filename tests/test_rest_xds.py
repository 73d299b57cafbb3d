"""REST-JSON xDS answers from the same snapshot cache as ADS: same resources, 304 when the
client is current, config sources pointed at REST for clients that have no ADS stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from meshpilot.xds.rest import start_rest_server
from tests.configs import service_entry, workload_entry
from tests.conftest import Harness
from tests.xds_client import CLUSTER, ENDPOINT, LISTENER, ROUTE, AdsClient, make_node, unpack

REVIEWS = "reviews.default.svc.cluster.local"
V1 = f"outbound|9080||{REVIEWS}"
PATHS = {CLUSTER: "clusters", LISTENER: "listeners", ROUTE: "routes", ENDPOINT: "endpoints"}


@pytest.fixture
async def rest(xds: Harness) -> AsyncIterator[tuple[Harness, str]]:
    xds.store.apply(service_entry("reviews", [REVIEWS], selector={"app": "reviews"}))
    xds.store.apply(workload_entry("reviews-1", "127.0.1.1", {"app": "reviews"}))
    runner, port = await start_rest_server(xds.server, "127.0.0.1", 0)
    try:
        yield xds, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _post(base: str, type_url: str, names: list[str], version: str = "") -> Any:
    request = discovery_pb2.DiscoveryRequest(
        node=make_node(), resource_names=names, version_info=version, type_url=type_url
    )
    async with aiohttp.ClientSession() as session, session.post(
        f"{base}/v3/discovery:{PATHS[type_url]}", data=json_format.MessageToJson(request)
    ) as answer:
        if answer.status != 200:
            return answer.status
        return json_format.Parse(await answer.read(), discovery_pb2.DiscoveryResponse())


async def test_not_ready_until_synced(rest: tuple[Harness, str]) -> None:
    _, base = rest
    assert await _post(base, CLUSTER, []) == 503


async def test_rest_answers_what_ads_sends(rest: tuple[Harness, str]) -> None:
    xds, base = rest
    xds.store.mark_synced()
    client = AdsClient(xds.port)
    try:
        for type_url, names in ((CLUSTER, []), (LISTENER, []), (ENDPOINT, [V1]),
                                (ROUTE, ["9080"])):
            ads = unpack(await client.request(type_url, names))
            response = await _post(base, type_url, names)
            assert response.type_url == type_url
            served = unpack(response)
            if type_url in (ENDPOINT, ROUTE):
                assert served == ads  # byte-for-byte the same messages
                continue
            # Clusters and listeners: the same, except that EDS and RDS come over REST.
            assert [m.name for m in served] == [m.name for m in ads]
            for rest_message, ads_message in zip(served, ads, strict=True):
                text = json_format.MessageToJson(rest_message)
                assert '"ads"' not in text
                if type_url == CLUSTER and ads_message.HasField("eds_cluster_config"):
                    source = rest_message.eds_cluster_config.eds_config.api_config_source
                    assert source.cluster_names == ["xds-grpc"]
                    rest_message.eds_cluster_config.ClearField("eds_config")
                    ads_message.eds_cluster_config.ClearField("eds_config")
                    assert rest_message == ads_message
    finally:
        await client.close()


async def test_current_client_gets_not_modified(rest: tuple[Harness, str]) -> None:
    xds, base = rest
    xds.store.mark_synced()
    first = await _post(base, ENDPOINT, [V1])
    assert await _post(base, ENDPOINT, [V1], first.version_info) == 304
    # A push that does not touch these resources leaves the client current…
    xds.store.apply(service_entry("ratings", ["ratings.default.svc.cluster.local"]))
    await xds.settle()
    assert await _post(base, ENDPOINT, [V1], first.version_info) == 304
    # …an endpoint change does not.
    xds.store.apply(workload_entry("reviews-2", "127.0.1.2", {"app": "reviews"}))
    await xds.settle()
    second = await _post(base, ENDPOINT, [V1], first.version_info)
    assert second.version_info != first.version_info
    (assignment,) = unpack(second)
    assert len(assignment.endpoints[0].lb_endpoints) == 2
