"""The ADS server driven by a raw client: ACK, NACK, stale nonces, EDS-only pushes, Delta."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from meshpilot.debug.syncz import Sync, type_status
from meshpilot.envoy.generators import GENERATORS
from meshpilot.model import Config, Kind, PushRequest
from meshpilot.xds.encoding import Outgoing, serialize
from tests.configs import destination_rule, service_entry, virtual_service, workload_entry
from tests.conftest import Harness
from tests.xds_client import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    AdsClient,
    make_node,
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


RATINGS = "ratings.default.svc.cluster.local"


def two_route_configs(harness: Harness) -> None:
    """reviews on 9080 and ratings on 9090: two RouteConfigurations, `9080` and `9090`."""
    mesh(harness)
    harness.store.apply(service_entry(
        "ratings", [RATINGS], ports=[{"number": 9090, "name": "http", "protocol": "HTTP"}]))
    harness.store.apply(reviews_routes("5s"))


def reviews_routes(timeout: str) -> Config:
    return virtual_service("reviews", [REVIEWS], [
        {"route": [{"destination": {"host": REVIEWS}}], "timeout": timeout}])


async def synced_routes(harness: Harness, client: AdsClient) -> Any:
    for type_url in (CLUSTER, LISTENER):
        await client.ack(await client.request(type_url))
    routes = await client.request(ROUTE, ["9080", "9090"])
    assert sorted(resource_names(routes)) == ["9080", "9090"]
    await client.ack(routes, ["9080", "9090"])
    await client.expect_no_response()
    return routes


async def test_virtualservice_change_sends_only_the_changed_route_config(xds: Harness) -> None:
    two_route_configs(xds)
    xds.store.mark_synced()
    client = AdsClient(xds.port)
    await synced_routes(xds, client)

    xds.store.apply(reviews_routes("7s"))
    update = await client.expect_response(ROUTE)
    # SotW RDS may carry a subset: only the RouteConfiguration the change touched.
    (config,) = unpack(update)
    assert config.name == "9080"
    assert any(r.route.timeout.seconds == 7 for vh in config.virtual_hosts for r in vh.routes)
    await client.ack(update, ["9080", "9090"])
    await client.expect_no_response()
    connection = next(iter(xds.server.connections.values()))
    assert type_status(connection.watches[ROUTE]).status is Sync.SYNCED

    # A new name is answered in full, whatever was sent before.
    xds.store.apply(service_entry(
        "details", ["details.default.svc.cluster.local"],
        ports=[{"number": 9091, "name": "http", "protocol": "HTTP"}]))
    while (response := await client.expect_response()).type_url != LISTENER:
        assert response.type_url != ROUTE  # the existing route configs did not change
    await client.send(ROUTE, ["9080", "9090", "9091"], nonce=update.nonce)
    more = await client.expect_response(ROUTE)
    assert sorted(resource_names(more)) == ["9080", "9090", "9091"]
    await client.close()


async def test_after_a_route_nack_the_whole_set_is_sent_again(xds: Harness) -> None:
    two_route_configs(xds)
    xds.store.mark_synced()
    client = AdsClient(xds.port)
    await synced_routes(xds, client)

    xds.store.apply(reviews_routes("7s"))
    update = await client.expect_response(ROUTE)
    await client.nack(update, "route rejected", ["9080", "9090"])
    await client.expect_no_response()
    connection = next(iter(xds.server.connections.values()))
    assert type_status(connection.watches[ROUTE]).status is Sync.ERROR

    # The next change goes out with every route config, the rejected one included, so the
    # proxy's verdict covers it: an ACK of a subset could not clear the error honestly.
    xds.store.apply(reviews_routes("9s"))
    again = await client.expect_response(ROUTE)
    assert sorted(resource_names(again)) == ["9080", "9090"]
    await client.ack(again, ["9080", "9090"])
    await client.expect_no_response()
    assert type_status(connection.watches[ROUTE]).status is Sync.SYNCED
    await client.close()


async def test_an_ack_repeating_the_names_builds_no_new_name_set(xds: Harness) -> None:
    mesh(xds)
    xds.store.mark_synced()
    client = AdsClient(xds.port)
    names = [V1, f"outbound|9080|v1|{REVIEWS}"]
    eds = await client.request(ENDPOINT, names)
    connection = next(iter(xds.server.connections.values()))
    state = connection.watches[ENDPOINT]
    for _ in range(3):
        await client.ack(eds, names)
        await client.expect_no_response(0.1)
    xds.store.apply(
        workload_entry("reviews-v2", "127.0.1.2", {"app": "reviews", "version": "v2"})
    )
    update = await client.expect_response(ENDPOINT)
    await client.ack(update, names)
    await client.expect_no_response(0.1)
    assert state.nonce_acked == update.nonce
    assert state.name_sets == 0  # every ACK repeated the names: the set was reused

    # Different names are a new subscription: built, and answered.
    await client.send(ENDPOINT, [V1], nonce=update.nonce)
    await client.expect_response(ENDPOINT)
    assert state.name_sets == 1
    assert state.names == frozenset({V1})
    await client.close()


def test_a_virtualservice_push_skips_clusters_and_endpoints_unless_merged_wider() -> None:
    routing = PushRequest(full=True, config_kinds=frozenset({Kind.VIRTUAL_SERVICE}))
    assert routing.routing_only
    assert not GENERATORS[CLUSTER].concerns(routing)
    assert not GENERATORS[ENDPOINT].concerns(routing)
    assert GENERATORS[ROUTE].concerns(routing) and GENERATORS[LISTENER].concerns(routing)
    # A full push naming no kinds (a registry change) stands for all of them.
    everything = PushRequest(full=True).merge(routing)
    assert everything.config_kinds == frozenset() and not everything.routing_only
    # An endpoint change merged in still reaches EDS; a DestinationRule reaches CDS.
    assert not routing.merge(PushRequest(full=False, eds_hosts=frozenset({("default", REVIEWS)}))
                             ).routing_only
    rule = PushRequest(full=True, config_kinds=frozenset({Kind.DESTINATION_RULE}))
    assert GENERATORS[CLUSTER].concerns(routing.merge(rule))


def two_clients(xds: Harness, delta: bool = False) -> list[AdsClient]:
    """Two proxies alike but for their ids."""
    return [AdsClient(xds.port, delta=delta,
                      node=make_node(f"sidecar~127.0.0.{i}~c{i}.default~default.svc"))
            for i in (2, 3)]


async def test_streams_asking_for_the_same_names_share_one_set(xds: Harness) -> None:
    mesh(xds)
    xds.store.mark_synced()
    names = [V1, f"outbound|9080|v1|{REVIEWS}"]
    clients = two_clients(xds)
    for client in clients:
        await client.request(ENDPOINT, names)
    first, second = (c.watches[ENDPOINT].names for c in xds.server.connections.values())
    assert first == frozenset(names)
    assert first is second  # one set in memory, not one per proxy
    for client in clients:
        await client.close()


def test_a_response_holder_is_emptied_when_grpc_serializes_it() -> None:
    # grpc keeps the last message a stream wrote until the next one: the holder must not keep
    # the response bytes alive after they went out.
    held = Outgoing(b"response bytes")
    assert serialize(held) == b"response bytes"
    assert held.message is None


async def test_proxies_pushed_the_same_change_each_ack_it_and_keep_distinct_nonces(
    xds: Harness,
) -> None:
    # Pushes hand streams with the same view one shared response (nonce included); each
    # stream's nonces must still differ from response to response, and each proxy's ACK and
    # push history must be its own.
    mesh(xds)
    xds.store.mark_synced()
    names = [V1, f"outbound|9080|v1|{REVIEWS}"]
    clients = two_clients(xds)
    seen: list[set[str]] = [set(), set()]
    for client, nonces in zip(clients, seen, strict=True):
        clusters = await client.request(CLUSTER)
        await client.ack(clusters)
        eds = await client.request(ENDPOINT, names)
        await client.ack(eds, names)
        nonces.update((clusters.nonce, eds.nonce))
    for generation in range(2, 5):
        xds.store.apply(workload_entry(
            f"reviews-v{generation}", f"127.0.1.{generation}",
            {"app": "reviews", "version": f"v{generation}"},
        ))
        for client, nonces in zip(clients, seen, strict=True):
            update = await client.expect_response(ENDPOINT)
            assert update.nonce not in nonces
            nonces.add(update.nonce)
            (assignment,) = unpack(update)
            assert assignment.cluster_name == V1
            assert len([lb for g in assignment.endpoints for lb in g.lb_endpoints]) == generation
            await client.ack(update, names)
    for client in clients:
        await client.expect_no_response()
    for connection in xds.server.connections.values():
        assert type_status(connection.watches[ENDPOINT]).status is Sync.SYNCED
        last = next(e for e in xds.server.push_history.events(connection.proxy.id)
                    if e.type == "EDS")  # newest first
        assert last.status == "ACK" and last.changed_names == (V1,)
    for client in clients:
        await client.close()


async def test_delta_streams_alike_share_holdings_and_keep_their_own_nonces(
    xds: Harness,
) -> None:
    mesh(xds)
    xds.store.mark_synced()
    clients = two_clients(xds, delta=True)
    seen: list[set[str]] = [set(), set()]
    for client, nonces in zip(clients, seen, strict=True):
        for type_url, names in ((CLUSTER, None), (ENDPOINT, [V1])):
            response = await client.request(type_url, names)
            await client.ack(response)
            nonces.add(response.nonce)
    one, two = (c.watches for c in xds.server.connections.values())
    for type_url in (CLUSTER, ENDPOINT):
        assert one[type_url].sent is two[type_url].sent  # one holding, not one per proxy
    assert one[ENDPOINT].names is two[ENDPOINT].names

    # Pushes: each stream gets the change once, under a nonce new to it, and ACKs it.
    for generation in (2, 3):
        xds.store.apply(workload_entry(f"reviews-v{generation}", f"127.0.1.{generation}",
                                       {"app": "reviews"}))
        for client, nonces in zip(clients, seen, strict=True):
            update = await client.expect_response(ENDPOINT)
            assert resource_names(update) == [V1] and update.nonce not in nonces
            nonces.add(update.nonce)
            await client.ack(update)
    for client in clients:
        await client.expect_no_response()
    for connection in xds.server.connections.values():
        assert type_status(connection.watches[ENDPOINT]).status is Sync.SYNCED
    assert one[ENDPOINT].sent is two[ENDPOINT].sent

    # Streams reconnecting with what they hold (each its own dict) converge on one holding.
    held = dict(one[CLUSTER].sent)
    again = [AdsClient(xds.port, delta=True,
                       node=make_node(f"sidecar~127.0.0.{i}~r{i}.default~default.svc"))
             for i in (4, 5)]
    for client, stale in zip(again, (V1, f"outbound|9080|v1|{REVIEWS}"), strict=True):
        await client.send_delta(CLUSTER, initial={**held, stale: "old"})
        response = await client.expect_response(CLUSTER)
        assert resource_names(response) == [stale]
    four, five = (c.watches[CLUSTER].sent for c in xds.server.connections.values()
                  if c.proxy.id.startswith(("sidecar~127.0.0.4", "sidecar~127.0.0.5")))
    assert four is five and four == held
    for client in [*clients, *again]:
        await client.close()


async def test_a_closed_stream_leaves_the_server_without_garbage_collection(
    xds: Harness,
) -> None:
    # The server forgets a proxy when its stream ends (syncz, adsz, pushes), promptly and
    # without waiting for the cycle collector, which runs rarely on an idle server.
    mesh(xds)
    xds.store.mark_synced()
    gc.disable()
    try:
        for delta in (False, True):
            client = AdsClient(xds.port, delta=delta)
            await client.request(CLUSTER)
            assert len(xds.server.connections) == 1
            await client.close()
            for _ in range(50):
                if not xds.server.connections:
                    break
                await asyncio.sleep(0.05)
            assert not xds.server.connections, "the closed stream is still connected"
    finally:
        gc.enable()
