"""Leader election on an etcd key under a lease (`etcd.leader`) against a real etcd server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aetcd
import pytest
import typer

from meshpilot.cli.discovery import _check_lease, _check_source
from meshpilot.cli.registry_sync import _elector
from meshpilot.etcd.client import EtcdAddress
from meshpilot.etcd.leader import EtcdLeaderElector
from tests.registry_servers import EtcdServer, eventually


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[Any]:
    client = aetcd.Client("127.0.0.1", etcd_server.port, timeout=5)
    yield client
    await client.close()


@pytest.fixture
def key() -> str:
    return f"/test-leader-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def tasks() -> AsyncIterator[list[asyncio.Task[None]]]:
    running: list[asyncio.Task[None]] = []
    yield running
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


def elector(server: EtcdServer, key: str, identity: str) -> EtcdLeaderElector:
    return EtcdLeaderElector.from_url(
        f"etcd://{server.address}?key={key}&identity={identity}"
        "&leaseDuration=3&renewDeadline=2&retryPeriod=0.3", "/unused")


async def holder(etcd: Any, key: str) -> str:
    found = await etcd.get(key.encode())
    return "" if found is None else bytes(found.value).decode()


def test_durations_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="retryPeriod < renewDeadline < leaseDuration"):
        EtcdLeaderElector(EtcdAddress.parse("etcd://127.0.0.1:2379"), key="/k",
                          lease_duration=2, renew_deadline=3, retry_period=1)


async def test_one_leader_renews_and_the_other_follows(
    etcd_server: EtcdServer, etcd: Any, key: str, tasks: list[asyncio.Task[None]]
) -> None:
    a, b = elector(etcd_server, key, "a"), elector(etcd_server, key, "b")
    tasks += [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
    await eventually(lambda: a.is_leader or b.is_leader, what="a leader")
    leader, follower = (a, b) if a.is_leader else (b, a)
    await eventually(lambda: follower.holder == leader.identity, what="the follower's view")
    # Well past the lease's TTL: the holder keeps it alive and nobody else gets in.
    for _ in range(20):
        await asyncio.sleep(0.25)
        assert leader.is_leader and not follower.is_leader
    assert await holder(etcd, key) == leader.identity
    assert leader.status()["leader"] and leader.status()["holder"] == leader.identity


async def test_a_clean_stop_hands_over_at_once(
    etcd_server: EtcdServer, etcd: Any, key: str, tasks: list[asyncio.Task[None]]
) -> None:
    a = elector(etcd_server, key, "a")
    first = asyncio.create_task(a.run())
    await eventually(lambda: a.is_leader, what="a leads")
    b = elector(etcd_server, key, "b")
    tasks.append(asyncio.create_task(b.run()))
    await eventually(lambda: b.holder == "a", what="b follows")
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert not a.is_leader
    # The lease was revoked on the way out: the key went with it (no waiting for the TTL), and
    # b's watch wakes it to take the key.
    assert await holder(etcd, key) in ("", "b")
    await eventually(lambda: b.is_leader, what="b takes over")
    assert await holder(etcd, key) == "b"


async def test_a_crashed_leader_loses_the_key_when_its_lease_expires(
    etcd_server: EtcdServer, etcd: Any, key: str, tasks: list[asyncio.Task[None]]
) -> None:
    # The "crashed" leader: a key under a lease nobody keeps alive.
    lease = await etcd.lease(3)
    await etcd.put(key.encode(), b"crashed", lease=lease)
    b = elector(etcd_server, key, "b")
    tasks.append(asyncio.create_task(b.run()))
    await eventually(lambda: b.holder == "crashed", what="b sees the holder")
    assert not b.is_leader
    await eventually(lambda: b.is_leader, within=10, what="takeover after expiry")
    assert await holder(etcd, key) == "b"


async def test_a_leader_that_sees_another_holder_steps_down(
    etcd_server: EtcdServer, etcd: Any, key: str, tasks: list[asyncio.Task[None]]
) -> None:
    a = elector(etcd_server, key, "a")
    tasks.append(asyncio.create_task(a.run()))
    await eventually(lambda: a.is_leader, what="a leads")
    duties: list[str] = []
    cancelled = asyncio.Event()

    async def duty() -> None:
        duties.append("started")
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    tasks.append(asyncio.create_task(a.while_leading(duty)))
    await eventually(lambda: duties == ["started"], what="the duty runs")
    # An operator (or a split brain) replaces the key: a must stop at its next round.
    await etcd.put(key.encode(), b"someone-else")
    await eventually(lambda: not a.is_leader, what="a steps down")
    async with asyncio.timeout(5):
        await cancelled.wait()
    assert a.holder == "someone-else"


async def test_a_leader_cut_off_from_etcd_stops_leading_before_its_lease_ends(
    etcd_server: EtcdServer, etcd: Any, key: str, tasks: list[asyncio.Task[None]]
) -> None:
    a = elector(etcd_server, key, "a")
    tasks.append(asyncio.create_task(a.run()))
    await eventually(lambda: a.is_leader, what="a leads")
    etcd_server.kill()
    try:
        await eventually(lambda: not a.is_leader, what="a stops leading")
    finally:
        etcd_server.start()
    # Back: the lease (if etcd still has it) is renewed or a new one granted.
    await eventually(lambda: a.is_leader, within=40, what="a leads again")


def test_registry_sync_takes_an_etcd_lease_for_any_target() -> None:
    durations = (3.0, 2.0, 0.5)
    made = _elector("dir:/tmp/x", "", "etcd://127.0.0.1:2379?key=/k", "me", durations)
    assert isinstance(made, EtcdLeaderElector)
    assert (made.key, made.identity, made.lease_duration) == ("/k", "me", 3.0)
    default = _elector("mcp:127.0.0.1:1", "", "etcd://127.0.0.1:2379", "", durations)
    assert isinstance(default, EtcdLeaderElector)
    assert default.key == "/meshpilot/leader/registry-sync"
    with pytest.raises(typer.BadParameter, match="--lease etcd://"):
        _elector("dir:/tmp/x", "", "istio-system/sync", "", durations)


def test_discovery_checks_etcd_addresses() -> None:
    assert _check_source("etcd://127.0.0.1:2379?prefix=/p") == "etcd://127.0.0.1:2379?prefix=/p"
    with pytest.raises(typer.BadParameter, match="no port"):
        _check_source("etcd://127.0.0.1?prefix=/p")
    assert _check_lease("etcd://127.0.0.1:2379?key=/k") == "etcd://127.0.0.1:2379?key=/k"
    with pytest.raises(typer.BadParameter, match="needs --ca-dir"):
        _check_lease("etcd://127.0.0.1:2379?key=/k&signingRotation=60")
