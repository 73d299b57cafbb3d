"""The ADS server driven by a raw client: ACK, NACK, stale nonces, EDS-only pushes, Delta."""

from __future__ import annotations

import asyncio

from tests.configs import destination_rule, service_entry, workload_entry
from tests.conftest import Harness
from tests.xds_client import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    AdsClient,
    resource_names,
    unpack,
)

REVIEWS = "reviews.default.svc.cluster.local"
V1 = f"outbound|9080||{REVIEWS}"


def mesh(harness: Harness) -> None:
    harness.store.apply(service_entry("reviews", [REVIEWS], selector={"app": "reviews"}))
    harness.store.apply(
        workload_entry("reviews-v1", "127.0.1.1", {"app": "reviews", "version": "v1"})
    )
    harness.store.apply(
        destination_rule(
            "reviews", REVIEWS, [{"name": "v1", "labels": {"version": "v1"}}]
        )
    )


async def test_no_answer_until_sources_synced(xds: Harness) -> None:
    mesh(xds)
    client = AdsClient(xds.port)
    await client.send(CLUSTER)
    await client.expect_no_response(0.3)
    xds.store.mark_synced()
    response = await client.expect_response(CLUSTER)
    assert V1 in resource_names(response)
    await client.close()


async def test_ack_stale_nonce_and_nack(xds: Harness) -> None:
    mesh(xds)
    xds.store.mark_synced()
    client = AdsClient(xds.port)
    first = await client.request(CLUSTER)
    await client.ack(first)
    await client.expect_no_response()

    # A change produces a new response; answering the older nonce is stale and ignored.
    xds.store.apply(service_entry("ratings", ["ratings.default.svc.cluster.local"]))
    second = await client.expect_response(CLUSTER)
    assert "outbound|9080||ratings.default.svc.cluster.local" in resource_names(second)
    await client.send(CLUSTER, nonce=first.nonce, version=first.version_info)
    await client.expect_no_response()

    # A NACK is recorded and the same content is never sent again.
    await client.nack(second, "cluster rejected: bad thing")
    await client.expect_no_response()
    connection = next(iter(xds.server.connections.values()))
    assert connection.watches[CLUSTER].last_error == "cluster rejected: bad thing"
    xds.store.apply(
        destination_rule("unrelated", "nothing.example.com", [{"name": "a", "labels": {"x": "y"}}])
    )
    await xds.settle()
    await client.expect_no_response()
    # Content that changes is sent, and its ACK clears the error.
    xds.store.apply(service_entry("details", ["details.default.svc.cluster.local"]))
    third = await client.expect_response(CLUSTER)
    await client.ack(third)
    await client.expect_no_response()
    assert connection.watches[CLUSTER].last_error == ""
    assert connection.watches[CLUSTER].nonce_acked == third.nonce
    await client.close()


async def test_endpoint_change_pushes_only_eds(xds: Harness) -> None:
    mesh(xds)
    xds.store.mark_synced()
    client = AdsClient(xds.port)
    for type_url in (CLUSTER, LISTENER):
        await client.ack(await client.request(type_url))
    eds = await client.request(ENDPOINT, [V1, f"outbound|9080|v1|{REVIEWS}"])
    await client.ack(eds, [V1, f"outbound|9080|v1|{REVIEWS}"])
    routes = await client.request(ROUTE, ["9080"])
    await client.ack(routes, ["9080"])
    await client.expect_no_response()

    xds.store.apply(
        workload_entry("reviews-v2", "127.0.1.2", {"app": "reviews", "version": "v2"})
    )
    update = await client.expect_response(ENDPOINT)
    # Only the all-endpoints cluster changed; the v1 subset did not, so it is not resent.
    (assignment,) = unpack(update)
    assert assignment.cluster_name == V1
    addresses = sorted(
        lb.endpoint.address.socket_address.address
        for group in assignment.endpoints
        for lb in group.lb_endpoints
    )
    assert addresses == ["127.0.1.1", "127.0.1.2"]
    await client.ack(update, [V1, f"outbound|9080|v1|{REVIEWS}"])
    await client.expect_no_response()
    await client.close()


async def test_subscription_change_is_answered(xds: Harness) -> None:
    mesh(xds)
    xds.store.mark_synced()
    client = AdsClient(xds.port)
    eds = await client.request(ENDPOINT, [V1])
    assert resource_names(eds) == [V1]
    await client.send(ENDPOINT, [V1, f"outbound|9080|v1|{REVIEWS}"], nonce=eds.nonce)
    more = await client.expect_response(ENDPOINT)
    assert sorted(resource_names(more)) == sorted([V1, f"outbound|9080|v1|{REVIEWS}"])
    await client.close()


async def test_delta_wildcard_subscribe_and_remove(xds: Harness) -> None:
    mesh(xds)
    xds.store.mark_synced()
    client = AdsClient(xds.port, delta=True)
    clusters = await client.request(CLUSTER)
    assert V1 in resource_names(clusters)
    await client.ack(clusters)
    eds = await client.request(ENDPOINT, [V1])
    assert resource_names(eds) == [V1]
    await client.ack(eds)
    await client.expect_no_response()

    # An endpoint change sends just the changed assignment.
    xds.store.apply(workload_entry("reviews-v2", "127.0.1.2", {"app": "reviews"}))
    update = await client.expect_response(ENDPOINT)
    assert resource_names(update) == [V1]
    await client.ack(update)

    # A new service sends only its new clusters; removing it sends removals.
    xds.store.apply(service_entry("ratings", ["ratings.default.svc.cluster.local"]))
    added = await client.expect_response(CLUSTER)
    assert resource_names(added) == ["outbound|9080||ratings.default.svc.cluster.local"]
    await client.ack(added)
    xds.store.delete(service_entry("ratings", ["x"]).key)
    removed = await client.expect_response(CLUSTER)
    assert list(removed.removed_resources) == ["outbound|9080||ratings.default.svc.cluster.local"]
    assert not removed.resources
    await client.close()


async def test_delta_reconnect_sends_only_differences(xds: Harness) -> None:
    mesh(xds)
    xds.store.mark_synced()
    client = AdsClient(xds.port, delta=True)
    clusters = await client.request(CLUSTER)
    versions = {r.name: r.version for r in clusters.resources}
    await client.close()

    again = AdsClient(xds.port, delta=True)
    stale = dict(versions)
    stale[V1] = "old"
    await again.send_delta(CLUSTER, initial=stale)
    response = await again.expect_response(CLUSTER)
    assert resource_names(response) == [V1]
    await again.close()

    # Already current: an empty answer, which the proxy can ACK.
    current = AdsClient(xds.port, delta=True)
    await current.send_delta(CLUSTER, initial=versions)
    response = await current.expect_response(CLUSTER)
    assert not response.resources and not response.removed_resources
    await current.ack(response)
    await current.expect_no_response()
    await current.close()


async def test_delta_nack_recorded(xds: Harness) -> None:
    mesh(xds)
    xds.store.mark_synced()
    client = AdsClient(xds.port, delta=True)
    clusters = await client.request(CLUSTER)
    await client.nack(clusters, "no thanks")
    await client.expect_no_response()
    await asyncio.sleep(0)
    connection = next(iter(xds.server.connections.values()))
    assert connection.watches[CLUSTER].last_error == "no thanks"
    await client.close()
